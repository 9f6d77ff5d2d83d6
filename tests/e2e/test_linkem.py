"""The link emulator's scheduling (tools/linkem.py `Link`), with time passed in."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))

from linkem import Link, parse_shape  # noqa: E402


def test_clean_link_delivers_at_once_and_counts_bytes():
    link = Link()
    assert link.offer(100, 10.0, b"x" * 100) == 10.0
    assert link.due(10.0) == [b"x" * 100]
    assert link.counters["forwarded"] == 1 and link.counters["bytes"] == 100


def test_rate_serialises_back_to_back_packets_then_adds_delay():
    link = Link()
    link.configure(rate=1000, delay=100)  # 1000 bytes = 8 ms on the wire
    times = [link.offer(1000, 0.0) for _ in range(3)]
    assert times == pytest.approx([0.108, 0.116, 0.124])
    assert link.due(0.115) == [1000]
    # A packet after the wire went idle starts at its own arrival.
    assert link.offer(1000, 1.0) == pytest.approx(1.108)


def test_queue_limit_drops_tail_beyond_its_time_or_packets():
    link = Link()
    link.configure(rate=80, queue=500)  # 1000 bytes = 100 ms
    fates = [link.offer(1000, 0.0) for _ in range(8)]
    assert sum(f is not None for f in fates) == 6  # waits of 0..500 ms fit, 600 ms does not
    assert link.counters["dropped_queue"] == 2
    link = Link()
    link.configure(rate=80, queue=10_000, qpkts=3)
    assert [link.offer(1000, 0.0) is not None for _ in range(4)] == [True, True, True, False]
    # Once the first has left the wire there is room again.
    assert link.offer(1000, 0.15) is not None


def test_loss_is_random_at_the_given_rate():
    link = Link(random.Random(1))
    link.configure(loss=3)
    for i in range(20_000):
        link.offer(100, i * 0.001)
    assert 500 <= link.counters["dropped_loss"] <= 700


def test_jitter_never_reorders():
    link = Link(random.Random(2))
    link.configure(delay=50, jitter=40)
    times = [link.offer(100, i * 0.001) for i in range(500)]
    assert times == sorted(times)
    assert all(0.05 + i * 0.001 <= t <= 0.09 + i * 0.001 + 0.04 for i, t in enumerate(times))


def test_cut_drops_queued_and_new_packets_until_restore():
    link = Link()
    link.configure(delay=100)
    link.offer(100, 0.0)
    link.cut()
    assert link.offer(100, 0.01) is None
    assert link.due(1.0) == []
    assert link.counters["dropped_cut"] == 2
    link.restore()
    assert link.offer(100, 2.0) == pytest.approx(2.1)


def test_parse_shape():
    assert parse_shape(["rate=500", "delay=150", "loss=3"]) == (("down", "up"), {"rate": 500.0, "delay": 150.0, "loss": 3.0})
    assert parse_shape(["dir=up", "qpkts=5"]) == (("up",), {"qpkts": 5})
    for bad in (["rate"], ["speed=1"], ["dir=left"], ["loss=x"]):
        with pytest.raises(ValueError):
            parse_shape(bad)
    with pytest.raises(ValueError):
        Link().configure(loss=101)
