"""`python -m trainer.export RUN_DIR --out DIR [--push-to-hub USER/NAME]`: a run's generator as a Hub-style model.

The folder `DIR` holds what `save_pretrained` writes: `config.json` (the architecture), `model.safetensors` (the
exported weights: the EMA generator when the run kept one), `samples.png` (seed 0) and a model card `README.md` with
the training config, the eval metrics and where they come from, parameter counts and fingerprints. Load it with
`GANGenerator.from_pretrained(DIR or "user/name")`; `--push-to-hub` uploads the same folder (needs `hf auth login`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors.torch import load_file
from torch import Tensor, nn

from trainer.digest import file_sha256
from trainer.errors import TrainerError
from trainer.nets.layers import class_rows
from trainer.nets.models import PRESETS, build_models, parameter_count

WEIGHTS = "model.safetensors"  # huggingface_hub's name for PyTorchModelHubMixin weights
SAMPLES = "samples.png"


class GANGenerator(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="wgan-gp-trainer",
    tags=["gan", "wgan-gp", "unconditional-image-generation"],
    paper_url="https://arxiv.org/abs/1704.00028",
):
    """A trained generator G(z, labels) of one preset, with save_pretrained / from_pretrained / push_to_hub.

    The constructor's arguments are the architecture (saved as config.json); `provenance` and `training_config`,
    set by `from_checkpoint`, only feed the model card.
    """

    def __init__(
        self, model: str, z_dim: int, width: int, channels: int, image_size: int, num_classes: int = 0, data: str = ""
    ) -> None:
        super().__init__()
        self.net, critic = build_models(model, z_dim, width, channels, image_size, num_classes=num_classes)
        self.z_dim, self.num_classes, self.data, self.model = z_dim, num_classes, data, model
        self.is_toy = PRESETS[model].is_toy
        self.critic_parameters = parameter_count(critic)
        self.provenance: dict = {}
        self.training_config = ""
        self.config_texts: dict[str, str] = {}  # dotted key -> `${...}` text, for keys the run's config interpolated

    def forward(self, z: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.net(z, labels)

    @torch.no_grad()
    def sample(self, num: int, seed: int = 0, labels: Optional[Tensor] = None) -> Tensor:
        """`num` samples from z ~ N(0, I) drawn with `seed` (as `python -m trainer.sample --seed`); conditional models
        default to one class per grid row."""
        z = torch.randn(num, self.z_dim, generator=torch.Generator().manual_seed(seed))
        if labels is None and self.num_classes:
            labels = class_rows(num, self.num_classes)
        device = next(self.parameters()).device
        return self(z.to(device), None if labels is None else labels.to(device)).float().cpu()

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)  # model.safetensors
        from trainer.run.pictures import save_grid, save_toy_plot

        samples = self.sample(64 if not self.is_toy else 1000)
        if self.is_toy:
            from trainer.data.toys import TOYS

            real = (
                TOYS[self.data](len(samples), generator=torch.Generator().manual_seed(1)) if self.data in TOYS else None
            )
            save_toy_plot(samples, samples[:0] if real is None else real, save_directory / SAMPLES, title=self.data)
        else:
            save_grid(samples, save_directory / SAMPLES)
        self._weights_sha256 = file_sha256(save_directory / WEIGHTS)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        return ModelCard(model_card(self, getattr(self, "_weights_sha256", "")))


def from_checkpoint(ckpt: Path) -> GANGenerator:
    """The exported generator of a checkpoint folder, with its run's provenance for the model card."""
    from trainer.core.gate import configure
    from trainer.data.registry import DATASETS
    from trainer.run import checkpoint

    try:  # every file against its recorded SHA-256 and the record against its own, as trainer.sample does
        state = checkpoint.verify(ckpt)
    except TrainerError as err:
        raise TrainerError(f"{err} Export an earlier one with --checkpoint.") from None
    cfg = configure(str(ckpt / "config.yaml"))
    spec = DATASETS[cfg.data.name]
    generator = GANGenerator(
        model=cfg.model.name,
        z_dim=cfg.model.z_dim,
        width=cfg.model.width,
        channels=spec.channels,
        image_size=cfg.data.image_size,
        num_classes=int(state.get("num_classes", 0)),
        data=cfg.data.name,
    )
    try:
        generator.net.load_state_dict(load_file(str(ckpt / checkpoint.EXPORT_FILE)))
    except (OSError, RuntimeError) as err:
        raise TrainerError(
            f"{ckpt / checkpoint.EXPORT_FILE} could not be read ({err}); try an earlier checkpoint."
        ) from None
    generator.training_config = (ckpt / "config.yaml").read_text()  # as written: interpolations as their text
    generator.config_texts = dict(getattr(cfg, "_raw", {}))  # the card quotes config values as written, too
    generator.provenance = provenance(ckpt, state, cfg.train.ema_decay, cfg.eval.num, generator.config_texts)
    return generator.eval()


def provenance(ckpt: Path, state: dict, ema_decay: float, eval_num: int, texts: Optional[dict] = None) -> dict:
    """Where the weights and the metrics come from: the checkpoint, its step, the run's eval_* lines and summary.
    `texts` (dotted key -> `${...}` text) replaces the values the run's config interpolated, for the card."""
    texts = texts or {}
    decay = texts.get("train.ema_decay", ema_decay)
    run_dir, step = ckpt.parent.parent, int(state["step"])
    path = run_dir / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    at_step = {k: v for r in lines if r.get("step") == step for k, v in r.items() if k.startswith("eval_")}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary = {k: v for k, v in summary.items() if k.startswith("eval_")}  # "run" holds the end-of-run figures
    ranks = [entry.get("generator", "") if isinstance(entry, dict) else "" for entry in state.get("fingerprints", [])]
    return {
        "run": run_dir.name,
        "checkpoint": ckpt.name,
        "step": step,
        "world_size": state.get("world_size", 1),
        "weights": f"EMA generator (decay {decay})" if ema_decay > 0 else "generator (no EMA)",
        "eval_at_step": at_step,
        "eval_summary": summary,
        "eval_num": texts.get("eval.num", eval_num),
        "rank_fingerprints": [f for f in ranks if f],
    }


def model_card(g: GANGenerator, weights_sha256: str) -> str:
    """The README.md of an exported generator (YAML front matter for the Hub, then the sections)."""
    p, texts = g.provenance, g.config_texts
    model, data = texts.get("model.name", g.model), texts.get("data.name", g.data)
    kind = f"A class-conditional ({g.num_classes} classes, AC-GAN)" if g.num_classes else "An unconditional"
    lines = [
        "---",
        "library_name: wgan-gp-trainer",
        "tags: [gan, wgan-gp, pytorch, safetensors]",
        *([f"datasets: [{data}]"] if data and "data.name" not in texts else []),  # `${...}` is no dataset id
        "---",
        "",
        f"# WGAN-GP generator: `{model}` on `{data or 'unknown data'}`",
        "",
        f"{kind} generator trained with the WGAN-GP objective (Gulrajani et al. 2017, arXiv:1704.00028).",
        "",
        "```python",
        "from trainer.export import GANGenerator   # pip install -e . in the wgan-gp-trainer repository",
        'g = GANGenerator.from_pretrained("THIS_FOLDER_OR_REPO_ID")',
        "x = g.sample(16, seed=0)   # images (N, C, H, W) in [-1, 1], or (N, 2) points",
        "```",
        "",
        f"![samples]({SAMPLES})",
        "",
        f"`{SAMPLES}`: 64 samples, seed 0 (2-D toys: 1,000 points).",
        "",
        "## Parameters",
        "",
        "| network | parameters |",
        "|---|---|",
        f"| generator (this model) | {parameter_count(g.net):,} |",
        f"| critic (training only, not exported) | {g.critic_parameters:,} |",
        "",
        f"Latent size z_dim = {texts.get('model.z_dim', g.z_dim)}, z ~ N(0, I).",
        "",
    ]
    lines += _evaluation_section(p) + _provenance_section(p, weights_sha256)
    if g.training_config:
        lines += ["## Training config", "", "```yaml", g.training_config.rstrip(), "```", ""]
    return "\n".join(lines)


def _evaluation_section(p: dict) -> list[str]:
    at_step, summary = p.get("eval_at_step", {}), p.get("eval_summary", {})
    if not at_step and not summary:
        return ["## Evaluation", "", "No evaluation was run during training (eval.every=0).", ""]
    out = [
        "## Evaluation",
        "",
        f"| metric | this checkpoint (step {p.get('step')}) | best (step) | last |",
        "|---|---|---|---|",
    ]
    for key in sorted(set(at_step) | set(summary)):
        entry = summary.get(key, {})
        best = f"{entry['best']:.6g} ({entry['best_step']})" if entry else "-"
        here = f"{at_step[key]:.6g}" if key in at_step else "-"
        out.append(f"| `{key}` | {here} | {best} | {entry.get('last', float('nan')):.6g} |" if entry else
                   f"| `{key}` | {here} | - | - |")  # fmt: skip
    out += [
        "",
        f"Computed during training by `trainer.evaluate` on {p.get('eval_num')} generated samples per evaluation "
        "(`metrics.jsonl` and `summary.json` of the run); best and last are over the whole run, which may extend "
        "past this checkpoint.",
        "",
    ]
    return out


def _provenance_section(p: dict, weights_sha256: str) -> list[str]:
    out = ["## Provenance", ""]
    if p:
        out += [
            f"- run `{p['run']}`, checkpoint `{p['checkpoint']}` (generator step {p['step']}, "
            f"{p['world_size']} process(es))",
            f"- weights: {p['weights']}",
        ]
        if p["rank_fingerprints"]:
            out.append(f"- training generator fingerprints per process: {', '.join(p['rank_fingerprints'])}")
    out += [f"- `{WEIGHTS}` SHA-256: `{weights_sha256}`", ""]
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder (holds checkpoints/)")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder instead of the run's latest")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (save_pretrained)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload to this Hub model repo (user/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    args = parser.parse_args(argv)
    try:
        from trainer.run import checkpoint

        ckpt = args.checkpoint or checkpoint.resolve(args.run_dir, "latest")
        if ckpt is None or not (ckpt / checkpoint.STATE_FILE).is_file():
            raise TrainerError(f"no checkpoint in {args.run_dir / 'checkpoints'}; train first, or pass --checkpoint.")
        generator = from_checkpoint(ckpt)
        try:
            generator.save_pretrained(args.out)
        except OSError as err:
            raise TrainerError(
                f"--out {args.out} cannot be written ({err.strerror or err}); choose another folder."
            ) from None
        if args.push_to_hub:
            from huggingface_hub import HfApi

            try:
                api = HfApi()
                api.create_repo(args.push_to_hub, private=args.private, exist_ok=True)
                api.upload_folder(folder_path=args.out, repo_id=args.push_to_hub, commit_message=f"{ckpt.name}")
            except Exception as err:  # noqa: BLE001 - login, network and permission errors all mean the same here
                raise TrainerError(
                    f"pushing {args.out} to the Hub repo {args.push_to_hub} failed ({type(err).__name__}: "
                    f"{str(err)[:200]}). Log in with `hf auth login` (a token with write access), check the "
                    f"network, then rerun; the folder {args.out} is complete and can be uploaded later."
                ) from None
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {ckpt} as a Hub model folder {args.out}" + (f"; pushed to {args.push_to_hub}" * bool(args.push_to_hub))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
