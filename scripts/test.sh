#!/usr/bin/env bash
# medrelay's single test command (CI runs it through .ci/run):
#
#   bash scripts/test.sh [E2E_FILTER...]
#
#   1. installs what the tests need, quickly when it is already there: Debian's chromium,
#      chromium-driver, ffmpeg, python3-venv, iproute2 (ip netns for the link-cut test), openssl
#      (test certificates), coturn (the TURN relay test); a Python venv .venv-test with aiortc
#      and pytest (tests/e2e/requirements.txt); playwright-core and ws in tests/e2e (npm ci);
#   2. runs `cargo test --workspace`;
#   3. builds `cargo build --bin medrelay`;
#   4. runs the end-to-end suite (tests/e2e/run.sh: headless Chromium, raw WebSocket and
#      aiortc clients against the real server) inside `unshare -n`, so that every packet
#      stays on 127.0.0.1, each test file under its own time limit;
#   5. prints `N passed, N failed[, N skipped]` as its last line and exits non-zero if
#      anything failed.
#
# E2E_FILTER words run only the e2e files whose names contain them (e.g. `two_party aiortc`).
# Environment: SKIP_INSTALL=1 skips step 1, SKIP_CARGO_TEST=1 skips step 2, SKIP_E2E=1 skips
# step 4; E2E_TIMEOUT (seconds, default 2400) bounds the whole e2e run. Screenshots and logs
# are left in target/e2e-artifacts/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RESULTS=$ROOT/target/test-results
E2E_TIMEOUT=${E2E_TIMEOUT:-2400}
export E2E_ARTIFACTS=$ROOT/target/e2e-artifacts
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

section() { printf '\n==== %s ====\n' "$*"; }
now() { date +%s; }
T0=$(now)

mkdir -p "$RESULTS"
rm -rf "$RESULTS"/* "$E2E_ARTIFACTS"
mkdir -p "$E2E_ARTIFACTS"

SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)

# apt-get that waits for another apt/dpkg (an install may be running) instead of failing.
apt_get() {
  local i
  for i in 1 2 3 4 5 6; do
    if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q "$@"; then
      return 0
    fi
    echo "apt-get $* failed (try $i); waiting for the apt locks..." >&2
    sleep 10
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
if [[ ${SKIP_INSTALL:-} != 1 ]]; then
  section "1. install test dependencies"

  APT_PKGS=(chromium chromium-driver ffmpeg python3-venv iproute2 openssl coturn)
  missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    echo "apt: missing ${missing[*]}"
    apt_get update
    apt_get install -y "${APT_PKGS[@]}"
  else
    echo "apt: ${APT_PKGS[*]} already installed"
  fi
  for tool in chromium ffmpeg ip unshare timeout node npm python3 openssl turnserver; do
    command -v "$tool" >/dev/null || { echo "missing tool after install: $tool" >&2; exit 1; }
  done

  VENV=$ROOT/.venv-test
  REQ=$ROOT/tests/e2e/requirements.txt
  want=$(sha256sum "$REQ" | cut -d' ' -f1)
  if [[ -x $VENV/bin/python && "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" == "$want" ]] &&
    "$VENV/bin/python" -c 'import aiortc, websockets, pytest, pytest_timeout' 2>/dev/null; then
    echo "venv: .venv-test up to date"
  else
    echo "venv: installing tests/e2e/requirements.txt into .venv-test"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
    echo "$want" >"$VENV/.requirements.sha256"
  fi

  LOCK=$ROOT/tests/e2e/package-lock.json
  want=$(sha256sum "$LOCK" | cut -d' ' -f1)
  if [[ "$(cat "$ROOT/tests/e2e/node_modules/.medrelay-lock.sha256" 2>/dev/null)" == "$want" ]]; then
    echo "npm: tests/e2e/node_modules up to date"
  else
    echo "npm: npm ci in tests/e2e"
    (cd "$ROOT/tests/e2e" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$ROOT/tests/e2e/node_modules/.medrelay-lock.sha256"
  fi
  echo "install: $(($(now) - T0)) s"
fi

# ---------------------------------------------------------------------------------------------
CARGO_LOG=$RESULTS/cargo-test.log
cargo_rc=
if [[ ${SKIP_CARGO_TEST:-} != 1 ]]; then
  section "2. cargo test --workspace"
  t=$(now)
  set +e
  cargo test --workspace 2>&1 | tee "$CARGO_LOG"
  cargo_rc=${PIPESTATUS[0]}
  set -e
  echo "cargo test: exit $cargo_rc, $(($(now) - t)) s"
fi

# ---------------------------------------------------------------------------------------------
section "3. cargo build --bin medrelay"
t=$(now)
set +e
cargo build --bin medrelay 2>&1 | tee "$RESULTS/cargo-build.log"
build_rc=${PIPESTATUS[0]}
set -e
echo "cargo build: exit $build_rc, $(($(now) - t)) s"

# ---------------------------------------------------------------------------------------------
e2e_rc=
if [[ $build_rc -eq 0 && ${SKIP_E2E:-} != 1 ]]; then
  section "4. end-to-end tests (network namespace with only lo, limit ${E2E_TIMEOUT}s)"
  t=$(now)
  set +e
  # -n: only loopback; -p -f --mount-proc --kill-child: a PID namespace, so that nothing a
  # test started (browsers, servers) outlives the run, even after a timeout.
  MEDRELAY_E2E_NETNS=1 timeout -k 30 "$E2E_TIMEOUT" \
    unshare -n -p -f --kill-child --mount-proc \
    sh -c 'ip link set lo up; exec bash tests/e2e/run.sh "$@"' sh "$RESULTS/e2e" "$@"
  e2e_rc=$?
  set -e
  echo "e2e: exit $e2e_rc, $(($(now) - t)) s"
fi

# ---------------------------------------------------------------------------------------------
section "5. results (total $(($(now) - T0)) s; artefacts in target/e2e-artifacts)"
args=(--build-rc "$build_rc")
[[ -n $cargo_rc ]] && args+=(--cargo-log "$CARGO_LOG" --cargo-rc "$cargo_rc")
[[ -n $e2e_rc ]] && args+=(--e2e-dir "$RESULTS/e2e" --e2e-rc "$e2e_rc")
exec python3 "$ROOT/scripts/summarize_results.py" "${args[@]}"
