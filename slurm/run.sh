#!/usr/bin/env bash
# Train on a SLURM cluster; submit from the repository root:
#
#   sbatch slurm/run.sh --config configs/mnist-dcgan.yaml                             # 1 node, 1 GPU
#   sbatch --nodes 4 --gres gpu:8 slurm/run.sh --config configs/cifar10-resnet.yaml  # 4 x 8 = 32 processes
#   WGAN_GP_LAUNCH_CONFIG=launch/zero2-bf16.yaml sbatch --gres gpu:8 slurm/run.sh ... # DeepSpeed ZeRO-2, bf16
#   sbatch --gres=none --cpus-per-task 2 --export=ALL,WGAN_GP_PROCS_PER_NODE=2 slurm/run.sh ...   # 2 CPU processes
#
# A cluster without GPUs refuses the --gres=gpu:1 default below ("sbatch: error: Invalid generic resource (gres)
# specification"): add --gres=none (or export SBATCH_GRES=none before sbatch), and a --cpus-per-task the nodes have
# (with the default 8 on smaller nodes the job stays PENDING with reason PartitionConfig):
#   sbatch --gres=none --cpus-per-task 2 slurm/run.sh --config configs/digits.yaml       # 1 node, 1 CPU process
#
# Arguments are train.py's; `run.resume=latest` is appended, so a requeued (or resubmitted) job continues the newest
# checkpoint of run.dir. The #SBATCH lines are defaults: the same option on the sbatch command line wins. No --time
# here: the partition's limit applies, and the job requeues itself before it (see below), so a long run spans jobs.
#
# One srun task per node runs `accelerate launch` with --num_machines = nodes, --machine_rank = $SLURM_NODEID (expanded
# on each node), the first host of the node list as main process, a port derived from the job id, and processes =
# nodes x processes per node. Device: GPUs when SLURM gave the job GPUs ($SLURM_GPUS_ON_NODE, else nvidia-smi), one
# process each, with launch/multi-gpu.yaml; otherwise CPU processes over gloo with launch/cpu-2proc.yaml.
#
# Preemption and time limits: 120 s before the limit SLURM sends USR1 to this batch shell (--signal=B:USR1@120),
# which relays it through srun to every process of the step. The trainer finishes its step, all ranks agree, it
# checkpoints and exits; this script then runs `scontrol requeue` and the job comes back, resuming on its own.
# `scancel --batch --signal=USR1 JOBID` does the same by hand. If the step fails without that signal but saved
# progress (a newer checkpoint: a dead or hung rank, or USR1 sent to the step alone), the job is requeued as well,
# at most WGAN_GP_MAX_REQUEUES times. SIGTERM (scancel, preemption by SLURM) also makes the trainer checkpoint within
# SLURM's KillWait, but this script never requeues after it: SLURM requeues preempted jobs itself.
# A requeued job waits about two minutes first (squeue: PD, reason BeginTime; SLURM's hold on a requeued job):
# `scontrol update JobId=N StartTime=now` lets it start at once.
#
# Environment (set before sbatch, or with sbatch --export=ALL,NAME=value):
#   slurm/env.sh             sourced first when it exists (modules, virtualenv; see slurm/env.sh.example);
#                            without it, ./.venv is activated when present
#   WGAN_GP_DEVICE           gpu | cpu; default: gpu when the job has GPUs
#   WGAN_GP_PROCS_PER_NODE   processes per node; default: the node's GPUs, or 1 on CPU
#   WGAN_GP_LAUNCH_CONFIG    accelerate config file; default launch/multi-gpu.yaml (GPU), launch/cpu-2proc.yaml (CPU)
#   WGAN_GP_SHUTDOWN_S       seconds the launcher waits for its workers to checkpoint after a signal (default 100)
#   WGAN_GP_MAX_REQUEUES     self-requeues after which a failing job stays failed (default 20)
#   WGAN_GP_SRUN_ARGS        extra srun options, word-split (site-specific binding, --gres for steps, ...)
#
#SBATCH --job-name=wgan-gp
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out

set -uo pipefail

log() { echo "[slurm/run.sh $(date +%T)] job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $*"; }

repo=${SLURM_SUBMIT_DIR:-$PWD}
if [[ ! -f "$repo/train.py" ]]; then
    log "no train.py in $repo: submit from the repository root (sbatch slurm/run.sh ...)" >&2
    exit 2
fi
cd "$repo" || exit 2
if [[ -f slurm/env.sh ]]; then
    # shellcheck source=/dev/null
    source slurm/env.sh
elif [[ -f .venv/bin/activate ]]; then
    # shellcheck source=/dev/null
    source .venv/bin/activate
fi
export PYTHONUNBUFFERED=1

# The newest complete checkpoint's step of the run these arguments describe (-1 if they do not parse).
latest_step() { python slurm/latest_step.py "$@"; }
start_step=$(latest_step "$@")

nodes=${SLURM_JOB_NUM_NODES:-1}
gpus=${SLURM_GPUS_ON_NODE:-0}
if [[ $gpus == 0 ]] && command -v nvidia-smi >/dev/null; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
device=${WGAN_GP_DEVICE:-$([[ ${gpus:-0} -gt 0 ]] && echo gpu || echo cpu)}
if [[ $device == gpu ]]; then
    per_node=${WGAN_GP_PROCS_PER_NODE:-$gpus}
    export WGAN_GP_LAUNCH_CONFIG=${WGAN_GP_LAUNCH_CONFIG:-launch/multi-gpu.yaml}
else
    per_node=${WGAN_GP_PROCS_PER_NODE:-1}
    export WGAN_GP_LAUNCH_CONFIG=${WGAN_GP_LAUNCH_CONFIG:-launch/cpu-2proc.yaml}
    export ACCELERATE_USE_CPU=1 # every worker joins on CPU over gloo
fi
if ((per_node < 1)); then
    log "no processes to start on $device (WGAN_GP_PROCS_PER_NODE=$per_node)" >&2
    exit 2
fi
export WGAN_GP_NUM_MACHINES=$nodes
export WGAN_GP_NUM_PROCESSES=$((nodes * per_node))
main_node=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" | head -n 1)
# The address SLURM itself reaches the node at (its NodeAddr; usually the node name).
WGAN_GP_MAIN_HOST=$(scontrol show node "$main_node" -o 2>/dev/null | sed -n 's/.*NodeAddr=\([^ ]*\).*/\1/p')
export WGAN_GP_MAIN_HOST=${WGAN_GP_MAIN_HOST:-$main_node}
export WGAN_GP_MAIN_PORT=$((10000 + ${SLURM_JOB_ID:-0} % 20000)) # per job, below the ephemeral port range
# torchrun (under accelerate launch) forwards only TERM/INT/HUP/QUIT by default and dies of USR1, which would leave
# its workers to be killed mid-checkpoint. With USR1 on its list it relays it and waits for the workers to exit.
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${WGAN_GP_SHUTDOWN_S:-100}

log "$nodes node(s) x $per_node $device process(es), main $WGAN_GP_MAIN_HOST:$WGAN_GP_MAIN_PORT," \
    "$WGAN_GP_LAUNCH_CONFIG, newest checkpoint at step $start_step"
# Single quotes: $SLURM_NODEID and the rest expand in each node's own task.
# shellcheck disable=SC2016
node_cmd='exec python -m accelerate.commands.launch --config_file "$WGAN_GP_LAUNCH_CONFIG" \
    --num_machines "$WGAN_GP_NUM_MACHINES" --num_processes "$WGAN_GP_NUM_PROCESSES" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$WGAN_GP_MAIN_HOST" --main_process_port "$WGAN_GP_MAIN_PORT" train.py "$@"'
# shellcheck disable=SC2086
srun --nodes="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} ${WGAN_GP_SRUN_ARGS:-} \
    bash -c "$node_cmd" node "$@" run.resume=latest &
srun_pid=$!

stop_signal=""
trap 'stop_signal=USR1; log "USR1: relaying it to the training step"; kill -USR1 "$srun_pid" 2>/dev/null' USR1
trap 'stop_signal=TERM; log "TERM: SLURM is stopping the job; not requeueing"' TERM
rc=0
wait "$srun_pid" || rc=$?
while kill -0 "$srun_pid" 2>/dev/null; do # a trapped signal ended the wait, not srun
    rc=0
    wait "$srun_pid" || rc=$?
done

if ((rc == 0)); then
    log "training finished"
    exit 0
fi
end_step=$(latest_step "$@")
if [[ $stop_signal == TERM ]]; then
    log "training step exited with $rc after TERM, checkpoint step $end_step; SLURM decides about a requeue"
    exit "$rc"
fi
if [[ $stop_signal != USR1 ]] && ((end_step <= start_step)); then
    log "training step failed (exit $rc) without saving progress (checkpoint step $end_step); not requeueing"
    exit "$rc"
fi
if ((${SLURM_RESTART_COUNT:-0} >= ${WGAN_GP_MAX_REQUEUES:-20})); then
    log "stopped at checkpoint step $end_step (exit $rc); not requeueing: WGAN_GP_MAX_REQUEUES reached"
    exit "$rc"
fi
log "stopped at checkpoint step $end_step (exit $rc${stop_signal:+, after $stop_signal}); requeueing to resume"
scontrol requeue "$SLURM_JOB_ID"
