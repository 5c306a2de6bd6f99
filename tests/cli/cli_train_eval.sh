#!/usr/bin/env bash
# End-to-end through the CLI: train a tiny model on synthetic passkey data,
# check the run dir (resolved config, metrics.jsonl fields, checkpoints),
# evaluate it, bench it, prepare data in both formats and train on a file.
# usage: cli_train_eval.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

cat > tiny.yaml <<YAML
run: {name: tiny, dir: $work/run, seed: 7}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}
data:
  train: {synthetic: passkey, loss: all}
  val: {synthetic: passkey, loss: answer, seed_offset: 99}
train:
  seq_len: 256
  micro_batch_size: 2
  global_batch_size: 4
  max_steps: 12
  optimizer: {type: adamw, lr: 3.0e-3}
  schedule: {type: cosine, warmup_steps: 2, min_lr: 3.0e-4}
checkpoint: {every_steps: 5, keep_last: 2}
eval: {every_steps: 6, seq_lens: [256], max_sequences: 4}
log: {every_steps: 3}
YAML

# --help works everywhere
for c in "" train eval bench "data prepare" data; do
  $bin $c --help > help.txt || fail "ringtrain $c --help exited non-zero"
  grep -qi "usage" help.txt || fail "ringtrain $c --help printed no usage"
done

$bin train tiny.yaml 2> train.log || { cat train.log; fail "train exited non-zero"; }
grep -q "step 12/12" train.log || fail "no progress line for the last step"
grep -q "tok/s" train.log && grep -q "ETA" train.log || fail "progress line lacks tok/s or ETA"
test -f run/config.yaml || fail "resolved config.yaml missing"
grep -q "rms_norm_eps" run/config.yaml || fail "config.yaml is not fully resolved (defaults missing)"
$bin train run/config.yaml --set run.dir=$work/run2 --set train.max_steps=1 2>/dev/null \
  || fail "the resolved config.yaml does not load back"

/usr/bin/python3 - "$work/run/metrics.jsonl" <<'PY' || fail "metrics.jsonl check"
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in recs if "loss" in r]
evals = [r for r in recs if r.get("type") == "eval"]
need = {"step", "loss", "grad_norm", "lr", "tokens_seen", "tokens_per_s", "flops_per_s",
        "step_ms", "peak_mem_bytes"}
for r in steps:
    missing = need - set(r)
    assert not missing, f"metrics record lacks {missing}"
    assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0
assert [r["step"] for r in steps] == [1, 3, 6, 9, 12], [r["step"] for r in steps]
assert steps[-1]["tokens_seen"] == 12 * 4 * 256, steps[-1]["tokens_seen"]
assert len(evals) == 2, evals          # step 6 and the final one
for e in evals:
    p = e["perplexity"][0]
    assert p["seq_len"] == 256 and abs(math.exp(p["mean_nll"]) - p["ppl"]) < 1e-9 * p["ppl"]
PY
ls run/checkpoints/step_00000010.h5 run/checkpoints/step_00000012.h5 >/dev/null \
  || fail "expected the two newest checkpoints (keep_last 2)"
test ! -e run/checkpoints/step_00000005.h5 || fail "keep_last did not prune step 5"

# eval from the config (newest checkpoint) and from the checkpoint file
$bin eval tiny.yaml --seq-lens 250,256 --max-sequences 3 --json ev.json > eval.out \
  || fail "eval exited non-zero"
grep -q "ppl" eval.out || fail "eval printed no table"
/usr/bin/python3 - ev.json <<'PY' || fail "eval JSON check"
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j["step"] == 12 and j["checkpoint"].endswith("step_00000012.h5"), j
assert [p["seq_len"] for p in j["perplexity"]] == [250, 256]
for p in j["perplexity"]:
    assert p["sequences"] == 3 and abs(math.exp(p["mean_nll"]) - p["ppl"]) < 1e-9 * p["ppl"]
PY
$bin eval run/checkpoints/step_00000012.h5 --seq-len 256 --max-sequences 3 --json ev2.json \
  > /dev/null || fail "eval of a checkpoint file"
cmp <(/usr/bin/python3 -c "import json;print(json.load(open('ev.json'))['perplexity'][1]['mean_nll'])") \
    <(/usr/bin/python3 -c "import json;print(json.load(open('ev2.json'))['perplexity'][0]['mean_nll'])") \
  || fail "config eval and checkpoint eval disagree"

# bench prints one JSON object with the SPEC §1 keys
$bin bench tiny.yaml --steps 2 --warmup 1 > bench.json 2>/dev/null || fail "bench"
/usr/bin/python3 - bench.json <<'PY' || fail "bench JSON check"
import json, sys
j = json.loads(open(sys.argv[1]).read())
for k in ["tokens_per_s", "step_ms", "flops_per_s", "peak_mem_bytes", "seq_len", "world_size"]:
    assert k in j, k
assert j["tokens_per_s"] > 0 and j["seq_len"] == 256 and j["world_size"] == 1
PY

# data prepare into both formats, then train on each and on the raw text
head -c 20000 "$src/README.md" > text.txt
for i in 1 2 3 4 5 6; do cat "$src/README.md"; done >> text.txt
$bin data prepare text.txt --out text.h5 > /dev/null || fail "data prepare .h5"
$bin data prepare text.txt --out text.bin > /dev/null || fail "data prepare .bin"
for f in text.txt text.h5 text.bin; do
  $bin train tiny.yaml --set data.train=$work/$f --set data.val=null --set run.dir=$work/run_$f \
    --set train.max_steps=2 --set eval.every_steps=0 2>/dev/null || fail "train on $f"
done
first_loss() { /usr/bin/python3 -c "import json,sys;print(json.loads(open(sys.argv[1]).readline())['loss'])" "$1"; }
for f in text.h5 text.bin; do
  [ "$(first_loss run_text.txt/metrics.jsonl)" = "$(first_loss run_$f/metrics.jsonl)" ] \
    || fail "the same text as .txt and $f gives a different first-step loss"
done
echo "cli_train_eval: all checks passed"
