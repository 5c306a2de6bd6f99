#!/usr/bin/env bash
# The associative-recall task through the CLI: a tiny memory model trains on
# it (loss on every byte), reports validation loss on held-out recall samples
# (loss on the answer digits), and the resolved config keeps the task; eval
# reports recall accuracy, overall and by the asked pair, consistently; and
# generate runs the memory model over a prompt of several segments.
# usage: cli_recall.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

cat > recall.yaml <<YAML
run: {name: recall, dir: $work/run, seed: 3}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, max_position_embeddings: 64,
        memory: {type: rmt, num_tokens: 4, segment_length: 32, bptt_segments: -1}}
data:
  train: {synthetic: recall, pairs: 3, loss: all}
  val: {synthetic: recall, pairs: 3, loss: answer}
train:
  seq_len: 64
  micro_batch_size: 4
  global_batch_size: 4
  max_steps: 30
  optimizer: {type: adamw, lr: 1.0e-2}
  schedule: {type: constant, warmup_steps: 0}
checkpoint: {every_steps: 0}
eval: {every_steps: 15, seq_lens: [64], max_sequences: 8}
log: {every_steps: 1}
YAML

$bin train recall.yaml > train.log 2>&1 || { cat train.log; fail "train exited non-zero"; }
grep -q "synthetic recall (100000 sequences, 3 pairs, loss all)" train.log ||
  { cat train.log; fail "the data line does not describe the recall task"; }
grep -q "pairs: 3" run/config.yaml || fail "resolved config lost data.train.pairs"

/usr/bin/python3 - "$work/run/metrics.jsonl" <<'PY' || fail "metrics.jsonl check"
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
losses = [r["loss"] for r in recs if "loss" in r]
evals = [r for r in recs if r.get("type") == "eval"]
# '.' filler and the "=", ";" of each pair are predictable: the loss on all
# bytes falls far below a uniform byte's ln 256 = 5.55
assert len(losses) == 30 and losses[0] > 4.5 and losses[-1] < 2.5, losses
assert len(evals) == 2, evals
for e in evals:
    p = e["perplexity"][0]
    # the answer digits only: 3 of them per held-out sequence
    assert p["seq_len"] == 64 and p["tokens"] == 3 * 8 and math.isfinite(p["mean_nll"]), p
PY
# recall accuracy: pairs default to the trained task's (3); the by-pair
# accuracies, weighted by how often each pair was asked, give the overall one
$bin eval run/config.yaml --recall-seq-lens 64,128 --recall-trials 12 --no-plots \
  --json ev.json > ev.out 2>&1 || { cat ev.out; fail "eval with --recall-seq-lens"; }
grep -q "associative recall accuracy (12 trials per length, 3 pairs" ev.out ||
  { cat ev.out; fail "eval printed no recall table"; }
/usr/bin/python3 - ev.json <<'PY' || fail "recall JSON"
import json, sys
r = json.load(open(sys.argv[1]))["recall"]
assert r["seq_lens"] == [64, 128] and r["pairs"] == 3 and r["trials"] == 12, r
for acc, by_pair, asked in zip(r["accuracy"], r["accuracy_by_pair"], r["asked"]):
    assert len(by_pair) == len(asked) == 3 and sum(asked) == 12, r
    assert all((a is None) == (n == 0) for a, n in zip(by_pair, asked)), r
    weighted = sum(a * n for a, n in zip(by_pair, asked) if n) / 12
    assert abs(weighted - acc) < 1e-12 and 0 <= acc <= 1, r
PY
# the same samples every time (seeded), memory carried or not
$bin eval run/config.yaml --recall-seq-lens 64,128 --recall-trials 12 --no-plots \
  --json ev2.json > /dev/null 2>&1 || fail "second eval"
/usr/bin/python3 -c "import json,sys; a,b=(json.load(open(p))['recall'] for p in sys.argv[1:]); \
assert a == b, (a, b)" ev.json ev2.json || fail "recall eval is not deterministic"
$bin eval run/config.yaml --recall-seq-lens 64 --recall-trials 4 --memory-reset --no-plots \
  --json reset.json > /dev/null 2>&1 || fail "recall eval with --memory-reset"

# generate reads a prompt of several segments through the memory (69 + 39
# tokens appended: segments 0-2 of 32 closed, the 4th open)
ckpt=$(ls run/checkpoints/step_*.h5 | tail -1)
prompt="..a=123;.......b=456;.........c=789;..............................?b="
$bin generate "$ckpt" --prompt "$prompt" --max-new 40 > gen.out 2> gen.log ||
  { cat gen.log; fail "generate on a memory model"; }
[ "$(head -c ${#prompt} gen.out)" = "$prompt" ] || fail "generate did not echo the prompt"
[ "$(wc -c < gen.out)" -eq $(( ${#prompt} + 40 + 1 )) ] || fail "generate wrote $(wc -c < gen.out) bytes"
grep -q "recurrent memory, 3 segments carried" gen.log || { cat gen.log; fail "generate log"; }

expect_usage() {  # expect_usage PATTERN CMD...
  local pattern=$1
  shift
  set +e
  "$@" > err.out 2>&1
  local rc=$?
  set -e
  [ $rc -eq 2 ] || { cat err.out; fail "expected exit 2 from: $*"; }
  grep -q -- "$pattern" err.out || { cat err.out; fail "message lacks '$pattern': $*"; }
}
expect_usage "need --recall-seq-lens" $bin eval run/config.yaml --recall-trials 3 --json e.json
expect_usage "too short for 3 pairs" $bin eval run/config.yaml --recall-seq-lens 20 --json e.json
expect_usage "pairs must be in \[1, 26\]" $bin eval run/config.yaml --recall-seq-lens 64 \
  --recall-pairs 30 --json e.json
expect_usage "segment_length" $bin eval run/config.yaml --recall-seq-lens 48 --json e.json
echo "cli_recall: ok"
