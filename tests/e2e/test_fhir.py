"""FHIR R4 out: the real ECG (MIT-BIH 208, MLII, 360 Hz) replayed by the agent comes back from
GET /fhir/Observation as SampledData sample for sample; vitals sent by python-hl7 over MLLP come
back as MDC- and LOINC-coded Observations; /fhir/metadata is a CapabilityStatement; bad queries,
missing and wrong tokens get OperationOutcomes."""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

import hl7.client
import pytest

from medrelay_harness import ARTIFACTS, BIN, ROOT, Server

STREAM = "AMB-7"
ECG_FILE = ROOT / ".." / "shared" / "data" / "ecg" / "mitdb-208-mlii-360hz.u16le.raw"
RATE, GAIN, BASELINE, DURATION_S = 360, 200, 1024, 10
EXPECTED = RATE * DURATION_S


def fhir_get(server: Server, path: str, token: str | None) -> tuple[int, str, dict]:
    """Status, content type and JSON body of a GET (error answers included)."""
    headers = {"Accept": "application/fhir+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{server.url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), json.loads(e.read())


def search(**params) -> str:
    return "/fhir/Observation?" + urllib.parse.urlencode(params, doseq=True)


def instant(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def assert_outcome(answer: tuple[int, str, dict], status: int, code: str) -> None:
    got, ctype, body = answer
    assert got == status, answer
    assert ctype.startswith("application/fhir+json"), answer
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["severity"] == "error", body
    assert body["issue"][0]["code"] == code, body


def test_replayed_ecg_comes_back_as_sampled_data(server: Server):
    raw = ECG_FILE.read_bytes()
    samples = [int.from_bytes(raw[2 * i:2 * i + 2], "little") for i in range(len(raw) // 2)]
    assert len(samples) >= EXPECTED, f"{ECG_FILE} has {len(samples)} samples"

    crew = subprocess.run(
        [str(BIN), "token", "--data-dir", str(server.data_dir), "--ambulance", STREAM, "--role", "crew"],
        check=True, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[-1]
    er = server.token(None, "Dr Wang", "er")

    status, ctype, meta = fhir_get(server, "/fhir/metadata", None)
    assert status == 200 and ctype.startswith("application/fhir+json"), (status, ctype)
    assert meta["resourceType"] == "CapabilityStatement" and meta["fhirVersion"] == "4.0.1", meta
    observation = meta["rest"][0]["resource"][0]
    assert observation["type"] == "Observation", meta
    assert {p["name"] for p in observation["searchParam"]} >= {"subject", "code", "date"}, meta

    started = datetime.now(timezone.utc)
    (ARTIFACTS / "logs").mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "logs" / "py_fhir.agent.log"
    with tempfile.TemporaryDirectory(prefix="medrelay-fhir-spool-") as spool, open(log_path, "w") as log:
        agent = subprocess.run(
            [str(BIN), "ambulance", "--gateway", f"ws://127.0.0.1:{server.port}", "--token", crew,
             "--source", str(ECG_FILE), "--format", "raw", "--sample-type", "u16le",
             "--rate", str(RATE), "--gain", str(GAIN), "--baseline", str(BASELINE),
             "--labels", "MLII", "--unit", "mV", "--duration", str(DURATION_S), "--spool", spool],
            stdout=log, stderr=subprocess.STDOUT, timeout=DURATION_S + 50)
    assert agent.returncode == 0, log_path.read_text()[-3000:] + "\n" + server.log_tail()
    finished = datetime.now(timezone.utc)

    # Everything the agent sent is acknowledged, hence in the record: one window covers it.
    window = {"subject": f"Device/{STREAM}", "code": "urn:iso:std:iso:11073:10101|131328",
              "date": [f"ge{instant(started - timedelta(seconds=30))}",
                       f"le{instant(finished + timedelta(seconds=5))}"]}
    status, ctype, bundle = fhir_get(server, search(**window), er)
    assert status == 200 and ctype.startswith("application/fhir+json"), (status, bundle)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", bundle
    assert bundle["total"] == len(bundle["entry"]) >= 1, bundle
    observations = sorted((e["resource"] for e in bundle["entry"]),
                          key=lambda o: o["effectivePeriod"]["start"])
    data: list[int] = []
    for obs in observations:
        assert obs["resourceType"] == "Observation" and obs["status"] == "final", obs
        assert obs["subject"] == {"reference": f"Device/{STREAM}"}, obs
        (component,) = obs["component"]
        assert component["code"]["text"] == "MLII", component["code"]
        sd = component["valueSampledData"]
        assert sd["origin"] == {"value": 0, "unit": "mV", "system": "http://unitsofmeasure.org",
                                "code": "mV"}, sd["origin"]
        assert sd["factor"] == pytest.approx(1 / GAIN, abs=0) and sd["dimensions"] == 1, sd
        assert sd["period"] == pytest.approx(1000 / RATE, rel=1e-12), sd
        data += [int(d) for d in sd["data"].split(" ")]
    want = [s - BASELINE for s in samples[:EXPECTED]]
    assert len(data) == EXPECTED, f"{len(data)} samples instead of {EXPECTED} in {len(observations)} Observations"
    first_diff = next((i for i, (a, b) in enumerate(zip(data, want)) if a != b), None)
    assert first_diff is None, f"sample {first_diff}: {data[first_diff]} != {want[first_diff]}"
    start = datetime.fromisoformat(observations[0]["effectivePeriod"]["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(observations[-1]["effectivePeriod"]["end"].replace("Z", "+00:00"))
    assert abs((end - start).total_seconds() - (EXPECTED - 1) / RATE) < 0.05, (start, end)

    # A window cut mid-way gives the samples whose time (their frame's capture time plus i/rate)
    # falls in it: one second of consecutive samples, about 2 s after the start (the agent's
    # capture times follow its clock sync, so frames may sit a few ms off the nominal grid).
    cut = {"subject": STREAM, "date": [f"ge{instant(start + timedelta(seconds=2))}",
                                       f"lt{instant(start + timedelta(seconds=3))}"]}
    status, _, part = fhir_get(server, search(**cut), er)
    assert status == 200, part
    cut_data = [int(d) for e in part["entry"] if "component" in e["resource"]
                for d in e["resource"]["component"][0]["valueSampledData"]["data"].split(" ")]
    assert RATE - 2 <= len(cut_data) <= RATE + 2, len(cut_data)
    offsets = [i for i in range(2 * RATE - 36, 2 * RATE + 37) if want[i:i + len(cut_data)] == cut_data]
    assert offsets, f"the cut window is not consecutive samples near 2 s: {cut_data[:8]}"

    # The latest numerics (if the source made any) are MDC-coded vital signs.
    status, _, latest = fhir_get(server, search(subject=STREAM), er)
    assert status == 200 and latest["type"] == "searchset", latest
    for e in latest.get("entry", []):
        coding = e["resource"]["code"]["coding"]
        assert coding[0]["system"] == "urn:iso:std:iso:11073:10101", coding

    # An unknown subject is an empty searchset.
    status, _, empty = fhir_get(server, search(subject="Device/AMB-404"), er)
    assert (status, empty["total"], empty.get("entry", [])) == (200, 0, []), empty

    # Bad input and refusals are OperationOutcomes.
    assert_outcome(fhir_get(server, search(subject=STREAM, date="ge2026-13-01T00:00:00Z"), er), 400, "invalid")
    assert_outcome(fhir_get(server, search(subject=STREAM, date="yesterday"), er), 400, "invalid")
    assert_outcome(fhir_get(server, search(code="131328"), er), 400, "invalid")
    assert_outcome(fhir_get(server, search(subject=STREAM, colour="red"), er), 400, "invalid")
    too_long = {"subject": STREAM, "date": [f"ge{instant(started - timedelta(minutes=10))}",
                                            f"le{instant(finished)}"]}
    assert_outcome(fhir_get(server, search(**too_long), er), 422, "too-costly")
    assert_outcome(fhir_get(server, search(**window), None), 401, "login")
    assert_outcome(fhir_get(server, search(**window), "not-a-token"), 401, "login")
    assert_outcome(fhir_get(server, search(**window), crew), 403, "forbidden")
    # The next good query still works.
    assert fhir_get(server, search(**window), er)[2]["total"] == bundle["total"]


def test_hl7_numerics_come_back_as_coded_observations():
    """python-hl7 sends a PCD-01 ORU^R01 over MLLP; its vitals are FHIR Observations."""
    device = "E2EFHIR0A1B2C3D4"
    srv = Server(name="py_fhir_hl7", mllp=True).start()
    try:
        er = srv.token(None, "Dr Wang", "er")
        now = datetime.now(timezone.utc)
        ts = now.strftime("%Y%m%d%H%M%S+0000")
        filler = f"FHIR-1^E2E_MON^{device}^EUI-64"
        message = "\r".join([
            f"MSH|^~\\&|E2E_MON^{device}^EUI-64|WARD3|MEDRELAY|HOSP|{ts}||ORU^R01^ORU_R01|FHIR-1"
            "|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
            f"OBR|1|{filler}|{filler}|182777000^monitoring of patient^SCT|||{ts}",
            f"OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{device}^EUI-64",
            "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R",
            "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R",
            "OBX|4|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|128|266016^MDC_DIM_MMHG^MDC|||||R",
            "OBX|5|NM|150364^MDC_TEMP_BODY^MDC|1.5.1.1|37.2|268192^MDC_DIM_DEGC^MDC|||||R",
        ])
        with hl7.client.MLLPClient("127.0.0.1", srv.mllp_port) as client:
            client.socket.settimeout(15)
            ack = client.send_message(message)
        assert b"MSA|AA|FHIR-1" in ack, ack  # AA: durable, so in the record

        status, ctype, bundle = fhir_get(srv, search(subject=f"Device/{device}"), er)
        assert status == 200 and ctype.startswith("application/fhir+json"), (status, bundle)
        got = {}
        for e in bundle["entry"]:
            obs = e["resource"]
            assert obs["status"] == "final" and obs["subject"]["reference"] == f"Device/{device}", obs
            assert obs["category"][0]["coding"][0]["code"] == "vital-signs", obs
            mdc, loinc = obs["code"]["coding"]
            assert mdc["system"] == "urn:iso:std:iso:11073:10101" and loinc["system"] == "http://loinc.org", obs
            q = obs["valueQuantity"]
            assert q["system"] == "http://unitsofmeasure.org", q
            got[mdc["code"]] = (loinc["code"], q["value"], q["code"])
            at = datetime.fromisoformat(obs["effectiveDateTime"].replace("Z", "+00:00"))
            assert abs((at - now).total_seconds()) < 5, obs["effectiveDateTime"]
        assert got == {
            "147842": ("8867-4", 72, "/min"),
            "150456": ("59408-5", 97, "%"),
            "150021": ("8480-6", 128, "mm[Hg]"),
            "150364": ("8310-5", pytest.approx(37.2), "Cel"),
        }, got

        status, _, hr = fhir_get(srv, search(subject=device, code="http://loinc.org|8867-4"), er)
        assert status == 200 and hr["total"] == 1, hr
        assert hr["entry"][0]["resource"]["valueQuantity"]["value"] == 72, hr
    finally:
        srv.stop()
