#!/usr/bin/env bash
# Stop the daemons that start.sh started (by their recorded PIDs only), cancelling jobs first.
#
#   slurm/local/stop.sh [--lease PID]
#
# --lease PID: give back the lease taken by `start.sh --lease PID`; the daemons keep running while
# another live lease remains (another `make test` on this machine still uses them).
# Without --lease: stop now, whoever else uses the cluster (all leases are dropped).
# Stopping slurmd does not end running jobs (their slurmstepd lives on), hence scancel first.
# Daemons this script did not start (a munged that already ran, a site's slurmctld) are left alone.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"

parse_lease_args 2,11 "$@"
[ -d "$STATE" ] || exit 0
exec 9>"$STATE/lock"
flock -w 300 9 || { say "another start.sh/stop.sh holds $STATE/lock; not stopping"; exit 1; }

if [ -n "$lease" ]; then
  rm -f "$STATE/leases/$lease"
  others=$(live_leases | wc -l)
  if [ "$others" -gt 0 ]; then say "still in use ($others other lease(s) in $STATE/leases): left running"; exit 0; fi
else
  rm -f "$STATE"/leases/*
fi

ctld=$(pid_of slurmctld || true); slurmd=$(pid_of slurmd || true); munged=$(pid_of munged || true)
if [ -z "$ctld$slurmd$munged" ]; then rm -f "$STATE"/*.pid; exit 0; fi

if [ -n "$ctld" ]; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    scancel $jobs 2>/dev/null
    for _ in $(seq 300); do [ -z "$(squeue -h -t R,CG,S 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

pids="$slurmd $ctld $munged"
kill -TERM $pids 2>/dev/null
alive=""
for _ in $(seq 100); do
  alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
  [ -z "$alive" ] && break; sleep 0.1
done
if [ -n "$alive" ]; then say "still alive after 10 s:$alive; sending KILL"; kill -KILL $alive 2>/dev/null; fi
rm -f "$STATE"/slurmctld.pid "$STATE"/slurmd.pid "$STATE"/munged.pid
say "stopped"
