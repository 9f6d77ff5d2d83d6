//! One participant's WebSocket session: the join handshake, then a loop that reads client
//! messages, writes queued server messages, pings, and notices silence.

use crate::AppState;
use crate::protocol::{
    ClientMessage, ErrorCode, LeaveReason, MAX_MESSAGE_BYTES, ParticipantView, ProtocolError,
    ServerMessage, parse_client_message,
};
use crate::records::{self, Actor};
use crate::registry::{SESSION_QUEUE, SessionSignal};
use crate::token::{Role, TokenError};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use sfu::{ParticipantId, ParticipantInfo, SfuError};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// How long a new socket may take to send `join`.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of server pings.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Silence after which a participant is considered gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(3);
/// Messages a client may send per second before it is cut off.
pub const MAX_MESSAGES_PER_SECOND: u32 = 50;

/// How long a closing session waits for the client's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// WebSocket close code for "message too big" (RFC 6455).
const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code for "policy violation" (RFC 6455).
const CLOSE_POLICY: u16 = 1008;

struct Joined {
    id: ParticipantId,
    role: Role,
    room: String,
    identity: String,
}

impl Joined {
    fn actor(&self) -> Actor {
        Actor {
            identity: self.identity.clone(),
            role: self.role.to_string(),
        }
    }
}

enum Next {
    Continue,
    Leave,
}

/// Runs a session until the participant leaves or is disconnected, then cleans up.
pub async fn run(mut socket: WebSocket, state: Arc<AppState>, peer_ip: IpAddr) {
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let mut joined: Option<Joined> = None;
    let opened = Instant::now();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut window = (Instant::now(), 0u32);

    let reason = loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { break LeaveReason::Disconnected };
                last_heard = Instant::now();
                let text = match message {
                    Message::Text(text) => text,
                    Message::Binary(bytes) if bytes.len() <= MAX_MESSAGE_BYTES => {
                        let e = ProtocolError::new(ErrorCode::InvalidJson, "binary frames are not accepted");
                        send_error(&mut socket, &state, e).await;
                        continue;
                    }
                    Message::Binary(_) => Utf8Bytes::from(String::new()),
                    Message::Close(_) => break LeaveReason::Disconnected,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let oversized = text.is_empty() || text.len() > MAX_MESSAGE_BYTES;
                if window.0.elapsed() >= Duration::from_secs(1) {
                    window = (Instant::now(), 0);
                }
                window.1 += 1;
                let result = if oversized {
                    Err(ProtocolError::new(
                        ErrorCode::MessageTooLarge,
                        format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
                    ))
                } else if window.1 > MAX_MESSAGES_PER_SECOND {
                    Err(ProtocolError::new(ErrorCode::RateLimited, "too many messages per second"))
                } else {
                    state.metrics.ws_messages.inc();
                    handle(&state, &mut joined, &tx, peer_ip, &mut socket, &text).await
                };
                match result {
                    Ok(Next::Continue) => {}
                    Ok(Next::Leave) => break LeaveReason::Left,
                    Err(e) if e.code.is_fatal() => {
                        close_with(&mut socket, &state, e).await;
                        break LeaveReason::Disconnected;
                    }
                    Err(e) => send_error(&mut socket, &state, e).await,
                }
            }
            Some(signal) = rx.recv() => match signal {
                SessionSignal::Send(message) => {
                    if send(&mut socket, &message).await.is_err() {
                        break LeaveReason::Disconnected;
                    }
                }
                SessionSignal::Close(e, reason) => {
                    close_with(&mut socket, &state, e).await;
                    break reason;
                }
            },
            _ = ping.tick() => {
                if joined.is_none() && opened.elapsed() > JOIN_TIMEOUT {
                    let e = ProtocolError::new(ErrorCode::NotJoined, "no join message in time");
                    close_with(&mut socket, &state, e).await;
                    break LeaveReason::Disconnected;
                }
                if last_heard.elapsed() > SILENCE_LIMIT {
                    debug!("session silent; disconnecting");
                    break LeaveReason::Disconnected;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break LeaveReason::Disconnected;
                }
            }
        }
    };

    if let Some(joined) = joined {
        info!(participant = %joined.id, ?reason, "participant left");
        state.registry.remove(joined.id, reason);
        state.sfu.leave(joined.id).await;
        records::audit(
            &state,
            "leave",
            joined.actor(),
            &joined.room,
            Some(joined.id.to_string()),
        );
        // The last one out ends the room's recording.
        if state.registry.is_empty(&joined.room)
            && state.registry.recording(&joined.room).is_some()
            && let Err(e) = records::stop(&state, &joined.room, Actor::room()).await
        {
            warn!("stopping the recording of an emptied room failed: {e}");
        }
    }
}

async fn handle(
    state: &AppState,
    joined: &mut Option<Joined>,
    tx: &mpsc::Sender<SessionSignal>,
    peer_ip: IpAddr,
    socket: &mut WebSocket,
    text: &str,
) -> Result<Next, ProtocolError> {
    let message = parse_client_message(text)?;
    let Some(me) = joined.as_ref() else {
        let ClientMessage::Join { token, room } = message else {
            return Err(ProtocolError::new(ErrorCode::NotJoined, "send join first"));
        };
        let (me, reply) = join(state, tx, peer_ip, &token, &room).await?;
        *joined = Some(me);
        send(socket, &reply)
            .await
            .map_err(|_| ProtocolError::new(ErrorCode::Internal, "socket closed"))?;
        return Ok(Next::Continue);
    };
    match message {
        ClientMessage::Join { .. } => Err(ProtocolError::new(
            ErrorCode::AlreadyJoined,
            "already joined",
        )),
        ClientMessage::PublishOffer { sdp, tracks } => {
            if !me.role.can_publish() {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!("the {} role may not publish", me.role),
                ));
            }
            let sources = tracks.into_iter().map(|t| (t.track_id, t.source)).collect();
            let answer = media(state.sfu.publish_offer(me.id, sdp, sources).await)?;
            records::audit(
                state,
                "publish",
                me.actor(),
                &me.room,
                Some(me.id.to_string()),
            );
            send(socket, &ServerMessage::PublishAnswer { sdp: answer.sdp })
                .await
                .map_err(|_| ProtocolError::new(ErrorCode::Internal, "socket closed"))?;
            Ok(Next::Continue)
        }
        ClientMessage::SubscribeAnswer { sdp } => {
            media(state.sfu.subscribe_answer(me.id, sdp).await)?;
            Ok(Next::Continue)
        }
        ClientMessage::SetMuted { track_id, muted } => {
            state.registry.set_muted(me.id, &track_id, muted);
            Ok(Next::Continue)
        }
        ClientMessage::SetRecording { on } => {
            if me.role != Role::Specialist {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    "only a specialist may start or stop recording",
                ));
            }
            let result = if on {
                records::start(state, &me.room, me.actor())
                    .await
                    .map(|_| ())
            } else {
                records::stop(state, &me.room, me.actor()).await.map(|_| ())
            };
            result
                .map_err(|e| ProtocolError::new(ErrorCode::RecordingUnavailable, e.to_string()))?;
            Ok(Next::Continue)
        }
        ClientMessage::TrackSettings {
            track_id,
            width: _,
            height,
        } => {
            media(state.sfu.set_shown_height(me.id, track_id, height).await)?;
            Ok(Next::Continue)
        }
        ClientMessage::Pin { track_id } => {
            media(state.sfu.set_pinned(me.id, track_id).await)?;
            Ok(Next::Continue)
        }
        ClientMessage::Leave {} => Ok(Next::Leave),
    }
}

async fn join(
    state: &AppState,
    tx: &mpsc::Sender<SessionSignal>,
    peer_ip: IpAddr,
    token: &str,
    room: &str,
) -> Result<(Joined, ServerMessage), ProtocolError> {
    if !state.join_limiter.allow(peer_ip, Instant::now()) {
        return Err(ProtocolError::new(
            ErrorCode::RateLimited,
            "too many joins from this address",
        ));
    }
    let claims = state
        .keys
        .verify(token, SystemTime::now())
        .map_err(|e| match e {
            TokenError::Invalid => ProtocolError::new(ErrorCode::BadToken, e.to_string()),
            TokenError::Expired => ProtocolError::new(ErrorCode::TokenExpired, e.to_string()),
        })?;
    if claims.room.is_empty() || claims.room != room {
        return Err(ProtocolError::new(
            ErrorCode::WrongRoom,
            "the token is for another room",
        ));
    }
    let view = ParticipantView {
        id: ParticipantId::random(),
        identity: claims.sub.clone(),
        role: claims.role.to_string(),
    };
    let others = state.registry.admit(view.clone(), room, tx.clone())?;
    let info = ParticipantInfo {
        id: view.id,
        room: room.to_owned(),
        identity: claims.sub,
        role: claims.role.to_string(),
        can_publish: claims.role.can_publish(),
    };
    if let Err(e) = media(state.sfu.join(info).await) {
        state.registry.remove(view.id, LeaveReason::Disconnected);
        return Err(e);
    }
    state.metrics.joins.inc();
    info!(participant = %view.id, role = %claims.role, "participant joined");
    let me = Joined {
        id: view.id,
        role: claims.role,
        room: room.to_owned(),
        identity: view.identity.clone(),
    };
    records::audit(state, "join", me.actor(), room, Some(view.id.to_string()));
    if state.registry.records_from_start(room)
        && let Err(e) = records::start(state, room, Actor::room()).await
    {
        warn!("a room recorded from the start could not start recording: {e}");
    }
    let recording = state.registry.recording(room);
    let view_id = view.id;
    Ok((
        me,
        ServerMessage::Joined {
            participant: view,
            room: room.to_owned(),
            participants: others,
            recording,
            ice_servers: state
                .turn
                .iter()
                .map(|t| t.credentials(&view_id.to_string(), std::time::SystemTime::now()))
                .collect(),
        },
    ))
}

/// Maps the media loop's answer to a protocol error.
fn media<T>(
    result: Result<Result<T, SfuError>, sfu::shell::MediaLoopGone>,
) -> Result<T, ProtocolError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(SfuError::InvalidSdp(why))) => Err(ProtocolError::new(ErrorCode::InvalidSdp, why)),
        Ok(Err(SfuError::NoOfferOutstanding)) => Err(ProtocolError::new(
            ErrorCode::InvalidSdp,
            "no subscribe offer is waiting for an answer",
        )),
        Ok(Err(SfuError::PublishForbidden)) => {
            Err(ProtocolError::new(ErrorCode::Forbidden, "may not publish"))
        }
        Ok(Err(e @ SfuError::UnknownTrack(_))) => {
            Err(ProtocolError::new(ErrorCode::UnknownTrack, e.to_string()))
        }
        Ok(Err(e)) => Err(ProtocolError::new(ErrorCode::Internal, e.to_string())),
        Err(e) => Err(ProtocolError::new(ErrorCode::Internal, e.to_string())),
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("server messages serialize");
    socket.send(Message::Text(text.into())).await
}

async fn send_error(socket: &mut WebSocket, state: &AppState, e: ProtocolError) {
    debug!(code = e.code.as_str(), "protocol error");
    state
        .metrics
        .ws_errors
        .with_label_values(&[e.code.as_str()])
        .inc();
    let _ = send(socket, &e.into()).await;
}

async fn close_with(socket: &mut WebSocket, state: &AppState, e: ProtocolError) {
    let code = if e.code == ErrorCode::MessageTooLarge {
        CLOSE_TOO_BIG
    } else {
        CLOSE_POLICY
    };
    let reason = Utf8Bytes::from(e.code.as_str());
    send_error(socket, state, e).await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame { code, reason })))
        .await;
    // Read until the client's close reply (bounded): dropping a socket with unread input
    // makes the kernel reset the connection, which can destroy the error and close frame
    // still on their way to the client.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
