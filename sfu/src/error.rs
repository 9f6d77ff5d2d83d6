//! Errors of the forwarding core.

use crate::ParticipantId;

/// Why the router refused a command.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The participant is not (or no longer) in the router.
    #[error("participant {0} is not connected to the media router")]
    UnknownParticipant(ParticipantId),
    /// A participant with this id is already in the router.
    #[error("participant {0} has already joined")]
    AlreadyJoined(ParticipantId),
    /// The participant may not publish media (an observer).
    #[error("this participant may not publish media")]
    PublishForbidden,
    /// The SDP could not be parsed or applied; the previous state is kept.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// The participant receives no track with this id.
    #[error("no track {0} is forwarded to this participant")]
    UnknownTrack(String),
    /// An answer arrived while no offer was outstanding.
    #[error("no subscribe offer is waiting for an answer")]
    NoOfferOutstanding,
    /// The WebRTC stack failed in a way the client did not cause.
    #[error("media stack error: {0}")]
    Rtc(#[from] rtc::shared::error::Error),
}
