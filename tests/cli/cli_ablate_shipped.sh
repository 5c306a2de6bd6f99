#!/usr/bin/env bash
# The shipped sweeps (configs/ablations/*.yaml) validate and run end to end in
# tiny form: every variant of positions.yaml and memory.yaml trains for 2
# steps (--set applies after each variant's own set:) and is evaluated with
# the sweep's own eval settings (memory.yaml's grid cut to 2 trials and
# lengths up to 512 to stay fast); the reports have one row per variant, all
# complete, with the columns each sweep is about. rmt_passkey.yaml (27 min
# for real) and memory_families.yaml are validated with --dry-run.
# usage: cli_ablate_shipped.sh RINGTRAIN SOURCE_DIR
set -euo pipefail
bin=$1
src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
for i in $(seq 10); do cat "$src/README.md"; done > text.txt

"$bin" ablate "$src/configs/ablations/rmt_passkey.yaml" --dry-run > rmt.txt ||
  fail "rmt_passkey.yaml: $(cat rmt.txt)"
grep -q "15 runs, every resolved config valid" rmt.txt || fail "rmt_passkey plan: $(cat rmt.txt)"
grep -q "seg8-s3 (follow-up" rmt.txt || fail "rmt_passkey plan: $(cat rmt.txt)"
"$bin" ablate "$src/configs/ablations/memory_families.yaml" --dry-run > fam.txt ||
  fail "memory_families.yaml: $(cat fam.txt)"
grep -q "8 runs, every resolved config valid" fam.txt || fail "memory_families plan: $(cat fam.txt)"
# without a data file, positions.yaml says how to give one
rc=0
"$bin" ablate "$src/configs/ablations/positions.yaml" --dry-run > pos.txt 2>&1 || rc=$?
[ $rc -eq 2 ] && grep -q "does not exist .*--set data.train=PATH" pos.txt ||
  fail "positions.yaml without data: exit $rc: $(cat pos.txt)"

tiny=(--no-plots --set train.max_steps=2 --set log.every_steps=1)
"$bin" ablate "$src/configs/ablations/positions.yaml" --set data.train=text.txt \
  --set data.val=text.txt "${tiny[@]}" 2> pos.err || fail "positions.yaml: $(cat pos.err)"
# memory.yaml with its evaluation grid cut down (2 trials, lengths up to 512),
# every variant kept
mkdir -p cfg/ablations cfg/rmt
cp "$src/configs/rmt/passkey.yaml" cfg/rmt/
sed -e 's/passkey: {seq_lens: \[256, 384, 512, 768, 1280, 2304\], depths: \[0\], trials: 20}/passkey: {seq_lens: [256, 384, 512], depths: [0], trials: 2}/' \
    -e 's/recall: {seq_lens: \[128, 512\], trials: 40}/recall: {seq_lens: [128], trials: 2}/' \
    -e 's/max_sequences: 8/max_sequences: 2/' "$src/configs/ablations/memory.yaml" > cfg/ablations/memory.yaml
grep -q "trials: 2}" cfg/ablations/memory.yaml || fail "memory.yaml's eval grid was not cut down"
"$bin" ablate cfg/ablations/memory.yaml "${tiny[@]}" 2> mem.err ||
  fail "memory.yaml: $(cat mem.err)"

/usr/bin/python3 - <<'PY'
import csv
def rows(sweep):
    return {r["variant"]: r for r in csv.DictReader(open(f"runs/{sweep}/summary.csv"))}
p = rows("positions")
assert len(p) == 11, p.keys()
for name, r in p.items():
    assert r["status"] == "complete", (name, r)
    for T in (128, 256, 512, 1024):
        assert float(r[f"ppl@{T}"]) > 1, (name, T, r)
for name in ("position-rope", "position-alibi", "position-none", "ft512-yarn"):
    for c in ("tokens_per_s", "step_ms", "peak_mem_mb", "flops", "params"):
        assert float(p[name][c]) > 0, (name, c, p[name])
m = rows("memory")
assert len(m) == 20, m.keys()
for name, r in m.items():
    assert r["status"] == "complete", (name, r)
for name in ("bptt-full", "bptt-window2", "bptt-none", "no-memory", "bptt-full-reset", "knn",
             "knn-reset", "compressive", "compressive-reset", "plain-2seg"):
    for T in (256, 384, 512):
        assert 0 <= float(m[name][f"passkey@{T}"]) <= 1, (name, m[name])
for kind in ("rmt", "knn", "compressive"):
    for name in (f"recall-{kind}", f"recall-{kind}-reset"):
        assert 0 <= float(m[name]["recall"]) <= 1, (name, m[name])
PY
[ ! -e runs/memory/passkey.png ] || fail "--no-plots drew plots"
echo "cli_ablate_shipped: ok"
