#!/usr/bin/env bash
# `ringtrain extend`: the written config for each method (keys and values),
# that it trains from the checkpoint, the error cases with their exit codes,
# and that the configs/extend examples validate.
# usage: cli_extend.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"

cat > t.yaml <<YAML
run: {name: tiny, dir: $work/run, seed: 1}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 512}
data: {train: {synthetic: passkey}}
train: {seq_len: 256, micro_batch_size: 2, global_batch_size: 8, max_steps: 2,
        optimizer: {lr: 1.0e-3}, schedule: {type: constant, warmup_steps: 0}}
YAML
"$bin" train t.yaml > /dev/null 2>&1 || fail "training the tiny checkpoint"
ckpt=$work/run/checkpoints/step_00000002.h5

for m in linear ntk dynamic yarn llama3; do
  "$bin" extend "$ckpt" --to 1024 --method $m --out $m.yaml > $m.out 2>&1 \
    || { fail "extend --method $m"; cat $m.out >&2; continue; }
  grep -q "ringtrain train $m.yaml" $m.out || fail "extend $m does not print how to run it"
  /usr/bin/python3 - $m.yaml $m "$ckpt" <<'PY' || fail "extend $m wrote wrong values"
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
m, ckpt = sys.argv[2], sys.argv[3]
rs = c["model"]["rope_scaling"]
assert rs["rope_type"] == m and rs["factor"] == 4.0, rs
assert rs["original_max_position_embeddings"] == 256, rs
assert c["model"]["max_position_embeddings"] == 1024 and c["train"]["seq_len"] == 1024
assert c["checkpoint"]["init_from"] == ckpt, c["checkpoint"]
assert abs(c["train"]["optimizer"]["lr"] - 1.0e-4) < 1e-12      # a tenth of the original
assert c["train"]["max_steps"] == 200 and c["train"]["schedule"]["warmup_steps"] == 20
assert c["train"]["global_batch_size"] * 1024 == 8 * 256          # tokens per step kept
assert c["eval"]["seq_lens"] == [256, 1024]
assert c["parallel"]["data_parallel"] == "auto"                 # layout left to the launch
assert c["run"]["name"] == f"tiny-{m}-1024" and "dir" not in c["run"], c["run"]  # runs/<name>, not pinned
PY
  grep -q "^# Fine-tune" $m.yaml || fail "extend $m wrote no explanatory comments"
  grep -q "train.seq_len: the longest positions" $m.yaml || fail "extend $m does not say why L = seq_len"
  grep -qE "mpirun -np N \S*ringtrain train $m.yaml --set parallel.context_parallel=N" $m.out \
    || fail "extend $m does not print the ring launch"
done
"$bin" train yarn.yaml --set train.max_steps=2 --set run.dir="$work/ft" > ft.log 2>&1 \
  || { fail "training from the written yarn config"; tail -5 ft.log >&2; }
grep -q "init_from .*loaded weights" ft.log || fail "the fine-tune did not start from the checkpoint"

expect() {  # expect CODE PATTERN -- command...
  local code=$1 pattern=$2
  shift 3
  "$@" > err.txt 2>&1
  local got=$?
  [ "$got" = "$code" ] && grep -qE -- "$pattern" err.txt \
    || { fail "'$*' exited $got (want $code), want /$pattern/"; sed 's/^/    /' err.txt >&2; }
}
expect 2 "not beyond the checkpoint's training length 256" -- "$bin" extend "$ckpt" --to 256 --method yarn
expect 2 "not one of linear" -- "$bin" extend "$ckpt" --to 1024 --method rope
expect 3 "nope.h5" -- "$bin" extend "$work/nope.h5" --to 1024 --method yarn
"$bin" train t.yaml --set model.position=alibi --set run.dir="$work/alibi" > /dev/null 2>&1
expect 2 "position: alibi.*ALiBi needs no rescaling" -- "$bin" extend "$work/alibi/checkpoints/step_00000002.h5" --to 1024 --method linear
expect 2 "already uses rope_scaling" -- "$bin" extend "$work/ft/checkpoints/step_00000002.h5" --to 4096 --method yarn

# The examples validate: they get as far as loading init_from, which then
# refuses the tiny checkpoint's other shape, naming the key (exit 2).
head -c 3000 "$src/README.md" > text.txt
for f in "$src"/configs/extend/*.yaml; do
  "$bin" train "$f" --set checkpoint.init_from="$ckpt" --set data.train="$work/text.txt" \
    --set run.dir="$work/ex" > ex.log 2>&1
  code=$?
  [ "$code" = 2 ] && grep -q "init_from.*model.hidden_size is 32 in the checkpoint but 128" ex.log \
    || { fail "$f: exit $code, expected to validate and stop at init_from"; head -3 ex.log >&2; }
done

if [ "$failures" -ne 0 ]; then echo "cli_extend: $failures check(s) failed" >&2; exit 1; fi
echo "cli_extend: all checks passed"
