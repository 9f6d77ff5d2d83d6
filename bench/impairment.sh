#!/usr/bin/env bash
# What a specialist on a rural or cellular link sees (issue 6): a consult between two real
# headless Chromiums, the specialist behind an emulated link (tests/e2e/tools/linkem.py; this
# kernel has no netem), under four link profiles. Prints one row per profile (video freeze
# share, received resolution and frame rate, audio concealment, recovery after the outage)
# and writes the table into docs/benchmarks.md between the impairment-bench markers.
#
#   bash bench/impairment.sh [--duration 40] [--warmup 10] [--profiles clean,1mbit,500k,outage] [--no-write] [--no-fec]
#
# --no-fec starts the server without RED and ULPFEC parity (--fec=false) and only prints.
#
# Builds medrelay in release unless MEDRELAY_BIN names a binary. Runs in a network namespace
# with only `lo` (re-executes itself with `unshare -n`); takes about 4 minutes at the defaults.
# Needs ffmpeg, Debian's chromium and tests/e2e/node_modules (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z ${MEDRELAY_IMPAIRMENT_NETNS:-} ]]; then
  for tool in ffmpeg node python3 "${CHROMIUM_PATH:-/usr/bin/chromium}"; do
    command -v "$tool" >/dev/null || { echo "impairment bench: $tool is missing" >&2; exit 2; }
  done
  [[ -d tests/e2e/node_modules/playwright-core ]] || { echo "impairment bench: tests/e2e/node_modules is missing (scripts/test.sh installs it)" >&2; exit 2; }
  if [[ -z ${MEDRELAY_BIN:-} ]]; then
    cargo build --release --bin medrelay
    export MEDRELAY_BIN=$PWD/target/release/medrelay
  fi
  exec env MEDRELAY_IMPAIRMENT_NETNS=1 unshare -n sh -c 'ip link set lo up && exec bash bench/impairment.sh "$@"' sh "$@"
fi
export E2E_ARTIFACTS=${E2E_ARTIFACTS:-$PWD/target/impairment-artifacts}
exec node bench/impairment/run.mjs "$@"
