#!/usr/bin/env python3
"""linkem: a userspace link emulator between this network namespace and a named one.

Why: issue 6 wants consults tested over rural and cellular links (rate limit, delay, loss,
outages). The usual tool is `tc qdisc ... netem` on a veth pair, but this kernel (and CI's,
same image) is built without CONFIG_NET_SCH_NETEM ("Specified qdisc kind is unknown"); only
tbf/htb/pfifo exist, which cannot delay or lose packets. TUN devices do work, so the link is
emulated here, in userspace.

How: two TUN devices (layer 3, no packet info). `<name>h` stays in the calling namespace
with HOST_IP/30, `<name>n` is created inside namespace NS (it must exist: `ip netns add NS`)
with NS_IP/30. Every IP packet the kernel routes into one TUN is read here, passed through
that direction's impairment (Link below) and written into the other TUN, where the other
namespace's kernel receives it. Directions: `down` is host -> namespace, `up` is
namespace -> host. Both devices vanish when this process exits.

Impairment per direction (like netem + a tail-drop queue):
  loss     random loss in percent, applied on arrival
  rate     kbit/s; serialisation: departure = max(now, last departure) + bits / rate
  queue    drop-tail when the packet would wait more than `queue` ms (default 500) or when
           `qpkts` packets (default 1000) are already waiting for the wire
  delay    fixed propagation delay in ms added to the departure time, plus a uniform
           0..`jitter` ms that never reorders (delivery = max(that, previous delivery))
  cut      drops everything, including packets already in flight; `restore` ends it

Control: one command per line on stdin, one answer line on stdout (`ok ...` / `error ...`):
  shape [dir=down|up|both] [rate=KBIT] [delay=MS] [jitter=MS] [loss=PCT] [queue=MS] [qpkts=N]
        (unnamed settings return to "none"; `rate=0` means unlimited)
  unshape                   clean link both ways (a cut stays in force)
  cut | restore
  stats                     ok {"down": {...}, "up": {...}} counters: offered,
                            bytes_offered, forwarded, bytes, dropped_loss, dropped_queue,
                            dropped_cut, queued (now), settings
  quit
The first line printed is `ok ready host=<dev> ns=<dev>`. EOF on stdin ends the process.

Diagnostics: with LINKEM_TRACE=FILE in the environment, every RTP packet going `down` (UDP,
version 2, not RTCP; SRTP leaves the header readable) is appended to FILE as one line:
`unix_time ssrc payload_type marker seq timestamp rtp_bytes fate`, where fate is the delay
until delivery in seconds or the counter that dropped it (dropped_loss, dropped_queue,
dropped_cut). It shows which packets a link lost and whether a retransmission followed.

Usage: linkem.py --ns NS [--name lem0] [--host-ip 10.78.0.1] [--ns-ip 10.78.0.2] [--seed N]
Needs CAP_NET_ADMIN (root) and `ip` (iproute2). Python standard library only.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import json
import os
import random
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MAX_PACKET = 65535


class Link:
    """One direction's impairment. Pure scheduling: every call is given the time `now` (s).

    `offer(size, now)` decides a packet's fate: it returns the delivery time or None when
    the packet is dropped (counted by reason). `due(now)` pops the packets whose time came.
    """

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()
        self.queue: collections.deque = collections.deque()  # (deliver_at, packet), in order
        self.wire: collections.deque = collections.deque()  # departure times still ahead
        self.last_departure = 0.0
        self.last_delivery = 0.0
        self.is_cut = False
        self.counters = dict(offered=0, bytes_offered=0, forwarded=0, bytes=0, dropped_loss=0, dropped_queue=0, dropped_cut=0)
        self.configure()

    def configure(self, rate=0.0, delay=0.0, jitter=0.0, loss=0.0, queue=500.0, qpkts=1000):
        if min(rate, delay, jitter, loss, queue) < 0 or loss > 100 or qpkts < 1:
            raise ValueError("settings must be >= 0, loss <= 100, qpkts >= 1")
        self.rate_kbit = float(rate)
        self.delay_s = delay / 1000.0
        self.jitter_s = jitter / 1000.0
        self.loss_pct = float(loss)
        self.queue_s = queue / 1000.0
        self.qpkts = int(qpkts)

    def settings(self) -> dict:
        return dict(rate=self.rate_kbit, delay=self.delay_s * 1000, jitter=self.jitter_s * 1000,
                    loss=self.loss_pct, queue=self.queue_s * 1000, qpkts=self.qpkts, cut=self.is_cut)

    def offer(self, size: int, now: float, packet=None):
        self.counters["offered"] += 1
        self.counters["bytes_offered"] += size
        if self.is_cut:
            self.counters["dropped_cut"] += 1
            return None
        if self.loss_pct and self.rng.random() * 100.0 < self.loss_pct:
            self.counters["dropped_loss"] += 1
            return None
        while self.wire and self.wire[0] <= now:
            self.wire.popleft()
        if self.rate_kbit > 0:
            start = max(now, self.last_departure)
            if start - now > self.queue_s or len(self.wire) >= self.qpkts:
                self.counters["dropped_queue"] += 1
                return None
            departure = start + size * 8 / (self.rate_kbit * 1000.0)
            self.last_departure = departure
            self.wire.append(departure)
        else:
            departure = now
        deliver = departure + self.delay_s
        if self.jitter_s:
            deliver += self.rng.uniform(0.0, self.jitter_s)
        deliver = max(deliver, self.last_delivery)  # jitter never reorders
        self.last_delivery = deliver
        self.queue.append((deliver, packet if packet is not None else size))
        return deliver

    def due(self, now: float) -> list:
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, pkt = self.queue.popleft()
            self.counters["forwarded"] += 1
            self.counters["bytes"] += len(pkt) if isinstance(pkt, (bytes, bytearray)) else pkt
            out.append(pkt)
        return out

    def next_due(self):
        return self.queue[0][0] if self.queue else None

    def cut(self):
        self.is_cut = True
        self.counters["dropped_cut"] += len(self.queue)
        self.queue.clear()
        self.wire.clear()
        self.last_departure = self.last_delivery = 0.0

    def restore(self):
        self.is_cut = False

    def stats(self) -> dict:
        return dict(self.counters, queued=len(self.queue), **{"settings": self.settings()})


def parse_shape(words):
    """`shape` arguments -> (directions, settings dict). Raises ValueError."""
    dirs = ("down", "up")
    settings = {}
    names = {"rate": float, "delay": float, "jitter": float, "loss": float, "queue": float, "qpkts": int}
    for w in words:
        key, sep, value = w.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {w!r}")
        if key == "dir":
            if value not in ("down", "up", "both"):
                raise ValueError(f"dir must be down, up or both, got {value!r}")
            dirs = ("down", "up") if value == "both" else (value,)
        elif key in names:
            settings[key] = names[key](value)
        else:
            raise ValueError(f"unknown setting {key!r}")
    return dirs, settings


# --- devices and namespaces -----------------------------------------------------------------


def open_tun(name: str) -> int:
    """A TUN device `name` in the current thread's network namespace (gone when fd closes)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def open_tun_in(ns: str, name: str) -> int:
    """Opens the TUN inside namespace `ns`: the device belongs to the namespace the fd was
    opened in, so setns() there, open, and setns() back before anything else runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    there = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            return open_tun(name)
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:  # cannot go on in the wrong namespace
                os._exit(3)
    finally:
        os.close(here)
        os.close(there)


def ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def quiet_ipv6(dev, ns=None):
    """No IPv6 on the TUNs (router solicitations, extra ICE candidates); best effort."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"]
    subprocess.run(cmd, capture_output=True, timeout=10)


# --- the loop -------------------------------------------------------------------------------


class Emulator:
    def __init__(self, host_fd, ns_fd, seed=None):
        rng = random.Random(seed)
        self.fds = {"down": (host_fd, ns_fd), "up": (ns_fd, host_fd)}  # (read from, write to)
        self.links = {"down": Link(rng), "up": Link(rng)}
        self.stop = False

    def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error empty command"
        cmd, args = words[0], words[1:]
        try:
            if cmd == "shape":
                dirs, settings = parse_shape(args)
                for d in dirs:
                    self.links[d].configure(**settings)
                return "ok shape " + " ".join(f"{d}:{json.dumps(self.links[d].settings(), separators=(',', ':'))}" for d in dirs)
            if cmd == "unshape" and not args:
                for link in self.links.values():
                    link.configure()
                return "ok unshape"
            if cmd == "cut" and not args:
                for link in self.links.values():
                    link.cut()
                return "ok cut"
            if cmd == "restore" and not args:
                for link in self.links.values():
                    link.restore()
                return "ok restore"
            if cmd == "stats" and not args:
                return "ok " + json.dumps({d: link.stats() for d, link in self.links.items()}, separators=(",", ":"))
            if cmd == "quit" and not args:
                self.stop = True
                return "ok quit"
        except ValueError as e:
            return f"error {e}"
        return f"error unknown command {line.strip()!r}"

    def run(self):
        host_fd, ns_fd = self.fds["down"]
        readers = [0, host_fd, ns_fd]
        inbuf = b""
        while True:
            now = time.monotonic()
            nexts = [t for t in (link.next_due() for link in self.links.values()) if t is not None]
            timeout = max(0.0, min(nexts) - now) if nexts else 1.0
            ready, _, _ = select.select(readers, [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                if fd == 0:
                    chunk = os.read(0, 4096)
                    if not chunk:
                        return
                    inbuf += chunk
                    while b"\n" in inbuf:
                        line, inbuf = inbuf.split(b"\n", 1)
                        if line.strip():
                            reply(self.command(line.decode(errors="replace")))
                            if self.stop:
                                return
                    continue
                direction = "down" if fd == host_fd else "up"
                link = self.links[direction]
                for _ in range(64):  # drain what is there, then look at the others
                    try:
                        pkt = os.read(fd, MAX_PACKET)
                    except BlockingIOError:
                        break
                    before = dict(link.counters) if TRACE else None
                    at = link.offer(len(pkt), now, pkt)
                    if TRACE and direction == "down":
                        trace_rtp(now, pkt, at, link.counters, before)
            for direction, link in self.links.items():
                out_fd = self.fds[direction][1]
                for pkt in link.due(now):
                    try:
                        os.write(out_fd, pkt)
                    except OSError:
                        pass  # the other side cannot take it (device down): lost


TRACE = open(os.environ["LINKEM_TRACE"], "a", buffering=1) if os.environ.get("LINKEM_TRACE") else None


def trace_rtp(now, pkt, at, counters, before):
    """Appends one RTP packet's header fields and fate to the trace (see the module doc)."""
    ihl = (pkt[0] & 0x0F) * 4
    if len(pkt) < ihl + 8 + 12 or pkt[9] != 17:
        return
    r = pkt[ihl + 8:]
    if r[0] >> 6 != 2 or 192 <= r[1] <= 223:
        return
    fate = f"{at - now:.4f}" if at is not None else next(k for k in counters if k.startswith("dropped") and counters[k] != before[k])
    ssrc = int.from_bytes(r[8:12], "big")
    seq = int.from_bytes(r[2:4], "big")
    ts = int.from_bytes(r[4:8], "big")
    TRACE.write(f"{time.time():.4f} {ssrc} {r[1] & 0x7F} {r[1] >> 7} {seq} {ts} {len(r)} {fate}\n")


def reply(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", required=True, help="target network namespace (ip netns add NS)")
    ap.add_argument("--name", default="lem0", help="device prefix: NAMEh here, NAMEn in NS (<= 14 chars)")
    ap.add_argument("--host-ip", default="10.78.0.1")
    ap.add_argument("--ns-ip", default="10.78.0.2")
    ap.add_argument("--prefix", type=int, default=30)
    ap.add_argument("--seed", type=int, default=None, help="random seed for loss and jitter")
    a = ap.parse_args()
    if len(a.name) > 14:
        ap.error("--name is at most 14 characters")
    if not os.path.exists(f"/var/run/netns/{a.ns}"):
        reply(f"error no network namespace {a.ns} (ip netns add {a.ns})")
        return 2
    host_dev, ns_dev = a.name + "h", a.name + "n"
    try:
        host_fd = open_tun(host_dev)
        ns_fd = open_tun_in(a.ns, ns_dev)
        quiet_ipv6(host_dev)
        quiet_ipv6(ns_dev, ns=a.ns)
        ip("addr", "add", f"{a.host_ip}/{a.prefix}", "dev", host_dev)
        ip("link", "set", host_dev, "up")
        ip("link", "set", "lo", "up", ns=a.ns)
        ip("addr", "add", f"{a.ns_ip}/{a.prefix}", "dev", ns_dev, ns=a.ns)
        ip("link", "set", ns_dev, "up", ns=a.ns)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        reply(f"error setup: {e}")
        return 2
    emu = Emulator(host_fd, ns_fd, seed=a.seed)
    reply(f"ok ready host={host_dev} ns={ns_dev}")
    try:
        emu.run()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
