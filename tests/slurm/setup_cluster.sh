#!/usr/bin/env bash
# Stands up a real one-node SLURM cluster on this machine (CPU only) for tests/test_slurm.py: Debian's slurm-wlm
# daemons (munged, slurmctld, slurmd), configured for localhost. Idempotent: a running cluster is left as it is.
# Needs root (CI and the dev machines run as root). Usage: bash tests/slurm/setup_cluster.sh
set -euo pipefail

conf_dir=/etc/slurm
state_dir=/var/spool/slurm-ci
log_dir=/var/log/slurm-ci

if scontrol ping 2>/dev/null | grep -q "is UP" && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
    echo "slurm: cluster already up"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm: installing slurmctld, slurmd, slurm-client and munge from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
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
fi

host=$(hostname -s)
# What slurmd sees on this machine: a node configured with more than it has is drained.
node_line=$(slurmd -C | head -n 1 | sed -e "s/^NodeName=[^ ]*/NodeName=${host}/")
mkdir -p "$conf_dir" "$state_dir/ctld" "$state_dir/d" "$log_dir"
cat >"$conf_dir/slurm.conf" <<CONF
# Written by tests/slurm/setup_cluster.sh: a one-node CPU cluster on localhost for the trainer's SLURM tests.
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${state_dir}/ctld
SlurmdSpoolDir=${state_dir}/d
SlurmctldPidFile=/run/slurmctld-ci.pid
SlurmdPidFile=/run/slurmd-ci.pid
SlurmctldLogFile=${log_dir}/slurmctld.log
SlurmdLogFile=${log_dir}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
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
${node_line} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

if ! pgrep -x slurmctld >/dev/null; then
    slurmctld -c # a fresh controller state: no jobs left from an earlier CI run
fi
if ! pgrep -x slurmd >/dev/null; then
    slurmd
fi

for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then
        echo "slurm: one-node cluster up ($(sinfo -h -o '%N %c CPUs %T'))"
        exit 0
    fi
    sleep 1
done
echo "slurm: the node did not come up; sinfo says: $(sinfo -h -o '%N %T %E' 2>&1)" >&2
tail -n 20 "$log_dir/slurmctld.log" "$log_dir/slurmd.log" >&2 || true
exit 1
