#!/usr/bin/env bash
# The PyTorch peer of `ringtrain bench` (tests/bench/bench_torch_train.py) on
# the CPU at a tiny shape read from a ringtrain YAML: 2 steps, one JSON line
# with every key the GPU comparison reads; its FLOPs per token and parameter
# count equal ringtrain bench's for the same config (the same SPEC §11
# formula); --checkpointing and --find-max-t run. Exit 77 (skipped) without
# /usr/bin/python3 holding torch and yaml.
# usage: check_bench_torch_train.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
py=/usr/bin/python3
$py -c "import torch, yaml" 2>/dev/null || { echo "skipped: /usr/bin/python3 with torch and yaml not found"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"
peer="$src/tests/bench/bench_torch_train.py"
cat > tiny.yaml <<YAML
run: {name: p, dir: $work/run}
model: {vocab_size: 256, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {train: {synthetic: passkey}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 1, max_steps: 2}
YAML

$py "$peer" tiny.yaml --device cpu --steps 2 --warmup 0 --threads 2 > peer.json 2> peer.err \
  || { fail "peer exited non-zero"; cat peer.err >&2; }
$bin bench tiny.yaml --steps 1 --warmup 0 > rt.json 2> rt.err || { fail "ringtrain bench"; cat rt.err >&2; }
$py - peer.json rt.json <<'PY' || fail "peer JSON"
import json, math, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, f"want one JSON line, got {len(lines)}"
j = json.loads(lines[0])
for k in ("tokens_per_s", "mfu", "peak_mem_bytes", "step_ms", "T", "mode", "attention",
          "optimizer", "device", "flops_per_token", "params", "final_loss"):
    assert k in j, f"key {k} missing: {j}"
assert j["T"] == 256 and j["mode"] == "eager" and j["device"] == "cpu", j
assert j["mfu"] is None, "mfu on the CPU must be null"
assert j["tokens_per_s"] > 0 and j["step_ms"] > 0 and j["peak_mem_bytes"] > 0, j
assert abs(j["tokens_per_s"] * j["step_ms"] / 1e3 - 256) < 1e-6 * 256, "tokens_per_s != T / step"
assert (j["hidden"], j["layers"], j["heads"], j["kv_heads"], j["head_dim"], j["intermediate"],
        j["vocab"]) == (128, 2, 2, 1, 64, 256, 256), "shape not read from the YAML"
# random tokens over 256 ids: the loss starts near ln 256
assert math.isfinite(j["final_loss"]) and abs(j["final_loss"] - math.log(256)) < 0.5, j["final_loss"]
rt = json.loads(open(sys.argv[2]).read().splitlines()[-1])
assert j["flops_per_token"] == rt["flops_per_token"], (j["flops_per_token"], rt["flops_per_token"])
assert j["params"] == rt["params"], (j["params"], rt["params"])
print("peer:", j["tokens_per_s"], "tokens/s;", j["attention"], "; flops/token", j["flops_per_token"])
PY

# flags win over the YAML; activation checkpointing runs
$py "$peer" tiny.yaml --device cpu --steps 1 --warmup 0 --threads 2 --checkpointing --seq-len 128 \
  > ck.json 2> ck.err || { fail "--checkpointing"; cat ck.err >&2; }
grep -q '"mode": "eager+ckpt"' ck.json && grep -q '"T": 128' ck.json || fail "--checkpointing --seq-len 128: $(cat ck.json)"
# longest T: doubles from --seq-len up to the limit
$py "$peer" tiny.yaml --device cpu --threads 2 --find-max-t --seq-len 64 --max-t-limit 128 \
  > mt.json 2> mt.err || { fail "--find-max-t"; cat mt.err >&2; }
grep -q '"max_t": 128' mt.json && grep -q '"limit_reached": true' mt.json || fail "--find-max-t: $(cat mt.json)"
# a bad shape is refused with a message
$py "$peer" --device cpu --hidden 100 --heads 3 > bad.out 2>&1 && fail "hidden 100 / heads 3 accepted"
grep -q "not a multiple of heads" bad.out || fail "no message for hidden 100 / heads 3: $(cat bad.out)"

[ "$failures" -eq 0 ] && echo "bench_torch_train: all passed"
exit $((failures > 0))
