//! An EDF or EDF+ file as a [`Source`]: every ordinary signal a channel, its digital values
//! sent as they are, with the file's labels, units and scaling.
//!
//! The `EDF Annotations` signal is skipped. Every channel must have the same samples per
//! data record (the framer sends all channels at one rate). The records of an EDF+D file
//! are replayed back to back: the gaps between them are not kept (a warning says how many).

use super::source::{Source, SourceError, file_identity, lead_mdc, rate_mhz};
use crate::wire::{Channel, Layout};
use recorder::edf_read::{self, Header, Kind};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An EDF/EDF+ file read in place, one data record at a time.
pub struct EdfSource {
    path: PathBuf,
    file: File,
    header: Header,
    /// Header indexes of the ordinary signals (the channels).
    signals: Vec<usize>,
    records: u64,
    per_record: usize,
    rate_mhz: u64,
    /// The last data record read: its index and samples.
    cached: Option<(u64, Vec<Vec<i16>>)>,
}

impl EdfSource {
    /// Opens a file and checks its header and length.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let io = |source| SourceError::Io {
            path: path.to_owned(),
            source,
        };
        let invalid = |why: String| SourceError::Invalid(format!("{}: {why}", path.display()));
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut bytes = Vec::new();
        (&mut file).take(256).read_to_end(&mut bytes).map_err(io)?;
        let header_len = edf_read::header_len(&bytes).map_err(|e| invalid(e.to_string()))?;
        (&mut file)
            .take((header_len - bytes.len()) as u64)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let header = Header::parse(&bytes).map_err(|e| invalid(e.to_string()))?;
        let signals: Vec<usize> = (0..header.signals.len())
            .filter(|&i| !header.signals[i].is_annotations())
            .collect();
        if signals.is_empty() || signals.len() > 255 {
            return Err(invalid(format!(
                "{} signals besides annotations; the agent sends 1 to 255",
                signals.len()
            )));
        }
        let per_record = header.signals[signals[0]].samples_per_record;
        if signals
            .iter()
            .any(|&i| header.signals[i].samples_per_record != per_record)
        {
            let counts: Vec<String> = signals
                .iter()
                .map(|&i| header.signals[i].samples_per_record.to_string())
                .collect();
            return Err(invalid(format!(
                "its signals have different sample rates ({} samples per data record); \
                 the agent sends every channel at one rate",
                counts.join(", ")
            )));
        }
        if per_record == 0 || header.record_secs <= 0.0 {
            return Err(invalid("its data records hold no samples".into()));
        }
        let rate_mhz = rate_mhz(per_record as f64 / header.record_secs)?;
        for &i in &signals {
            let s = &header.signals[i];
            if !(s.physical_max - s.physical_min).is_normal() {
                return Err(invalid(format!(
                    "signal {} has equal physical minimum and maximum",
                    i + 1
                )));
            }
        }
        let record_len = header.record_len() as u64;
        let available = (len - header_len as u64) / record_len;
        let records = header.records.unwrap_or(available);
        if available < records {
            return Err(invalid(format!(
                "truncated: the header announces {records} data records, the file holds \
                 {available}"
            )));
        }
        let mut source = Self {
            path: path.to_owned(),
            file,
            rate_mhz,
            header,
            signals,
            records,
            per_record,
            cached: None,
        };
        if source.header.kind == Kind::Discontinuous {
            let gaps = source.gaps()?;
            if gaps > 0 {
                tracing::warn!(
                    gaps,
                    "EDF+D file: its data records are replayed back to back, without the gaps"
                );
            }
        }
        Ok(source)
    }

    /// How many data records do not start where the previous one ended.
    fn gaps(&mut self) -> Result<u64, SourceError> {
        let step = (self.header.record_secs * 1e6).round() as i64;
        let mut gaps = 0;
        let mut previous = None;
        for r in 0..self.records {
            let bytes = self.record_bytes(r)?;
            let onset = self
                .header
                .onset_us(&bytes)
                .map_err(|e| self.invalid(e.to_string()))?;
            if let (Some(p), Some(o)) = (previous, onset)
                && o != p + step
            {
                gaps += 1;
            }
            previous = onset;
        }
        Ok(gaps)
    }

    fn record_bytes(&mut self, r: u64) -> Result<Vec<u8>, SourceError> {
        let len = self.header.record_len();
        let at = self.header.header_len as u64 + r * len as u64;
        let mut buf = vec![0; len];
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|e| self.io(e))?;
        Ok(buf)
    }

    fn record(&mut self, r: u64) -> Result<&[Vec<i16>], SourceError> {
        if self.cached.as_ref().is_none_or(|(i, _)| *i != r) {
            let bytes = self.record_bytes(r)?;
            let samples = self
                .header
                .samples(&bytes)
                .map_err(|e| self.invalid(e.to_string()))?;
            self.cached = Some((r, samples));
        }
        Ok(&self.cached.as_ref().expect("just read").1)
    }

    fn io(&self, source: io::Error) -> SourceError {
        SourceError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn invalid(&self, why: String) -> SourceError {
        SourceError::Invalid(format!("{}: {why}", self.path.display()))
    }
}

impl Source for EdfSource {
    fn layout(&self) -> Layout {
        let rate_hz = self.per_record as f64 / self.header.record_secs;
        Layout {
            channels: self
                .signals
                .iter()
                .enumerate()
                .map(|(index, &i)| {
                    let s = &self.header.signals[i];
                    let gain = f64::from(s.digital_max - s.digital_min)
                        / (s.physical_max - s.physical_min);
                    let lead = s.label.strip_prefix("ECG ").unwrap_or(&s.label);
                    Channel {
                        index: index as u8,
                        label: s.label.clone(),
                        unit: s.unit.clone(),
                        rate_hz,
                        gain,
                        baseline: f64::from(s.digital_min) - s.physical_min * gain,
                        mdc: lead_mdc(lead.trim()),
                    }
                })
                .collect(),
        }
    }

    fn rate_mhz(&self) -> u64 {
        self.rate_mhz
    }

    fn read(&mut self, start: u64, count: usize) -> Result<Vec<Vec<i32>>, SourceError> {
        let per_record = self.per_record as u64;
        let end = (start + count as u64).min(self.records * per_record);
        let signals = self.signals.clone();
        let mut out = vec![Vec::with_capacity(count); signals.len()];
        let mut at = start;
        while at < end {
            let (r, first) = (at / per_record, (at % per_record) as usize);
            let last = (end - r * per_record).min(per_record) as usize;
            let record = self.record(r)?;
            for (o, &i) in out.iter_mut().zip(&signals) {
                o.extend(record[i][first..last].iter().map(|&v| i32::from(v)));
            }
            at = r * per_record + last as u64;
        }
        Ok(out)
    }

    fn identity(&self) -> String {
        file_identity("edf", &self.path, &self.signals.len().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recorder::edf::{File as EdfFile, Record, Signal, Start};

    fn signal(label: &str, spr: usize) -> Signal {
        Signal {
            label: label.into(),
            transducer: String::new(),
            unit: "uV".into(),
            physical_min: -5000.0,
            physical_max: 5000.0,
            digital_min: -2000,
            digital_max: 2000,
            prefilter: String::new(),
            samples_per_record: spr,
        }
    }

    fn write(dir: &Path, signals: Vec<Signal>, onsets: &[i64]) -> (PathBuf, Vec<Vec<i32>>) {
        let records: Vec<Record> = onsets
            .iter()
            .enumerate()
            .map(|(r, &onset_us)| Record {
                onset_us,
                samples: signals
                    .iter()
                    .enumerate()
                    .map(|(s, sig)| {
                        (0..sig.samples_per_record)
                            .map(|k| ((r * 1000 + k) as i16 * (s as i16 + 1)) % 2000)
                            .collect()
                    })
                    .collect(),
            })
            .collect();
        let want = (0..signals.len())
            .map(|s| {
                records
                    .iter()
                    .flat_map(|r| r.samples[s].iter().map(|&v| i32::from(v)))
                    .collect()
            })
            .collect();
        let bytes = EdfFile {
            patient: "X X X X".into(),
            recording: "Startdate 01-JAN-2026 X X X".into(),
            start: Start::from_unix(1_767_225_600),
            record_us: 1_000_000,
            signals,
            records,
            annotations: vec![],
        }
        .encode()
        .unwrap();
        let path = dir.join("f.edf");
        std::fs::write(&path, bytes).unwrap();
        (path, want)
    }

    #[test]
    fn our_own_edf_replays_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = write(
            dir.path(),
            vec![signal("ECG I", 250), signal("ECG V1", 250)],
            &[0, 1_000_000, 2_000_000],
        );
        let mut src = EdfSource::open(&path).unwrap();
        assert_eq!(src.rate_mhz(), 250_000);
        let layout = src.layout();
        let c = &layout.channels[1];
        assert_eq!((c.label.as_str(), c.unit.as_str()), ("ECG V1", "uV"));
        assert_eq!((c.rate_hz, c.gain, c.baseline), (250.0, 0.4, 0.0));
        assert_eq!(c.mdc, lead_mdc("V1"));
        // Reads across record boundaries, in odd-sized pieces.
        let mut got = vec![Vec::new(); 2];
        let mut at = 0;
        loop {
            let part = src.read(at, 37).unwrap();
            if part[0].is_empty() {
                break;
            }
            at += part[0].len() as u64;
            for (g, p) in got.iter_mut().zip(part) {
                g.extend(p);
            }
        }
        assert_eq!(got, want);
        assert_eq!(src.read(740, 100).unwrap()[0].len(), 10);
    }

    #[test]
    fn edf_plus_d_replays_back_to_back() {
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = write(dir.path(), vec![signal("II", 10)], &[0, 5_000_000]);
        let mut src = EdfSource::open(&path).unwrap();
        assert_eq!(src.gaps().unwrap(), 1);
        assert_eq!(src.read(0, 100).unwrap(), want);
    }

    #[test]
    fn bad_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let err = |path: &Path| EdfSource::open(path).err().unwrap().to_string();
        let (path, _) = write(
            dir.path(),
            vec![signal("I", 250), signal("Pleth", 125)],
            &[0],
        );
        assert!(
            err(&path).contains("different sample rates (250, 125"),
            "{}",
            err(&path)
        );
        let (path, _) = write(dir.path(), vec![signal("I", 250)], &[0, 1_000_000]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(
            err(&path).contains("truncated: the header announces 2 data records, the file holds 1")
        );
        std::fs::write(&path, &bytes[..300]).unwrap();
        assert!(err(&path).contains("not an EDF file: header too short"));
        std::fs::write(&path, b"hello").unwrap();
        assert!(err(&path).contains("not an EDF file: header too short"));
    }

    /// A file written by pyedflib (not our code): 3 signals at 200 Hz, 2 s.
    #[test]
    fn a_pyedflib_file_replays_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("py.edf");
        std::fs::write(&path, include_bytes!("testdata/pyedflib.edf")).unwrap();
        let mut src = EdfSource::open(&path).unwrap();
        let layout = src.layout();
        let labels: Vec<&str> = layout.channels.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["I", "II", "V1"]);
        assert_eq!(layout.channels[0].unit, "uV");
        assert_eq!(src.rate_mhz(), 200_000);
        let got = src.read(0, 1000).unwrap();
        for (c, samples) in got.iter().enumerate() {
            let want: Vec<i32> = (0..400)
                .map(|k| (k * 7 + c as i32 * 100) % 2001 - 1000)
                .collect();
            assert_eq!(samples, &want, "channel {c}");
        }
    }
}
