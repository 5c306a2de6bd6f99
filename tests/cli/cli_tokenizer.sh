#!/usr/bin/env bash
# SentencePiece tokenizers end to end (SPEC §7): a model trained here with
# spm_train on tests/fixtures/tinyshakespeare_100k.txt; `data prepare` gives the
# same ids as the sentencepiece Python package for the whole text; training,
# checkpoints (which store the tokenizer), eval on .txt, generate and the
# passkey grid go through it; every tokenizer mismatch is exit 2 naming both.
# usage: cli_tokenizer.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
# expect CODE PATTERN -- command...: exit code and a message matching PATTERN
expect() {
  local code=$1 pattern=$2
  shift 3
  set +e
  "$@" > out.txt 2>&1
  local got=$?
  set -e
  if [ "$got" != "$code" ] || ! grep -qE -- "$pattern" out.txt; then
    sed 's/^/    /' out.txt >&2
    fail "'$*' exited $got (want $code), output must match /$pattern/"
  fi
}
py=/usr/bin/python3
corpus=$src/tests/fixtures/tinyshakespeare_100k.txt

# Llama-style: BPE, identity normalization, byte fallback, digits split.
spm_train --input="$corpus" --model_prefix=sp --vocab_size=1000 --model_type=bpe \
  --character_coverage=1 --byte_fallback=true --split_digits=true \
  --normalization_rule_name=identity --remove_extra_whitespaces=false --num_threads=2 \
  --minloglevel=2 > spm.log 2>&1 || { cat spm.log; fail "spm_train failed"; }

# ---- data prepare: the same ids as the sentencepiece Python package ---------
printf 'Caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac 12345\n  spaces\tand tabs\n' > utf8.txt
$bin data prepare "$corpus" utf8.txt --out sp.h5 --tokenizer sp.model > prep.out \
  || { cat prep.out; fail "data prepare --tokenizer sp.model"; }
grep -q "vocab 1000, tokenizer sentencepiece sp.model" prep.out || { cat prep.out; fail "prepare summary"; }
$bin data prepare "$corpus" utf8.txt --out sp.bin --tokenizer sp.model > /dev/null
$py - "$corpus" utf8.txt <<'PY' || fail "ids differ from the sentencepiece Python package"
import hashlib, sys
import h5py, numpy as np, sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file="sp.model")
texts = [open(p, encoding="utf-8").read() for p in sys.argv[1:]]
want = [sp.encode(t) for t in texts]
with h5py.File("sp.h5") as f:
    got = f["tokens"][:]
    assert got.dtype == np.uint16, got.dtype
    assert f.attrs["vocab_size"] == 1000 == sp.get_piece_size()
    tok = f.attrs["tokenizer"]
    tok = tok.decode() if isinstance(tok, bytes) else tok
    sha = hashlib.sha256(open("sp.model", "rb").read()).hexdigest()
    assert tok == "sentencepiece:sha256=" + sha, tok
    assert list(f["doc_offsets"][:]) == [0, len(want[0])]
flat = [i for w in want for i in w]
assert got.tolist() == flat, "first difference at %d" % next(
    i for i, (a, b) in enumerate(zip(got.tolist(), flat)) if a != b)
assert len(flat) < 0.5 * sum(len(t.encode()) for t in texts)  # subwords, not bytes
# .bin: the same ids after the llm.c header
b = np.fromfile("sp.bin", dtype=np.int32, count=256)
assert b[0] == 20240520 and b[2] == len(flat)
assert np.fromfile("sp.bin", dtype=np.uint16, offset=1024).tolist() == flat
for t, w in zip(texts, want):
    assert sp.decode(w) == t
print("ids equal for", len(flat), "tokens")
PY
$bin data prepare "$corpus" --out bytes.h5 > /dev/null  # --tokenizer bytes, the default

# ---- training with the tokenizer; the checkpoint stores it -------------------
cat > sp.yaml <<YAML
run: {name: sp, dir: $work/run, seed: 3}
model: {vocab_size: 1000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, max_position_embeddings: 256}
data: {train: $work/sp.h5, tokenizer: $work/sp.model, shuffle: false}
train: {seq_len: 128, micro_batch_size: 1, global_batch_size: 2, max_steps: 3,
        optimizer: {lr: 3.0e-3}, schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 3}
YAML
$bin train sp.yaml 2> train.log || { cat train.log; fail "train with a SentencePiece tokenizer"; }
grep -q "tokenizer sentencepiece" train.log || { cat train.log; fail "data line lacks the tokenizer"; }
ckpt=$work/run/checkpoints/step_00000003.h5
$py - "$ckpt" <<'PY' || fail "the checkpoint does not hold the tokenizer"
import hashlib, sys
import h5py, numpy as np
model = open("sp.model", "rb").read()
with h5py.File(sys.argv[1]) as f:
    d = f["tokenizer/tokenizer.model"]
    assert d.dtype == np.uint8 and d[:].tobytes() == model
    tok = f.attrs["tokenizer"]
    tok = tok.decode() if isinstance(tok, bytes) else tok
    assert tok == "sentencepiece:sha256=" + hashlib.sha256(model).hexdigest(), tok
PY
$bin inspect "$ckpt" | grep -qE "^tokenizer: sentencepiece .*/tokenizer/tokenizer.model \(vocab 1000, sha256 [0-9a-f]{12}\)" \
  || fail "inspect shows no tokenizer"

# The checkpoint is self-contained: everything below runs without sp.model.
mv sp.model sp.model.away

# ---- eval: a .txt file is encoded with the checkpoint's tokenizer -----------
$bin eval "$ckpt" --data sp.h5 --seq-lens 128 --max-sequences 3 --json h5.json --no-plots > /dev/null
$bin eval "$ckpt" --data "$corpus" --seq-lens 128 --max-sequences 3 --json txt.json --no-plots \
  > txt.out || { cat txt.out; fail "eval on .txt"; }
grep -q "vocab 1000, tokenizer sentencepiece:sha256=" txt.out || { cat txt.out; fail "txt not tokenized"; }
$py - <<'PY' || fail "eval on the .txt differs from eval on its prepared tokens"
import json
a = json.load(open("h5.json"))["perplexity"][0]; b = json.load(open("txt.json"))["perplexity"][0]
assert a["tokens"] == b["tokens"] == 3 * 128 and a["mean_nll"] == b["mean_nll"], (a, b)
PY

# ---- generate: the prompt is encoded, the output decoded --------------------
mv sp.model.away sp.model
prompt="ROMEO: What light"
n=$($py -c "import sentencepiece as s, sys; print(len(s.SentencePieceProcessor(model_file='sp.model').encode(sys.argv[1])))" "$prompt")
$bin generate "$ckpt" --prompt "$prompt" --max-new 12 > gen.out 2> gen.log \
  || { cat gen.log; fail "generate"; }
head -c ${#prompt} gen.out | grep -qx -- "$prompt" || { cat gen.out; fail "generate must echo the prompt"; }
grep -q "prompt $n tokens" gen.log || { cat gen.log; fail "prompt not encoded with SentencePiece ($n tokens)"; }
grep -q "12 new tokens" gen.log || { cat gen.log; fail "generate: new tokens"; }
$bin generate "$ckpt" --prompt "$prompt" --max-new 2 --bos > /dev/null 2> gen.log
grep -q "prompt $((n + 1)) tokens" gen.log || { cat gen.log; fail "--bos adds one token"; }
# the continuation is the decoding of greedy ids: re-encoding the printed text
# and decoding gives it back (no stray bytes of a token printed half)
$py - <<'PY' || fail "generated text does not decode cleanly"
import sentencepiece as s
sp = s.SentencePieceProcessor(model_file="sp.model")
out = open("gen.out", encoding="utf-8").read()
assert sp.decode(sp.encode(out)) == out
PY

# ---- passkey grid and synthetic training through SentencePiece --------------
$bin eval "$ckpt" --data sp.h5 --seq-lens 128 --max-sequences 1 --passkey-seq-lens 160,192 \
  --passkey-depths 0,1 --passkey-trials 3 --json pk.json --no-plots > pk.out \
  || { cat pk.out; fail "passkey eval with a SentencePiece checkpoint"; }
$py - <<'PY' || fail "passkey JSON"
import json
p = json.load(open("pk.json"))["passkey"]
assert p["seq_lens"] == [160, 192] and p["trials"] == 3
assert all(0 <= a <= 1 for row in p["accuracy"] for a in row)
PY
$bin train sp.yaml --set run.dir=$work/syn --set "data.train={synthetic: passkey, loss: answer}" \
  --set train.max_steps=2 --set train.seq_len=192 2> syn.log || { cat syn.log; fail "synthetic passkey with SentencePiece"; }
grep -q "synthetic passkey.*tokenizer sentencepiece" syn.log || { cat syn.log; fail "synthetic tokenizer"; }
$bin train sp.yaml --set run.dir=$work/bin --set data.train=$work/sp.bin --set train.max_steps=1 \
  2> bin.log || { cat bin.log; fail "training on a SentencePiece .bin"; }
grep -qE "sp.bin \([0-9]+ tokens, vocab 1000, tokenizer sentencepiece" bin.log || { cat bin.log; fail ".bin vocab"; }
$bin train sp.yaml --set run.dir=$work/rec --set "data.train={synthetic: recall, pairs: 4}" \
  --set train.max_steps=1 2> rec.log || { cat rec.log; fail "synthetic recall with SentencePiece"; }

# ---- mismatches and bad tokenizers: exit 2 (3 for a missing file) -----------
expect 2 "bytes.h5 was tokenized with bytes but the model's tokenizer is sentencepiece" -- \
  $bin train sp.yaml --set run.dir=$work/mm --set data.train=$work/bytes.h5
expect 2 "bytes.h5 was tokenized with bytes but the model's tokenizer is sentencepiece" -- \
  $bin eval "$ckpt" --data bytes.h5 --seq-lens 128 --no-plots
expect 2 "sp.h5 was tokenized with sentencepiece \(sha256 [0-9a-f]+\) but the model's tokenizer is bytes" -- \
  $bin train sp.yaml --set run.dir=$work/mm2 --set data.tokenizer=bytes
expect 2 "cannot resume from .*step_00000003.h5: it was trained with tokenizer sentencepiece.*bytes" -- \
  $bin train sp.yaml --set data.tokenizer=bytes --set data.train=$work/bytes.h5 --set train.max_steps=4
expect 2 "not the tokenizer of checkpoint.init_from" -- \
  $bin train sp.yaml --set run.dir=$work/ft --set checkpoint.init_from=$ckpt --set data.tokenizer=bytes
expect 2 "has 1000 tokens > model.vocab_size 500" -- \
  $bin train sp.yaml --set run.dir=$work/small --set model.vocab_size=500
expect 3 "tokenizer .*missing.model: no such file" -- \
  $bin train sp.yaml --set run.dir=$work/miss --set data.tokenizer=$work/missing.model
expect 2 "tokenizer.json is not supported yet" -- \
  $bin data prepare "$corpus" --out x.h5 --tokenizer $work/tokenizer.json
# data.tokenizer null: checkpoint.init_from's tokenizer, and the new run's
# checkpoints carry all of init_from's tokenizer files (as an imported model's)
cp "$ckpt" init.h5
$py -c "
import h5py, numpy as np
with h5py.File('init.h5', 'a') as f:
    f['tokenizer/tokenizer_config.json'] = np.frombuffer(b'{\"add_bos_token\": true}', np.uint8)"
$bin train sp.yaml --set run.dir=$work/ft2 --set checkpoint.init_from=$work/init.h5 \
  --set data.tokenizer=null --set train.max_steps=1 --set checkpoint.every_steps=1 2> ft2.log \
  || { cat ft2.log; fail "init_from inherits the tokenizer"; }
$py - <<'PY' || fail "the fine-tuned checkpoint lost init_from's tokenizer files"
import h5py
with h5py.File("init.h5") as a, h5py.File("ft2/checkpoints/step_00000001.h5") as b:
    assert sorted(b["tokenizer"]) == ["tokenizer.model", "tokenizer_config.json"], list(b["tokenizer"])
    for k in a["tokenizer"]:
        assert a["tokenizer"][k][:].tobytes() == b["tokenizer"][k][:].tobytes(), k
    assert a.attrs["tokenizer"] == b.attrs["tokenizer"]
PY
$bin --help > /dev/null
$bin data prepare --help | grep -q "SentencePiece" || fail "data prepare --help names SentencePiece"
echo "cli_tokenizer: all checks passed"
