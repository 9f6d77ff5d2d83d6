#!/usr/bin/env bash
# Start Janus (VideoRoom plugin + plain WebSocket transport on 127.0.0.1:8188 only)
# in the foreground, for the load benchmark.
#
#   bench/janus/start.sh RUN_DIR [extra janus args...] &
#
# RUN_DIR gets conf/ (templated configs) and plugins/, transports/, events/,
# loggers/ folders holding symlinks to just the two modules Janus should load.
# The script ends with `exec janus`, so the PID of a backgrounded call is
# Janus's own PID. Works in a network namespace that only has `lo`: Janus's
# ICE candidates are 127.0.0.1 host candidates (UDP), see lo_shim.c.
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 RUN_DIR [extra janus args...]" >&2
	exit 2
fi
RUN_DIR=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_install() {
	echo "installing Debian package(s): $*" >&2
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2 || {
		$SUDO apt-get update >&2
		$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >&2
	}
}
command -v janus >/dev/null 2>&1 || apt_install janus
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev

# Where the Debian package keeps its modules (e.g. /usr/lib/x86_64-linux-gnu/janus).
LIBDIR=""
for d in /usr/lib/*/janus /usr/lib/janus /usr/local/lib/janus /opt/janus/lib/janus; do
	if [ -e "$d/plugins/libjanus_videoroom.so" ]; then LIBDIR=$d; break; fi
done
if [ -z "$LIBDIR" ]; then
	echo "cannot find libjanus_videoroom.so" >&2
	exit 1
fi

mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
rm -rf "$RUN_DIR/conf" "$RUN_DIR/plugins" "$RUN_DIR/transports" "$RUN_DIR/events" "$RUN_DIR/loggers"
mkdir -p "$RUN_DIR/conf" "$RUN_DIR/plugins" "$RUN_DIR/transports" "$RUN_DIR/events" "$RUN_DIR/loggers"
ln -s "$LIBDIR/plugins/libjanus_videoroom.so" "$RUN_DIR/plugins/libjanus_videoroom.so"
ln -s "$LIBDIR/transports/libjanus_websockets.so" "$RUN_DIR/transports/libjanus_websockets.so"

# Janus never gathers ICE candidates on loopback interfaces; lo_shim.c hides
# the IFF_LOOPBACK flag from it so 127.0.0.1 works (see the comment in lo_shim.c).
cc -O2 -shared -fPIC -o "$RUN_DIR/lo_shim.so" "$HERE/lo_shim.c" -ldl

for f in "$HERE"/*.jcfg; do
	sed -e "s|@RUN_DIR@|$RUN_DIR|g" "$f" > "$RUN_DIR/conf/$(basename "$f")"
done

export LD_PRELOAD="$RUN_DIR/lo_shim.so${LD_PRELOAD:+:$LD_PRELOAD}"
exec janus -F "$RUN_DIR/conf" -C "$RUN_DIR/conf/janus.jcfg" "$@"
