#!/usr/bin/env bash
# Everything GPU-side in one call, at most 8 minutes on one H100/H200 (BUDGET seconds, default 470): real train.py
# runs (bf16, fp16, bf16 with speed.cuda_graph through its capture and replays); the CUDA tests (tests/test_cuda.py:
# graphed steps equal eager ones, train.py with the graph resumes, the graph under DDP with one NCCL process;
# tests/test_precision.py: bf16/fp16 main pass, fp32 penalty; the compiled loss on CUDA); the penalty's parameter
# gradients with TF32 convolutions against IEEE fp32; then `python -m trainer.bench` on the paper's CIFAR-10 ResNet
# and the 64x64 ResNet in bf16 with the fp32 penalty, each raced against the plain fp32 loop in the same invocation.
# Needs no network: run `bash tests/gpu_wheels.sh` first where pip works and carry .whl/ along (omegaconf and its
# parser runtime, the two dependencies the GPU image lacks). Stages that would overrun the budget are skipped and
# listed.
#
# Results in $OUT (default gpu-out/): gpu_checks.json (every figure), gpu_checks.log (everything printed), and the
# raw bench-*.json / train-*.log / pytest-*.log; with RESULTS=DIR also DIR/gpu_checks.json, DIR/gpu_checks.log and
# DIR/results.tgz, refreshed after every stage.
#   bash tests/gpu_checks.sh            # everything
#   bash tests/gpu_checks.sh tests      # the tests only
#   bash tests/gpu_checks.sh bench      # the benchmarks only
set -u
OUT=${OUT:-gpu-out}
PARTS="$OUT/parts"
mkdir -p "$PARTS"
exec > >(tee -a "$OUT/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then  # pure-Python wheels tests/gpu_wheels.sh fetched (the GPU machine has no network)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the trainer from this checkout, installed or not
what=${1:-all}
BUDGET=${BUDGET:-470}
START=$SECONDS

left() { echo $((BUDGET - (SECONDS - START))); }

fits() {  # fits NAME SECONDS: true if the stage's time limit still fits the budget, else records it as skipped
    if [ "$(left)" -lt "$2" ]; then
        echo "== skipped $1: needs up to $2 s, $(left) s left of the budget"
        echo "{\"skipped\": \"needs up to $2 s, $(left) s left\"}" >"$PARTS/skip-$1.json"
        return 1
    fi
}

collect() {  # every part so far into gpu_checks.json (and into $RESULTS)
    $PY tests/gpu_summary.py "$OUT" >/dev/null || echo "gpu_summary.py failed (exit $?)"
    if [ -n "${RESULTS:-}" ]; then
        cp "$OUT/gpu_checks.json" "$OUT/gpu_checks.log" "$RESULTS/" 2>/dev/null
        tar czf "$RESULTS/results.tgz" -C "$OUT" . 2>/dev/null
    fi
    true
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv |
    tee "$OUT/gpu.txt"
$PY - "$PARTS/environment.json" <<'EOF'
import json, sys, torch, accelerate, torchvision
info = {"torch": torch.__version__, "accelerate": accelerate.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
        "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
print(json.dumps(info))
json.dump(info, open(sys.argv[1], "w"))
EOF

train_run() {  # train_run NAME LIMIT overrides...: train.py on the GPU, its exit code and last metrics line
    local name=$1 limit=$2
    shift 2
    fits "train-$name" "$limit" || return
    timeout "$limit" $PY train.py run.dir="$OUT/run-$name" log.sample_every=0 "$@" >"$OUT/train-$name.log" 2>&1
    local code=$?
    echo "train.py $*: exit $code; $(tail -n 1 "$OUT/run-$name/metrics.jsonl" 2>/dev/null | cut -c1-200)"
    grep -v "it/s\]" "$OUT/train-$name.log" | grep -v "^\s*$" | tail -n 8
    $PY - "$OUT/run-$name" "$code" "$*" >"$PARTS/train-$name.json" <<'EOF'
import json, sys
from pathlib import Path
run, code, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
print(json.dumps({"args": args, "exit": code, "logged_steps": len(lines), "last": json.loads(lines[-1]) if lines else None}))
EOF
    rm -rf "$OUT/run-$name/checkpoints"
    collect
}

pytest_stage() {  # pytest_stage NAME LIMIT test files...: their summary line, exit code and failures
    local name=$1 limit=$2
    shift 2
    fits "pytest-$name" "$limit" || return
    echo "== tests ($name): $*"
    timeout "$limit" $PY -m pytest -q -p no:cacheprovider -rs "$@" >"$OUT/pytest-$name.log" 2>&1
    local code=$?
    tail -n 25 "$OUT/pytest-$name.log"
    $PY - "$OUT/pytest-$name.log" "$code" >"$PARTS/pytest-$name.json" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
import re
summary = next((l.strip("= ") for l in reversed(lines) if re.match(r"=* ?\d+ (passed|failed|skipped|error)", l)), "")
failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
print(json.dumps({"exit": int(sys.argv[2]), "summary": summary, "failed": failed}))
EOF
    collect
}

bench() {  # bench NAME LIMIT [bench args and overrides...]
    local name=$1 limit=$2
    shift 2
    fits "bench-$name" "$limit" || return
    echo "== bench $name: $*"
    timeout "$limit" $PY -m trainer.bench --rounds 4 --round-seconds 1 --out "$OUT/bench-$name.json" "$@" \
        >"$OUT/bench-$name.log" 2>&1
    local code=$?
    tail -n 16 "$OUT/bench-$name.log"
    [ $code -eq 0 ] || echo "{\"exit\": $code, \"args\": \"$*\"}" >"$PARTS/bench-$name-failed.json"
    collect
}

if [ "$what" = all ]; then
    echo "== train.py on the GPU (the default offline job)"
    train_run bf16 60 train.steps=3 log.every=1 train.precision=bf16
    train_run fp16 60 train.steps=3 log.every=1 train.precision=fp16
    # 12 steps, one log at the end: 3 eager warm-ups, the capture at step 4, replays 5-11, the timed step 12
    train_run bf16-graph 75 train.steps=12 log.every=12 train.precision=bf16 speed.cuda_graph=true
fi
if [ "$what" = all ] || [ "$what" = tests ]; then
    # the CUDA tests first, on their own: their verdict is kept even if the second batch runs out of time
    pytest_stage cuda 180 tests/test_cuda.py
    pytest_stage precision-compile 150 tests/test_precision.py tests/test_losses.py tests/test_compiled_loss.py
fi
if [ "$what" = all ]; then
    if fits penalty-tf32 60; then
        echo "== the penalty's parameter gradients, resnet32: PyTorch's float32 modes (TF32 convs, the default) vs IEEE"
        timeout 60 $PY - >"$PARTS/penalty-tf32.json" <<'EOF'
import json, torch
from trainer.accel.speed import float32_modes
from trainer.core.losses import gradient_penalty
from trainer.nets.models import build_models
torch.manual_seed(0)
critic = build_models("resnet32", 128, 0, 3, 32)[1].cuda()
real, fake = torch.rand(64, 3, 32, 32, device="cuda") * 2 - 1, torch.rand(64, 3, 32, 32, device="cuda") * 2 - 1
eps, params = torch.rand(64, device="cuda"), list(critic.parameters())
def grads(modes):
    with float32_modes(modes):
        penalty, _ = gradient_penalty(critic, real, fake, eps)
        found = torch.autograd.grad(penalty, params, allow_unused=True)
        return penalty.item(), torch.cat([g.flatten() for g in found if g is not None])
(p_ieee, ieee), (p_default, default) = grads(("ieee", "ieee")), grads(("none", "tf32"))
print(json.dumps({"relative_gradient_difference": ((default - ieee).norm() / ieee.norm()).item(),
                  "penalty_ieee": p_ieee, "penalty_tf32_convs": p_default}))
EOF
        cat "$PARTS/penalty-tf32.json"
        collect
    fi
fi

[ "$what" = tests ] && { collect; $PY tests/gpu_summary.py "$OUT"; exit 0; }
C10=(--config configs/cifar10-resnet.yaml --synthetic 10000 train.precision=bf16)
C64=(--config configs/celeba64.yaml --synthetic 2000 train.precision=bf16)
bench resnet32-default 60 "${C10[@]}"
bench resnet32-graph 60 "${C10[@]}" speed.cuda_graph=true
bench resnet32-compile 120 "${C10[@]}" speed.compile=true
bench resnet32-compile-graph 120 "${C10[@]}" speed.compile=true speed.cuda_graph=true
bench resnet64-graph 75 "${C64[@]}" speed.cuda_graph=true
bench resnet64-default 75 "${C64[@]}"
bench resnet32-graph-ieee 60 "${C10[@]}" speed.cuda_graph=true speed.tf32=false
bench resnet32-graph-chlast 60 "${C10[@]}" speed.cuda_graph=true speed.channels_last=true
bench resnet32-fp32-graph 60 --config configs/cifar10-resnet.yaml --synthetic 10000 train.precision=no \
    speed.cuda_graph=true
collect
if fits quality 150; then
    # The converged budget at GPU speed (trainer/converged.py): WGAN-GP on the 8 Gaussians and real digits until the
    # targets hold, chunk by chunk, scored after each; stopped by the timeout it checkpoints and reports what finished.
    echo "== quality: python -m trainer.reproduce --budget converged (8gaussians, mnist5k) on the GPU"
    timeout 150 $PY -m trainer.reproduce --budget converged --datasets 8gaussians mnist5k --runs "$OUT/quality/runs" \
        --out "$OUT/quality" --models "$OUT/quality/models" --cache-dir "$OUT/quality/cache" >"$OUT/quality.log" 2>&1
    echo "exit $?"
    tail -n 12 "$OUT/quality.log"
    rm -rf "$OUT/quality/runs"/*/*/checkpoints "$OUT/quality/cache"
    collect
fi
echo "== summary ($((SECONDS - START)) s)"
$PY tests/gpu_summary.py "$OUT"
