//! The telemetry wire format shared by the agent, the gateway and viewers
//! (`docs/telemetry.md` is the normative description).
//!
//! One WebSocket binary message carries one [`Frame`]: a fixed header (version, kind, flags,
//! stream id, sequence number, capture time) and a payload: the stream's channel [`Layout`],
//! a chunk of [`Waveform`] samples, or a set of [`Numeric`] values. All integers are
//! little-endian. Control messages (acknowledgements, clock sync, errors) are JSON text
//! messages: [`AgentControl`] and [`GatewayControl`].

use serde::{Deserialize, Serialize};

/// The only version of the frame format.
pub const VERSION: u8 = 1;
/// Largest encoded frame accepted, in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 32;
/// Byte offset of the flags in an encoded frame (see [`set_flags`]).
const FLAGS_OFFSET: usize = 2;

/// Flag: the frame was sent from the agent's backlog, or reaches a viewer after newer data.
pub const FLAG_LATE: u8 = 0x01;
/// Flag: the frame is part of the history a viewer gets when it subscribes.
pub const FLAG_HISTORY: u8 = 0x02;

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame ends before a field it announces.
    #[error("the frame is truncated")]
    Truncated,
    /// Bytes are left after the payload.
    #[error("{0} bytes follow the end of the frame")]
    TrailingBytes(usize),
    /// The frame is larger than [`MAX_FRAME_BYTES`].
    #[error("the frame is {0} bytes, more than the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    /// The version byte is not [`VERSION`].
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// The kind byte names no known kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The stream id is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid stream id")]
    StreamId,
    /// A field has a value outside its domain.
    #[error("invalid {0}")]
    Field(&'static str),
}

/// A validated stream id (an ambulance's id such as `AMB-7`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = WireError;

    fn try_from(s: String) -> Result<Self, WireError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_STREAM_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(WireError::StreamId)
        }
    }
}

impl std::str::FromStr for StreamId {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, WireError> {
        Self::try_from(s.to_owned())
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> String {
        id.0
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The stream's channels ([`Layout`]).
    Layout = 1,
    /// A chunk of samples ([`Waveform`]).
    Waveform = 2,
    /// Vital-sign values ([`Numeric`]).
    Numerics = 3,
}

impl TryFrom<u8> for Kind {
    type Error = WireError;

    fn try_from(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(Kind::Layout),
            2 => Ok(Kind::Waveform),
            3 => Ok(Kind::Numerics),
            other => Err(WireError::Kind(other)),
        }
    }
}

/// The fixed part of every frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub kind: Kind,
    /// [`FLAG_LATE`], [`FLAG_HISTORY`].
    pub flags: u8,
    /// The stream (ambulance) the frame belongs to.
    pub stream: StreamId,
    /// Position in the stream: one sequence for all kinds, from 1, without gaps.
    pub seq: u64,
    /// When the first sample (or the values) were captured, in microseconds since the Unix
    /// epoch on the gateway's clock (the agent corrects its clock by the estimated offset).
    pub capture_us: i64,
}

/// One channel of a stream: a lead or another waveform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    /// Index used by [`Block::channel`].
    pub index: u8,
    /// Name, e.g. `II`, `V1`, `Pleth`.
    pub label: String,
    /// Physical unit of `(raw - baseline) / gain`, e.g. `mV`.
    pub unit: String,
    /// Samples per second.
    pub rate_hz: f64,
    /// Raw units per physical unit.
    pub gain: f64,
    /// Raw value of physical zero.
    pub baseline: f64,
    /// IEEE 11073-10101 code of the waveform, 0 when none is known.
    pub mdc: u32,
}

/// A stream's channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The channels, indexes unique.
    pub channels: Vec<Channel>,
}

/// Consecutive raw samples of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The channel's [`Channel::index`].
    pub channel: u8,
    /// Raw samples, sent as 16-bit when all fit, else 32-bit.
    pub samples: Vec<i32>,
}

/// A chunk of samples, one block per channel, all starting at the frame's capture time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waveform {
    /// The blocks.
    pub blocks: Vec<Block>,
}

/// One vital-sign value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Numeric {
    /// What it measures: an IEEE 11073-10101 code (see [`Vital`]).
    pub code: u32,
    /// The value in the vital's unit.
    pub value: f64,
}

/// A frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// See [`Kind::Layout`].
    Layout(Layout),
    /// See [`Kind::Waveform`].
    Waveform(Waveform),
    /// See [`Kind::Numerics`].
    Numerics(Vec<Numeric>),
}

impl Payload {
    /// The kind byte of this payload.
    pub fn kind(&self) -> Kind {
        match self {
            Payload::Layout(_) => Kind::Layout,
            Payload::Waveform(_) => Kind::Waveform,
            Payload::Numerics(_) => Kind::Numerics,
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Flags, stream, sequence and time.
    pub header: Header,
    /// What it carries.
    pub payload: Payload,
}

/// The vital signs medrelay knows, with their IEEE 11073-10101 (MDC) codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vital {
    /// Heart rate, /min (MDC_ECG_HEART_RATE).
    Hr,
    /// Oxygen saturation, % (MDC_PULS_OXIM_SAT_O2).
    Spo2,
    /// Non-invasive blood pressure, systolic, mmHg (MDC_PRESS_BLD_NONINV_SYS).
    NibpSys,
    /// Non-invasive blood pressure, diastolic, mmHg (MDC_PRESS_BLD_NONINV_DIA).
    NibpDia,
    /// Non-invasive blood pressure, mean, mmHg (MDC_PRESS_BLD_NONINV_MEAN).
    NibpMean,
    /// Respiration rate, /min (MDC_RESP_RATE).
    Rr,
    /// Body temperature, °C (MDC_TEMP_BODY).
    Temp,
    /// End-tidal CO2, mmHg (MDC_AWAY_CO2_ET).
    Etco2,
    /// GPS latitude, degrees (medrelay private code).
    Lat,
    /// GPS longitude, degrees (medrelay private code).
    Lon,
}

impl Vital {
    /// Every vital, in display order.
    pub const ALL: [Vital; 10] = [
        Vital::Hr,
        Vital::Spo2,
        Vital::NibpSys,
        Vital::NibpDia,
        Vital::NibpMean,
        Vital::Rr,
        Vital::Temp,
        Vital::Etco2,
        Vital::Lat,
        Vital::Lon,
    ];

    /// The vital's code on the wire.
    pub fn code(self) -> u32 {
        match self {
            Vital::Hr => 147_842,
            Vital::Spo2 => 150_456,
            Vital::NibpSys => 150_021,
            Vital::NibpDia => 150_022,
            Vital::NibpMean => 150_023,
            Vital::Rr => 151_562,
            Vital::Temp => 150_364,
            Vital::Etco2 => 151_708,
            Vital::Lat => 0xF000_0001,
            Vital::Lon => 0xF000_0002,
        }
    }

    /// The vital with this wire code.
    pub fn from_code(code: u32) -> Option<Vital> {
        Vital::ALL.into_iter().find(|v| v.code() == code)
    }

    /// The vital's name as in JSON (`hr`, `spo2`, …).
    pub fn name(self) -> &'static str {
        match self {
            Vital::Hr => "hr",
            Vital::Spo2 => "spo2",
            Vital::NibpSys => "nibp_sys",
            Vital::NibpDia => "nibp_dia",
            Vital::NibpMean => "nibp_mean",
            Vital::Rr => "rr",
            Vital::Temp => "temp",
            Vital::Etco2 => "etco2",
            Vital::Lat => "lat",
            Vital::Lon => "lon",
        }
    }
}

/// Encodes a frame. Fails only if it would exceed [`MAX_FRAME_BYTES`] or a count does not
/// fit its field.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(256);
    let h = &frame.header;
    out.extend_from_slice(&[VERSION, frame.payload.kind() as u8, h.flags]);
    out.push(h.stream.0.len() as u8);
    out.extend_from_slice(h.stream.0.as_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.capture_us.to_le_bytes());
    match &frame.payload {
        Payload::Layout(layout) => {
            out.push(count_u8(layout.channels.len(), "channel count")?);
            for c in &layout.channels {
                out.push(c.index);
                out.extend_from_slice(&c.mdc.to_le_bytes());
                out.extend_from_slice(&c.rate_hz.to_le_bytes());
                out.extend_from_slice(&c.gain.to_le_bytes());
                out.extend_from_slice(&c.baseline.to_le_bytes());
                put_str(&mut out, &c.label, "channel label")?;
                put_str(&mut out, &c.unit, "channel unit")?;
            }
        }
        Payload::Waveform(w) => {
            out.push(count_u8(w.blocks.len(), "block count")?);
            for b in &w.blocks {
                let n =
                    u16::try_from(b.samples.len()).map_err(|_| WireError::Field("sample count"))?;
                let narrow = b.samples.iter().all(|&s| i16::try_from(s).is_ok());
                out.push(b.channel);
                out.push(if narrow { 1 } else { 2 });
                out.extend_from_slice(&n.to_le_bytes());
                for &s in &b.samples {
                    if narrow {
                        out.extend_from_slice(&(s as i16).to_le_bytes());
                    } else {
                        out.extend_from_slice(&s.to_le_bytes());
                    }
                }
            }
        }
        Payload::Numerics(values) => {
            out.push(count_u8(values.len(), "numeric count")?);
            for n in values {
                out.extend_from_slice(&n.code.to_le_bytes());
                out.extend_from_slice(&n.value.to_le_bytes());
            }
        }
    }
    if out.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(out.len()));
    }
    Ok(out)
}

fn count_u8(n: usize, what: &'static str) -> Result<u8, WireError> {
    u8::try_from(n).map_err(|_| WireError::Field(what))
}

fn put_str(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), WireError> {
    out.push(count_u8(s.len(), what)?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads fields off a byte slice, failing with [`WireError::Truncated`] at its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, WireError> {
        let v = f64::from_le_bytes(self.array()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(WireError::Field(what))
        }
    }

    fn str(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u8()? as usize;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Field(what))
    }
}

/// Decodes only the header of a frame (cheap: the gateway routes and deduplicates on it).
pub fn decode_header(bytes: &[u8]) -> Result<Header, WireError> {
    decode_header_from(&mut Reader { buf: bytes }, bytes.len())
}

fn decode_header_from(r: &mut Reader<'_>, total: usize) -> Result<Header, WireError> {
    if total > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(total));
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = Kind::try_from(r.u8()?)?;
    let flags = r.u8()?;
    let len = r.u8()? as usize;
    let stream = std::str::from_utf8(r.take(len)?)
        .map_err(|_| WireError::StreamId)?
        .parse()?;
    let seq = r.u64()?;
    if seq == 0 {
        return Err(WireError::Field("sequence number"));
    }
    let capture_us = r.u64()? as i64;
    Ok(Header {
        kind,
        flags,
        stream,
        seq,
        capture_us,
    })
}

/// Decodes and validates a whole frame.
pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
    let mut r = Reader { buf: bytes };
    let header = decode_header_from(&mut r, bytes.len())?;
    let payload = match header.kind {
        Kind::Layout => {
            let n = r.u8()?;
            let mut channels = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let index = r.u8()?;
                let mdc = r.u32()?;
                let rate_hz = r.f64("sample rate")?;
                let gain = r.f64("gain")?;
                let baseline = r.f64("baseline")?;
                if rate_hz <= 0.0 || gain == 0.0 {
                    return Err(WireError::Field("sample rate or gain"));
                }
                if channels.iter().any(|c: &Channel| c.index == index) {
                    return Err(WireError::Field("channel index (duplicate)"));
                }
                channels.push(Channel {
                    index,
                    label: r.str("channel label")?,
                    unit: r.str("channel unit")?,
                    rate_hz,
                    gain,
                    baseline,
                    mdc,
                });
            }
            Payload::Layout(Layout { channels })
        }
        Kind::Waveform => {
            let n = r.u8()?;
            let mut blocks = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let channel = r.u8()?;
                let format = r.u8()?;
                let count = r.u16()? as usize;
                let samples = match format {
                    1 => r
                        .take(count * 2)?
                        .chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
                        .collect(),
                    2 => r
                        .take(count * 4)?
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    _ => return Err(WireError::Field("sample format")),
                };
                blocks.push(Block { channel, samples });
            }
            Payload::Waveform(Waveform { blocks })
        }
        Kind::Numerics => {
            let n = r.u8()?;
            let mut values = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let code = r.u32()?;
                let value = r.f64("numeric value")?;
                values.push(Numeric { code, value });
            }
            Payload::Numerics(values)
        }
    };
    if !r.buf.is_empty() {
        return Err(WireError::TrailingBytes(r.buf.len()));
    }
    Ok(Frame { header, payload })
}

/// Replaces the flags of an encoded frame in place (the gateway marks late and history
/// frames for viewers without re-encoding them).
pub fn set_flags(encoded: &mut [u8], flags: u8) {
    if let Some(b) = encoded.get_mut(FLAGS_OFFSET) {
        *b = flags;
    }
}

/// JSON control messages from the agent to the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentControl {
    /// Clock probe: the agent's send time, µs since the Unix epoch on its clock.
    Time {
        /// Agent clock at sending.
        t0: i64,
    },
}

/// JSON control messages from the gateway to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GatewayControl {
    /// First message after the upgrade: the stream and how far the gateway holds it durably.
    Welcome {
        /// The stream the token grants.
        stream: StreamId,
        /// Every frame up to this sequence number is durable at the gateway (0: none).
        durable_through: u64,
    },
    /// Every frame up to `through` is durable; the agent may forget it.
    Ack {
        /// The stream.
        stream: StreamId,
        /// Highest sequence number such that it and all before it are durable.
        through: u64,
    },
    /// Answer to [`AgentControl::Time`].
    Time {
        /// The agent's `t0`, echoed.
        t0: i64,
        /// Gateway clock when the probe arrived, µs since the Unix epoch.
        t1: i64,
    },
    /// The ER opened a consult room with the crew; the crew joins it at `crew_url`.
    Consult {
        /// The room's name.
        room: String,
        /// Consult page link with a crew token for the room (path and fragment).
        crew_url: String,
    },
    /// A typed error; the gateway closes the connection after it.
    Error {
        /// Machine-readable code (see `docs/telemetry.md`).
        code: String,
        /// Human-readable explanation.
        message: String,
    },
}

#[cfg(test)]
impl Frame {
    /// A frame of stream `AMB-7` without flags, for tests.
    pub(crate) fn for_test(seq: u64, capture_us: i64, payload: Payload) -> Frame {
        Frame {
            header: Header {
                kind: payload.kind(),
                flags: 0,
                stream: "AMB-7".parse().expect("valid id"),
                seq,
                capture_us,
            },
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: Payload) -> Frame {
        Frame {
            header: Header {
                kind: payload.kind(),
                flags: FLAG_LATE,
                stream: "AMB-7".parse().unwrap(),
                seq: 42,
                capture_us: 1_800_000_000_123_456,
            },
            payload,
        }
    }

    #[test]
    fn every_kind_round_trips() {
        let frames = [
            frame(Payload::Layout(Layout {
                channels: vec![Channel {
                    index: 0,
                    label: "II".into(),
                    unit: "mV".into(),
                    rate_hz: 360.0,
                    gain: 200.0,
                    baseline: 1024.0,
                    mdc: 131_330,
                }],
            })),
            frame(Payload::Waveform(Waveform {
                blocks: vec![
                    Block {
                        channel: 0,
                        samples: vec![1024, -5, 2047],
                    },
                    Block {
                        channel: 1,
                        samples: vec![70_000, -1],
                    },
                ],
            })),
            frame(Payload::Numerics(vec![Numeric {
                code: Vital::Hr.code(),
                value: 72.0,
            }])),
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            assert_eq!(decode(&bytes).unwrap(), f);
            assert_eq!(decode_header(&bytes).unwrap(), f.header);
        }
    }

    #[test]
    fn narrow_samples_take_two_bytes() {
        let f = frame(Payload::Waveform(Waveform {
            blocks: vec![Block {
                channel: 0,
                samples: vec![0; 100],
            }],
        }));
        let header_len = 4 + 5 + 16;
        assert_eq!(encode(&f).unwrap().len(), header_len + 1 + 4 + 200);
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let good = encode(&frame(Payload::Numerics(vec![]))).unwrap();
        for cut in 0..good.len() {
            assert_eq!(
                decode(&good[..cut]),
                Err(WireError::Truncated),
                "cut at {cut}"
            );
        }
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(decode(&extra), Err(WireError::TrailingBytes(1)));
        let mut v = good.clone();
        v[0] = 9;
        assert_eq!(decode(&v), Err(WireError::Version(9)));
        let mut k = good.clone();
        k[1] = 77;
        assert_eq!(decode(&k), Err(WireError::Kind(77)));
        let mut s = good.clone();
        s[4] = b' ';
        assert_eq!(decode(&s), Err(WireError::StreamId));
        assert!(matches!(
            decode(&vec![1; MAX_FRAME_BYTES + 1]),
            Err(WireError::TooLarge(_))
        ));
        let nan = frame(Payload::Numerics(vec![Numeric {
            code: 1,
            value: f64::NAN,
        }]));
        assert_eq!(
            decode(&encode(&nan).unwrap()),
            Err(WireError::Field("numeric value"))
        );
    }

    #[test]
    fn set_flags_rewrites_only_the_flags() {
        let f = frame(Payload::Numerics(vec![]));
        let mut bytes = encode(&f).unwrap();
        set_flags(&mut bytes, FLAG_HISTORY);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.header.flags, FLAG_HISTORY);
        assert_eq!(back.header.seq, 42);
    }
}
