"""HL7 v2 over MLLP: python-hl7 (a client written by others) sends IHE PCD-01 ORU^R01 messages
to `medrelay serve --mllp-listen`; each is acknowledged (AA only once stored), the values reach
GET /telemetry/streams and a WebSocket viewer, HR 151 raises the HR-high alarm, and malformed
messages and garbage get AE/AR on the same connection, which keeps working."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from datetime import datetime, timezone

import hl7
import hl7.client
import pytest
import websockets

from medrelay_harness import Server

DEVICE = "E2E0A1B2C3D4E5F6"  # the monitor's EUI-64 (OBX-18): the stream's id
SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


@pytest.fixture
def mllp_server():
    srv = Server(name="py_hl7_mllp", mllp=True).start()
    yield srv
    srv.stop()


def oru(control_id: str, hr: str = "72") -> hl7.Message:
    """A bedside monitor's PCD-01 report, timed now."""
    ts = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    filler = f"{control_id}^E2E_MON^{DEVICE}^EUI-64"
    mdc = "^MDC|"
    segments = [
        f"MSH|^~\\&|E2E_MON^{DEVICE}^EUI-64|WARD3|MEDRELAY|HOSP|{ts}||ORU^R01^ORU_R01|{control_id}"
        "|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||PAT0042^^^HOSP^MR||Testpatient^Eve",
        "PV1||I|WARD3^^BED2",
        f"OBR|1|{filler}|{filler}|182777000^monitoring of patient^SCT|||{ts}",
        f"OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{DEVICE}^EUI-64",
        f"OBX|2|NM|147842^MDC_ECG_HEART_RATE{mdc}1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R",
        f"OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2{mdc}1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R",
        f"OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS{mdc}1.3.1.1|128|266016^MDC_DIM_MMHG^MDC|||||R",
        f"OBX|5|NM|150022^MDC_PRESS_BLD_NONINV_DIA{mdc}1.3.1.2|82|266016^MDC_DIM_MMHG^MDC|||||R",
        f"OBX|6|NM|150023^MDC_PRESS_BLD_NONINV_MEAN{mdc}1.3.1.3|97|266016^MDC_DIM_MMHG^MDC|||||R",
        f"OBX|7|NM|151562^MDC_RESP_RATE{mdc}1.4.1.1|18|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R",
        f"OBX|8|NM|150364^MDC_TEMP_BODY{mdc}1.5.1.1|37.2|268192^MDC_DIM_DEGC^MDC|||||R",
    ]
    return hl7.parse("\r".join(segments))


EXPECTED = {"spo2": 97, "nibp_sys": 128, "nibp_dia": 82, "nibp_mean": 97, "rr": 18, "temp": 37.2}


def parse_ack(raw: bytes) -> hl7.Message:
    assert raw.startswith(SB) and raw.endswith(EB + CR), f"not one MLLP frame: {raw!r}"
    ack = hl7.parse(raw[1:-2].decode())
    assert str(ack.segment("MSH")[9]).startswith("ACK"), str(ack)
    return ack


def msa(ack: hl7.Message) -> tuple[str, str]:
    return str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])


def err3(ack: hl7.Message) -> str:
    return str(ack.extract_field("ERR", 1, 3, 1, 1))


def read_frames(client: hl7.client.MLLPClient, n: int) -> list[bytes]:
    """The next `n` MLLP frames from the server."""
    buf = b""
    while buf.count(EB + CR) < n:
        chunk = client.socket.recv(4096)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return [f + EB + CR for f in buf.split(EB + CR)[:n]]


def get_streams(server: Server, token: str) -> dict:
    req = urllib.request.Request(f"{server.url}/telemetry/streams",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.loads(r.read())
    streams = body["streams"] if isinstance(body, dict) else body
    return {s["id"]: s for s in streams}


def wait_stream(server: Server, token: str, pred, what: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = get_streams(server, token).get(DEVICE)
        if last and pred(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: GET /telemetry/streams has {last}\n{server.log_tail()}")


class ViewerWs:
    """A /telemetry/view client collecting every JSON message."""

    def __init__(self, ws):
        self.ws = ws
        self.messages: list[dict] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        async for m in self.ws:
            if isinstance(m, str):
                self.messages.append(json.loads(m))

    async def wait(self, pred, what: str, timeout: float = 5) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages:
                if pred(m):
                    return m
            await asyncio.sleep(0.05)
        raise AssertionError(f"viewer did not get {what}: {json.dumps(self.messages)[-2000:]}")


def test_pcd01_over_mllp_reaches_streams_viewers_and_alarms(mllp_server: Server):
    server = mllp_server
    er = server.token(None, "Dr Wang", "er")

    async def main():
        client = hl7.client.MLLPClient("127.0.0.1", server.mllp_port)
        client.socket.settimeout(15)
        send = lambda m: asyncio.to_thread(client.send_message, m)  # noqa: E731
        try:
            started = time.monotonic()
            ack = parse_ack(await send(oru("E2E-1")))
            assert msa(ack) == ("AA", "E2E-1"), str(ack)
            stream = wait_stream(server, er, lambda s: s["numerics"].get("hr") == 72, "HR 72")
            assert stream["link"] == "up", stream
            for vital, value in EXPECTED.items():
                assert stream["numerics"][vital] == pytest.approx(value), (vital, stream)

            async with websockets.connect(f"ws://127.0.0.1:{server.port}/telemetry/view") as ws:
                viewer = ViewerWs(ws)
                await ws.send(json.dumps({"type": "auth", "token": er}))
                await viewer.wait(lambda m: m["type"] == "welcome", "welcome")
                await ws.send(json.dumps({"type": "subscribe", "stream": DEVICE}))
                await viewer.wait(lambda m: m["type"] == "numerics" and m["values"].get("hr") == 72,
                                  "the recent numerics")

                ack = parse_ack(await send(oru("E2E-2", hr="151")))
                assert msa(ack) == ("AA", "E2E-2"), str(ack)
                live = await viewer.wait(
                    lambda m: m["type"] == "numerics" and not m["history"] and m["values"].get("hr") == 151,
                    "HR 151")
                for vital, value in EXPECTED.items():
                    assert live["values"][vital] == pytest.approx(value), (vital, live)
                alarm = await viewer.wait(
                    lambda m: m["type"] == "alarm" and m["stream"] == DEVICE and m["alarm"]["vital"] == "hr"
                    and m["alarm"]["condition"] == "high" and m["alarm"]["state"] == "active",
                    "the HR-high alarm")
                assert alarm["alarm"]["value"] == 151, alarm
                viewer.task.cancel()
            wait_stream(server, er, lambda s: s["numerics"].get("hr") == 151 and s["active_alarms"] >= 1,
                        "HR 151 with its alarm")

            # Bad input on the same connection; a good message after each still gets AA.
            bad_encoding = str(oru("E2E-ENC")).replace("MSH|^~\\&|", "MSH|^~^&|", 1)
            non_numeric = str(oru("E2E-NM")).replace("|72|", "|seventy|", 1)
            cases = [
                ("no MSH", "PID|||123\rOBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72", "AR", "", "100"),
                ("non-numeric NM", non_numeric, "AE", "E2E-NM", "102"),
                ("bad encoding characters", bad_encoding, "AR", "", "102"),
            ]
            for i, (name, message, code, control_id, err) in enumerate(cases):
                ack = parse_ack(await send(message))
                assert msa(ack) == (code, control_id), f"{name}: {ack}"
                assert err3(ack) == err, f"{name}: {ack}"
                good = parse_ack(await send(oru(f"E2E-OK{i}")))
                assert msa(good) == ("AA", f"E2E-OK{i}"), f"after {name}: {good}"

            # Bytes that are not MLLP at all, then a good message in the same write.
            garbage = b"\x00\x01GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            await asyncio.to_thread(client.socket.sendall,
                                    garbage + SB + str(oru("E2E-LAST")).encode() + EB + CR)
            rejected, accepted = [parse_ack(f) for f in await asyncio.to_thread(read_frames, client, 2)]
            assert msa(rejected)[0] == "AR" and err3(rejected) == "100", str(rejected)
            assert msa(accepted) == ("AA", "E2E-LAST"), str(accepted)
            assert time.monotonic() - started < 45
        finally:
            client.close()

    asyncio.run(asyncio.wait_for(main(), 60))

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    counts = dict(re.findall(r'telemetry_hl7_messages_total\{ack="(A[AER])"\} (\d+)', metrics))
    assert counts == {"AA": "6", "AE": "1", "AR": "3"}, counts
