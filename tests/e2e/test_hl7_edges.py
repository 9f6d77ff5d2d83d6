"""HL7 v2 at both edges, over TLS: python-hl7's asyncio MLLP client (code written by others)
sends IHE PCD-01 messages

- to the ambulance agent (`medrelay ambulance --mllp-listen … --mllp-tls-cert/--mllp-tls-key`),
  which spools them and sends them to the gateway: the numerics and the waveform come back from
  FHIR for Device/<ambulance>, sample for sample;
- to the gateway (`medrelay serve --mllp-listen … --mllp-tls`) from two monitors and two
  patients: FHIR `subject=Patient/<id>` returns exactly the values measured on that patient,
  on whichever monitor, also after the gateway restarts (and the EDF+ export of a stream it
  has not seen since).

A client that does not speak TLS to a TLS port gets no ACK and the next TLS client works;
malformed messages get AE/AR and the connection goes on."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import hl7
import hl7.mllp
import pytest

from medrelay_harness import ARTIFACTS, BIN, Server, free_port, make_cert

PCD01 = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"


def ts(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S.%f")[:-3] + "+0000"


def instant(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def oru(control_id: str, device: str, at: datetime, *, patient: str | None = None, hr: str = "72",
        wave: list[int] | None = None) -> hl7.Message:
    """A monitor's PCD-01 report of HR and SpO2 at `at`, with lead II at 250 Hz (0.005 mV)."""
    filler = f"{control_id}^E2E_MON^{device}^EUI-64"
    segments = [
        f"MSH|^~\\&|E2E_MON^{device}^EUI-64|WARD3|MEDRELAY|HOSP|{ts(at)}||ORU^R01^ORU_R01|{control_id}"
        f"|P|2.6|||NE|AL||UNICODE UTF-8|||{PCD01}",
    ]
    if patient:
        segments.append(f"PID|||{patient}^^^HOSP^MR||Testpatient^Eve")
    segments += [
        f"OBR|1|{filler}|{filler}|182777000^monitoring of patient^SCT|||{ts(at)}",
        f"OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{device}^EUI-64",
        f"OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R",
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R",
    ]
    if wave:
        segments += [
            f"OBX|4|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.1.2.1|{'^'.join(map(str, wave))}"
            f"|266418^MDC_DIM_MILLI_VOLT^MDC|||||R|||{ts(at)}",
            "OBX|5|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.2.1.1|250|264608^MDC_DIM_PER_SEC^MDC|||||R",
            "OBX|6|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|1.1.2.1.2|0.005|266418^MDC_DIM_MILLI_VOLT^MDC|||||R",
        ]
    return hl7.parse("\r".join(segments))


def msa(ack: hl7.Message) -> tuple[str, str]:
    return str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])


class Mllp:
    """One python-hl7 asyncio MLLP connection (TLS with `ctx`)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext | None) -> "Mllp":
        reader, writer = await asyncio.wait_for(
            hl7.mllp.open_hl7_connection("127.0.0.1", port, ssl=ctx), 10)
        return cls(reader, writer)

    async def send(self, message) -> hl7.Message:
        self.writer.writemessage(message)
        await self.writer.drain()
        ack = await asyncio.wait_for(self.reader.readmessage(), 15)
        assert str(ack.segment("MSH")[9]).startswith("ACK"), str(ack)
        return ack

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ssl.SSLError, ConnectionError):
            pass


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def plain_client_gets_no_ack(port: int) -> None:
    """A client speaking plain MLLP to a TLS port: the server never answers in HL7 and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"\x0bMSH|^~\\&|X|Y|Z|W|20270101||ORU^R01|PLAIN|P|2.6\r\x1c\x0d")
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        assert b"MSA" not in got, got


def fhir_get(server: Server, params: dict, token: str) -> dict:
    url = f"{server.url}/fhir/Observation?" + urllib.parse.urlencode(params, doseq=True)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10, context=server.ssl_context()) as r:
        assert r.headers["Content-Type"].startswith("application/fhir+json")
        return json.loads(r.read())


def hr_values(bundle: dict) -> list[tuple[float, str, str]]:
    """(value, subject, device) of the HR Observations, by time."""
    found = []
    for e in bundle.get("entry", []):
        o = e["resource"]
        if o["code"].get("coding", [{}])[0].get("code") == "147842":
            found.append((o["effectiveDateTime"], o["valueQuantity"]["value"],
                          o["subject"]["reference"], o["device"]["reference"]))
    return [f[1:] for f in sorted(found)]


def test_agent_takes_the_monitors_hl7_over_tls_and_the_gateway_gets_it_exactly(server: Server):
    stream = "AMB-HL7"
    crew = subprocess.run(
        [str(BIN), "token", "--data-dir", str(server.data_dir), "--ambulance", stream, "--role", "crew"],
        check=True, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[-1]
    er = server.token(None, "Dr Wang", "er")
    port = free_port(socket.SOCK_STREAM)
    log_path = ARTIFACTS / "logs" / "py_hl7_edges.agent.log"
    with tempfile.TemporaryDirectory(prefix="medrelay-hl7-agent-") as tmp, open(log_path, "w") as log:
        cert, key = make_cert(Path(tmp))
        agent = subprocess.Popen(
            [str(BIN), "ambulance", "--gateway", f"ws://127.0.0.1:{server.port}", "--token", crew,
             "--mllp-listen", f"127.0.0.1:{port}", "--mllp-tls-cert", str(cert),
             "--mllp-tls-key", str(key), "--spool", f"{tmp}/spool"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            t0, samples = asyncio.run(asyncio.wait_for(feed_agent(port, cert), 90))
            status = agent.poll()
            assert status is None, f"the agent exited with {status}: {log_path.read_text()[-3000:]}"
            # What the monitor got AA for is in the agent's spool; it reaches the gateway's
            # record once sent and synced.
            window = {"subject": f"Device/{stream}", "code": "131330",
                      "date": [f"ge{instant(t0 - timedelta(seconds=1))}",
                               f"le{instant(t0 + timedelta(seconds=5))}"]}
            deadline = time.monotonic() + 15
            while True:
                data = sampled_data(fhir_get(server, window, er))
                if len(data) >= len(samples) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert data == samples, f"{len(data)} samples back, {len(samples)} sent; first: {data[:5]}"
            latest = hr_values(fhir_get(server, {"subject": stream}, er))
            assert latest == [(88, f"Device/{stream}", f"Device/{stream}")], latest
        finally:
            agent.send_signal(signal.SIGINT)
            try:
                code = agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                code = agent.wait(5)
        assert code == 0, log_path.read_text()[-3000:]


def sampled_data(bundle: dict) -> list[int]:
    """Lead II's samples of a waveform search, in time order."""
    data: list[int] = []
    for e in sorted(bundle.get("entry", []), key=lambda e: e["resource"]["effectivePeriod"]["start"]):
        (component,) = e["resource"]["component"]
        assert component["code"]["coding"][0]["code"] == "131330", component["code"]
        sd = component["valueSampledData"]
        assert sd["factor"] == pytest.approx(0.005) and sd["period"] == pytest.approx(4.0), sd
        assert sd["origin"]["unit"] == "mV", sd
        data += [int(float(d)) for d in sd["data"].split(" ")]
    return data


async def feed_agent(port: int, cert: Path) -> tuple[datetime, list[int]]:
    """Sends 3 seconds of lead II and numerics to the agent; returns the start and the samples."""
    ctx = client_context(cert)
    deadline = time.monotonic() + 30
    while True:  # the listener opens at start; AA once the agent has met the gateway
        try:
            conn = await Mllp.open(port, ctx)
            hello = datetime.now(timezone.utc) - timedelta(seconds=30)
            ack = await conn.send(oru("HELLO", "E2EAGENTMON00001", hello, hr="88"))
            if msa(ack)[0] == "AA":
                break
            assert "gateway" in str(ack.segment("ERR")), str(ack)
            await conn.close()
        except (ConnectionError, OSError):
            pass
        assert time.monotonic() < deadline, "the agent never accepted a message"
        await asyncio.sleep(0.3)
    t0 = datetime.now(timezone.utc) - timedelta(seconds=10)
    samples: list[int] = []
    for k in range(3):
        wave = [((k * 250 + i) * 37) % 1200 - 600 for i in range(250)]
        samples += wave
        ack = await conn.send(oru(f"W{k}", "E2EAGENTMON00001", t0 + timedelta(seconds=k), hr="88", wave=wave))
        assert msa(ack) == ("AA", f"W{k}"), str(ack)
    ack = await conn.send(oru("BAD", "E2EAGENTMON00001", t0, hr="eighty"))
    assert msa(ack)[0] == "AE", str(ack)
    await conn.close()
    # Plain TCP to the TLS port: no ACK, closed; TLS clients still served after it.
    await asyncio.to_thread(plain_client_gets_no_ack, port)
    conn = await Mllp.open(port, ctx)
    ack = await conn.send(oru("AFTER", "E2EAGENTMON00001", t0 + timedelta(seconds=2, milliseconds=500), hr="88"))
    assert msa(ack) == ("AA", "AFTER"), str(ack)
    await conn.close()
    return t0, samples


def test_gateway_mllp_over_tls_and_fhir_by_patient_across_monitors_and_restarts():
    with tempfile.TemporaryDirectory(prefix="medrelay-hl7-tls-") as tmp:
        cert, key = make_cert(Path(tmp))
        srv = Server(name="py_hl7_patients", mllp=True, tls=(cert, key)).start()
        try:
            er = srv.token(None, "Dr Wang", "er")
            m1, m2 = "E2EPATMON0000001", "E2EPATMON0000002"
            t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)

            async def send_all():
                conn = await Mllp.open(srv.mllp_port, client_context(cert))
                plan = [("P1", m1, 0, "PAT0042", "70"), ("P2", m1, 2, "PAT0099", "120"),
                        ("P3", m2, 3, "PAT0042", "75"), ("P4", m1, 4, "PAT0099", "121")]
                for cid, device, dt, patient, hr in plan:
                    wave = list(range(-100, 150)) if device == m1 else None
                    at = t0 + timedelta(seconds=dt)
                    ack = await conn.send(oru(cid, device, at, patient=patient, hr=hr, wave=wave))
                    assert msa(ack) == ("AA", cid), str(ack)
                await conn.close()
                await asyncio.to_thread(plain_client_gets_no_ack, srv.mllp_port)

            asyncio.run(asyncio.wait_for(send_all(), 60))

            def check():
                latest = hr_values(fhir_get(srv, {"subject": "Patient/PAT0042"}, er))
                assert latest == [(75, "Patient/PAT0042", f"Device/{m2}")], latest
                dated = {"subject": "Patient/PAT0042", "date": f"ge{instant(t0 - timedelta(seconds=1))}"}
                assert hr_values(fhir_get(srv, dated, er)) == [
                    (70, "Patient/PAT0042", f"Device/{m1}"),
                    (75, "Patient/PAT0042", f"Device/{m2}"),
                ]
                other = {"subject": "Patient/PAT0099", "date": f"ge{instant(t0 - timedelta(seconds=1))}"}
                assert [v for v, _, _ in hr_values(fhir_get(srv, other, er))] == [120, 121]
                assert fhir_get(srv, {"subject": "Patient/PAT0404"}, er)["total"] == 0

            check()
            srv.stop(keep_data=True)
            srv.start()  # nothing has reconnected since: all from the data directory
            check()
            req = urllib.request.Request(f"{srv.url}/telemetry/streams/{m1}/record.edf",
                                         headers={"Authorization": f"Bearer {er}"})
            with urllib.request.urlopen(req, timeout=10, context=srv.ssl_context()) as r:
                edf = r.read()
            assert edf[:8] == b"0       " and len(edf) > 256, edf[:64]  # EDF+ (pyedflib reads
            # these in test_edf_export.py)
            with pytest.raises(urllib.error.HTTPError) as bad:
                fhir_get(srv, {"subject": "Patient/"}, er)
            assert bad.value.code == 400
        finally:
            srv.stop()
