#!/usr/bin/env bash
# Stands up a real SLURM cluster on this machine (CPU only) for tests/test_slurm.py: Debian's slurm-wlm daemons
# (munged, slurmctld, and one slurmd per node) on localhost. Two nodes, n1 and n2, each a slurmd of its own on its
# own port (SLURM's multiple-slurmd mode), both on this machine's CPUs: one-node jobs are the usual case, two-node
# jobs exercise slurm/run.sh's multi-node launch. Idempotent: a running cluster is left as it is.
# Needs root (CI and the dev machines run as root). Usage: bash tests/slurm/setup_cluster.sh
# Taking it down again (jobs cancelled, daemons stopped; packages and config stay):
#   bash tests/slurm/setup_cluster.sh --down      (the same as bash tests/slurm/teardown_cluster.sh)
set -euo pipefail

case "${1:-}" in
"") ;;
--down) exec bash "$(dirname "$0")/teardown_cluster.sh" ;;
*)
    echo "usage: bash tests/slurm/setup_cluster.sh [--down]" >&2
    exit 2
    ;;
esac

conf_dir=/etc/slurm
state_dir=/var/spool/slurm-ci
log_dir=/var/log/slurm-ci

nodes=(n1 n2)
if scontrol ping 2>/dev/null | grep -q "is UP" && [[ $(sinfo -h -N -o %T 2>/dev/null | grep -cE "idle|mix|alloc") == "${#nodes[@]}" ]]; then
    echo "slurm: cluster already up"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null ||
    ! command -v pgrep >/dev/null; then
    echo "slurm: installing slurmctld, slurmd, slurm-client and munge from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge procps >/dev/null
fi

# munge authenticates every SLURM message; the package creates the key, its daemon runs as the munge user.
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! pgrep -u munge -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
    touch /run/munge/started-by-setup_cluster # teardown_cluster.sh stops only a munged this script started
fi

host=$(hostname -s)
# What slurmd sees on this machine (a node configured with more than it has is drained), for each node.
hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
mkdir -p "$conf_dir" "$state_dir/ctld" "$log_dir"
node_lines=""
for i in "${!nodes[@]}"; do
    mkdir -p "$state_dir/${nodes[$i]}"
    node_lines+="NodeName=${nodes[$i]} NodeHostname=${host} NodeAddr=127.0.0.1 Port=$((6818 + i)) ${hardware} State=UNKNOWN"$'\n'
done
cat >"$conf_dir/slurm.conf" <<CONF
# Written by tests/slurm/setup_cluster.sh: a CPU cluster on localhost for the trainer's SLURM tests.
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${state_dir}/ctld
SlurmdSpoolDir=${state_dir}/%n
SlurmctldPidFile=/run/slurmctld-ci.pid
SlurmdPidFile=/run/slurmd-ci-%n.pid
SlurmctldLogFile=${log_dir}/slurmctld.log
SlurmdLogFile=${log_dir}/slurmd-%n.log
SlurmctldPort=6817
# No cgroups in a container: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Keep finished jobs visible to scontrol for 10 minutes (no accounting database, so no sacct).
MinJobAge=600
JobRequeue=1
KillWait=30
InactiveLimit=0
${node_lines}PartitionName=debug Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

# Daemons of an earlier, different setup of this script would keep their old config: stop them (ours only).
for pid_file in /run/slurmctld-ci.pid /run/slurmd-ci*.pid; do
    if [[ -s $pid_file ]] && kill "$(cat "$pid_file")" 2>/dev/null; then
        sleep 1
    fi
    rm -f "$pid_file"
done
slurmctld -c # a fresh controller state: no jobs left from an earlier run
for node in "${nodes[@]}"; do
    slurmd -N "$node"
done

for _ in $(seq 1 60); do
    if [[ $(sinfo -h -N -o %T 2>/dev/null | grep -cE "^(idle|mix|alloc)") == "${#nodes[@]}" ]]; then
        echo "slurm: cluster up: $(sinfo -h -N -o '%N (%c CPUs, %T)' | tr '\n' ' ')"
        exit 0
    fi
    sleep 1
done
echo "slurm: the node did not come up; sinfo says: $(sinfo -h -o '%N %T %E' 2>&1)" >&2
tail -n 20 "$log_dir"/*.log >&2 || true
exit 1
