#!/usr/bin/env bash
# Several machines with Open MPI over ssh:
#   launch/mpirun-hostfile.sh HOSTFILE RANKS_PER_NODE COMMAND [ARGS...]
# e.g. launch/mpirun-hostfile.sh launch/hostfile.example 4 \
#        /shared/ringtrain/build/ringtrain train cfg.yaml --set parallel.context_parallel=4
# The binary, configs and data must be at the same paths on every node; the
# run dir must be on a shared filesystem (rank 0 writes, every rank reads
# checkpoints when resuming).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 HOSTFILE RANKS_PER_NODE COMMAND [ARGS...]" >&2
  exit 2
fi
hostfile=$1
per_node=$2
shift 2
[ -r "$hostfile" ] || { echo "hostfile $hostfile not readable" >&2; exit 2; }
nodes=$(grep -cvE '^\s*(#|$)' "$hostfile")
np=$((nodes * per_node))
threads=${OMP_NUM_THREADS:-$(( $(nproc) / per_node > 0 ? $(nproc) / per_node : 1 ))}
args=(--hostfile "$hostfile" --map-by "ppr:${per_node}:node" --bind-to none
      -x OMP_NUM_THREADS="$threads" -x PATH -x LD_LIBRARY_PATH)
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" -np "$np" "$@"
