#!/usr/bin/env bash
# Builds ringtrain with CUDA for another machine's CPU (-DRINGTRAIN_NATIVE=OFF)
# into build-gpu/ and packs it, with the GPU test binaries, for a bare GPU
# machine (../shared/device/pack.sh --mpi): build-gpu/device/rt.tar.xz and
# unpack.sh beside it. tools/, configs/, tests/ travel with the working tree;
# on the GPU machine, from the repository root:
#   bash tools/gpu_check.sh OUT_DIR --bundle build-gpu/device/rt.tar.xz
# (the device tool: carry build-gpu/device; README "GPU" says the command).
#
#   tools/gpu_pack.sh [--no-build]
# RT_PACK_BUILD (default build-gpu), RT_PACK_CUDA (default ON; OFF packs a CPU
# build, to check the packing and tools/gpu_check.sh on a machine without
# nvcc), RT_XZ_LEVEL (pack.sh's; default 3 here: faster on 2 cores).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)
cd "$src"
build=${RT_PACK_BUILD:-build-gpu}
cuda=${RT_PACK_CUDA:-ON}
pack=$src/../shared/device/pack.sh
[ -f "$pack" ] || pack=/work/shared/device/pack.sh
[ -f "$pack" ] || { echo "gpu_pack.sh: ../shared/device/pack.sh not found" >&2; exit 2; }

if [ "${1:-}" != "--no-build" ]; then
  [ -f /work/wt/env.sh ] && . /work/wt/env.sh  # the shared compiler cache, where it exists
  launcher=()
  command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  mkdir -p "$build"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGTRAIN_CUDA="$cuda" \
        -DRINGTRAIN_NATIVE=OFF -DRINGTRAIN_WERROR=ON "${launcher[@]}" > "$build/cmake.log" 2>&1 \
    || { tail -20 "$build/cmake.log"; exit 1; }
  if [ "$cuda" = ON ] && ! grep -q "CUDA backend ON" "$build/cmake.log"; then
    echo "gpu_pack.sh: cmake found no nvcc (see $build/cmake.log): the bundle would have no CUDA" >&2
    exit 2
  fi
  targets=(ringtrain test_model_backend_ops bench_cuda_attention)
  # issue 14's GPU checks (built when cmake found NCCL; tests/bench/run_nccl_gpu.sh)
  for t in nccl_comm_gpu bench_ring_overlap; do
    ninja -C "$build" -t targets all 2> /dev/null | grep -q "^$t:" && targets+=("$t")
  done
  for t in tests/model/test_model_cuda_*.cpp tests/*/*/test_*_cuda_*.cpp; do
    case "$t" in *_emu.cpp|*_emu_*.cpp) continue ;; esac  # the CUDA emulator's tests: CPU only
    [ -f "$t" ] && targets+=("$(basename "$t" .cpp)")
  done
  cmake --build "$build" -j2 --target "${targets[@]}"
fi

bins=("$build/ringtrain")
for b in "$build"/tests/test_*cuda* "$build/tests/test_model_backend_ops" "$build/tests/bench_cuda_attention" \
         "$build/tests/nccl_comm_gpu" "$build/tests/bench_ring_overlap"; do
  case "$b" in *_emu|*_emu_*) continue ;; esac
  [ -x "$b" ] && bins+=("$b")
done
mkdir -p "$build/device"
RT_XZ_LEVEL=${RT_XZ_LEVEL:-3} bash "$pack" --mpi "$build/device/rt.tar.xz" "${bins[@]}"
cp "$(dirname "$pack")/unpack.sh" "$build/device/unpack.sh"
echo "packed: ${bins[*]##*/}"
ls -l "$build/device"
