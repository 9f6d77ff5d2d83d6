"""EDF+ export: the real agent replays the MIT-BIH record 208 ECG (MLII, 360 Hz) to the
gateway; GET /telemetry/streams/AMB-7/record.edf downloads it and pyedflib (a reader written
by others) reads the same samples back, digital and physical; bad requests get 401/404/400."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyedflib

from medrelay_harness import BIN, ROOT

ECG = ROOT.parent / "shared" / "data" / "ecg" / "mitdb-208-mlii-360hz.u16le.raw"
STREAM = "AMB-7"


def token(server, *args: str) -> str:
    out = subprocess.run([str(BIN), "token", "--data-dir", str(server.data_dir), *args],
                         check=True, capture_output=True, text=True, timeout=10)
    return out.stdout.strip().splitlines()[-1].strip()


def get(server, path: str, tok: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    req = urllib.request.Request(f"{server.url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_edf_export_reads_back_in_pyedflib(server, tmp_path: Path):
    crew = token(server, "--ambulance", STREAM, "--role", "crew")
    agent = subprocess.run(
        [str(BIN), "ambulance", "--gateway", f"ws://127.0.0.1:{server.port}", "--token", crew,
         "--source", str(ECG), "--format", "raw", "--rate", "360", "--gain", "200",
         "--baseline", "1024", "--labels", "MLII", "--duration", "10",
         "--spool", str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=60)
    assert agent.returncode == 0, f"agent: {agent.stderr[-2000:]}\n{server.log_tail()}"

    er = token(server, "--identity", "Dr E2E", "--role", "er")
    status, headers, body = get(server, f"/telemetry/streams/{STREAM}/record.edf", er)
    assert status == 200, body[:500]
    assert headers["content-type"] == "application/octet-stream"
    assert "attachment" in headers["content-disposition"]
    assert body[192:197] in (b"EDF+C", b"EDF+D")
    path = tmp_path / "amb7.edf"
    path.write_bytes(body)

    raw = np.fromfile(ECG, dtype="<u2", count=3600).astype(np.int64)
    with pyedflib.EdfReader(str(path)) as edf:
        assert edf.signals_in_file == 1
        assert edf.getLabel(0) == "ECG MLII"
        assert edf.getSampleFrequency(0) == 360
        assert edf.getPhysicalDimension(0) == "mV"
        assert edf.getPatientCode() == "" or "X" in edf.getPatientCode()
        assert "medrelay" in edf.getEquipment() or "medrelay" in edf.getTechnician()
        digital = edf.readSignal(0, digital=True).astype(np.int64)
        assert len(digital) >= 3600
        diff = np.flatnonzero(digital[:3600] != raw - 1024)
        assert diff.size == 0, (f"samples differ from index {diff[0]}; "
                                f"annotations {edf.readAnnotations()}")
        physical = edf.readSignal(0)
        assert np.allclose(physical[:3600], (raw - 1024) / 200, rtol=0, atol=1e-9)
        onsets, durations, texts = edf.readAnnotations()
        assert all(isinstance(t, str) for t in texts)

    # A window before the first sample holds nothing to export.
    status, _, body = get(server, f"/telemetry/streams/{STREAM}/record.edf?to=0", er)
    assert status == 422, body

    # The stream's journal is sealed at rest: its key file is there, and neither the lead's
    # label nor the stream id appear in the clear in its segments.
    journal = server.data_dir / "telemetry" / STREAM
    assert (journal / "key.sealed").is_file(), sorted(p.name for p in journal.iterdir())
    segments = [p for p in journal.iterdir() if p.name != "key.sealed"]
    assert segments, "the journal has segments"
    for p in segments:
        data = p.read_bytes()
        assert b"MLII" not in data and STREAM.encode() not in data, f"{p.name} holds plain text"

    # The export is in the audit trail, which verifies.
    audit = subprocess.run([str(BIN), "audit", "query", "--data-dir", str(server.data_dir),
                            "--action", "export"], check=True, capture_output=True, text=True,
                           timeout=10)
    exports = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(e["role"], e["target"]) for e in exports] == [("er", f"telemetry:{STREAM}")], exports
    verify = subprocess.run([str(BIN), "audit", "verify", "--data-dir", str(server.data_dir)],
                            capture_output=True, text=True, timeout=10)
    assert verify.returncode == 0, verify.stderr


def test_edf_export_bad_requests(server):
    er = token(server, "--identity", "Dr E2E", "--role", "er")
    status, _, body = get(server, f"/telemetry/streams/{STREAM}/record.edf", None)
    assert status == 401, body
    status, _, body = get(server, "/telemetry/streams/AMB-404/record.edf", er)
    assert status == 404, body
    assert json.loads(body)["code"] == "unknown_stream"
    status, _, body = get(server, f"/telemetry/streams/{STREAM}/record.edf?from=yesterday", er)
    assert status == 400, body
    assert json.loads(body)["code"] == "bad_query"
