"""Tampering and leaks, through the real commands: nothing a user, a config or a checkpoint names is unpickled; a
checkpoint's record covers itself and is checked against a schema; a refused RNG state stops the resume; a value
that came from `${oc.env:...}` reaches no file, log or message."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from accelerate.utils import load as accelerate_load
from conftest import TINY, ok, python_train, read_metrics, run_cmd
from PIL import Image

from trainer.config import load_config
from trainer.errors import TrainerError
from trainer.metrics import inception
from trainer.run import checkpoint

CKPT2, CKPT4 = "checkpoints/step-00000002", "checkpoints/step-00000004"
STATE = "trainer_state.json"


class Payload:
    """A pickle whose only effect, when unpickled, is to create the file `marker`: open(marker, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> Path:
    """The payload at `path`, proved live first: unpickled as torch-fidelity and torchmetrics would (weights_only=False)
    it creates the marker (the control: without it a test could pass with a dud payload); the marker is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(Payload(marker), path)
    assert not marker.exists()
    torch.load(path, weights_only=False).close()  # the unsafe load: it runs open(marker, "w")
    assert marker.is_file(), "the payload did not run when unpickled unsafely"
    marker.unlink()
    return path


def refused(proc: subprocess.CompletedProcess, words: list[str]) -> str:
    """Exit 2 with one `error:` paragraph holding every word, and no traceback; returns the message."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in message[0], f"{word!r} not in {message[0]!r}"
    return message[0]


def canonical_sha256(record: dict) -> str:
    """The record's digest as the format defines it, computed here: canonical JSON of every other key."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def reseal(ckpt: Path, files: tuple[str, ...] = (), edit: Callable[[dict], None] = lambda record: None) -> None:
    """What a tamperer who knows the format does: `edit` the record, record the new SHA-256 of the changed `files`
    and recompute the record's own digest (independently of the package: canonical JSON, sorted keys), so that the
    checkpoint verifies and only a schema or the loader can catch it."""
    record = json.loads((ckpt / STATE).read_text())
    edit(record)
    for name in files:
        record["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    record["record_sha256"] = canonical_sha256(record)
    (ckpt / STATE).write_text(json.dumps(record, indent=1))


def make_legacy(ckpt: Path) -> None:
    """The record as the code before record hashing wrote it: the same keys, without its own digest."""
    record = json.loads((ckpt / STATE).read_text())
    del record["record_sha256"]
    (ckpt / STATE).write_text(json.dumps(record, indent=1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints at steps 2 and 4; its config names Inception weights (unused on digits) that a test plants."""
    base = tmp_path_factory.mktemp("security")
    run = base / "trained"
    weights = f"eval.inception_weights={base / 'named-by-the-config.pth'}"
    ok(python_train(f"run.dir={run}", "train.steps=4", *TINY, "checkpoint.every=2", "checkpoint.keep=0", weights))
    return run


@pytest.fixture
def run(tmp_path: Path, trained: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def resume(run: Path, to: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return python_train(f"run.dir={run}", "train.steps=6", f"run.resume={to}", *TINY, *extra, env=env)


def falls_back_to_step_2(proc: subprocess.CompletedProcess, run: Path, words: list[str]) -> None:
    """run.resume=latest: one warning naming the damaged checkpoint and the file, then steps 3-6 from step 2."""
    ok(proc)
    warning = [line for line in proc.stdout.splitlines() if f"warning: checkpoint {run / CKPT4}" in line]
    assert len(warning) == 1 and "Falling back to step-00000002" in warning[0], proc.stdout[-3000:]
    assert all(word in warning[0] for word in words), warning[0]
    assert f"resuming from {run / CKPT2} at step 2" in proc.stdout
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]


# 1. Nothing a user, a config or a checkpoint names is unpickled.


def _images(folder: Path) -> Path:
    rng = torch.Generator().manual_seed(0)
    for i in range(32):
        pixels = torch.randint(0, 256, (8, 8, 3), generator=rng, dtype=torch.uint8).numpy()
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


def _evaluate(run: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.evaluate", str(run), "--inception", "--num", "10"]
    return run_cmd([*cmd, "--cache-dir", str(tmp / "cache"), *args], env={"TORCH_HOME": str(tmp / "torch")})


def _through_train_py(run: Path, tmp: Path, marker: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    weights = plant(tmp / "w.pth", marker)
    args = ["data.name=imagefolder", f"data.root={_images(tmp / 'images')}", "data.num_workers=0", "eval.every=1"]
    proc = python_train(f"run.dir={tmp / 'img'}", *TINY, *args, "train.steps=2", f"eval.inception_weights={weights}")
    return proc, [str(weights), "refused", "only tensors"]


def _evaluate_flag(run: Path, tmp: Path, marker: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    weights = plant(tmp / "w.pth", marker)
    return _evaluate(run, tmp, "--inception-weights", str(weights)), [str(weights), "refused"]


def _named(run: Path) -> str:
    return yaml.safe_load((run / CKPT4 / "config.yaml").read_text())["eval"]["inception_weights"]


def _named_by_the_checkpoint(run: Path, tmp: Path, marker: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    weights = plant(Path(_named(run)), marker)  # where the checkpoint's config points (outside the copied run)
    try:
        return _evaluate(run, tmp), [str(weights), "refused"]
    finally:
        weights.unlink()


def _torch_hub_cache(run: Path, tmp: Path, marker: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    config = run / CKPT4 / "config.yaml"  # a run whose config names no weights: the default place is read
    config.write_text(config.read_text().replace(f"inception_weights: {_named(run)}", "inception_weights: null"))
    reseal(run / CKPT4, ("config.yaml",))
    weights = plant(tmp / "torch" / "hub" / "checkpoints" / inception.WEIGHTS_FILE, marker)
    return _evaluate(run, tmp), [str(weights), "refused"]


def _fetch_weights_out(run: Path, tmp: Path, marker: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    weights = plant(tmp / inception.WEIGHTS_FILE, marker)  # present, so it is checked, not downloaded
    return run_cmd([sys.executable, "-m", "trainer.fetch_weights", "--out", str(weights)]), [str(weights), "refused"]


def _checkpoint_optimizer(run: Path, tmp: Path, marker: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    plant(run / CKPT4 / "optimizer.bin", marker)
    reseal(run / CKPT4, ("optimizer.bin",))  # so it verifies: only the loader stands between it and the unpickler
    return resume(run, str(run / CKPT4)), [str(run / CKPT4), "optimizer.bin", "not tensors"]


PLANTED = {
    "eval.inception_weights-train.py": _through_train_py,
    "evaluate--inception-weights": _evaluate_flag,
    "evaluate-weights-named-by-the-checkpoint-config": _named_by_the_checkpoint,
    "evaluate-torch-hub-cache": _torch_hub_cache,
    "fetch_weights--out": _fetch_weights_out,
    "run.resume-optimizer.bin": _checkpoint_optimizer,
}


@pytest.mark.parametrize("where", list(PLANTED))
def test_a_planted_pickle_is_refused_unread(run: Path, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "PWNED"
    proc, words = PLANTED[where](run, tmp_path, marker)
    refused(proc, words)
    assert not marker.exists(), f"the payload ran: {where}"


def test_inception_weights_of_tensors_still_load_exactly(tmp_path: Path) -> None:
    """The safe path loses nothing: the network holds exactly the file's tensors (the real architecture, random)."""
    from test_evaluate import _random_inception_weights

    path = _random_inception_weights(tmp_path / inception.WEIGHTS_FILE)
    net = inception.load_extractor(inception.weights_path(str(path)))
    saved = torch.load(path, weights_only=True)
    got = net.state_dict()
    assert got.keys() == saved.keys() and all(torch.equal(got[k], saved[k]) for k in saved)


# 2. The record covers itself, and its fields are checked.

EDITS = {"step-digit": ('"step": 4,', '"step": 8,'), "step-null": ('"step": 4,', '"step": null,')}


@pytest.mark.parametrize("legacy", [False, True], ids=["hashed", "legacy"])
@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_record_is_a_damaged_checkpoint(run: Path, edit: str, legacy: bool) -> None:
    """The step edited by hand (4 -> 8, or null) in the newest record: an explicit run.resume path is an error naming
    trainer_state.json, run.resume=latest falls back to step 2. Hashed records fail their own digest; legacy ones
    (no digest) the schema: a null step, or a step that is not the folder's."""
    state = run / CKPT4 / STATE
    if legacy:
        make_legacy(run / CKPT4)
    old, new = EDITS[edit]
    assert old in state.read_text()
    state.write_text(state.read_text().replace(old, new))
    why = "is malformed" if legacy else "differs from the SHA-256 it recorded of itself"
    refused(resume(run, str(run / CKPT4)), [f"checkpoint {run / CKPT4} is damaged", STATE, why])
    falls_back_to_step_2(resume(run, "latest"), run, [STATE, why])


def test_a_legacy_checkpoint_still_resumes_with_one_warning(run: Path) -> None:
    """A checkpoint written before record hashing (no record_sha256): verified by its files, resumed, one warning; the
    next checkpoint carries the digest of its record (computed here independently)."""
    make_legacy(run / CKPT4)
    proc = ok(resume(run, "latest"))
    notes = [line for line in proc.stdout.splitlines() if "predates record hashing" in line]
    assert len(notes) == 1 and str(run / CKPT4) in notes[0], proc.stdout[-3000:]
    assert f"resuming from {run / CKPT4} at step 4" in proc.stdout
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    record = json.loads((run / "checkpoints/step-00000006" / STATE).read_text())
    assert record["record_sha256"] == canonical_sha256(record) and list(record)[-1] == "record_sha256"


SCHEMA = {  # a consistent record (its digest recomputed) whose fields are wrong: only the schema can tell
    "step-as-text": lambda r: r.update(step="4"),
    "step-bool": lambda r: r.update(step=True),
    "step-negative": lambda r: r.update(step=-4),
    "step-not-the-folder's": lambda r: r.update(step=8),
    "world-size-0": lambda r: r.update(world_size=0),
    "files-empty": lambda r: r.update(files={}),
    "files-outside": lambda r: r["files"].update({"../../config.yaml": "0" * 64}),
    "files-not-a-digest": lambda r: r["files"].update({"config.yaml": "xyz"}),
    "data-text": lambda r: r.update(data={"epoch": "0", "cursor": 0}),
    "num-classes-null": lambda r: r.update(num_classes=None),
    "fingerprints-per-process": lambda r: r.update(fingerprints=r["fingerprints"] * 2),
    "stats-not-numbers": lambda r: r["stats"][0].update(sums={"loss_d": "high"}),
}


def test_the_record_schema(run: Path) -> None:
    ckpt = run / CKPT4
    original = (ckpt / STATE).read_text()
    reseal(ckpt)
    assert checkpoint.verify(ckpt, warn=False)["step"] == 4  # resealed unchanged: intact, so the cases can fail
    for name, edit in SCHEMA.items():
        (ckpt / STATE).write_text(original)
        reseal(ckpt, edit=edit)
        with pytest.raises(TrainerError, match=f"{STATE} is malformed") as err:
            checkpoint.verify(ckpt, warn=False)
        assert str(ckpt) in str(err.value), name
    (ckpt / STATE).write_text("[1, 2]")
    with pytest.raises(TrainerError, match="not a JSON object"):
        checkpoint.verify(ckpt, warn=False)


# 3. A refused RNG state stops the resume instead of being swallowed.


def _unappliable(rng: Path, marker: Path) -> None:
    """A well-formed file whose torch state has the wrong size: Accelerate loads it, fails to apply it, only logs."""
    states = accelerate_load(rng)
    states["torch_manual_seed"] = torch.zeros(8, dtype=torch.uint8)
    torch.save(states, rng)


@pytest.mark.parametrize("tamper", [plant, _unappliable], ids=["pickled-object", "unappliable-state"])
def test_a_refused_rng_state_stops_the_resume(run: Path, tmp_path: Path, tamper: Callable) -> None:
    """random_states_0.pkl replaced and its SHA-256 recorded anew (so it verifies): an explicit run.resume is an
    error naming the file; run.resume=latest falls back to step 2 with a warning naming it, and resumes exactly."""
    marker = tmp_path / "PWNED"
    tamper(run / CKPT4 / "random_states_0.pkl", marker)
    reseal(run / CKPT4, ("random_states_0.pkl",))
    refused(resume(run, str(run / CKPT4)), [f"checkpoint {run / CKPT4} could not be read", "random_states_0.pkl"])
    falls_back_to_step_2(resume(run, "latest"), run, ["random_states_0.pkl", "RNG"])
    assert not marker.exists()


# 4. Values from `${oc.env:...}` are written as that text, never as the value.


def _files(*folders: Path) -> list[Path]:
    return [f for folder in folders for f in folder.rglob("*") if f.is_file()]


def _wandb_run(run_dir: Path) -> dict:
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(offline)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return next(r["run"] for r in map(json.loads, out.stdout.splitlines()) if r["type"] == "run")


def test_interpolated_values_reach_no_file_log_or_tracker(tmp_path: Path) -> None:
    """A real W&B run (offline) and its export, with every W&B text key from one environment variable: the token is
    in no file under the run folder, W&B's folders, the home folder or the export, and in no output; the `${...}` text
    is what config.yaml, W&B's run and the model card hold."""
    token = f"tok-{uuid.uuid4().hex}"
    text = "${oc.env:MY_SECRET}"
    home, wandb_dir, run_dir, export = (tmp_path / name for name in ("home", "wandb-dir", "run", "export"))
    env = {"MY_SECRET": token, "HOME": str(home), "WANDB_DIR": str(wandb_dir), "WANDB_CACHE_DIR": str(wandb_dir),
           "WANDB_CONFIG_DIR": str(wandb_dir), "WANDB_DATA_DIR": str(wandb_dir), "WANDB_MODE": "offline"}  # fmt: skip
    keys = [f"log.notes={text}", f"log.group=group-{text}", f"log.tags=['{text}',plain]", f"log.job_type={text}"]
    keys += [f"log.entity={text}", f"log.project={text}", "log.tracker=wandb", "checkpoint.every=1"]
    trained = ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY, *keys, env=env))
    assert f"log.project={text} is logged as the project '${{oc.env_MY_SECRET}}'" in trained.stdout
    exported = ok(run_cmd([sys.executable, "-m", "trainer.export", str(run_dir), "--out", str(export)], env=env))
    for proc in (trained, exported):
        assert token not in proc.stdout + proc.stderr
    files = _files(run_dir, wandb_dir, home, export)
    assert any(f.suffix == ".wandb" for f in files) and (export / "README.md").is_file() and len(files) > 20
    for path in files:
        assert token.encode() not in path.read_bytes(), f"the token leaked into {path}"
    assert f"notes: {text}" in (run_dir / "config.yaml").read_text()
    assert f"notes: {text}" in (export / "README.md").read_text()  # the model card's training config
    start = _wandb_run(run_dir)
    assert start["notes"] == text and start["run_group"] == f"group-{text}" and start["tags"] == [text, "plain"]
    assert start["job_type"] == text and start["entity"] == text


OVERRIDES = [
    ("${oc.env:MY_SECRET}", "train.steps"),
    ("${oc.decode:${oc.env:MY_SECRET}}", "train.steps"),
    ("${oc.env:MY_SECRET}", "model.conditional"),
    ("['${oc.env:MY_SECRET}']", "log.tags"),  # a list element: converted to str, so it parses
]


@pytest.mark.parametrize("secret", ["tok-QW81-zz", "[tok-QW81-zz", "tok QW81 zz"])
def test_a_value_that_fails_conversion_is_not_echoed(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("MY_SECRET", secret)
    for value, key in OVERRIDES:
        try:
            load_config(None, (f"{key}={value}",))
        except TrainerError as err:
            assert "QW81" not in str(err) and key in str(err) and "${oc.env:MY_SECRET}" in str(err), str(err)
        else:
            assert key == "log.tags", f"{key}={value} with {secret!r} was accepted"


def test_train_py_does_not_echo_a_secret_that_fails_conversion(run_dir: Path) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    proc = python_train(f"run.dir={run_dir}", *TINY, "train.steps=${oc.env:MY_SECRET}", env={"MY_SECRET": token})
    refused(proc, ["train.steps", "${oc.env:MY_SECRET}", "not shown"])
    assert token not in proc.stdout + proc.stderr and not run_dir.exists()
