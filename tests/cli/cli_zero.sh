#!/usr/bin/env bash
# Sharded optimizer (ZeRO-1), overlapped gradient reduction and `plan`
# through mpirun (launch/local.sh):
#  - sharded vs unsharded: same loss at every step and same final weights and
#    AdamW moments (relative 1e-6) for dp2, cp2 and dp2 x cp2;
#  - reduction overlapped with the backward vs after it: same weights (1e-6);
#  - bf16 compute weights (the optimizer holds the fp32 master shard): sharded
#    vs unsharded, and resume of a sharded run, bit for bit;
#  - resume from a sharded dp2 checkpoint onto dp1 x cp2 (unsharded) and onto
#    4 ranks (dp2 x cp2, sharded) equals the run that never stopped (1e-5);
#  - per-rank optimizer (and bf16 master weight) bytes: sharded = unsharded
#    total / world, from the start-up log;
#  - `ringtrain plan` prints the same per-rank memory lines as the run's
#    start-up log; bad layouts and keys exit 2.
# usage: cli_zero.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
launch="bash $src/launch/local.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1
source "$src/tests/cli/lib.sh"

# tiny buckets (many buckets per step) and clipping that binds (global norm)
cat > z.yaml <<YAML
run: {name: zero, seed: 5}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2}
data: {train: {synthetic: passkey, loss: all}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 4, max_steps: 12, grad_clip: 0.5,
        optimizer: {type: adamw, lr: 3.0e-3}, schedule: {type: cosine, warmup_steps: 2, min_lr: 3.0e-4}}
checkpoint: {every_steps: 6, keep_last: 5}
log: {every_steps: 1}
parallel: {bucket_mb: 0.01}
YAML

run() { mpi_train z.yaml "$@"; }  # run NAME NP [--set ...]
unsh="--set parallel.shard_optimizer=false"
run dp2_u 2 $unsh
run dp2_s 2
run dp2_s_noovl 2 --set parallel.overlap_grad_reduce=false
run cp2_u 2 $unsh --set parallel.context_parallel=2
run cp2_s 2 --set parallel.context_parallel=2
run dp2cp2_u 4 $unsh --set parallel.context_parallel=2
run dp2cp2_s 4 --set parallel.context_parallel=2
# bf16 compute weights: the optimizer holds the fp32 master shard
run bf_u 2 $unsh --set train.precision=bf16
run bf_s 2 --set train.precision=bf16
grep -q "reduce-scatter (sharded optimizer, ZeRO-1), overlapped with the backward" dp2_s.log \
  || fail "dp2_s did not log a sharded, overlapped reduction"
run u_noovl 2 $unsh --set parallel.overlap_grad_reduce=false --set train.max_steps=1
grep -q "all-reduce, after the backward" u_noovl.log \
  || fail "unsharded, non-overlapped run did not say so"

# resume: stop the sharded dp2 run at step 6, continue on other layouts
mkdir -p res_cp2/checkpoints res_4/checkpoints
cp dp2_s/checkpoints/step_00000006.h5 res_cp2/checkpoints/
cp dp2_s/checkpoints/step_00000006.h5 res_4/checkpoints/
run res_cp2 2 $unsh --set parallel.context_parallel=2
run res_4 4 --set parallel.context_parallel=2
mkdir -p res_bf/checkpoints
cp bf_s/checkpoints/step_00000006.h5 res_bf/checkpoints/
run res_bf 2 --set train.precision=bf16
grep -q "resuming from" res_cp2.log || fail "res_cp2 did not resume"
grep -q "resuming from" res_4.log || fail "res_4 did not resume"
grep -q "resuming from" res_bf.log || fail "res_bf did not resume"

/usr/bin/python3 - "$work" "$src/tests/cli" <<'PY' || fail "equivalence"
import sys
import numpy as np
work = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import runs
def losses(name):
    return runs.losses(f"{work}/{name}")
def state(name):
    return runs.state(f"{work}/{name}/checkpoints/step_00000012.h5")
def rel(a, b):  # largest per-tensor norm-relative difference
    return max(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), 1e-30) for k in b)
bad = []
def check(a, b, tol, what):
    la, lb = losses(a), losses(b)
    lo = max(abs(x - y) / abs(y) for x, y in zip(la, lb)) if len(la) == len(lb) else float("inf")
    w = rel(state(a), state(b))
    print(f"{what}: {a} vs {b}: losses {lo:.1e}, weights+moments {w:.1e}")
    if not (lo <= tol and w <= tol):
        bad.append(what)
for lay in ["dp2", "cp2", "dp2cp2", "bf"]:
    check(f"{lay}_s", f"{lay}_u", 1e-6, f"sharded vs unsharded {lay}")
check("dp2_s", "dp2_s_noovl", 1e-6, "overlapped vs after-backward reduction")
# resumed runs: their metrics hold steps 7..12 only
full = losses("dp2_u")[6:]
for name in ["res_cp2", "res_4"]:
    got = losses(name)
    lo = max(abs(x - y) / abs(y) for x, y in zip(got, full)) if len(got) == 6 else float("inf")
    w = rel(state(name), state("dp2_u"))
    print(f"resume from sharded dp2 step 6 onto {name}: losses {lo:.1e}, weights+moments {w:.1e}")
    if not (lo <= 1e-5 and w <= 1e-5):
        bad.append(name)
# bf16, sharded master: resumed on the same layout, bit for bit
got, full = losses("res_bf"), losses("bf_u")[6:]
w = rel(state("res_bf"), state("bf_u"))
print(f"resume from sharded bf16 dp2 step 6 onto sharded bf16 dp2: losses equal {got == full}, "
      f"weights+moments {w:.1e}")
if got != full or w != 0.0:
    bad.append("res_bf")
assert not bad, bad
PY

# per-rank optimizer bytes: total / world (near-equal shards, 4-byte words)
/usr/bin/python3 - "$work" <<'PY' || fail "optimizer bytes per rank"
import re, sys
work = sys.argv[1]
def field(name, what):
    return [int(m.group(1)) for m in re.finditer(r"memory rank \d+: .*" + what + r" (\d+) B",
                                                 open(f"{work}/{name}.log").read())]
def opt(name):
    return field(name, "optimizer state")
u, s = field("bf_u", "master weights"), field("bf_s", "master weights")
print(f"bf16 dp2: master weight bytes per rank unsharded {u[0]}, sharded {s}")
assert len(s) == 2 and sum(s) == u[0] and max(s) - min(s) <= 4, (u, s)
for lay, world in [("dp2", 2), ("dp2cp2", 4)]:
    u, s = opt(f"{lay}_u"), opt(f"{lay}_s")
    assert len(u) == world and len(s) == world, (u, s)
    print(f"{lay}: optimizer bytes per rank unsharded {u[0]}, sharded {s}")
    assert sum(s) == u[0] and max(s) - min(s) <= 8, (u, s)
PY

# plan prints the run's start-up memory lines
for lay in "dp2cp2_s 4 --set parallel.context_parallel=2" "dp2_u 2 $unsh" \
  "bf_s 2 --set train.precision=bf16"; do
  set -- $lay
  name=$1 world=$2
  shift 2
  "$bin" plan z.yaml --world "$world" "$@" > "plan_$name.txt" 2>&1 || fail "plan $name exited non-zero"
  diff <(grep -o "memory rank .*" "plan_$name.txt") <(grep -o "memory rank .*" "$name.log") \
    || fail "plan and run disagree for $name"
done
grep -q "^fits: yes" plan_dp2_u.txt || fail "plan: no fit verdict"
"$bin" plan z.yaml --world 2 --device cuda --gpu-memory 1KiB | grep -q "^fits: no" \
  || fail "plan: 1KiB of GPU memory fits"
expect2() {  # expect2 PATTERN CMD...
  local pat=$1
  shift
  out=$("$@" 2>&1)
  code=$?
  [ "$code" -eq 2 ] || fail "$* exited $code (want 2)"
  grep -q -- "$pat" <<< "$out" || fail "$*: message lacks '$pat': $out"
}
expect2 "context_parallel(2) does not divide world size(3)" \
  "$bin" plan z.yaml --world 3 --set parallel.context_parallel=2
expect2 "data_parallel(8) \* train.micro_batch_size(1)" "$bin" plan z.yaml --world 8
expect2 "parallel.shard_optimizer: must be one of auto | true | false" \
  "$bin" plan z.yaml --set parallel.shard_optimizer=maybe
expect2 "parallel.bucket_mb" "$bin" plan z.yaml --set parallel.bucket_mb=0
expect2 "gpu-memory" "$bin" plan z.yaml --device cuda --gpu-memory lots
expect2 "world" "$bin" plan z.yaml --world 0

[ "$failures" -eq 0 ] && echo "cli_zero: all passed"
exit $((failures > 0))
