#!/usr/bin/env bash
# A Slurm cluster for tests on this one machine, kept entirely under a state folder (/etc/slurm is left alone).
# Needs root, slurm-wlm and munge:
#   apt-get install -y --no-install-recommends slurm-wlm munge
#
#   bash tests/slurm_cluster.sh DIR up      # start (idempotent); prints: export SLURM_CONF=DIR/slurm.conf
#   bash tests/slurm_cluster.sh DIR down    # stop the daemons this script started, by pid
#
# What it looks like to a job, as a site's GPU cluster would:
# * two partitions: `cpu` (the default; 1 day at most) and `gpu` (2 days at most), with memory a consumable
#   resource (CR_Core_Memory) and a small default per CPU, so a job gets the memory it asks for;
#   Partition limits are enforced at submission (EnforcePartLimits=ALL): a job over them is refused by sbatch;
# * node `$HOST` (this machine, running slurmd): 64 CPUs, 1.5 TiB and 8 GPUs of type h100 declared
#   (SlurmdParameters=config_overrides: the declared sizes stand, so the jobs of real plans fit), the GPUs on
#   fake character devices; a second node `ftplan-n2` of the same shape, a powered-down cloud node that is never
#   started, so that a 2-node job passes `sbatch --test-only` and can be inspected held. A job that must run
#   excludes it (`--exclude=ftplan-n2`): one scheduled there would wait for a node that never comes up;
# * memory enforced by cgroups (task/cgroup with ConstrainRAMSpace): a job that goes over its --mem is killed and
#   ends OUT_OF_MEMORY. When this machine's cgroups cannot be used for that (no memory controller, or one this
#   script cannot create groups in), the cluster runs without enforcement and DIR/memory_enforcement says why.
#
# munged is reused when one already answers; it is stopped on `down` only when this script started it.
set -euo pipefail

D=${1:?usage: slurm_cluster.sh STATE_DIR up|down}
ACTION=${2:-up}
mkdir -p "$D"
D=$(cd "$D" && pwd)
export SLURM_CONF=$D/slurm.conf
NGPU=8
GPU_TYPE=h100
NODE_CPUS=64
NODE_MEM_MB=1572864

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  local f pid
  for f in "$D/slurmd.pid" "$D/slurmctld.pid" "${@:-$D/munged.started.pid}"; do
    if alive "$f"; then
      pid=$(cat "$f")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
}

# cgroup_memory: prints "v1" or "v2" when a memory cgroup with a limit can be created here, or fails with why not.
cgroup_memory() {
  local probe
  if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
    probe=/sys/fs/cgroup/memory/ftplan-probe-$$
    if mkdir "$probe" 2>/dev/null && echo 67108864 > "$probe/memory.limit_in_bytes" 2>/dev/null; then
      rmdir "$probe"
      echo v1
      return 0
    fi
    rmdir "$probe" 2>/dev/null || true
    echo "the cgroup v1 memory hierarchy at /sys/fs/cgroup/memory does not let this script create a group with a limit"
    return 1
  fi
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    if ! grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
      echo "cgroup v2 is mounted at /sys/fs/cgroup without the memory controller"
      return 1
    fi
    probe=/sys/fs/cgroup/ftplan-probe-$$
    if grep -qw memory /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null && mkdir "$probe" 2>/dev/null \
        && echo 67108864 > "$probe/memory.max" 2>/dev/null; then
      rmdir "$probe"
      echo v2
      return 0
    fi
    rmdir "$probe" 2>/dev/null || true
    echo "cgroup v2 is mounted at /sys/fs/cgroup, but its memory controller is not delegated to child groups here (cgroup.subtree_control)"
    return 1
  fi
  echo "no cgroup memory controller is mounted at /sys/fs/cgroup"
  return 1
}

if [ "$ACTION" = down ]; then
  stop
  exit 0
fi
if [ "$ACTION" != up ]; then
  echo "usage: slurm_cluster.sh STATE_DIR up|down" >&2
  exit 2
fi

if alive "$D/slurmctld.pid" && alive "$D/slurmd.pid" && sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | grep -q '^idle\|^mix\|^alloc'; then
  echo "export SLURM_CONF=$SLURM_CONF"
  exit 0
fi
stop

HOST=$(hostname -s)
mkdir -p "$D/state" "$D/spool" "$D/log" "$D/dev" /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$D/munged.started.pid"
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

for i in $(seq 0 $((NGPU - 1))); do
  [ -e "$D/dev/nvidia$i" ] || mknod "$D/dev/nvidia$i" c 1 3
done

if mode=$(cgroup_memory); then
  echo "cgroup/$mode" > "$D/memory_enforcement"
  TASK="TaskPlugin=task/cgroup
ProctrackType=proctrack/cgroup"
  printf 'CgroupPlugin=cgroup/%s\nCgroupAutomount=no\nIgnoreSystemd=yes\nConstrainRAMSpace=yes\nConstrainSwapSpace=no\nConstrainCores=no\nConstrainDevices=no\nAllowedRAMSpace=100\n' \
    "$mode" > "$D/cgroup.conf"
else
  echo "none: $mode" > "$D/memory_enforcement"
  TASK="TaskPlugin=task/none
ProctrackType=proctrack/linuxproc"
  rm -f "$D/cgroup.conf"
fi

write_conf() {
  cat > "$D/slurm.conf" <<CONF
ClusterName=ftplantest
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
MailProg=/bin/true
MpiDefault=none
$TASK
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
ReturnToService=2
GresTypes=gpu
MinJobAge=600
KillWait=5
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SuspendProgram=/bin/true
ResumeProgram=/bin/true
SuspendTime=INFINITE
ResumeTimeout=60
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$GPU_TYPE:$NGPU Weight=1 State=UNKNOWN
NodeName=ftplan-n2 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB Gres=gpu:$GPU_TYPE:$NGPU Weight=1000 State=CLOUD
PartitionName=cpu Nodes=$HOST,ftplan-n2 Default=YES MaxTime=1-00:00:00 DefMemPerCPU=256 State=UP
PartitionName=gpu Nodes=$HOST,ftplan-n2 MaxTime=2-00:00:00 DefMemPerCPU=256 State=UP
CONF
  printf 'AutoDetect=off\nNodeName=%s Name=gpu Type=%s File=%s/dev/nvidia[0-%d]\n' "$HOST" "$GPU_TYPE" "$D" \
    $((NGPU - 1)) > "$D/gres.conf"
}

start() {
  slurmctld -i
  slurmd
  for _ in $(seq 1 150); do
    if sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -q '^idle'; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

write_conf
if ! start; then
  if [ -f "$D/cgroup.conf" ]; then  # cgroups that probe well but that slurmd cannot use: run without them
    echo "none: slurmd did not start with task/cgroup ($(grep -i -m1 'error' "$D/log/slurmd.log" 2>/dev/null || echo 'see its log'))" \
      > "$D/memory_enforcement"
    stop "$D/slurmd.pid"  # the Slurm daemons only: munged stays
    TASK="TaskPlugin=task/none
ProctrackType=proctrack/linuxproc"
    rm -f "$D/cgroup.conf"
    write_conf
    start || { echo "slurm_cluster.sh: the node did not become idle; see $D/log/" >&2; exit 1; }
  else
    echo "slurm_cluster.sh: the node did not become idle; see $D/log/" >&2
    exit 1
  fi
fi
echo "export SLURM_CONF=$SLURM_CONF"
