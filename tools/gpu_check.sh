#!/usr/bin/env bash
# Everything a lent GPU must run for the CUDA backend (issue 13), in one go,
# sized for 8 minutes on one H100/H200 (--budget): logs and JSON go to OUT_DIR, every
# step runs even when an earlier one failed, and a short table ends the output
# (also OUT_DIR/summary.txt). It never changes the card's settings.
#
#   tools/gpu_check.sh OUT_DIR [--bundle ARCHIVE | --rt DIR | --build DIR]
#                      [--longest-t] [--no-profile] [--budget SECONDS] [--quick]
#                      [--only STEPS] [--no-torch] [--ckpt64 VALUES] [--bench-t LIST]
#                      [--attn-env VALUES]
#
# Where the binaries come from (first that applies):
#   --bundle ARCHIVE  a pack.sh archive (tools/gpu_pack.sh writes
#                     build-gpu/device/rt.tar.xz): unpacked into /tmp/rt;
#   --rt DIR          an unpacked bundle: DIR/bin/ringtrain, DIR/env.sh;
#   --build DIR       a CUDA build tree (ctest -L cuda runs there);
#   default: $RT if set, else build-gpu/device/rt.tar.xz, else build-gpu/.
# Bundle binaries run in subshells that source DIR/env.sh; Python (the
# comparisons, the PyTorch peer) runs outside them (the bundle's libraries
# come first there).
#
# Steps, the checks first and the measurements after them: nvidia-smi
# summary; the CUDA tests (ctest -L cuda in a build tree; in a bundle the
# test_*cuda* binaries and the op harness directly); the op harness
# test_model_backend_ops; the head_dim-64 attention kernels at TinyLlama's
# heads, 4K, 16K and 64K: mma.sync vs wgmma vs wgmma with the backward's dQ
# exchange (bench_cuda_attention --dq-exchange 1) vs
# PyTorch's flash SDPA (bench_sdpa.py); CPU fp32 vs GPU bf16 over 50 steps
# (tests/cli/cli_cuda_e2e.sh); GPU resume after SIGTERM; compute-sanitizer
# memcheck on a 2-step training run (when installed); issue 14's checks
# (tests/bench/run_nccl_gpu.sh: NcclComm at 1 rank, cp 2 and 4 ranks and
# dp 2 sharded/unsharded sharing the GPU, the ring-overlap benchmark) when
# the binaries were built with NCCL; where a step's time goes (ncu over 2
# steps of the TinyLlama shape cut to 4 layers, summed by tools/ncu_summary.py
# into profile.txt; --no-profile leaves it out); ringtrain bench at T = 4K,
# 16K, 64K for configs/bench_tinyllama.yaml (activation checkpointing at 64K:
# true and selective)
# and tests/bench/bench_torch_train.py at the same T when python3 has torch
# with CUDA (eager, and torch.compile at 16K). --longest-t (optional) then
# doubles T from 64K until ringtrain and PyTorch fail, 1 step each.
# --budget (default 450 s) skips what would start after it; --quick cuts the
# benchmark steps (a smoke run). On an H200 the checks took about 85 s, the
# NCCL step 20 s, the profile about 40 s and the benchmark about 300 s.
# --only runs the named steps alone (comma-separated: tests, ops, attn, e2e,
# memcheck, nccl, profile, bench; torchmax, only when named: the PyTorch
# script's longest T within 79.6 GiB, before torch.compile; compile, with
# bench or named: torch.compile at 16K when 150 s remain; attnprof, only when
# named: ncu's detailed set on one wgmma attention backward at 16K), for a second,
# shorter call; --no-torch leaves PyTorch out of the benchmark; --ckpt64 gives the
# train.activation_checkpointing values ringtrain runs at 64K (default
# true,selective); --bench-t keeps the benchmark's T values listed (e.g.
# 16384,65536); --attn-env runs ringtrain again at every T (at 64K with the
# last --ckpt64 value) with RINGTRAIN_CUDA_ATTENTION set to each value given
# (e.g. mma: the mma.sync kernels end to end beside the default wgmma ones,
# or wgmma-dqx: the backward's dQ exchange, not yet the default; rows "bench
# ringtrain+VALUE"; default none).
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)

out="" bundle="" rt="${RT:-}" build="" longest=0 profile=1 budget=450 quick=0 only="" torch=1
ckpt64=true,selective bench_t="" attn_env=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle=$2; shift ;;
    --rt) rt=$2; shift ;;
    --build) build=$2; shift ;;
    --longest-t) longest=1 ;;
    --no-profile) profile=0 ;;
    --budget) budget=$2; shift ;;
    --quick) quick=1 ;;
    --only) only=$2; shift ;;
    --no-torch) torch=0 ;;
    --ckpt64) ckpt64=$2; shift ;;
    --bench-t) bench_t=$2; shift ;;
    --attn-env) attn_env=$2; [ "$attn_env" = none ] && attn_env=""; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$out" ] && out=$1 || { echo "gpu_check.sh: one OUT_DIR only" >&2; exit 2; } ;;
  esac
  shift
done
[ -n "$out" ] || { echo "usage: tools/gpu_check.sh OUT_DIR [--bundle ARCHIVE | --rt DIR | --build DIR] [--longest-t] [--no-profile] [--budget S] [--quick] [--only STEPS] [--no-torch] [--ckpt64 VALUES] [--bench-t LIST] [--attn-env VALUES]" >&2; exit 2; }
mkdir -p "$out" || exit 3
out=$(cd "$out" && pwd)
t_start=$SECONDS
summary=$out/summary.txt
: > "$summary"
row() {  # row NAME STATUS SECONDS DETAIL
  printf '%-30s %-8s %5ss  %s\n' "$1" "$2" "$3" "$4" >> "$summary"
}
left() { echo $((budget - (SECONDS - t_start))); }
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }  # want STEP: --only names it (or no --only)
named() { [[ ",$only," == *",$1,"* ]]; }                   # named STEP: --only names it
py() { env -u LD_LIBRARY_PATH python3 "$@"; }

# ---- binaries -------------------------------------------------------------
if [ -z "$bundle" ] && [ -z "$rt" ] && [ -z "$build" ]; then
  if [ -f "$src/build-gpu/device/rt.tar.xz" ]; then bundle=$src/build-gpu/device/rt.tar.xz
  elif [ -x "$src/build-gpu/ringtrain" ]; then build=$src/build-gpu
  else echo "gpu_check.sh: no binaries: run tools/gpu_pack.sh first, or give --bundle/--rt/--build" >&2; exit 2; fi
fi
if [ -n "$bundle" ]; then
  unpack=$(dirname "$bundle")/unpack.sh
  [ -f "$unpack" ] || unpack=$src/../shared/device/unpack.sh
  rt=/tmp/rt
  bash "$unpack" "$bundle" "$rt" > "$out/unpack.txt" 2>&1 || { cat "$out/unpack.txt"; echo "gpu_check.sh: unpacking $bundle failed" >&2; exit 3; }
  grep -v '^export' "$out/unpack.txt"
fi
wrap=$out/bin
mkdir -p "$wrap"
if [ -n "$rt" ]; then
  # one wrapper per binary: the bundle's environment for it alone
  for b in "$rt"/bin/*; do
    n=$(basename "$b")
    printf '#!/usr/bin/env bash\n. "%s/env.sh"\nexec "%s" "$@"\n' "$rt" "$b" > "$wrap/$n"
    chmod +x "$wrap/$n"
  done
  testbin=$wrap
else
  build=$(cd "$build" && pwd)  # the link below must not be relative
  ln -sf "$build/ringtrain" "$wrap/ringtrain"
  testbin=$build/tests
fi
rtbin=$wrap/ringtrain
[ -x "$rtbin" ] || { echo "gpu_check.sh: no ringtrain in ${rt:-$build}" >&2; exit 2; }

# ---- 1. the GPU --------------------------------------------------------------
t=$SECONDS
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,utilization.gpu \
  --format=csv > "$out/nvidia_smi.csv" 2>&1
rc=$?
nvidia-smi > "$out/nvidia_smi.txt" 2>&1
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
cat "$out/nvidia_smi.csv"
row "nvidia-smi" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) "${gpu_name:-no GPU seen}"

# ---- 2. CUDA tests and the op harness -----------------------------------
t=$SECONDS
if ! want tests; then
  :
elif [ -n "$build" ]; then
  # the emulated-CUDA tests are CPU work CI already runs
  ctest --test-dir "$build" -L cuda -E "cli_cuda_e2e|Emulated|CudaEmu" --output-on-failure --timeout 300 > "$out/ctest_cuda.log" 2>&1
  rc=$?
  row "ctest -L cuda" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) "$(grep -E 'tests passed|tests failed' "$out/ctest_cuda.log" | tail -1)"
else
  n=0 bad=0 skip=0
  for b in "$testbin"/test_*cuda*; do
    [ -e "$b" ] || continue
    case "$b" in *_emu|*_emu_*) continue ;; esac  # emulator tests: CPU work CI runs
    n=$((n + 1))
    timeout 300 "$b" --gtest_filter='-*Emulated*:CudaEmu.*' > "$out/$(basename "$b").log" 2>&1 || bad=$((bad + 1))
    grep -q "SKIPPED" "$out/$(basename "$b").log" && skip=$((skip + 1))
  done
  st=ok; [ $bad -gt 0 ] && st=FAIL; [ $n = 0 ] && st=missing
  row "CUDA test binaries" "$st" $((SECONDS - t)) "$n binaries, $bad failed, $skip with skipped tests"
fi
t=$SECONDS
if ! want ops; then
  :
elif [ -x "$testbin/test_model_backend_ops" ]; then
  timeout 300 "$testbin/test_model_backend_ops" > "$out/backend_ops.log" 2>&1
  rc=$?
  row "op harness (backend_ops)" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) \
    "$(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/backend_ops.log" | tr '\n' ' ')"
  grep -qE "cuda" "$out/backend_ops.log" || echo "note: the op harness log never mentions cuda (is the CUDA backend registered there?)"
else
  row "op harness (backend_ops)" missing 0 "no test_model_backend_ops in $testbin"
fi

# ---- 2b. attention kernels at TinyLlama's heads: mma.sync vs wgmma vs SDPA --
# hd 64, 32 query heads on 4 kv heads, T = 4K, 16K and 64K, batch 1, each
# family with its automatic (grid-based) head split, and PyTorch's flash SDPA on the same
# shapes (bench_sdpa.py, GQA through enable_gqa or repeated kv heads).
t=$SECONDS
if want attn && [ -x "$testbin/bench_cuda_attention" ]; then
  for impl in mma wgmma wgmma+dqx; do
    dqx=0; [ $impl = wgmma+dqx ] && dqx=1
    timeout 120 "$testbin/bench_cuda_attention" --hd 64 --heads 32 --kv-heads 4 --tokens 4096 \
      --seq-lens 4096,16384,65536 --reps 5 --impl ${impl%+dqx} --dq-exchange $dqx \
      > "$out/attn_$impl.json" 2>> "$out/attn.err"
  done
  timeout 120 env -u LD_LIBRARY_PATH python3 "$src/tests/bench/bench_sdpa.py" --hd 64 --heads 32 \
    --kv-heads 4 --tokens 4096 --seq-lens 4096,16384,65536 --reps 5 > "$out/attn_sdpa.json" 2>> "$out/attn.err"
  detail=$(py - "$out/attn_mma.json" "$out/attn_wgmma.json" "$out/attn_sdpa.json" "$out/attn_wgmma+dqx.json" <<'PYEOF' 2>> "$out/attn.err"
import json, sys
def load(f):
    try:
        return json.load(open(f))
    except Exception as e:
        return {"skipped": f"{f}: {e}"}
mma, wg, sdpa, dqx = (load(f) for f in sys.argv[1:5])
if "skipped" in mma:
    sys.exit("skipped: " + mma["skipped"])
key = lambda j: {(r["T"], r["causal"]): r for r in j.get("results", [])}
W, S, X = key(wg), key(sdpa), key(dqx)
cells = []
for r in mma["results"]:
    if not r["causal"]:
        continue
    k = (r["T"], True)
    c = f"T={r['T']} fwd/bwd TF/s mma {r['fwd_tflops']:.0f}/{r['bwd_tflops']:.0f}"
    if k in W:
        c += f" wgmma {W[k]['fwd_tflops']:.0f}/{W[k]['bwd_tflops']:.0f} (split {W[k]['head_split']})"
    if k in X:
        c += f" wgmma+dqx -/{X[k]['bwd_tflops']:.0f}"
    if k in S:
        c += f" sdpa {S[k]['fwd_tflops']:.0f}/{S[k]['bwd_tflops']:.0f}"
    cells.append(c)
print("; ".join(cells))
PYEOF
  )
  st=ok; [ -z "$detail" ] && st=FAIL && detail="see attn.err"
  grep -q "^skipped" "$out/attn.err" && st=skipped && detail=$(grep -m1 "^skipped" "$out/attn.err")
  row "attention hd64 kernels" $st $((SECONDS - t)) "$detail"
elif want attn; then
  row "attention hd64 kernels" missing 0 "no bench_cuda_attention in $testbin"
fi

# ---- 3. end to end: CPU fp32 vs GPU bf16, resume after SIGTERM ----------
for part in compare resume; do
  want e2e || break
  t=$SECONDS
  if [ "$(left)" -lt 60 ]; then row "e2e $part" skipped 0 "time budget"; continue; fi
  RT_E2E_PARTS=$part timeout $(( $(left) < 240 ? $(left) : 240 )) \
    bash "$src/tests/cli/cli_cuda_e2e.sh" "$rtbin" "$src" "$out/e2e" > "$out/e2e_$part.log" 2>&1
  rc=$?
  st=ok; [ $rc != 0 ] && st=FAIL; grep -q "^skipped:" "$out/e2e_$part.log" && st=skipped
  [ $rc = 124 ] && st=timeout
  if [ $part = compare ]; then
    detail="$(grep -cE "^(rope|alibi|nopos|rmt) .* ok$" "$out/e2e_$part.log")/4 models within bounds"
  else
    detail="$(grep -oE "max relative loss difference [^ ;]+[; (]+[a-zA-Z]+" "$out/e2e_$part.log" | head -1)"
  fi
  row "e2e $part" "$st" $((SECONDS - t)) "$detail"
  grep -E "^(rope|alibi|nopos|rmt|resume|skipped|FAIL)" "$out/e2e_$part.log"
done

# ---- 4. compute-sanitizer memcheck on a 2-step run ------------------------
# --report-api-errors no: NCCL's communicator set-up asks cudaFuncGetAttributes
# about kernels it has no image for on this device and handles the answer (12
# such reports on an H200, all inside ncclCommInitRank/ncclCommSplit);
# ringtrain's own CUDA calls are checked where they are made (CUDA_CHECK).
# Memory access errors (out of bounds, misaligned) still count.
t=$SECONDS
cat > "$out/memcheck.yaml" <<YAML
run: {name: memcheck, dir: $out/memcheck_run, seed: 3}
model: {vocab_size: 256, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {train: $src/tests/fixtures/tinyshakespeare_100k.txt}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 2, max_steps: 2, precision: bf16}
checkpoint: {every_steps: 0}
parallel: {device: cuda}
YAML
if ! want memcheck; then
  :
elif ! command -v compute-sanitizer > /dev/null; then
  row "compute-sanitizer memcheck" missing 0 "compute-sanitizer is not on this machine"
elif [ "$(left)" -lt 40 ]; then
  row "compute-sanitizer memcheck" skipped 0 "time budget"
else
  rm -rf "$out/memcheck_run"
  if [ -n "$rt" ]; then
    ( . "$rt/env.sh"; timeout 180 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 \
        "$rt/bin/ringtrain" train "$out/memcheck.yaml" ) > "$out/memcheck.log" 2>&1
  else
    timeout 180 compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 "$rtbin" train "$out/memcheck.yaml" \
      > "$out/memcheck.log" 2>&1
  fi
  rc=$?
  st=ok; [ $rc != 0 ] && st=FAIL; [ $rc = 124 ] && st=timeout
  row "compute-sanitizer memcheck" "$st" $((SECONDS - t)) "$(grep -m1 'ERROR SUMMARY' "$out/memcheck.log")"
fi

# ---- 5. device buffers between ranks (issue 14): NCCL and the staged path --
t=$SECONDS
if ! want nccl; then
  :
elif [ ! -x "$testbin/nccl_comm_gpu" ]; then
  row "nccl + shared-GPU ring" missing 0 "no nccl_comm_gpu (a build without NCCL?)"
elif [ "$(left)" -lt 60 ]; then
  row "nccl + shared-GPU ring" skipped 0 "time budget"
else
  # run_nccl_gpu.sh wants BUILD/ringtrain and BUILD/tests/<binary>
  tree=$out/nccl_tree
  mkdir -p "$tree/tests"
  ln -sf "$rtbin" "$tree/ringtrain"
  for b in nccl_comm_gpu bench_ring_overlap; do ln -sf "$testbin/$b" "$tree/tests/$b"; done
  lim=$(( $(left) < 240 ? $(left) : 240 ))
  if [ -n "$rt" ]; then  # mpirun from the bundle
    ( . "$rt/env.sh"; timeout $lim bash "$src/tests/bench/run_nccl_gpu.sh" "$tree" "$out/nccl" ) \
      > "$out/nccl.log" 2>&1
  else
    timeout $lim bash "$src/tests/bench/run_nccl_gpu.sh" "$tree" "$out/nccl" > "$out/nccl.log" 2>&1
  fi
  rc=$?
  st=ok; [ $rc != 0 ] && st=FAIL; [ $rc = 124 ] && st=timeout
  grep -qE "rc=[1-9]" "$out/nccl.log" && st=FAIL
  row "nccl + shared-GPU ring" "$st" $((SECONDS - t)) "$(grep -c 'rc=0' "$out/nccl.log") parts rc=0 (see nccl.log)"
  tail -5 "$out/nccl.log"
fi

# ---- 6. where a step's time goes: ncu over 2 steps (TinyLlama shape, 4 layers)
t=$SECONDS
if [ $profile = 0 ] || ! want profile; then
  :
elif ! command -v ncu > /dev/null; then
  row "profile (ncu)" missing 0 "ncu is not on this machine"
elif [ "$(left)" -lt 60 ]; then
  row "profile (ncu)" skipped 0 "time budget"
else
  rm -rf "$out/profile_run"
  timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$out/ncu.csv" \
    "$rtbin" train "$src/configs/bench_tinyllama.yaml" --set parallel.device=cuda --set train.max_steps=2 \
    --set model.num_hidden_layers=4 --set run.dir="$out/profile_run" > "$out/profile.log" 2>&1
  rc=$?
  rm -rf "$out/profile_run"  # a 4-layer checkpoint: no use here
  py "$src/tools/ncu_summary.py" "$out/ncu.csv" --steps 2 --json "$out/profile.json" > "$out/profile.txt" 2>&1 \
    || { [ $rc = 0 ] && rc=1; }
  st=ok; [ $rc != 0 ] && st=FAIL; [ $rc = 124 ] && st=timeout
  row "profile (ncu)" "$st" $((SECONDS - t)) "$(sed -n 3p "$out/profile.txt" | cut -c1-110) (profile.txt)"
  head -12 "$out/profile.txt"
fi

# ---- 7. benchmark: ringtrain and PyTorch at 4K, 16K, 64K -------------------
have_torch=0
py -c "import torch, yaml; assert torch.cuda.is_available()" 2> "$out/torch_probe.txt" && have_torch=1
[ $have_torch = 1 ] || echo "PyTorch with CUDA not found: $(tail -1 "$out/torch_probe.txt")"
[ $torch = 0 ] && have_torch=0
cfg=$src/configs/bench_tinyllama.yaml
# T  steps  checkpointing  per-run limit (s)
plan=("4096 5 false 90" "16384 3 false 120" "65536 2 true 200")
[ $quick = 1 ] && plan=("4096 2 false 60" "16384 1 false 90" "65536 1 true 150")
for p in "${plan[@]}"; do
  want bench || break
  set -- $p
  T=$1 steps=$2 ck_plan=$3 lim_plan=$4
  [ -n "$bench_t" ] && [[ ",$bench_t," != *",$T,"* ]] && continue
  # who:checkpointing; with checkpointing on, ringtrain once per --ckpt64 value
  runs=("ringtrain:$ck_plan")
  if [ $ck_plan = true ]; then
    runs=()
    IFS=, read -ra vals <<< "$ckpt64"
    for v in "${vals[@]}"; do runs+=("ringtrain:$v"); done
  fi
  # the same run with RINGTRAIN_CUDA_ATTENTION=VALUE (the last checkpointing value)
  IFS=, read -ra envs <<< "$attn_env"
  last=${runs[${#runs[@]}-1]#*:}
  for e in "${envs[@]}"; do runs+=("ringtrain+$e:$last"); done
  runs+=("torch:$ck_plan")
  for r in "${runs[@]}"; do
    who=${r%%:*} ck=${r#*:}
    aenv=""; [[ $who == ringtrain+* ]] && aenv=${who#ringtrain+}
    tag=$((T / 1024))K
    case $ck in true|false) ;; *) tag=${tag}_$ck ;; esac  # e.g. 64K_selective
    [ -n "$aenv" ] && tag=${tag}_$aenv                    # e.g. 16K_wgmma
    t=$SECONDS
    if [ $who = torch ] && [ $have_torch = 0 ]; then row "bench $who T=$tag" skipped 0 "no torch with CUDA (or --no-torch)"; continue; fi
    if [ "$(left)" -lt 30 ]; then row "bench $who T=$tag" skipped 0 "time budget"; continue; fi
    lim=$(( $(left) < lim_plan ? $(left) : lim_plan ))
    if [[ $who == ringtrain* ]]; then
      RINGTRAIN_CUDA_ATTENTION=${aenv:-auto} timeout $lim "$rtbin" bench "$cfg" --steps $steps --warmup 1 --set parallel.device=cuda --set train.seq_len=$T \
        --set train.activation_checkpointing=$ck > "$out/bench_rt_$tag.json" 2> "$out/bench_rt_$tag.log"
    else
      ckf=(); [ $ck = true ] && ckf=(--checkpointing)
      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout $lim env -u LD_LIBRARY_PATH python3 \
        "$src/tests/bench/bench_torch_train.py" "$cfg" --seq-len $T --steps $steps --warmup 1 \
        "${ckf[@]}" > "$out/bench_torch_$tag.json" 2> "$out/bench_torch_$tag.log"
    fi
    rc=$?
    f=$out/bench_$([[ $who == ringtrain* ]] && echo rt || echo torch)_$tag.json
    st=ok; [ $rc != 0 ] && st=FAIL; [ $rc = 124 ] && st=timeout
    detail=$(py - "$f" <<'PY' 2>/dev/null
import json, sys
try:
    j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception:
    print("no JSON"); sys.exit()
mfu = j.get("mfu")
g = j.get("gemm_bf16_tflops")
print(f"{j['tokens_per_s']:.0f} tok/s, mfu {'-' if mfu is None else f'{100*mfu:.1f}%'}, "
      f"peak {j['peak_mem_bytes']/2**30:.1f} GiB" + (f", cuBLAS bf16 {g:.0f} TFLOP/s" if g else ""))
PY
)
    [ "$detail" = "no JSON" ] && detail="no JSON: $(grep -v '^ *$' "${f%.json}.log" | tail -1 | cut -c1-150)"
    row "bench $who T=$tag" "$st" $((SECONDS - t)) "$detail"
  done
done
# the PyTorch script's longest T (checkpointing on) within an 80 GB H100's
# 81 559 MiB (--mem-limit-gib 79.6), 64K then 128K, 1 step each: only when
# --only names torchmax
if named torchmax && [ $have_torch = 1 ] && [ "$(left)" -gt 60 ]; then
  t=$SECONDS
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout $(( $(left) < 200 ? $(left) : 200 )) env -u LD_LIBRARY_PATH \
    python3 "$src/tests/bench/bench_torch_train.py" "$cfg" --seq-len 65536 --checkpointing --find-max-t \
    --max-t-limit 131072 --warmup 0 --mem-limit-gib 79.6 > "$out/longest_torch_80g.json" 2> "$out/longest_torch_80g.log"
  rc=$?
  row "longest T torch (79.6 GiB cap)" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) \
    "$(py -c "import json,sys;j=json.loads(open(sys.argv[1]).read().splitlines()[-1]);print('max_t', j['max_t'], '; '.join(f\"T={x['T']} \" + (f\"ok {x['peak_mem_bytes']/2**30:.1f} GiB {x['step_ms']/1e3:.1f} s\" if x['ok'] else 'OOM') for x in j['tried']))" "$out/longest_torch_80g.json" 2>/dev/null)"
fi
# torch.compile at 16K, when time remains
if { want bench || named compile; } && [ $have_torch = 1 ] && [ "$(left)" -gt 150 ]; then
  t=$SECONDS
  PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 150 env -u LD_LIBRARY_PATH python3 \
    "$src/tests/bench/bench_torch_train.py" "$cfg" --seq-len 16384 --steps 3 --warmup 2 --compile \
    > "$out/bench_torch_compile_16K.json" 2> "$out/bench_torch_compile_16K.log"
  rc=$?
  row "bench torch.compile T=16K" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) \
    "$(py -c "import json,sys;j=json.loads(open(sys.argv[1]).read().splitlines()[-1]);print(f\"{j['tokens_per_s']:.0f} tok/s, mfu {100*(j['mfu'] or 0):.1f}%\")" "$out/bench_torch_compile_16K.json" 2>/dev/null)"
fi

# ---- 7c. the attention backward under ncu (only when --only names attnprof):
# one wgmma backward launch at 16K (hd 64, 32 heads on 4 kv heads, causal),
# ncu's detailed set: what the next kernel change should go after.
if named attnprof && command -v ncu > /dev/null && [ -x "$testbin/bench_cuda_attention" ] && [ "$(left)" -gt 40 ]; then
  t=$SECONDS
  timeout $(( $(left) < 120 ? $(left) : 120 )) ncu --clock-control none --set detailed \
    --kernel-name regex:attn_bwd_wgmma --launch-count 1 \
    "$testbin/bench_cuda_attention" --hd 64 --heads 32 --kv-heads 4 --tokens 16384 --seq-lens 16384 \
    --reps 1 --impl wgmma > "$out/attn_bwd_ncu.txt" 2>&1
  rc=$?
  row "ncu attention backward" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) \
    "$(grep -E "Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy" "$out/attn_bwd_ncu.txt" | head -3 | tr -s ' ' | tr '\n' ';')"
fi

# ---- 8. longest T (optional) ---------------------------------------------
if [ $longest = 1 ]; then
  t=$SECONDS
  best=0 T=65536
  while [ "$(left)" -gt 60 ] && [ $T -le 1048576 ]; do
    timeout $(( $(left) < 300 ? $(left) : 300 )) "$rtbin" bench "$cfg" --steps 1 --warmup 0 --set parallel.device=cuda \
      --set train.seq_len=$T --set train.activation_checkpointing=true > "$out/longest_rt_$T.json" 2> "$out/longest_rt_$T.log" \
      || break
    best=$T
    T=$((T * 2))
  done
  row "longest T ringtrain" "$([ $best -gt 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) "T=$best trained (ckpt on; next failed or budget/1M reached)"
  if [ $have_torch = 1 ] && [ "$(left)" -gt 60 ]; then
    t=$SECONDS
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout $(( $(left) < 300 ? $(left) : 300 )) env -u LD_LIBRARY_PATH python3 \
      "$src/tests/bench/bench_torch_train.py" "$cfg" --seq-len 65536 --checkpointing --find-max-t \
      > "$out/longest_torch.json" 2> "$out/longest_torch.log"
    rc=$?
    row "longest T torch" "$([ $rc = 0 ] && echo ok || echo FAIL)" $((SECONDS - t)) "$(grep -o '"max_t": [0-9]*' "$out/longest_torch.json")"
  fi
fi

# ---- the table -------------------------------------------------------------
{
  echo
  echo "gpu_check: ${gpu_name:-no GPU}, $((SECONDS - t_start)) s, logs in $out"
  printf '%-30s %-8s %6s  %s\n' step status time detail
  cat "$summary"
} | tee "$out/table.txt"
grep -qE " (FAIL|timeout|missing) " "$summary" && exit 1
exit 0
