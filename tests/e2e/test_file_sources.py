"""Files in: `medrelay ambulance --source FILE` replays a 12-lead EDF+ and a mixed-rate EDF+
written by pyedflib, and 12-lead and General ECG DICOM files (8, 16 and 32-bit samples)
written by pydicom (tools written by others); GET /fhir/Observation gives every lead back
sample for sample with the file's labels, rates and scaling. A truncated EDF and
a file that is not DICOM make the agent exit non-zero with a clear message, before connecting."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
import pyedflib
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medrelay_harness import ARTIFACTS, BIN, Server

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
RATE = 500


def lead_values(lead: int, n: int) -> np.ndarray:
    """Distinct, deterministic 16-bit values per lead (a sawtooth plus a sine)."""
    k = np.arange(n)
    return ((k * (lead + 3)) % 1500 - 750 + (300 * np.sin(k / (20 + lead))).astype(int)).astype(np.int16)


def write_edf(path: Path, n: int) -> list[np.ndarray]:
    """A 12-lead EDF+ at RATE Hz; physical = digital × 2 µV exactly (gain 0.5, baseline 0)."""
    data = [lead_values(i, n) for i in range(12)]
    with pyedflib.EdfWriter(str(path), 12, file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders([dict(label=lead, dimension="uV", sample_frequency=RATE,
                                 physical_min=-4096.0, physical_max=4094.0,
                                 digital_min=-2048, digital_max=2047, transducer="", prefilter="")
                            for lead in LEADS])
        w.writeSamples([d.astype(np.int32) for d in data], digital=True)
    return data


def write_dicom(path: Path, n: int, baseline_v6: float = 10.0, sop_class: str = TWELVE_LEAD_ECG,
                interpretation: str = "SS") -> np.ndarray:
    """An ECG Waveform Storage object (12-lead by default), 16-bit SS (or 8-bit SB, 32-bit SL)
    at RATE Hz, 2.5 µV per unit; V6 has a ChannelBaseline. No patient data. Returns the stored
    samples, shape (n, 12)."""
    dtype, bits = {"SB": ("i1", 8), "SS": ("<i2", 16), "SL": ("<i4", 32)}[interpretation]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "ECG"
    ds.PatientID = "TEST"
    channels = []
    for i, lead in enumerate(LEADS):
        source = Dataset()
        source.CodeValue = f"5.6.3-9-{i + 1}"
        source.CodingSchemeDesignator = "SCPECG"
        source.CodingSchemeVersion = "1.3"
        source.CodeMeaning = f"Lead {lead}"
        unit = Dataset()
        unit.CodeValue = "uV"
        unit.CodingSchemeDesignator = "UCUM"
        unit.CodeMeaning = "microvolt"
        ch = Dataset()
        ch.ChannelSourceSequence = Sequence([source])
        ch.ChannelSensitivity = "2.5"
        ch.ChannelSensitivityUnitsSequence = Sequence([unit])
        ch.ChannelSensitivityCorrectionFactor = "1"
        ch.ChannelBaseline = str(baseline_v6) if lead == "V6" else "0"
        ch.ChannelSampleSkew = "0"
        ch.WaveformBitsStored = bits
        channels.append(ch)
    samples = np.stack([lead_values(i, n) for i in range(12)], axis=1)
    if interpretation == "SB":
        samples = samples // 8  # within -128..127
    elif interpretation == "SL":
        samples = samples.astype(np.int64) * 50_000  # beyond 16 bits
    samples = samples.astype(dtype)
    group = Dataset()
    group.MultiplexGroupLabel = "RHYTHM"
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = 12
    group.NumberOfWaveformSamples = n
    group.SamplingFrequency = str(RATE)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = bits
    group.WaveformSampleInterpretation = interpretation
    group.WaveformData = samples.tobytes()
    ds.WaveformSequence = Sequence([group])
    ds.save_as(str(path), enforce_file_format=True)
    return samples


def crew_token(server: Server, stream: str) -> str:
    out = subprocess.run([str(BIN), "token", "--data-dir", str(server.data_dir), "--ambulance",
                          stream, "--role", "crew"], check=True, capture_output=True, text=True, timeout=10)
    return out.stdout.strip().splitlines()[-1].strip()


def replay(server: Server, stream: str, source: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    (ARTIFACTS / "logs").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(BIN), "ambulance", "--gateway", f"ws://127.0.0.1:{server.port}",
         "--token", crew_token(server, stream), "--source", str(source),
         "--spool", str(tmp_path / f"spool-{stream}"), *extra],
        capture_output=True, text=True, timeout=60)


def instant(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def leads_from_fhir(server: Server, stream: str, since: datetime) -> dict[str, dict]:
    """Each lead's SampledData settings and all its data, over every Observation of the window."""
    er = server.token(None, "Dr Files", "er")
    query = urllib.parse.urlencode({"subject": stream, "date": [
        f"ge{instant(since - timedelta(seconds=30))}",
        f"le{instant(datetime.now(timezone.utc) + timedelta(seconds=5))}"]}, doseq=True)
    req = urllib.request.Request(f"{server.url}/fhir/Observation?{query}",
                                 headers={"Authorization": f"Bearer {er}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        bundle = json.loads(r.read())
    observations = sorted((e["resource"] for e in bundle.get("entry", []) if "component" in e["resource"]),
                          key=lambda o: o["effectivePeriod"]["start"])
    leads: dict[str, dict] = {}
    for obs in observations:
        for component in obs["component"]:
            sd = component["valueSampledData"]
            lead = leads.setdefault(component["code"]["text"], {"sd": sd, "data": []})
            assert (sd["factor"], sd["period"], sd["origin"]) == \
                (lead["sd"]["factor"], lead["sd"]["period"], lead["sd"]["origin"]), sd
            lead["data"] += [float(d) for d in sd["data"].split(" ")]
    return leads


def test_edf_replays_every_lead_exactly(server: Server, tmp_path: Path):
    n = RATE * 8
    path = tmp_path / "twelve.edf"
    data = write_edf(path, n)
    started = datetime.now(timezone.utc)
    agent = replay(server, "AMB-21", path, tmp_path)
    assert agent.returncode == 0, agent.stderr[-3000:] + "\n" + server.log_tail()

    leads = leads_from_fhir(server, "AMB-21", started)
    assert list(leads) == LEADS, list(leads)
    for i, lead in enumerate(LEADS):
        sd = leads[lead]["sd"]
        assert sd["origin"]["unit"] == "uV" and sd["factor"] == 2.0, sd
        assert sd["period"] == pytest.approx(1000 / RATE, rel=1e-12), sd
        got = np.array(leads[lead]["data"])
        assert len(got) == n, f"{lead}: {len(got)} samples instead of {n}"
        diff = np.flatnonzero(got != data[i])
        assert diff.size == 0, f"{lead} differs from sample {diff[0]}: {got[diff[0]]} != {data[i][diff[0]]}"
    # pyedflib's physical values are what FHIR's factor × data gives.
    with pyedflib.EdfReader(str(path)) as edf:
        physical = edf.readSignal(3)
    assert np.allclose(np.array(leads["aVR"]["data"]) * 2.0, physical, rtol=0, atol=1e-9)


def test_mixed_rate_edf_keeps_each_channels_rate(server: Server, tmp_path: Path):
    """ECG at 500 Hz, pleth at 125 Hz and respiration at 25 Hz in one EDF+ (pyedflib): each
    channel comes back from FHIR and from the EDF+ export (read by pyedflib) at its own rate,
    sample for sample."""
    rates = {"ECG II": 500, "Pleth": 125, "Resp": 25}
    seconds = 6
    data = {label: lead_values(i, rate * seconds) for i, (label, rate) in enumerate(rates.items())}
    path = tmp_path / "mixed.edf"
    with pyedflib.EdfWriter(str(path), len(rates), file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders([dict(label=label, dimension="uV", sample_frequency=rate,
                                 physical_min=-4096.0, physical_max=4094.0,
                                 digital_min=-2048, digital_max=2047, transducer="", prefilter="")
                            for label, rate in rates.items()])
        w.writeSamples([data[label].astype(np.int32) for label in rates], digital=True)
    started = datetime.now(timezone.utc)
    agent = replay(server, "AMB-24", path, tmp_path)
    assert agent.returncode == 0, agent.stderr[-3000:] + "\n" + server.log_tail()

    leads = leads_from_fhir(server, "AMB-24", started)
    assert list(leads) == list(rates), list(leads)
    for label, rate in rates.items():
        sd = leads[label]["sd"]
        assert sd["period"] == pytest.approx(1000 / rate, rel=1e-12), (label, sd)
        got = np.array(leads[label]["data"])
        assert np.array_equal(got, data[label]), f"{label}: {len(got)} samples, first {got[:5]}"

    er = server.token(None, "Dr Files", "er")
    req = urllib.request.Request(f"{server.url}/telemetry/streams/AMB-24/record.edf",
                                 headers={"Authorization": f"Bearer {er}"})
    exported = tmp_path / "exported.edf"
    with urllib.request.urlopen(req, timeout=30) as r:
        exported.write_bytes(r.read())
    with pyedflib.EdfReader(str(exported)) as edf:
        labels = edf.getSignalLabels()
        for label, rate in rates.items():
            i = next(k for k, l in enumerate(labels) if l.endswith(label.removeprefix("ECG ")))
            assert edf.getSampleFrequency(i) == rate, (label, edf.getSampleFrequency(i))
            digital = edf.readSignal(i, digital=True)
            assert np.array_equal(digital[:len(data[label])], data[label]), label


@pytest.mark.parametrize("sop_class,interpretation,stream", [
    (TWELVE_LEAD_ECG, "SS", "AMB-22"),
    (GENERAL_ECG, "SB", "AMB-25"),
    (GENERAL_ECG, "SL", "AMB-26"),
])
def test_dicom_ecg_replays_every_lead_as_pydicom_reads_it(server: Server, tmp_path: Path, sop_class: str,
                                                          interpretation: str, stream: str):
    n = RATE * (10 if interpretation == "SS" else 4)
    path = tmp_path / "ecg.dcm"
    stored = write_dicom(path, n, sop_class=sop_class, interpretation=interpretation)
    ds = pydicom.dcmread(path)
    scaled = ds.waveform_array(0)
    assert scaled.shape == (n, 12)
    started = datetime.now(timezone.utc)
    agent = replay(server, stream, path, tmp_path)
    assert agent.returncode == 0, agent.stderr[-3000:] + "\n" + server.log_tail()

    leads = leads_from_fhir(server, stream, started)
    assert list(leads) == LEADS, list(leads)
    for i, lead in enumerate(LEADS):
        sd = leads[lead]["sd"]
        assert sd["origin"]["unit"] == "uV" and sd["factor"] == pytest.approx(2.5, rel=1e-12), sd
        assert sd["period"] == pytest.approx(1000 / RATE, rel=1e-12), sd
        got = np.array(leads[lead]["data"])
        assert len(got) == n, f"{lead}: {len(got)} samples instead of {n}"
        # Raw minus baseline is exact: the baseline of V6 is 10 µV / 2.5 µV = -4 raw units.
        want_raw = stored[:, i].astype(float) + (4.0 if lead == "V6" else 0.0)
        diff = np.flatnonzero(got != want_raw)
        assert diff.size == 0, f"{lead} differs from sample {diff[0]}: {got[diff[0]]} != {want_raw[diff[0]]}"
        assert np.allclose(got * sd["factor"], scaled[:, i], rtol=0, atol=1e-6), lead


def test_bad_files_are_refused_before_connecting(tmp_path: Path):
    # Nothing listens on this gateway: a clear file error must come before any connection.
    gateway = "ws://127.0.0.1:9"
    token = "x.eyJhbWJ1bGFuY2UiOiJBTUItMjMifQ.y"  # {"ambulance":"AMB-23"}
    good = tmp_path / "good.edf"
    write_edf(good, RATE * 2)
    cases = {
        "short.edf": (good.read_bytes()[:200], "not an EDF file: header too short"),
        "cut.edf": (good.read_bytes()[:-100], "truncated: the header announces 2 data records"),
        "notes.dcm": (b"hello, this is not DICOM" * 10, "not a readable DICOM file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        agent = subprocess.run(
            [str(BIN), "ambulance", "--gateway", gateway, "--token", token, "--source", str(path),
             "--spool", str(tmp_path / "spool"), "--drain-timeout", "1"],
            capture_output=True, text=True, timeout=20)
        assert agent.returncode != 0, f"{name}: {agent.stderr}"
        assert message in agent.stderr, f"{name}: {agent.stderr}"
        assert "connect" not in agent.stderr.lower(), f"{name}: {agent.stderr}"
    # A DICOM object of another kind (no waveform) is refused by name.
    other = tmp_path / "other.dcm"
    write_dicom(other, 10)
    ds = pydicom.dcmread(other)
    del ds.WaveformSequence
    ds.save_as(str(other), enforce_file_format=True)
    agent = subprocess.run(
        [str(BIN), "ambulance", "--gateway", gateway, "--token", token, "--source", str(other),
         "--spool", str(tmp_path / "spool")], capture_output=True, text=True, timeout=20)
    assert agent.returncode != 0 and "DICOM file has no waveform sequence" in agent.stderr, agent.stderr
