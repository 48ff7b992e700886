"""Bad-input matrix: every case exits 2 with one paragraph naming the key or file (and no traceback), before any
heavy work, and leaves every file of the run folder it was pointed at as it was.

Most cases call the commands' own `main()` in this process (train.py's is trainer.cli.main): seconds for the whole
matrix. A sample of them goes through the real `python train.py` and `accelerate launch`, where a traceback would
show on stderr.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import struct
import sys
from pathlib import Path
from typing import Callable

import pytest
from conftest import BASE, TINY, based, ok, python_train, run_cmd
from PIL import Image

from trainer import cli, compare, evaluate, export, sample
from trainer.run import signals

CKPT = "checkpoints/step-00000002"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with checkpoints at steps 1 and 2 and two metric lines: what each case must leave intact."""
    run_dir = tmp_path_factory.mktemp("bad") / "trained"
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY, "checkpoint.every=1", "checkpoint.keep=0"))
    return run_dir


def snapshot(folder: Path) -> dict[str, str]:
    files = [f for f in folder.rglob("*") if f.is_file() and f.name != ".lock"]  # (the lock names its holder)
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def mnist(root: Path, images: int = 32, labels: int = 32, magic: int = 2051, cut: int = 0) -> Path:
    raw = root / "MNIST" / "raw"
    for split, n, m in (("train", images, labels), ("t10k", 8, 8)):
        data = struct.pack(">IIII", magic if split == "train" else 2051, n, 28, 28) + bytes(n * 28 * 28)
        write(raw / f"{split}-images-idx3-ubyte", data[: len(data) - cut] if split == "train" else data)
        write(raw / f"{split}-labels-idx1-ubyte", struct.pack(">II", 2049, m) + bytes(m))
    return root


def undecodable_pngs(root: Path) -> Path:
    for i in range(3):
        write(root / f"img{i}.png", b"\x89PNG\r\n\x1a\n" + bytes(40))
    return root


def flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# (id, setup(tmp, run) -> extra args, words the message must contain). `run` is a copy of the trained run; train
# cases get run.dir=run and the TINY settings unless the case gives its own run.dir.
Setup = Callable[[Path, Path], list[str]]
YAML_CASES: list[tuple[str, bytes | str, list[str]]] = [
    ("yaml-list", "- train\n- steps\n", ["not a valid config", "list"]),
    ("yaml-tab", "train:\n\tsteps: 3\n", ["not a valid config", "indented"]),
    ("yaml-brace", "train: {steps: 3\n", ["not a valid config"]),
    ("yaml-duplicate", "train:\n  steps: 3\n  steps: 4\n", ["duplicate key"]),
    ("yaml-not-utf8", b"train:\n  steps: \xff\xfe\n", ["not UTF-8"]),
    ("yaml-scalar", "just words\n", ["just words", "Valid keys"]),
    ("yaml-unknown-key", "train:\n  stepz: 3\n", ["train.stepz", "Did you mean train.steps"]),
    ("yaml-wrong-type", "train:\n  steps: many\n", ["train.steps", "wrong type"]),
    ("yaml-section-value", "train: 5\n", ["single value", "dotted keys"]),
    ("yaml-unset-env", "log:\n  project: ${oc.env:WGAN_GP_SURELY_UNSET}\n", ["WGAN_GP_SURELY_UNSET", "environment"]),
    ("yaml-nan", "loss:\n  gp_weight: .nan\n", ["loss.gp_weight", "finite"]),
]
OVERRIDES: list[tuple[str, list[str], list[str]]] = [
    ("no-equals", ["train.steps"], ["key=value"]),
    ("unknown-key", ["model.nme=toy"], ["model.nme", "model.name"]),
    ("unknown-section", ["trian.steps=3"], ["trian.steps", "train.steps"]),
    ("wrong-type", ["train.steps=many"], ["train.steps", "int"]),
    ("section-value", ["train=5"], ["train=5", "dotted keys"]),
    ("seed-negative", ["seed=-1"], ["seed=-1"]),
    ("seed-huge", ["seed=99999999999"], ["seed=99999999999"]),
    ("gp-nan", ["loss.gp_weight=nan"], ["loss.gp_weight=nan", "finite"]),
    ("gp-inf", ["loss.gp_weight=inf"], ["loss.gp_weight=inf"]),
    ("gp-negative", ["loss.gp_weight=-1"], ["loss.gp_weight=-1"]),
    ("drift-nan", ["loss.drift=nan"], ["loss.drift"]),
    ("lr-inf", ["optim.lr_d=inf"], ["optim.lr_d=inf"]),
    ("lr-huge", ["optim.lr_d=1e10"], ["optim.lr_d", "(0, 1]"]),
    ("sgd-1e38", ["optim.name=sgd", "optim.lr_g=1e38"], ["optim.lr_g"]),
    ("lr-zero", ["optim.lr_g=0"], ["optim.lr_g=0"]),
    ("lr-negative", ["optim.lr_d=-0.0001"], ["optim.lr_d"]),
    ("betas-big", ["optim.betas=[0,1.5]"], ["optim.betas"]),
    ("betas-one", ["optim.betas=[0.5]"], ["optim.betas"]),
    ("betas-nan", ["optim.betas=[0,nan]"], ["optim.betas", "finite"]),
    ("n-critic-0", ["train.n_critic=0"], ["train.n_critic=0"]),
    ("n-critic-1e9", ["train.n_critic=1000000000"], ["train.n_critic", "at most"]),
    ("n-critic-float", ["train.n_critic=1e9"], ["train.n_critic"]),
    ("steps-0", ["train.steps=0"], ["train.steps=0"]),
    ("batch-0", ["train.batch_size=0"], ["train.batch_size=0"]),
    ("batch-negative", ["train.batch_size=-5"], ["train.batch_size=-5"]),
    ("batch-g-negative", ["train.batch_size_g=-1"], ["train.batch_size_g"]),
    ("ema-1", ["train.ema_decay=1"], ["train.ema_decay"]),
    ("ema-nan", ["train.ema_decay=nan"], ["train.ema_decay"]),
    ("model-unknown", ["model.name=resnet9"], ["model.name", "conv-small"]),
    ("data-unknown", ["data.name=imagenet"], ["data.name", "digits"]),
    ("loss-unknown", ["loss.name=wgan"], ["loss.name", "wgan-gp"]),
    ("optim-unknown", ["optim.name=adamw"], ["optim.name", "adam"]),
    ("precision-unknown", ["train.precision=fp8"], ["train.precision", "bf16"]),
    ("tracker-unknown", ["log.tracker=mlflow"], ["log.tracker", "wandb"]),
    ("crop-unknown", ["data.crop=square"], ["data.crop", "center"]),
    ("schedule-unknown", ["optim.schedule=cosine"], ["optim.schedule", "linear"]),
    ("schedule-steps-0", ["train.schedule_steps=0"], ["train.schedule_steps=0"]),
    (
        "schedule-steps-short",
        ["optim.schedule=linear", "train.steps=10", "train.schedule_steps=5"],
        ["train.schedule_steps=5", "learning rates to 0"],
    ),
    ("size-unmade", ["data.image_size=28"], ["data.image_size=28", "8, 16, 32, 64"]),
    ("toy-on-images", ["model.name=toy"], ["model.name=toy", "digits"]),
    ("conditional-toy", ["data.name=8gaussians", "model.name=toy", "model.conditional=true"], ["model.conditional"]),
    ("penalty-fraction-0", ["loss.penalty_fraction=0"], ["loss.penalty_fraction"]),
    ("lazy-0", ["loss.lazy_penalty=0"], ["loss.lazy_penalty"]),
    ("clip-0", ["loss.clip=0"], ["loss.clip"]),
    ("checkpoint-every-negative", ["checkpoint.every=-1"], ["checkpoint.every"]),
    ("log-every-0", ["log.every=0"], ["log.every"]),
    ("eval-num-1", ["eval.num=1"], ["eval.num"]),
    ("timeout-0", ["train.timeout_s=0"], ["train.timeout_s"]),
    ("workers-negative", ["data.num_workers=-1"], ["data.num_workers"]),
    ("max-nonfinite-negative", ["train.max_nonfinite=-1"], ["train.max_nonfinite"]),
    ("deepspeed-3", ["train.deepspeed=3"], ["train.deepspeed"]),
    ("graph-sgd", ["speed.cuda_graph=true", "optim.name=sgd"], ["speed.cuda_graph", "optim.name=adam"]),
    ("z-dim-1e8", ["model.z_dim=100000000"], ["GiB", "model.z_dim"]),
    ("width-1e5", ["model.width=100000"], ["GiB", "model.width"]),
    ("toy-batch-1e10", ["data.name=8gaussians", "model.name=toy", "train.batch_size=10000000000"], ["GiB"]),
    ("batch-beyond-data", ["train.batch_size=2000"], ["train.batch_size=2000"]),
]
FILE_CASES: list[tuple[str, Setup, list[str]]] = [
    ("config-missing", lambda tmp, run: ["--config", str(tmp / "nope.yaml")], ["nope.yaml", "does not exist"]),
    ("config-is-folder", lambda tmp, run: ["--config", str(tmp)], ["is a folder, not a file"]),
    ("mnist-missing", lambda tmp, run: ["data.name=mnist", f"data.root={tmp}"], ["data.name=mnist", "download"]),
    ("mnist-cut", lambda tmp, run: ["data.name=mnist", f"data.root={mnist(tmp, cut=500)}"], ["could not be read"]),
    ("mnist-magic", lambda tmp, run: ["data.name=mnist", f"data.root={mnist(tmp, magic=1234)}"], ["expected format"]),
    ("mnist-labels", lambda tmp, run: ["data.name=mnist", f"data.root={mnist(tmp, labels=10)}"], ["32 images", "10"]),
    ("cifar-missing", lambda tmp, run: ["data.name=cifar10", f"data.root={tmp}"], ["data.name=cifar10"]),
    ("folder-missing", lambda tmp, run: ["data.name=imagefolder", f"data.root={tmp / 'no'}"], ["not a folder"]),
    ("folder-empty", lambda tmp, run: ["data.name=imagefolder", f"data.root={tmp}"], ["no image files"]),
    (
        "folder-undecodable",
        lambda tmp, run: ["data.name=imagefolder", f"data.root={undecodable_pngs(tmp / 'imgs')}"],
        ["could be decoded", "img0.png"],
    ),
    ("fresh-into-checkpoints", lambda tmp, run: [], ["already holds checkpoints", "run.resume=latest"]),
    ("resume-nowhere", lambda tmp, run: [f"run.resume={tmp / 'nope'}"], ["no checkpoint there", "step-00000002"]),
    ("resume-other-width", lambda tmp, run: ["run.resume=latest", "model.width=16"], ["model.width", "checkpoint 8"]),
    ("steps-below-checkpoint", lambda tmp, run: ["run.resume=latest", "train.steps=1"], ["train.steps=1", "step 2"]),
    ("run-dir-is-file", lambda tmp, run: [f"run.dir={write(tmp / 'f', 'x')}"], ["cannot be written"]),
    (
        "resume-garbled-config",
        lambda tmp, run: [f"run.resume={write(run / CKPT / 'config.yaml', 'model: [').parent}"],
        ["config.yaml", "damaged"],
    ),
    (
        "resume-no-config",
        lambda tmp, run: [(run / CKPT / "config.yaml").unlink(), f"run.resume={run / CKPT}"][1:],
        ["config.yaml", "missing"],
    ),
    (
        "resume-cut-rng",
        lambda tmp, run: [write(run / CKPT / "random_states_0.pkl", b"\x80\x04"), f"run.resume={run / CKPT}"][1:],
        ["random_states_0.pkl"],
    ),
    (
        "resume-flipped-optimizer",
        lambda tmp, run: [flip_byte(run / CKPT / "optimizer_1.bin"), f"run.resume={run / CKPT}"][1:],
        ["optimizer_1.bin"],
    ),
    (
        "resume-bad-state-json",
        lambda tmp, run: [f"run.resume={write(run / CKPT / 'trainer_state.json', '{').parent}"],
        ["trainer_state.json"],
    ),
    (
        "resume-latest-all-damaged",
        lambda tmp, run: [*_damage_all(run), "run.resume=latest"],
        ["No earlier checkpoint", "model.safetensors"],
    ),
    (
        "resume-edited-step",
        lambda tmp, run: [_edit_record(run, '"step": 9,'), f"run.resume={run / CKPT}"][1:],
        ["trainer_state.json", "SHA-256 it recorded of itself"],
    ),
    (
        "resume-legacy-null-step",
        lambda tmp, run: [_edit_record(run, '"step": null,', legacy=True), f"run.resume={run / CKPT}"][1:],
        ["trainer_state.json is malformed", "step must be a whole number"],
    ),
]


def _edit_record(run: Path, step: str, legacy: bool = False) -> None:
    """The newest record's step edited by hand; `legacy`: in a record without its own digest (older checkpoints)."""
    path = run / CKPT / "trainer_state.json"
    text = path.read_text()
    if legacy:
        record = json.loads(text)
        del record["record_sha256"]
        text = json.dumps(record, indent=1)
    assert '"step": 2,' in text
    path.write_text(text.replace('"step": 2,', step))


def _damage_all(run: Path) -> list[str]:
    for folder in (run / "checkpoints").iterdir():
        flip_byte(folder / "model.safetensors", 200)
    return []


COMMANDS: list[tuple[str, Callable, Setup, list[str]]] = [
    (
        "sample-out-unwritable",
        sample.main,
        lambda t, r: [str(r), "--out", "/proc/no/x.png"],
        ["--out", "cannot be written"],
    ),
    ("sample-out-suffix", sample.main, lambda t, r: [str(r), "--out", str(t / "x.jpg")], ["--out", ".npy"]),
    ("sample-num-0", sample.main, lambda t, r: [str(r), "--out", str(t / "x.npy"), "--num", "0"], ["--num 0"]),
    ("sample-batch-0", sample.main, lambda t, r: [str(r), "--out", str(t / "x.npy"), "--batch", "0"], ["--batch 0"]),
    (
        "sample-wrong-checkpoint",
        sample.main,
        lambda t, r: [str(r), "--checkpoint", str(t / "x"), "--out", str(t / "x.npy")],
        ["--checkpoint", "no checkpoint there", "step-00000002"],
    ),
    ("sample-no-run", sample.main, lambda t, r: [str(t / "norun"), "--out", str(t / "x.npy")], ["does not exist"]),
    (
        "sample-cut-generator",
        sample.main,
        lambda t, r: [write(r / CKPT / "generator.safetensors", b"\x10\x00"), str(r), "--out", str(t / "x.npy")][1:],
        ["generator.safetensors", "--checkpoint"],
    ),
    (
        "sample-edited-record",
        sample.main,
        lambda t, r: [_edit_record(r, '"step": 9,'), str(r), "--out", str(t / "x.npy")][1:],
        ["trainer_state.json", "--checkpoint"],
    ),
    (
        "export-legacy-null-step",
        export.main,
        lambda t, r: [_edit_record(r, '"step": null,', legacy=True), str(r), "--out", str(t / "e")][1:],
        ["trainer_state.json is malformed", "--checkpoint"],
    ),
    (
        "evaluate-wrong-checkpoint",
        evaluate.main,
        lambda t, r: [str(r), "--checkpoint", str(t / "x")],
        ["--checkpoint", "no checkpoint there", "step-00000001"],
    ),
    ("evaluate-num-1", evaluate.main, lambda t, r: [str(r), "--num", "1"], ["--num 1"]),
    ("compare-no-run", compare.main, lambda t, r: [str(t / "norun")], ["metrics.jsonl", "does not exist"]),
    ("compare-out-unwritable", compare.main, lambda t, r: [str(r), "--out", "/proc/no/c.png"], ["cannot be written"]),
    ("compare-unknown-metric", compare.main, lambda t, r: [str(r), "--metric", "nope"], ["nope"]),
]


@pytest.fixture
def case_dirs(tmp_path: Path, trained: Path):
    """(scratch folder, a copy of the trained run); signal handlers restored afterwards (train.py installs its own)."""
    handlers = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    yield scratch, run
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    signals._received["signum"] = 0


def check(code: int, err: str, words: list[str]) -> None:
    assert code == 2, f"exit {code}: {err[-2000:]}"
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, err[-2000:]  # one paragraph, on a line of its own
    assert "Traceback" not in err
    for word in words:
        assert word in message[0], f"{word!r} not in {message[0]!r}"


def run_train(capfd, run: Path, args: list[str]) -> tuple[int, str]:
    own_dir = any(a.startswith("run.dir=") for a in args)
    code = cli.main(based([*(() if own_dir else (f"run.dir={run}",)), *TINY, "train.steps=3", *args]))
    return code, capfd.readouterr().err


@pytest.mark.parametrize("name,text,words", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_bad_config_file(capfd, case_dirs, name: str, text: bytes | str, words: list[str]) -> None:
    scratch, run = case_dirs
    before = snapshot(run)
    code, err = run_train(capfd, run, ["--config", str(write(scratch / "bad.yaml", text))])
    check(code, err, words + ["bad.yaml"] * (name not in ("yaml-unset-env", "yaml-nan")))
    assert snapshot(run) == before


@pytest.mark.parametrize("name,args,words", OVERRIDES, ids=[c[0] for c in OVERRIDES])
def test_bad_override(capfd, case_dirs, name: str, args: list[str], words: list[str]) -> None:
    scratch, run = case_dirs
    before = snapshot(run)
    check(*run_train(capfd, run, args), words)
    assert snapshot(run) == before


@pytest.mark.parametrize("name,setup,words", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files_and_run_folders(capfd, case_dirs, name: str, setup: Setup, words: list[str]) -> None:
    scratch, run = case_dirs
    args = setup(scratch, run)
    before = snapshot(run)
    check(*run_train(capfd, run, args), words)
    after = snapshot(run)
    assert after == before, {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@pytest.mark.parametrize("name,main,setup,words", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_bad_command_input(capfd, case_dirs, name: str, main: Callable, setup: Setup, words: list[str]) -> None:
    scratch, run = case_dirs
    args = setup(scratch, run)
    before = snapshot(run)
    check(main(args), capfd.readouterr().err, words)
    assert snapshot(run) == before


def test_matrix_size() -> None:
    assert len(YAML_CASES) + len(OVERRIDES) + len(FILE_CASES) + len(COMMANDS) >= 60


SUBPROCESS = [  # through the real entry points: a traceback would show here
    ["seed=-1"],
    ["loss.gp_weight=nan"],
    ["train.precision=fp16"],  # CPU: refused instead of silently running fp32
    ["model.z_dim=100000000"],
]


@pytest.mark.parametrize("args", SUBPROCESS, ids=[a[0].split("=")[0] for a in SUBPROCESS])
def test_bad_input_through_train_py(run_dir: Path, args: list[str]) -> None:
    proc = python_train(f"run.dir={run_dir}", *TINY, *args)
    check(proc.returncode, proc.stderr, [args[0].split("=")[0]])
    assert not run_dir.exists()  # refused before the run folder


LAUNCH_Q = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--cpu", "--num_processes", "1"]
LAUNCH_Q += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py"]


def test_bad_inputs_under_accelerate_launch(tmp_path: Path) -> None:
    """Through Accelerate's launcher in quiet mode (-q; without it the launcher prints its own traceback)."""
    bad = write(tmp_path / "tab.yaml", "train:\n\tsteps: 3\n")
    for args, words in (
        (["--config", str(bad)], ["config file", "tab.yaml"]),
        (["data.name=mnist", f"data.root={tmp_path}"], ["data.name=mnist"]),
    ):
        proc = run_cmd([*LAUNCH_Q, f"run.dir={tmp_path / 'run'}", *args])
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        message = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(message) == 1 and all(word in message[0] for word in words), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_print_config_keeps_interpolations(tmp_path: Path) -> None:
    cmd = [sys.executable, "train.py", "--print-config", "log.project=${oc.env:TOKEN_X}"]
    proc = run_cmd(cmd, env={"TOKEN_X": "tok-999-secret"})
    assert proc.returncode == 0 and "${oc.env:TOKEN_X}" in proc.stdout and "tok-999-secret" not in proc.stdout


def test_damaged_or_stray_files_do_not_stop_train_sample_evaluate(capfd, case_dirs) -> None:
    """Not errors: a stray checkpoints/step-00000020-backup folder and a cut metrics line are skipped."""
    scratch, run = case_dirs
    shutil.copytree(run / CKPT, run / "checkpoints/step-00000020-backup")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss_d": 1.2')
    assert sample.main([str(run), "--out", str(scratch / "s.npy"), "--num", "4"]) == 0
    assert compare.main([str(run), "--out", str(scratch / "c.png")]) == 0
    assert cli.main([*BASE, f"run.dir={run}", *TINY, "train.steps=3", "run.resume=latest"]) == 0
    out = capfd.readouterr().out
    assert "resuming from" in out and "step-00000002 at step 2" in out
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert Image.open(scratch / "c.png").size[0] > 0
