#!/usr/bin/env bash
# Commands that only run a model, eval output, who speaks, which stream:
#  - a weights-only checkpoint whose config holds only `model:` (SPEC §8)
#    works with eval --data, generate, extend and inspect; eval without data
#    says to give --data (exit 2);
#  - eval writes its JSON into the checkpoint's run dir whatever the current
#    directory, evaluations of one step with other --data or --set get their
#    own file, the JSON records data and overrides, eval.max_sequences of the
#    config is honoured, a run without checkpoint is exit 3 unless
#    --allow-random-init, every length is checked before any is evaluated,
#    --passkey-trials 0 and --bucket 0 are rejected;
#  - under mpirun rank 0 alone prints warnings, tables and generated text;
#  - results on stdout (train's final evaluation, eval tables, generated
#    text), progress and diagnostics on stderr;
#  - an unknown command suggests the closest one.
# usage: cli_outputs.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
launch="bash $src/launch/local.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect CODE PATTERN -- command...  (stdout and stderr together)
expect() {
  local code=$1 pattern=$2
  shift 3
  local got=0
  "$@" > out.txt 2>&1 || got=$?
  if [ "$got" != "$code" ] || ! grep -qE -- "$pattern" out.txt; then
    sed 's/^/    /' out.txt >&2
    fail "'$*' exited $got (want $code), output must match /$pattern/"
  fi
}

head -c 40000 "$src/README.md" > text.txt
cat > tiny.yaml <<YAML
run: {name: tiny, dir: $work/run, seed: 3}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 128}
data: {train: $work/text.txt}
train: {seq_len: 64, micro_batch_size: 2, global_batch_size: 2, max_steps: 3,
        schedule: {type: constant, warmup_steps: 5}}
checkpoint: {every_steps: 0}
eval: {seq_lens: [64], max_sequences: 3}
log: {every_steps: 1}
YAML

# ---- 14: unknown command -------------------------------------------------------
expect 2 "unknown command 'trian'; did you mean 'train'" -- $bin trian tiny.yaml

# ---- a run with no checkpoint yet: exit 3 unless asked for ----------------------
expect 3 "no checkpoint.*--allow-random-init" -- $bin eval tiny.yaml
$bin eval tiny.yaml --allow-random-init --no-plots --json norand.json > /dev/null 2>&1 \
  || fail "eval --allow-random-init"

# ---- 11: train prints its final evaluation on stdout, progress on stderr --------
$bin train tiny.yaml > train.out 2> train.err || { cat train.err; fail "train"; }
grep -q "final evaluation at step 3" train.out || { cat train.out; fail "final eval not on stdout"; }
grep -q "ppl" train.out || fail "final eval table not on stdout"
grep -q "step 3/3" train.err || fail "progress line not on stderr"
grep -q "step 3/3" train.out && fail "progress line on stdout"
grep -q "warmup_steps" train.err || fail "warmup warning missing"
ckpt=$work/run/checkpoints/step_00000003.h5
test -f $ckpt || fail "no checkpoint"

# ---- 9: where eval writes, and what it records ----------------------------------
mkdir elsewhere
(cd elsewhere && $bin eval $ckpt --no-plots > eval.out 2> eval.err) || fail "eval from elsewhere"
test -f run/eval/step_3.json || { ls -R elsewhere; fail "eval JSON not in the checkpoint's run dir"; }
test -e elsewhere/runs && fail "eval wrote under the current directory"
grep -q "ppl" elsewhere/eval.out || fail "eval table not on stdout"
grep -q "eval: checkpoint" elsewhere/eval.out && fail "eval diagnostics on stdout"
$bin eval $ckpt --no-plots --data $work/text.txt > /dev/null 2>&1 || fail "eval --data"
$bin eval $ckpt --no-plots --set 'model.rope_scaling={rope_type: linear, factor: 2}' \
  > /dev/null 2>&1 || fail "eval --set"
/usr/bin/python3 - run/eval <<'PY' || fail "eval JSON files"
import json, os, sys
d = sys.argv[1]
names = sorted(os.listdir(d))
assert len(names) == 3 and "step_3.json" in names, names
plain = json.load(open(os.path.join(d, "step_3.json")))
assert plain["overrides"] == [] and plain["data_file"] is None, plain
assert plain["perplexity"][0]["sequences"] == 3, plain["perplexity"]  # eval.max_sequences: 3
assert plain["max_sequences"] == 3
others = [json.load(open(os.path.join(d, n))) for n in names if n != "step_3.json"]
assert any(o["data_file"] and o["data_file"].endswith("text.txt") for o in others), others
assert any(o["overrides"] == ["model.rope_scaling={rope_type: linear, factor: 2}"] for o in others)
assert all("text.txt" in o["data"] for o in [plain] + others)
PY
# every length is checked before any is run: nothing printed on stdout
expect 2 "too short for sequence length 100000" -- $bin eval $ckpt --no-plots --seq-lens 64,100000
$bin eval $ckpt --no-plots --seq-lens 64,100000 2>/dev/null | grep -q ppl \
  && fail "results printed before an invalid length was rejected"
expect 2 "passkey-trials must be >= 1" -- $bin eval $ckpt --passkey-seq-lens 64 --passkey-trials 0
expect 2 "bucket must be >= 1" -- $bin eval $ckpt --bucket 0

# ---- 8: a weights-only checkpoint with only model: in its config -----------------
/usr/bin/python3 - $ckpt wo.h5 <<'PY' || fail "writing the weights-only file"
import sys, h5py, yaml
src, out = sys.argv[1:]
with h5py.File(src, "r") as f, h5py.File(out, "w") as g:
    cfg = yaml.safe_load(f.attrs["config"])
    for name, d in f["model"].items():
        g.create_dataset("model/" + name, data=d[()])
    g.attrs["format"] = "ringtrain"
    g.attrs["format_version"] = 1
    g.attrs["step"] = 3
    g.attrs["tokens_seen"] = 384
    g.attrs["config"] = yaml.safe_dump({"model": cfg["model"]})
PY
mkdir wo && mv wo.h5 wo/
expect 0 "usable for eval" -- $bin inspect wo/wo.h5
expect 2 "names no evaluation data.*--data" -- $bin eval wo/wo.h5 --no-plots
$bin eval wo/wo.h5 --data $work/text.txt --seq-lens 64 --no-plots > wo.out 2>&1 \
  || { cat wo.out; fail "eval of a weights-only file"; }
grep -q "ppl" wo.out || fail "weights-only eval printed no table"
test -n "$(ls wo/eval/step_3_*.json)" || fail "weights-only eval JSON not beside the file"
# the same weights: the same perplexity as the full checkpoint on the same data
$bin eval $ckpt --data $work/text.txt --seq-lens 64 --max-sequences 5 --no-plots --json full.json > /dev/null 2>&1
$bin eval wo/wo.h5 --data $work/text.txt --seq-lens 64 --max-sequences 5 --no-plots --json wo.json > /dev/null 2>&1
/usr/bin/python3 -c "
import json
a, b = json.load(open('full.json')), json.load(open('wo.json'))
assert a['perplexity'] == b['perplexity'], (a['perplexity'], b['perplexity'])" \
  || fail "weights-only eval differs from the full checkpoint's"
$bin generate wo/wo.h5 --prompt "The " --max-new 8 > gen.out 2> gen.err \
  || { cat gen.err; fail "generate from a weights-only file"; }
test "$(wc -l < gen.out)" -eq 1 || fail "generate stdout is not one line of text"
grep -q "generate:" gen.out && fail "generate diagnostics on stdout"
$bin extend wo/wo.h5 --to 256 --method yarn --out ext.yaml > /dev/null \
  || fail "extend of a weights-only file"
grep -q "set data.train" ext.yaml || fail "extend output does not say to set data.train"
expect 0 "step 1/1" -- $bin train ext.yaml --set data.train=$work/text.txt \
  --set train.max_steps=1 --set run.dir=$work/ext --set eval.seq_lens=[]

# ---- 12: metrics.jsonl after a resume holds each step once --------------------------
$bin train tiny.yaml --set run.dir=$work/res --set train.max_steps=4 \
  --set checkpoint.every_steps=2 > /dev/null 2>&1 || fail "train for the resume test"
rm $work/res/checkpoints/step_00000004.h5      # as if killed after step 4's metrics
printf '{"step": 5, "loss": 1.0' >> $work/res/metrics.jsonl   # and a torn last line
$bin train tiny.yaml --set run.dir=$work/res --set train.max_steps=4 \
  --set checkpoint.every_steps=2 > /dev/null 2> res.err || { cat res.err; fail "resume"; }
grep -q "dropped 3 records after step 2" res.err || { cat res.err; fail "no note of dropped rows"; }
grep -q "removed a torn last line" res.err || { cat res.err; fail "no note of the torn line"; }
/usr/bin/python3 - $work/res/metrics.jsonl <<'PY' || fail "metrics.jsonl after resume"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]   # every line whole
steps = [r["step"] for r in rows if "type" not in r]
assert steps == [1, 2, 3, 4], steps
evals = [r["step"] for r in rows if r.get("type") == "eval"]
assert evals == [4], evals
resume = [r for r in rows if r.get("type") == "resume"]
assert len(resume) == 1 and resume[0]["step"] == 2 and resume[0]["dropped_records"] == 3, resume
PY

# ---- 10: under mpirun, rank 0 speaks --------------------------------------------
if command -v mpirun > /dev/null; then
  $launch -np 2 $bin generate $ckpt --prompt "Hello" --max-new 4 > mpi_gen.out 2>/dev/null \
    || fail "generate under mpirun"
  test "$(grep -c Hello mpi_gen.out)" -eq 1 || { cat mpi_gen.out; fail "generate printed per rank"; }
  $launch -np 2 $bin train tiny.yaml --set run.dir=$work/mpi --set train.max_steps=2 --set train.micro_batch_size=1 \
    > mpi_train.out 2> mpi_train.err || { cat mpi_train.err; fail "train under mpirun"; }
  test "$(grep -c 'warning:.*warmup_steps' mpi_train.err)" -eq 1 \
    || { cat mpi_train.err; fail "warning printed per rank"; }
  test "$(grep -c 'final evaluation' mpi_train.out)" -eq 1 \
    || { cat mpi_train.out; fail "final evaluation printed per rank"; }
  $launch -np 2 $bin eval $ckpt --no-plots --json mpi.json > mpi_eval.out 2>/dev/null \
    || fail "eval under mpirun"
  test "$(grep -c 'perplexity on' mpi_eval.out)" -eq 1 || fail "eval table printed per rank"
fi
echo "cli_outputs: ok"
