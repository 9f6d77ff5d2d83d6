#!/usr/bin/env bash
# Runs medrelay's end-to-end suite: every tests/e2e/*.test.mjs with `node --test`, then the
# pytest (aiortc) tests, each file under its own time bound. Results go to RESULTS_DIR
# (<file>.tap / <file>.rc, pytest.xml / pytest.rc) for scripts/summarize_results.py.
#
#   bash tests/e2e/run.sh [RESULTS_DIR] [FILTER...]
#
# FILTER words select test files whose name contains one of them (e.g. `two_party aiortc`).
# It must run where the only network interface is loopback, so that every packet stays on
# 127.0.0.1. scripts/test.sh starts it that way; run by hand, it re-executes itself in a new
# network (and PID) namespace. Needs `cargo build --bin medrelay`, tests/e2e/node_modules
# and .venv-test (scripts/test.sh installs both).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
RESULTS=${1:-$ROOT/target/e2e-results}
[[ $# -gt 0 ]] && shift
FILTERS=("$@")

# --- 1. make sure we are alone on loopback --------------------------------------------------
other_ifaces=$(ip -o link show 2>/dev/null | awk -F': ' '$2 != "lo" {print $2}' || true)
if [[ -n $other_ifaces ]]; then
  if [[ -z ${MEDRELAY_E2E_NETNS:-} ]]; then
    echo "e2e: re-running inside a private network namespace (only lo)"
    exec env MEDRELAY_E2E_NETNS=1 unshare -n -p -f --kill-child --mount-proc \
      sh -c 'ip link set lo up; exec bash tests/e2e/run.sh "$@"' sh "$RESULTS" "${FILTERS[@]}"
  fi
  echo "e2e: refusing to run: interfaces other than lo are present: $other_ifaces" >&2
  exit 2
fi
ip link set lo up 2>/dev/null || true

# --- 2. settings ------------------------------------------------------------------------------
FILE_TIMEOUT=${E2E_FILE_TIMEOUT:-300}   # seconds for one node test file
PYTEST_TIMEOUT=${E2E_PYTEST_TIMEOUT:-600} # seconds for the whole pytest run
TEST_TIMEOUT_MS=${E2E_TEST_TIMEOUT_MS:-120000}
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-$ROOT/target/e2e-artifacts}
export MEDRELAY_BIN=${MEDRELAY_BIN:-$ROOT/target/debug/medrelay}
VENV_PY=$ROOT/.venv-test/bin/python
mkdir -p "$RESULTS" "$E2E_ARTIFACTS/logs"
rm -f "$RESULTS"/*.tap "$RESULTS"/*.rc "$RESULTS"/*.xml

selected() {
  [[ ${#FILTERS[@]} -eq 0 ]] && return 0
  local f
  for f in "${FILTERS[@]}"; do [[ $1 == *"$f"* ]] && return 0; done
  return 1
}

# In our own PID namespace (we are its init), end anything a killed test left behind:
# every process here was started by this script.
sweep() {
  [[ $$ -eq 1 ]] || return 0
  local p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p -eq 1 || $p -eq $BASHPID ]] && continue
    kill -9 "$p" 2>/dev/null || true
  done
}

echo "e2e: network interfaces: $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
[[ -x $MEDRELAY_BIN ]] || { echo "e2e: $MEDRELAY_BIN is missing: cargo build --bin medrelay" >&2; exit 2; }

# --- 3. node tests (headless Chromium + raw WebSocket) ----------------------------------------
cd "$ROOT/tests/e2e"
for f in *.test.mjs; do
  name=${f%.test.mjs}
  selected "$name" || continue
  echo
  echo "--- e2e (node): $f  [limit ${FILE_TIMEOUT}s] ---"
  rc=0
  timeout -k 10 "$FILE_TIMEOUT" node --test --test-concurrency=1 --test-timeout="$TEST_TIMEOUT_MS" \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$RESULTS/$name.tap" \
    "$f" || rc=$?
  [[ $rc -eq 124 || $rc -eq 137 ]] && echo "e2e: $f TIMED OUT after ${FILE_TIMEOUT}s"
  echo "$rc" >"$RESULTS/$name.rc"
  sweep
done

# --- 4. pytest (aiortc interop, HL7 over MLLP) ------------------------------------------------
# test_NAME.py is selected by a FILTER word in NAME, or by `pytest`.
py_files=()
for f in test_*.py; do
  name=${f#test_}
  name=${name%.py}
  if selected "$name" || selected pytest; then py_files+=("$f"); fi
done
if [[ ${#py_files[@]} -gt 0 ]]; then
  echo
  echo "--- e2e (pytest): ${py_files[*]}  [limit ${PYTEST_TIMEOUT}s] ---"
  rc=0
  if [[ -x $VENV_PY ]]; then
    PYTHONDONTWRITEBYTECODE=1 timeout -k 10 "$PYTEST_TIMEOUT" "$VENV_PY" -m pytest -v --junitxml="$RESULTS/pytest.xml" "${py_files[@]}" || rc=$?
    [[ $rc -eq 124 || $rc -eq 137 ]] && echo "e2e: pytest TIMED OUT after ${PYTEST_TIMEOUT}s"
  else
    echo "e2e: $VENV_PY is missing (scripts/test.sh creates it)" >&2
    rc=3
  fi
  echo "$rc" >"$RESULTS/pytest.rc"
  sweep
fi

# --- 5. verdict for this script alone ----------------------------------------------------------
status=0
for rcf in "$RESULTS"/*.rc; do
  [[ -e $rcf ]] || continue
  r=$(cat "$rcf")
  # pytest 5 = no tests collected: not a failure here (the summary counts tests).
  if [[ $r -ne 0 && ! ($rcf == */pytest.rc && $r -eq 5) ]]; then status=1; fi
done
exit $status
