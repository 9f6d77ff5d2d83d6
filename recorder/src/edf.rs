//! A sans-IO EDF+ writer (<https://www.edfplus.info/specs/edfplus.html>): a [`File`] in,
//! the file's bytes out.
//!
//! The header is fixed-width ASCII (256 bytes plus 256 per signal); each data record holds
//! every signal's 16-bit little-endian samples, then the `EDF Annotations` signal with the
//! record's time-keeping TAL and the annotations that fall in it. Times are whole
//! microseconds so that onsets are written exactly.

/// Why a file cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdfError {
    /// A number does not fit its 8-character header field.
    #[error("{0} does not fit an 8-character EDF header field")]
    Field(String),
    /// A data record's samples do not match the signal's samples per record.
    #[error("data record {record}: signal {signal} has {got} samples, not {want}")]
    Samples {
        /// The record's index.
        record: usize,
        /// The signal's index.
        signal: usize,
        /// Samples given.
        got: usize,
        /// Samples per record of the signal.
        want: usize,
    },
    /// A data record does not have one sample vector per signal.
    #[error("data record {0} does not have one sample vector per signal")]
    Signals(usize),
    /// The record duration is not positive, or records do not start in order.
    #[error("data records must have a positive duration and start in order")]
    Timing,
    /// The start date is outside EDF's years 1985 to 2084.
    #[error("EDF dates cover 1985 to 2084")]
    Year,
}

/// Date and time of the first data record (local time of the recording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Full year, 1985..=2084.
    pub year: i32,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
}

impl Start {
    /// The UTC date and time of `unix_s`, seconds since the Unix epoch.
    pub fn from_unix(unix_s: i64) -> Self {
        let days = unix_s.div_euclid(86_400);
        let secs = unix_s.rem_euclid(86_400) as u32;
        // Civil date from days since 1970-01-01, with 400-year eras starting on 0000-03-01.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self {
            year,
            month,
            day,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
        }
    }

    /// `dd-MMM-yyyy` as in the EDF+ recording field, e.g. `01-JAN-2026`.
    pub fn edfplus_date(&self) -> String {
        const MONTHS: [&str; 12] = [
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ];
        let month = MONTHS[(self.month.clamp(1, 12) - 1) as usize];
        format!("{:02}-{month}-{:04}", self.day, self.year)
    }
}

/// One ordinary signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Label, e.g. `ECG MLII` (at most 16 characters are kept).
    pub label: String,
    /// Transducer type (80 characters at most).
    pub transducer: String,
    /// Physical dimension, e.g. `mV` (8 characters at most).
    pub unit: String,
    /// Physical value of `digital_min`.
    pub physical_min: f64,
    /// Physical value of `digital_max`.
    pub physical_max: f64,
    /// Smallest digital value.
    pub digital_min: i16,
    /// Largest digital value.
    pub digital_max: i16,
    /// Prefiltering (80 characters at most).
    pub prefilter: String,
    /// Samples in each data record.
    pub samples_per_record: usize,
}

/// An annotation: onset in µs from the file's start, optional duration, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Onset, µs after the start of the file.
    pub onset_us: i64,
    /// Duration in µs, if any.
    pub duration_us: Option<i64>,
    /// Text (the TAL separators 0x14, 0x15 and NUL are replaced by spaces).
    pub text: String,
}

/// One data record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Start, µs after the start of the file (time-keeping TAL).
    pub onset_us: i64,
    /// Digital samples, one vector per signal.
    pub samples: Vec<Vec<i16>>,
}

/// A whole EDF+ file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    /// Local patient identification (EDF+ subfields; `X X X X` when unknown).
    pub patient: String,
    /// Local recording identification (`Startdate dd-MMM-yyyy …`).
    pub recording: String,
    /// Start of the first data record.
    pub start: Start,
    /// Duration of one data record, µs.
    pub record_us: i64,
    /// The ordinary signals; the annotation signal is added last.
    pub signals: Vec<Signal>,
    /// Data records in time order.
    pub records: Vec<Record>,
    /// Annotations; each goes into the last record starting at or before its onset.
    pub annotations: Vec<Annotation>,
}

impl File {
    /// Whether the records follow each other without gaps (EDF+C, else EDF+D).
    pub fn contiguous(&self) -> bool {
        self.records
            .windows(2)
            .all(|w| w[1].onset_us - w[0].onset_us == self.record_us)
    }

    /// The file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, EdfError> {
        if self.record_us <= 0
            || self
                .records
                .windows(2)
                .any(|w| w[1].onset_us - w[0].onset_us < self.record_us)
        {
            return Err(EdfError::Timing);
        }
        let tals = self.tals();
        let ann_samples = tals.iter().map(|t| t.len().div_ceil(2)).max().unwrap_or(1);
        let mut out = self.header(ann_samples)?;
        for (r, (record, tal)) in self.records.iter().zip(&tals).enumerate() {
            if record.samples.len() != self.signals.len() {
                return Err(EdfError::Signals(r));
            }
            for (s, (signal, samples)) in self.signals.iter().zip(&record.samples).enumerate() {
                if samples.len() != signal.samples_per_record {
                    return Err(EdfError::Samples {
                        record: r,
                        signal: s,
                        got: samples.len(),
                        want: signal.samples_per_record,
                    });
                }
                out.extend(samples.iter().flat_map(|v| v.to_le_bytes()));
            }
            out.extend_from_slice(tal);
            out.resize(out.len() + ann_samples * 2 - tal.len(), 0);
        }
        Ok(out)
    }

    /// Each record's annotation bytes: its time-keeping TAL, then its annotations.
    fn tals(&self) -> Vec<Vec<u8>> {
        let mut tals: Vec<Vec<u8>> = self
            .records
            .iter()
            .map(|r| format!("{}\x14\x14\0", seconds(r.onset_us)).into_bytes())
            .collect();
        for a in &self.annotations {
            let i = self
                .records
                .partition_point(|r| r.onset_us <= a.onset_us)
                .saturating_sub(1);
            let Some(tal) = tals.get_mut(i) else { break };
            tal.extend(seconds(a.onset_us).bytes());
            if let Some(d) = a.duration_us {
                tal.push(0x15);
                tal.extend(seconds(d).trim_start_matches('+').bytes());
            }
            tal.push(0x14);
            tal.extend(a.text.bytes().map(|b| match b {
                0 | 0x14 | 0x15 => b' ',
                b => b,
            }));
            tal.extend(b"\x14\0");
        }
        tals
    }

    fn header(&self, ann_samples: usize) -> Result<Vec<u8>, EdfError> {
        let s = self.start;
        if !(1985..=2084).contains(&s.year) {
            return Err(EdfError::Year);
        }
        let ns = self.signals.len() + 1;
        let mut h = Vec::with_capacity(256 * (ns + 1));
        put(&mut h, "0", 8);
        put(&mut h, &self.patient, 80);
        put(&mut h, &self.recording, 80);
        let date = format!("{:02}.{:02}.{:02}", s.day, s.month, s.year % 100);
        put(&mut h, &date, 8);
        put(
            &mut h,
            &format!("{:02}.{:02}.{:02}", s.hour, s.minute, s.second),
            8,
        );
        put(&mut h, &(256 * (ns + 1)).to_string(), 8);
        put(
            &mut h,
            if self.contiguous() { "EDF+C" } else { "EDF+D" },
            44,
        );
        put(&mut h, &number(self.records.len() as f64)?, 8);
        put(&mut h, seconds(self.record_us).trim_start_matches('+'), 8);
        put(&mut h, &ns.to_string(), 4);
        let ann = Signal {
            label: "EDF Annotations".into(),
            transducer: String::new(),
            unit: String::new(),
            physical_min: -1.0,
            physical_max: 1.0,
            digital_min: i16::MIN,
            digital_max: i16::MAX,
            prefilter: String::new(),
            samples_per_record: ann_samples,
        };
        let all: Vec<&Signal> = self.signals.iter().chain([&ann]).collect();
        for sig in &all {
            put(&mut h, &sig.label, 16);
        }
        for sig in &all {
            put(&mut h, &sig.transducer, 80);
        }
        for sig in &all {
            put(&mut h, &sig.unit, 8);
        }
        for sig in &all {
            put(&mut h, &number(sig.physical_min)?, 8);
        }
        for sig in &all {
            put(&mut h, &number(sig.physical_max)?, 8);
        }
        for sig in &all {
            put(&mut h, &sig.digital_min.to_string(), 8);
        }
        for sig in &all {
            put(&mut h, &sig.digital_max.to_string(), 8);
        }
        for sig in &all {
            put(&mut h, &sig.prefilter, 80);
        }
        for sig in &all {
            put(&mut h, &number(sig.samples_per_record as f64)?, 8);
        }
        for _ in &all {
            put(&mut h, "", 32);
        }
        Ok(h)
    }
}

/// `v` exactly in at most 8 characters, if it can be.
pub fn exact_number(v: f64) -> Option<String> {
    let s = format!("{v}");
    (v.is_finite() && s.len() <= 8).then_some(s)
}

/// `v` in at most 8 characters, rounded if it must be.
fn number(v: f64) -> Result<String, EdfError> {
    if let Some(s) = exact_number(v) {
        return Ok(s);
    }
    (0..8)
        .rev()
        .map(|p| format!("{v:.p$}"))
        .find(|s| s.len() <= 8 && v.is_finite())
        .ok_or_else(|| EdfError::Field(v.to_string()))
}

/// µs as signed seconds without trailing zeros, e.g. `+1.25`.
fn seconds(us: i64) -> String {
    let sign = if us < 0 { '-' } else { '+' };
    let (s, frac) = (us.unsigned_abs() / 1_000_000, us.unsigned_abs() % 1_000_000);
    if frac == 0 {
        format!("{sign}{s}")
    } else {
        let f = format!("{frac:06}");
        format!("{sign}{s}.{}", f.trim_end_matches('0'))
    }
}

/// Appends `text` as printable ASCII, cut or space-padded to `width` bytes.
fn put(out: &mut Vec<u8>, text: &str, width: usize) {
    let ascii = text.replace('°', "deg");
    let mut bytes: Vec<u8> = ascii
        .chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            _ => b'_',
        })
        .take(width)
        .collect();
    bytes.resize(width, b' ');
    out.extend(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> File {
        File {
            patient: "X X X X".into(),
            recording: "Startdate 01-JAN-2026 X medrelay AMB-7".into(),
            start: Start::from_unix(1_767_225_600 + 3_723),
            record_us: 1_000_000,
            signals: vec![Signal {
                label: "ECG MLII".into(),
                transducer: String::new(),
                unit: "mV".into(),
                physical_min: -163.84,
                physical_max: 163.835,
                digital_min: i16::MIN,
                digital_max: i16::MAX,
                prefilter: String::new(),
                samples_per_record: 3,
            }],
            records: vec![
                Record {
                    onset_us: 0,
                    samples: vec![vec![1, -2, 3]],
                },
                Record {
                    onset_us: 1_000_000,
                    samples: vec![vec![4, 5, -32768]],
                },
            ],
            annotations: vec![Annotation {
                onset_us: 1_500_000,
                duration_us: Some(250_000),
                text: "ALARM high HR 151 > 140 raised".into(),
            }],
        }
    }

    fn field(bytes: &[u8], at: usize, len: usize) -> &str {
        std::str::from_utf8(&bytes[at..at + len]).unwrap()
    }

    #[test]
    fn edf_header_fields_have_their_widths() {
        let f = file();
        let b = f.encode().unwrap();
        let ann = b"+1\x14\x14\0+1.5\x150.25\x14ALARM high HR 151 > 140 raised\x14\0".len();
        let ann_samples = ann.div_ceil(2);
        assert_eq!(b.len(), 256 * 3 + 2 * (3 * 2 + ann_samples * 2));
        assert_eq!(field(&b, 0, 8), "0       ");
        assert_eq!(field(&b, 8, 80), format!("{:80}", "X X X X"));
        assert_eq!(
            field(&b, 88, 80),
            format!("{:80}", "Startdate 01-JAN-2026 X medrelay AMB-7")
        );
        assert_eq!(field(&b, 168, 8), "01.01.26");
        assert_eq!(field(&b, 176, 8), "01.02.03");
        assert_eq!(field(&b, 184, 8), "768     ");
        assert_eq!(field(&b, 192, 44), format!("{:44}", "EDF+C"));
        assert_eq!(field(&b, 236, 8), "2       ");
        assert_eq!(field(&b, 244, 8), "1       ");
        assert_eq!(field(&b, 252, 4), "2   ");
        assert_eq!(
            field(&b, 256, 32),
            format!("{:16}{:16}", "ECG MLII", "EDF Annotations")
        );
        let units = 256 + 16 * 2 + 80 * 2;
        assert_eq!(field(&b, units, 16), "mV              ");
        assert_eq!(field(&b, units + 16, 16), "-163.84 -1      ");
        assert_eq!(field(&b, units + 32, 16), "163.835 1       ");
        assert_eq!(field(&b, units + 48, 16), "-32768  -32768  ");
        assert_eq!(field(&b, units + 64, 16), "32767   32767   ");
        let spr = units + 80 + 160;
        assert_eq!(field(&b, spr, 16), format!("3       {ann_samples:<8}"));
        assert_eq!(field(&b, spr + 16, 64), " ".repeat(64));
    }

    #[test]
    fn edf_records_carry_samples_and_tals() {
        let b = file().encode().unwrap();
        let rec = 3 * 2
            + 2 * b"+1\x14\x14\0+1.5\x150.25\x14ALARM high HR 151 > 140 raised\x14\0"
                .len()
                .div_ceil(2);
        let first = &b[768..768 + rec];
        assert_eq!(&first[..6], &[1, 0, 0xfe, 0xff, 3, 0]);
        assert!(first[6..].starts_with(b"+0\x14\x14\0\0"));
        let second = &b[768 + rec..];
        assert_eq!(&second[..6], &[4, 0, 5, 0, 0, 0x80]);
        assert_eq!(
            &second[6..],
            b"+1\x14\x14\0+1.5\x150.25\x14ALARM high HR 151 > 140 raised\x14\0\0"
        );
    }

    #[test]
    fn edf_gaps_make_edf_plus_d() {
        let mut f = file();
        f.records[1].onset_us = 3_000_000;
        assert!(!f.contiguous());
        let b = f.encode().unwrap();
        assert_eq!(field(&b, 192, 5), "EDF+D");
        f.records[1].onset_us = 500_000;
        assert_eq!(f.encode(), Err(EdfError::Timing));
        f.records[1].onset_us = 1_000_000;
        f.records[1].samples[0].pop();
        assert!(matches!(f.encode(), Err(EdfError::Samples { got: 2, .. })));
    }

    #[test]
    fn edf_dates_and_numbers() {
        let s = Start::from_unix(1_795_469_549);
        assert_eq!((s.year, s.month, s.day), (2026, 11, 23));
        assert_eq!((s.hour, s.minute, s.second), (21, 32, 29));
        assert_eq!(s.edfplus_date(), "23-NOV-2026");
        assert_eq!(Start::from_unix(951_782_400).edfplus_date(), "29-FEB-2000");
        assert_eq!(seconds(-1_250_000), "-1.25");
        assert_eq!(seconds(360_000_001), "+360.000001");
        assert_eq!(exact_number(163.835).as_deref(), Some("163.835"));
        assert_eq!(exact_number(1.0 / 3.0), None);
        assert_eq!(number(10922.666666).unwrap(), "10922.67");
    }
}
