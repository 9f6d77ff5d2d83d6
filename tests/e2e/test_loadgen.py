"""The load generator (`medrelay load`, issue 7) against a real medrelay server: a 20-second
smoke run of the benchmark's scenario 1 (4 rooms of 4 participants, each publishing VP8 720p
at 1.5 Mbit/s and Opus, everyone receiving everyone) over real ICE and DTLS-SRTP. Every peer
connects, subscribers receive what the clip's pace promises, nothing is lost, latency is
measured for every packet, and the load generator's count of received packets agrees with the
server's own /metrics count of forwarded ones."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from medrelay_harness import ARTIFACTS, BIN, Server


def forwarded_total(server: Server) -> int:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(r"^medrelay_forwarded_packets_total (\d+)", text, re.M)
    assert match, "the server exposes medrelay_forwarded_packets_total"
    return int(match.group(1))


@pytest.mark.timeout(240)
def test_scenario_1_smoke_run_agrees_with_the_server():
    server = Server("loadgen").start()
    try:
        out = ARTIFACTS / "loadgen-scenario1.json"
        before = forwarded_total(server)
        run = subprocess.run(
            [str(BIN), "load", "--server", f"127.0.0.1:{server.port}",
             "--data-dir", str(server.data_dir),
             "--rooms", "4", "--publishers", "4", "--subscribers", "0",
             "--duration", "20s", "--warmup", "2s", "--progress",
             "--clip-dir", str(ARTIFACTS / "loadgen-clip"), "--json", str(out)],
            capture_output=True, text=True, timeout=200)
        (ARTIFACTS / "logs" / "loadgen.stderr.txt").write_text(run.stderr)
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads(out.read_text())
        forwarded = forwarded_total(server) - before

        # Each participant has a publisher and a subscriber connection.
        assert summary["expected_peers"] == 32
        assert summary["connected_peers"] == 32, summary
        assert summary["failed_peers"] == 0
        assert summary["seconds"] == pytest.approx(20, abs=0.5)
        # 16 publishers, each received by 3: what the clip's pace promises arrives.
        assert summary["expected_pps"] > 8000
        assert summary["received_pps"] == pytest.approx(summary["expected_pps"], rel=0.03), summary
        assert summary["sent_pps"] * 3 == pytest.approx(summary["received_pps"], rel=0.03)
        assert summary["lost_packets"] == 0, summary
        # Every received payload was found in the clip and timed.
        assert summary["timed_share"] > 0.99, summary
        latency = summary["latency"]
        assert 0 < latency["p50_us"] <= latency["p99_us"] <= latency["max_us"]
        # The two counts of the same packets agree: publishers stop a second before
        # subscribers, so nothing forwarded is still in flight when counting ends. What the
        # kernel dropped at the load generator's own sockets (it read too slowly, on the
        # same two cores as a debug-built server) is the only excuse for a packet the
        # server forwarded and the load generator never counted.
        assert summary["total_received"] > 150_000
        missing = forwarded - summary["total_received"]
        slack = 0.001 * forwarded
        assert -slack <= missing <= summary["socket_drops"] + slack, (
            forwarded, summary["total_received"], summary["socket_drops"])
    finally:
        server.stop()


def test_a_wrong_signing_key_is_refused_clearly(tmp_path):
    """Tokens signed with another server's key: every join is refused, and the run says so."""
    server = Server("loadgen-badkey").start()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "signing.key").write_text("ab" * 32 + "\n")
    try:
        run = subprocess.run(
            [str(BIN), "load", "--server", f"127.0.0.1:{server.port}",
             "--data-dir", str(elsewhere),
             "--rooms", "1", "--publishers", "2", "--duration", "2s", "--warmup", "1s",
             "--clip-dir", str(ARTIFACTS / "loadgen-clip")],
            capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert "no participant joined" in run.stderr and "bad_token" in run.stderr, run.stderr[-2000:]
        assert forwarded_total(server) == 0
    finally:
        server.stop()


def test_a_data_directory_without_a_signing_key_is_a_clear_error(tmp_path):
    """Pointed at a directory that is no server's: a typed error, and no key is made there."""
    run = subprocess.run(
        [str(BIN), "load", "--server", "127.0.0.1:9", "--data-dir", str(tmp_path),
         "--duration", "1s", "--clip-dir", str(ARTIFACTS / "loadgen-clip")],
        capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "reading the server's signing key" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "signing.key").exists()
