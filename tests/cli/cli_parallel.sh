#!/usr/bin/env bash
# Data and context parallelism through mpirun (launch/local.sh):
#  - the same config gives the same loss at every step and the same final
#    weights for (dp,cp) in (1,1) (1,2) (1,4) (2,2) (4,1), both ring layouts
#    and several micro-batch sizes (SPEC §6 equivalence, relative 1e-5);
#  - activation checkpointing true and selective over a ring of 2 give
#    bitwise the losses and final weights of checkpointing off (selective's
#    recompute skips the ring attention and its communication);
#  - impossible layouts exit 2 naming every factor;
#  - a rank that throws, or is killed, brings the job down non-zero in < 10 s.
# usage: cli_parallel.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
launch="bash $src/launch/local.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1
source "$src/tests/cli/lib.sh"

cat > par.yaml <<YAML
run: {name: par, seed: 11}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2}
data: {train: {synthetic: passkey, loss: all}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 4, max_steps: 20,
        optimizer: {type: adamw, lr: 3.0e-3}, schedule: {type: cosine, warmup_steps: 2, min_lr: 3.0e-4}}
checkpoint: {every_steps: 0}
log: {every_steps: 1}
YAML

run() { mpi_train par.yaml "$@"; }  # run NAME NP [--set ...]
run dp1cp1 1
run dp1cp2 2 --set parallel.context_parallel=2
run dp1cp4 4 --set parallel.context_parallel=4
run dp2cp2 4 --set parallel.context_parallel=2
run dp4cp1 4
run dp1cp2_contig_mb2 2 --set parallel.context_parallel=2 --set parallel.ring_layout=contiguous \
  --set train.micro_batch_size=2
run dp2cp1_mb2 2 --set train.micro_batch_size=2
run dp1cp2_ckpt 2 --set parallel.context_parallel=2 --set train.activation_checkpointing=true
run dp1cp2_sel 2 --set parallel.context_parallel=2 --set train.activation_checkpointing=selective
# bf16 inside the ring: K,V travel in bf16, blocks merge in fp32
run bf16_cp1 1 --set train.precision=bf16
run bf16_cp2 2 --set parallel.context_parallel=2 --set train.precision=bf16
grep -q "rank   dp   cp  host" dp2cp2.log || fail "rank 0 printed no layout table"

/usr/bin/python3 - "$work" "$src/tests/cli" <<'PY' || fail "layouts disagree"
import sys
work = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import runs
def losses(name):
    return runs.losses(f"{work}/{name}")
ref = losses("dp1cp1")
assert len(ref) == 20, len(ref)
bad = []
for name in ["dp1cp2", "dp1cp4", "dp2cp2", "dp4cp1", "dp1cp2_contig_mb2", "dp2cp1_mb2"]:
    got = losses(name)
    assert len(got) == 20, (name, len(got))
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    print(f"{name}: max relative loss difference over 20 steps {worst:.2e}")
    if worst > 1e-5:
        bad.append(name)
# bf16: cp=2 follows cp=1 within bf16 rounding (each ring block's output is
# rounded to bf16 before the fp32 merge), and bf16 really differs from fp32
b1, b2 = losses("bf16_cp1"), losses("bf16_cp2")
worst = max(abs(a - b) / abs(b) for a, b in zip(b2, b1))
diff32 = max(abs(a - b) / abs(b) for a, b in zip(b1, ref))
print(f"bf16 cp2 vs cp1: max relative loss difference over 20 steps {worst:.2e} "
      f"(bf16 vs fp32: {diff32:.2e})")
if not (len(b2) == 20 and worst < 2e-2 and diff32 > 0):
    bad.append("bf16_cp2")
# checkpointing over the ring: bitwise the losses of the run without it
for name in ["dp1cp2_ckpt", "dp1cp2_sel"]:
    got = losses(name)
    same = got == losses("dp1cp2")
    print(f"{name}: losses over 20 steps {'bitwise equal to' if same else 'DIFFER from'} dp1cp2")
    if not same:
        bad.append(name)
try:
    import h5py, numpy as np
except ImportError:
    print("skipped: weight comparison needs /usr/bin/python3 with h5py")
else:
    def weights(name):
        with h5py.File(f"{work}/{name}/checkpoints/step_00000020.h5") as f:
            return {k: f["model"][k][()] for k in f["model"]}
    w0 = weights("dp1cp1")
    for name in ["dp1cp2", "dp1cp4", "dp2cp2", "dp4cp1"]:
        w = weights(name)
        # Per tensor: the norm of the difference relative to the tensor's norm
        # (SPEC §6: relative 1e-5), and the largest element difference relative
        # to the tensor's largest element, which 20 AdamW steps amplify on
        # near-zero gradients (seen: 1.1e-5 with norm-relative 2e-7), so it
        # gets a 1e-4 bound.
        norm_rel = max(np.linalg.norm(w[k] - w0[k]) / np.linalg.norm(w0[k]) for k in w0)
        elem_rel = max(np.abs(w[k] - w0[k]).max() / np.abs(w0[k]).max() for k in w0)
        print(f"{name}: relative weight difference after 20 steps: norm {norm_rel:.2e}, "
              f"largest element {elem_rel:.2e}")
        if norm_rel > 1e-5 or elem_rel > 1e-4:
            bad.append(name + " weights")
    w_off = weights("dp1cp2")
    for name in ["dp1cp2_ckpt", "dp1cp2_sel"]:
        w = weights(name)
        same = w.keys() == w_off.keys() and all(np.array_equal(w[k], w_off[k]) for k in w_off)
        print(f"{name}: weights after 20 steps {'bitwise equal to' if same else 'DIFFER from'} "
              "dp1cp2")
        if not same:
            bad.append(name + " weights")
assert not bad, bad
PY

# impossible layouts: exit 2, every factor named
expect_usage() {  # expect_usage PATTERN NP ARGS...
  local pattern=$1 np=$2
  shift 2
  $launch -np "$np" "$bin" train par.yaml --set run.dir="$work/bad" "$@" > bad.log 2>&1
  local code=$?
  [ "$code" = 2 ] && grep -qE -- "$pattern" bad.log \
    || { fail "np $np $*: exit $code (want 2) and /$pattern/"; tail -5 bad.log >&2; }
}
expect_usage "context_parallel\(3\) does not divide world size\(4\)" 4 --set parallel.context_parallel=3
expect_usage "data_parallel\(2\) \* context_parallel\(1\) != world size\(4\)" 4 --set parallel.data_parallel=2
expect_usage "seq_len\(250\).*2\*context_parallel|250.*8" 4 --set parallel.context_parallel=4 --set train.seq_len=250
expect_usage "model.memory.*context_parallel\(2\) > 1 is not supported" 2 --set parallel.context_parallel=2 \
  --set 'model.memory={type: rmt, num_tokens: 4, segment_length: 64}'
expect_usage "global_batch_size" 4 --set train.global_batch_size=6 --set parallel.context_parallel=1

# failure of one rank: the job ends non-zero within 10 s
start=$(date +%s%N)
RINGTRAIN_TEST_THROW_RANK=1 RINGTRAIN_TEST_THROW_STEP=3 \
  $launch -np 2 "$bin" train par.yaml --set run.dir="$work/throw" --set train.max_steps=100000 \
  > throw.log 2>&1
code=$?
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$code" != 0 ] || fail "a throwing rank did not fail the job"
grep -q "injected failure" throw.log || fail "the failing rank's message is missing"
(( took < 10000 )) || fail "job took ${took} ms to end after a rank threw"
echo "throwing rank: job exited $code after ${took} ms"

$launch -np 2 "$bin" train par.yaml --set run.dir="$work/kill" --set train.max_steps=100000 \
  > kill.log 2>&1 &
job=$!
for _ in $(seq 100); do
  [ -f kill/metrics.jsonl ] && [ "$(wc -l < kill/metrics.jsonl)" -ge 3 ] && break
  sleep 0.1
done
victim=$(pgrep -f "ringtrain train par.yaml --set run.dir=$work/kill" | sort -n | tail -1)
start=$(date +%s%N)
kill -9 "$victim"
wait $job
code=$?
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ "$code" != 0 ] || fail "a killed rank did not fail the job"
(( took < 10000 )) || fail "job took ${took} ms to end after a rank was killed"
echo "killed rank: job exited $code after ${took} ms"

if [ "$failures" -ne 0 ]; then echo "cli_parallel: $failures check(s) failed" >&2; exit 1; fi
echo "cli_parallel: all checks passed"
