#!/usr/bin/env bash
# Every position scheme through the ring: training with context_parallel 2
# gives the losses of one process (which test_trainer_torch_parity ties to the
# PyTorch reference) for rope, ALiBi (bias from global positions inside the
# ring), no positions, and RoPE with yarn and dynamic scaling.
# usage: cli_positions_cp.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export OMP_NUM_THREADS=1
source "$src/tests/cli/lib.sh"
cat > p.yaml <<YAML
run: {name: pos, seed: 5}
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 256}
data: {train: {synthetic: passkey, loss: all}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 2, max_steps: 4,
        optimizer: {type: adamw, lr: 3.0e-3}, schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 0}
log: {every_steps: 1}
YAML
scheme() {  # scheme NAME --set ...
  local name=$1
  shift
  for cp in 1 2; do
    bash "$src/launch/local.sh" -np $cp "$bin" train p.yaml --set run.dir="$work/$name-cp$cp" \
      --set parallel.context_parallel=$cp "$@" > "$name-cp$cp.log" 2>&1 \
      || { fail "$name cp=$cp"; tail -5 "$name-cp$cp.log" >&2; }
  done
  /usr/bin/python3 - "$work/$name" <<'PY' || fail "$name: cp=2 losses differ from cp=1"
import json, sys
base = sys.argv[1]
l = [[json.loads(x)["loss"] for x in open(f"{base}-cp{cp}/metrics.jsonl") if '"loss"' in x] for cp in (1, 2)]
assert len(l[0]) == 4 and len(l[1]) == 4, l
worst = max(abs(a - b) / abs(a) for a, b in zip(*l))
print(f"{base.split('/')[-1]}: cp=2 vs cp=1 max relative loss difference {worst:.2e}")
assert worst < 1e-5
PY
}
scheme rope
scheme alibi --set model.position=alibi
scheme none --set model.position=none
scheme yarn --set 'model.rope_scaling={rope_type: yarn, factor: 4.0, original_max_position_embeddings: 64}'
scheme dynamic --set 'model.rope_scaling={rope_type: dynamic, factor: 2.0, original_max_position_embeddings: 128}'
if [ "$failures" -ne 0 ]; then echo "cli_positions_cp: $failures check(s) failed" >&2; exit 1; fi
echo "cli_positions_cp: all checks passed"
