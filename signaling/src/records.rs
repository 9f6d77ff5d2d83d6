//! The consult's records as signaling sees them: starting and stopping a room's recording, and
//! the audit trail of who joined, left, published and recorded.
//!
//! Signaling only reports and asks; the binary implements [`ConsultRecords`] over the
//! `recorder` crate (files, index, audit log), so signaling depends on no storage. Starting a
//! recording is [`start`]: the records open a Recording, the media loop starts tapping the
//! room, and every participant is told (`recording` message); [`stop`] undoes it in the
//! reverse order. Both are serialized per server, so a start and a stop never interleave.

use crate::AppState;
use crate::protocol::RecordingStatus;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::warn;

/// Who did something: a participant's identity and role, or `api` for the REST API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Display name from the token (or `api`).
    pub identity: String,
    /// Role from the token (or `admin`).
    pub role: String,
}

impl Actor {
    /// The REST API key's holder.
    pub fn api() -> Self {
        Self {
            identity: "api".into(),
            role: "admin".into(),
        }
    }

    /// The room's own configuration (recorded from the start; the last one out).
    pub fn room() -> Self {
        Self {
            identity: "room".into(),
            role: "policy".into(),
        }
    }
}

/// One event for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened: `join`, `leave`, `publish`, `recording_start`, `recording_stop`, ….
    pub action: &'static str,
    /// Who did it.
    pub actor: Actor,
    /// The room, if any.
    pub room: Option<String>,
    /// What it was done to (a participant id, a recording id), if anything.
    pub target: Option<String>,
}

/// Why the records refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// Recording cannot start now (e.g. the disk is full or the recorder has stopped).
    #[error("recording is unavailable: {0}")]
    Unavailable(String),
}

/// What signaling asks of the records. Calls may do IO: signaling makes them off the async
/// threads.
pub trait ConsultRecords: Send + Sync + 'static {
    /// Opens a Recording of `room`, started by `by` while `present` are in the room; returns
    /// its id.
    fn start_recording(
        &self,
        room: &str,
        by: &Actor,
        present: &[Actor],
    ) -> Result<String, RecordsError>;
    /// Finishes the room's Recording (its files are completed and indexed).
    fn stop_recording(&self, room: &str, by: &Actor) -> Result<(), RecordsError>;
    /// Appends an event to the audit trail.
    fn audit(&self, event: AuditEvent);
}

/// Appends `action` by `actor` in `room` to the audit trail, off the async threads.
pub(crate) fn audit(
    state: &AppState,
    action: &'static str,
    actor: Actor,
    room: &str,
    target: Option<String>,
) {
    let records = state.records.clone();
    let event = AuditEvent {
        action,
        actor,
        room: Some(room.to_owned()),
        target,
    };
    tokio::task::spawn_blocking(move || records.audit(event));
}

/// Starts recording `room` unless it is already recorded; tells everyone in it.
pub async fn start(
    state: &AppState,
    room: &str,
    by: Actor,
) -> Result<RecordingStatus, RecordsError> {
    let _serial = state.recording_lock.lock().await;
    if let Some(status) = state.registry.recording(room) {
        return Ok(status);
    }
    let records = state.records.clone();
    let (r, who) = (room.to_owned(), by.clone());
    let present: Vec<Actor> = state
        .registry
        .participants(room)
        .unwrap_or_default()
        .into_iter()
        .map(|p| Actor {
            identity: p.participant.identity,
            role: p.participant.role,
        })
        .collect();
    let id = tokio::task::spawn_blocking(move || records.start_recording(&r, &who, &present))
        .await
        .map_err(|e| RecordsError::Unavailable(e.to_string()))??;
    if state.sfu.set_recording(room, true).await.is_err() {
        warn!("the media loop has stopped; the recording will hold no media");
    }
    let status = RecordingStatus {
        recording_id: id,
        by: by.identity,
        since_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
    };
    state.registry.set_recording(room, Some(status.clone()));
    Ok(status)
}

/// Stops recording `room` if it is recorded; tells everyone in it. Returns whether it was.
pub async fn stop(state: &AppState, room: &str, by: Actor) -> Result<bool, RecordsError> {
    let _serial = state.recording_lock.lock().await;
    if state.registry.recording(room).is_none() {
        return Ok(false);
    }
    let _ = state.sfu.set_recording(room, false).await;
    let records = state.records.clone();
    let r = room.to_owned();
    let result = tokio::task::spawn_blocking(move || records.stop_recording(&r, &by))
        .await
        .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
    state.registry.set_recording(room, None);
    result.map(|()| true)
}
