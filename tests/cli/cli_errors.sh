#!/usr/bin/env bash
# Bad input through the CLI: each case must exit with the SPEC §1 code and
# print a message that names the problem.
# usage: cli_errors.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"

cat > ok.yaml <<YAML
run: {name: e, dir: $work/run, seed: 1}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2}
data: {train: {synthetic: passkey}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 2, max_steps: 3,
        schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 0}
YAML
sed 's/hidden_size: 32/hiden_size: 32/' ok.yaml > typo.yaml
printf 'run: {name: x\nmodel: [1, 2\n' > syntax.yaml
printf 'not a token file' > bad.bin
printf 'garbage' > bad.h5

expect 2 "usage|Usage|required" -- $bin
expect 2 "typo.yaml:2.*hiden_size.*did you mean.*hidden_size" -- $bin train typo.yaml
expect 2 "syntax.yaml" -- $bin train syntax.yaml
expect 2 "missing.yaml" -- $bin train missing.yaml
expect 2 "train.optimizer.lr" -- $bin train ok.yaml --set train.optimizer.lr=-1
expect 2 "model.positon.*did you mean.*position" -- $bin train ok.yaml --set model.positon=alibi
expect 2 "global_batch_size.*micro_batch_size" -- $bin train ok.yaml --set train.micro_batch_size=4 --set train.global_batch_size=6
expect 2 "data_parallel\(2\) \* context_parallel\(1\) != world size\(1\)" -- $bin train ok.yaml --set parallel.data_parallel=2
expect 2 "data.train.pairs" -- $bin train ok.yaml --set 'data.train={synthetic: recall, pairs: 40}'
expect 2 "synthetic recall: seq_len 64 is too short.*161" -- $bin train ok.yaml --set 'data.train={synthetic: recall, pairs: 26}' --set train.seq_len=64
expect 2 "bad.bin" -- $bin train ok.yaml --set data.train=$work/bad.bin
expect 2 "bad.h5" -- $bin train ok.yaml --set data.train=$work/bad.h5
expect 3 "nope.txt" -- $bin train ok.yaml --set data.train=$work/nope.txt
expect 3 "missing_ckpt.h5" -- $bin eval missing_ckpt.h5
expect 2 "--seq-lens" -- $bin eval ok.yaml --seq-lens 12,abc
expect 2 "steps" -- $bin bench ok.yaml --steps 0
expect 2 "cuda" -- $bin train ok.yaml --set parallel.device=cuda
expect 3 "cannot create directory|cannot open|cannot write" -- $bin train ok.yaml --set run.dir=/proc/ringtrain_run
expect 4 "non-finite|diverged" -- $bin train ok.yaml --set train.optimizer.lr=1.0e30 --set train.grad_clip=0
expect 3 "tokenizer sentencepiece: no such file" -- $bin data prepare ok.yaml --out x.h5 --tokenizer sentencepiece
expect 3 "tokenizer nope.model: no such file" -- $bin train ok.yaml --set data.tokenizer=nope.model
expect 2 "data.tokenizer: must not be empty" -- $bin train ok.yaml --set "data.tokenizer=''"
expect 2 "\.json|extension|\.h5" -- $bin data prepare ok.yaml --out x.json

# train.precision (SPEC §12): a bad value is a usage error; bf16 really runs
# (and says so at start-up; bf16 inside a ring: cli_parallel.sh)
expect 2 "train.precision.*fp16" -- $bin train ok.yaml --set train.precision=fp16
expect 0 "precision: bf16 weights, bf16 activations, fp32 gradients, fp32 master weights" -- \
  $bin train ok.yaml --set train.precision=bf16 --set run.dir=$work/bf16

if [ "$failures" -ne 0 ]; then echo "cli_errors: $failures case(s) failed" >&2; exit 1; fi
echo "cli_errors: all cases passed"
