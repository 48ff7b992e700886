#!/usr/bin/env bash
# GPU checks and benchmarks on one CUDA GPU, in one go (about 5 minutes on an H100): real train.py runs in bf16,
# fp16 and bf16 with speed.cuda_graph; the CUDA tests (tests/test_cuda.py: graphed steps equal eager ones, train.py
# with the graph resumes; tests/test_precision.py: bf16/fp16 main pass, fp32 penalty); then `python -m trainer.bench`
# on the paper's CIFAR-10 ResNet (and the 64x64 ResNet) in bf16 with the fp32 penalty, raced against the plain fp32
# reference loop. Results: $OUT (default gpu-out/): bench-*.json, logs, summary.txt; with RESULTS=DIR (another
# folder) also DIR/results.tgz (all of them) and DIR/summary.txt, refreshed as the checks go.
#   bash tests/gpu_checks.sh            # everything
#   bash tests/gpu_checks.sh bench      # the benchmarks only
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
PY=${PYTHON:-python3}
what=${1:-all}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, accelerate, torchvision; print('torch', torch.__version__, 'accelerate', accelerate.__version__,
'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

summary() {  # one line per benchmark JSON
    $PY - "$@" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    a, b = (r[n] for n in r["contenders"])
    frac = a["fraction_of_peak"]
    print(f"{path.split('/')[-1]:34} trainer {a['ms_per_step']:7.2f} ms ({a['critic_img_per_s']:7.0f} img/s) "
          f"{r['contenders'][1]} {b['ms_per_step']:7.2f} ms  speedup {r['speedup']:.2f}x  "
          f"penalty share {a['penalty_share']:.0%}/{b['penalty_share']:.0%}  "
          f"peak frac {'-' if frac is None else f'{frac:.1%}'}  GFLOP/step {a['flops_per_step'] / 1e9:.1f}  "
          f"mem {a['peak_mem_mb']:.0f}/{b['peak_mem_mb']:.0f} MB")
EOF
}

bench() {  # bench NAME TIMEOUT [bench args and overrides...]
    local name=$1 limit=$2
    shift 2
    echo "== bench $name: $*" | tee -a "$OUT/bench.log"
    timeout "$limit" $PY -m trainer.bench --rounds 5 --round-seconds 1 --out "$OUT/bench-$name.json" "$@" \
        >>"$OUT/bench.log" 2>&1 || echo "bench $name failed or timed out (exit $?)" | tee -a "$OUT/summary.txt"
    [ -f "$OUT/bench-$name.json" ] && summary "$OUT/bench-$name.json"
}

pack() {  # everything so far in one archive under $RESULTS (a lease returns only a few files)
    [ -n "${RESULTS:-}" ] && tar czf "$RESULTS/results.tgz" -C "$OUT" . 2>/dev/null && cp "$OUT/summary.txt" "$RESULTS/"
    true
}

if [ "$what" = all ]; then
    echo "== train.py on the GPU (default offline job, 3 steps)" | tee -a "$OUT/summary.txt"
    for extra in "train.precision=bf16" "train.precision=fp16" "train.precision=bf16 speed.cuda_graph=true"; do
        name=$(echo "$extra" | tr ' =.' '___')
        timeout 120 $PY train.py run.dir="$OUT/run-$name" train.steps=3 log.every=1 $extra >"$OUT/train-$name.log" 2>&1
        echo "train.py $extra: exit $?; $(tail -n 1 "$OUT/run-$name/metrics.jsonl" 2>/dev/null | cut -c1-160)" |
            tee -a "$OUT/summary.txt"
        grep -v "it/s\]" "$OUT/train-$name.log" | grep -v "^\s*$" | tail -n 25 | tee -a "$OUT/summary.txt"
        rm -rf "$OUT/run-$name/checkpoints" "$OUT/run-$name/samples"
    done
    echo "== CUDA tests" | tee -a "$OUT/summary.txt"
    timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_precision.py tests/test_losses.py \
        2>&1 | tail -25 | tee -a "$OUT/summary.txt"
    pack
fi

if [ "$what" = all ]; then
    echo "== the penalty's parameter gradients, resnet32: PyTorch's float32 modes (TF32 convs, the default) vs IEEE" |
        tee -a "$OUT/summary.txt"
    timeout 60 $PY - <<'EOF' 2>&1 | tail -n 3 | tee -a "$OUT/summary.txt"
import torch
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
        return torch.cat([g.flatten() for g in found if g is not None])
ieee, default = grads(("ieee", "ieee")), grads(("none", "tf32"))
print(f"penalty parameter gradients, TF32 convs vs IEEE: relative difference {((default - ieee).norm() / ieee.norm()).item():.2e}")
EOF
fi

C10=(--config configs/cifar10-resnet.yaml --synthetic 10000)
bench resnet32-bf16-graph 100 "${C10[@]}" train.precision=bf16 speed.cuda_graph=true
bench resnet32-bf16-graph-ieee 100 "${C10[@]}" train.precision=bf16 speed.cuda_graph=true speed.tf32=false
bench resnet32-bf16-eager 100 "${C10[@]}" train.precision=bf16
pack
bench resnet32-fp32-graph 100 "${C10[@]}" train.precision=no speed.cuda_graph=true
bench resnet64-bf16-graph 150 --config configs/celeba64.yaml --synthetic 2000 train.precision=bf16 speed.cuda_graph=true
pack
bench resnet32-bf16-cudnn-benchmark 100 "${C10[@]}" train.precision=bf16 speed.cudnn_benchmark=true \
    --against speed.cudnn_benchmark=false
bench resnet32-bf16-graph-chlast 100 "${C10[@]}" train.precision=bf16 speed.cuda_graph=true speed.channels_last=true
pack
echo "== summary"
cat "$OUT/summary.txt"
