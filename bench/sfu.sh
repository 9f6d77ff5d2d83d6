#!/usr/bin/env bash
# medrelay's SFU against Janus 1.1.2 (Debian's package, VideoRoom) under the same load:
#
#   bash bench/sfu.sh [-- --runs 3 --duration 15 --steps 50,100,200,400 --only medrelay ...]
#
# Installs Janus, ffmpeg and the DejaVu font if missing, builds medrelay in release, and runs
# `cargo bench -p loadgen --bench sfu` in a network namespace with only `lo`. Prints the
# table and writes it with plots into docs/benchmarks.md and docs/img/. Not part of the
# test command (it takes about 20 minutes); scripts/test.sh runs a 20 s smoke of scenario 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
need=()
command -v janus >/dev/null || need+=(janus)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v cc >/dev/null || need+=(gcc libc6-dev)
[[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
if [[ ${#need[@]} -gt 0 ]]; then
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
cargo build --release --bin medrelay
cargo bench -p loadgen --bench sfu --no-run
[[ ${1:-} == -- ]] && shift
exec unshare -n sh -c 'ip link set lo up && exec cargo bench -p loadgen --bench sfu -- "$@"' sh "$@"
