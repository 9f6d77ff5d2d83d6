//! Signaling for medrelay: the WebSocket protocol (`docs/signaling.md`), join tokens and
//! roles, the room registry, the administrative REST API with its OpenAPI description,
//! `/metrics` and `/healthz`.
//!
//! Signaling talks to the media loop only through [`sfu::shell::SfuHandle`] (join, publish
//! offer, subscribe answer, leave, chat, recording taps) and the router's events, which
//! [`dispatch`] routes to the participants' sessions; to recording and the audit trail only
//! through [`records::ConsultRecords`].

pub mod api;
mod limiter;
pub mod metrics;
pub mod protocol;
pub mod recordings;
pub mod records;
pub mod registry;
pub mod resume;
mod session;
pub mod token;
pub mod turn;

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use protocol::{ErrorCode, LeaveReason, ProtocolError, RemoteTrack, ServerMessage};
use registry::{Registry, SessionSignal};
use serde::{Deserialize, Serialize};
use sfu::RouterEvent;
use sfu::shell::SfuHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use utoipa::OpenApi;

pub use limiter::JoinLimiter;

/// Everything the HTTP and WebSocket handlers share.
pub struct AppState {
    /// Token signing keys.
    pub keys: token::TokenKeys,
    /// The REST API key.
    pub api_key: String,
    /// Rooms and participants.
    pub registry: Arc<Registry>,
    /// The media loop.
    pub sfu: SfuHandle,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Join rate limit per client address.
    pub join_limiter: JoinLimiter,
    /// Recording and the audit trail.
    pub records: Arc<dyn records::ConsultRecords>,
    /// Serializes starting and stopping recordings.
    recording_lock: tokio::sync::Mutex<()>,
    /// TURN servers given to every participant, if any.
    pub turn: Option<turn::TurnConfig>,
}

impl AppState {
    /// State for a server with these keys, media loop and records, whose participants may
    /// resume for `resume_window` after losing their socket (zero: never).
    pub fn new(
        keys: token::TokenKeys,
        api_key: String,
        sfu: SfuHandle,
        records: Arc<dyn records::ConsultRecords>,
        turn: Option<turn::TurnConfig>,
        resume_window: std::time::Duration,
    ) -> Arc<Self> {
        let registry = Arc::new(Registry::new(resume_window));
        Arc::new(Self {
            keys,
            api_key,
            metrics: metrics::Metrics::new(registry.clone(), sfu.clone()),
            registry,
            sfu,
            join_limiter: JoinLimiter::default(),
            records,
            recording_lock: tokio::sync::Mutex::new(()),
            turn,
        })
    }
}

/// The signaling routes: `/ws`, `/api/…`, `/openapi.json`, `/metrics`, `/healthz`.
/// `/openapi.json` serves [`api::ApiDoc`] merged with `more` (other components' REST
/// descriptions). Serve with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn routes(state: Arc<AppState>, more: utoipa::openapi::OpenApi) -> Router {
    let mut doc = api::ApiDoc::openapi();
    doc.merge(more);
    let doc = Arc::new(doc);
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(doc.as_ref().clone()) }),
        )
        .merge(api::routes(state.clone()))
        .with_state(state)
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> impl IntoResponse {
    // Frames up to 1 MiB are read so that anything over the protocol's 64 KiB limit gets a
    // typed `message_too_large` error rather than a bare protocol failure.
    ws.max_message_size(1 << 20)
        .max_frame_size(1 << 20)
        .on_upgrade(move |socket| session::run(socket, state, peer.ip()))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

#[derive(Deserialize)]
struct ChatIn {
    text: String,
}

#[derive(Serialize)]
struct ChatOut<'a> {
    from: sfu::ParticipantId,
    identity: &'a str,
    text: &'a str,
    ts: u64,
}

/// Routes the media router's events to sessions until the router stops.
pub async fn dispatch(state: Arc<AppState>, mut events: mpsc::UnboundedReceiver<RouterEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            RouterEvent::SubscribeOffer {
                participant,
                sdp,
                tracks,
            } => {
                let tracks = tracks
                    .into_iter()
                    .map(|track| {
                        let prefix = format!("{}-", track.participant_id);
                        let own_id = track
                            .track_id
                            .strip_prefix(&prefix)
                            .unwrap_or(&track.track_id);
                        RemoteTrack {
                            muted: state.registry.is_muted(track.participant_id, own_id),
                            track,
                        }
                    })
                    .collect();
                state.registry.send(
                    participant,
                    SessionSignal::Send(ServerMessage::SubscribeOffer { sdp, tracks }),
                );
            }
            RouterEvent::Chat { from, text } => {
                let (Ok(chat), Some(identity)) = (
                    serde_json::from_str::<ChatIn>(&text),
                    state.registry.identity(from),
                ) else {
                    continue;
                };
                let out = ChatOut {
                    from,
                    identity: &identity,
                    text: &chat.text,
                    ts: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis() as u64,
                };
                let payload = serde_json::to_string(&out).expect("chat serializes");
                state.sfu.broadcast_chat(from, payload).await;
            }
            RouterEvent::Quality {
                participant,
                estimate_bps,
                tracks,
            } => {
                state.registry.send(
                    participant,
                    SessionSignal::Send(ServerMessage::Quality {
                        estimate_bps,
                        tracks: tracks.into_iter().map(Into::into).collect(),
                    }),
                );
            }
            RouterEvent::LayersWanted {
                participant,
                track_id,
                rids,
            } => {
                state.registry.send(
                    participant,
                    SessionSignal::Send(ServerMessage::LayersWanted { track_id, rids }),
                );
            }
            // A suspended participant's connections fail while it is away; it is removed
            // only at the end of its resume window, if it has not come back by then.
            RouterEvent::TransportFailed { participant }
                if !state.registry.is_suspended(participant) =>
            {
                state.registry.send(
                    participant,
                    SessionSignal::Close(
                        ProtocolError::new(ErrorCode::Internal, "the media connection failed"),
                        LeaveReason::Disconnected,
                    ),
                );
            }
            RouterEvent::TransportFailed { .. } => {}
        }
    }
}
