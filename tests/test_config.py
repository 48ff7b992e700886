"""Config: YAML + dotted overrides into the typed schema, and every bad input stopping with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, TINY, python_train

from trainer.cli import main
from trainer.config import to_yaml
from trainer.core.gate import configure
from trainer.errors import TrainerError


def test_yaml_then_overrides_into_typed_schema() -> None:
    cfg = configure(str(ROOT / "configs/mnist-dcgan.yaml"), ("train.steps=20000", "loss.gp_weight=5", "seed=7"))
    assert (cfg.model.name, cfg.data.name, cfg.data.image_size) == ("dcgan28", "mnist", 28)
    assert cfg.train.steps == 20000 and isinstance(cfg.train.steps, int)
    assert cfg.loss.gp_weight == 5.0 and isinstance(cfg.loss.gp_weight, float)
    assert cfg.seed == 7 and cfg.train.n_critic == 5  # untouched keys keep the file's values


def test_paper_defaults() -> None:
    cfg = configure()
    assert (cfg.loss.name, cfg.loss.gp_weight, cfg.train.n_critic) == ("wgan-gp", 10.0, 5)


def test_without_config_train_py_reads_the_offline_default(capsys, tmp_path: Path, monkeypatch) -> None:
    """No --config: configs/default.yaml, which is configs/mnist5k-mlp-8k.yaml (the converged budget's recipe) but
    for its run folder; --config replaces it, so a preset sits on the schema's defaults alone. Its absence is one
    message naming the file and the fix."""
    import yaml

    import trainer.cli

    default = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    recipe = yaml.safe_load((ROOT / "configs/mnist5k-mlp-8k.yaml").read_text())
    assert default.pop("run") == {"dir": "runs/default"} and recipe.pop("run") == {"dir": "runs/mnist5k-mlp-8k"}
    assert default == recipe
    assert main(["train.steps=5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["data"]["name"], printed["model"]["name"], printed["optim"]["lr_d"]) == ("mnist5k", "mlp", 2e-3)
    assert (printed["train"]["steps"], printed["train"]["schedule_steps"]) == (5, 8000)
    assert main(["--config", str(ROOT / "configs/8gaussians.yaml"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr_d"] is None  # the schema's null, not the default's
    monkeypatch.setattr(trainer.cli, "DEFAULT_CONFIG", tmp_path / "configs" / "default.yaml")
    assert main(["train.steps=5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the offline default config {tmp_path}/configs/default.yaml is missing")
    assert "git checkout -- configs/default.yaml" in err and len(err.strip().splitlines()) == 1


def test_every_shipped_config_validates() -> None:
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        configure(str(path))


def test_print_config_round_trips_and_exits(capsys, tmp_path: Path) -> None:
    assert (
        main(
            [
                "--config",
                str(ROOT / "configs/8gaussians.yaml"),
                "train.steps=77",
                f"run.dir={tmp_path}/r",
                "--print-config",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    again = configure(str(saved))
    assert again.train.steps == 77 and again.data.name == "8gaussians" and to_yaml(again) == printed
    assert not (tmp_path / "r").exists()  # nothing started


BAD = [
    (["model.nme=toy"], "unknown config key 'model.nme'", "model.name"),
    (["train.stepz=5"], "unknown config key 'train.stepz'", "train.steps"),
    (["train.steps=many"], "'train.steps' has the wrong type", "int"),
    (["loss.gp_weight=-1"], "loss.gp_weight=-1.0 is impossible", "0 or more"),
    (["train.n_critic=0"], "train.n_critic=0 is impossible", "at least 1"),
    (["train.batch_size=0"], "train.batch_size=0 is impossible", "at least 1"),
    (["model.name=resnet9"], "model.name='resnet9' is not a valid choice", "conv-small, dcgan28, dcgan64, mlp"),
    (["data.name=imagenet"], "data.name='imagenet' is not a valid choice", "digits"),
    (["loss.name=wgan"], "loss.name='wgan' is not a valid choice", "wgan-gp, wgan-lp, wgan-clip, gan"),
    (["model.name=conv-small"], "data.image_size=28 cannot be produced by model.name=conv-small", "8, 16, 32, 64"),
    (["model.name=toy"], "model.name=toy is a 2-D toy model", "conv-small, dcgan28, dcgan64, mlp, resnet128, resnet32"),
    (["train.ema_decay=1.5"], "train.ema_decay=1.5 is impossible", "[0, 1)"),
    (["loss.name=wgan-clip", "train.deepspeed=2"], "loss.name=wgan-clip is not supported under DeepSpeed", "without"),
    (["speed.lazy_penalty=4"], "config key 'speed.lazy_penalty' (from override", "loss.lazy_penalty="),
    (["train.steps"], "not of the form key=value", "train.steps=2000"),
    (["--config", "configs/nope.yaml"], "config file 'configs/nope.yaml' does not exist", "configs/digits.yaml"),
]


@pytest.mark.parametrize(("argv", "problem", "fix"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_gives_one_message_and_exit_2(argv, problem, fix, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and fix in err
    assert len(err.strip().splitlines()) == 1  # one paragraph, no traceback wall


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepss: 10\n")
    with pytest.raises(TrainerError, match=r"unknown config key 'train.stepss' \(from .*bad.yaml\)"):
        configure(str(bad))


def test_process_level_errors_have_no_traceback(tmp_path: Path) -> None:
    """Through the real entry point: exit 2, the message on stderr, no Python traceback, nothing written."""
    proc = python_train("loss.gp_weight=-3", f"run.dir={tmp_path}/a")
    assert proc.returncode == 2 and "loss.gp_weight" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "a").exists()
    missing = python_train(
        "data.name=mnist",
        "model.name=dcgan28",
        "data.image_size=28",
        f"data.root={tmp_path}/d",
        f"run.dir={tmp_path}/m",
    )
    assert missing.returncode == 2 and "data.download=true" in missing.stderr and "Traceback" not in missing.stderr
    big = python_train(f"run.dir={tmp_path}/b", *TINY, "train.batch_size=2000", "train.steps=1")
    assert big.returncode == 2 and "train.batch_size=2000 is larger than" in big.stderr
