#!/usr/bin/env bash
# RMT passkey demonstration: a tiny model with 16 memory tokens and 256-byte
# segments learns to carry a passkey from the first segment to a question in
# the last one, with a curriculum over the number of segments.
#
#   launch/rmt_demo.sh [OUT_DIR] [SEED ...]       train + evaluate (default runs/rmt_demo, seeds 1 2 3)
#   RMT_DEMO_EVAL_ONLY=1 launch/rmt_demo.sh ...   evaluate existing runs only
#   RMT_DEMO_SUMMARY_ONLY=1 launch/rmt_demo.sh ... print the table of existing evaluations
# (seeds are independent: several instances, one seed each, may share OUT_DIR)
#
# Per seed, four stages of configs/rmt/passkey.yaml, each initialised from the
# previous stage's checkpoint: seq_len 256 (1 segment, 400 steps, lr 3e-3),
# 512 (2 segments, 400 steps), 1024 (4, 300 steps), 2048 (8, 200 steps), lr 1e-3.
# The final model is then evaluated on passkey samples (needle in segment 0,
# question at the end) of 1, 2, 4 and 8 segments, twice: with its memory, and
# with --memory-reset (every segment starts from the learned initial memory,
# so nothing crosses a segment boundary: the same model without memory).
# Prints a table of exact-match accuracy (all 5 digits, greedy) per seed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RINGTRAIN:-./build/ringtrain}
cfg=configs/rmt/passkey.yaml
out=${1:-runs/rmt_demo}
shift || true
seeds=("$@")
[[ ${#seeds[@]} -eq 0 ]] && seeds=(1 2 3)
trials=${RMT_DEMO_TRIALS:-20}

final_ckpt() { ls "$1"/checkpoints/step_*.h5 2>/dev/null | sort | tail -1; }

summary_only=${RMT_DEMO_SUMMARY_ONLY:-0}
if [[ "${RMT_DEMO_EVAL_ONLY:-0}" != 1 && $summary_only != 1 ]]; then
  for seed in "${seeds[@]}"; do
    prev=""
    for stage in "256 400 3e-3" "512 400 1e-3" "1024 300 1e-3" "2048 200 1e-3"; do
      read -r T steps lr <<< "$stage"
      dir=$out/seed$seed/T$T
      mkdir -p "$out/seed$seed"
      init=()
      [[ -n "$prev" ]] && init=(--set "checkpoint.init_from=$prev")
      start=$(date +%s)
      "$bin" train "$cfg" --set run.seed="$seed" --set run.dir="$dir" \
        --set train.seq_len="$T" --set train.max_steps="$steps" --set train.optimizer.lr="$lr" \
        --set "eval.seq_lens=[$T]" --set eval.every_steps="$steps" \
        --set checkpoint.every_steps="$steps" "${init[@]}" > "$dir.log" 2>&1 ||
        { echo "stage T=$T seed=$seed failed, see $dir.log"; exit 1; }
      prev=$(final_ckpt "$dir")
      echo "seed $seed  T=$T  $(( $(date +%s) - start )) s  val answer NLL $(grep -A2 'eval at step' "$dir.log" | tail -1 | awk '{print $4}')"
    done
  done
fi

lens=256,512,1024,2048
for seed in "${seeds[@]}"; do
  [[ $summary_only == 1 ]] && break
  ckpt=$(final_ckpt "$out/seed$seed/T2048")
  for mode in memory reset; do
    extra=()
    [[ $mode == reset ]] && extra=(--memory-reset)
    "$bin" eval "$ckpt" --seq-lens 2048 --max-sequences 8 --passkey-seq-lens "$lens" \
      --passkey-depths 0 --passkey-trials "$trials" --no-plots "${extra[@]}" \
      --json "$out/seed$seed/eval_$mode.json" > "$out/seed$seed/eval_$mode.log" 2>&1
  done
done
python3 - "$out" "${seeds[@]}" <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
print("passkey exact-match accuracy, needle in segment 0 (depth 0), by number of 256-byte segments")
print(f"{'seed':>4} {'model':>8} | " + " ".join(f"{n:>6}" for n in ("1 seg", "2", "4", "8")))
for s in seeds:
    for mode in ("memory", "reset"):
        p = json.load(open(f"{out}/seed{s}/eval_{mode}.json"))["passkey"]
        acc = [row[0] for row in p["accuracy"]]
        print(f"{s:>4} {mode:>8} | " + " ".join(f"{a:>6.2f}" for a in acc))
PY
