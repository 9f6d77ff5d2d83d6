//! Recording taps: while a room is recorded, the router hands each of its tracks' RTP packets,
//! as the publisher sent them, to a [`TapSink`] as well as to the subscribers.
//!
//! The payload is shared ([`Bytes`]), not copied; nothing is decoded. A tapped track is
//! announced once ([`Tap::Started`], with its codecs), then its packets follow
//! ([`Tap::Packet`], naming the track by a small number), then [`Tap::Ended`] when it is
//! unpublished or the room stops being recorded. The sink must never block: the media loop
//! calls it inline (a recorder puts the taps on a bounded queue and counts what it drops).

use crate::{ParticipantId, TrackKind, TrackSource};
use bytes::Bytes;

/// Identifies a tapped track for as long as the router runs.
pub type TapId = u64;

/// A tapped track, announced before its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapTrack {
    /// The track's tap number.
    pub tap: TapId,
    /// The room.
    pub room: String,
    /// The publisher.
    pub participant: ParticipantId,
    /// The publisher's display name.
    pub identity: String,
    /// The publisher's role.
    pub role: String,
    /// The track id in the publisher's connection (`MediaStreamTrack.id`).
    pub publisher_track_id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Camera, microphone or screen.
    pub source: TrackSource,
    /// The negotiated codecs by payload type, the primary one first.
    pub codecs: Vec<TapCodec>,
}

/// One negotiated codec of a tapped track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapCodec {
    /// The RTP payload type.
    pub payload_type: u8,
    /// E.g. `video/VP8`, `audio/opus`.
    pub mime_type: String,
    /// RTP clock rate, Hz.
    pub clock_rate: u32,
    /// Audio channels (0 for video).
    pub channels: u16,
    /// The SDP `a=fmtp` parameters.
    pub fmtp: String,
}

/// One RTP packet of a tapped track, as received from the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPacket {
    /// Its track.
    pub tap: TapId,
    /// The RTP payload type.
    pub payload_type: u8,
    /// The RTP sequence number.
    pub sequence_number: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The RTP marker bit.
    pub marker: bool,
    /// The payload (shared with the forwarded copies).
    pub payload: Bytes,
}

/// What the router tells a recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tap {
    /// A track of a recorded room: its packets follow.
    Started(TapTrack),
    /// A packet of a started track.
    Packet(TapPacket),
    /// The track was unpublished, or its room is no longer recorded.
    Ended {
        /// Its tap number.
        tap: TapId,
    },
}

/// Where the media loop delivers taps. Must not block.
pub trait TapSink: Send + 'static {
    /// Takes one tap.
    fn deliver(&mut self, tap: Tap);
}
