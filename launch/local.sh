#!/usr/bin/env bash
# Run ringtrain (or any MPI program) as N processes on this machine:
#   launch/local.sh -np 4 ./build/ringtrain train configs/quickstart.yaml \
#       --set parallel.context_parallel=2
# Adds what plain mpirun needs here: --oversubscribe (more ranks than cores is
# allowed, for tests and small machines), --allow-run-as-root when running as
# root (containers, CI), no core binding (OpenMP threads pick their cores), and
# OMP_NUM_THREADS = cores / ranks unless you set it. SIGTERM or Ctrl-C to this
# script stops training cleanly (each rank saves, exit 0); see below.
set -euo pipefail
if [ "${1:-}" != "-np" ] || [ -z "${2:-}" ] || [ -z "${3:-}" ]; then
  echo "usage: $0 -np N COMMAND [ARGS...]" >&2
  exit 2
fi
np=$2
shift 2
if ! [[ "$np" =~ ^[0-9]+$ ]] || [ "$np" -lt 1 ]; then
  echo "$0: -np needs a number of processes >= 1, got '$np' (e.g. $0 -np 2 ./build/ringtrain train CONFIG.yaml)" >&2
  exit 2
fi
if ! command -v mpirun >/dev/null; then
  echo "mpirun not found: run ./setup.sh (installs openmpi-bin) or apt-get install openmpi-bin" >&2
  exit 2
fi
cores=$(nproc)
threads=${OMP_NUM_THREADS:-$(( cores / np > 0 ? cores / np : 1 ))}
# Ranks share cores here: OpenMP threads sleep at barriers rather than spin
# (spinning ranks starve each other when oversubscribed).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
args=(--oversubscribe --bind-to none -x OMP_NUM_THREADS="$threads" -x OMP_WAIT_POLICY)
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
# Stopping (SIGTERM, Ctrl-C): mpirun itself would SIGKILL the ranks one second
# after a signal (odls_base_sigkill_timeout), before a long step could finish
# and save. So mpirun runs in its own session (a terminal's Ctrl-C reaches
# only this script), and this script sends the signal to the ranks directly,
# then waits: they finish or abandon the step, save a checkpoint and exit 0.
# A second signal is forwarded too (the ranks then stop at once).
setsid mpirun "${args[@]}" -np "$np" "$@" &
mpi=$!
forward() {
  local ranks
  ranks=$(pgrep -P "$mpi" 2>/dev/null || true)
  echo "launch/local.sh: $1: forwarding it to the ranks (${ranks//$'\n'/ }) and waiting for them to save" >&2
  [ -n "$ranks" ] && kill -"$1" $ranks 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
while :; do
  rc=0
  wait "$mpi" || rc=$?
  kill -0 "$mpi" 2>/dev/null || break  # mpirun exited: rc is its status
done
exit "$rc"
