#!/usr/bin/env bash
# Takes down the local SLURM cluster that tests/slurm/setup_cluster.sh stood up: cancels the jobs still queued or
# running on it, stops its slurmd daemons (n1, n2) and its slurmctld, and the munged it started (a munged that was
# already running before setup_cluster.sh is left alone). The Debian packages, /etc/slurm/slurm.conf and the logs
# under /var/log/slurm-ci stay, so `bash tests/slurm/setup_cluster.sh` brings the cluster back in seconds; afterwards
# tests/test_slurm.py skips again ("no SLURM controller answers"). Idempotent: with nothing running it says so.
# Needs root, like the setup. Usage: bash tests/slurm/teardown_cluster.sh   (or: bash tests/slurm/setup_cluster.sh --down)
set -uo pipefail

munge_marker=/run/munge/started-by-setup_cluster
stopped=()

# Waits up to $2 seconds for process $1 to exit; true once it has.
gone() {
    local pid=$1 wait_s=$2
    for _ in $(seq 1 $((wait_s * 10))); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null
}

# The jobs first, while the controller still answers: scancel sends SIGTERM (the trainer checkpoints and exits),
# then SIGKILL after the cluster's KillWait (30 s).
if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        echo "slurm: cancelling jobs $jobs"
        # shellcheck disable=SC2086
        scancel $jobs
        for _ in $(seq 1 45); do
            [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
            sleep 1
        done
    fi
fi

# Our daemons only: the pid files setup_cluster.sh's slurm.conf names (slurmd first, then the controller).
for pid_file in /run/slurmd-ci-*.pid /run/slurmctld-ci.pid; do
    [[ -s $pid_file ]] || continue
    pid=$(cat "$pid_file")
    name=$(basename "$pid_file" .pid)
    if kill "$pid" 2>/dev/null; then
        if ! gone "$pid" 15; then
            echo "slurm: $name (pid $pid) did not stop on SIGTERM within 15 s: SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null
            gone "$pid" 5 || echo "slurm: $name (pid $pid) is still running" >&2
        fi
        stopped+=("$name")
    fi
    rm -f "$pid_file"
done

# munged only when setup_cluster.sh started it (it leaves this marker then).
if [[ -f $munge_marker ]]; then
    pid=$(cat /run/munge/munged.pid 2>/dev/null || pgrep -u munge -x munged | head -n 1)
    if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
        gone "$pid" 10 || kill -9 "$pid" 2>/dev/null
        stopped+=(munged)
    fi
    rm -f "$munge_marker"
fi

if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q "is UP"; then
    echo "slurm: a controller still answers (not one setup_cluster.sh started?): $(scontrol ping 2>&1 | head -n 1)" >&2
    exit 1
fi
if ((${#stopped[@]})); then
    echo "slurm: cluster down (stopped ${stopped[*]})"
else
    echo "slurm: cluster already down"
fi
