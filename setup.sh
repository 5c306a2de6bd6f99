#!/usr/bin/env bash
# Installs ringtrain's dependencies (Debian packages) when they are missing,
# then configures and builds into ./build. Safe to re-run.
#   ./setup.sh            # build (Release)
#   CI=true ./setup.sh    # same, warnings are errors
set -euo pipefail
cd "$(dirname "$0")"

packages=(
  cmake ninja-build g++ pkg-config
  libopenmpi-dev openmpi-bin         # MPI (multi-process runs)
  libhdf5-dev                        # checkpoints and .h5 token files
  libxxhash-dev                      # checkpoint integrity digests
  libyaml-cpp-dev                    # configs
  libopenblas-openmp-dev             # sgemm (OpenMP flavour: no nested thread pools)
  libgtest-dev                       # tests
  libcli11-dev nlohmann-json3-dev    # CLI, JSON output
  python3 python3-torch python3-h5py python3-numpy   # PyTorch reference tests
  python3-matplotlib                 # eval plots (launch/plot_eval.py)
  python3-yaml procps                # test scripts (YAML checks, pgrep)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# The CUDA backend builds automatically when nvcc is found (also in its
# default location off PATH); the CPU build never needs it.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DRINGTRAIN_WERROR="$werror" >/dev/null
cmake --build build
echo "setup: built ./build/ringtrain"
