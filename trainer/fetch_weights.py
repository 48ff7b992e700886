"""`python -m trainer.fetch_weights [--out PATH]`: downloads the Inception-v3 weights that FID/KID/IS need."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from trainer.digest import file_sha256
from trainer.errors import TrainerError
from trainer.metrics.inception import WEIGHTS_FILE, WEIGHTS_URL, default_weights_path, load_extractor


def download(out: Path) -> None:
    from torch.hub import download_url_to_file

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(WEIGHTS_URL, str(out), progress=True)
    except OSError as err:  # URLError and socket errors are OSErrors
        raise TrainerError(
            f"downloading {WEIGHTS_URL} failed ({err}). This machine may have no internet: run "
            f"`python -m trainer.fetch_weights --out {WEIGHTS_FILE}` on one that has (e.g. a login node) and copy the "
            f"file to {out}, or set eval.inception_weights to wherever you put it."
        ) from None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.fetch_weights",
        description=__doc__,
        epilog="Run it once on a machine with internet (a login node). By default the file goes where torch-fidelity "
        "would put it, the torch hub cache ($TORCH_HOME/hub/checkpoints/, usually ~/.cache/torch/hub/checkpoints/), "
        "which trainer.evaluate searches; copy it to the same place on the compute nodes, or point "
        "eval.inception_weights at it.",
    )
    parser.add_argument("--out", type=Path, help=f"where to save {WEIGHTS_FILE} (default: the torch hub cache)")
    parser.add_argument("--force", action="store_true", help="download again even when the file exists")
    args = parser.parse_args(argv)
    out = args.out or default_weights_path()
    try:
        if args.force or not out.is_file():
            download(out)
        load_extractor(out)  # proves the file is complete and loads into the network
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    hint = "" if out == default_weights_path() else f"; use it with eval.inception_weights={out}"
    print(f"Inception weights ready at {out} (sha256 {file_sha256(out)[:16]}){hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
