# Shared helpers of the CLI test scripts that count failures and report them
# at the end (source it after `cd` into the work dir):
#   fail MESSAGE                     one failure, the script goes on
#   expect CODE PATTERN -- command   exit code CODE and output matching the
#                                    extended regex PATTERN (output in out.txt)
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
