#!/usr/bin/env bash
# A single-node Slurm cluster for tests, with 8 fake GPUs (gres on character devices), kept entirely under a
# state folder; /etc/slurm is left alone. Needs root, slurm-wlm and munge:
#   apt-get install -y --no-install-recommends slurm-wlm munge
#
#   bash tests/slurm_cluster.sh DIR up      # start (idempotent); prints: export SLURM_CONF=DIR/slurm.conf
#   bash tests/slurm_cluster.sh DIR down    # stop the daemons this script started, by pid
#
# munged is reused when one already answers; it is stopped on `down` only when this script started it.
set -euo pipefail

D=${1:?usage: slurm_cluster.sh STATE_DIR up|down}
ACTION=${2:-up}
mkdir -p "$D"
D=$(cd "$D" && pwd)
export SLURM_CONF=$D/slurm.conf
NGPU=8

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  local f pid
  for f in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munged.started.pid"; do
    if alive "$f"; then
      pid=$(cat "$f")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
  done
}

if [ "$ACTION" = down ]; then
  stop
  exit 0
fi
if [ "$ACTION" != up ]; then
  echo "usage: slurm_cluster.sh STATE_DIR up|down" >&2
  exit 2
fi

if alive "$D/slurmctld.pid" && alive "$D/slurmd.pid" && sinfo -h -o %T 2>/dev/null | grep -q '^idle\|^mix\|^alloc'; then
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
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
GresTypes=gpu
MinJobAge=600
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$(( $(free -m | awk '/Mem:/{print $2}') - 2048 )) Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/dev/nvidia[0-%d]\n' "$HOST" "$D" $((NGPU - 1)) > "$D/gres.conf"

slurmctld -i
slurmd
for _ in $(seq 1 150); do
  if sinfo -h -o %T 2>/dev/null | grep -q '^idle'; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm_cluster.sh: the node did not become idle; see $D/log/" >&2
exit 1
