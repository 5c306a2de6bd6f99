#!/usr/bin/env bash
# Hugging Face directories ringtrain must refuse, each with a clear message
# and the exit code of SPEC §1 (2 invalid input, 3 corrupt/missing file), never
# a crash: truncated safetensors, headers whose offsets lie, a missing shard,
# unknown dtypes, wrong shapes, architectures and features ringtrain cannot
# compute; export refusals. Also: transformers 5's rope_parameters imports as
# rope_scaling does. Needs only Debian's python3 + numpy (files are written
# by hand here, byte for byte).
# usage: cli_hf_errors.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"

# expect CODE NEEDLE -- command...: exit code CODE and NEEDLE in stderr.
expect() {
  local code=$1 needle=$2
  shift 3
  "$@" > out.txt 2> err.txt
  local got=$?
  if [ "$got" -ne "$code" ]; then
    fail "$* exited $got, expected $code: $(cat err.txt)"
  elif ! cat out.txt err.txt | grep -qF -- "$needle"; then
    fail "$*: message lacks '$needle': $(cat err.txt)"
  elif grep -qiE "terminate|segmentation|core dumped" err.txt; then
    fail "$*: crashed: $(cat err.txt)"
  fi
}

# mk.py DIR [edits...]: a valid tiny Llama directory, then the named damage.
cat > mk.py <<'PY'
import json, os, struct, sys
import numpy as np
d, edits = sys.argv[1], sys.argv[2:]
os.makedirs(d, exist_ok=True)
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
       "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
       "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
       "hidden_act": "silu", "torch_dtype": "float32"}
shapes = {"model.embed_tokens.weight": [256, 16], "model.norm.weight": [16],
          "lm_head.weight": [256, 16]}
p = "model.layers.0."
shapes.update({p + "input_layernorm.weight": [16], p + "post_attention_layernorm.weight": [16],
               p + "self_attn.q_proj.weight": [16, 16], p + "self_attn.k_proj.weight": [16, 16],
               p + "self_attn.v_proj.weight": [16, 16], p + "self_attn.o_proj.weight": [16, 16],
               p + "mlp.gate_proj.weight": [32, 16], p + "mlp.up_proj.weight": [32, 16],
               p + "mlp.down_proj.weight": [16, 32]})
dtype = {"F32": np.float32, "F16": np.float16}
rng = np.random.default_rng(0)
for e in edits:
    if e.startswith("cfg:"):  # cfg:key=json
        k, v = e[4:].split("=", 1)
        if v == "DELETE":
            cfg.pop(k)
        else:
            cfg[k] = json.loads(v)
    elif e.startswith("shape:"):  # shape:name=[..]
        k, v = e[6:].split("=", 1)
        shapes[k] = json.loads(v)
    elif e.startswith("drop:"):
        shapes.pop(e[5:])
    elif e.startswith("add:"):
        shapes[e[4:]] = [16]
json.dump(cfg, open(os.path.join(d, "config.json"), "w"))

def write(path, names, dt="F32", hack=None):
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for n in names:
        a = rng.normal(0, 0.1, shapes[n]).astype(np.float32)
        b = a.tobytes()
        header[n] = {"dtype": dt, "shape": shapes[n], "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    if hack:
        hack(header)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

names = sorted(shapes)
hacks = {
    "lie-end": lambda h: h["model.norm.weight"].update(data_offsets=[0, 10 ** 9]),
    "overlap": lambda h: h["lm_head.weight"].update(data_offsets=h["model.embed_tokens.weight"]["data_offsets"]),
    "lie-span": lambda h: h["model.norm.weight"].update(shape=[15]),
}
hack = next((hacks[e] for e in edits if e in hacks), None)
dt = next((e[6:] for e in edits if e.startswith("dtype:")), "F32")
if "sharded" in edits or "missing-shard" in edits:
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half],
             "model-00002-of-00002.safetensors": names[half:]}
    for fn, ns in parts.items():
        if not ("missing-shard" in edits and fn.startswith("model-00002")):
            write(os.path.join(d, fn), ns)
    json.dump({"metadata": {}, "weight_map": {n: fn for fn, ns in parts.items() for n in ns}},
              open(os.path.join(d, "model.safetensors.index.json"), "w"))
else:
    write(os.path.join(d, "model.safetensors"), names, dt, hack)
path = os.path.join(d, "model.safetensors")
if "truncate" in edits:
    os.truncate(path, os.path.getsize(path) - 100)
if "tiny-file" in edits:
    os.truncate(path, 5)
if "bad-json" in edits:
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"#")
if "long-header" in edits:
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", 10 ** 6))
PY
mk() { /usr/bin/python3 mk.py "$@" || fail "mk.py $*"; }

mk ok
printf '{"tokenizer": "stand-in"}' > ok/tokenizer.json
expect 0 "kept config.json, tokenizer.json" -- "$bin" import ok --out ok.h5
mk sharded sharded
expect 0 "2 safetensors file(s)" -- "$bin" import sharded --out sharded.h5

# Corrupt or missing files: exit 3.
mk trunc truncate
expect 3 "truncated or the header lies" -- "$bin" import trunc --out x.h5
expect 3 "truncated or the header lies" -- "$bin" inspect trunc
printf 'a few bytes of text to evaluate on' > d.txt
expect 3 "truncated or the header lies" -- "$bin" eval trunc --data d.txt --seq-len 8 --no-plots
expect 2 "pass --data FILE" -- "$bin" eval ok --seq-len 8 --no-plots
mk tiny tiny-file
expect 3 "shorter than the 8-byte header length" -- "$bin" import tiny --out x.h5
mk longh long-header
expect 3 "truncated: the header says it is 1000000 bytes" -- "$bin" import longh --out x.h5
mk badjson bad-json
expect 3 "header is not a JSON object" -- "$bin" import badjson --out x.h5
mk lie lie-end
expect 3 "end past the data section" -- "$bin" import lie --out x.h5
mk overlap overlap
expect 3 "overlap in the data section" -- "$bin" import overlap --out x.h5
mk span lie-span
expect 3 "needs 60 (corrupt header)" -- "$bin" import span --out x.h5
mk noshard missing-shard
expect 3 "names shard model-00002-of-00002.safetensors" -- "$bin" import noshard --out x.h5
mkdir empty && echo '{}' > empty/config.json
expect 2 "has no model.safetensors or model.safetensors.index.json" -- "$bin" import empty --out x.h5
expect 2 "is not a Hugging Face model directory" -- "$bin" import nowhere --out x.h5

# Valid files ringtrain cannot represent: exit 2 naming the key and value.
mk f64 dtype:F64
expect 2 "has dtype F64, which ringtrain does not import" -- "$bin" import f64 --out x.h5
mk shape 'shape:model.layers.0.self_attn.k_proj.weight=[8, 16]'
expect 2 "model.layers.0.self_attn.k_proj.weight has shape [8, 16], config.json implies [16, 16]" -- "$bin" import shape --out x.h5
mk miss drop:model.norm.weight
expect 2 "model.norm.weight is missing" -- "$bin" import miss --out x.h5
mk extra add:model.layers.0.self_attn.q_proj.bias
expect 2 "does not have: model.layers.0.self_attn.q_proj.bias" -- "$bin" import extra --out x.h5
mk arch 'cfg:architectures=["MistralForCausalLM"]'
expect 2 'architectures = ["MistralForCausalLM"] is not supported' -- "$bin" import arch --out x.h5
mk mt 'cfg:model_type="qwen2"'
expect 2 'model_type = "qwen2" is not supported' -- "$bin" import mt --out x.h5
mk bias 'cfg:attention_bias=true'
expect 2 "attention_bias = true is not supported" -- "$bin" import bias --out x.h5
mk mlpb 'cfg:mlp_bias=true'
expect 2 "mlp_bias = true is not supported" -- "$bin" import mlpb --out x.h5
mk sw 'cfg:sliding_window=4096'
expect 2 "sliding_window = 4096 is not supported" -- "$bin" import sw --out x.h5
mk moe 'cfg:num_local_experts=8'
expect 2 "num_local_experts = 8 is not supported" -- "$bin" import moe --out x.h5
mk act 'cfg:hidden_act="gelu"'
expect 2 'hidden_act = "gelu" is not supported' -- "$bin" import act --out x.h5
mk rt 'cfg:rope_scaling={"type": "su", "factor": 2}'
expect 2 'rope_type = "su" is not supported' -- "$bin" import rt --out x.h5
mk gqa 'cfg:num_key_value_heads=3'
expect 2 "num_key_value_heads" -- "$bin" import gqa --out x.h5
# The same refusal where an HF directory stands for a checkpoint.
expect 2 "attention_bias = true is not supported" -- "$bin" generate bias --prompt hi
expect 2 "sliding_window = 4096 is not supported" -- "$bin" extend sw --to 256 --method yarn

# transformers 5's rope_parameters == transformers 4's rope_theta + rope_scaling.
mk rp4 'cfg:rope_scaling={"type": "yarn", "factor": 4.0}' 'cfg:rope_theta=5000.0'
mk rp5 'cfg:rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 5000.0}' 'cfg:rope_theta=DELETE'
cp rp4/model.safetensors rp5/model.safetensors
"$bin" inspect rp4 | sed -n '/^config:/,$p' | grep -v "name:\|dir:\|init_from:\|imported_from" > rp4.txt
"$bin" inspect rp5 | sed -n '/^config:/,$p' | grep -v "name:\|dir:\|init_from:\|imported_from" > rp5.txt
diff rp4.txt rp5.txt > /dev/null || fail "rope_parameters imports differently from rope_scaling: $(diff rp4.txt rp5.txt)"
grep -q "rope_type: yarn" rp5.txt && grep -q "rope_theta: 5000" rp5.txt || fail "rope_parameters not read: $(cat rp5.txt)"
mk rpd 'cfg:rope_parameters={"rope_type": "default", "rope_theta": 500000.0}'
"$bin" inspect rpd | grep -q "rope_scaling: null" || fail "rope_parameters default is not 'no scaling'"

# checkpoint.init_from takes an HF directory (or the imported checkpoint); the
# run's checkpoints export with the tokenizer files found along init_from.
yes "the tokenizer travels with the model, through init_from" | head -c 4000 > text.txt
for src in ok ok.h5; do
  cat > ft.yaml <<YAML
run: {name: ft, dir: $work/ft-$src, seed: 1}
model: {vocab_size: 256, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, rms_norm_eps: 1.0e-5, max_position_embeddings: 64}
data: {train: $work/text.txt}
train: {seq_len: 32, micro_batch_size: 1, global_batch_size: 1, max_steps: 1,
        schedule: {warmup_steps: 0}}
checkpoint: {init_from: $work/$src}
YAML
  "$bin" train ft.yaml > ft.log 2>&1 || fail "training from init_from $src: $(tail -3 ft.log)"
  grep -q "init_from $work/$src: loaded weights" ft.log || fail "init_from $src did not load: $(cat ft.log)"
  expect 0 "copied from $work/$src: tokenizer.json" -- \
    "$bin" export "$work/ft-$src/checkpoints/step_00000001.h5" --out "ft-$src-hf"
  cmp -s ok/tokenizer.json "ft-$src-hf/tokenizer.json" || fail "export after init_from $src lost tokenizer.json"
done
expect 2 "model.hidden_size is 16 in the checkpoint but 32 in the config" -- \
  "$bin" train ft.yaml --set model.hidden_size=32 --set model.intermediate_size=64 --set run.dir="$work/ft-bad"

# Export refusals.
cat > alibi.yaml <<YAML
run: {name: a, dir: $work/alibi, seed: 1}
model: {vocab_size: 256, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2, position: alibi}
data: {train: {synthetic: passkey}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 1, max_steps: 1,
        schedule: {warmup_steps: 0}}
YAML
"$bin" train alibi.yaml > /dev/null 2>&1 || fail "training the alibi model"
expect 2 "model.position is alibi; Hugging Face LlamaForCausalLM has RoPE positions only" -- \
  "$bin" export alibi/checkpoints/step_00000001.h5 --out a-hf
sed -e "s|position: alibi|memory: {type: rmt, num_tokens: 2, segment_length: 64}|" \
    -e "s|$work/alibi|$work/rmt|" alibi.yaml > rmt.yaml
"$bin" train rmt.yaml > /dev/null 2>&1 || fail "training the memory model"
expect 2 "model.memory (rmt) is set" -- "$bin" export rmt/checkpoints/step_00000001.h5 --out r-hf
expect 2 "exists and is not an empty directory" -- "$bin" export ok.h5 --out ok
expect 2 "--dtype 'fp16' is not one of bf16 | fp32" -- "$bin" export ok.h5 --out o2 --dtype fp16
expect 2 "--max-shard-size '5 apples' is not a size" -- "$bin" export ok.h5 --out o3 --max-shard-size "5 apples"
expect 2 "is already a Hugging Face directory" -- "$bin" export ok --out o4
expect 3 "no such file" -- "$bin" export missing.h5 --out o5

if [ "$failures" -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "cli_hf_errors: all checks passed"
