#!/usr/bin/env bash
# `ringtrain import` / `export` against transformers and safetensors
# (tests/reference/hf_interop.py says what is checked). They live in .venv, which
# ./setup.sh creates.
# usage: cli_hf_interop.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
py=$src/.venv/bin/python
if ! "$py" -c "import transformers, safetensors" >/dev/null 2>&1; then
  echo "FAIL: $py with transformers and safetensors is missing: run ./setup.sh" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
TRANSFORMERS_VERBOSITY=error "$py" "$src/tests/reference/hf_interop.py" "$bin" "$work"
