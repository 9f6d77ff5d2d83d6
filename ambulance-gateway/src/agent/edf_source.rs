//! An EDF or EDF+ file as a [`Source`]: every ordinary signal a channel, its digital values
//! sent as they are, with the file's labels, units and scaling.
//!
//! The `EDF Annotations` signal is skipped. Channels keep their own rates (samples per data
//! record): the base rate is the least common multiple, and each channel is sent at its own
//! rate ([`Source::decimation`]). The records of an EDF+D file are replayed back to back: the
//! gaps between them are not kept (a warning says how many).

use super::source::{Source, SourceError, file_identity, lcm, lead_mdc, rate_mhz};
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
    /// Base samples per data record: the least common multiple of the signals' counts.
    per_record: u64,
    /// Base samples per sample, of each channel.
    decimation: Vec<u64>,
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
        let counts: Vec<u64> = signals
            .iter()
            .map(|&i| header.signals[i].samples_per_record as u64)
            .collect();
        if counts.contains(&0) || header.record_secs <= 0.0 {
            return Err(invalid("its data records hold no samples".into()));
        }
        let per_record = counts.iter().fold(1, |l, &c| lcm(l, c));
        if per_record > 1 << 24 {
            return Err(invalid(format!(
                "its signals' rates ({} samples per data record) have no common base rate \
                 the agent can use",
                counts
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let decimation = counts.iter().map(|&c| per_record / c).collect();
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
            decimation,
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
                        rate_hz: s.samples_per_record as f64 / self.header.record_secs,
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

    fn decimation(&self) -> Vec<u64> {
        self.decimation.clone()
    }

    fn read(&mut self, start: u64, count: usize) -> Result<Vec<Vec<i32>>, SourceError> {
        let end = (start + count as u64).min(self.records * self.per_record);
        let mut out = vec![Vec::new(); self.signals.len()];
        if start >= end {
            return Ok(out);
        }
        for r in start / self.per_record..=(end - 1) / self.per_record {
            let base = r * self.per_record;
            // Each channel's samples whose base positions are in start..end, in this record.
            let ranges: Vec<(usize, usize)> = self
                .decimation
                .iter()
                .map(|&d| {
                    let first = start.max(base).saturating_sub(base).div_ceil(d);
                    let last = (end.min(base + self.per_record) - base).div_ceil(d);
                    (first as usize, last as usize)
                })
                .collect();
            let signals = self.signals.clone();
            let record = self.record(r)?;
            for ((o, &i), (first, last)) in out.iter_mut().zip(&signals).zip(ranges) {
                o.extend(record[i][first..last].iter().map(|&v| i32::from(v)));
            }
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
    fn mixed_rates_replay_each_channel_at_its_own_rate() {
        use crate::agent::source::Framer;
        use crate::wire::{Payload, decode};
        let dir = tempfile::tempdir().unwrap();
        let (path, want) = write(
            dir.path(),
            vec![
                signal("ECG II", 250),
                signal("Pleth", 125),
                signal("Resp", 25),
            ],
            &[0, 1_000_000, 2_000_000],
        );
        let src = EdfSource::open(&path).unwrap();
        assert_eq!(
            (src.rate_mhz(), src.decimation()),
            (250_000, vec![1, 2, 10])
        );
        let rates: Vec<f64> = src.layout().channels.iter().map(|c| c.rate_hz).collect();
        assert_eq!(rates, [250.0, 125.0, 25.0]);
        let mut framer = Framer::new("AMB-1".parse().unwrap(), Box::new(src), 0, 1, None, 0);
        let mut got = vec![Vec::new(); 3];
        while !framer.finished() {
            for p in framer.produce().unwrap() {
                let frame = decode(&p.bytes).unwrap();
                let Payload::Waveform(w) = frame.payload else {
                    continue;
                };
                // Every block starts at the frame's capture time: a whole number of each
                // channel's sample periods (4, 8 and 40 ms) from the start.
                assert_eq!(frame.header.capture_us % 40_000, 0);
                for b in w.blocks {
                    got[usize::from(b.channel)].extend(b.samples);
                }
            }
        }
        assert_eq!(got, want, "every sample of every channel, once, in order");
        assert_eq!(framer.position(), 750);
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
            vec![signal("I", 5003), signal("Pleth", 5009)],
            &[0],
        );
        assert!(
            err(&path).contains("rates (5003, 5009 samples per data record) have no common"),
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
