//! The WebSocket signaling protocol's messages, as described in `docs/signaling.md`.

use serde::{Deserialize, Serialize};
use sfu::{ParticipantId, TrackInfo, TrackSource};

/// Largest text frame accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest SDP accepted, in bytes.
pub const MAX_SDP_BYTES: usize = 32 * 1024;

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticate and enter a room.
    Join {
        /// The signed join token.
        token: String,
        /// The room the client means to join.
        room: String,
    },
    /// Offer of the publisher connection.
    PublishOffer {
        /// The SDP.
        sdp: String,
        /// The source of each published track.
        #[serde(default)]
        tracks: Vec<PublishedTrack>,
    },
    /// Answer to the last subscribe offer.
    SubscribeAnswer {
        /// The SDP.
        sdp: String,
    },
    /// A published track was muted or unmuted.
    SetMuted {
        /// `MediaStreamTrack.id` of the published track.
        track_id: String,
        /// Whether it is muted now.
        muted: bool,
    },
    /// Start (`on: true`) or stop recording the room (specialists only).
    SetRecording {
        /// Whether the room is to be recorded.
        on: bool,
    },
    /// The height at which the client shows a received video (its tile), so that it is sent
    /// no taller than that; `0` when it is not shown.
    TrackSettings {
        /// The track id as in `subscribe_offer`.
        track_id: String,
        /// Shown height in device pixels.
        height: u32,
    },
    /// Keep one received track (e.g. a shared ECG or ultrasound screen) at the best quality
    /// the link allows, at the cost of other video; `null` unpins.
    Pin {
        /// The track id as in `subscribe_offer`, or none.
        track_id: Option<String>,
    },
    /// Take a participant over again on a new socket after the old one was lost (instead of
    /// `join`, as the first message).
    Resume {
        /// A valid join token for the same identity, role and room.
        token: String,
        /// The room.
        room: String,
        /// The participant to resume (from `joined`).
        participant_id: ParticipantId,
        /// The secret from the last `joined` or `resumed`.
        resume_token: String,
    },
    /// Keeps the socket alive; answered with a `heartbeat`, so that a page notices a dead
    /// socket (browsers cannot see WebSocket pings).
    Heartbeat {},
    /// Leave the room.
    Leave {},
}

/// One published track's declared source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PublishedTrack {
    /// `MediaStreamTrack.id`.
    pub track_id: String,
    /// Camera, microphone or screen.
    pub source: TrackSource,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ParticipantView {
    /// The participant id (`p` + hex).
    #[schema(value_type = String)]
    pub id: ParticipantId,
    /// Display name from the token.
    pub identity: String,
    /// Role from the token.
    pub role: String,
}

/// A room's recording in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RecordingStatus {
    /// The recording's id (in the recordings API).
    pub recording_id: String,
    /// Who started it (an identity, `api`, or `room` for a room recorded from the start).
    pub by: String,
    /// When it started, milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// A track in a subscribe offer, with its current mute state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteTrack {
    /// The track as the router forwards it.
    #[serde(flatten)]
    pub track: TrackInfo,
    /// Whether the publisher has muted it.
    pub muted: bool,
}

/// What a client receives of one video track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackQualityView {
    /// The track id as in `subscribe_offer`.
    pub track_id: String,
    /// The simulcast layer received (`null` without simulcast or while paused).
    pub rid: Option<String>,
    /// Whether no video of it is received now.
    pub paused: bool,
    /// Why it is paused: `bandwidth` (the link cannot carry even the lowest layer),
    /// `not_visible`, or `publisher_paused`.
    pub reason: Option<&'static str>,
}

impl From<sfu::TrackQuality> for TrackQualityView {
    fn from(q: sfu::TrackQuality) -> Self {
        Self {
            track_id: q.track_id,
            rid: q.rid,
            paused: q.paused.is_some(),
            reason: q.paused.map(|r| r.as_str()),
        }
    }
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its socket closed, went silent, or its media transport failed.
    Disconnected,
    /// An administrator removed it.
    Removed,
    /// The room was closed.
    RoomClosed,
}

/// What `joined` and `resumed` tell a participant about itself and its room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Welcome {
    /// The participant itself.
    pub participant: ParticipantView,
    /// The room.
    pub room: String,
    /// The others in the room now.
    pub participants: Vec<ParticipantView>,
    /// The room's recording in progress, if it is being recorded.
    pub recording: Option<RecordingStatus>,
    /// TURN servers with this participant's short-lived credentials (empty without
    /// TURN): the page's `RTCConfiguration.iceServers`.
    pub ice_servers: Vec<crate::turn::IceServer>,
    /// The secret that resumes this participant on a new socket (replaced by each
    /// `resumed`).
    pub resume_token: String,
}

/// A message to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join was accepted.
    Joined(Welcome),
    /// The resume was accepted; a `subscribe_offer` that restarts ICE follows.
    Resumed(Welcome),
    /// The answer to a client's `heartbeat`.
    Heartbeat {},
    /// The room's recording started (`on: true`, with its status) or stopped.
    Recording {
        /// Whether the room is being recorded now.
        on: bool,
        /// The recording, while on.
        #[serde(flatten)]
        status: Option<RecordingStatus>,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantView,
    },
    /// Someone left.
    ParticipantLeft {
        /// Who.
        participant_id: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A subscriber-connection offer.
    SubscribeOffer {
        /// The SDP.
        sdp: String,
        /// Every track the offer carries.
        tracks: Vec<RemoteTrack>,
    },
    /// The answer to a publish offer.
    PublishAnswer {
        /// The SDP.
        sdp: String,
    },
    /// A remote track was muted or unmuted.
    TrackMuted {
        /// The publisher.
        participant_id: ParticipantId,
        /// The track id as in the subscriber connection.
        track_id: String,
        /// Whether it is muted.
        muted: bool,
    },
    /// What the client receives now: the bandwidth estimate towards it and, per video
    /// track, the simulcast layer or why it is paused. Sent when anything changes (at most
    /// about once a second for the estimate alone).
    Quality {
        /// Estimated bandwidth towards the client, in bits per second.
        estimate_bps: u64,
        /// Every video track it receives.
        tracks: Vec<TrackQualityView>,
    },
    /// To a publisher: send only these simulcast layers of one of its tracks; the others
    /// are not watched by anyone and are to be paused.
    LayersWanted {
        /// The publisher's own `MediaStreamTrack.id`.
        track_id: String,
        /// The `rid`s to keep sending.
        rids: Vec<String>,
    },
    /// A typed error.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation, free of patient data.
        message: String,
    },
}

/// Every error code of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a known message shape.
    InvalidJson,
    /// Unknown `type`.
    UnknownType,
    /// A frame over [`MAX_MESSAGE_BYTES`].
    MessageTooLarge,
    /// Anything but `join` first, or no `join` in time.
    NotJoined,
    /// A second `join`.
    AlreadyJoined,
    /// Malformed token or wrong signature.
    BadToken,
    /// Token past its expiry.
    TokenExpired,
    /// Token for another room.
    WrongRoom,
    /// The room was closed.
    RoomClosed,
    /// The room is at its participant limit.
    RoomFull,
    /// The role may not do this.
    Forbidden,
    /// SDP that could not be parsed or applied.
    InvalidSdp,
    /// SDP over [`MAX_SDP_BYTES`].
    SdpTooLarge,
    /// Too many joins or messages.
    RateLimited,
    /// Removed by an administrator.
    Removed,
    /// Recording cannot start now (no recorder, a full disk, the recorder stopped).
    RecordingUnavailable,
    /// No track with that id is forwarded to this participant.
    UnknownTrack,
    /// A `resume` that cannot be honoured (unknown participant, wrong resume token, the
    /// window ended); join afresh.
    ResumeFailed,
    /// A server failure.
    Internal,
}

impl ErrorCode {
    /// Whether the server closes the socket after this error.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::MessageTooLarge
                | ErrorCode::NotJoined
                | ErrorCode::BadToken
                | ErrorCode::TokenExpired
                | ErrorCode::WrongRoom
                | ErrorCode::RoomClosed
                | ErrorCode::RoomFull
                | ErrorCode::RateLimited
                | ErrorCode::Removed
                | ErrorCode::ResumeFailed
        )
    }

    /// The code's wire name (for metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongRoom => "wrong_room",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidSdp => "invalid_sdp",
            ErrorCode::SdpTooLarge => "sdp_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Removed => "removed",
            ErrorCode::RecordingUnavailable => "recording_unavailable",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A protocol error: a code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    /// The code.
    pub code: ErrorCode,
    /// The explanation.
    pub message: String,
}

impl ProtocolError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for ServerMessage {
    fn from(e: ProtocolError) -> Self {
        ServerMessage::Error {
            code: e.code,
            message: e.message,
        }
    }
}

const KNOWN_TYPES: [&str; 10] = [
    "join",
    "resume",
    "heartbeat",
    "publish_offer",
    "subscribe_answer",
    "set_muted",
    "set_recording",
    "track_settings",
    "pin",
    "leave",
];

/// Parses one text frame into a message, or the typed error for it.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidJson, format!("not JSON: {e}")))?;
    let Some(kind) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidJson,
            "a message is a JSON object with a string field `type`",
        ));
    };
    if !KNOWN_TYPES.contains(&kind.as_str()) {
        return Err(ProtocolError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {:?}", truncate(&kind, 40)),
        ));
    }
    let message: ClientMessage = serde_json::from_value(value).map_err(|e| {
        ProtocolError::new(ErrorCode::InvalidJson, format!("bad `{kind}` message: {e}"))
    })?;
    match &message {
        ClientMessage::PublishOffer { sdp, .. } | ClientMessage::SubscribeAnswer { sdp }
            if sdp.len() > MAX_SDP_BYTES =>
        {
            Err(ProtocolError::new(
                ErrorCode::SdpTooLarge,
                format!("SDP is limited to {MAX_SDP_BYTES} bytes"),
            ))
        }
        _ => Ok(message),
    }
}

/// Whether `message` may come now: `join` or `resume` first (`not_joined` otherwise), and
/// neither again once joined (`already_joined`).
pub fn check_order(joined: bool, message: &ClientMessage) -> Result<(), ProtocolError> {
    let opens = matches!(
        message,
        ClientMessage::Join { .. } | ClientMessage::Resume { .. }
    );
    match (joined, opens) {
        (false, false) => Err(ProtocolError::new(
            ErrorCode::NotJoined,
            "send join (or resume) first",
        )),
        (true, true) => Err(ProtocolError::new(
            ErrorCode::AlreadyJoined,
            "already joined",
        )),
        _ => Ok(()),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_message(text).unwrap_err().code
    }

    #[test]
    fn quality_messages_parse_and_serialize() {
        assert_eq!(
            parse_client_message(r#"{"type":"track_settings","track_id":"p1-t","height":360}"#)
                .unwrap(),
            ClientMessage::TrackSettings {
                track_id: "p1-t".into(),
                height: 360
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"pin","track_id":null}"#).unwrap(),
            ClientMessage::Pin { track_id: None }
        );
        assert_eq!(
            code(r#"{"type":"track_settings","track_id":"t","height":-1}"#),
            ErrorCode::InvalidJson
        );
        let quality = ServerMessage::Quality {
            estimate_bps: 480_000,
            tracks: vec![TrackQualityView::from(sfu::TrackQuality {
                track_id: "p1-t".into(),
                rid: None,
                paused: Some(sfu::simulcast::PauseReason::Bandwidth),
            })],
        };
        assert_eq!(
            serde_json::to_string(&quality).unwrap(),
            r#"{"type":"quality","estimate_bps":480000,"tracks":[{"track_id":"p1-t","rid":null,"paused":true,"reason":"bandwidth"}]}"#
        );
    }

    #[test]
    fn known_messages_parse() {
        assert_eq!(
            parse_client_message(r#"{"type":"join","token":"t","room":"r"}"#).unwrap(),
            ClientMessage::Join {
                token: "t".into(),
                room: "r".into()
            }
        );
        let offer = parse_client_message(
            r#"{"type":"publish_offer","sdp":"v=0","tracks":[{"track_id":"a","source":"screen"}]}"#,
        )
        .unwrap();
        assert!(
            matches!(offer, ClientMessage::PublishOffer { tracks, .. } if tracks[0].source == TrackSource::Screen)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave {}
        );
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":42}"#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"join","token":5,"room":"r"}"#),
            ErrorCode::InvalidJson
        );
        assert_eq!(
            code(
                r#"{"type":"publish_offer","sdp":"v=0","tracks":[{"track_id":"a","source":"radio"}]}"#
            ),
            ErrorCode::InvalidJson
        );
        let big_sdp = format!(
            r#"{{"type":"subscribe_answer","sdp":"{}"}}"#,
            "a".repeat(MAX_SDP_BYTES + 1)
        );
        assert_eq!(code(&big_sdp), ErrorCode::SdpTooLarge);
        let huge = format!(
            r#"{{"type":"leave","x":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert_eq!(code(&huge), ErrorCode::MessageTooLarge);
    }

    #[test]
    fn resume_and_heartbeat_parse_and_bad_ones_get_typed_errors() {
        assert_eq!(
            parse_client_message(
                r#"{"type":"resume","token":"t","room":"r","participant_id":"p1f","resume_token":"ab"}"#
            )
            .unwrap(),
            ClientMessage::Resume {
                token: "t".into(),
                room: "r".into(),
                participant_id: ParticipantId(0x1f),
                resume_token: "ab".into(),
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"heartbeat"}"#).unwrap(),
            ClientMessage::Heartbeat {}
        );
        for bad in [
            r#"{"type":"resume","token":"t","room":"r","resume_token":"ab"}"#,
            r#"{"type":"resume","token":"t","room":"r","participant_id":"zz","resume_token":"ab"}"#,
            r#"{"type":"resume","token":"t","room":"r","participant_id":"p1","resume_token":7}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidJson, "{bad}");
        }
        let resume = parse_client_message(
            r#"{"type":"resume","token":"t","room":"r","participant_id":"p1","resume_token":"ab"}"#,
        )
        .unwrap();
        assert_eq!(check_order(false, &resume), Ok(()));
        assert_eq!(
            check_order(true, &resume).unwrap_err().code,
            ErrorCode::AlreadyJoined,
            "resume is a first message only"
        );
        assert_eq!(
            check_order(false, &ClientMessage::Heartbeat {})
                .unwrap_err()
                .code,
            ErrorCode::NotJoined
        );
        assert_eq!(check_order(true, &ClientMessage::Heartbeat {}), Ok(()));
        assert!(ErrorCode::ResumeFailed.is_fatal());
        assert_eq!(ErrorCode::ResumeFailed.as_str(), "resume_failed");
    }

    #[test]
    fn joined_and_resumed_carry_the_same_fields() {
        let welcome = Welcome {
            participant: ParticipantView {
                id: ParticipantId(1),
                identity: "a".into(),
                role: "clinic".into(),
            },
            room: "r".into(),
            participants: vec![],
            recording: None,
            ice_servers: vec![],
            resume_token: "00ff".into(),
        };
        let joined = serde_json::to_value(ServerMessage::Joined(welcome.clone())).unwrap();
        let mut resumed = serde_json::to_value(ServerMessage::Resumed(welcome)).unwrap();
        assert_eq!(resumed["type"], "resumed");
        resumed["type"] = "joined".into();
        assert_eq!(joined, resumed);
        assert_eq!(joined["resume_token"], "00ff");
        assert_eq!(
            serde_json::to_string(&ServerMessage::Heartbeat {}).unwrap(),
            r#"{"type":"heartbeat"}"#
        );
    }

    #[test]
    fn server_messages_serialize_as_documented() {
        let m = ServerMessage::Error {
            code: ErrorCode::WrongRoom,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"error","code":"wrong_room","message":"x"}"#
        );
        let left = ServerMessage::ParticipantLeft {
            participant_id: ParticipantId(0xab),
            reason: LeaveReason::RoomClosed,
        };
        assert_eq!(
            serde_json::to_string(&left).unwrap(),
            r#"{"type":"participant_left","participant_id":"pab","reason":"room_closed"}"#
        );
    }
}
