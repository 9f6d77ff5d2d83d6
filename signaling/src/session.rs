//! One participant's WebSocket session: the join handshake, then a loop that reads client
//! messages, writes queued server messages, pings, and notices silence.

use crate::AppState;
use crate::protocol::{
    ClientMessage, ErrorCode, LeaveReason, MAX_MESSAGE_BYTES, ParticipantView, ProtocolError,
    ServerMessage, Welcome, check_order, parse_client_message,
};
use crate::records::{self, Actor};
use crate::registry::{Admission, SESSION_QUEUE, SessionSignal};
use crate::resume::{Detached, Epoch};
use crate::token::{Claims, Role, TokenError};
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
/// WebSocket close code for a socket taken over by a newer one of the same participant.
const CLOSE_REPLACED: u16 = 4001;

struct Joined {
    id: ParticipantId,
    role: Role,
    room: String,
    identity: String,
    /// This socket's epoch (see [`crate::resume::Suspensions`]).
    epoch: Epoch,
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

/// How a session's socket ended.
enum End {
    /// The participant leaves now, for this reason.
    Leave(LeaveReason),
    /// The socket was lost (closed abnormally, or silent): suspend the participant.
    Lost,
    /// A newer socket resumed the participant.
    Replaced,
}

/// Whether a close frame from the client is a deliberate end (normal closure or going
/// away) rather than a page abandoning a socket it believes dead.
fn is_clean_close(frame: Option<&CloseFrame>) -> bool {
    frame.is_some_and(|f| f.code == 1000 || f.code == 1001)
}

/// Runs a session until the participant leaves or is disconnected, then cleans up.
pub async fn run(mut socket: WebSocket, state: Arc<AppState>, peer_ip: IpAddr) {
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let mut joined: Option<Joined> = None;
    let opened = Instant::now();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut window = (Instant::now(), 0u32);

    let end = loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(message)) = incoming else { break End::Lost };
                last_heard = Instant::now();
                let text = match message {
                    Message::Text(text) => text,
                    Message::Binary(bytes) if bytes.len() <= MAX_MESSAGE_BYTES => {
                        let e = ProtocolError::new(ErrorCode::InvalidJson, "binary frames are not accepted");
                        send_error(&mut socket, &state, e).await;
                        continue;
                    }
                    Message::Binary(_) => Utf8Bytes::from(String::new()),
                    Message::Close(frame) if is_clean_close(frame.as_ref()) => {
                        break End::Leave(LeaveReason::Disconnected)
                    }
                    Message::Close(_) => break End::Lost,
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
                    Ok(Next::Leave) => break End::Leave(LeaveReason::Left),
                    Err(e) if e.code.is_fatal() => {
                        close_with(&mut socket, &state, e).await;
                        break End::Leave(LeaveReason::Disconnected);
                    }
                    Err(e) => send_error(&mut socket, &state, e).await,
                }
            }
            Some(signal) = rx.recv() => match signal {
                SessionSignal::Send(message) => {
                    if send(&mut socket, &message).await.is_err() {
                        break End::Lost;
                    }
                }
                SessionSignal::Close(e, reason) => {
                    close_with(&mut socket, &state, e).await;
                    break End::Leave(reason);
                }
                SessionSignal::Replaced => {
                    let frame = CloseFrame { code: CLOSE_REPLACED, reason: Utf8Bytes::from_static("replaced") };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break End::Replaced;
                }
            },
            _ = ping.tick() => {
                if joined.is_none() && opened.elapsed() > JOIN_TIMEOUT {
                    let e = ProtocolError::new(ErrorCode::NotJoined, "no join message in time");
                    close_with(&mut socket, &state, e).await;
                    break End::Leave(LeaveReason::Disconnected);
                }
                if last_heard.elapsed() > SILENCE_LIMIT {
                    debug!("session silent");
                    break End::Lost;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break End::Lost;
                }
            }
        }
    };
    drop(socket);

    let Some(me) = joined else { return };
    match end {
        End::Leave(reason) => {
            if state.registry.depart(me.id, me.epoch, reason) {
                departed(&state, &me, reason).await;
            }
        }
        End::Replaced => {}
        End::Lost => match state.registry.detach(me.id, me.epoch, Instant::now()) {
            Detached::Remove => departed(&state, &me, LeaveReason::Disconnected).await,
            Detached::Stale => {}
            Detached::Suspended { until } => {
                state.metrics.suspensions.inc();
                info!(participant = %me.id, "participant suspended");
                suspended(&state, &me, &mut rx, until).await;
            }
        },
    }
}

/// Waits, without a socket, until the participant is resumed on another one, removed by
/// an administrator or a closed room, or its resume window ends (then it is removed).
/// Messages for it are dropped meanwhile: it gets the current state on resume.
async fn suspended(
    state: &AppState,
    me: &Joined,
    rx: &mut mpsc::Receiver<SessionSignal>,
    until: Instant,
) {
    let deadline = tokio::time::sleep_until(until.into());
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => {
                if state.registry.expire(me.id, me.epoch, Instant::now()) {
                    departed(state, me, LeaveReason::Disconnected).await;
                }
                return;
            }
            signal = rx.recv() => match signal {
                Some(SessionSignal::Send(_)) => {}
                Some(SessionSignal::Close(_, reason)) => {
                    if state.registry.depart(me.id, me.epoch, reason) {
                        departed(state, me, reason).await;
                    }
                    return;
                }
                Some(SessionSignal::Replaced) | None => return,
            },
        }
    }
}

/// What follows a participant's removal from the registry: its media, the audit trail, and
/// the recording of a room it leaves empty.
async fn departed(state: &AppState, me: &Joined, reason: LeaveReason) {
    info!(participant = %me.id, ?reason, "participant left");
    state.sfu.leave(me.id).await;
    records::audit(
        state,
        "leave",
        me.actor(),
        &me.room,
        Some(me.id.to_string()),
    );
    // The last one out ends the room's recording.
    if state.registry.is_empty(&me.room)
        && state.registry.recording(&me.room).is_some()
        && let Err(e) = records::stop(state, &me.room, Actor::room()).await
    {
        warn!("stopping the recording of an emptied room failed: {e}");
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
    check_order(joined.is_some(), &message)?;
    let Some(me) = joined.as_ref() else {
        match message {
            ClientMessage::Join { token, room } => {
                let (me, reply) = join(state, tx, peer_ip, &token, &room).await?;
                *joined = Some(me);
                send(socket, &reply).await.map_err(socket_closed)?;
            }
            ClientMessage::Resume {
                token,
                room,
                participant_id,
                resume_token,
            } => {
                let claims = verify(state, peer_ip, &token, &room)?;
                let (me, reply) = resume(state, tx, claims, &room, participant_id, &resume_token)?;
                *joined = Some(me);
                // `resumed` goes out before the ICE-restart subscribe offer the router makes.
                send(socket, &reply).await.map_err(socket_closed)?;
                media(state.sfu.resume(participant_id).await)?;
            }
            _ => unreachable!("check_order lets only join or resume open a session"),
        }
        return Ok(Next::Continue);
    };
    match message {
        ClientMessage::Join { .. } | ClientMessage::Resume { .. } => {
            unreachable!("check_order refuses join and resume once joined")
        }
        ClientMessage::Heartbeat {} => {
            send(socket, &ServerMessage::Heartbeat {})
                .await
                .map_err(socket_closed)?;
            Ok(Next::Continue)
        }
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
                .map_err(socket_closed)?;
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
        ClientMessage::TrackSettings { track_id, height } => {
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
    let claims = verify(state, peer_ip, token, room)?;
    let view = ParticipantView {
        id: ParticipantId::random(),
        identity: claims.sub.clone(),
        role: claims.role.to_string(),
    };
    let Admission {
        others,
        epoch,
        resume_token,
        ..
    } = state.registry.admit(view.clone(), room, tx.clone())?;
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
        epoch,
    };
    records::audit(state, "join", me.actor(), room, Some(view.id.to_string()));
    if state.registry.records_from_start(room)
        && let Err(e) = records::start(state, room, Actor::room()).await
    {
        warn!("a room recorded from the start could not start recording: {e}");
    }
    let welcome = welcome(state, view, room, others, resume_token.as_str());
    Ok((me, ServerMessage::Joined(welcome)))
}

/// The join token's claims, checked as for `join`: the address's join rate, signature,
/// expiry and room.
fn verify(
    state: &AppState,
    peer_ip: IpAddr,
    token: &str,
    room: &str,
) -> Result<Claims, ProtocolError> {
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
    Ok(claims)
}

/// Takes participant `id` over on this socket (see [`crate::registry::Registry::resume`]).
fn resume(
    state: &AppState,
    tx: &mpsc::Sender<SessionSignal>,
    claims: Claims,
    room: &str,
    id: ParticipantId,
    resume_token: &str,
) -> Result<(Joined, ServerMessage), ProtocolError> {
    let Admission {
        view,
        others,
        epoch,
        resume_token,
    } = state.registry.resume(
        id,
        room,
        (&claims.sub, &claims.role.to_string()),
        resume_token,
        tx.clone(),
        Instant::now(),
    )?;
    state.metrics.resumes.inc();
    info!(participant = %id, "participant resumed");
    let me = Joined {
        id,
        role: claims.role,
        room: room.to_owned(),
        identity: view.identity.clone(),
        epoch,
    };
    let welcome = welcome(state, view, room, others, resume_token.as_str());
    Ok((me, ServerMessage::Resumed(welcome)))
}

/// The contents of `joined` and `resumed`.
fn welcome(
    state: &AppState,
    participant: ParticipantView,
    room: &str,
    others: Vec<ParticipantView>,
    resume_token: &str,
) -> Welcome {
    Welcome {
        ice_servers: state
            .turn
            .iter()
            .map(|t| t.credentials(&participant.id.to_string(), SystemTime::now()))
            .collect(),
        participant,
        room: room.to_owned(),
        participants: others,
        recording: state.registry.recording(room),
        resume_token: resume_token.to_owned(),
    }
}

fn socket_closed(_: axum::Error) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, "socket closed")
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
