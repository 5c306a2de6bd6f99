#!/usr/bin/env bash
# parallel.device through the CLI (SPEC §1, §12; trainer/train/device.h), on a
# machine where no CUDA device is visible (CUDA_VISIBLE_DEVICES is emptied, so
# this holds in a CUDA build on a GPU machine too): auto trains on the CPU in
# fp32 without a word about CUDA; cuda is exit 2 saying why (built without
# CUDA, or no device visible); what the CUDA backend cannot run (fp32,
# head_dim not 64/128) is exit 2
# naming the key, in train, eval and bench alike; plan --device cuda says so
# and still prints the memory; bench reports device, mfu, gemm rate.
# usage: cli_device.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
source "$src/tests/cli/lib.sh"
export CUDA_VISIBLE_DEVICES=

# head_dim 64 (hidden 128, 2 heads): a config the CUDA backend could run
cat > ok.yaml <<YAML
run: {name: d, dir: $work/run, seed: 3}
model: {vocab_size: 256, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {train: {synthetic: passkey}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 1, max_steps: 2,
        schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 0}
log: {every_steps: 1}
YAML

# --- auto without a visible device: the CPU, fp32, no error
expect 0 "precision: fp32 \(train.precision auto on cpu\)" -- $bin train ok.yaml --set run.dir=$work/auto
grep -qi "cuda" out.txt && fail "auto on a machine without a GPU mentions CUDA: $(grep -i cuda out.txt)"
test -f auto/checkpoints/step_00000002.h5 || fail "auto run wrote no checkpoint"

# --- cuda: no CUDA in this build, or no device visible
no_gpu="built without CUDA.*-DRINGTRAIN_CUDA=ON|no CUDA device is visible"
expect 2 "parallel.device: cuda, but .*($no_gpu)" -- $bin train ok.yaml --set run.dir=$work/c --set parallel.device=cuda
expect 2 "parallel.device: cuda, but .*($no_gpu)" -- $bin bench ok.yaml --steps 1 --set parallel.device=cuda
expect 2 "parallel.device: cuda, but .*($no_gpu)" -- $bin eval ok.yaml --allow-random-init --seq-len 256 --max-sequences 1 --set parallel.device=cuda --json $work/e.json

# --- what the CUDA backend cannot run: exit 2 naming the key (before the machine check)
cuda=(--set parallel.device=cuda --set run.dir=$work/r)
expect 2 "train.precision: fp32 on parallel.device cuda.*set train.precision: bf16 or auto" -- \
  $bin train ok.yaml "${cuda[@]}" --set train.precision=fp32
expect 2 "model.head_dim is 32 .*64 or 128" -- $bin train ok.yaml "${cuda[@]}" --set model.num_attention_heads=4 --set model.num_key_value_heads=1
expect 2 "model.head_dim is 96 .*64 or 128" -- $bin train ok.yaml "${cuda[@]}" --set model.head_dim=96
expect 2 "model.head_dim is 32" -- $bin bench ok.yaml --steps 1 --set parallel.device=cuda --set model.num_attention_heads=4 --set model.num_key_value_heads=1
# memory models of every type run on CUDA: the refusal is the machine's, not the config's
for mem in '{type: rmt, segment_length: 32, num_tokens: 4}' \
           '{type: knn, segment_length: 32, layers: [0], memory_size: 64, top_k: 8}' \
           '{type: compressive, segment_length: 32, layers: [0], memory_segments: 1, rate: 2, levels: 2, compressed_size: 32, compression: conv}'; do
  expect 2 "parallel.device: cuda, but .*($no_gpu)" -- $bin train ok.yaml "${cuda[@]}" --set "model.memory=$mem"
done

# --- plan --device cuda: what train would refuse, and the memory all the same
expect 0 "trains on this device today: no \(train exits 2\): model.head_dim is 32" -- \
  $bin plan ok.yaml --device cuda --set model.num_attention_heads=4 --set model.num_key_value_heads=1
grep -q "^memory rank 0:" out.txt || fail "plan --device cuda with a refusal printed no memory"
expect 0 "device: cuda, precision: bf16" -- $bin plan ok.yaml --device cuda
grep -q "trains on this device today" out.txt && fail "plan --device cuda refuses a runnable config"
expect 0 "device: cpu, precision: fp32" -- $bin plan ok.yaml

# --- bench on the CPU: device, mfu null, gemm null; --help states the FLOP convention
expect 0 '"device":"cpu"' -- $bin bench ok.yaml --steps 1 --warmup 0
for k in '"mfu":null' '"gemm_bf16_tflops":null' '"peak_mem_bytes":[1-9]' '"host_peak_rss_bytes":[1-9]' '"precision":"fp32"'; do
  grep -qE "$k" out.txt || fail "bench JSON lacks $k: $(tail -1 out.txt)"
done
expect 0 "causal attention counted half" -- $bin bench --help
grep -q "mfu" out.txt || fail "bench --help does not explain mfu"

[ "$failures" -eq 0 ] && echo "cli_device: all passed"
exit $((failures > 0))
