//! The administrative REST API (rooms, participants, tokens, recording) guarded by the API
//! key, and its OpenAPI description.

use crate::AppState;
use crate::protocol::RecordingStatus;
use crate::records::{self, Actor};
use crate::registry::{ParticipantDetail, RoomView};
use crate::token::{MAX_NAME_LEN, Role, Scope};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sfu::ParticipantId;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use utoipa::{OpenApi, ToSchema};

/// A REST error: the status and the JSON body `{code, message}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong API key.
    #[error("a valid API key is required (header X-Api-Key)")]
    Unauthorized,
    /// No such room or participant.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The service cannot do it now.
    #[error("{0}")]
    Unavailable(String),
}

/// The JSON body of every REST error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `unauthorized`, `not_found`, `bad_request` or `unavailable`.
    pub code: String,
    /// What was wrong.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        let body = ErrorBody {
            code: code.into(),
            message: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

/// Body of `POST /api/rooms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// Room name: 1 to 128 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Optional participant limit.
    pub max_participants: Option<u32>,
    /// Record the room whenever someone is in it (default false).
    #[serde(default)]
    pub record: bool,
}

/// Body of `PUT /api/rooms/{room}/recording`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRecording {
    /// Whether the room is to be recorded.
    pub on: bool,
}

/// Answer of `PUT /api/rooms/{room}/recording`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingState {
    /// Whether the room is being recorded now.
    pub on: bool,
    /// The recording, while on.
    pub recording: Option<RecordingStatus>,
}

/// Body of `POST /api/rooms/{room}/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Display name of the participant.
    pub identity: String,
    /// Its role.
    pub role: Role,
    /// Validity in seconds (default 7200).
    pub ttl_seconds: Option<u64>,
}

/// A join token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The signed token for `/consult/#room=…&token=…`.
    pub token: String,
}

fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[utoipa::path(post, path = "/api/rooms", request_body = CreateRoom,
    responses((status = 201, body = RoomView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
async fn create_room(
    State(state): State<Arc<AppState>>,
    Json(body): Json<CreateRoom>,
) -> Result<(StatusCode, Json<RoomView>), ApiError> {
    if !valid_room_name(&body.name) {
        return Err(ApiError::BadRequest(
            "room names are 1 to 128 of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    let room = state
        .registry
        .create_room(&body.name, body.max_participants, body.record);
    Ok((StatusCode::CREATED, Json(room)))
}

#[utoipa::path(put, path = "/api/rooms/{room}/recording", request_body = SetRecording,
    params(("room" = String, Path, description = "Room name")),
    responses((status = 200, body = RecordingState), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("api_key" = [])))]
async fn set_recording(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    Json(body): Json<SetRecording>,
) -> Result<Json<RecordingState>, ApiError> {
    if !valid_room_name(&room) {
        return Err(ApiError::BadRequest("invalid room name".into()));
    }
    let unavailable = |e: records::RecordsError| ApiError::Unavailable(e.to_string());
    let recording = if body.on {
        Some(
            records::start(&state, &room, Actor::api())
                .await
                .map_err(unavailable)?,
        )
    } else {
        records::stop(&state, &room, Actor::api())
            .await
            .map_err(unavailable)?;
        None
    };
    Ok(Json(RecordingState {
        on: recording.is_some(),
        recording,
    }))
}

#[utoipa::path(get, path = "/api/rooms",
    responses((status = 200, body = [RoomView]), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
async fn list_rooms(State(state): State<Arc<AppState>>) -> Json<Vec<RoomView>> {
    Json(state.registry.rooms())
}

#[utoipa::path(delete, path = "/api/rooms/{room}",
    params(("room" = String, Path, description = "Room name")),
    responses((status = 204, description = "Closed; everyone in it is disconnected"), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
async fn close_room(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.registry.close_room(&room) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("room"))
    }
}

#[utoipa::path(get, path = "/api/rooms/{room}/participants",
    params(("room" = String, Path, description = "Room name")),
    responses((status = 200, body = [ParticipantDetail]), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
async fn list_participants(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
) -> Result<Json<Vec<ParticipantDetail>>, ApiError> {
    state
        .registry
        .participants(&room)
        .map(Json)
        .ok_or(ApiError::NotFound("room"))
}

#[utoipa::path(delete, path = "/api/rooms/{room}/participants/{participant}",
    params(("room" = String, Path, description = "Room name"), ("participant" = String, Path, description = "Participant id")),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
async fn remove_participant(
    State(state): State<Arc<AppState>>,
    Path((room, participant)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id: ParticipantId = participant
        .parse()
        .map_err(|_| ApiError::NotFound("participant"))?;
    if state.registry.kick(&room, id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("participant"))
    }
}

#[utoipa::path(post, path = "/api/rooms/{room}/tokens", request_body = CreateToken,
    params(("room" = String, Path, description = "Room name")),
    responses((status = 201, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("api_key" = [])))]
async fn create_token(
    State(state): State<Arc<AppState>>,
    Path(room): Path<String>,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    if !valid_room_name(&room) || body.identity.is_empty() || body.identity.len() > MAX_NAME_LEN {
        return Err(ApiError::BadRequest("invalid room name or identity".into()));
    }
    let ttl = Duration::from_secs(body.ttl_seconds.unwrap_or(7200).clamp(1, 7 * 24 * 3600));
    let token = state.keys.issue(
        &Scope::room(&room),
        &body.identity,
        body.role,
        ttl,
        SystemTime::now(),
    );
    Ok((StatusCode::CREATED, Json(TokenResponse { token })))
}

/// Constant-time comparison, so response timing does not leak the key.
pub(crate) fn same_key(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if same_key(given.as_bytes(), state.api_key.as_bytes()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The `/api` routes, behind the API key.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/rooms", post(create_room).get(list_rooms))
        .route("/api/rooms/{room}", delete(close_room))
        .route("/api/rooms/{room}/participants", get(list_participants))
        .route(
            "/api/rooms/{room}/participants/{participant}",
            delete(remove_participant),
        )
        .route("/api/rooms/{room}/tokens", post(create_token))
        .route("/api/rooms/{room}/recording", put(set_recording))
        .layer(axum::middleware::from_fn_with_state(state, require_api_key))
}

struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
            );
    }
}

/// The OpenAPI description of the REST API, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "medrelay REST API", description = "Rooms, participants and join tokens. The WebSocket protocol at /ws is described in docs/signaling.md."),
    paths(create_room, list_rooms, close_room, list_participants, remove_participant, create_token, set_recording),
    components(schemas(RoomView, ParticipantDetail, CreateRoom, CreateToken, TokenResponse, ErrorBody, Role, SetRecording, RecordingState, RecordingStatus)),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_restricted() {
        assert!(valid_room_name("consult-42.a_b"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("a b"));
        assert!(!valid_room_name("../etc"));
        assert!(!valid_room_name(&"a".repeat(129)));
    }

    #[test]
    fn key_comparison_needs_the_exact_key() {
        assert!(same_key(b"abc", b"abc"));
        assert!(!same_key(b"abd", b"abc"));
        assert!(!same_key(b"ab", b"abc"));
        assert!(!same_key(b"", b"abc"));
    }

    #[test]
    fn openapi_lists_every_route_of_the_router() {
        let doc = ApiDoc::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for path in [
            "/api/rooms",
            "/api/rooms/{room}",
            "/api/rooms/{room}/participants",
            "/api/rooms/{room}/participants/{participant}",
            "/api/rooms/{room}/tokens",
            "/api/rooms/{room}/recording",
        ] {
            assert!(
                paths.iter().any(|p| *p == path),
                "{path} missing from OpenAPI"
            );
        }
    }
}
