#!/usr/bin/env bash
# `ringtrain ablate` (SPEC §10) end to end, with tiny models (hidden 32, 2
# layers, seq 64):
#  - a sweep with a grid of two variants, an eval-only variant (from: +
#    eval_set:) and a follow-up (init_from:) runs; SIGTERM while the second
#    variant trains stops it cleanly (exit 1, it saved a checkpoint), and the
#    same command again finishes the sweep without retraining the first
#    (checkpoint mtime and log unchanged) while the second resumes;
#  - summary.csv has the documented columns and one row per variant, with
#    numbers that match the runs' own eval JSON; the plots are PNGs;
#  - a third run skips everything; a changed variant starts over (said in
#    its log) and nothing else reruns;
#  - a failing variant is reported (exit code, last log lines) and the others
#    complete; its follow-up is not run; ablate exits 1;
#  - typos anywhere (sweep keys, a variant's dotted key or value, from:, eval
#    keys, --only) are exit 2 naming the file and line, before anything runs.
# usage: cli_ablate.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
py=/usr/bin/python3

# some bytes of text to train on
for i in $(seq 20); do cat "$src/README.md"; done > text.txt

cat > base.yaml <<'YAML'
run: {name: tiny, seed: 3}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 2, num_key_value_heads: 2, max_position_embeddings: 256}
data: {train: text.txt}
train:
  seq_len: 64
  micro_batch_size: 2
  global_batch_size: 2
  max_steps: 400
  optimizer: {lr: 3.0e-3}
  schedule: {warmup_steps: 2, min_lr: 1.0e-4}
checkpoint: {every_steps: 100, keep_last: 1}
log: {every_steps: 1}
YAML

cat > sweep.yaml <<'YAML'
# two grid variants, an eval-only and a follow-up
name: t
base: base.yaml
grid:
  model.position: [rope, alibi]
variants:
  - {name: rope-yarn, from: position-rope,
     eval_set: {model.rope_scaling: {rope_type: yarn, factor: 4, original_max_position_embeddings: 64}}}
  - {name: rope-ft, init_from: position-rope, set: {train.seq_len: 128, train.max_steps: 10}}
eval: {seq_lens: [64, 128], max_sequences: 2,
       passkey: {seq_lens: [256], depths: [0, 1], trials: 2},
       recall: {seq_lens: [64], pairs: 2, trials: 4}}
YAML

# --- dry run: the plan, nothing written
"$bin" ablate sweep.yaml --dry-run > dry.txt
grep -q "4 runs, every resolved config valid" dry.txt || fail "dry run: $(cat dry.txt)"
grep -q "rope-ft (follow-up" dry.txt || fail "dry run lists the follow-up"
[ ! -e runs ] || fail "dry run wrote runs/"

# --- run 1: SIGTERM while the second variant trains
"$bin" ablate sweep.yaml > run1.out 2> run1.err &
pid=$!
log2=runs/t/position-alibi/run.log
for _ in $(seq 600); do
  grep -q "^step 3/" "$log2" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
grep -q "^step 3/" "$log2" || fail "the second variant never started training: $(cat run1.err)"
kill -TERM $pid
rc=0
wait $pid || rc=$?
[ $rc -eq 1 ] || fail "interrupted sweep: exit $rc, expected 1: $(cat run1.err)"
grep -q "stopped by SIGTERM" run1.err || fail "no stop message: $(cat run1.err)"
grep -q "received SIGTERM: stopping after step" "$log2" || fail "train did not stop cleanly"
ls runs/t/position-alibi/checkpoints/step_*.h5 > /dev/null || fail "no checkpoint saved on SIGTERM"
ckpt1=runs/t/position-rope/checkpoints/step_00000400.h5
[ -f "$ckpt1" ] || fail "first variant incomplete"
mtime1=$(date -r "$ckpt1" +%s.%N)
grep -q "interrupted" runs/t/position-alibi/ablate.json || fail "state not interrupted"
# a partial report already exists
grep -q "position-rope,train,complete" runs/t/summary.csv || fail "partial summary: $(cat runs/t/summary.csv)"
[ ! -e runs/t/rope-ft ] || fail "the follow-up ran after the interruption"

# --- run 2: finishes without retraining the first; the second resumes
sleep 1
"$bin" ablate sweep.yaml > run2.out 2> run2.err || fail "rerun: exit $?: $(cat run2.err)"
[ "$(date -r "$ckpt1" +%s.%N)" = "$mtime1" ] || fail "the first variant's checkpoint was rewritten"
[ "$(grep -c "^=== ablate .*: train" runs/t/position-rope/run.log)" -eq 1 ] ||
  fail "the first variant trained twice"
grep -q "position-rope: complete, skipped" run2.err || fail "first not skipped: $(cat run2.err)"
grep -q "=== ablate .*: train (resuming from runs/t/position-alibi/checkpoints/step_" "$log2" ||
  fail "the second variant did not resume: $(grep === "$log2")"
grep -q "resuming from .*step_" "$log2" || fail "train did not resume"
grep -q "ETA" run2.err || fail "no ETA in the progress lines"
grep -q "\[ablate 4/4\] rope-ft: complete" run2.err || fail "follow-up not run: $(cat run2.err)"
grep -q "  init_from: runs/t/position-rope/checkpoints/step_00000400.h5" \
  runs/t/rope-ft/variant.yaml || fail "follow-up not initialised from the first variant"

# --- the report
csv=runs/t/summary.csv
head -1 $csv > header.txt
expected="variant,kind,status,seeds,overrides,params,tokens_per_s,step_ms,peak_mem_mb,flops,train_wall_s,eval_wall_s,final_loss,ppl@64,ppl@128,passkey,passkey_d0,passkey_d1,passkey@256,recall,recall@64"
[ "$(cat header.txt)" = "$expected" ] || fail "CSV header: $(cat header.txt)"
[ "$(wc -l < $csv)" -eq 5 ] || fail "CSV rows: $(cat $csv)"
$py - "$csv" <<'PY'
import csv, json, math, sys
rows = {r["variant"]: r for r in csv.DictReader(open(sys.argv[1]))}
assert set(rows) == {"position-rope", "position-alibi", "rope-yarn", "rope-ft"}, rows.keys()
for name, r in rows.items():
    assert r["status"] == "complete", (name, r["status"])
    e = json.load(open(f"runs/t/{name}/eval.json"))
    for p in e["perplexity"]:
        got = float(r[f"ppl@{p['seq_len']}"])
        assert abs(got - p["ppl"]) <= 1e-3 * p["ppl"], (name, got, p)
    acc = e["passkey"]["accuracy"]
    assert abs(float(r["passkey_d1"]) - acc[0][1]) < 0.006, (name, r["passkey_d1"], acc)
    assert abs(float(r["recall"]) - e["recall"]["accuracy"][0]) < 0.006
    assert int(r["params"]) > 30000
kinds = {n: r["kind"] for n, r in rows.items()}
assert kinds == {"position-rope": "train", "position-alibi": "train", "rope-yarn": "eval-only",
                 "rope-ft": "follow-up"}, kinds
assert rows["rope-yarn"]["tokens_per_s"] == "" and float(rows["rope-ft"]["tokens_per_s"]) > 0
# the yarn evaluation really changed the positions: other numbers than the plain model's
nll = lambda n: [p["mean_nll"] for p in json.load(open(f"runs/t/{n}/eval.json"))["perplexity"]]
assert nll("rope-yarn") != nll("position-rope"), (nll("rope-yarn"), nll("position-rope"))
# FLOPs = tokens seen x model FLOPs per token: 400 steps x 2 x 64 tokens
m = [json.loads(l) for l in open("runs/t/position-rope/metrics.jsonl") if '"loss"' in l][-1]
fl = float(rows["position-rope"]["flops"])
assert m["tokens_seen"] == 400 * 128 and abs(fl - m["tokens_seen"] * m["flops_per_s"] / m["tokens_per_s"]) < 0.01 * fl
assert abs(float(rows["position-rope"]["final_loss"]) - m["loss"]) < 1e-3
PY
grep -q "| position-alibi | train | complete |" runs/t/summary.md || fail "summary.md: $(cat runs/t/summary.md)"
if $py -c 'import matplotlib' 2>/dev/null; then
  for f in ppl_vs_length passkey loss_curves cost_vs_quality; do
    [ "$(head -c 8 runs/t/$f.png | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] ||
      fail "runs/t/$f.png is not a PNG"
  done
fi

# --- run 3: everything complete, nothing runs
"$bin" ablate sweep.yaml 2> run3.err || fail "third run: $(cat run3.err)"
[ "$(grep -c "complete, skipped" run3.err)" -eq 4 ] || fail "third run reran: $(cat run3.err)"

# --- a changed variant starts over, the rest is kept
sed -i 's/train.max_steps: 10}/train.max_steps: 12}/' sweep.yaml
"$bin" ablate sweep.yaml 2> run4.err || fail "changed run: $(cat run4.err)"
grep -q "resolved config changed (hash .* -> .*): removed the old checkpoints" runs/t/rope-ft/run.log ||
  fail "no restart note in the follow-up's log"
[ "$(grep -c "complete, skipped" run4.err)" -eq 3 ] || fail "changed run: $(cat run4.err)"
ls runs/t/rope-ft/checkpoints/step_00000012.h5 > /dev/null || fail "follow-up not retrained"
[ "$(date -r "$ckpt1" +%s.%N)" = "$mtime1" ] || fail "the first variant was retrained"
"$bin" ablate sweep.yaml --dry-run | grep -q "rope-ft (follow-up, config .*): skip (complete)" ||
  fail "dry run after completion"

# --- a failing variant: reported, the others complete, its follow-up blocked
head -c 1000 /dev/urandom > broken.h5
cat > failing.yaml <<'YAML'
name: f
base: base.yaml
set: {train.max_steps: 5, log.every_steps: 5}
variants:
  - {name: good-a}
  - {name: broken, set: {data.train: broken.h5}}
  - {name: broken-ft, init_from: broken, set: {train.max_steps: 2}}
  - {name: good-b, set: {model.position: alibi}}
eval: {seq_lens: [64], max_sequences: 1}
YAML
rc=0
"$bin" ablate failing.yaml 2> fail.err || rc=$?
[ $rc -eq 1 ] || fail "failing sweep: exit $rc, expected 1: $(cat fail.err)"
grep -q "broken: FAILED: train exited with code 2" fail.err || fail "failure not reported: $(cat fail.err)"
grep -q "broken-ft: not run: broken did not complete" fail.err || fail "follow-up of a failure ran"
grep -q "^good-a,train,complete" runs/f/summary.csv || fail "good-a: $(cat runs/f/summary.csv)"
grep -q "^good-b,train,complete" runs/f/summary.csv || fail "good-b: $(cat runs/f/summary.csv)"
grep -q "^broken,train,failed" runs/f/summary.csv || fail "broken: $(cat runs/f/summary.csv)"
grep -q "^broken-ft,follow-up,blocked" runs/f/summary.csv || fail "broken-ft: $(cat runs/f/summary.csv)"
grep -q "\`broken\`: train exited with code 2" runs/f/summary.md || fail "summary.md failure"
grep -q "broken.h5" runs/f/summary.md || fail "the failure's last log lines are not in summary.md"
# rerun: the failed one runs again, the good ones are skipped
rc=0
"$bin" ablate failing.yaml 2> fail2.err || rc=$?
[ $rc -eq 1 ] || fail "failing sweep rerun: exit $rc"
[ "$(grep -c "complete, skipped" fail2.err)" -eq 2 ] || fail "rerun of failing sweep: $(cat fail2.err)"
grep -q "rerunning (failed before with exit code 2)" runs/f/broken/run.log || fail "no rerun note"

# --- typos: exit 2 with file:line before anything runs
expect2() {  # FILE PATTERN [ARGS...]
  local file=$1 pat=$2
  shift 2
  rm -rf runs/bad
  local rc=0
  "$bin" ablate "$file" "$@" > out.txt 2>&1 || rc=$?
  [ $rc -eq 2 ] || fail "$file: exit $rc, expected 2: $(cat out.txt)"
  grep -q -- "$pat" out.txt || fail "$file: expected '$pat' in: $(cat out.txt)"
  [ ! -e runs/bad ] || fail "$file: something ran"
}
bad() { printf 'name: bad\nbase: base.yaml\n%s\n' "$1" > bad.yaml; }
bad $'grid:\n  model.position: [rope, alibi]\nvariants:\n  - {name: a}\n  - {name: b}\n  - {name: c, set: {model.postion: alibi}}'
expect2 bad.yaml "bad.yaml:8: variant 'c': --set model.postion=alibi: unknown key 'model.postion'; did you mean 'model.position'"
bad $'grid:\n  model.position: [rope, alibii]'
expect2 bad.yaml "bad.yaml:4: variant 'position-alibii': --set model.position=alibii: model.position: must be one of"
bad $'variant:\n  - {name: a}'
expect2 bad.yaml "bad.yaml:3: unknown key 'variant' in the sweep; did you mean 'variants'"
bad $'variants:\n  - {name: a}\n  - {name: b, from: aa, eval_set: {model.rope_theta: 1000}}'
expect2 bad.yaml "bad.yaml:5: variant 'b': 'aa' is not a variant defined before this one; did you mean 'a'"
bad $'variants:\n  - {name: a, sett: {train.max_steps: 2}}'
expect2 bad.yaml "bad.yaml:4: unknown key 'sett' in a variant; did you mean 'set'"
bad $'variants:\n  - {name: a}\neval: {passkye: {seq_lens: [256]}}'
expect2 bad.yaml "bad.yaml:5: unknown key 'passkye' in eval; did you mean 'passkey'"
bad $'variants:\n  - {name: a, set: {train.max_steps: -3}}'
expect2 bad.yaml "bad.yaml:4: variant 'a': --set train.max_steps=-3: train.max_steps"
bad $'variants:\n  - {name: a, set: {run.seed: 4}}'
expect2 bad.yaml "run.seed is set by ablate"
bad $'variants:\n  - {name: a}\n  - {name: r, from: a, eval: {memory_reset: true}}'
expect2 bad.yaml "variant 'r': eval: memory_reset applies to memory models"
bad $'variants:\n  - {name: a}'
expect2 bad.yaml "--only b: no such variant" --only b
expect2 missing.yaml "cannot read sweep file 'missing.yaml'"
# --- launch: {np: 2}: train and eval under launch/local.sh, the layout checked for 2 ranks
if command -v mpirun > /dev/null; then
  cat > np.yaml <<'YAML'
name: np
base: base.yaml
set: {train.max_steps: 4, log.every_steps: 2}
variants: [{name: a}]
launch: {np: 2}
eval: {seq_lens: [64], max_sequences: 2}
YAML
  expect2 np.yaml "np.yaml:4: variant 'a': .*global_batch_size(2) is not a multiple of data_parallel(2) \\* train.micro_batch_size(2)"
  sed -i 's/log.every_steps: 2}/log.every_steps: 2, train.micro_batch_size: 1}/' np.yaml
  "$bin" ablate np.yaml --no-plots 2> np.err || fail "np sweep: $(cat np.err)"
  grep -q "layout: world 2 = data_parallel 2" runs/np/a/run.log || fail "train not on 2 ranks"
  grep -q "eval: .*world 2 = data_parallel 2" runs/np/a/run.log || fail "eval not on 2 ranks"
fi
echo "cli_ablate: ok"
