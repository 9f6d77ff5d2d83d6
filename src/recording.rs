//! Wiring of consult recording: the media loop's taps go to the recorder's bounded queue, and
//! signaling's [`ConsultRecords`] calls become the recorder's control calls. The master key
//! is loaded (or, for a new data directory, created) here.

use recorder::audit::Action;
use recorder::consult::{
    AuditRecord, MediaInput, MediaSender, Present, Recorder, TapCodec, TappedPacket, TappedTrack,
};
use recorder::index::TrackKind;
use recorder::sealed::MasterKey;
use sfu::tap::{Tap, TapSink};
use signaling::records::{Actor, AuditEvent, ConsultRecords, RecordsError};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Loads the master key from `path`. A missing key is created only for a data directory
/// that holds no recordings yet; otherwise the server refuses to start rather than write
/// files it could not read back, or write them unencrypted.
pub fn master_key(path: &Path, data_dir: &Path, explicit: bool) -> anyhow::Result<MasterKey> {
    if path.exists() {
        return Ok(MasterKey::load(path)?);
    }
    let has_records = data_dir.join("recordings").join("index.sqlite").exists();
    if explicit || has_records {
        anyhow::bail!(
            "the master key {} is missing: recordings are encrypted with it, so the server \
             will not start without it (restore the key file, or point --master-key at it)",
            path.display()
        );
    }
    Ok(MasterKey::create(path)?)
}

/// The media loop's taps, handed to the recorder without blocking.
pub struct Taps(pub MediaSender);

impl TapSink for Taps {
    fn deliver(&mut self, tap: Tap) {
        let input = match tap {
            Tap::Started(t) => MediaInput::Started(TappedTrack {
                tap: t.tap,
                room: t.room,
                identity: t.identity,
                kind: match (t.kind, t.source) {
                    (_, sfu::TrackSource::Screen) => TrackKind::Screen,
                    (sfu::TrackKind::Audio, _) => TrackKind::Audio,
                    (sfu::TrackKind::Video, _) => TrackKind::Video,
                },
                codecs: t
                    .codecs
                    .into_iter()
                    .map(|c| TapCodec {
                        payload_type: c.payload_type,
                        mime_type: c.mime_type,
                        channels: c.channels,
                    })
                    .collect(),
            }),
            Tap::Packet(p) => MediaInput::Packet(TappedPacket {
                tap: p.tap,
                payload_type: p.payload_type,
                sequence: p.sequence_number,
                timestamp: p.timestamp,
                marker: p.marker,
                payload: p.payload,
            }),
            Tap::Ended { tap } => MediaInput::Ended { tap },
        };
        self.0.deliver(input);
    }
}

/// Signaling's records over the recorder.
pub struct Records(pub Arc<Recorder>);

fn present(actor: &Actor) -> Present {
    Present {
        identity: actor.identity.clone(),
        role: actor.role.clone(),
    }
}

impl ConsultRecords for Records {
    fn start_recording(
        &self,
        room: &str,
        by: &Actor,
        present_now: &[Actor],
    ) -> Result<String, RecordsError> {
        self.0
            .start_recording(room, present(by), present_now.iter().map(present).collect())
            .map_err(|e| RecordsError::Unavailable(e.to_string()))
    }

    fn stop_recording(&self, room: &str, by: &Actor) -> Result<(), RecordsError> {
        self.0
            .stop_recording(room, present(by))
            .map_err(|e| RecordsError::Unavailable(e.to_string()))
    }

    fn audit(&self, event: AuditEvent) {
        let action = match event.action.parse::<Action>() {
            Ok(action) => action,
            Err(_) => {
                tracing::warn!(
                    action = event.action,
                    "an unknown audit action was not logged"
                );
                return;
            }
        };
        self.0.audit(AuditRecord {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            actor: event.actor.identity,
            role: event.actor.role,
            action,
            room: event.room,
            target: event.target,
            detail: None,
        });
    }
}

/// Runs the retention expiry once an hour (the first run a minute after start): consult
/// recordings through the recorder, then old telemetry journal segments through the gateway
/// (sparing streams under legal hold).
pub async fn expire_hourly(
    recorder: Arc<Recorder>,
    gateway: Arc<ambulance_gateway::gateway::Gateway>,
    retention: recorder::index::Retention,
) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(3600),
    );
    loop {
        every.tick().await;
        let consults = recorder.clone();
        match tokio::task::spawn_blocking(move || consults.expire(retention)).await {
            Ok(Ok(deleted)) if !deleted.is_empty() => {
                tracing::info!(count = deleted.len(), "expired recordings deleted");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("retention expiry failed: {e}"),
            Err(e) => tracing::warn!("retention expiry task failed: {e}"),
        }
        let holds = recorder.clone();
        let held = match tokio::task::spawn_blocking(move || holds.telemetry_holds()).await {
            Ok(Ok(held)) => held,
            _ => {
                tracing::warn!("legal holds of telemetry cannot be read; telemetry not expired");
                continue;
            }
        };
        if let Err(e) = gateway
            .expire_telemetry(retention.telemetry_days, &held)
            .await
        {
            tracing::warn!("telemetry retention failed: {e}");
        }
    }
}

/// When a recorded track fails (a full disk), the room's recording is stopped (everyone's
/// indicator goes off) and everyone gets a `recording_unavailable` error saying why; the
/// consult itself goes on.
pub fn forward_events(recorder: &Recorder, state: Arc<signaling::AppState>) {
    let events = recorder.events();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("recorder-events".into())
        .spawn(move || {
            for event in events {
                let recorder::consult::RecorderEvent::TrackFailed {
                    room,
                    recording,
                    track,
                    reason,
                } = event;
                tracing::error!(%recording, %track, "a recorded track failed, recording stops: {reason}");
                let state = state.clone();
                runtime.spawn(async move {
                    state.registry.broadcast(
                        &room,
                        signaling::protocol::ServerMessage::Error {
                            code: signaling::protocol::ErrorCode::RecordingUnavailable,
                            message: format!(
                                "recording stopped: track {track} could not be written ({reason}); \
                                 the consult goes on"
                            ),
                        },
                    );
                    if let Err(e) = signaling::records::stop(&state, &room, Actor::room()).await {
                        tracing::warn!("stopping the failed recording: {e}");
                    }
                });
            }
        })
        .expect("spawn the recorder events thread");
}
