#!/usr/bin/env bash
# Issue 14's GPU checks for device buffers between ranks, on a GPU machine
# (about 2 minutes; built with CUDA and NCCL):
#   bash tests/bench/run_nccl_gpu.sh BUILD_DIR [OUT_DIR]
#  - nccl_comm_gpu at world size 1 (and 2 ranks when the node has 2 GPUs):
#    NcclComm against MpiComm, GradReducer on the device arena;
#  - gpu_ring_shared.sh: cp = 2 and 4 ranks sharing GPU 0 (pinned-host
#    staging) against cp = 1 on the GPU;
#  - bench_ring_overlap: the attention kernel alone and beside a ring shift on
#    NCCL's communication stream (JSON), at 8K and 32K tokens per rank.
# Writes logs and JSON to OUT_DIR (default .) and prints a summary last.
set -uo pipefail
build=${1:?usage: run_nccl_gpu.sh BUILD_DIR [OUT_DIR]}
out=${2:-.}
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
gpus=$(nvidia-smi -L 2> /dev/null | grep -c "^GPU")
summary=()
counts() { grep -E '^\[ *(PASSED|FAILED|SKIPPED) *\] [0-9]+ test' "$1" | tr -s ' ' | tr '\n' ' '; }
bash "$src/launch/local.sh" -np 1 "$build/tests/nccl_comm_gpu" --gtest_color=no \
  > "$out/nccl_comm_gpu_np1.log" 2>&1
summary+=("nccl_comm_gpu np1: rc=$? $(counts "$out/nccl_comm_gpu_np1.log")")
if [ "$gpus" -ge 2 ]; then
  bash "$src/launch/local.sh" -np 2 "$build/tests/nccl_comm_gpu" --gtest_color=no \
    > "$out/nccl_comm_gpu_np2.log" 2>&1
  summary+=("nccl_comm_gpu np2: rc=$? $(counts "$out/nccl_comm_gpu_np2.log")")
else
  summary+=("nccl_comm_gpu np2: not run ($gpus GPU)")
fi
timeout 300 bash "$src/tests/cli/gpu_ring_shared.sh" "$build/ringtrain" "$src" > "$out/gpu_ring_shared.log" 2>&1
summary+=("gpu_ring_shared: rc=$? $(tail -1 "$out/gpu_ring_shared.log")")
for T in 8192 32768; do
  "$build/tests/bench_ring_overlap" --T $T > "$out/bench_ring_overlap_T$T.json" 2> "$out/bench_ring_overlap_T$T.err"
  summary+=("bench_ring_overlap T=$T: rc=$? $(tr -d '\n' < "$out/bench_ring_overlap_T$T.json")")
done
printf '%s\n' "${summary[@]}"
