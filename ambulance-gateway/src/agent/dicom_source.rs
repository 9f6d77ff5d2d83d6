//! A DICOM ECG (12-lead or General ECG Waveform Storage) as a [`Source`].
//!
//! The first multiplex group of the Waveform Sequence (5400,0100) is replayed: its channels
//! with the lead names of their Channel Source Sequence, its sampling frequency, and each
//! channel's sensitivity, correction factor, baseline and units, so that
//! `(raw - baseline) / gain` is what pydicom's `waveform_array` gives
//! (`raw × sensitivity × correction + ChannelBaseline`). Samples are 8-bit (SB, UB), 16-bit
//! (SS, US) or 32-bit (SL, UL), sent as stored.

use super::source::{Source, SourceError, file_identity, lead_mdc, rate_mhz};
use crate::wire::{Channel, Layout};
use dicom_core::PrimitiveValue;
use dicom_core::value::Value;
use dicom_object::{InMemDicomObject, Tag};
use std::path::{Path, PathBuf};

/// 12-lead ECG Waveform Storage.
const TWELVE_LEAD_ECG: &str = "1.2.840.10008.5.1.4.1.1.9.1.1";
/// General ECG Waveform Storage.
const GENERAL_ECG: &str = "1.2.840.10008.5.1.4.1.1.9.1.2";

const SOP_CLASS_UID: Tag = Tag(0x0008, 0x0016);
const CODE_VALUE: Tag = Tag(0x0008, 0x0100);
const CODE_MEANING: Tag = Tag(0x0008, 0x0104);
const NUMBER_OF_CHANNELS: Tag = Tag(0x003A, 0x0005);
const NUMBER_OF_SAMPLES: Tag = Tag(0x003A, 0x0010);
const SAMPLING_FREQUENCY: Tag = Tag(0x003A, 0x001A);
const CHANNEL_DEFINITIONS: Tag = Tag(0x003A, 0x0200);
const CHANNEL_LABEL: Tag = Tag(0x003A, 0x0203);
const CHANNEL_SOURCE: Tag = Tag(0x003A, 0x0208);
const CHANNEL_SENSITIVITY: Tag = Tag(0x003A, 0x0210);
const SENSITIVITY_UNITS: Tag = Tag(0x003A, 0x0211);
const CORRECTION_FACTOR: Tag = Tag(0x003A, 0x0212);
const CHANNEL_BASELINE: Tag = Tag(0x003A, 0x0213);
const WAVEFORM_SEQUENCE: Tag = Tag(0x5400, 0x0100);
const BITS_ALLOCATED: Tag = Tag(0x5400, 0x1004);
const SAMPLE_INTERPRETATION: Tag = Tag(0x5400, 0x1006);
const WAVEFORM_DATA: Tag = Tag(0x5400, 0x1010);

/// A DICOM ECG, read whole at open (such files are small).
pub struct DicomSource {
    path: PathBuf,
    layout: Layout,
    rate_mhz: u64,
    /// Samples of each channel.
    samples: Vec<Vec<i32>>,
}

impl DicomSource {
    /// Opens a file and checks its waveform.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let invalid = |why: String| SourceError::Invalid(format!("{}: {why}", path.display()));
        let obj = dicom_object::open_file(path).map_err(|e| {
            // The causes say what was wrong ("invalid magic code", an early end…).
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            invalid(format!("not a readable DICOM file: {why}"))
        })?;
        let sop = match obj.get(SOP_CLASS_UID) {
            Some(e) => e
                .to_str()
                .map(|s| s.trim_end_matches('\0').trim().to_owned()),
            None => Ok(obj.meta().media_storage_sop_class_uid().to_owned()),
        }
        .unwrap_or_default();
        if sop != TWELVE_LEAD_ECG && sop != GENERAL_ECG {
            return Err(invalid(format!(
                "SOP class {sop:?} is not 12-lead or General ECG Waveform Storage"
            )));
        }
        let group = obj
            .get(WAVEFORM_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
            .ok_or_else(|| invalid("DICOM file has no waveform sequence".into()))?;
        let (layout, rate_mhz, samples) = read_group(group).map_err(invalid)?;
        Ok(Self {
            path: path.to_owned(),
            layout,
            rate_mhz,
            samples,
        })
    }
}

/// The layout, rate and samples of a multiplex group.
fn read_group(group: &InMemDicomObject) -> Result<(Layout, u64, Vec<Vec<i32>>), String> {
    let channels = int(group, NUMBER_OF_CHANNELS, "NumberOfWaveformChannels")? as usize;
    let count = int(group, NUMBER_OF_SAMPLES, "NumberOfWaveformSamples")? as usize;
    let rate_hz = float(group, SAMPLING_FREQUENCY, "SamplingFrequency")?
        .ok_or("the waveform has no SamplingFrequency")?;
    let rate_mhz = rate_mhz(rate_hz).map_err(|e| e.to_string())?;
    let bits = int(group, BITS_ALLOCATED, "WaveformBitsAllocated")?;
    let interpretation = text(group, SAMPLE_INTERPRETATION);
    let sample = SampleFormat::of(bits, &interpretation).ok_or_else(|| {
        format!(
            "{bits}-bit {interpretation:?} waveform samples are not supported (8-bit SB/UB, \
             16-bit SS/US, 32-bit SL/UL are)"
        )
    })?;
    if channels == 0 || channels > 255 {
        return Err(format!(
            "{channels} waveform channels; the agent sends 1 to 255"
        ));
    }
    let definitions = group
        .get(CHANNEL_DEFINITIONS)
        .and_then(|e| e.items())
        .filter(|d| d.len() == channels)
        .ok_or("the ChannelDefinitionSequence does not define every channel")?;
    let layout = Layout {
        channels: definitions
            .iter()
            .enumerate()
            .map(|(i, def)| channel(i, def, rate_hz))
            .collect::<Result<_, _>>()?,
    };
    let data = group
        .get(WAVEFORM_DATA)
        .ok_or("the waveform has no WaveformData")?;
    // The value as little-endian bytes, however the reader typed it.
    let bytes: Vec<u8> = match data.value() {
        Value::Primitive(PrimitiveValue::U8(bytes)) => bytes.to_vec(),
        Value::Primitive(PrimitiveValue::U16(words)) => {
            words.iter().flat_map(|w| w.to_le_bytes()).collect()
        }
        Value::Primitive(PrimitiveValue::I16(words)) => {
            words.iter().flat_map(|w| w.to_le_bytes()).collect()
        }
        _ => return Err("the WaveformData is not a byte or word array".into()),
    };
    let values = sample.decode(&bytes)?;
    if values.len() < channels * count {
        return Err(format!(
            "truncated WaveformData: {} samples for {channels} channels × {count}",
            values.len()
        ));
    }
    let mut samples = vec![Vec::with_capacity(count); channels];
    for row in values.chunks_exact(channels).take(count) {
        for (s, &v) in samples.iter_mut().zip(row) {
            s.push(v);
        }
    }
    Ok((layout, rate_mhz, samples))
}

/// How WaveformData stores a sample (WaveformBitsAllocated and WaveformSampleInterpretation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleFormat {
    /// `SB`: signed 8-bit.
    I8,
    /// `UB`: unsigned 8-bit.
    U8,
    /// `SS`: signed 16-bit.
    I16,
    /// `US`: unsigned 16-bit.
    U16,
    /// `SL`: signed 32-bit.
    I32,
    /// `UL`: unsigned 32-bit (values above `i32::MAX` are refused).
    U32,
}

impl SampleFormat {
    fn of(bits: u32, interpretation: &str) -> Option<Self> {
        Some(match (bits, interpretation) {
            (8, "SB") => Self::I8,
            (8, "UB") => Self::U8,
            (16, "SS") => Self::I16,
            (16, "US") => Self::U16,
            (32, "SL") => Self::I32,
            (32, "UL") => Self::U32,
            _ => return None,
        })
    }

    /// The samples in little-endian `bytes`.
    fn decode(self, bytes: &[u8]) -> Result<Vec<i32>, String> {
        Ok(match self {
            Self::I8 => bytes.iter().map(|&b| i32::from(b as i8)).collect(),
            Self::U8 => bytes.iter().map(|&b| i32::from(b)).collect(),
            Self::I16 => bytes
                .chunks_exact(2)
                .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Self::U16 => bytes
                .chunks_exact(2)
                .map(|b| i32::from(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Self::I32 => bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Self::U32 => bytes
                .chunks_exact(4)
                .map(|b| {
                    let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    i32::try_from(v).map_err(|_| format!("the sample {v} does not fit 31 bits"))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Channel `index` from its ChannelDefinitionSequence item.
fn channel(index: usize, def: &InMemDicomObject, rate_hz: f64) -> Result<Channel, String> {
    let sensitivity = float(def, CHANNEL_SENSITIVITY, "ChannelSensitivity")?.unwrap_or(1.0);
    let correction =
        float(def, CORRECTION_FACTOR, "ChannelSensitivityCorrectionFactor")?.unwrap_or(1.0);
    let offset = float(def, CHANNEL_BASELINE, "ChannelBaseline")?.unwrap_or(0.0);
    let scale = sensitivity * correction;
    if !(scale.is_normal() && offset.is_finite()) {
        return Err(format!("channel {} has an unusable sensitivity", index + 1));
    }
    let item = |tag| def.get(tag).and_then(|e| e.items()).and_then(|i| i.first());
    let unit = item(SENSITIVITY_UNITS)
        .map(|u| text(u, CODE_VALUE))
        .unwrap_or_default();
    let label = lead_name(
        item(CHANNEL_SOURCE).map(|s| text(s, CODE_MEANING)),
        text(def, CHANNEL_LABEL),
        index,
    );
    Ok(Channel {
        index: index as u8,
        mdc: lead_mdc(&label),
        label,
        unit,
        rate_hz,
        gain: 1.0 / scale,
        baseline: -offset / scale,
    })
}

/// A channel's name: the standard lead its source's code meaning names (`Lead I` → `I`,
/// `Lead aVR, augmented …` → `aVR`), else its label, else the code meaning, else `CH<n>`.
fn lead_name(meaning: Option<String>, label: String, index: usize) -> String {
    let meaning = meaning.filter(|m| !m.is_empty());
    let lead = meaning.as_deref().and_then(|m| {
        let rest = m.strip_prefix("Lead ").unwrap_or(m);
        let name = rest.split([' ', ',', '(']).next().unwrap_or("");
        (lead_mdc(name) != 0).then(|| name.to_owned())
    });
    lead.or((!label.is_empty()).then_some(label))
        .or(meaning)
        .unwrap_or_else(|| format!("CH{}", index + 1))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0').to_owned())
        .unwrap_or_default()
}

fn int(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<u32, String> {
    obj.get(tag)
        .ok_or_else(|| format!("the waveform has no {name}"))?
        .to_int::<u32>()
        .map_err(|_| format!("the waveform's {name} is not a usable number"))
}

fn float(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<f64>, String> {
    obj.get(tag)
        .map(|e| {
            e.to_float64()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("the waveform's {name} is not a usable number"))
        })
        .transpose()
}

impl Source for DicomSource {
    fn layout(&self) -> Layout {
        self.layout.clone()
    }

    fn rate_mhz(&self) -> u64 {
        self.rate_mhz
    }

    fn read(&mut self, start: u64, count: usize) -> Result<Vec<Vec<i32>>, SourceError> {
        Ok(self
            .samples
            .iter()
            .map(|s| {
                let a = (start as usize).min(s.len());
                s[a..(a + count).min(s.len())].to_vec()
            })
            .collect())
    }

    fn identity(&self) -> String {
        file_identity("dicom", &self.path, &self.samples.len().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::source::TWELVE_LEADS;

    const FIXTURE: &[u8] = include_bytes!("testdata/ecg12.dcm");

    /// The values tests/e2e/test_file_sources.py (`lead_values`) stored in the fixture.
    fn lead_values(lead: i64, n: i64) -> Vec<i32> {
        (0..n)
            .map(|k| {
                let sine = (300.0 * (k as f64 / (20 + lead) as f64).sin()) as i64;
                ((k * (lead + 3)) % 1500 - 750 + sine) as i32
            })
            .collect()
    }

    fn open(bytes: &[u8]) -> Result<DicomSource, SourceError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecg.dcm");
        std::fs::write(&path, bytes).unwrap();
        DicomSource::open(&path)
    }

    #[test]
    fn a_pydicom_ecg_replays_exactly() {
        let mut src = open(FIXTURE).unwrap();
        assert_eq!(src.rate_mhz(), 500_000);
        let layout = src.layout();
        let labels: Vec<&str> = layout.channels.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, TWELVE_LEADS);
        for c in &layout.channels[..11] {
            assert_eq!((c.unit.as_str(), c.gain, c.baseline), ("uV", 0.4, 0.0));
            assert_eq!(c.mdc, lead_mdc(&c.label));
        }
        // V6 has ChannelBaseline 10 µV: raw × 2.5 + 10 = (raw - (-4)) / 0.4.
        assert_eq!(layout.channels[11].baseline, -4.0);
        let got = src.read(0, 100).unwrap();
        for (lead, samples) in got.iter().enumerate() {
            assert_eq!(samples, &lead_values(lead as i64, 50), "lead {lead}");
        }
        assert_eq!(src.read(48, 10).unwrap()[0].len(), 2);
        assert!(src.read(50, 10).unwrap()[0].is_empty());
    }

    #[test]
    fn bad_files_are_refused_clearly() {
        let err = |bytes: &[u8]| open(bytes).err().unwrap().to_string();
        assert!(err(b"hello").contains("not a readable DICOM file"));
        let cut = err(&FIXTURE[..FIXTURE.len() - 200]);
        assert!(
            cut.contains("not a readable DICOM file") || cut.contains("truncated WaveformData"),
            "{cut}"
        );
        assert!(err(&FIXTURE[..FIXTURE.len() / 2]).contains("DICOM"));
    }

    #[test]
    fn every_sample_format_decodes_little_endian() {
        let f = |bits, i: &str| SampleFormat::of(bits, i).unwrap();
        assert_eq!(f(8, "SB").decode(&[0x80, 0x7f]).unwrap(), [-128, 127]);
        assert_eq!(f(8, "UB").decode(&[0x80, 0x7f]).unwrap(), [128, 127]);
        assert_eq!(
            f(16, "SS").decode(&[0x00, 0x80, 0xff, 0x7f]).unwrap(),
            [-32768, 32767]
        );
        assert_eq!(f(16, "US").decode(&[0x00, 0x80]).unwrap(), [32768]);
        let min = i32::MIN.to_le_bytes();
        assert_eq!(f(32, "SL").decode(&min).unwrap(), [i32::MIN]);
        assert_eq!(f(32, "UL").decode(&7u32.to_le_bytes()).unwrap(), [7]);
        assert!(f(32, "UL").decode(&u32::MAX.to_le_bytes()).is_err());
        assert_eq!(SampleFormat::of(16, "MB"), None, "mu-law is audio, not ECG");
        assert_eq!(SampleFormat::of(12, "SS"), None);
    }

    #[test]
    fn lead_names_come_from_the_code_meaning() {
        let name = |m: &str, l: &str| lead_name(Some(m.into()), l.into(), 4);
        assert_eq!(name("Lead I (Einthoven)", ""), "I");
        assert_eq!(name("Lead aVR, augmented voltage, right", ""), "aVR");
        assert_eq!(name("Lead V1", "x"), "V1");
        assert_eq!(name("Pleth", "SpO2 pleth"), "SpO2 pleth");
        assert_eq!(name("Pleth", ""), "Pleth");
        assert_eq!(lead_name(None, String::new(), 4), "CH5");
    }
}
