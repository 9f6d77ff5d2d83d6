//! Tracks: what a participant publishes and how it is described to subscribers.

use crate::ParticipantId;
use serde::{Deserialize, Serialize};

/// Where a published track comes from, as the publishing client declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// The camera.
    Camera,
    /// The microphone.
    Microphone,
    /// A shared screen or window (an image, an ECG strip).
    Screen,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// An audio track (Opus).
    Audio,
    /// A video track (VP8, VP9 or H.264).
    Video,
}

/// One forwarded track as a subscriber sees it in its subscriber connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// The `a=msid` stream id: the publishing participant's id.
    pub stream_id: String,
    /// The `a=msid` track id in the subscriber connection.
    pub track_id: String,
    /// The publisher.
    pub participant_id: ParticipantId,
    /// The publisher's display name.
    pub identity: String,
    /// The publisher's role.
    pub role: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Camera, microphone or screen.
    pub source: TrackSource,
}
