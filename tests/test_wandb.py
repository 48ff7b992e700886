"""W&B: run keys, checkpoint artifacts, eval summaries, the offline fallback and sweep run ids, read back from real
offline runs (`wandb leet inspect`); no test makes a network call (W&B's server is a closed local port)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, ok, python_train, read_metrics

TOY = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]
# "Online" W&B that cannot start: a login, and a server on a closed local port (refused at once, nothing leaves).
UNREACHABLE = {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "2"}


def records(run: Path) -> list[dict]:
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(run)], capture_output=True, text=True, cwd=run)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def summary(run: Path) -> dict:
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    cmd = [wandb, "leet", "inspect", "--summary", "--json", str(run)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=run)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_run_keys_artifacts_best_eval_summary_and_sweep_id(run_dir: Path) -> None:
    """log.* keys, one generator and one checkpoint artifact per checkpoint (latest, step-N, best where the step's
    eval_w1 is the best so far), best+last summaries; a sweep agent's WANDB_RUN_ID kept when the trial resumes."""
    keys = ["log.group=ablation-3", "log.tags=[toy,gp]", "log.entity=my-team", "log.job_type=train"]
    keys += ["log.notes=lambda sweep", "log.artifacts=checkpoint", "checkpoint.every=2", "checkpoint.keep=0"]
    args = [f"run.dir={run_dir}", "train.steps=6", *TINY, *TOY, "log.every=3", "eval.every=2", "eval.num=200"]
    trial = "sweeptrial42"  # a sweep agent's WANDB_RUN_ID
    ok(python_train(*args, *keys, "log.tracker=wandb", env={"WANDB_RUN_ID": trial}))
    (run,) = offline_runs(run_dir)
    got = records(run)
    start = next(r["run"] for r in got if r["type"] == "run")
    assert start["run_group"] == "ablation-3" and start["tags"] == ["toy", "gp"] and start["entity"] == "my-team"
    assert start["job_type"] == "train" and start["notes"] == "lambda sweep"
    assert start["run_id"] == (run_dir / "wandb_id.txt").read_text() == trial

    w1 = {m["step"]: m["eval_w1"] for m in read_metrics(run_dir) if "eval_w1" in m}
    assert set(w1) == {2, 4, 6}
    best_so_far = {s for s in w1 if w1[s] == min(v for t, v in w1.items() if t <= s)}  # best over steps up to s
    artifacts = [r["artifact"] for r in got if r["type"] == "artifact"]
    models = {json.loads(a["metadata"])["step"]: a for a in artifacts if a["type"] == "model"}
    folders = {json.loads(a["metadata"])["step"]: a for a in artifacts if a["type"] == "checkpoint"}
    assert set(models) == set(folders) == {2, 4, 6}
    for step, art in models.items():
        assert art["name"] == f"generator-{start['run_id']}"
        assert {"latest", f"step-{step}"} <= set(art["aliases"])
        assert ("best" in art["aliases"]) == (step in best_so_far), (step, w1)
        assert json.loads(art["metadata"])["eval_w1"] == w1[step]
        ckpt = run_dir / "checkpoints" / f"step-{step:08d}"
        files = {entry["path"]: entry["digest"] for entry in art["manifest"]["contents"]}
        for name in ("generator.safetensors", "config.yaml"):  # W&B's digest: base64 of the file's MD5
            assert files[name] == base64.b64encode(hashlib.md5((ckpt / name).read_bytes()).digest()).decode()
        listed = {entry["path"] for entry in folders[step]["manifest"]["contents"]}
        assert listed == {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()}

    top = summary(run)["summary"]
    assert top["eval_w1"] == {"min": min(w1.values()), "max": max(w1.values()), "last": w1[6]}
    assert top["eval_w1_best"] == min(w1.values()) and top["eval_w1_best_step"] == min(w1, key=w1.get)

    # The trial is requeued and resumed, without the variable: the same W&B run continues.
    ok(python_train(*args, *keys, "log.tracker=wandb", "train.steps=7", "run.resume=latest"))
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and [summary(r)["run_id"] for r in runs] == [trial] * 2
    assert summary(runs[1])["step"] == 7


@pytest.mark.parametrize("key", ["fakekey0123456789abcdef0123456789abcdef0123", "short"])
def test_online_start_that_fails_falls_back_offline_and_trains(run_dir: Path, key: str) -> None:
    """A key and no reachable server (timeout), or a malformed key (AuthenticationError): one warning, then the same
    run id offline, every step trained and logged; the key is written nowhere."""
    env = {**UNREACHABLE, "WANDB_API_KEY": key}
    proc = ok(python_train(f"run.dir={run_dir}", "train.steps=3", "log.tracker=wandb", *TINY, env=env))
    assert proc.stdout.count("W&B did not start online") == 1 and "Traceback" not in proc.stderr
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3]
    (run,) = offline_runs(run_dir)
    info = summary(run)
    assert info["run_id"] == (run_dir / "wandb_id.txt").read_text() and info["state"] == "finished"
    assert info["step"] == 3
    for path in (p for p in run_dir.rglob("*") if p.is_file()):
        assert key.encode() not in path.read_bytes(), path
