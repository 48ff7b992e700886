"""Digest of a refactor proof folder: sha256 of metrics.jsonl values (timings excluded) and checkpoint fingerprints.

`python scripts/artefact_digest.py OUT [BEFORE]`: with BEFORE, only the metric keys the BEFORE runs logged count.
"""

import hashlib
import json
import sys
from pathlib import Path

SKIP = {"time", "imgs_per_s", "peak_mem_mb", "time_critic_ms", "time_penalty_ms", "time_generator_ms"}
out = Path(sys.argv[1])
for run in ("default", "digits", "toy2", "cond"):
    d = out / run
    if not d.is_dir():  # a proof folder from before the digits run was added
        continue
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    before = Path(sys.argv[2]) / f"{run}.keys" if len(sys.argv) > 2 else None
    keys = set(json.loads(before.read_text())) if before and before.is_file() else None
    if keys is None:
        json.dump(sorted(rows[0]), open(str(out / f"{run}.keys"), "w"))
    vals = [{k: v for k, v in r.items() if k not in SKIP and (keys is None or k in keys)} for r in rows]
    extra = sorted(set(rows[0]) - keys) if keys else []
    mh = hashlib.sha256(json.dumps(vals, sort_keys=True).encode()).hexdigest()[:16]
    prints = []
    for ck in sorted((d / "checkpoints").glob("step-*")):
        st = json.loads((ck / "trainer_state.json").read_text())
        fp = st.get("fingerprints")
        files = {}
        for f in ("generator.safetensors", "ema.safetensors", "model.safetensors", "model_1.safetensors"):
            if (ck / f).exists():
                files[f] = hashlib.sha256((ck / f).read_bytes()).hexdigest()[:12]
        prints.append((ck.name, fp, files))
    print(f"{run}: {len(rows)} metric lines, keys={len(vals[0])}, metrics-values sha256={mh}")
    if extra:
        print(f"  (new keys, not in the before run: {', '.join(extra)})")
    for name, fp, files in prints:
        print(f"  {name} fingerprints={json.dumps(fp, sort_keys=True)} files={files}")
