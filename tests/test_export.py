"""Hub-style export: save_pretrained -> from_pretrained gives the same samples as the run's checkpoint, offline; the
model card's counts, digest and metrics match independent computations."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, ok, python_train, read_metrics, run_cmd

OFFLINE = {"HF_HUB_OFFLINE": "1"}  # huggingface_hub raises instead of reaching the network


def export(run_dir: Path, out: Path) -> None:
    ok(run_cmd([sys.executable, "-m", "trainer.export", str(run_dir), "--out", str(out)], env=OFFLINE))


@pytest.mark.parametrize("conditional", [False, True])
def test_save_load_gives_the_checkpoints_samples(run_dir: Path, tmp_path: Path, monkeypatch, conditional: bool) -> None:
    cond = ["data.image_size=32", "model.name=resnet32", "model.conditional=true", "train.batch_size=8"]
    ok(python_train(f"run.dir={run_dir}", "train.steps=2", *TINY, *(cond if conditional else [])))
    out = tmp_path / "hub"
    export(run_dir, out)
    assert {"config.json", "model.safetensors", "README.md", "samples.png"} <= {p.name for p in out.iterdir()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from trainer.export import GANGenerator
    from trainer.run.checkpoint import list_checkpoints
    from trainer.sample import generate, load_generator

    loaded = GANGenerator.from_pretrained(out)
    reference, cfg = load_generator(list_checkpoints(run_dir)[-1], torch.device("cpu"))  # trainer.sample's loader
    expected = generate(reference, 20, cfg.model.z_dim, seed=5, batch=500, device=torch.device("cpu"))
    assert torch.equal(loaded.sample(20, seed=5), expected)
    assert loaded.num_classes == (10 if conditional else 0)
    card = (out / "README.md").read_text()
    params = sum(p.numel() for p in reference.parameters())
    assert f"| generator (this model) | {params:,} |" in card
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() in card
    assert "train:\n  steps: 2" in card and "No evaluation was run" in card
    assert json.loads((out / "config.json").read_text())["model"] == ("resnet32" if conditional else "conv-small")


def test_card_reports_the_runs_eval_metrics(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    toy = ["data.name=8gaussians", "model.name=toy", "model.z_dim=2", "model.width=16", "train.batch_size=32"]
    ok(python_train(f"run.dir={run_dir}", "train.steps=4", *TINY, *toy, "eval.every=2", "eval.num=200"))
    from trainer.export import main

    assert main([str(run_dir), "--out", str(tmp_path / "hub")]) == 0  # the command's main() in this process
    card = (tmp_path / "hub" / "README.md").read_text()
    w1 = {m["step"]: m["eval_w1"] for m in read_metrics(run_dir) if "eval_w1" in m}
    best = min(w1, key=w1.get)
    assert f"| `eval_w1` | {w1[4]:.6g} | {w1[best]:.6g} ({best}) | {w1[4]:.6g} |" in card
    assert "checkpoint `step-00000004` (generator step 4" in card

    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # every Hub request raises before it leaves the process
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # and a closed local port, should one not
    capsys.readouterr()
    assert main([str(run_dir), "--out", str(tmp_path / "hub2"), "--push-to-hub", "someone/toy-gan"]) == 2
    err = capsys.readouterr().err
    assert "pushing" in err and "hf auth login" in err and "is complete and can be uploaded later" in err
    assert (tmp_path / "hub2" / "model.safetensors").is_file()


def test_export_without_checkpoint_is_a_clean_error(tmp_path: Path, capsys) -> None:
    from trainer.export import main

    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
