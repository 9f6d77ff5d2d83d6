//! A sans-IO EDF/EDF+ reader (<https://www.edfplus.info/specs/edf.html>): header bytes in,
//! a [`Header`] out; then each data record's bytes in, its digital samples out.
//!
//! The caller does the reading: [`header_len`] of the first 256 bytes says how many header
//! bytes [`Header::parse`] needs, [`Header::record_len`] how long each data record is.

/// Why a file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Fewer bytes than the header needs.
    #[error("not an EDF file: header too short ({got} bytes, {want} needed)")]
    Short {
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// A header field does not hold what it must.
    #[error("not an EDF file: header field {field} is {value:?}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// Its content (only numeric and format fields are named, never the patient's).
        value: String,
    },
    /// A data record has the wrong length.
    #[error("EDF data record has {got} bytes, not {want}")]
    Record {
        /// Bytes given.
        got: usize,
        /// Bytes per record.
        want: usize,
    },
}

/// The kind of file, from the reserved field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain EDF.
    Edf,
    /// EDF+ with contiguous records.
    Contiguous,
    /// EDF+ whose records may have gaps between them (their onsets are in the annotations).
    Discontinuous,
}

/// One signal's header.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalHeader {
    /// Label, trimmed, e.g. `ECG II` or `EDF Annotations`.
    pub label: String,
    /// Physical dimension, trimmed, e.g. `uV`.
    pub unit: String,
    /// Physical value of `digital_min`.
    pub physical_min: f64,
    /// Physical value of `digital_max`.
    pub physical_max: f64,
    /// Smallest digital value.
    pub digital_min: i32,
    /// Largest digital value.
    pub digital_max: i32,
    /// Samples in each data record.
    pub samples_per_record: usize,
}

impl SignalHeader {
    /// Whether this is an EDF+ annotation signal.
    pub fn is_annotations(&self) -> bool {
        self.label == "EDF Annotations"
    }
}

/// A parsed header (the patient and recording fields are not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// EDF, EDF+C or EDF+D.
    pub kind: Kind,
    /// Header length, bytes.
    pub header_len: usize,
    /// Data records, `None` when the header says -1 (unknown).
    pub records: Option<u64>,
    /// Duration of a data record, seconds.
    pub record_secs: f64,
    /// Every signal, annotation signals included, in file order.
    pub signals: Vec<SignalHeader>,
}

/// The header length that the first 256 bytes announce (256 per signal plus 256).
pub fn header_len(prefix: &[u8]) -> Result<usize, ReadError> {
    if prefix.len() < 256 {
        return Err(ReadError::Short {
            got: prefix.len(),
            want: 256,
        });
    }
    if field(prefix, 0, 8) != "0" {
        return Err(bad("version", field(prefix, 0, 8)));
    }
    let ns: usize = parse("number of signals", field(prefix, 252, 4))?;
    if ns == 0 {
        return Err(bad("number of signals", "0"));
    }
    Ok(256 * (ns + 1))
}

impl Header {
    /// Parses the header at the start of `bytes` (which may go on into the data records).
    pub fn parse(bytes: &[u8]) -> Result<Self, ReadError> {
        let header_len = header_len(bytes)?;
        if bytes.len() < header_len {
            return Err(ReadError::Short {
                got: bytes.len(),
                want: header_len,
            });
        }
        let declared: usize = parse("header bytes", field(bytes, 184, 8))?;
        if declared != header_len {
            return Err(bad("header bytes", field(bytes, 184, 8)));
        }
        let reserved = field(bytes, 192, 44);
        let kind = if reserved.starts_with("EDF+C") {
            Kind::Contiguous
        } else if reserved.starts_with("EDF+D") {
            Kind::Discontinuous
        } else {
            Kind::Edf
        };
        let records = match field(bytes, 236, 8) {
            "-1" => None,
            s => Some(parse("number of data records", s)?),
        };
        let record_secs: f64 = parse("data record duration", field(bytes, 244, 8))?;
        if !(record_secs.is_finite() && record_secs >= 0.0) {
            return Err(bad("data record duration", field(bytes, 244, 8)));
        }
        let ns = header_len / 256 - 1;
        // Field widths of the per-signal header, in file order.
        const WIDTHS: [usize; 10] = [16, 80, 8, 8, 8, 8, 8, 80, 8, 32];
        let at = |f: usize, s: usize| 256 + WIDTHS[..f].iter().sum::<usize>() * ns + WIDTHS[f] * s;
        let signals = (0..ns)
            .map(|s| {
                let get = |f: usize| field(bytes, at(f, s), WIDTHS[f]);
                let sig = SignalHeader {
                    label: get(0).to_owned(),
                    unit: get(2).to_owned(),
                    physical_min: parse("physical minimum", get(3))?,
                    physical_max: parse("physical maximum", get(4))?,
                    digital_min: parse("digital minimum", get(5))?,
                    digital_max: parse("digital maximum", get(6))?,
                    samples_per_record: parse("samples per data record", get(8))?,
                };
                let digital = i32::from(i16::MIN)..=i32::from(i16::MAX);
                if !(digital.contains(&sig.digital_min)
                    && digital.contains(&sig.digital_max)
                    && sig.digital_min < sig.digital_max)
                {
                    return Err(bad("digital minimum/maximum", get(5)));
                }
                Ok(sig)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            kind,
            header_len,
            records,
            record_secs,
            signals,
        })
    }

    /// Bytes per data record.
    pub fn record_len(&self) -> usize {
        self.signals.iter().map(|s| 2 * s.samples_per_record).sum()
    }

    /// Digital samples of each signal of one data record (annotation signals included, as
    /// raw 16-bit values).
    pub fn samples(&self, record: &[u8]) -> Result<Vec<Vec<i16>>, ReadError> {
        self.check(record)?;
        let mut at = 0;
        Ok(self
            .signals
            .iter()
            .map(|s| {
                let bytes = &record[at..at + 2 * s.samples_per_record];
                at += bytes.len();
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect()
            })
            .collect())
    }

    /// The record's start in µs after the file's start, from the time-keeping TAL of its
    /// first annotation signal (`None` without one, or when it cannot be read).
    pub fn onset_us(&self, record: &[u8]) -> Result<Option<i64>, ReadError> {
        self.check(record)?;
        let mut at = 0;
        for s in &self.signals {
            let len = 2 * s.samples_per_record;
            if s.is_annotations() {
                let tal = &record[at..at + len];
                let end = tal.iter().position(|&b| b == 0x14).unwrap_or(0);
                return Ok(std::str::from_utf8(&tal[..end])
                    .ok()
                    .and_then(seconds_to_us));
            }
            at += len;
        }
        Ok(None)
    }

    fn check(&self, record: &[u8]) -> Result<(), ReadError> {
        let want = self.record_len();
        if record.len() == want {
            Ok(())
        } else {
            Err(ReadError::Record {
                got: record.len(),
                want,
            })
        }
    }
}

/// `+1.25` (signed decimal seconds) as µs.
fn seconds_to_us(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => return None,
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut us = whole.parse::<i64>().ok()?.checked_mul(1_000_000)?;
    let frac6: String = frac.chars().chain("000000".chars()).take(6).collect();
    us += frac6.parse::<i64>().ok()?;
    Some(if negative { -us } else { us })
}

/// A header field, trimmed of its padding (non-ASCII reads as empty).
fn field(bytes: &[u8], at: usize, len: usize) -> &str {
    std::str::from_utf8(&bytes[at..at + len])
        .unwrap_or("")
        .trim_matches(|c: char| c == ' ' || c == '\0')
}

fn parse<T: std::str::FromStr>(name: &'static str, value: &str) -> Result<T, ReadError> {
    value.parse().map_err(|_| bad(name, value))
}

fn bad(field: &'static str, value: &str) -> ReadError {
    ReadError::Field {
        field,
        value: value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edf::{Annotation, File, Record, Signal, Start};

    fn written() -> (File, Vec<u8>) {
        let signal = |label: &str, spr| Signal {
            label: label.into(),
            transducer: String::new(),
            unit: "uV".into(),
            physical_min: -3276.8,
            physical_max: 3276.7,
            digital_min: i16::MIN,
            digital_max: i16::MAX,
            prefilter: String::new(),
            samples_per_record: spr,
        };
        let f = File {
            patient: "X X X X".into(),
            recording: "Startdate 01-JAN-2026 X X X".into(),
            start: Start::from_unix(1_767_225_600),
            record_us: 500_000,
            signals: vec![signal("ECG I", 4), signal("ECG II", 4)],
            records: vec![
                Record {
                    onset_us: 0,
                    samples: vec![vec![1, -2, 3, i16::MIN], vec![5, 6, 7, i16::MAX]],
                },
                Record {
                    onset_us: 2_250_000,
                    samples: vec![vec![9, 10, 11, 12], vec![-13, -14, -15, -16]],
                },
            ],
            annotations: vec![Annotation {
                onset_us: 100_000,
                duration_us: None,
                text: "x".into(),
            }],
        };
        let bytes = f.encode().unwrap();
        (f, bytes)
    }

    #[test]
    fn reads_back_what_our_writer_wrote() {
        let (f, bytes) = written();
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(h.kind, Kind::Discontinuous);
        assert_eq!(h.header_len, 256 * 4);
        assert_eq!(header_len(&bytes[..256]).unwrap(), 256 * 4);
        assert_eq!(h.records, Some(2));
        assert_eq!(h.record_secs, 0.5);
        let labels: Vec<&str> = h.signals.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["ECG I", "ECG II", "EDF Annotations"]);
        let s = &h.signals[0];
        assert_eq!((s.unit.as_str(), s.samples_per_record), ("uV", 4));
        assert_eq!((s.physical_min, s.physical_max), (-3276.8, 3276.7));
        assert_eq!((s.digital_min, s.digital_max), (-32768, 32767));
        assert!(h.signals[2].is_annotations());
        let len = h.record_len();
        assert_eq!(bytes.len(), h.header_len + 2 * len);
        for (r, want) in f.records.iter().enumerate() {
            let rec = &bytes[h.header_len + r * len..h.header_len + (r + 1) * len];
            let got = h.samples(rec).unwrap();
            assert_eq!(got[..2], want.samples[..]);
            assert_eq!(h.onset_us(rec).unwrap(), Some(want.onset_us));
        }
    }

    #[test]
    fn short_or_corrupt_headers_are_refused() {
        let (_, bytes) = written();
        assert_eq!(
            Header::parse(&bytes[..100]),
            Err(ReadError::Short {
                got: 100,
                want: 256
            })
        );
        assert_eq!(
            Header::parse(&bytes[..600]),
            Err(ReadError::Short {
                got: 600,
                want: 1024
            })
        );
        let mut b = bytes.clone();
        b[0] = b'9';
        assert!(matches!(
            Header::parse(&b),
            Err(ReadError::Field {
                field: "version",
                ..
            })
        ));
        let mut b = bytes.clone();
        b[252..256].copy_from_slice(b"x   ");
        assert!(matches!(header_len(&b), Err(ReadError::Field { .. })));
        let mut b = bytes.clone();
        b[244..252].copy_from_slice(b"abc     ");
        assert!(matches!(Header::parse(&b), Err(ReadError::Field { .. })));
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(
            h.samples(&bytes[1024..1030]),
            Err(ReadError::Record {
                got: 6,
                want: h.record_len()
            })
        );
    }

    #[test]
    fn tal_seconds() {
        assert_eq!(seconds_to_us("+0"), Some(0));
        assert_eq!(seconds_to_us("+2.25"), Some(2_250_000));
        assert_eq!(seconds_to_us("-0.000001"), Some(-1));
        assert_eq!(seconds_to_us("1"), None);
        assert_eq!(seconds_to_us("+x"), None);
    }
}
