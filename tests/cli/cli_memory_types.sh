#!/usr/bin/env bash
# knn and compressive memory (docs/memory.md) end to end through the CLI:
# train, checkpoint and resume (the resumed run reproduces the uninterrupted
# one's losses: the stores are not in the checkpoint, the learned gate and
# compression weights are), evaluate with and without --memory-reset
# (perplexity, loss by position, passkey, recall), generate, and bad settings
# (exit 2 naming the key).
# usage: cli_memory_types.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
py=/usr/bin/python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"

knn='{type: knn, segment_length: 32, layers: [1], memory_size: 96, top_k: 8}'
comp='{type: compressive, segment_length: 32, layers: [0, 1], memory_segments: 1, rate: 2, levels: 2, compressed_size: 32, compression: conv}'
for kind in knn compressive; do
  mem=$knn
  [ $kind = compressive ] && mem=$comp
  cat > $kind.yaml <<YAML
run: {name: $kind, dir: $work/$kind, seed: 3}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 512,
        memory: $mem}
data:
  train: {synthetic: passkey, loss: all}
  val: {synthetic: passkey, loss: answer, seed_offset: 99}
train: {seq_len: 256, micro_batch_size: 2, global_batch_size: 2, max_steps: 6,
        schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 3, keep_last: 2}
eval: {every_steps: 0, seq_lens: [256], max_sequences: 2}
log: {every_steps: 1}
YAML
  expect 0 "memory|step 6/6" -- $bin train $kind.yaml
  # resume: 3 steps, then the same command to 6 reproduces the losses
  # (constant lr: the schedule does not depend on max_steps)
  expect 0 "step 3/3" -- $bin train $kind.yaml --set run.dir=$work/$kind-r --set train.max_steps=3
  expect 0 "resuming from .*step_00000003\.h5" -- $bin train $kind.yaml --set run.dir=$work/$kind-r
  same_losses $kind $kind-r || fail "$kind: the resumed run changed the losses"
  [ "$(last_step $kind-r/metrics.jsonl)" = 6 ] || fail "$kind: the resumed run did not reach the last step"

  ckpt=$kind/checkpoints/step_00000006.h5
  expect 0 "ppl" -- $bin eval $ckpt --seq-lens 256,512 --max-sequences 2 \
    --passkey-seq-lens 256 --passkey-depths 0 --passkey-trials 2 \
    --recall-seq-lens 128 --recall-pairs 2 --recall-trials 2 --json carried.json
  expect 0 "store stayed empty" -- $bin eval $ckpt --seq-lens 256,512 --max-sequences 2 \
    --passkey-seq-lens 256 --passkey-depths 0 --passkey-trials 2 \
    --recall-seq-lens 128 --recall-pairs 2 --recall-trials 2 --json reset.json --memory-reset
  $py - carried.json reset.json <<'PY' || fail "$kind: eval JSON"
import json, sys
c, r = (json.load(open(p)) for p in sys.argv[1:])
assert r.get("memory_reset") is True and not c.get("memory_reset")
pc = {p["seq_len"]: p["mean_nll"] for p in c["perplexity"]}
pr = {p["seq_len"]: p["mean_nll"] for p in r["perplexity"]}
# 256 and 512 bytes are 8 and 16 segments: the store changes the later ones
assert pc[512] != pr[512], (pc, pr)
assert c["passkey"] and c["recall"], c.keys()
PY
  expect 0 "$kind memory, [0-9]+ segments stored" -- $bin generate $ckpt --prompt "The grass is green. " --max-new 70
  # a key of another memory type, and settings the store cannot hold
  expect 2 "num_tokens" -- $bin train $kind.yaml --set model.memory.num_tokens=4
done

expect 2 "top_k" -- $bin train knn.yaml --set model.memory.top_k=200
expect 2 "layers" -- $bin train knn.yaml --set 'model.memory.layers=[5]'
expect 2 "rate" -- $bin train compressive.yaml --set model.memory.rate=1
expect 2 "context_parallel" -- $bin plan knn.yaml --world 2 --set parallel.context_parallel=2

[ $failures = 0 ] || { echo "$failures failure(s)" >&2; exit 1; }
echo "cli_memory_types: all checks passed"
