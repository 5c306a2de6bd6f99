#!/usr/bin/env bash
# Long-context evaluation through the CLI (SPEC §9):
#  - a tiny model trained here on synthetic passkey data retrieves the key at
#    its training length far above chance (accuracy >= 0.8; chance is 1e-5),
#    and training-time eval records the passkey grid in metrics.jsonl;
#  - the eval JSON has the SPEC §9 schema: ppl = exp(mean_nll), grid dims,
#    accuracies in [0, 1], loss by position consistent with the perplexity of
#    the same sequences; the three plots are valid PNGs;
#  - eval sharded over a ring (mpirun -np 2, --context-parallel 2) equals the
#    single-rank eval (perplexity, loss by position, passkey grid, recall);
#  - user errors exit 2 with the fix; without matplotlib the JSON is still
#    written and the message says how to get the plots.
# usage: cli_eval.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
launch="bash $src/launch/local.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

# The quickstart model and task, shortened: it retrieves the key by ~step 150.
cat > pk.yaml <<YAML
run: {name: pk, dir: $work/run, seed: 1234}
model: {vocab_size: 256, hidden_size: 128, intermediate_size: 352, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 512}
data:
  train: {synthetic: passkey, loss: answer}
  val: {synthetic: passkey, loss: answer, seed_offset: 1000}
train:
  seq_len: 256
  micro_batch_size: 4
  global_batch_size: 8
  max_steps: 180
  optimizer: {type: adamw, lr: 3.0e-3, betas: [0.9, 0.95], weight_decay: 0.1}
  schedule: {type: cosine, warmup_steps: 50, min_lr: 3.0e-4}
checkpoint: {every_steps: 0}
eval: {every_steps: 90, seq_lens: [256], max_sequences: 2,
       passkey: {seq_lens: [256], depths: [0, 1], trials: 2}}
log: {every_steps: 30}
YAML

$bin eval --help | grep -q -- "--passkey-depths" || fail "eval --help lacks the passkey options"
$bin generate --help | grep -qi "usage" || fail "generate --help"

$bin train pk.yaml 2> train.log || { tail -20 train.log; fail "train exited non-zero"; }
ckpt=run/checkpoints/step_00000180.h5
test -f $ckpt || fail "no final checkpoint"
/usr/bin/python3 - run/metrics.jsonl <<'PY' || fail "training-time eval records"
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if r.get("type") == "eval"]
assert [e["step"] for e in evals] == [90, 180], evals
for e in evals:
    pk = e["passkey"]
    assert pk["seq_lens"] == [256] and pk["depths"] == [0, 1], pk
    assert len(pk["accuracy"]) == 1 and len(pk["accuracy"][0]) == 2
    assert all(0 <= a <= 1 for a in pk["accuracy"][0])
    assert e["perplexity"][0]["seq_len"] == 256
PY

# ---- schema, values and plots ----------------------------------------------
$bin eval $ckpt --seq-lens 256,512 --max-sequences 4 --bucket 64 \
  --passkey-seq-lens 256,512 --passkey-depths 0,0.5,1 --passkey-trials 5 --json out/ev.json \
  > eval.out || { cat eval.out; fail "eval exited non-zero"; }
grep -q "passkey accuracy" eval.out && grep -q "loss by position" eval.out \
  || fail "eval printed no passkey or loss-by-position table"
/usr/bin/python3 - out/ev.json <<'PY' || fail "eval JSON check"
import json, math, sys
j = json.load(open(sys.argv[1]))
assert set(j) >= {"checkpoint", "step", "perplexity", "loss_by_position", "passkey"}, j.keys()
assert j["step"] == 180
for p in j["perplexity"]:
    assert p["sequences"] == 4 and abs(math.exp(p["mean_nll"]) - p["ppl"]) <= 1e-9 * p["ppl"]
lbp = j["loss_by_position"]
assert lbp["seq_len"] == 512 and lbp["bucket"] == 64 and len(lbp["mean_nll"]) == 8, lbp
pk = j["passkey"]
assert pk["seq_lens"] == [256, 512] and pk["depths"] == [0, 0.5, 1], pk
acc = pk["accuracy"]
assert len(acc) == 2 and all(len(r) == 3 for r in acc), acc
assert all(0 <= a <= 1 and abs(a * 5 - round(a * 5)) < 1e-9 for r in acc for a in r), acc
at_train_len = sum(acc[0]) / 3
print(f"passkey accuracy at the training length 256: {at_train_len:.2f} (chance 1e-5)")
assert at_train_len >= 0.8, acc
PY
for p in passkey loss_by_position ppl; do
  f=out/ev_$p.png
  test -s $f || fail "$f not written"
  [ "$(head -c 8 $f | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || fail "$f is not a PNG"
done

# loss by position on text: every bucket filled, and the token-weighted mean
# of the buckets is the perplexity's mean NLL over the same sequences
head -c 20000 "$src/README.md" > text.txt
for i in 1 2 3; do cat "$src/README.md"; done >> text.txt
evargs=(--data text.txt --seq-lens 128,256 --max-sequences 3 --bucket 32
        --passkey-seq-lens 256,264 --passkey-depths 0,0.5,1 --passkey-trials 3
        --recall-seq-lens 128,256 --recall-pairs 5 --recall-trials 4 --no-plots)
$bin eval $ckpt "${evargs[@]}" --json one.json > one.out || fail "eval on text"
/usr/bin/python3 - one.json <<'PY' || fail "loss by position vs perplexity"
import json, sys
j = json.load(open(sys.argv[1]))
lbp, ppl = j["loss_by_position"], j["perplexity"][1]
assert lbp["seq_len"] == 256 and len(lbp["mean_nll"]) == 8 and None not in lbp["mean_nll"]
assert sum(lbp["tokens"]) == ppl["tokens"] == 3 * 256
mean = sum(m * t for m, t in zip(lbp["mean_nll"], lbp["tokens"])) / sum(lbp["tokens"])
assert abs(mean - ppl["mean_nll"]) <= 1e-5 * ppl["mean_nll"], (mean, ppl["mean_nll"])
PY

# ---- through the ring: same numbers as one rank --------------------------------
for layout in zigzag contiguous; do
  OMP_NUM_THREADS=1 $launch -np 2 $bin eval $ckpt "${evargs[@]}" --context-parallel 2 \
    --set parallel.ring_layout=$layout --json ring_$layout.json > ring.out 2>&1 \
    || { tail -20 ring.out; fail "eval over a ring of 2 ($layout)"; }
  grep -q "context_parallel 2" ring.out || fail "the ring eval did not run with cp 2"
  /usr/bin/python3 - one.json ring_$layout.json <<'PY' || fail "ring eval ($layout) differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
rel = lambda x, y: abs(x - y) / max(abs(y), 1e-12)
for p, q in zip(a["perplexity"], b["perplexity"]):
    assert p["tokens"] == q["tokens"] and rel(q["mean_nll"], p["mean_nll"]) < 1e-5, (p, q)
la, lb = a["loss_by_position"], b["loss_by_position"]
assert la["tokens"] == lb["tokens"]
worst = max(rel(y, x) for x, y in zip(la["mean_nll"], lb["mean_nll"]))
assert worst < 1e-5, worst
assert a["passkey"] == b["passkey"], (a["passkey"], b["passkey"])
assert a["recall"] == b["recall"], (a["recall"], b["recall"])
print(f"ring eval: max relative difference in loss by position {worst:.1e}")
PY
done
# dp x cp: 4 ranks = 2 rings of 2
OMP_NUM_THREADS=1 $launch -np 4 $bin eval $ckpt "${evargs[@]}" --context-parallel 2 \
  --json dp2cp2.json > dp2cp2.out 2>&1 || { tail -20 dp2cp2.out; fail "eval dp 2 x cp 2"; }
/usr/bin/python3 - one.json dp2cp2.json <<'PY' || fail "dp2 x cp2 eval differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for p, q in zip(a["perplexity"], b["perplexity"]):
    assert abs(p["mean_nll"] - q["mean_nll"]) < 1e-5 * p["mean_nll"], (p, q)
assert a["passkey"] == b["passkey"]
assert a["recall"] == b["recall"]
PY

# ---- errors ------------------------------------------------------------------------
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
expect_usage "too short" $bin eval $ckpt --passkey-seq-lens 100 --no-plots --json e.json
expect_usage "outside\|not a depth" $bin eval $ckpt --passkey-seq-lens 256 --passkey-depths 0,1.5 \
  --json e.json
expect_usage "need --passkey-seq-lens" $bin eval $ckpt --set eval.passkey=null --passkey-trials 3 \
  --json e.json
expect_usage "world size" $bin eval $ckpt --context-parallel 2 --json e.json
expect_usage "not a multiple of 4" $launch -np 2 $bin eval $ckpt --seq-lens 250 \
  --context-parallel 2 --json e.json
expect_usage "longer than" $bin eval $ckpt --seq-lens 256 --bucket 1000 --json e.json
expect_usage "memory-reset applies to memory models" $bin eval $ckpt --memory-reset --json e.json

# ---- no matplotlib: JSON written, instructions printed ---------------------------------
RINGTRAIN_PLOT_SCRIPT=$work/nonexistent.py $bin eval $ckpt --seq-lens 256 --max-sequences 1 \
  --json noplot/ev.json > noplot.out 2>&1 || fail "eval without the plot script"
test -s noplot/ev.json || fail "JSON not written when plotting is impossible"
grep -q "apt-get install python3-matplotlib" noplot.out || fail "no hint how to get the plots"
echo "cli_eval: all checks passed"
