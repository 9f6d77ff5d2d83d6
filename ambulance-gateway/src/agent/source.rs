//! Sample sources and the framer that cuts them into frames.
//!
//! A [`Source`] is deterministic and has no clock: asked for the samples at an index it
//! returns the same ones every time (a raw recording on disk, or the
//! [simulator](super::simulator)). The [`Framer`] turns a source into the stream's frames:
//! the layout first, then one waveform frame per 40 ms of samples (chunk boundaries computed
//! from sample counts, so no drift accumulates) and the source's numerics once per second.

use crate::wire::{
    self, Block, Channel, Frame, Header, Layout, Numeric, Payload, StreamId, Waveform,
};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// Waveform frames per second (one per 40 ms).
pub const FRAMES_PER_SEC: u64 = 25;

/// Why a source or the framer failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the recording failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The recording.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The source's settings are unusable.
    #[error("{0}")]
    Invalid(String),
    /// A frame could not be encoded (too many channels for one frame, for instance).
    #[error("cannot encode a frame: {0}")]
    Wire(#[from] wire::WireError),
}

/// A deterministic source of samples. Positions count samples at the base rate
/// ([`Source::rate_mhz`]); a slower channel has one sample every
/// [`Source::decimation`] base samples.
pub trait Source: Send {
    /// The channels.
    fn layout(&self) -> Layout;
    /// The base sample rate, in millihertz: that of every channel unless
    /// [`Source::decimation`] says otherwise.
    fn rate_mhz(&self) -> u64;
    /// For each channel in layout order, how many base samples one of its samples spans
    /// (channel `c`'s sample `k` is at base position `k × decimation[c]`). All 1 by default.
    fn decimation(&self) -> Vec<u64> {
        vec![1; self.layout().channels.len()]
    }
    /// The samples of every channel (in layout order) whose base positions are in
    /// `start..start + count`. At the end of the source fewer (possibly none) are returned.
    fn read(&mut self, start: u64, count: usize) -> Result<Vec<Vec<i32>>, SourceError>;
    /// The vital signs of second `second` of the source (recordings have none).
    fn numerics(&self, _second: u64) -> Vec<Numeric> {
        Vec::new()
    }
    /// Whether [`Source::numerics`] ever returns values.
    fn has_numerics(&self) -> bool {
        false
    }
    /// Names what is being read, so that a restart with another source does not resume at
    /// the old one's position.
    fn identity(&self) -> String;
}

/// The identity of a recording: its kind, canonical path and a detail (e.g. channel count).
pub fn file_identity(kind: &str, path: &std::path::Path, detail: &str) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    format!("{kind}:{}:{detail}", path.display())
}

/// How samples are stored in a raw recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SampleType {
    /// Unsigned 16-bit little-endian.
    #[default]
    U16le,
    /// Signed 16-bit little-endian.
    I16le,
    /// Signed 32-bit little-endian.
    I32le,
}

impl SampleType {
    /// Bytes per sample.
    pub fn size(self) -> usize {
        match self {
            SampleType::U16le | SampleType::I16le => 2,
            SampleType::I32le => 4,
        }
    }

    fn parse(self, b: &[u8]) -> i32 {
        match self {
            SampleType::U16le => u16::from_le_bytes([b[0], b[1]]) as i32,
            SampleType::I16le => i16::from_le_bytes([b[0], b[1]]) as i32,
            SampleType::I32le => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

/// The standard 12-lead labels, used as default labels of multi-channel recordings.
pub const TWELVE_LEADS: [&str; 12] = [
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
];

/// The IEEE 11073-10101 code of an ECG lead label, 0 when it names no standard lead.
pub fn lead_mdc(label: &str) -> u32 {
    const ECG: u32 = 2 << 16;
    let term = match label {
        "I" => 257,
        "II" => 258,
        "V1" => 259,
        "V2" => 260,
        "V3" => 261,
        "V4" => 262,
        "V5" => 263,
        "V6" => 264,
        "III" => 317,
        "aVR" => 318,
        "aVL" => 319,
        "aVF" => 320,
        _ => return 0,
    };
    ECG + term
}

/// How to read a raw recording.
#[derive(Debug, Clone)]
pub struct RawSpec {
    /// The file: interleaved samples, no header.
    pub path: PathBuf,
    /// Sample encoding.
    pub sample_type: SampleType,
    /// Samples per second of each channel.
    pub rate_hz: f64,
    /// Raw units per `unit`.
    pub gain: f64,
    /// Raw value of zero.
    pub baseline: f64,
    /// Channel labels (as many as channels).
    pub labels: Vec<String>,
    /// Physical unit.
    pub unit: String,
}

/// A raw recording of interleaved samples, read in place at the index asked for.
pub struct RawSource {
    spec: RawSpec,
    rate_mhz: u64,
    file: File,
}

impl RawSource {
    /// Opens a recording.
    pub fn open(spec: RawSpec) -> Result<Self, SourceError> {
        if spec.labels.is_empty() || spec.labels.len() > 255 {
            return Err(SourceError::Invalid(
                "a recording has 1 to 255 channels".into(),
            ));
        }
        if !(spec.gain.is_finite() && spec.gain != 0.0 && spec.baseline.is_finite()) {
            return Err(SourceError::Invalid(
                "the gain must be non-zero, the baseline finite".into(),
            ));
        }
        let rate_mhz = rate_mhz(spec.rate_hz)?;
        let file = File::open(&spec.path).map_err(|source| SourceError::Io {
            path: spec.path.clone(),
            source,
        })?;
        Ok(Self {
            spec,
            rate_mhz,
            file,
        })
    }

    fn io(&self, source: io::Error) -> SourceError {
        SourceError::Io {
            path: self.spec.path.clone(),
            source,
        }
    }
}

/// A sample rate in millihertz, checked.
pub fn rate_mhz(rate_hz: f64) -> Result<u64, SourceError> {
    let mhz = (rate_hz * 1000.0).round();
    if rate_hz.is_finite() && (1.0..=1e9).contains(&mhz) {
        Ok(mhz as u64)
    } else {
        Err(SourceError::Invalid(format!(
            "unusable sample rate {rate_hz}"
        )))
    }
}

impl Source for RawSource {
    fn layout(&self) -> Layout {
        Layout {
            channels: self
                .spec
                .labels
                .iter()
                .enumerate()
                .map(|(i, label)| Channel {
                    index: i as u8,
                    label: label.clone(),
                    unit: self.spec.unit.clone(),
                    rate_hz: self.spec.rate_hz,
                    gain: self.spec.gain,
                    baseline: self.spec.baseline,
                    mdc: lead_mdc(label),
                })
                .collect(),
        }
    }

    fn rate_mhz(&self) -> u64 {
        self.rate_mhz
    }

    fn read(&mut self, start: u64, count: usize) -> Result<Vec<Vec<i32>>, SourceError> {
        let channels = self.spec.labels.len();
        let size = self.spec.sample_type.size();
        let frame = channels * size;
        self.file
            .seek(SeekFrom::Start(start * frame as u64))
            .map_err(|e| self.io(e))?;
        let mut buf = Vec::with_capacity(count * frame);
        (&mut self.file)
            .take((count * frame) as u64)
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        let mut out = vec![Vec::with_capacity(buf.len() / frame); channels];
        for row in buf.chunks_exact(frame) {
            for (c, bytes) in row.chunks_exact(size).enumerate() {
                out[c].push(self.spec.sample_type.parse(bytes));
            }
        }
        Ok(out)
    }

    fn identity(&self) -> String {
        let detail = format!("{:?}:{}", self.spec.sample_type, self.spec.labels.len());
        file_identity("raw", &self.spec.path, &detail)
    }
}

/// A frame made by the [`Framer`], with the source position after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    /// Its sequence number.
    pub seq: u64,
    /// The encoded frame (no flags, capture time on the agent clock).
    pub bytes: Vec<u8>,
    /// Index of the first source sample not yet in a frame.
    pub position: u64,
}

/// Cuts a source into frames (see the [module documentation](self)).
pub struct Framer {
    stream: StreamId,
    source: Box<dyn Source>,
    rate_mhz: u64,
    /// Base samples per sample of the first channel.
    first_decimation: u64,
    /// Chunks start at multiples of this many base samples (every channel's decimation
    /// divides it), so each block starts exactly at its frame's capture time.
    step: u64,
    /// Source index of this run's first sample.
    start: u64,
    /// Samples this run may take, if limited.
    limit: Option<u64>,
    /// Next chunk, counted from `start`.
    chunk: u64,
    /// Source index of the first sample not yet in a frame.
    position: u64,
    next_seq: u64,
    /// Agent-clock time of sample `start`, µs since the Unix epoch.
    origin_us: i64,
    layout_sent: bool,
    finished: bool,
}

impl Framer {
    /// A framer reading `source` from index `start`, numbering frames from `next_seq`; sample
    /// `start` was captured at `origin_us`. It stops after `limit` base samples (rounded up
    /// to a whole step when channels have different rates), or at the end of the source.
    pub fn new(
        stream: StreamId,
        source: Box<dyn Source>,
        start: u64,
        next_seq: u64,
        limit: Option<u64>,
        origin_us: i64,
    ) -> Self {
        let rate_mhz = source.rate_mhz();
        let decimation = source.decimation();
        let step = decimation.iter().fold(1, |l, &d| lcm(l, d.max(1)));
        Self {
            stream,
            source,
            rate_mhz,
            first_decimation: decimation.first().copied().unwrap_or(1).max(1),
            step,
            start,
            limit: limit.map(|l| l.div_ceil(step) * step),
            chunk: 0,
            position: start,
            next_seq: next_seq.max(1),
            origin_us,
            layout_sent: false,
            finished: false,
        }
    }

    /// The sequence number of the next frame.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers the next frames from `seq` on, if that is higher than [`Framer::next_seq`].
    pub fn skip_to_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Source index of the first sample not yet in a frame.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The source has ended (or the limit is reached): no more frames.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// How long after sample `start` the next frames are due (when their last sample has
    /// been captured), or `None` when finished.
    pub fn next_due(&self) -> Option<Duration> {
        if self.finished {
            None
        } else if !self.layout_sent {
            Some(Duration::ZERO)
        } else {
            let end = self.clip(self.chunk_start(self.chunk + 1));
            Some(Duration::from_nanos(
                (u128::from(end) * 1_000_000_000_000 / u128::from(self.rate_mhz)) as u64,
            ))
        }
    }

    /// The frames due next: the layout on the first call, then each call one chunk of
    /// samples followed by the numerics of the seconds that start in it.
    pub fn produce(&mut self) -> Result<Vec<Produced>, SourceError> {
        if self.finished {
            return Ok(Vec::new());
        }
        if !self.layout_sent {
            self.layout_sent = true;
            let layout = Payload::Layout(self.source.layout());
            return Ok(vec![self.frame(layout, self.origin_us, self.start)?]);
        }
        let a = self.clip(self.chunk_start(self.chunk));
        let b = self.clip(self.chunk_start(self.chunk + 1));
        if a >= b && self.limit.is_some_and(|l| a >= l) {
            self.finished = true;
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let data = if b > a {
            self.source.read(self.start + a, (b - a) as usize)?
        } else {
            Vec::new()
        };
        let got = (data.first().map_or(0, Vec::len) as u64 * self.first_decimation).min(b - a);
        self.position = self.start + a + got;
        if got > 0 {
            let blocks = data
                .into_iter()
                .zip(self.source.layout().channels)
                .map(|(samples, ch)| Block {
                    channel: ch.index,
                    samples,
                })
                .collect();
            let capture = self.origin_us + self.micros(a);
            let position = self.position;
            out.push(self.frame(Payload::Waveform(Waveform { blocks }), capture, position)?);
            // Numerics of each second whose first sample is in this chunk.
            let (first, end) = (self.start + a, self.start + a + got);
            for second in self.second_of(first)..=self.second_of(end - 1) {
                let at = self.first_sample_of(second);
                if (first..end).contains(&at) {
                    let values = self.source.numerics(second);
                    if !values.is_empty() {
                        let capture = self.origin_us + self.micros(at - self.start);
                        out.push(self.frame(Payload::Numerics(values), capture, position)?);
                    }
                }
            }
        }
        if got < b - a {
            self.finished = true;
        }
        self.chunk += 1;
        Ok(out)
    }

    fn frame(
        &mut self,
        payload: Payload,
        capture_us: i64,
        position: u64,
    ) -> Result<Produced, SourceError> {
        let seq = self.next_seq;
        let bytes = wire::encode(&Frame {
            header: Header {
                kind: payload.kind(),
                flags: 0,
                stream: self.stream.clone(),
                seq,
                capture_us,
            },
            payload,
        })?;
        self.next_seq += 1;
        Ok(Produced {
            seq,
            bytes,
            position,
        })
    }

    /// First base sample (counted from `start`) of chunk `k`: a multiple of the step.
    fn chunk_start(&self, k: u64) -> u64 {
        let n = (u128::from(k) * u128::from(self.rate_mhz) / (1000 * u128::from(FRAMES_PER_SEC)))
            as u64;
        n / self.step * self.step
    }

    fn clip(&self, n: u64) -> u64 {
        self.limit.map_or(n, |l| n.min(l))
    }

    /// Microseconds from sample `start` to sample `start + n`.
    fn micros(&self, n: u64) -> i64 {
        (u128::from(n) * 1_000_000_000 / u128::from(self.rate_mhz)) as i64
    }

    /// The second of the source that sample `i` falls in.
    fn second_of(&self, i: u64) -> u64 {
        (u128::from(i) * 1000 / u128::from(self.rate_mhz)) as u64
    }

    /// The first sample of second `s` of the source.
    fn first_sample_of(&self, s: u64) -> u64 {
        (u128::from(s) * u128::from(self.rate_mhz)).div_ceil(1000) as u64
    }
}

/// Least common multiple.
pub(crate) fn lcm(a: u64, b: u64) -> u64 {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// The default labels of a recording with `channels` channels: `ECG` for one, the 12-lead
/// names for up to 12, `CH1`, `CH2`, … beyond.
pub fn default_labels(channels: usize) -> Vec<String> {
    match channels {
        1 => vec!["ECG".into()],
        n if n <= TWELVE_LEADS.len() => TWELVE_LEADS[..n].iter().map(|s| s.to_string()).collect(),
        n => (1..=n).map(|i| format!("CH{i}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Kind, decode};
    use std::path::Path;

    fn write_raw(dir: &Path, values: &[u16]) -> PathBuf {
        let path = dir.join("rec.raw");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn raw(path: PathBuf, channels: usize, sample_type: SampleType) -> RawSource {
        RawSource::open(RawSpec {
            path,
            sample_type,
            rate_hz: 360.0,
            gain: 200.0,
            baseline: 1024.0,
            labels: default_labels(channels),
            unit: "mV".into(),
        })
        .unwrap()
    }

    fn samples_of(frames: &[Produced]) -> Vec<Vec<Vec<i32>>> {
        frames
            .iter()
            .filter_map(|p| match decode(&p.bytes).unwrap().payload {
                Payload::Waveform(w) => Some(w.blocks.into_iter().map(|b| b.samples).collect()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn raw_samples_are_read_exactly_in_14_15_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<u16> = (0..1000).map(|i| (i * 37 % 2048) as u16).collect();
        let path = write_raw(dir.path(), &values);
        let mut framer = Framer::new(
            "AMB-7".parse().unwrap(),
            Box::new(raw(path, 1, SampleType::U16le)),
            0,
            1,
            None,
            1_000_000,
        );
        let mut frames = Vec::new();
        while !framer.finished() {
            frames.extend(framer.produce().unwrap());
        }
        let first = decode(&frames[0].bytes).unwrap();
        assert_eq!(first.header.kind, Kind::Layout);
        assert_eq!(first.header.seq, 1);
        let chunks = samples_of(&frames);
        let sizes: Vec<usize> = chunks.iter().map(|c| c[0].len()).collect();
        // 360 Hz: 14.4 samples per 40 ms; a second is exactly 25 chunks.
        assert_eq!(sizes[..5], [14, 14, 15, 14, 15]);
        assert_eq!(sizes[..25].iter().sum::<usize>(), 360);
        assert!(sizes[..sizes.len() - 1].iter().all(|&n| n == 14 || n == 15));
        let all: Vec<i32> = chunks.iter().flat_map(|c| c[0].clone()).collect();
        assert_eq!(all, values.iter().map(|&v| v as i32).collect::<Vec<_>>());
        // Sequence numbers follow each other; capture times follow the sample index.
        for (i, f) in frames.iter().enumerate() {
            let h = decode(&f.bytes).unwrap().header;
            assert_eq!(h.seq, i as u64 + 1);
        }
        let h = decode(&frames[26].bytes).unwrap().header;
        assert_eq!(
            h.capture_us, 2_000_000,
            "chunk 25 starts at sample 360, 1 s in"
        );
        assert_eq!(frames.last().unwrap().position, 1000);
        assert_eq!(framer.position(), 1000);
    }

    #[test]
    fn raw_channels_and_types_deinterleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.raw");
        let values: [i32; 6] = [-5, 70_000, 3, -70_000, 0, 1];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let mut src = raw(path, 2, SampleType::I32le);
        assert_eq!(
            src.read(0, 10).unwrap(),
            vec![vec![-5, 3, 0], vec![70_000, -70_000, 1]]
        );
        assert_eq!(src.read(2, 10).unwrap(), vec![vec![0], vec![1]]);
        assert_eq!(src.read(3, 10).unwrap(), vec![Vec::<i32>::new(), vec![]]);
        let labels: Vec<String> = src.layout().channels.into_iter().map(|c| c.label).collect();
        assert_eq!(labels, ["I", "II"]);
        let path = write_raw(dir.path(), &[0xFFFF, 1]);
        let mut src = raw(path, 1, SampleType::I16le);
        assert_eq!(src.read(0, 2).unwrap(), vec![vec![-1, 1]]);
    }

    #[test]
    fn resume_and_limit_cut_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<u16> = (0..2000).map(|i| i as u16).collect();
        let path = write_raw(dir.path(), &values);
        let mut framer = Framer::new(
            "AMB-7".parse().unwrap(),
            Box::new(raw(path, 1, SampleType::U16le)),
            100,
            42,
            Some(500),
            0,
        );
        let mut frames = Vec::new();
        while !framer.finished() {
            frames.extend(framer.produce().unwrap());
        }
        assert_eq!(frames[0].seq, 42);
        let all: Vec<i32> = samples_of(&frames)
            .iter()
            .flat_map(|c| c[0].clone())
            .collect();
        assert_eq!(all, (100..600).collect::<Vec<i32>>());
        assert_eq!(framer.position(), 600);
        assert_eq!(frames.last().unwrap().position, 600);
        assert_eq!(framer.next_due(), None);
    }

    #[test]
    fn due_times_follow_sample_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_raw(dir.path(), &[0; 10_000]);
        let mut framer = Framer::new(
            "AMB-7".parse().unwrap(),
            Box::new(raw(path, 1, SampleType::U16le)),
            0,
            1,
            None,
            0,
        );
        assert_eq!(framer.next_due(), Some(Duration::ZERO));
        framer.produce().unwrap();
        // First chunk: 14 samples at 360 Hz end at 38.888… ms.
        assert_eq!(framer.next_due(), Some(Duration::from_nanos(38_888_888)));
        for _ in 0..25 {
            framer.produce().unwrap();
        }
        assert_eq!(framer.next_due(), Some(Duration::from_nanos(1_038_888_888)));
    }
}
