//! The recordings REST API: list recordings, read one's metadata, download a track (the
//! plain WebM/Matroska file, decrypted on the fly, with HTTP range requests), and the
//! administrator's legal hold and expiry. Every access is audited, refusals included.
//!
//! Who may see what: a room token (`Authorization: Bearer`) of a role that takes part in care
//! (specialist, clinic, er, crew) sees the recordings of its own room only; observers and
//! tokens of other rooms get 403. The REST API key (`X-Api-Key`) sees everything and holds the
//! administrative calls.

use crate::token::{Claims, Role, TokenKeys};
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use recorder::audit::Action;
use recorder::consult::{AuditRecord, Recorder, RecorderConfig};
use recorder::index::{Index, ListFilter, Recording, RecordingDetail, Retention};
use recorder::sealed::SealedReader;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::warn;

/// What the recordings routes share.
pub struct RecordingsApi {
    /// Token keys, to check Bearer tokens.
    pub keys: TokenKeys,
    /// The REST API key.
    pub api_key: String,
    /// The recorder (audit, holds, expiry).
    pub recorder: Arc<Recorder>,
    /// Where the files are and the key they are sealed with.
    pub config: RecorderConfig,
    /// Retention per kind of record, for expiry.
    pub retention: Retention,
    /// A reading connection to the index.
    index: Mutex<Index>,
}

impl RecordingsApi {
    /// The API over `recorder`'s files (opens its own connection to the index).
    pub fn new(
        keys: TokenKeys,
        api_key: String,
        recorder: Arc<Recorder>,
        config: RecorderConfig,
        retention: Retention,
    ) -> Result<Arc<Self>, recorder::index::IndexError> {
        let index = Index::open(&config.index_path())?;
        Ok(Arc::new(Self {
            keys,
            api_key,
            recorder,
            config,
            retention,
            index: Mutex::new(index),
        }))
    }
}

/// A refused or failed request: its status and a JSON `{code, message}`.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("a room token (Authorization: Bearer) or the API key (X-Api-Key) is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such recording or track")]
    NotFound,
    #[error("{0}")]
    BadRange(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the recording cannot be read: {0}")]
    Internal(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Refusal::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Refusal::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Refusal::BadRange(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "bad_range"),
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Refusal::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let body = crate::api::ErrorBody {
            code: code.into(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Who is asking.
enum Caller {
    /// The API key: everything.
    Admin,
    /// A room token.
    User(Claims),
}

impl Caller {
    fn identity(&self) -> (&str, String) {
        match self {
            Caller::Admin => ("api", "admin".into()),
            Caller::User(c) => (&c.sub, c.role.to_string()),
        }
    }
}

fn caller(api: &RecordingsApi, headers: &HeaderMap) -> Result<Caller, Refusal> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return if crate::api::same_key(key.as_bytes(), api.api_key.as_bytes()) {
            Ok(Caller::Admin)
        } else {
            Err(Refusal::Unauthorized)
        };
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Refusal::Unauthorized)?;
    let claims = api
        .keys
        .verify(token.trim(), SystemTime::now())
        .map_err(|_| Refusal::Unauthorized)?;
    Ok(Caller::User(claims))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The rooms a caller may see recordings of (`None`: all).
fn rooms_of(caller: &Caller) -> Result<Option<Vec<String>>, Refusal> {
    match caller {
        Caller::Admin => Ok(None),
        Caller::User(c) if c.role == Role::Observer => {
            Err(Refusal::Forbidden("observers may not access recordings"))
        }
        Caller::User(c) if c.room.is_empty() => Err(Refusal::Forbidden(
            "recordings are accessed with a token of their room",
        )),
        Caller::User(c) => Ok(Some(vec![c.room.clone()])),
    }
}

impl RecordingsApi {
    fn audit(
        &self,
        caller: &Caller,
        action: Action,
        room: Option<&str>,
        target: &str,
        detail: Option<String>,
    ) -> Result<(), Refusal> {
        let (actor, role) = caller.identity();
        self.recorder
            .audit_synced(AuditRecord {
                time_ms: now_ms(),
                actor: actor.to_owned(),
                role,
                action,
                room: room.map(str::to_owned),
                target: Some(target.to_owned()),
                detail,
            })
            .map_err(|e| Refusal::Internal(e.to_string()))
    }

    /// The recording if the caller may see it; a refusal is audited.
    fn visible(&self, caller: &Caller, id: &str) -> Result<RecordingDetail, Refusal> {
        let detail = self
            .index
            .lock()
            .expect("index")
            .get(id)
            .map_err(|e| Refusal::Internal(e.to_string()))?
            .ok_or(Refusal::NotFound)?;
        let allowed = match rooms_of(caller) {
            Ok(None) => true,
            Ok(Some(rooms)) => rooms.contains(&detail.recording.room),
            Err(_) => false,
        };
        if !allowed {
            self.audit(
                caller,
                Action::AccessDenied,
                Some(&detail.recording.room),
                id,
                None,
            )?;
            return Err(rooms_of(caller)
                .err()
                .unwrap_or(Refusal::Forbidden("this recording is of another room")));
        }
        Ok(detail)
    }
}

/// Query of `GET /recordings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    room: Option<String>,
    limit: Option<u32>,
}

/// The recordings the caller may see, newest first (`?room=`, `?limit=`, at most 100 by
/// default).
#[utoipa::path(get, path = "/recordings",
    params(("room" = Option<String>, Query, description = "Only this room"),
        ("limit" = Option<u32>, Query, description = "At most this many (100)")),
    responses((status = 200, description = "[Recording]: id, kind, room, started_ms, ended_ms, state, started_by, legal_hold, deleted_ms"),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list(
    State(api): State<Arc<RecordingsApi>>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Recording>>, Refusal> {
    let caller = caller(&api, &headers)?;
    let Query(q) = q.map_err(|e| Refusal::BadRequest(e.body_text()))?;
    let mut rooms = rooms_of(&caller)?;
    if let Some(room) = q.room {
        rooms = match rooms {
            Some(own) if !own.contains(&room) => Some(Vec::new()),
            _ => Some(vec![room]),
        };
    }
    tokio::task::spawn_blocking(move || {
        let filter = ListFilter {
            rooms,
            limit: q.limit.unwrap_or(100),
            ..ListFilter::default()
        };
        api.index
            .lock()
            .expect("index")
            .list(&filter)
            .map(Json)
            .map_err(|e| Refusal::Internal(e.to_string()))
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))?
}

/// One recording with its participants (presence intervals) and tracks (files, codecs,
/// start offsets for synchronised replay, sizes, SHA-256). Audited as `view`.
#[utoipa::path(get, path = "/recordings/{id}",
    params(("id" = String, Path, description = "Recording id")),
    responses((status = 200, description = "The Recording with participants and tracks"),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody),
        (status = 404, body = crate::api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn metadata(
    State(api): State<Arc<RecordingsApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RecordingDetail>, Refusal> {
    let caller = caller(&api, &headers)?;
    tokio::task::spawn_blocking(move || {
        let detail = api.visible(&caller, &id)?;
        api.audit(
            &caller,
            Action::View,
            Some(&detail.recording.room),
            &id,
            None,
        )?;
        Ok(Json(detail))
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))?
}

/// Parses a single `Range: bytes=…` against a length.
fn parse_range(value: &str, len: u64) -> Result<Range<u64>, Refusal> {
    let bad = || Refusal::BadRange(format!("unsatisfiable range {value:?} for {len} bytes"));
    let spec = value.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(Refusal::BadRange("only one range per request".into()));
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            len.saturating_sub(n)..len
        }
        (a, "") => a.parse().map_err(|_| bad())?..len,
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if b < a {
                return Err(bad());
            }
            a..(b + 1).min(len)
        }
    };
    if range.start >= len || range.is_empty() {
        return Err(bad());
    }
    Ok(range)
}

/// A track as its plain WebM (or Matroska) file, decrypted on the fly; one `Range` per
/// request. Audited as `download` before the first byte is sent.
#[utoipa::path(get, path = "/recordings/{id}/tracks/{track}",
    params(("id" = String, Path, description = "Recording id"),
        ("track" = String, Path, description = "Track id"),
        ("Range" = Option<String>, Header, description = "bytes=first-last")),
    responses((status = 200, content_type = "video/webm", body = Vec<u8>),
        (status = 206, content_type = "video/webm", body = Vec<u8>),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody),
        (status = 404, body = crate::api::ErrorBody), (status = 416, body = crate::api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn download(
    State(api): State<Arc<RecordingsApi>>,
    headers: HeaderMap,
    Path((id, track_id)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let caller = caller(&api, &headers)?;
    let range_header = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let api2 = api.clone();
    let (reader, range, partial, container, name) = tokio::task::spawn_blocking(move || {
        let detail = api2.visible(&caller, &id)?;
        let track = detail
            .tracks
            .iter()
            .find(|t| t.track_id == track_id)
            .ok_or(Refusal::NotFound)?;
        let path = api2.config.data_dir.join(&track.file);
        let reader = SealedReader::open(&path, &api2.config.master_key).map_err(|e| {
            warn!(recording = %id, track = %track_id, "a recording cannot be opened: {e}");
            Refusal::Internal(e.to_string())
        })?;
        if reader.context() != format!("{id}/{track_id}").as_bytes() {
            return Err(Refusal::Internal(
                "the file belongs to another track".into(),
            ));
        }
        let len = reader.len();
        let (range, partial) = match &range_header {
            Some(r) => (parse_range(r, len)?, true),
            None => (0..len, false),
        };
        let detail_note = partial.then(|| format!("bytes {}-{}", range.start, range.end - 1));
        api2.audit(
            &caller,
            Action::Download,
            Some(&detail.recording.room),
            &id,
            detail_note,
        )?;
        let container = track.container.as_str();
        Ok::<_, Refusal>((
            reader,
            range,
            partial,
            container,
            format!("{id}-{track_id}.{container}"),
        ))
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))??;
    let total = reader.len();
    let len = range.end - range.start;
    let mut pieces = reader
        .into_range(range.clone())
        .map_err(|e| Refusal::Internal(e.to_string()))?;
    // Decrypted piece by piece on a blocking thread; a piece that fails authentication ends
    // the body with an error (the client sees a cut download, never altered bytes).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        for piece in pieces.by_ref() {
            let piece = piece.map_err(std::io::Error::other);
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                break;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let content_type = if container == "mkv" {
        "video/x-matroska"
    } else {
        "video/webm"
    };
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if partial {
        let v = format!("bytes {}-{}/{total}", range.start, range.end - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).expect("ascii"),
        );
    }
    if partial {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// The whole consult as one file: every track in one WebM (Matroska when a track is H.264),
/// each shifted by its start offset so they replay in sync. Audited as `export`.
#[utoipa::path(get, path = "/recordings/{id}/consult",
    params(("id" = String, Path, description = "Recording id")),
    responses((status = 200, content_type = "video/webm", body = Vec<u8>),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody),
        (status = 404, body = crate::api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn consult(
    State(api): State<Arc<RecordingsApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let caller = caller(&api, &headers)?;
    let (bytes, matroska) = tokio::task::spawn_blocking(move || {
        let detail = api.visible(&caller, &id)?;
        let mut files = Vec::new();
        for t in detail.tracks.iter().filter(|t| t.bytes > 0) {
            let path = api.config.data_dir.join(&t.file);
            let mut reader = SealedReader::open(&path, &api.config.master_key)
                .map_err(|e| Refusal::Internal(e.to_string()))?;
            let mut plain = Vec::with_capacity(reader.len() as usize);
            std::io::Read::read_to_end(&mut reader, &mut plain)
                .map_err(|e| Refusal::Internal(e.to_string()))?;
            let name = format!("{} {}", t.participant, t.kind.as_str());
            files.push((plain, t.start_offset_ms.max(0) as u64, name));
        }
        if files.is_empty() {
            return Err(Refusal::NotFound);
        }
        let inputs: Vec<recorder::remux::MergeInput<'_>> = files
            .iter()
            .map(|(file, offset, name)| recorder::remux::MergeInput {
                file,
                start_offset_ms: *offset,
                name: Some(name),
            })
            .collect();
        let merged =
            recorder::remux::merge(&inputs).map_err(|e| Refusal::Internal(e.to_string()))?;
        api.audit(
            &caller,
            Action::Export,
            Some(&detail.recording.room),
            &id,
            None,
        )?;
        let matroska = detail
            .tracks
            .iter()
            .any(|t| t.container == recorder::index::Container::Mkv);
        Ok::<_, Refusal>((merged, matroska))
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))??;
    let (content_type, ext) = if matroska {
        ("video/x-matroska", "mkv")
    } else {
        ("video/webm", "webm")
    };
    let mut response = Response::new(Body::from(bytes));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"consult.{ext}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Body of `PUT /api/recordings/{id}/hold`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// Set (true) or clear (false).
    pub hold: bool,
    /// Why (required to set a hold).
    #[serde(default)]
    pub reason: String,
}

/// Sets (`{"hold": true, "reason": "…"}`) or clears a legal hold: a held recording is never
/// deleted by expiry. Audited.
#[utoipa::path(put, path = "/api/recordings/{id}/hold", request_body = Hold,
    params(("id" = String, Path, description = "Recording id")),
    responses((status = 204, description = "Set or cleared"),
        (status = 400, body = crate::api::ErrorBody), (status = 401, body = crate::api::ErrorBody),
        (status = 403, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)),
    security(("api_key" = [])))]
async fn set_hold(
    State(api): State<Arc<RecordingsApi>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Hold>, JsonRejection>,
) -> Result<StatusCode, Refusal> {
    if !matches!(caller(&api, &headers)?, Caller::Admin) {
        return Err(Refusal::Forbidden("legal holds are set with the API key"));
    }
    let Json(body) = body.map_err(|e| Refusal::BadRequest(e.body_text()))?;
    if body.hold && body.reason.trim().is_empty() {
        return Err(Refusal::BadRequest("a legal hold needs a reason".into()));
    }
    tokio::task::spawn_blocking(move || {
        api.recorder
            .set_legal_hold(&id, body.hold, "api", &body.reason)
            .map_err(|e| {
                use recorder::consult::RecorderError::Index;
                use recorder::index::IndexError;
                match e {
                    Index(IndexError::NotFound { .. }) => Refusal::NotFound,
                    // The request does not fit the recording (deleted, still recording, …).
                    Index(e @ (IndexError::Deleted { .. } | IndexError::Invalid(_))) => {
                        Refusal::BadRequest(e.to_string())
                    }
                    e => Refusal::Internal(e.to_string()),
                }
            })
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

/// Answer of `POST /api/recordings/expire`.
#[derive(Debug, Serialize)]
struct Expired {
    deleted: Vec<String>,
}

/// Runs retention expiry now (it also runs hourly): deletes every ended recording older than
/// its kind's retention that is not on legal hold; returns `{"deleted": [ids]}`. Audited.
#[utoipa::path(post, path = "/api/recordings/expire",
    responses((status = 200, description = "{\"deleted\": [recording ids]}"),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody)),
    security(("api_key" = [])))]
async fn expire(
    State(api): State<Arc<RecordingsApi>>,
    headers: HeaderMap,
) -> Result<Json<Expired>, Refusal> {
    if !matches!(caller(&api, &headers)?, Caller::Admin) {
        return Err(Refusal::Forbidden("expiry is run with the API key"));
    }
    tokio::task::spawn_blocking(move || {
        api.recorder
            .expire(api.retention)
            .map(|deleted| Json(Expired { deleted }))
            .map_err(|e| Refusal::Internal(e.to_string()))
    })
    .await
    .map_err(|e| Refusal::Internal(e.to_string()))?
}

/// The recorder's counters for `/metrics` (`medrelay_recorder_*`).
pub struct RecorderMetrics {
    recorder: Arc<Recorder>,
    descs: Vec<prometheus::core::Desc>,
}

/// (name, help) of each recorder metric.
const RECORDER_METRICS: [(&str, &str); 5] = [
    ("recorder_active", "Recordings running"),
    (
        "recorder_dropped_total",
        "Tapped media dropped because the recorder's queue was full",
    ),
    ("recorder_bytes_total", "Bytes written to track files"),
    ("recorder_frames_total", "Frames written"),
    (
        "recorder_failed_tracks_total",
        "Tracks that could not be recorded (write error, codec)",
    ),
];

impl RecorderMetrics {
    /// The collector of `recorder`'s counters.
    pub fn new(recorder: Arc<Recorder>) -> Self {
        let descs = RECORDER_METRICS
            .iter()
            .map(|(name, help)| {
                prometheus::core::Desc::new(
                    (*name).into(),
                    (*help).into(),
                    Vec::new(),
                    Default::default(),
                )
                .expect("valid metric name")
            })
            .collect();
        Self { recorder, descs }
    }
}

impl prometheus::core::Collector for RecorderMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use crate::metrics::{counter, gauge};
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.recorder.stats();
        let values = [
            s.active.load(Relaxed),
            s.dropped.load(Relaxed),
            s.bytes.load(Relaxed),
            s.frames.load(Relaxed),
            s.failed_tracks.load(Relaxed),
        ];
        RECORDER_METRICS
            .iter()
            .zip(values)
            .flat_map(|((name, help), v)| {
                if name.ends_with("_total") {
                    counter(name, help, v)
                } else {
                    gauge(name, help, v)
                }
            })
            .collect()
    }
}

/// The OpenAPI description of the recordings routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, metadata, download, consult, set_hold, expire),
    components(schemas(Hold))
)]
pub struct RecordingsDoc;

/// The recordings routes.
pub fn routes(api: Arc<RecordingsApi>) -> Router {
    Router::new()
        .route("/recordings", get(list))
        .route("/recordings/{id}", get(metadata))
        .route("/recordings/{id}/tracks/{track}", get(download))
        .route("/recordings/{id}/consult", get(consult))
        .route("/api/recordings/{id}/hold", put(set_hold))
        .route("/api/recordings/expire", post(expire))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_and_checked() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), 0..100);
        assert_eq!(parse_range("bytes=900-", 1000).unwrap(), 900..1000);
        assert_eq!(parse_range("bytes=-100", 1000).unwrap(), 900..1000);
        assert_eq!(parse_range("bytes=990-2000", 1000).unwrap(), 990..1000);
        for bad in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=-0",
        ] {
            assert!(parse_range(bad, 1000).is_err(), "{bad}");
        }
    }
}
