#!/usr/bin/env bash
# Run the CUDA attention checks and benchmarks on a GPU machine.
#   bash tests/bench/run_cuda_attention.sh BIN_DIR [OUT_DIR]
# BIN_DIR holds test_model_cuda_attention, test_model_cuda_device and
# bench_cuda_attention (e.g. build/tests). Writes logs and JSON to OUT_DIR
# (default: .) and prints a summary table last. Set RT_SANITIZE=1 to also run
# the small cases under compute-sanitizer (memcheck and racecheck).
set -uo pipefail
bin=${1:?usage: run_cuda_attention.sh BIN_DIR [OUT_DIR]}
out=${2:-.}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu \
  --format=csv 2>&1 | tee "$out/gpu.txt"
"$bin/test_model_cuda_device" 2>&1 | tail -3
"$bin/test_model_cuda_attention" 2>&1 | tee "$out/test.log" | grep -E "rel err|FAILED|PASSED|SKIPPED|Failure|error" | head -60
test_rc=${PIPESTATUS[0]}
if [[ "${RT_SANITIZE:-0}" == 1 ]] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 "$bin/test_model_cuda_attention" \
      --gtest_filter='*T200_B2*:*ring_future_partial*:*130x77*:*gqa_T333*' > "$out/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool: rc=$? ($(grep -c 'ERROR SUMMARY: 0' "$out/sanitize_$tool.log") clean summaries)"
    grep -m5 -E "Invalid|Race|hazard" "$out/sanitize_$tool.log"
  done
fi
"$bin/bench_cuda_attention" ${RT_BENCH_ARGS:-} > "$out/bench.json" 2> "$out/bench.err"
echo "bench rc=$?"; cat "$out/bench.err"
# the portable mma.sync kernels on the same GPU, and head_dim 64
"$bin/bench_cuda_attention" --impl mma ${RT_BENCH_ARGS:-} > "$out/bench_mma.json" 2>> "$out/bench.err"
"$bin/bench_cuda_attention" --hd 64 --heads 32 ${RT_BENCH_ARGS:-} > "$out/bench_hd64.json" 2>> "$out/bench.err"
if python3 -c "import torch" 2>/dev/null; then
  python3 "$here/bench_sdpa.py" --ours "$out/bench.json" ${RT_BENCH_ARGS:-} > "$out/sdpa.json" 2> "$out/compare.txt"
  echo "sdpa rc=$?"
fi
for f in bench_mma bench_hd64 bench; do
  echo "== $f"; grep -E '"impl"|"matmul|"T"' "$out/$f.json" | sed 's/"B".*"fwd_ms/"fwd_ms/'
done
cat "$out/compare.txt" 2>/dev/null
exit $test_rc
