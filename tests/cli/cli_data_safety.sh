#!/usr/bin/env bash
# Data safety through the CLI (issue 18 items 1-6): damaged checkpoints that
# HDF5 opens (a dataset rewritten as zeros, a changed step attribute, a
# corrupt variable-length string), a real full disk during a save, torn
# metrics lines, the run-dir lock (also under mpirun), a renamed copy of a
# resolved config, and SIGTERM to launch/local.sh with steps longer than
# mpirun's one-second kill delay.
# usage: cli_data_safety.sh RINGTRAIN SOURCE_DIR
set -uo pipefail
bin=$1
src=$2
py=/usr/bin/python3
work=$(mktemp -d)
mnt=""
cleanup() { [ -n "$mnt" ] && umount "$mnt" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
source "$src/tests/cli/lib.sh"
have_h5py() { $py -c "import h5py, numpy" 2>/dev/null; }
all_lines_json() {
  $py -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]" "$1" 2>/dev/null
}

cat > tiny.yaml <<YAML
run: {name: t, dir: $work/run, seed: 5}
model: {vocab_size: 256, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2}
data: {train: {synthetic: passkey}, shuffle: true}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 4, max_steps: 4,
        schedule: {type: constant, warmup_steps: 0}}
checkpoint: {every_steps: 2, keep_last: 5}
log: {every_steps: 1}
YAML
$bin train tiny.yaml --set run.dir=$work/ref > ref.log 2>&1 || fail "reference run"
good=$work/ref/checkpoints/step_00000004.h5
expect 0 "integrity: ok \(" -- $bin inspect $good

# ---- 1. damage HDF5 itself cannot see -------------------------------------
if have_h5py; then
  # a weight tensor that reads as zeros (what a damaged chunk-index key does)
  cp $good zero.h5
  $py -c "
import h5py, sys
with h5py.File('zero.h5', 'r+') as f:
    f['model/model.layers.0.mlp.down_proj.weight'][...] = 0
"
  ds="/model/model\.layers\.0\.mlp\.down_proj\.weight"
  expect 3 "zero\.h5: integrity check failed: dataset $ds reads back with digest" -- $bin inspect zero.h5
  expect 3 "zero\.h5: integrity check failed: dataset $ds" -- $bin eval zero.h5 --seq-len 256 --max-sequences 1
  expect 3 "zero\.h5: integrity check failed" -- $bin generate zero.h5 --prompt ab --max-new 2
  expect 3 "zero\.h5: integrity check failed" -- $bin train tiny.yaml --set run.dir=$work/z0 --set checkpoint.init_from=$work/zero.h5
  # the root step changed (a run resumed at another step than its weights')
  cp $good step.h5
  $py -c "
import h5py, numpy as np
with h5py.File('step.h5', 'r+') as f:
    f.attrs.modify('step', np.int64(2))
"
  expect 3 "step\.h5: integrity check failed: root attribute 'step' is 2 but the integrity record says 4" -- $bin inspect step.h5
  # train: sets the damaged newest checkpoint aside, falls back, same losses
  cp -r ref fb && cp zero.h5 fb/checkpoints/step_00000004.h5 && cp ref/metrics.jsonl fb/metrics.jsonl
  expect 0 "step_00000004\.h5 is unusable.*integrity check failed" -- $bin train tiny.yaml --set run.dir=$work/fb
  grep -q "resuming from .*step_00000002\.h5 (step 2)" out.txt || fail "no fallback to step 2"
  test -f fb/checkpoints/step_00000004.h5.corrupt || fail "the damaged checkpoint was not set aside as .corrupt"
  same_losses ref fb || fail "fallback resume changed the losses"
  # a file name that disagrees with the step inside
  cp -r ref nm && cp ref/checkpoints/step_00000002.h5 nm/checkpoints/step_00000004.h5
  expect 0 "step_00000004\.h5 is unusable.*file name says step 4 but the root attribute 'step' is 2" -- $bin train tiny.yaml --set run.dir=$work/nm

  # ---- 2. files without a record (h5py): load, say so; a corrupt
  # variable-length string is exit 3, never a crash or a hang
  $bin inspect $good | sed -n '/^name /,/^total/p' | grep -vE '^(name|total)' \
    | sed 's/[][,]//g' | awk '{$NF=""; print}' > specs.txt
  printf 'model: {vocab_size: 256, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,\n        num_attention_heads: 2}\n' > model_only.yaml
  $py "$src/tests/reference/make_h5_checkpoint.py" write h5py.h5 specs.txt --config=$work/model_only.yaml \
    || fail "make_h5_checkpoint.py write"
  expect 0 "integrity: no integrity record" -- $bin inspect h5py.h5
  $py - h5py.h5 vlen_bad.h5 <<'PY'
import sys, h5py, struct
src, dst = sys.argv[1], sys.argv[2]
with h5py.File(src, "r+") as f:
    f.create_group("trainer").attrs["state"] = '{"step": 7, "note": "' + "x" * 300 + '"}'
data = bytearray(open(src, "rb").read())
# the global heap object holding the state string: its 8-byte size field
at = data.find(b'{"step": 7')
assert at > 16
size = struct.unpack_from("<Q", data, at - 8)[0]
assert size >= 300, size
struct.pack_into("<Q", data, at - 8, 1 << 40)
open(dst, "wb").write(bytes(data))
PY
  for cmd in "inspect vlen_bad.h5" "eval vlen_bad.h5 --seq-len 256 --max-sequences 1"; do
    timeout 120 $bin $cmd > out.txt 2>&1
    rc=$?
    if [ $rc != 3 ] && [ $rc != 0 ]; then fail "$cmd on a corrupt variable-length string exited $rc"; sed 's/^/    /' out.txt >&2; fi
  done
else
  echo "cli_data_safety: SKIPPED the h5py cases (/usr/bin/python3 lacks h5py)"
fi

# ---- 3. a full disk during a save: exit 3 (not 139), earlier checkpoint and
# metrics.jsonl intact; a torn metrics line is repaired on resume
mkdir -p small
if mount -t tmpfs -o size=400k tmpfs small 2>/dev/null; then
  mnt=$work/small
  $bin train tiny.yaml --set run.dir=$work/small/run --set train.max_steps=20 \
    --set checkpoint.every_steps=1 --set checkpoint.keep_last=100 > full.log 2>&1
  rc=$?
  [ $rc = 3 ] || { fail "full disk: exit $rc, want 3"; tail -3 full.log >&2; }
  grep -q "No space left on device" full.log || fail "full disk: no 'No space left on device'"
  newest=$(ls small/run/checkpoints | grep -E '^step_[0-9]+\.h5$' | tail -1)
  [ -n "$newest" ] || fail "full disk: no checkpoint survived"
  [ -n "$newest" ] && { $bin inspect small/run/checkpoints/$newest > /dev/null 2>&1 || fail "full disk: $newest does not load"; }
  ls small/run/checkpoints | grep -q '\.tmp$' && fail "full disk: a .tmp file was left"
  all_lines_json small/run/metrics.jsonl || fail "full disk: metrics.jsonl has a torn line"
  umount small && mnt=""
else
  echo "cli_data_safety: SKIPPED the real full disk (cannot mount a tmpfs here)"
fi
cp -r ref torn
printf '{"step": 5, "loss": 1.2' >> torn/metrics.jsonl
expect 0 "metrics\.jsonl: removed a torn last line" -- $bin train tiny.yaml --set run.dir=$work/torn --set train.max_steps=5
all_lines_json torn/metrics.jsonl || fail "a torn metrics line survived the resume"
[ "$(last_step torn/metrics.jsonl)" = 5 ] || fail "torn: the resumed run did not log step 5"

# ---- 4. the run-dir lock
RINGTRAIN_TEST_STEP_SLEEP_MS=300 $bin train tiny.yaml --set run.dir=$work/lk --set train.max_steps=100000 > lk.log 2>&1 &
holder=$!
for _ in $(seq 1 200); do grep -q "step 1/" lk.log 2>/dev/null && break; sleep 0.05; done
expect 2 "run dir .*lk is in use by another training process: PID $holder on host $(hostname)" -- $bin train tiny.yaml --set run.dir=$work/lk
kill -9 $holder; wait $holder 2>/dev/null
expect 0 "took over the lock left by PID $holder on host $(hostname)" -- $bin train tiny.yaml --set run.dir=$work/lk --set train.max_steps=1
if command -v mpirun > /dev/null; then
  RINGTRAIN_TEST_STEP_SLEEP_MS=300 bash $src/launch/local.sh -np 2 $bin train tiny.yaml --set run.dir=$work/lkm --set train.max_steps=100000 > lkm.log 2>&1 &
  launcher=$!
  for _ in $(seq 1 400); do grep -q "step 1/" lkm.log 2>/dev/null && break; sleep 0.05; done
  expect 2 "in use by another training process: PID [0-9]+ on host" -- bash $src/launch/local.sh -np 2 $bin train tiny.yaml --set run.dir=$work/lkm
  expect 2 "in use by another training process" -- $bin train tiny.yaml --set run.dir=$work/lkm
  kill -TERM $launcher; wait $launcher || fail "local.sh -np 2 lock holder: SIGTERM did not exit 0"
fi

# ---- 5. a renamed copy of the resolved config starts a new run
cat > named.yaml <<YAML
run: {name: first, seed: 5}
model: {vocab_size: 256, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1,
        num_attention_heads: 2}
data: {train: {synthetic: passkey}}
train: {seq_len: 256, micro_batch_size: 1, global_batch_size: 1, max_steps: 2}
YAML
$bin train named.yaml > /dev/null 2>&1 || fail "named run"
grep -q "dir:" runs/first/config.yaml && fail "the resolved config pins the default run.dir"
$bin train runs/first/config.yaml --set run.name=second > /dev/null 2>&1 || fail "renamed copy"
test -f runs/second/checkpoints/step_00000002.h5 || fail "the renamed copy did not train in runs/second"
expect 0 "run\.dir \(runs/first\) and run\.name \(second.*run\.dir wins" -- $bin train named.yaml --set run.dir=runs/first --set run.name=second
expect 2 "run\.name '\.\./up' must be a plain name" -- $bin train named.yaml --set run.name=../up
expect 2 "run\.name 'a/b' must be a plain name" -- $bin train named.yaml --set run.name=a/b
$bin extend runs/first/checkpoints/step_00000002.h5 --to 512 --method linear --out ext.yaml > /dev/null 2>&1 || fail "extend"
grep -qE "^\s*dir:" ext.yaml && fail "extend's output pins run.dir"

# ---- 6. SIGTERM to launch/local.sh with steps longer than mpirun's 1 s kill
if command -v mpirun > /dev/null; then
  # 2 ranks (dp 2), 2 micro-batches each of 1.5 s: a step takes 3 s
  RINGTRAIN_TEST_STEP_SLEEP_MS=1500 bash $src/launch/local.sh -np 2 $bin train tiny.yaml --set run.dir=$work/st --set train.max_steps=100000 --set checkpoint.every_steps=1000 > st.log 2>&1 &
  launcher=$!
  for _ in $(seq 1 600); do grep -q "step 2/" st.log 2>/dev/null && break; sleep 0.05; done
  kill -TERM $launcher
  wait $launcher
  rc=$?
  [ $rc = 0 ] || { fail "SIGTERM to local.sh: exit $rc, want 0"; tail -5 st.log >&2; }
  n=$(last_step st/metrics.jsonl)
  grep -q "stopped by SIGTERM at step $n" st.log || fail "no 'stopped by SIGTERM at step $n'"
  test -f st/checkpoints/$(printf 'step_%08d.h5' $n) || fail "no checkpoint at the stop step $n"
  expect 0 "resuming from .*step $n\)" -- bash $src/launch/local.sh -np 2 $bin train tiny.yaml --set run.dir=$work/st --set train.max_steps=$((n + 2))
  bash $src/launch/local.sh -np 2 $bin train tiny.yaml --set run.dir=$work/stref --set train.max_steps=$((n + 2)) > /dev/null 2>&1 || fail "np 2 reference"
  same_losses stref st || fail "resume after SIGTERM under mpirun changed the losses"
else
  echo "cli_data_safety: SKIPPED the mpirun cases (no mpirun)"
fi

if [ "$failures" -ne 0 ]; then echo "cli_data_safety: $failures case(s) failed" >&2; exit 1; fi
echo "cli_data_safety: all cases passed"
