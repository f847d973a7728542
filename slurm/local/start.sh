#!/usr/bin/env bash
# Install (if needed) and start a single-node Slurm cluster: munged, slurmctld, slurmd.
#
#   slurm/local/start.sh [--lease PID]
#
# Idempotent: what already runs is left alone, so it is safe to call from every `make test`.
# No systemd: the daemons run in the foreground (-D) in their own session, their PIDs are kept in
# the state folder ($HPCSUR_SLURM_STATE, default /run/hpcsur-slurm), their output in its logs.
# --lease PID registers process PID as a user of the cluster: `stop.sh --lease PID` then stops
# the daemons only when no other live lease remains (several `make test` runs on one machine).
# Without --lease the cluster is started "by hand": it stays up until a plain `stop.sh`.
#
# Needs root (apt-get, daemons as root). Debian 12 packages: slurm-wlm 22.05, munge, libpmix-dev.
# Exit status: 0 when the node is up and accepts jobs; non-zero with one reason line otherwise
# (the reason is also written to $STATE/unavailable, which the test suite quotes when it skips).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

parse_lease_args 2,15 "$@"

fail() { say "$*"; echo "$*" 2>/dev/null > "$STATE/unavailable" || true; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root to install and start slurmctld/slurmd/munged (running as $(id -un))"
mkdir -p "$STATE/leases" "$STATE/log"
rm -f "$STATE/unavailable"

exec 9>"$STATE/lock"
flock -w 300 9 || fail "another start.sh/stop.sh holds $STATE/lock for more than 300 s"

t0=$SECONDS
# --- packages -------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || [ ! -e "$PMIX_LIB" ]; then
  command -v apt-get >/dev/null || fail "slurmctld/munged are not installed and there is no apt-get to install them"
  say "installing slurm-wlm munge libpmix-dev (apt)"
  # Keep dpkg from starting the packages' init.d services: we start the daemons ourselves.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
  fi
  ok=1
  { [ -n "${SKIP_APT_UPDATE:-}" ] || apt-get update -qq; } >"$STATE/log/apt.log" 2>&1 || ok=""
  # libpmix-dev: Slurm's mpi/pmix plugin dlopen()s the unversioned libpmix.so, which only -dev ships.
  [ -z "$ok" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge libpmix-dev >>"$STATE/log/apt.log" 2>&1 || ok=""
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ -n "$ok" ] || fail "apt-get could not install slurm-wlm munge libpmix-dev: $(tail -n 1 "$STATE/log/apt.log")"
fi
t1=$SECONDS

# --- munge ----------------------------------------------------------------------------------------
if ! munge -n >/dev/null 2>&1; then
  # Debian's munge postinst creates the key; make sure it exists with the modes munged demands.
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged 9>&-     # daemonises, writes /run/munge/munged.pid
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  # Only a munged we started is ours to stop.
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null || fail "munge does not work (see /var/log/munge/munged.log)"

# --- slurm.conf (only while no daemon of ours runs; never over a site's own file) -----------------
host=$(hostname -s)
if ! pid_of slurmctld >/dev/null && ! pid_of slurmd >/dev/null; then
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching a site's Slurm (use that cluster, or move the file away)"
  fi
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts   # daemons resolve their own name
  # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  nodeline=$(slurmd -C | head -1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$nodeline")
  # RealMemory above what slurmd detects drains the node: stay at 95 %.
  nodeline=$(sed "s/RealMemory=[0-9]*/RealMemory=$(( mem * 95 / 100 ))/" <<<"$nodeline")
  mpidef=none; [ -e "$PMIX_LIB" ] && mpidef=pmix   # without libpmix.so a pmix default breaks every srun
  install -d -m 755 /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > "$CONF.tmp" <<EOF
$MARK (single-node test cluster; regenerated on each start)
ClusterName=hpcsur
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups needed: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# like most sites: PMIx by default (Open MPI); MPICH steps need --mpi=pmi2, and an MPICH mpiexec
# needs SLURM_MPI_TYPE=none for the srun it starts its proxies with (the rendered scripts do both)
MpiDefault=$mpidef
MailProg=/bin/true
# a dependant of a failed job is cancelled, not left pending forever
DependencyParameters=kill_invalid_depend
# no slurmdbd (so no sacct): finished jobs go to a text log, and stay in scontrol for MinJobAge s
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
ReturnToService=2
# refuse at submission what a partition does not allow (instead of pending forever)
EnforcePartLimits=ALL
MinJobAge=600
# jobs that ignore SIGTERM are killed after 10 s (default 30), and pending jobs (a requeued one
# past its BeginTime) are looked at every few seconds rather than every 30-60 s: a test cluster
KillWait=10
SchedulerParameters=sched_interval=5,bf_interval=5
$nodeline State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
# a partition with a 5-minute limit (the tests check that a longer request is refused)
PartitionName=short Nodes=ALL MaxTime=00:05:00 State=UP
EOF
  mv "$CONF.tmp" "$CONF"
fi

# --- daemons --------------------------------------------------------------------------------------
# -D: foreground, so $! is the daemon; setsid: own session, so a Ctrl-C in the caller's terminal
# does not reach them; -i: slurmctld ignores unreadable saved state (and keeps job ids rising).
started=""
if ! pid_of slurmctld >/dev/null; then
  setsid nohup slurmctld -D -i </dev/null >"$STATE/log/slurmctld.out" 2>&1 9>&- &
  echo $! > "$STATE/slurmctld.pid"; started=1
fi
if ! pid_of slurmd >/dev/null; then
  setsid nohup slurmd -D </dev/null >"$STATE/log/slurmd.out" 2>&1 9>&- &
  echo $! > "$STATE/slurmd.pid"; started=1
fi
for _ in $(seq 300); do node_up && break; sleep 0.1; done
if ! node_up; then
  st=$(node_state)
  # a node left DOWN/DRAINED by an earlier run comes back with an explicit resume
  if [ -n "$st" ]; then scontrol update nodename="$host" state=resume 2>/dev/null || true; sleep 1; fi
  node_up || fail "node $host is not up (state '${st:-no answer}'); see /var/log/slurm/slurmctld.log and $STATE/log"
fi

# Jobs recovered from a previous run of this cluster (the machine was stopped under them) are not
# anybody's any more: a fresh start begins with an empty queue.
if [ -n "$started" ] && [ -z "$(live_leases)" ]; then
  stale=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${stale// /}" ]; then say "cancelling jobs left from a previous run: $stale"; scancel $stale || true; fi
fi

if [ -n "$lease" ]; then echo "$lease" > "$STATE/leases/$lease"; else echo manual > "$STATE/leases/manual"; fi
say "up: node $host $(node_state) (install $(( t1 - t0 )) s, start $(( SECONDS - t1 )) s; state in $STATE)"
