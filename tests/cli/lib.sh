# Shared helpers of the CLI test scripts that count failures and report them
# at the end (source it after `cd` into the work dir):
#   fail MESSAGE                     one failure, the script goes on
#   expect CODE PATTERN -- command   exit code CODE and output matching the
#                                    extended regex PATTERN (output in out.txt)
#   last_step METRICS_JSONL          the last step with a loss record (0: none)
#   wait_for_step RUN N [SECONDS]    until RUN/metrics.jsonl has a loss record
#                                    at step >= N (default 10 s; 1: timed out)
#   same_losses REF_RUN RUN          every loss record of RUN (a resumed run
#                                    logs some steps twice) equals REF_RUN's at
#                                    that step (relative 1e-6), and RUN logged
#                                    every step from 1 to its last
#   mpi_train CONFIG NAME NP [ARGS]  `train CONFIG` on NP ranks through
#                                    $launch into $work/NAME (log NAME.log);
#                                    a failure is counted with the log's tail
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
expect() {
  local code=$1 pattern=$2
  shift 3
  "$@" > out.txt 2>&1
  local got=$?
  if [ "$got" != "$code" ] || ! grep -qE -- "$pattern" out.txt; then
    echo "FAIL: '$*' exited $got (want $code), output must match /$pattern/:" >&2
    sed 's/^/    /' out.txt >&2
    failures=$((failures + 1))
  fi
}

mpi_train() {
  local config=$1 name=$2 np=$3
  shift 3
  $launch -np "$np" "$bin" train "$config" --set run.dir="$work/$name" "$@" > "$name.log" 2>&1 \
    || { fail "$name (np $np $*) exited non-zero"; sed 's/^/    /' "$name.log" | tail -20 >&2; }
}

# Python for reading run directories, outside a GPU bundle's LD_LIBRARY_PATH
run_py() { env -u LD_LIBRARY_PATH "${PYTHON:-python3}" "$@"; }
last_step() {
  run_py -c "import json,sys;print(max([r['step'] for r in map(json.loads,open(sys.argv[1])) if 'loss' in r] or [0]))" "$1"
}
wait_for_step() {
  local deadline=$((SECONDS + ${3:-10}))
  until [ -f "$1/metrics.jsonl" ] && [ "$(last_step "$1/metrics.jsonl" 2>/dev/null || echo 0)" -ge "$2" ]; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.02
  done
}
same_losses() {
  run_py - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'PY'
import json, sys
def losses(p):
    return [(r["step"], r["loss"]) for r in map(json.loads, open(p)) if "loss" in r]
ref = dict(losses(sys.argv[1]))
got = losses(sys.argv[2])
assert got, "no loss records"
for step, loss in got:
    assert step in ref, f"step {step} not in the reference run"
    assert abs(loss - ref[step]) <= 1e-6 * abs(ref[step]), (step, loss, ref[step])
steps = set(s for s, _ in got)
assert steps >= set(range(1, max(steps) + 1)), "steps missing"
PY
}
