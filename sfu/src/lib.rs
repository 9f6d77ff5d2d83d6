//! Selective forwarding of WebRTC media for medrelay.
//!
//! The crate has two layers, as quinn-proto has under quinn:
//!
//! - [`Router`] is the **sans-IO core**. It owns every participant's peer connections (the
//!   `rtc` crate's sans-IO `RTCPeerConnection`), decides which subscriber receives which
//!   packet, rewrites headers per subscriber ([`rewrite`]), relays keyframe requests and
//!   drives renegotiation. It never touches a socket or reads a clock: callers feed it
//!   datagrams, signaling commands and the current time, and drain what it wants to send.
//! - [`shell`] is the **tokio shell**: one UDP socket shared by every peer (ICE-lite,
//!   demultiplexed by ICE username and then by address, see [`demux`]), ICE-TCP connections
//!   on the same port for networks that block UDP, a command channel
//!   from signaling, and a timer for the core's next deadline.
//!
//! Vocabulary: a [`Participant`](ParticipantInfo) joins a room and has two peer connections:
//! the *publisher* connection (the client offers, it carries what the participant sends) and
//! the *subscriber* connection (the router offers, it carries what the participant receives
//! and the room's `chat` data channel). A published [`Track`](TrackInfo) is forwarded to each
//! other participant of the room through one *subscription* (mediasoup's consumer). While a
//! room is recorded, its tracks' packets are also handed to a recorder ([`tap`]). A video
//! published as several simulcast layers reaches each subscriber in the layer that its
//! bandwidth estimate and the size it shows the video at allow ([`simulcast`]).

mod bandwidth;
pub mod demux;
mod error;
mod fec;
mod keyframe_relay;
mod nack_limit;
mod participant;
mod peer;
mod red_resend;
pub mod rewrite;
mod router;
mod rtt_reply;
pub mod shell;
pub mod simulcast;
pub mod tap;
mod tcp;
mod track;

pub use error::SfuError;
pub use participant::{ParticipantId, ParticipantInfo};
pub use router::{
    Datagram, PublishAnswer, Router, RouterConfig, RouterEvent, RouterStats, TrackQuality,
};
pub use track::{TrackInfo, TrackKind, TrackSource};
