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
  libfaiss-dev                       # kNN memory: FAISS indexes (model.memory.index flat|ivf|hnsw)
  libgtest-dev                       # tests
  libcli11-dev nlohmann-json3-dev    # CLI, JSON output
  libsentencepiece-dev libssl-dev    # SentencePiece tokenizers (tokenizer.model), SHA-256
  sentencepiece python3-sentencepiece  # tokenizer tests: spm_train, the reference encoder
  python3 python3-torch python3-h5py python3-numpy   # PyTorch reference tests
  python3-venv                       # .venv for transformers (Hugging Face interop tests)
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

# transformers and safetensors (PyPI) for the Hugging Face interop test
# (tests/reference/hf_interop.py), in .venv on top of Debian's python3 and torch 1.13:
# transformers 4.44 runs on torch 1.13 (4.51 does not). About 15 s.
if ! .venv/bin/python -c "import transformers, safetensors" >/dev/null 2>&1; then
  echo "setup: installing transformers and safetensors into .venv"
  if ! { /usr/bin/python3 -m venv --system-site-packages .venv &&
         .venv/bin/pip install -q --disable-pip-version-check "transformers==4.44.2" \
           "safetensors==0.8.0"; }; then
    echo "setup: warning: could not install transformers into .venv (no PyPI access?); the" \
         "test cli_hf_interop will fail until it is installed" >&2
  fi
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
