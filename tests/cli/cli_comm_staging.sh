#!/usr/bin/env bash
# Device buffers through pinned host memory over MPI (parallel/staged_comm.h),
# forced on with the CPU backend (RINGTRAIN_COMM_STAGING=1): the path ranks
# that share a GPU take. Through mpirun (launch/local.sh):
#  - dp2 (sharded and unsharded optimizer), cp2 and dp2 with bf16 compute
#    weights give bit for bit the losses, weights and AdamW moments of the
#    same runs over plain MPI (staging only copies bytes);
#  - the log says which transport carried the buffers, once;
#  - eval over a ring of 2 (--context-parallel 2) through the staging gives
#    the JSON of plain MPI exactly;
#  - a bad RINGTRAIN_COMM_STAGING value exits 2 with the fix;
#  - `plan` says which transport a layout would use (MPI on the CPU; staged
#    when ranks share a GPU or the build has no NCCL; NCCL otherwise).
# usage: cli_comm_staging.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
launch="bash $src/launch/local.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1
source "$src/tests/cli/lib.sh"

# tiny buckets (many per step), clipping that binds, a checkpoint at the end
cat > s.yaml <<YAML
run: {seed: 7}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2}
data: {train: {synthetic: passkey, loss: all}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 4, max_steps: 6, grad_clip: 0.5,
        optimizer: {type: adamw, lr: 3.0e-3}, schedule: {type: cosine, warmup_steps: 2, min_lr: 3.0e-4}}
checkpoint: {every_steps: 6, keep_last: 1}
log: {every_steps: 1}
parallel: {bucket_mb: 0.01}
YAML

run() {  # run NAME STAGING NP [--set ...]
  local name=$1 staging=$2 np=$3
  shift 3
  RINGTRAIN_COMM_STAGING=$staging mpi_train s.yaml "$name" "$np" "$@"
}
for staging in 0 1; do
  run "dp2_s_$staging" $staging 2
  run "dp2_u_$staging" $staging 2 --set parallel.shard_optimizer=false
  run "cp2_$staging" $staging 2 --set parallel.context_parallel=2
  run "bf_$staging" $staging 2 --set train.precision=bf16
done

for name in dp2_s cp2 bf; do
  n=$(grep -c "comm: RINGTRAIN_COMM_STAGING=1, backend buffers travel through pinned host memory over MPI" "${name}_1.log")
  [ "$n" = 1 ] || fail "${name}_1: the staging line logged $n times, want once"
  n=$(grep -c "comm: CPU backend, buffers travel over MPI" "${name}_0.log")
  [ "$n" = 1 ] || fail "${name}_0: the MPI line logged $n times, want once"
done

/usr/bin/python3 - "$work" "$src/tests/cli" <<'PY' || fail "staged vs plain MPI: not bit for bit"
import sys
work = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import runs
def losses(name):
    return runs.losses(f"{work}/{name}")
def state(name):
    return runs.state(f"{work}/{name}/checkpoints/step_00000006.h5")
bad = []
for lay in ["dp2_s", "dp2_u", "cp2", "bf"]:
    la, lb = losses(f"{lay}_1"), losses(f"{lay}_0")
    sa, sb = state(f"{lay}_1"), state(f"{lay}_0")
    same_w = sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and sa[k].tobytes() == sb[k].tobytes() for k in sb)
    print(f"{lay}: staged vs MPI: {len(la)} losses equal {la == lb and len(la) == 6}, "
          f"{len(sb)} tensors of weights and moments bitwise equal {same_w}")
    if not (la == lb and len(la) == 6 and same_w):
        bad.append(lay)
# the runs must have learnt something (a test of equality between two dead runs proves little)
l = losses("dp2_s_0")
print(f"dp2_s losses {l[0]:.4f} -> {l[-1]:.4f}")
if not l[-1] < l[0]:
    bad.append("no learning")
assert not bad, bad
PY

expect 2 "RINGTRAIN_COMM_STAGING=yes: expected 1" -- \
  env RINGTRAIN_COMM_STAGING=yes "$bin" train s.yaml --set run.dir="$work/bad" --set train.max_steps=1

# eval over a ring of 2: the ring's K/V through the staging, the same JSON
ckpt="$work/dp2_s_0/checkpoints/step_00000006.h5"
for staging in 0 1; do
  RINGTRAIN_COMM_STAGING=$staging $launch -np 2 "$bin" eval "$ckpt" --seq-lens 256,512 \
    --max-sequences 2 --passkey-seq-lens 256 --passkey-depths 0,1 --passkey-trials 2 --no-plots \
    --context-parallel 2 --json "eval_$staging.json" > "eval_$staging.out" 2>&1 \
    || { fail "eval --context-parallel 2 (staging $staging)"; tail -20 "eval_$staging.out" >&2; }
done
grep -q "comm: RINGTRAIN_COMM_STAGING=1" eval_1.out || fail "staged eval did not say so"
/usr/bin/python3 - eval_0.json eval_1.json <<'PY' || fail "staged eval differs from MPI eval"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = ["perplexity", "loss_by_position", "passkey"]
for k in keys:
    assert a[k] == b[k], (k, a[k], b[k])
print("eval --context-parallel 2: staged JSON equals MPI JSON (" + ", ".join(keys) + ")")
PY

# plan: the transport a layout would use
expect 0 "^communication: mpi: CPU backend" -- "$bin" plan s.yaml --world 2
expect 0 "^communication: staged: ranks share GPU 0 \(4 ranks on this node, 1 GPU\)" -- \
  "$bin" plan s.yaml --world 4 --device cuda --gpus-per-node 1
expect 0 "^communication: staged: RINGTRAIN_COMM_STAGING=1" -- \
  env RINGTRAIN_COMM_STAGING=1 "$bin" plan s.yaml --world 2 --device cuda
"$bin" plan s.yaml --world 8 --set parallel.context_parallel=2 --device cuda --ranks-per-node 4 --gpus-per-node 4 > p8.txt 2>&1 \
  || fail "plan --world 8 --device cuda exited non-zero"
grep -qE "^communication: (nccl: NCCL on GPU 0 \(one rank per GPU, 8 ranks\)|staged: this build has no NCCL)" p8.txt \
  || fail "plan --world 8 on 4-GPU nodes: $(grep communication p8.txt)"
expect 2 "gpus-per-node applies to --device cuda only" -- "$bin" plan s.yaml --world 2 --gpus-per-node 2

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "cli_comm_staging: all checks passed"
