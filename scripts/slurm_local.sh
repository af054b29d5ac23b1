#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the launcher's Slurm test (no munge needed).
#
#   scripts/slurm_local.sh start    # installs Debian's slurm-wlm if absent, starts the daemons
#   scripts/slurm_local.sh stop
#   export SLURM_CONF=${SLURM_LOCAL_DIR:-/tmp/nemo_gift_slurm}/slurm.conf   # then sbatch/srun/sinfo work
#
# SLURM_LOCAL_DIR, SLURMCTLD_PORT (6817) and SLURMD_PORT (6818) let two clusters share a machine.
#
# One node, localhost at 127.0.0.1, partition "debug", authentication and credentials off
# (auth/none, cred/none): a test cluster reachable from this machine only. Needs root.
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/nemo_gift_slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

install() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client >/dev/null
  fi
}

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat > "$CONF" <<CONF
ClusterName=nemo_gift_local
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

stop() {
  for pid_file in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    if [[ -f $pid_file ]]; then kill "$(cat "$pid_file")" 2>/dev/null || true; rm -f "$pid_file"; fi
  done
}

case "${1:-}" in
  start)
    install
    stop
    write_conf
    slurmctld -c -f "$CONF"
    slurmd -N localhost -f "$CONF"
    for _ in $(seq 1 60); do
      if sinfo -h -o %T 2>/dev/null | grep -q '^idle'; then echo "slurm: node idle ($CONF)"; exit 0; fi
      sleep 1
    done
    echo "slurm: the node did not become idle; see $DIR/log" >&2
    exit 1
    ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
