#!/usr/bin/env bash
# A single-node Slurm cluster for tests, with every state/log/pid/socket path under one directory.
#
#   sudo bash .ci/slurm.sh [start] [DIR]   install (apt) if needed, start munged, slurmctld, slurmd;
#                                          wait until `sinfo` reports the node idle (idempotent)
#   sudo bash .ci/slurm.sh stop [DIR]      stop the daemons started here, by their pid files only
#   sudo bash .ci/slurm.sh env [DIR]       print `export SLURM_CONF=...` for this cluster
#
# With MIA_SLURM_ACCOUNTING=1 (the default) it also runs slurmdbd on a private MariaDB instance
# (127.0.0.1:$MIA_SLURM_DB_PORT, default 3307, data under DIR/mysql), so `sacct` works and submitit
# notices tasks that died without writing a result; MIA_SLURM_ACCOUNTING=0 skips both.
# DIR defaults to $MIA_SLURM_DIR or /tmp/mia-slurm. Client commands need SLURM_CONF=DIR/slurm.conf;
# when /etc/slurm/slurm.conf is absent (or is a link made by this script) it is linked there too,
# so plain `sinfo` / `sbatch` work. Needs root (SlurmUser=root), no systemd and no cgroups.
# Settings follow the facts measured on this machine kind (issue 4).
set -euo pipefail

mode=start
case "${1:-}" in
  start|stop|env) mode=$1; shift ;;
esac
DIR=${1:-${MIA_SLURM_DIR:-/tmp/mia-slurm}}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd -P)
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
ACCOUNTING=${MIA_SLURM_ACCOUNTING:-1}
DB_PORT=${MIA_SLURM_DB_PORT:-3307}

log() { echo "slurm.sh: $*" >&2; }
die() { echo "slurm.sh: error: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the pid in the file names a running process
  [[ -s $1 ]] || return 1
  local pid
  pid=$(tr -dc 0-9 <"$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

stop_one() {  # stop_one NAME PIDFILE
  local name=$1 pidfile=$2 pid
  if ! alive "$pidfile"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$(tr -dc 0-9 <"$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

if [[ $mode == env ]]; then
  echo "export SLURM_CONF=$CONF"
  exit 0
fi

stop_all() {
  stop_one slurmd "$DIR/run/slurmd.pid"
  stop_one slurmctld "$DIR/run/slurmctld.pid"
  stop_one slurmdbd "$DIR/run/slurmdbd.pid"
  stop_one mariadbd "$DIR/run/mariadb.pid"
  stop_one munged "$DIR/run/munged.pid"
}

if [[ $mode == stop ]]; then
  stop_all
  if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
  fi
  exit 0
fi

[[ $(id -u) == 0 ]] || die "run as root (sudo bash $0): the test cluster runs with SlurmUser=root"

# --- install ------------------------------------------------------------------------------------
need=()
PATH=$PATH:/usr/sbin:/sbin
for bin in slurmctld slurmd sinfo munged mungekey; do
  command -v "$bin" >/dev/null 2>&1 || need=(slurmctld slurmd slurm-client munge)
done
if [[ $ACCOUNTING == 1 ]]; then
  for bin in slurmdbd sacct mariadbd mariadb-install-db mariadb; do
    command -v "$bin" >/dev/null 2>&1 || { need+=(slurmdbd mariadb-server mariadb-client); break; }
  done
fi
if ((${#need[@]})); then
  command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing; install ${need[*]}"
  log "installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- already running? ---------------------------------------------------------------------------
node_state() { timeout 10 sinfo -h -N -n localhost -o '%t' 2>/dev/null | head -n1 || true; }
daemons=(munged slurmctld slurmd)
[[ $ACCOUNTING == 1 ]] && daemons+=(mariadb slurmdbd)
running=1
for d in "${daemons[@]}"; do alive "$DIR/run/$d.pid" || running=0; done
if [[ $running == 1 ]]; then
  st=$(node_state)
  if [[ $st == idle || $st == mix || $st == alloc ]]; then
    log "already running under $DIR (node $st)"
    exit 0
  fi
fi
# partial leftovers (some daemon dead, or state from an earlier boot): start over cleanly
stop_all

mkdir -p "$DIR"/{run,log,state,spool,munge}
chmod 755 "$DIR" "$DIR/run" "$DIR/log" "$DIR/state" "$DIR/spool"
chmod 711 "$DIR/munge"

# --- munge --------------------------------------------------------------------------------------
if [[ ! -s $DIR/munge/munge.key ]]; then
  mungekey -c -k "$DIR/munge/munge.key"
fi
chmod 600 "$DIR/munge/munge.key"
SOCK=$DIR/munge/munge.socket.2
rm -f "$SOCK" "$SOCK.lock"
munged --force --socket="$SOCK" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
  --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
for _ in $(seq 1 50); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || die "munged did not create $SOCK; see $DIR/log/munged.log"

if [[ $ACCOUNTING == 1 ]]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$SOCK
JobCompType=jobcomp/none"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none"
fi

# --- slurm.conf ---------------------------------------------------------------------------------
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
cat >"$CONF" <<EOF
# Generated by .ci/slurm.sh: single-node test cluster, all state under $DIR
ClusterName=miatest
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
# plugstack.conf from the package is harmless; cgroup.conf is not used (no cgroup plugins)

if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
  mkdir -p /etc/slurm
  ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

# --- accounting: private MariaDB + slurmdbd -------------------------------------------------------
if [[ $ACCOUNTING == 1 ]]; then
  mkdir -p "$DIR/mysql"
  chmod 700 "$DIR/mysql"
  if [[ ! -d $DIR/mysql/data/mysql ]]; then
    rm -rf "$DIR/mysql/data"
    mariadb-install-db --no-defaults --datadir="$DIR/mysql/data" --user=root \
      --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
  fi
  DB_SOCK=$DIR/mysql/mysqld.sock
  rm -f "$DB_SOCK"
  setsid mariadbd --no-defaults --datadir="$DIR/mysql/data" --socket="$DB_SOCK" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DIR/run/mariadb.pid" --user=root \
    --log-error="$DIR/log/mariadb.log" </dev/null >>"$DIR/log/mariadb.log" 2>&1 &
  for _ in $(seq 1 150); do [[ -S $DB_SOCK ]] && alive "$DIR/run/mariadb.pid" && break; sleep 0.2; done
  [[ -S $DB_SOCK ]] || die "mariadbd did not start; see $DIR/log/mariadb.log"
  if [[ ! -s $DIR/mysql/slurm.pass ]]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/mysql/slurm.pass")
  fi
  DB_PASS=$(cat "$DIR/mysql/slurm.pass")
  mariadb --no-defaults --socket="$DB_SOCK" -u root -e \
    "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
     ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
     GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
    || die "cannot create the database user; see $DIR/log/mariadb.log"
  (umask 077 && cat >"$DIR/slurmdbd.conf" <<EOF
# Generated by .ci/slurm.sh
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  )
  slurmdbd
  for _ in $(seq 1 150); do
    alive "$DIR/run/slurmdbd.pid" && timeout 5 sacctmgr -n list cluster >/dev/null 2>&1 && break
    sleep 0.2
  done
  alive "$DIR/run/slurmdbd.pid" || die "slurmdbd did not start; see $DIR/log/slurmdbd.log"
fi

# --- daemons ------------------------------------------------------------------------------------
# no -c: a restart keeps the job state (and job ids stay unique in the accounting database)
slurmctld -f "$CONF"
for _ in $(seq 1 100); do alive "$DIR/run/slurmctld.pid" && break; sleep 0.1; done
alive "$DIR/run/slurmctld.pid" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
slurmd -N localhost -f "$CONF"
for _ in $(seq 1 100); do alive "$DIR/run/slurmd.pid" && break; sleep 0.1; done
alive "$DIR/run/slurmd.pid" || die "slurmd did not start; see $DIR/log/slurmd.log"

for _ in $(seq 1 120); do
  st=$(node_state)
  if [[ $st == idle ]]; then
    log "cluster up under $DIR after ${SECONDS}s (node idle); export SLURM_CONF=$CONF"
    exit 0
  fi
  if [[ $st == down* || $st == drain* ]]; then
    scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
  fi
  sleep 0.5
done
die "node not idle after 60 s (state '${st:-?}'); see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
