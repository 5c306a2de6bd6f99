#!/usr/bin/env bash
# Ranks that share one GPU (issue 14 item 4), on a machine with a GPU (ctest
# label cuda; exit 77 "skipped: no CUDA device" without one): context
# parallelism cp = 2 and cp = 4 with every rank on GPU 0, where NCCL refuses
# two ranks on one device and the K/V blocks and gradients travel through
# pinned host memory over MPI, equal cp = 1 on the GPU within the bf16
# tolerance of the single-GPU issue (per step 3%, final loss 1%); the log
# says the staging path was chosen ("comm: ranks share GPU 0"). Then data
# parallelism dp = 2 on the shared GPU with the sharded optimizer (ZeRO-1,
# reduce-scatter + all-gather through the staging path) against the same run
# unsharded: losses within 1e-3 relative at every step (a wrong shard offset
# or a missing all-gather moves them by far more; bf16 compute weights can
# round differently once the two global gradient norms differ in the last
# bit), and each rank's optimizer bytes are half the unsharded rank's.
# usage: gpu_ring_shared.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L 2> /dev/null | grep -q "^GPU"; then
  echo "skipped: no CUDA device"
  exit 77
fi
launch="bash $src/launch/local.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1
source "$src/tests/cli/lib.sh"

# head_dim 64 (the CUDA attention kernels take 64 and 128)
cat > g.yaml <<YAML
run: {seed: 11}
model: {vocab_size: 256, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {train: {synthetic: passkey, loss: all}}
train: {seq_len: 512, micro_batch_size: 1, global_batch_size: 2, max_steps: 20,
        optimizer: {type: adamw, lr: 2.0e-3}, schedule: {type: cosine, warmup_steps: 2, min_lr: 2.0e-4}}
log: {every_steps: 1}
parallel: {device: cuda}
YAML

run() { mpi_train g.yaml "$@"; }  # run NAME NP [--set ...]
run cp1 1
run cp2 2 --set parallel.context_parallel=2
run cp4 4 --set parallel.context_parallel=4
run dp2_u 2 --set parallel.shard_optimizer=false
run dp2_s 2 --set parallel.shard_optimizer=true
for name in cp2 cp4 dp2_u dp2_s; do
  grep -q "comm: ranks share GPU 0" "$name.log" || fail "$name: the log does not say the ranks share GPU 0"
done
grep -q "reduce-scatter (sharded optimizer, ZeRO-1)" dp2_s.log || fail "dp2_s did not log a sharded reduction"

run_py - "$work" "$src/tests/cli" <<'PY' || fail "runs on the shared GPU beyond their bounds (above)"
import os, re, sys
work = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import runs
def losses(name):  # [] for a run that logged nothing (its failure is already counted)
    return runs.losses(f"{work}/{name}") if os.path.exists(f"{work}/{name}/metrics.jsonl") else []
def opt_bytes(name):  # per rank, from the start-up log
    return [int(m.group(1)) for m in re.finditer(r"memory rank \d+: .*optimizer state (\d+) B",
                                                 open(f"{work}/{name}.log").read())]
bad = []
# cp on the shared GPU vs cp1: the bf16 tolerance
ref = losses("cp1")
for name in ["cp2", "cp4"]:
    got = losses(name)
    if len(got) != len(ref) or not ref:
        print(f"{name}: {len(got)} losses, cp1 {len(ref)}")
        bad.append(name)
        continue
    step = max(abs(a - b) / abs(b) for a, b in zip(got, ref))
    final = abs(got[-1] - ref[-1]) / abs(ref[-1])
    print(f"{name} (ranks sharing GPU 0) vs cp1 on the GPU: per-step max rel {step:.2e} "
          f"(<= 3e-2), final rel {final:.2e} (<= 1e-2), loss {ref[0]:.4f} -> {ref[-1]:.4f}")
    if step > 3e-2 or final > 1e-2:
        bad.append(name)
# dp2 sharded vs unsharded: 1e-3 per step, optimizer bytes halved
u, s = losses("dp2_u"), losses("dp2_s")
ou, os_ = opt_bytes("dp2_u"), opt_bytes("dp2_s")
if not u or len(u) != len(s):
    print(f"dp2_s: {len(s)} losses, dp2_u {len(u)}")
    bad.append("dp2 losses")
else:
    step = max(abs(a - b) / abs(b) for a, b in zip(s, u))
    print(f"dp2 sharded vs unsharded (ranks sharing GPU 0): per-step max rel {step:.2e} (<= 1e-3), "
          f"bitwise {s == u}; optimizer bytes per rank unsharded {ou}, sharded {os_}")
    if step > 1e-3:
        bad.append("dp2 losses")
if not (len(ou) == 2 and len(os_) == 2 and sum(os_) == ou[0] and max(os_) - min(os_) <= 8):
    print(f"dp2 optimizer bytes per rank: unsharded {ou}, sharded {os_}")
    bad.append("dp2 optimizer bytes")
assert not bad, bad
PY

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "gpu_ring_shared: all checks passed"
