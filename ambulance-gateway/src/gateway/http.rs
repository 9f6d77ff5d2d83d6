//! HTTP and WebSocket handlers of the gateway: `/telemetry/ingest` for agents,
//! `/telemetry/view` for viewers, and the REST endpoints. They only move bytes between
//! sockets and the [`Gateway`]'s state.

use crate::gateway::alarms::Limit;
use crate::gateway::stream::{Offer, Viewer, ViewerSink};
use crate::gateway::viewer::{Outgoing, StreamSummary, VIEWER_QUEUE, ViewerEvent, ViewerRequest};
use crate::gateway::{Gateway, now_ms, now_us};
use crate::wire::{self, AgentControl, GatewayControl, MAX_FRAME_BYTES, StreamId};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use recorder::audit::Action;
use serde::Serialize;
use signaling::token::{Claims, Role, Scope, TokenError};
use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// An agent silent this long (no frame, no ping) is disconnected.
const AGENT_IDLE: Duration = Duration::from_secs(10);
/// A viewer must authenticate within this time.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// A viewer whose socket accepts nothing for this long is closed.
const VIEWER_STALL: Duration = Duration::from_secs(10);
/// Most messages a viewer's writer sends per socket write.
const VIEWER_BATCH: usize = 256;
/// Largest text message from a viewer.
const MAX_VIEWER_TEXT: usize = 64 * 1024;
/// How long consult tokens made by the dashboard stay valid.
const CONSULT_TTL: Duration = Duration::from_secs(2 * 3600);

/// The gateway's routes (serve with the signaling routes under one server).
pub fn routes(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/telemetry/ingest", get(ingest))
        .route("/telemetry/view", get(view))
        .route("/telemetry/streams", get(list_streams))
        .route("/telemetry/streams/{id}/consult", post(open_consult))
        .with_state(gw.clone())
        .merge(crate::gateway::fhir::routes(gw.clone()))
        .merge(crate::gateway::edf_export::routes(gw))
}

/// A refused HTTP request: status and a typed JSON body.
#[derive(Debug)]
pub struct HttpError {
    pub(crate) status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
}

/// The JSON body of an error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: String,
    /// Explanation.
    pub message: String,
}

impl HttpError {
    /// 404 for a stream that does not exist or that the token may not see (the same answer
    /// for both, so tokens cannot probe for streams).
    pub(crate) fn unknown_stream(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_stream",
            format!("no stream {id}"),
        )
    }

    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                code: self.code.into(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

/// Why a message from an agent or a viewer was refused; sent as `{"type":"error","code",…}`
/// with [`Refusal::code`] (`docs/telemetry.md` lists the codes).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not a frame: undecodable bytes.
    #[error(transparent)]
    BadFrame(wire::WireError),
    /// Over the size limit.
    #[error("messages are at most {0} bytes")]
    TooLarge(usize),
    /// A frame for another stream than the token's.
    #[error("the token grants stream {granted}, not {sent}")]
    StreamNotGranted {
        /// The token's stream.
        granted: StreamId,
        /// The frame's stream.
        sent: StreamId,
    },
    /// A sequence number too far ahead.
    #[error(transparent)]
    SeqOutOfWindow(crate::gateway::ingest::IngestError),
    /// Not a message of the protocol.
    #[error("{0}")]
    BadMessage(String),
    /// The token does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// No such stream since the gateway started.
    #[error("no stream {0}")]
    UnknownStream(StreamId),
    /// No such current alarm.
    #[error(transparent)]
    UnknownAlarm(crate::gateway::alarms::AlarmError),
    /// Limits refused.
    #[error(transparent)]
    BadLimits(crate::gateway::alarms::AlarmError),
}

impl Refusal {
    /// The code on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadFrame(_) => "bad_frame",
            Refusal::TooLarge(_) => "too_large",
            Refusal::StreamNotGranted { .. } => "stream_not_granted",
            Refusal::SeqOutOfWindow(_) => "seq_out_of_window",
            Refusal::BadMessage(_) => "bad_message",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::UnknownStream(_) => "unknown_stream",
            Refusal::UnknownAlarm(_) => "unknown_alarm",
            Refusal::BadLimits(_) => "bad_limits",
        }
    }
}

fn verify(gw: &Gateway, token: &str) -> Result<Claims, HttpError> {
    gw.keys()
        .verify(token, SystemTime::now())
        .map_err(|e| match e {
            TokenError::Invalid => {
                HttpError::new(StatusCode::UNAUTHORIZED, "bad_token", e.to_string())
            }
            TokenError::Expired => {
                HttpError::new(StatusCode::UNAUTHORIZED, "token_expired", e.to_string())
            }
        })
}

pub(crate) fn bearer(gw: &Gateway, headers: &HeaderMap) -> Result<Claims, HttpError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send the token as Authorization: Bearer <token>",
            )
        })?;
    verify(gw, token.trim())
}

/// Which streams a viewer's token lets it see.
#[derive(Debug, Clone)]
pub(crate) enum Visible {
    All,
    One(StreamId),
    None,
}

impl Visible {
    pub(crate) fn of(claims: &Claims) -> Result<Self, HttpError> {
        let forbidden = || {
            HttpError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "viewing telemetry needs an er or specialist token (or a crew consult token)",
            )
        };
        match claims.role {
            Role::Er | Role::Specialist => {}
            // The crew sees its own ambulance beside the consult video.
            Role::Crew if !claims.room.is_empty() && claims.ambulance.is_some() => {}
            _ => return Err(forbidden()),
        }
        Ok(match (&claims.ambulance, claims.room.is_empty()) {
            (Some(a), _) => a.parse().map(Visible::One).unwrap_or(Visible::None),
            (None, true) => Visible::All,
            (None, false) => Visible::None,
        })
    }

    pub(crate) fn allows(&self, id: &StreamId) -> bool {
        match self {
            Visible::All => true,
            Visible::One(one) => one == id,
            Visible::None => false,
        }
    }

    /// The entries of `list` (sorted by id) this token may see.
    fn filter(&self, list: &[StreamSummary]) -> Vec<StreamSummary> {
        match self {
            Visible::All => list.to_vec(),
            Visible::One(id) => list
                .binary_search_by(|s| s.id.cmp(id))
                .map(|i| vec![list[i].clone()])
                .unwrap_or_default(),
            Visible::None => Vec::new(),
        }
    }
}

// ----- agents ---------------------------------------------------------------------------------

async fn ingest(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    State(gw): State<Arc<Gateway>>,
) -> Result<Response, HttpError> {
    let claims = bearer(&gw, &headers)?;
    let forbidden = |m: &str| HttpError::new(StatusCode::FORBIDDEN, "forbidden", m);
    if claims.role != Role::Crew || !claims.room.is_empty() {
        return Err(forbidden(
            "sending telemetry needs an ambulance's crew device token",
        ));
    }
    let stream: StreamId = claims
        .ambulance
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|_| forbidden("the token names no valid ambulance"))?;
    // Messages up to 1 MiB are read so that oversized frames get a typed `too_large` error.
    // Each read zero-fills the free part of the read buffer first, and a frame is about
    // 600 bytes: 4 KiB holds several.
    Ok(ws
        .read_buffer_size(4 * 1024)
        .max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .on_upgrade(move |socket| agent_session(gw, stream, socket)))
}

async fn agent_session(gw: Arc<Gateway>, stream: StreamId, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let slot = match gw.load(&stream).await {
        Ok(slot) => slot,
        Err(e) => {
            warn!(%stream, "cannot open the stream's journal: {e}");
            let _ = sink
                .send(control(&error_msg(
                    "internal",
                    "the gateway cannot store this stream",
                )))
                .await;
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<GatewayControl>();
    let durable = slot.state.lock().expect("stream").durable_through();
    let _ = tx.send(GatewayControl::Welcome {
        stream: stream.clone(),
        durable_through: durable,
    });
    let conn = gw.attach_agent(&slot, tx.clone());
    info!(%stream, conn, durable, "agent connected");

    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let fatal = matches!(msg, GatewayControl::Error { .. });
            if sink.send(control(&msg)).await.is_err() {
                return;
            }
            if fatal {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: 1008,
                        reason: "error".into(),
                    })))
                    .await;
                return;
            }
        }
        let _ = sink.close().await;
    });

    loop {
        let msg = match tokio::time::timeout(AGENT_IDLE, source.next()).await {
            Ok(Some(Ok(msg))) => msg,
            Ok(_) => break,
            Err(_) => {
                info!(%stream, conn, "agent silent for {AGENT_IDLE:?}; disconnecting");
                break;
            }
        };
        let refusal = match msg {
            Message::Binary(bytes) => take_frame(&gw, &slot, &stream, bytes),
            Message::Text(text) => match serde_json::from_str::<AgentControl>(&text) {
                Ok(AgentControl::Time { t0 }) => {
                    let _ = tx.send(GatewayControl::Time { t0, t1: now_us() });
                    None
                }
                Err(e) => Some(Refusal::BadMessage(format!("unknown control message: {e}"))),
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => None,
        };
        if let Some(refusal) = refusal {
            let code = refusal.code();
            gw.metrics.rejected.with_label_values(&[code]).inc();
            warn!(%stream, conn, code, "refusing agent input: {refusal}");
            let _ = tx.send(error_msg(code, &refusal.to_string()));
            break;
        }
    }
    gw.detach_agent(&slot, conn);
    drop(tx);
    // The writer ends when the slot's sender is replaced or dropped; give it a moment to
    // deliver a final error.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    info!(%stream, conn, "agent disconnected");
}

/// Takes one binary message from an agent; returns why it was refused, if it was.
fn take_frame(
    gw: &Gateway,
    slot: &crate::gateway::StreamSlot,
    stream: &StreamId,
    bytes: Bytes,
) -> Option<Refusal> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Some(Refusal::TooLarge(MAX_FRAME_BYTES));
    }
    let frame = match wire::decode(&bytes) {
        Ok(f) => f,
        Err(e) => return Some(Refusal::BadFrame(e)),
    };
    if &frame.header.stream != stream {
        return Some(Refusal::StreamNotGranted {
            granted: stream.clone(),
            sent: frame.header.stream,
        });
    }
    let outcome = slot
        .state
        .lock()
        .expect("stream")
        .on_frame(&frame, bytes, now_ms());
    match outcome {
        Ok(outcome) => {
            if outcome.fresh {
                gw.metrics.frames.inc();
            } else {
                gw.metrics.duplicates.inc();
            }
            gw.persist(stream, outcome.records);
            None
        }
        Err(e) => Some(Refusal::SeqOutOfWindow(e)),
    }
}

fn error_msg(code: &str, message: &str) -> GatewayControl {
    GatewayControl::Error {
        code: code.into(),
        message: message.into(),
    }
}

fn control(msg: &GatewayControl) -> Message {
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(msg).expect("control messages serialize"),
    ))
}

// ----- viewers --------------------------------------------------------------------------------

async fn view(ws: WebSocketUpgrade, State(gw): State<Arc<Gateway>>) -> Response {
    // Viewers send little: a small read buffer (the default 128 KiB is zeroed on each read).
    ws.read_buffer_size(4 * 1024)
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| viewer_session(gw, socket))
}

fn text(event: &ViewerEvent<'_>) -> Message {
    Message::Text(Utf8Bytes::from(&*event.to_text()))
}

fn viewer_error(code: &str, message: &str) -> Message {
    text(&ViewerEvent::Error { code, message })
}

async fn viewer_session(gw: Arc<Gateway>, mut socket: WebSocket) {
    let claims = match tokio::time::timeout(AUTH_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<ViewerRequest>(&t) {
            Ok(ViewerRequest::Auth { token }) => verify(&gw, &token),
            _ => Err(HttpError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the first message must be auth",
            )),
        },
        Ok(_) => return,
        Err(_) => Err(HttpError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no auth within 10 s",
        )),
    };
    let (claims, visible) = match claims.and_then(|c| Visible::of(&c).map(|v| (c, v))) {
        Ok(ok) => ok,
        Err(e) => {
            let code = if e.status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "unauthorized"
            };
            let _ = socket.send(viewer_error(code, &e.message)).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1008,
                    reason: code.into(),
                })))
                .await;
            return;
        }
    };
    let can_ack = claims.role == Role::Er;
    let welcome = ViewerEvent::Welcome {
        identity: &claims.sub,
        role: claims.role.as_str(),
        can_acknowledge: can_ack,
    };
    if socket.send(text(&welcome)).await.is_err() {
        return;
    }
    gw.metrics.viewers.inc();
    let viewer = Viewer::new(VIEWER_QUEUE);
    let (sink, mut source) = socket.split();
    let sink: SharedSink = Arc::new(tokio::sync::Mutex::new(sink));
    viewer.attach(Box::new(DirectSink {
        sink: sink.clone(),
        fanout: gw.metrics.fanout.clone(),
    }));
    let mut writer = tokio::spawn(viewer_writer(
        gw.clone(),
        viewer.clone(),
        visible.clone(),
        sink,
    ));
    let mut subscribed: HashSet<StreamId> = HashSet::new();
    loop {
        // The writer ends when the socket fails or stalls: then the session ends too, even
        // if the viewer never sends anything again.
        let msg = tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(msg)) => msg,
                _ => break,
            },
            _ = &mut writer => break,
        };
        let reply = match msg {
            Message::Text(t) if t.len() > MAX_VIEWER_TEXT => {
                Some(Refusal::TooLarge(MAX_VIEWER_TEXT))
            }
            Message::Text(t) => match serde_json::from_str::<ViewerRequest>(&t) {
                Ok(req) => {
                    handle_request(&gw, &viewer, &claims, &visible, &mut subscribed, req).err()
                }
                Err(e) => Some(Refusal::BadMessage(e.to_string())),
            },
            Message::Binary(_) => Some(Refusal::BadMessage("viewers send JSON text only".into())),
            Message::Close(_) => break,
            _ => None,
        };
        if let Some(refusal) = reply {
            let code = refusal.code();
            gw.metrics.rejected.with_label_values(&[code]).inc();
            let event = ViewerEvent::Error {
                code,
                message: &refusal.to_string(),
            };
            viewer.push(None, Outgoing::Text(event.to_text()));
        }
    }
    for id in &subscribed {
        if let Some(slot) = gw.slot(id) {
            slot.state.lock().expect("stream").unsubscribe(viewer.id);
        }
    }
    writer.abort();
    gw.metrics.viewers.dec();
    debug!(viewer = viewer.id, "viewer left");
}

fn handle_request(
    gw: &Gateway,
    viewer: &Arc<Viewer>,
    claims: &Claims,
    visible: &Visible,
    subscribed: &mut HashSet<StreamId>,
    req: ViewerRequest,
) -> Result<(), Refusal> {
    let slot_for = |id: &StreamId| {
        if !visible.allows(id) {
            return Err(Refusal::Forbidden(format!(
                "your token does not grant stream {id}"
            )));
        }
        gw.slot(id)
            .ok_or_else(|| Refusal::UnknownStream(id.clone()))
    };
    let er_only = || {
        (claims.role == Role::Er)
            .then_some(())
            .ok_or_else(|| Refusal::Forbidden("only er staff may do this".into()))
    };
    match req {
        ViewerRequest::Auth { .. } => Err(Refusal::BadMessage("already authenticated".into())),
        ViewerRequest::Subscribe { stream } => {
            let slot = slot_for(&stream)?;
            slot.state
                .lock()
                .expect("stream")
                .subscribe(viewer.clone(), now_ms());
            gw.audit_later(claims, Action::View, &stream, Some("live view".into()));
            subscribed.insert(stream);
            Ok(())
        }
        ViewerRequest::Unsubscribe { stream } => {
            if let Some(slot) = gw.slot(&stream) {
                slot.state.lock().expect("stream").unsubscribe(viewer.id);
            }
            subscribed.remove(&stream);
            Ok(())
        }
        ViewerRequest::AckAlarm { stream, alarm } => {
            er_only()?;
            let slot = slot_for(&stream)?;
            let records = slot
                .state
                .lock()
                .expect("stream")
                .acknowledge(alarm, &claims.sub, now_ms())
                .map_err(Refusal::UnknownAlarm)?;
            info!(%stream, alarm, "alarm acknowledged");
            gw.audit_later(
                claims,
                Action::AlarmAck,
                &stream,
                Some(format!("alarm {alarm}")),
            );
            gw.persist(&stream, records);
            Ok(())
        }
        ViewerRequest::SetLimits {
            stream,
            vital,
            low,
            high,
        } => {
            er_only()?;
            let slot = slot_for(&stream)?;
            let records = slot
                .state
                .lock()
                .expect("stream")
                .set_limit(vital, Limit { low, high }, &claims.sub, now_ms())
                .map_err(Refusal::BadLimits)?;
            info!(%stream, vital = vital.name(), "alarm limits changed");
            let detail = format!("{} {low:?}..{high:?}", vital.name());
            gw.audit_later(claims, Action::AlarmLimits, &stream, Some(detail));
            gw.persist(&stream, records);
            Ok(())
        }
    }
}

/// The sending half of a viewer's socket, shared by its writer task and [`DirectSink`].
type SharedSink = Arc<tokio::sync::Mutex<SplitSink<WebSocket, Message>>>;

/// Live data straight to a viewer's socket from the task that produced it, while the
/// viewer's writer task is not using the socket: no wake-up of the writer per message.
struct DirectSink {
    sink: SharedSink,
    fanout: prometheus::Histogram,
}

impl ViewerSink for DirectSink {
    fn offer(&self, msg: &Outgoing, at: Instant) -> Offer {
        // The writer holds the socket while it sends what is queued (or waits on a slow
        // socket): then the message is queued behind.
        let Ok(mut sink) = self.sink.try_lock() else {
            return Offer::Refused;
        };
        // Never waits: a socket that would block is left to the writer, which has a waker
        // and the stall limit.
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(sink.poll_ready_unpin(&mut cx), Poll::Ready(Ok(()))) {
            return Offer::Refused;
        }
        if sink.start_send_unpin(message(msg)).is_err() {
            // The socket is broken: the writer finds out and ends the session.
            return Offer::Unflushed;
        }
        match sink.poll_flush_unpin(&mut cx) {
            Poll::Ready(Ok(())) => {
                self.fanout.observe(at.elapsed().as_secs_f64());
                Offer::Sent
            }
            _ => Offer::Unflushed,
        }
    }
}

fn message(msg: &Outgoing) -> Message {
    match msg {
        Outgoing::Text(t) => Message::Text(Utf8Bytes::from(&**t)),
        Outgoing::Binary(b) => Message::Binary(b.clone()),
    }
}

/// Sends the viewer's queue to its socket, and the streams list when it changes. Also
/// finishes what [`DirectSink`] could not send at once.
async fn viewer_writer(gw: Arc<Gateway>, viewer: Arc<Viewer>, visible: Visible, sink: SharedSink) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_list: Option<Vec<StreamSummary>> = None;
    let mut reported_drops = 0;
    let mut batch = Vec::with_capacity(VIEWER_BATCH);
    loop {
        let full = {
            // Held while draining and sending, so that live data cannot overtake the queue.
            let mut sink = sink.lock().await;
            viewer.drain_into(&mut batch, VIEWER_BATCH);
            // Everything queued goes out with one flush (one write to the socket), under one
            // stall limit for the whole batch. An empty batch still flushes what a direct
            // send left behind.
            let sent = {
                let mut send_all = std::pin::pin!(async {
                    for (msg, _) in &batch {
                        sink.feed(message(msg)).await?;
                    }
                    sink.flush().await
                });
                // Usually the socket takes the batch at once: only a batch it does not take
                // right away gets a stall timer (setting one up per batch costs more than
                // the send itself).
                match std::future::poll_fn(|cx| Poll::Ready(send_all.as_mut().poll(cx))).await {
                    Poll::Ready(result) => Ok(result),
                    Poll::Pending => tokio::time::timeout(VIEWER_STALL, send_all).await,
                }
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    info!(
                        viewer = viewer.id,
                        "viewer stalled for {VIEWER_STALL:?}; closing"
                    );
                    return;
                }
            }
            let full = batch.len() == VIEWER_BATCH;
            for (_, queued) in batch.drain(..) {
                if let Some(queued) = queued {
                    gw.metrics.fanout.observe(queued.elapsed().as_secs_f64());
                }
            }
            full
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = viewer.wake.notified() => {}
            _ = tick.tick() => {
                let list = visible.filter(&gw.summaries());
                if last_list.as_ref() != Some(&list) {
                    viewer.push(None, Outgoing::Text(ViewerEvent::Streams { streams: &list }.to_text()));
                    last_list = Some(list);
                }
                let dropped = viewer.dropped_total();
                gw.metrics.viewer_dropped.inc_by(dropped - reported_drops);
                reported_drops = dropped;
            }
        }
    }
}

// ----- REST -----------------------------------------------------------------------------------

/// Active streams the caller's token lets it see.
#[utoipa::path(get, path = "/telemetry/streams",
    responses((status = 200, body = [StreamSummary]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_streams(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Vec<StreamSummary>>, HttpError> {
    let claims = bearer(&gw, &headers)?;
    let visible = Visible::of(&claims)?;
    Ok(Json(visible.filter(&gw.summaries())))
}

/// Links to a consult room opened with an ambulance's crew.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConsultLinks {
    /// The room's name.
    pub room: String,
    /// Consult page for the caller.
    pub er_url: String,
    /// Consult page for a specialist.
    pub specialist_url: String,
    /// Consult page for the crew's tablet (also sent to the agent).
    pub crew_url: String,
}

/// Opens a consult room with the crew of ambulance `id`; its links carry tokens that also
/// grant viewing the ambulance's stream.
#[utoipa::path(post, path = "/telemetry/streams/{id}/consult",
    params(("id" = String, Path, description = "The ambulance stream")),
    responses((status = 201, body = ConsultLinks), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn open_consult(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<ConsultLinks>), HttpError> {
    let claims = bearer(&gw, &headers)?;
    if claims.role != Role::Er {
        return Err(HttpError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only er staff open consults",
        ));
    }
    let not_found = || HttpError::unknown_stream(&id);
    let stream: StreamId = id.parse().map_err(|_| not_found())?;
    let visible = Visible::of(&claims)?;
    let slot = visible
        .allows(&stream)
        .then(|| gw.slot(&stream))
        .flatten()
        .ok_or_else(not_found)?;
    let room = format!("amb-{stream}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let scope = Scope {
        room: Some(room.clone()),
        ambulance: Some(stream.to_string()),
    };
    let now = SystemTime::now();
    let url = |identity: &str, role: Role| {
        let token = gw.keys().issue(&scope, identity, role, CONSULT_TTL, now);
        format!("/consult/#room={room}&token={token}&ambulance={stream}")
    };
    let links = ConsultLinks {
        er_url: url(&claims.sub, Role::Er),
        specialist_url: url("Specialist", Role::Specialist),
        crew_url: url(&format!("{stream} crew"), Role::Crew),
        room: room.clone(),
    };
    let told = slot.send_to_agent(GatewayControl::Consult {
        room: room.clone(),
        crew_url: links.crew_url.clone(),
    });
    info!(%stream, room, agent_told = told, "consult opened");
    Ok((StatusCode::CREATED, Json(links)))
}

/// The OpenAPI description of the gateway's REST endpoints.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list_streams, open_consult, crate::gateway::edf_export::record_edf),
    components(schemas(StreamSummary, ConsultLinks, ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct TelemetryApi;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
    }
}
