//! RTP depacketizers: a track's RTP payloads in, whole encoded frames out, without decoding.
//!
//! A [`Depacketizer`] is a plain state machine (no IO, no clock): the caller
//! [`push`](Depacketizer::push)es each RTP packet of one track and drains
//! [`poll`](Depacketizer::poll) until it returns `None`. Supported payload formats:
//!
//! - **VP8** (RFC 7741): the payload descriptor (with its X/I/L/T/K extensions) is stripped; a
//!   frame starts at a packet with S=1 and PID=0 and ends at the marker bit; it is a keyframe
//!   when the P bit of the VP8 frame tag is 0.
//! - **Opus** (RFC 7587): one packet is one frame.
//! - **H.264** (RFC 6184, packetization-mode 1: single NAL unit, STAP-A, FU-A): an access unit
//!   is every NAL unit with one RTP timestamp, ended by the marker bit. Access units come out
//!   with 4-byte big-endian length prefixes (the `avcC` form Matroska stores); a keyframe is one
//!   with an IDR slice. The latest SPS and PPS are remembered ([`Depacketizer::parameter_sets`])
//!   and put in front of an IDR access unit that arrives without them, so every keyframe is
//!   decodable on its own and a writer can build its `avcC` from the first one.
//!
//! **Reordering and loss.** Packets go through a window of [`REORDER_WINDOW`] sequence
//! numbers: a packet that arrives out of order waits there for the ones before it. A missing
//! packet is declared lost once a packet [`REORDER_WINDOW`] sequence numbers later arrives (or
//! at [`Depacketizer::flush`]); retransmissions (RTX already unwrapped to the original sequence
//! number) that arrive in time fill the hole. A frame with a lost packet is dropped, and for
//! video nothing is output after a loss until the next complete keyframe, so every frame that
//! comes out decodes without error. [`Depacketizer::needs_keyframe`] tells the SFU when to
//! send a PLI (when recording starts and after a loss).
//!
//! **Timestamps.** The 32-bit RTP timestamp is unwrapped to 64 bits and converted to
//! milliseconds since the track's first packet (in sequence order), with the codec's clock rate (90 kHz video,
//! 48 kHz Opus).
//!
//! **Bounds.** The window holds at most [`REORDER_WINDOW`] payloads, a frame at most
//! [`MAX_FRAME_BYTES`] (a larger one is dropped like a lost one), and at most
//! [`MAX_READY_FRAMES`] frames wait to be polled.

use std::collections::VecDeque;

/// How many sequence numbers a packet may arrive late and still be used.
pub const REORDER_WINDOW: usize = 64;
/// The largest frame assembled; a larger one is dropped (and video waits for a keyframe).
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Frames kept for [`Depacketizer::poll`]; when full, a new frame is dropped and counted.
pub const MAX_READY_FRAMES: usize = 256;
/// The largest SPS or PPS remembered.
const MAX_PARAMETER_SET_BYTES: usize = 1024;

/// The payload format of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// VP8, RFC 7741.
    Vp8,
    /// Opus, RFC 7587.
    Opus,
    /// H.264, RFC 6184 packetization-mode 1.
    H264,
}

impl Codec {
    /// The RTP clock rate in Hz: 90 000 for video, 48 000 for Opus.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Vp8 | Codec::H264 => 90_000,
            Codec::Opus => 48_000,
        }
    }

    /// Whether the codec has keyframes that decoding must start from.
    pub fn is_video(self) -> bool {
        !matches!(self, Codec::Opus)
    }
}

/// Why a packet's payload cannot be used (it is then treated as lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The payload carries no media bytes.
    #[error("empty payload")]
    Empty,
    /// A payload descriptor or aggregation header runs past the end of the payload.
    #[error("truncated payload header")]
    Truncated,
    /// An H.264 NAL unit type that packetization-mode 1 does not allow (STAP-B, MTAP, FU-B,
    /// reserved).
    #[error("H.264 NAL unit type {0} is not allowed in packetization-mode 1")]
    UnsupportedNal(u8),
}

/// One RTP packet of the track, as the caller received it (after SRTP).
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    /// The RTP payload (after the header, extensions and padding).
    pub payload: &'a [u8],
    /// The RTP sequence number.
    pub sequence: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The RTP marker bit.
    pub marker: bool,
}

/// One whole encoded frame (an H.264 access unit, a VP8 frame, an Opus packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The encoded bytes (H.264: 4-byte length-prefixed NAL units).
    pub data: Vec<u8>,
    /// The RTP timestamp unwrapped to 64 bits (the first packet keeps its 32-bit value).
    pub rtp_timestamp: u64,
    /// Milliseconds since the track's first packet.
    pub timestamp_ms: u64,
    /// Whether decoding can start at this frame (always true for Opus).
    pub keyframe: bool,
}

/// Counters of what happened to the packets and frames of a track.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DepacketizerStats {
    /// Packets pushed.
    pub packets: u64,
    /// Packets that arrived after their turn had passed (including copies of packets
    /// already processed).
    pub late_packets: u64,
    /// Copies of a packet still waiting in the window.
    pub duplicate_packets: u64,
    /// Packets rejected by [`Depacketizer::push`] with a [`PacketError`].
    pub malformed_packets: u64,
    /// Sequence numbers never received (including malformed packets).
    pub lost_packets: u64,
    /// Frames output.
    pub frames: u64,
    /// Frames dropped: incomplete, too large, not decodable before a keyframe, or over
    /// [`MAX_READY_FRAMES`].
    pub dropped_frames: u64,
}

/// Turns one track's RTP packets into frames; see the [module docs](self).
#[derive(Debug)]
pub struct Depacketizer {
    window: ReorderWindow,
    assembler: Assembler,
}

impl Depacketizer {
    /// A depacketizer for a track of `codec`.
    pub fn new(codec: Codec) -> Self {
        Self {
            window: ReorderWindow::new(),
            assembler: Assembler::new(codec),
        }
    }

    /// The track's codec.
    pub fn codec(&self) -> Codec {
        self.assembler.codec
    }

    /// Takes one packet. A malformed payload is rejected (and its sequence number later counts
    /// as lost); late and duplicate packets are ignored and counted. Drain [`poll`](Self::poll)
    /// afterwards.
    pub fn push(&mut self, packet: &RtpPacket<'_>) -> Result<(), PacketError> {
        self.window.stats.packets += 1;
        if let Err(e) = validate(self.assembler.codec, packet.payload) {
            self.window.stats.malformed_packets += 1;
            return Err(e);
        }
        let ext = self.window.unwrap(packet.sequence);
        let next = self.window.next;
        if ext < next {
            self.window.stats.late_packets += 1;
            self.window.late_streak += 1;
            if self.window.late_streak >= REORDER_WINDOW as u64 {
                // The sender restarted its sequence numbers: start over from here.
                self.release_until(self.window.highest + 1);
                self.window.restart(ext);
                self.assembler.gap = true;
            } else {
                return Ok(());
            }
        }
        self.window.late_streak = 0;
        if ext >= self.window.next + REORDER_WINDOW as i64 {
            self.release_until(ext + 1 - REORDER_WINDOW as i64);
        }
        let slot = &mut self.window.slots[slot_index(ext)];
        if slot.sequence == Some(ext) {
            self.window.stats.duplicate_packets += 1;
            return Ok(());
        }
        slot.sequence = Some(ext);
        slot.timestamp = packet.timestamp;
        slot.marker = packet.marker;
        slot.payload.clear();
        slot.payload.extend_from_slice(packet.payload);
        self.window.highest = self.window.highest.max(ext);
        self.release_ready();
        Ok(())
    }

    /// The next complete frame, in order.
    pub fn poll(&mut self) -> Option<Frame> {
        self.assembler.ready.pop_front()
    }

    /// Ends the stream: packets still waiting for a missing one are processed as if it were
    /// lost, and an unfinished frame is dropped. Drain [`poll`](Self::poll) afterwards.
    pub fn flush(&mut self) {
        if self.window.started {
            self.release_until(self.window.highest + 1);
        }
        self.assembler.drop_partial();
    }

    /// Whether the track needs a keyframe (video only): true from the start until the first
    /// keyframe, and again after any loss until the next one. The SFU sends a PLI (throttled)
    /// while this holds.
    pub fn needs_keyframe(&self) -> bool {
        self.assembler.codec.is_video() && self.assembler.waiting_keyframe
    }

    /// The latest H.264 SPS and PPS NAL units seen (without start codes or lengths).
    pub fn parameter_sets(&self) -> Option<(&[u8], &[u8])> {
        let a = &self.assembler;
        (!a.sps.is_empty() && !a.pps.is_empty()).then_some((a.sps.as_slice(), a.pps.as_slice()))
    }

    /// The track's counters.
    pub fn stats(&self) -> DepacketizerStats {
        let mut s = self.window.stats;
        s.frames = self.assembler.frames;
        s.dropped_frames = self.assembler.dropped_frames;
        s
    }

    /// Processes (or declares lost) every sequence number before `target`.
    fn release_until(&mut self, target: i64) {
        let end = target.min(self.window.next + REORDER_WINDOW as i64);
        while self.window.next < end {
            self.release_one();
        }
        if self.window.next < target {
            self.window.stats.lost_packets += (target - self.window.next) as u64;
            self.assembler.gap = true;
            self.window.next = target;
        }
        self.release_ready();
    }

    /// Processes the packets that are next in sequence.
    fn release_ready(&mut self) {
        while self.window.slots[slot_index(self.window.next)].sequence == Some(self.window.next) {
            self.release_one();
        }
    }

    /// Processes the next sequence number's packet, or records its loss.
    fn release_one(&mut self) {
        let next = self.window.next;
        let slot = &mut self.window.slots[slot_index(next)];
        if slot.sequence == Some(next) {
            slot.sequence = None;
            self.assembler.process(slot);
        } else {
            self.window.stats.lost_packets += 1;
            self.assembler.gap = true;
        }
        self.window.next += 1;
    }
}

/// Checks a payload before it is stored, so that processing never meets a bad one.
fn validate(codec: Codec, payload: &[u8]) -> Result<(), PacketError> {
    match codec {
        Codec::Vp8 => parse_vp8(payload).map(drop),
        Codec::Opus if payload.is_empty() => Err(PacketError::Empty),
        Codec::Opus => Ok(()),
        Codec::H264 => parse_h264(payload).map(drop),
    }
}

fn slot_index(ext: i64) -> usize {
    ext.rem_euclid(REORDER_WINDOW as i64) as usize
}

/// A stored packet waiting for its turn.
#[derive(Debug, Default)]
struct Slot {
    sequence: Option<i64>,
    timestamp: u32,
    marker: bool,
    payload: Vec<u8>,
}

/// The sequence-number window that puts packets back in order.
#[derive(Debug)]
struct ReorderWindow {
    /// Indexed by extended sequence number modulo [`REORDER_WINDOW`].
    slots: Vec<Slot>,
    started: bool,
    /// The extended sequence number processed next.
    next: i64,
    /// The highest extended sequence number stored.
    highest: i64,
    /// Consecutive late packets (a long run means the sender restarted).
    late_streak: u64,
    stats: DepacketizerStats,
}

impl ReorderWindow {
    fn new() -> Self {
        Self {
            slots: (0..REORDER_WINDOW).map(|_| Slot::default()).collect(),
            started: false,
            next: 0,
            highest: 0,
            late_streak: 0,
            stats: DepacketizerStats::default(),
        }
    }

    /// Extends a sequence number to 64 bits, relative to the highest seen.
    fn unwrap(&mut self, sequence: u16) -> i64 {
        if !self.started {
            self.started = true;
            self.restart(i64::from(sequence));
            return self.next;
        }
        let delta = sequence.wrapping_sub(self.highest as u16) as i16;
        self.highest + i64::from(delta)
    }

    fn restart(&mut self, ext: i64) {
        self.next = ext;
        self.highest = ext;
        self.late_streak = 0;
    }
}

/// A VP8 payload descriptor, parsed.
struct Vp8Payload {
    /// S=1 and PID=0: the first packet of a frame.
    start: bool,
    /// The start of a keyframe (P bit 0).
    keyframe: bool,
    /// Where the VP8 data begins.
    offset: usize,
}

/// Parses the RFC 7741 payload descriptor.
fn parse_vp8(p: &[u8]) -> Result<Vp8Payload, PacketError> {
    let first = *p.first().ok_or(PacketError::Empty)?;
    let mut i = 1;
    if first & 0x80 != 0 {
        let ext = *p.get(1).ok_or(PacketError::Truncated)?;
        i = 2;
        if ext & 0x80 != 0 {
            // I: a 7- or 15-bit PictureID.
            let pid = *p.get(i).ok_or(PacketError::Truncated)?;
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if ext & 0x30 != 0 {
            i += 1; // T or K: TID/Y/KEYIDX
        }
    }
    if i > p.len() {
        return Err(PacketError::Truncated);
    }
    let data = p
        .get(i..)
        .filter(|d| !d.is_empty())
        .ok_or(PacketError::Empty)?;
    let start = first & 0x10 != 0 && first & 0x07 == 0;
    Ok(Vp8Payload {
        start,
        keyframe: start && data[0] & 0x01 == 0,
        offset: i,
    })
}

/// An H.264 RTP payload, parsed.
enum H264Payload<'a> {
    /// One NAL unit.
    Single(&'a [u8]),
    /// STAP-A: the aggregated units after the STAP-A header (already checked).
    StapA(&'a [u8]),
    /// A fragment of one NAL unit.
    FuA {
        start: bool,
        end: bool,
        /// The reconstructed NAL unit header.
        header: u8,
        data: &'a [u8],
    },
}

impl H264Payload<'_> {
    /// Whether this packet surely begins an access unit (used when the packet before it was
    /// lost): an access unit delimiter, an SPS, or the first slice of an IDR picture.
    fn starts_access_unit(&self) -> bool {
        let starts = |nal: &[u8]| match nal.first().map(|h| h & 0x1F) {
            Some(7 | 9) => true,
            Some(5) => nal.get(1).is_some_and(|b| b & 0x80 != 0), // first_mb_in_slice == 0
            _ => false,
        };
        match self {
            H264Payload::Single(nal) => starts(nal),
            H264Payload::StapA(body) => body.get(2..).is_some_and(starts),
            H264Payload::FuA {
                start: true,
                header,
                data,
                ..
            } => *header & 0x1F == 5 && data.first().is_some_and(|b| b & 0x80 != 0),
            H264Payload::FuA { .. } => false,
        }
    }
}

/// Parses an RFC 6184 payload (packetization-mode 1).
fn parse_h264(p: &[u8]) -> Result<H264Payload<'_>, PacketError> {
    let header = *p.first().ok_or(PacketError::Empty)?;
    match header & 0x1F {
        1..=23 => Ok(H264Payload::Single(p)),
        24 => {
            let body = &p[1..];
            let mut rest = body;
            if rest.is_empty() {
                return Err(PacketError::Empty);
            }
            while !rest.is_empty() {
                let len = match rest {
                    [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
                    _ => return Err(PacketError::Truncated),
                };
                if len == 0 {
                    return Err(PacketError::Empty);
                }
                rest = rest.get(2 + len..).ok_or(PacketError::Truncated)?;
            }
            Ok(H264Payload::StapA(body))
        }
        28 => {
            let fu = *p.get(1).ok_or(PacketError::Truncated)?;
            let data = &p[2..];
            if data.is_empty() {
                return Err(PacketError::Empty);
            }
            Ok(H264Payload::FuA {
                start: fu & 0x80 != 0,
                end: fu & 0x40 != 0,
                header: (header & 0xE0) | (fu & 0x1F),
                data,
            })
        }
        t => Err(PacketError::UnsupportedNal(t)),
    }
}

/// What is known about the previous packet processed (none after a loss).
#[derive(Debug, Clone, Copy)]
struct Previous {
    marker: bool,
    timestamp: i64,
}

/// Builds frames from packets in sequence order.
#[derive(Debug)]
struct Assembler {
    codec: Codec,
    /// A sequence number was lost before the packet processed next.
    gap: bool,
    previous: Option<Previous>,
    waiting_keyframe: bool,
    /// The frame being built.
    active: bool,
    buf: Vec<u8>,
    frame_timestamp: i64,
    frame_keyframe: bool,
    /// H.264: where the length prefix of an unfinished FU-A NAL unit is in `buf`.
    fu_at: Option<usize>,
    /// H.264: whether the access unit being built has its own SPS / PPS.
    frame_sps: bool,
    frame_pps: bool,
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// Timestamp unwrapping: the last extended timestamp and the first one.
    last_timestamp: Option<i64>,
    first_timestamp: i64,
    ready: VecDeque<Frame>,
    frames: u64,
    dropped_frames: u64,
}

impl Assembler {
    fn new(codec: Codec) -> Self {
        Self {
            codec,
            gap: false,
            previous: None,
            waiting_keyframe: codec.is_video(),
            active: false,
            buf: Vec::new(),
            frame_timestamp: 0,
            frame_keyframe: false,
            fu_at: None,
            frame_sps: false,
            frame_pps: false,
            sps: Vec::new(),
            pps: Vec::new(),
            last_timestamp: None,
            first_timestamp: 0,
            ready: VecDeque::new(),
            frames: 0,
            dropped_frames: 0,
        }
    }

    fn unwrap_timestamp(&mut self, ts: u32) -> i64 {
        let ext = match self.last_timestamp {
            None => {
                self.first_timestamp = i64::from(ts);
                i64::from(ts)
            }
            Some(last) => last.saturating_add(i64::from(ts.wrapping_sub(last as u32) as i32)),
        };
        self.last_timestamp = Some(ext);
        ext
    }

    /// Takes the next packet in sequence order (already validated).
    fn process(&mut self, slot: &Slot) {
        let ts = self.unwrap_timestamp(slot.timestamp);
        if std::mem::take(&mut self.gap) {
            self.corrupt();
            self.previous = None;
        }
        match self.codec {
            Codec::Opus => {
                self.begin(ts, true);
                self.append(&slot.payload);
                self.finish();
            }
            Codec::Vp8 => self.process_vp8(slot, ts),
            Codec::H264 => self.process_h264(slot, ts),
        }
        self.previous = Some(Previous {
            marker: slot.marker,
            timestamp: ts,
        });
    }

    fn process_vp8(&mut self, slot: &Slot, ts: i64) {
        let Ok(d) = parse_vp8(&slot.payload) else {
            return self.corrupt();
        };
        if d.start {
            if self.active {
                // The previous frame had no marker, but no packet is missing: it is whole.
                self.finish();
            }
            self.begin(ts, d.keyframe);
        } else if !self.active {
            return; // the rest of a frame whose start was lost or dropped
        } else if ts != self.frame_timestamp {
            return self.corrupt();
        }
        self.append(&slot.payload[d.offset..]);
        if slot.marker {
            self.finish();
        }
    }

    fn process_h264(&mut self, slot: &Slot, ts: i64) {
        let Ok(payload) = parse_h264(&slot.payload) else {
            return self.corrupt();
        };
        let boundary = match self.previous {
            Some(p) => p.marker || p.timestamp != ts,
            None => payload.starts_access_unit(),
        };
        if boundary {
            if self.active {
                self.finish();
            }
            self.begin(ts, false);
        } else if !self.active {
            return;
        }
        match payload {
            H264Payload::Single(nal) => self.append_nal(nal),
            H264Payload::StapA(mut body) => {
                while let [a, b, rest @ ..] = body {
                    let len = usize::from(u16::from_be_bytes([*a, *b]));
                    let (nal, tail) = rest.split_at(len.min(rest.len()));
                    self.append_nal(nal);
                    body = tail;
                }
            }
            H264Payload::FuA {
                start,
                end,
                header,
                data,
            } => {
                if start {
                    if self.fu_at.is_some() {
                        return self.corrupt();
                    }
                    self.fu_at = Some(self.buf.len());
                    self.append(&[0, 0, 0, 0, header]);
                } else if self.fu_at.is_none() {
                    return self.corrupt();
                }
                self.append(data);
                if end && let Some(at) = self.fu_at.take().filter(|_| self.active) {
                    let len = (self.buf.len() - at - 4) as u32;
                    self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                    self.nal_done(at + 4);
                }
            }
        }
        if slot.marker && self.active {
            self.finish();
        }
    }

    /// Appends one whole NAL unit with its length prefix.
    fn append_nal(&mut self, nal: &[u8]) {
        if self.fu_at.is_some() {
            return self.corrupt();
        }
        let at = self.buf.len() + 4;
        self.append(&(nal.len() as u32).to_be_bytes());
        self.append(nal);
        if self.active {
            self.nal_done(at);
        }
    }

    /// Notes what the NAL unit that starts at `at` in `buf` is.
    fn nal_done(&mut self, at: usize) {
        let nal = &self.buf[at..];
        match nal[0] & 0x1F {
            5 => self.frame_keyframe = true,
            7 => {
                self.frame_sps = true;
                if nal.len() <= MAX_PARAMETER_SET_BYTES {
                    self.sps.clear();
                    self.sps.extend_from_slice(nal);
                }
            }
            8 => {
                self.frame_pps = true;
                if nal.len() <= MAX_PARAMETER_SET_BYTES {
                    self.pps.clear();
                    self.pps.extend_from_slice(nal);
                }
            }
            _ => {}
        }
    }

    fn begin(&mut self, ts: i64, keyframe: bool) {
        self.active = true;
        self.buf.clear();
        self.frame_timestamp = ts;
        self.frame_keyframe = keyframe;
        self.fu_at = None;
        self.frame_sps = false;
        self.frame_pps = false;
    }

    fn append(&mut self, data: &[u8]) {
        if !self.active {
            return;
        }
        if self.buf.len() + data.len() > MAX_FRAME_BYTES {
            return self.corrupt();
        }
        self.buf.extend_from_slice(data);
    }

    /// Drops the frame being built because part of it is missing or unusable.
    fn corrupt(&mut self) {
        self.drop_partial();
        if self.codec.is_video() {
            self.waiting_keyframe = true;
        }
    }

    fn drop_partial(&mut self) {
        if self.active {
            self.active = false;
            self.dropped_frames += 1;
        }
        self.fu_at = None;
    }

    /// The frame being built is complete: output it if it can be decoded.
    fn finish(&mut self) {
        self.active = false;
        if self.fu_at.is_some() || self.buf.is_empty() {
            return self.corrupt();
        }
        if self.waiting_keyframe && !self.frame_keyframe {
            self.dropped_frames += 1;
            return;
        }
        if self.ready.len() >= MAX_READY_FRAMES {
            self.dropped_frames += 1;
            if self.codec.is_video() {
                self.waiting_keyframe = true;
            }
            return;
        }
        self.waiting_keyframe = false;
        let mut data = Vec::with_capacity(self.buf.len() + 16);
        if self.codec == Codec::H264
            && self.frame_keyframe
            && !(self.frame_sps && self.frame_pps)
            && !self.sps.is_empty()
            && !self.pps.is_empty()
        {
            for ps in [&self.sps, &self.pps] {
                data.extend_from_slice(&(ps.len() as u32).to_be_bytes());
                data.extend_from_slice(ps);
            }
        }
        data.extend_from_slice(&self.buf);
        let ticks = self
            .frame_timestamp
            .saturating_sub(self.first_timestamp)
            .max(0) as u128;
        let ms = ticks * 1000 / u128::from(self.codec.clock_rate());
        self.ready.push_back(Frame {
            data,
            rtp_timestamp: self.frame_timestamp.max(0) as u64,
            timestamp_ms: u64::try_from(ms).unwrap_or(u64::MAX),
            keyframe: self.frame_keyframe,
        });
        self.frames += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webm::fixtures::{
        Packet, h264_access_units, opus_packets, packetize_h264, packetize_vp8, probe_and_decode,
        vp8_frames, vp8_keyframe,
    };
    use crate::webm::{TrackSpec, TrackWriter, VideoCodec};

    /// Pushes every packet and collects the frames, flushing at the end.
    fn run(d: &mut Depacketizer, packets: &[Packet]) -> Vec<Frame> {
        let mut frames = Vec::new();
        for p in packets {
            d.push(&p.rtp()).unwrap();
            frames.extend(std::iter::from_fn(|| d.poll()));
        }
        d.flush();
        frames.extend(std::iter::from_fn(|| d.poll()));
        frames
    }

    fn packet(payload: &[u8], sequence: u16, timestamp: u32, marker: bool) -> Packet {
        Packet {
            payload: payload.to_vec(),
            sequence,
            timestamp,
            marker,
        }
    }

    /// Prefixes each NAL unit with its 4-byte length.
    fn length_prefixed<'a>(nals: impl IntoIterator<Item = &'a Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        for nal in nals {
            out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            out.extend_from_slice(nal);
        }
        out
    }

    #[test]
    fn vp8_frames_split_across_packets_come_back_whole_across_wraps() {
        let frames = vp8_frames();
        // Sequence numbers and timestamps both wrap during the stream.
        let packets = packetize_vp8(frames, 65_500, u32::MAX - 3600 * 10, 3600, 1200);
        assert!(
            packets.len() > frames.len() + 10,
            "some frames span packets"
        );
        let mut d = Depacketizer::new(Codec::Vp8);
        assert!(d.needs_keyframe());
        let out = run(&mut d, &packets);
        assert_eq!(out.len(), frames.len());
        for (i, (got, want)) in out.iter().zip(frames).enumerate() {
            assert!(got.data == *want, "frame {i}");
            assert_eq!(got.timestamp_ms, i as u64 * 40);
            assert_eq!(
                got.rtp_timestamp,
                u64::from(u32::MAX - 3600 * 10) + i as u64 * 3600
            );
            assert_eq!(got.keyframe, vp8_keyframe(want));
        }
        assert!(!d.needs_keyframe());
        let stats = d.stats();
        assert_eq!(
            (stats.frames, stats.lost_packets, stats.dropped_frames),
            (75, 0, 0)
        );
    }

    #[test]
    fn vp8_reordered_packets_within_the_window_are_put_back_in_order() {
        let frames = vp8_frames();
        let mut packets = packetize_vp8(frames, 1000, 0, 3600, 500);
        // The first packets come in order (anything older than the first is late).
        for chunk in packets[7..].chunks_mut(7) {
            chunk.reverse();
        }
        let mut d = Depacketizer::new(Codec::Vp8);
        let out = run(&mut d, &packets);
        assert_eq!(out.len(), frames.len());
        assert!(out.iter().zip(frames).all(|(got, want)| got.data == *want));
        assert_eq!(d.stats().late_packets, 0);
    }

    #[test]
    fn vp8_loss_drops_frames_until_the_next_keyframe() {
        let frames = vp8_frames();
        assert!(vp8_keyframe(&frames[25]) && vp8_keyframe(&frames[50]));
        let mut packets = packetize_vp8(frames, 0, 0, 3600, 200);
        assert!(packets.iter().filter(|p| p.timestamp == 30 * 3600).count() > 1);
        // Lose the last packet of frame 30 (a delta frame).
        let lost = packets
            .iter()
            .position(|p| p.timestamp == 30 * 3600 && p.marker)
            .unwrap();
        packets.remove(lost);
        let mut d = Depacketizer::new(Codec::Vp8);
        let mut out = Vec::new();
        let mut asked_for_keyframe = false;
        for p in &packets {
            d.push(&p.rtp()).unwrap();
            out.extend(std::iter::from_fn(|| d.poll()));
            asked_for_keyframe |= d.needs_keyframe();
        }
        d.flush();
        out.extend(std::iter::from_fn(|| d.poll()));
        assert!(asked_for_keyframe);
        assert!(!d.needs_keyframe());
        let times: Vec<u64> = out.iter().map(|f| f.timestamp_ms / 40).collect();
        let want: Vec<u64> = (0..30).chain(50..75).collect();
        assert_eq!(times, want);
        assert!(
            out.iter()
                .all(|f| f.data == frames[(f.timestamp_ms / 40) as usize])
        );
        let stats = d.stats();
        assert_eq!(stats.lost_packets, 1);
        assert_eq!(stats.dropped_frames, 20, "frame 30, then 31 to 49");
    }

    #[test]
    fn vp8_stream_joined_mid_frame_starts_at_the_first_keyframe() {
        let frames = vp8_frames();
        let packets = packetize_vp8(frames, 0, 0, 3600, 300);
        let start = packets
            .iter()
            .position(|p| p.timestamp == 10 * 3600)
            .unwrap()
            + 1;
        let mut d = Depacketizer::new(Codec::Vp8);
        let out = run(&mut d, &packets[start..]);
        assert!(out[0].keyframe);
        assert_eq!(out[0].data, frames[25]);
        assert_eq!(out.len(), 50);
    }

    #[test]
    fn vp8_descriptor_extensions_are_skipped() {
        let mut d = Depacketizer::new(Codec::Vp8);
        // X with I (7-bit PictureID), L, and T/K; keyframe tag byte 0x00.
        d.push(&packet(&[0x90, 0xF0, 0x05, 0x01, 0x20, 0x00, 0xAA], 1, 90, false).rtp())
            .unwrap();
        // X with only K; continuation.
        d.push(&packet(&[0x80, 0x10, 0x20, 0xBB], 2, 90, true).rtp())
            .unwrap();
        // No X, delta frame in one packet.
        d.push(&packet(&[0x10, 0x01, 0xCC], 3, 3690, true).rtp())
            .unwrap();
        let a = d.poll().unwrap();
        assert_eq!(
            (a.data.as_slice(), a.keyframe, a.timestamp_ms),
            (&[0x00, 0xAA, 0xBB][..], true, 0)
        );
        let b = d.poll().unwrap();
        assert_eq!(
            (b.data.as_slice(), b.keyframe, b.timestamp_ms),
            (&[0x01, 0xCC][..], false, 40)
        );
        assert!(d.poll().is_none());
    }

    #[test]
    fn malformed_vp8_payloads_are_rejected_and_count_as_loss() {
        let mut d = Depacketizer::new(Codec::Vp8);
        assert_eq!(
            d.push(&packet(&[], 1, 0, true).rtp()),
            Err(PacketError::Empty)
        );
        assert_eq!(
            d.push(&packet(&[0x90], 1, 0, true).rtp()),
            Err(PacketError::Truncated)
        );
        assert_eq!(
            d.push(&packet(&[0x90, 0x80, 0x81], 1, 0, true).rtp()),
            Err(PacketError::Truncated)
        );
        assert_eq!(
            d.push(&packet(&[0x90, 0x40, 0x00], 1, 0, true).rtp()),
            Err(PacketError::Empty)
        );
        // A keyframe, then a delta frame whose first packet was malformed.
        d.push(&packet(&[0x10, 0x00, 1], 10, 0, true).rtp())
            .unwrap();
        assert_eq!(
            d.push(&packet(&[0x10], 11, 3600, false).rtp()),
            Err(PacketError::Empty)
        );
        d.push(&packet(&[0x00, 2], 12, 3600, true).rtp()).unwrap();
        d.push(&packet(&[0x10, 0x01, 3], 13, 7200, true).rtp())
            .unwrap();
        d.flush();
        assert!(d.poll().unwrap().keyframe);
        assert!(d.poll().is_none(), "nothing decodable after the loss");
        assert!(d.needs_keyframe());
        let stats = d.stats();
        assert_eq!((stats.malformed_packets, stats.lost_packets), (5, 1));
    }

    #[test]
    fn opus_packets_are_frames_and_loss_only_skips_one() {
        let packets: Vec<Packet> = opus_packets()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 10)
            .map(|(i, p)| packet(p, 7 + i as u16, 123 + i as u32 * 960, i == 0))
            .collect();
        let mut d = Depacketizer::new(Codec::Opus);
        assert!(!d.needs_keyframe());
        let out = run(&mut d, &packets);
        assert_eq!(out.len(), opus_packets().len() - 1);
        for f in &out {
            let i = (f.timestamp_ms / 20) as usize;
            assert_ne!(i, 10);
            assert_eq!(f.data, opus_packets()[i]);
            assert!(f.keyframe);
        }
        assert!(!d.needs_keyframe());
        assert_eq!(d.stats().lost_packets, 1);
        assert_eq!(
            d.push(&packet(&[], 500, 0, false).rtp()),
            Err(PacketError::Empty)
        );
    }

    #[test]
    fn timestamps_unwrap_across_the_32_bit_boundary() {
        let mut d = Depacketizer::new(Codec::Opus);
        let first = u32::MAX - 959;
        for i in 0..4u32 {
            d.push(
                &packet(
                    &[0xFC],
                    65_534u16.wrapping_add(i as u16),
                    first.wrapping_add(i * 960),
                    false,
                )
                .rtp(),
            )
            .unwrap();
        }
        let times: Vec<(u64, u64)> = std::iter::from_fn(|| d.poll())
            .map(|f| (f.rtp_timestamp, f.timestamp_ms))
            .collect();
        let base = u64::from(first);
        assert_eq!(
            times,
            [
                (base, 0),
                (base + 960, 20),
                (base + 1920, 40),
                (base + 2880, 60)
            ]
        );
    }

    #[test]
    fn duplicates_and_late_packets_are_ignored() {
        // A duplicate of a packet already processed counts as late.
        let mut d = Depacketizer::new(Codec::Opus);
        d.push(&packet(&[1], 100, 0, false).rtp()).unwrap();
        d.push(&packet(&[1], 100, 0, false).rtp()).unwrap();
        d.push(&packet(&[3], 102, 1920, false).rtp()).unwrap();
        d.push(&packet(&[3], 102, 1920, false).rtp()).unwrap();
        d.push(&packet(&[0], 99, 0, false).rtp()).unwrap();
        d.push(&packet(&[2], 101, 960, false).rtp()).unwrap();
        let data: Vec<Vec<u8>> = std::iter::from_fn(|| d.poll()).map(|f| f.data).collect();
        assert_eq!(data, [[1], [2], [3]]);
        let stats = d.stats();
        assert_eq!(
            (
                stats.duplicate_packets,
                stats.late_packets,
                stats.lost_packets
            ),
            (1, 2, 0)
        );
    }

    #[test]
    fn a_packet_far_ahead_declares_the_missing_ones_lost() {
        let mut d = Depacketizer::new(Codec::Opus);
        d.push(&packet(&[1], 0, 0, false).rtp()).unwrap();
        d.push(&packet(&[2], 2, 1920, false).rtp()).unwrap();
        assert_eq!(d.poll().unwrap().data, [1]);
        assert!(d.poll().is_none(), "packet 2 waits for packet 1");
        d.push(&packet(&[3], 2 + REORDER_WINDOW as u16, 99_999, false).rtp())
            .unwrap();
        assert_eq!(d.poll().unwrap().data, [2]);
        assert!(d.poll().is_none());
        assert_eq!(d.stats().lost_packets, 1);
    }

    #[test]
    fn a_sender_that_restarts_its_sequence_numbers_is_followed() {
        let mut d = Depacketizer::new(Codec::Opus);
        d.push(&packet(&[1], 30_000, 0, false).rtp()).unwrap();
        for i in 0..REORDER_WINDOW as u16 + 5 {
            d.push(&packet(&[2], 100 + i, 960 * (u32::from(i) + 1), false).rtp())
                .unwrap();
        }
        // The 64th late packet in a row restarts the window; it and the 5 after it come out.
        assert_eq!(std::iter::from_fn(|| d.poll()).count(), 1 + 6);
    }

    /// A hand-built H.264 stream: SPS+PPS in a STAP-A, an IDR slice in FU-A, P slices alone.
    fn h264_packets() -> (Vec<Packet>, Vec<u8>, Vec<u8>) {
        let sps = vec![0x67, 0x42, 0xC0, 0x1E, 0xAB];
        let pps = vec![0x68, 0xCE, 0x3C, 0x80];
        let mut stap = vec![24];
        for nal in [&sps, &pps] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        let packets = vec![
            packet(&stap, 1, 0, false),
            packet(&[0x7C, 0x85, 0x88, 1, 2], 2, 0, false), // FU-A start of IDR (nri 3)
            packet(&[0x7C, 0x05, 3, 4], 3, 0, false),
            packet(&[0x7C, 0x45, 5], 4, 0, true), // FU-A end
            packet(&[0x41, 0x9A, 6], 5, 3000, true),
            packet(&[0x65, 0x88, 7], 6, 6000, true), // IDR alone: SPS/PPS get prepended
        ];
        (packets, sps, pps)
    }

    #[test]
    fn h264_stap_a_and_fu_a_make_length_prefixed_access_units() {
        let (packets, sps, pps) = h264_packets();
        let mut d = Depacketizer::new(Codec::H264);
        let out = run(&mut d, &packets);
        let idr = vec![0x65, 0x88, 1, 2, 3, 4, 5];
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].data, length_prefixed([&sps, &pps, &idr]));
        assert!(out[0].keyframe);
        assert_eq!(out[1].data, length_prefixed([&vec![0x41, 0x9A, 6]]));
        assert!(!out[1].keyframe);
        assert_eq!(out[1].timestamp_ms, 33);
        assert_eq!(
            out[2].data,
            length_prefixed([&sps, &pps, &vec![0x65, 0x88, 7]])
        );
        assert!(out[2].keyframe);
        assert_eq!(d.parameter_sets(), Some((&sps[..], &pps[..])));
    }

    #[test]
    fn h264_lost_fragment_drops_the_access_unit_and_waits_for_an_idr() {
        let (mut packets, ..) = h264_packets();
        packets.remove(2); // the middle FU-A fragment of the first IDR
        let mut d = Depacketizer::new(Codec::H264);
        let out = run(&mut d, &packets);
        assert_eq!(out.len(), 1, "only the later IDR: {out:?}");
        assert!(out[0].keyframe);
        assert_eq!(out[0].timestamp_ms, 66);
    }

    #[test]
    fn h264_rejects_what_packetization_mode_1_does_not_allow() {
        let mut d = Depacketizer::new(Codec::H264);
        for (payload, err) in [
            (&[0x19, 0, 1][..], PacketError::UnsupportedNal(25)),
            (&[0x1D, 0x80, 1], PacketError::UnsupportedNal(29)),
            (&[0x00], PacketError::UnsupportedNal(0)),
            (&[0x18, 0x00, 0x05, 0x67], PacketError::Truncated),
            (&[0x18, 0x00], PacketError::Truncated),
            (&[0x18, 0x00, 0x00], PacketError::Empty),
            (&[0x1C, 0x85], PacketError::Empty),
            (&[0x1C], PacketError::Truncated),
            (&[], PacketError::Empty),
        ] {
            assert_eq!(
                d.push(&packet(payload, 1, 0, true).rtp()),
                Err(err),
                "{payload:?}"
            );
        }
        assert_eq!(d.stats().malformed_packets, 9);
    }

    #[test]
    fn random_packets_never_panic() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut random = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for codec in [Codec::Vp8, Codec::Opus, Codec::H264] {
            let mut d = Depacketizer::new(codec);
            for i in 0..20_000u32 {
                let r = random();
                let payload: Vec<u8> = (0..r % 40).map(|_| random() as u8).collect();
                let jitter = (r >> 40) as u16 % 16;
                let sequence = if r % 97 == 0 {
                    (r >> 20) as u16
                } else {
                    (i as u16).wrapping_add(jitter)
                };
                let packet = RtpPacket {
                    payload: &payload,
                    sequence,
                    timestamp: i / 3 * 3000 + (r >> 50) as u32 % 2,
                    marker: r & 1 == 1,
                };
                let _ = d.push(&packet);
                while let Some(f) = d.poll() {
                    assert!(!f.data.is_empty());
                }
            }
            d.flush();
            while d.poll().is_some() {}
        }
    }

    #[test]
    fn h264_from_x264_survives_rtp_and_plays_in_matroska() {
        let units = h264_access_units();
        let packets = packetize_h264(units, 65_000, 1000);
        assert!(
            packets.iter().any(|p| p.payload[0] & 0x1F == 24),
            "a STAP-A"
        );
        assert!(packets.iter().any(|p| p.payload[0] & 0x1F == 28), "an FU-A");
        let mut d = Depacketizer::new(Codec::H264);
        let out = run(&mut d, &packets);
        assert_eq!(out.len(), units.len());
        let (sps, pps) = {
            let first = &units[0];
            let find = |t: u8| first.iter().find(|n| n[0] & 0x1F == t).unwrap().clone();
            (find(7), find(8))
        };
        let mut writer = TrackWriter::new(
            TrackSpec::Video {
                codec: VideoCodec::H264,
                width: Some(320),
                height: Some(240),
            },
            0,
        )
        .unwrap();
        let mut file = Vec::new();
        for (i, (got, unit)) in out.iter().zip(units).enumerate() {
            let idr = unit.iter().any(|n| n[0] & 0x1F == 5);
            let has_ps = unit.iter().any(|n| n[0] & 0x1F == 7);
            let mut want = Vec::new();
            if idr && !has_ps {
                want = length_prefixed([&sps, &pps]);
            }
            want.extend(length_prefixed(unit));
            assert!(got.data == want, "access unit {i}");
            assert_eq!(got.keyframe, idr);
            writer
                .push(got.timestamp_ms, &got.data, got.keyframe, &mut file)
                .unwrap();
        }
        writer.finish().apply(&mut file);
        let (probe, errors) = probe_and_decode(&file, "mkv");
        assert_eq!(probe.codec, "h264");
        assert!((probe.duration - 3.0).abs() < 0.1, "{probe:?}");
        assert_eq!(probe.frames, 75);
        assert_eq!(errors, "");
    }

    #[test]
    fn vp8_from_rtp_with_loss_records_a_file_that_decodes_cleanly() {
        let frames = vp8_frames();
        let mut packets = packetize_vp8(frames, 0, 0, 3600, 1200);
        packets.remove(packets.len() / 3);
        let mut d = Depacketizer::new(Codec::Vp8);
        let out = run(&mut d, &packets);
        let spec = TrackSpec::Video {
            codec: VideoCodec::Vp8,
            width: None,
            height: None,
        };
        let mut writer = TrackWriter::new(spec, 0).unwrap();
        let mut file = Vec::new();
        for f in &out {
            writer
                .push(f.timestamp_ms, &f.data, f.keyframe, &mut file)
                .unwrap();
        }
        writer.finish().apply(&mut file);
        let (probe, errors) = probe_and_decode(&file, "webm");
        assert_eq!(probe.frames, out.len() as u64);
        assert!(out.len() < 75);
        assert!((probe.duration - 3.0).abs() < 0.1, "{probe:?}");
        assert_eq!(errors, "");
    }
}
