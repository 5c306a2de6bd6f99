#!/usr/bin/env bash
# Every config under configs/ works as shipped, run from the repository root
# as the README says (data paths are relative to it): each trains for 2 steps
# (only max_steps, the run dir and the evaluation size changed), and each
# configs/extend/*.yaml fine-tunes from configs/tinyshakespeare.yaml's
# checkpoint (its documented init_from, here the 2-step one). Also
# `data prepare --val-fraction` on the shipped text.
# usage: cli_shipped_configs.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$src"   # relative data paths of the configs resolve here; every output goes to $work

short=(--set train.max_steps=2 --set checkpoint.every_steps=0 --set eval.every_steps=0
       --set eval.max_sequences=1)
n=0
for cfg in configs/*.yaml configs/*/*.yaml; do
  case "$cfg" in
    configs/extend/*) continue ;;
    configs/ablations/*) continue ;;  # sweep files: tests/cli/cli_ablate_shipped.sh runs them
    configs/bench_tinyllama.yaml)
      # the 1.1B GPU benchmark model (tools/gpu_check.sh): planned for one GPU, not trained here
      "$bin" plan "$cfg" --device cuda > "$work/plan.out" 2>&1 \
        || { tail -5 "$work/plan.out"; fail "$cfg does not validate for one GPU"; }
      grep -q '^fits: yes' "$work/plan.out" || fail "$cfg: does not fit one 80 GB GPU at its seq_len"
      grep -q 'trains on this device today' "$work/plan.out" && fail "$cfg: the CUDA backend would refuse it"
      printf '%-34s valid for 1 GPU (plan)\n' "$cfg"
      continue ;;
    configs/recipes/*|configs/scaling/*)
      # multi-GPU recipes and model shapes (1B-8B): validated for the 8 ranks
      # they are written for, with their memory plan, not trained here
      "$bin" plan "$cfg" --world 8 --device cuda > "$work/plan.out" 2>&1 \
        || { tail -5 "$work/plan.out"; fail "$cfg does not validate for 8 GPUs"; }
      grep -q '^fits: ' "$work/plan.out" || fail "$cfg: plan printed no verdict"
      printf '%-34s valid for 8 GPUs (plan)\n' "$cfg"
      continue ;;
  esac
  name=$(basename "$cfg" .yaml)
  dir=$work/$(dirname "$cfg" | tr / _)_$name
  start=$SECONDS
  "$bin" train "$cfg" "${short[@]}" --set run.dir="$dir" > "$work/$name.out" 2> "$work/$name.err" \
    || { tail -5 "$work/$name.err"; fail "$cfg does not train as shipped"; }
  test -f "$dir/checkpoints/step_00000002.h5" || fail "$cfg: no checkpoint"
  printf '%-34s ok (%d s)\n' "$cfg" $((SECONDS - start))
  n=$((n + 1))
done
[ "$n" -ge 4 ] || fail "found only $n configs"

# The extension examples start from configs/tinyshakespeare.yaml's run.
ts=$work/configs_tinyshakespeare/checkpoints/step_00000002.h5
test -f "$ts" || fail "no tinyshakespeare checkpoint"
for cfg in configs/extend/*.yaml; do
  grep -q "init_from: runs/tinyshakespeare/checkpoints/step_00000900.h5" "$cfg" \
    || fail "$cfg does not start from configs/tinyshakespeare.yaml's final checkpoint"
  name=$(basename "$cfg" .yaml)
  start=$SECONDS
  "$bin" train "$cfg" "${short[@]}" --set train.max_steps=1 --set checkpoint.init_from="$ts" \
    --set run.dir="$work/ext_$name" \
    > "$work/ext_$name.out" 2> "$work/ext_$name.err" \
    || { tail -5 "$work/ext_$name.err"; fail "$cfg does not fine-tune configs/tinyshakespeare.yaml's checkpoint"; }
  grep -q "init_from" "$work/ext_$name.err" || fail "$cfg: init_from not used"
  printf '%-34s ok (%d s)\n' "$cfg" $((SECONDS - start))
done

# A held-out split of the shipped text.
"$bin" data prepare data/tinyshakespeare.txt --out "$work/ts.h5" --val-fraction 0.1 > "$work/prep.out" \
  || fail "data prepare --val-fraction"
/usr/bin/python3 - "$work/ts.h5" "$work/ts.val.h5" data/tinyshakespeare.txt <<'PY' || fail "split files"
import sys, h5py, numpy as np
train, val, txt = sys.argv[1:]
raw = np.frombuffer(open(txt, "rb").read(), dtype=np.uint8)
a = h5py.File(train, "r")["tokens"][()]
b = h5py.File(val, "r")["tokens"][()]
assert len(b) == round(len(raw) * 0.1), (len(b), len(raw))
assert np.array_equal(np.concatenate([a, b]), raw)
PY
"$bin" train configs/tinyshakespeare.yaml "${short[@]}" --set run.dir="$work/split" \
  --set data.train="$work/ts.h5" --set data.val="$work/ts.val.h5" > "$work/split.out" 2>&1 \
  || fail "training on the split"
grep -q "final evaluation at step 2 (validation data)" "$work/split.out" || fail "no validation eval"
echo "cli_shipped_configs: ok"
