#!/usr/bin/env bash
# Before/after artefacts of a refactor: four runs (the offline default, configs/digits.yaml (the schema's defaults and
# the offline default before 28x28 digits), 2-process DDP toy, conditional AC-GAN), same seed;
# prints a digest of the metrics values and the checkpoint fingerprints. Usage: bash scripts/refactor_proof.sh REPO OUT
set -euo pipefail
repo=${1:?repo}; out=${2:?out}
rm -rf "$out"; mkdir -p "$out"
cd "$repo"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
py=$repo/.venv/bin/python
$py train.py run.dir=$out/default train.steps=60 log.every=10 checkpoint.every=30 train.cpu_threads=1 > $out/default.log 2>&1
$py train.py --config configs/digits.yaml run.dir=$out/digits train.steps=60 log.every=10 checkpoint.every=30 \
  train.cpu_threads=1 > $out/digits.log 2>&1
ACCELERATE_USE_CPU=1 $py -m torch.distributed.run --standalone --nproc_per_node 2 train.py --config configs/8gaussians.yaml \
  run.dir=$out/toy2 train.steps=30 log.every=5 checkpoint.every=15 log.sample_every=0 train.cpu_threads=1 > $out/toy2.log 2>&1
$py train.py --config configs/digits.yaml run.dir=$out/cond model.name=resnet32 model.width=16 data.image_size=32 model.conditional=true \
  train.steps=12 log.every=3 checkpoint.every=6 train.batch_size=16 log.sample_every=6 train.cpu_threads=1 > $out/cond.log 2>&1
$py "$(dirname "$0")"/artefact_digest.py $out
