#!/usr/bin/env bash
# Messages and defaults a new user meets (each case: the SPEC §1 exit code and
# a message that says what is wrong and what works):
#  - an odd seq_len without a ring trains; under a ring, eval names the
#    option the user gave (--seq-len);
#  - a model whose parameters + optimizer do not fit: "need X GiB, Y
#    available" before allocating; integers past the type's range name the
#    upper bound;
#  - a directory, an empty file, a checkpoint or a multi-document YAML given
#    as the config;
#  - rope_scaling {rope_type: default} is no scaling; seq_len above
#    max_position_embeddings warns;
#  - launch/local.sh -np 0 / abc; hints print a command that runs as printed.
# usage: cli_messages.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"

head -c 20000 "$src/README.md" > text.txt
cat > ok.yaml <<YAML
run: {name: m, dir: $work/run, seed: 1}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 128}
data: {train: $work/text.txt}
train: {seq_len: 64, micro_batch_size: 1, global_batch_size: 2, max_steps: 1,
        schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 0}
YAML

# ---- 15: odd lengths ---------------------------------------------------------------
expect 0 "step 1/1" -- $bin train ok.yaml --set train.seq_len=65 --set run.dir=$work/odd
expect 0 "ppl" -- $bin eval $work/odd/checkpoints/step_00000001.h5 --seq-len 33 --no-plots
if command -v mpirun > /dev/null; then
  expect 2 "--seq-len: length 66 is not a multiple of 4" -- bash $src/launch/local.sh -np 2 \
    $bin eval $work/odd/checkpoints/step_00000001.h5 --seq-len 66 --context-parallel 2
fi

# ---- 16: memory and integer ranges -------------------------------------------------
expect 2 "parameters \+ optimizer need [0-9.]+ GiB, [0-9.]+ GiB available" -- $bin train ok.yaml \
  --set model.hidden_size=65536 --set model.intermediate_size=262144 \
  --set model.num_hidden_layers=64 --set model.num_attention_heads=512
expect 2 "model.hidden_size: must be in \[1, 2147483647\], got 3000000000" -- $bin train ok.yaml \
  --set model.hidden_size=3000000000
expect 2 "train.max_steps: must be in \[0, 9223372036854775807\], got 99999999999999999999" -- \
  $bin train ok.yaml --set train.max_steps=99999999999999999999

# ---- 17: not a config ------------------------------------------------------------------
mkdir adir
: > empty.yaml
expect 2 "adir is a directory; expected a YAML config" -- $bin train adir
expect 2 "empty.yaml is empty; expected a YAML config" -- $bin train empty.yaml
expect 2 "step_00000001.h5 is an HDF5 file.*not a config.*eval CKPT.h5" -- \
  $bin train $work/odd/checkpoints/step_00000001.h5
cp $work/odd/checkpoints/step_00000001.h5 ckpt.yaml
expect 2 "ckpt.yaml is an HDF5 file" -- $bin bench ckpt.yaml
expect 2 "adir is a directory" -- $bin eval adir

# ---- 18: YAML and defaults ------------------------------------------------------------
{ cat ok.yaml; echo "---"; cat ok.yaml; } > two.yaml
expect 2 "two.yaml: holds 2 YAML documents" -- $bin train two.yaml
expect 0 "step 1/1" -- $bin train ok.yaml --set run.dir=$work/rd \
  --set 'model.rope_scaling={rope_type: default}'
grep -q "rope_scaling: null" $work/rd/config.yaml || { echo "FAIL: rope_type default not null" >&2; failures=$((failures + 1)); }
expect 0 "warning: .*train.seq_len\(256\) > model.max_position_embeddings\(128\)" -- \
  $bin train ok.yaml --set run.dir=$work/long --set train.seq_len=256

# ---- 19: launcher and hints ----------------------------------------------------------
expect 2 "-np needs a number of processes >= 1, got '0'" -- bash $src/launch/local.sh -np 0 $bin
expect 2 "-np needs a number of processes >= 1, got 'abc'" -- bash $src/launch/local.sh -np abc $bin
# The command extend prints runs as printed (from another directory too).
$bin extend $work/odd/checkpoints/step_00000001.h5 --to 130 --method ntk --out ext.yaml > ext.out \
  || { echo "FAIL: extend" >&2; failures=$((failures + 1)); }
hint=$(sed -n '/^run it:/{n;p}' ext.out)
case "$hint" in *" train ext.yaml") ;; *) echo "FAIL: hint '$hint'" >&2; failures=$((failures + 1)) ;; esac
expect 0 "step 1/1" -- bash -c "$hint --set train.max_steps=1 --set run.dir=$work/ext"
expect 3 "train first \(\S+ train ok.yaml\)" -- $bin eval ok.yaml
hint=$(grep -oE "train first \(\S+ train ok.yaml\)" out.txt | sed 's/train first (//; s/)$//')
expect 0 "step 1/1" -- bash -c "$hint"

if [ "$failures" -ne 0 ]; then echo "cli_messages: $failures case(s) failed" >&2; exit 1; fi
echo "cli_messages: all cases passed"
