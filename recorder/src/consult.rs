//! Consult recording: the service that turns a room's tapped RTP into one encrypted WebM or
//! Matroska file per track, indexes it, and keeps the audit trail.
//!
//! One thread ([`Recorder`]) owns every open file, the index connection that writes, and the
//! audit log. It takes two inputs: *control* (start and stop a room's Recording, audit
//! entries, legal holds, expiry) on an unbounded channel, each answered, and *media* (the
//! SFU's taps: a track starts, its packets, it ends) on a bounded channel that the media loop
//! fills with `try_send` ([`MediaSender::deliver`]) and the thread drains every 10 ms (so the
//! media loop never has to wake it): when the disk stalls the queue fills, the packets that
//! do not fit are counted as lost ([`RecorderStats`]) and forwarding is never slowed. Each packet goes through the track's [`Depacketizer`] and [`TrackWriter`] into its
//! [`SealedWriter`]; once a second every file with new data is flushed (written and synced),
//! so a crash loses at most about a second.
//!
//! Start-up recovery ([`Recorder::start`]): every Recording the index still lists as running
//! (the server was killed) has its files repaired (torn sealed chunks dropped, the WebM cut
//! after its last complete block and given its Cues and Duration) and is marked `recovered`.
//!
//! Files live in `<data_dir>/recordings/<recording id>/<track id>.<webm|mkv>.sealed`, the index
//! in `<data_dir>/recordings/index.sqlite`, the audit log in `<data_dir>/audit/audit.log`.

use crate::audit::{self, Action, AuditError, AuditKey, AuditLog, NewEntry};
use crate::depacketize::{Codec, Depacketizer, Frame, RtpPacket};
use crate::index::{
    Container, Index, IndexError, ListFilter, NewRecording, NewTrack, ParticipantEvent,
    PresenceChange, RecordingKind, RecordingState, Retention, TrackKind, TrackRef,
};
use crate::sealed::{self, MasterKey, SealedError, SealedReader, SealedWriter};
use crate::webm::{self, TrackSpec, TrackWriter, VideoCodec};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select, tick, unbounded};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Media inputs queued for the recorder thread before packets are dropped (about 2 s of 50
/// tracks at 1.5 Mbit/s).
pub const MEDIA_QUEUE: usize = 16_384;
/// How often files with new data are flushed and their progress indexed.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the media queue is drained (it holds about 2 s of media, so this is far from
/// filling it).
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);

/// Why the recorder refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A sealed file failed.
    #[error(transparent)]
    Sealed(#[from] SealedError),
    /// A directory could not be made or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The recorder thread has stopped.
    #[error("the recorder has stopped")]
    Stopped,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RecorderError + '_ {
    move |source| RecorderError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the recorder keeps its files, and the key they are sealed with.
#[derive(Clone)]
pub struct RecorderConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The master key.
    pub master_key: MasterKey,
}

impl RecorderConfig {
    /// `<data_dir>/recordings/index.sqlite`.
    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join("recordings").join("index.sqlite")
    }

    /// `<data_dir>/audit/audit.log`.
    pub fn audit_path(&self) -> PathBuf {
        self.data_dir.join("audit").join("audit.log")
    }

    /// The key of the audit log's chain.
    pub fn audit_key(&self) -> AuditKey {
        audit::audit_key(&self.master_key)
    }
}

/// One negotiated codec of a tapped track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapCodec {
    /// The RTP payload type.
    pub payload_type: u8,
    /// E.g. `video/VP8`, `audio/opus`.
    pub mime_type: String,
    /// Audio channels (0 for video).
    pub channels: u16,
}

/// A track of a recorded room, announced before its packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TappedTrack {
    /// The media loop's number for it.
    pub tap: u64,
    /// The room.
    pub room: String,
    /// The publisher's identity.
    pub identity: String,
    /// Audio, video or screen.
    pub kind: TrackKind,
    /// The negotiated codecs, the primary one first.
    pub codecs: Vec<TapCodec>,
}

/// One RTP packet of a tapped track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TappedPacket {
    /// Its track.
    pub tap: u64,
    /// The RTP payload type.
    pub payload_type: u8,
    /// The RTP sequence number.
    pub sequence: u16,
    /// The RTP timestamp.
    pub timestamp: u32,
    /// The RTP marker bit.
    pub marker: bool,
    /// The payload.
    pub payload: Bytes,
}

/// What the media loop hands the recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaInput {
    /// A track of a recorded room starts.
    Started(TappedTrack),
    /// A packet of a started track.
    Packet(TappedPacket),
    /// The track ended (unpublished, or its room no longer recorded).
    Ended {
        /// Its number.
        tap: u64,
    },
}

/// Counters of the recorder, for `/metrics`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Media inputs dropped because the queue was full (the disk is too slow).
    pub dropped: AtomicU64,
    /// Bytes written to track files (plaintext).
    pub bytes: AtomicU64,
    /// Frames written.
    pub frames: AtomicU64,
    /// Tracks that failed (a write error, an unsupported codec).
    pub failed_tracks: AtomicU64,
    /// Recordings running now.
    pub active: AtomicU64,
}

/// The media loop's handle: never blocks.
#[derive(Clone)]
pub struct MediaSender {
    tx: Sender<MediaInput>,
    stats: Arc<RecorderStats>,
}

impl MediaSender {
    /// Queues one input, or counts it as dropped when the queue is full.
    pub fn deliver(&self, input: MediaInput) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(input)
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Someone present in a room when its recording starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    /// Identity.
    pub identity: String,
    /// Role.
    pub role: String,
}

/// An audit entry to append (owned, to cross threads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// Who.
    pub actor: String,
    /// Their role.
    pub role: String,
    /// What.
    pub action: Action,
    /// The room, if any.
    pub room: Option<String>,
    /// What it was done to, if anything.
    pub target: Option<String>,
    /// A short note, never patient data.
    pub detail: Option<String>,
}

/// What the recorder reports on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderEvent {
    /// A track's file could not be written (a full disk): its recording stopped, the rest of
    /// the consult goes on; the room should be told.
    TrackFailed {
        /// The room.
        room: String,
        /// The recording.
        recording: String,
        /// The track.
        track: String,
        /// Why.
        reason: String,
    },
}

type Reply<T> = Sender<Result<T, RecorderError>>;

enum Control {
    Start {
        room: String,
        by: Present,
        present: Vec<Present>,
        reply: Reply<String>,
    },
    Stop {
        room: String,
        by: Present,
        reply: Reply<()>,
    },
    Audit(AuditRecord, Option<Reply<()>>),
    Hold {
        id: String,
        hold: bool,
        by: String,
        reason: String,
        reply: Reply<()>,
    },
    Expire {
        retention: Retention,
        reply: Reply<Vec<String>>,
    },
    RegisterTelemetry {
        stream: String,
        started_ms: i64,
    },
    TelemetryHolds {
        reply: Reply<Vec<String>>,
    },
}

/// The index id of an ambulance stream's telemetry record.
pub fn telemetry_id(stream: &str) -> String {
    format!("tel-{stream}")
}

/// The recorder service (see the [module documentation](self)).
pub struct Recorder {
    control: Sender<Control>,
    media: MediaSender,
    stats: Arc<RecorderStats>,
    events: Receiver<RecorderEvent>,
}

impl Recorder {
    /// Opens the index and the audit log, recovers what a crash left unfinished, and starts
    /// the recorder thread.
    pub fn start(config: RecorderConfig) -> Result<Recorder, RecorderError> {
        let dir = config.data_dir.join("recordings");
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let audit_dir = config.data_dir.join("audit");
        std::fs::create_dir_all(&audit_dir).map_err(io_error(&audit_dir))?;
        let mut index = Index::open(&config.index_path())?;
        let mut audit = AuditLog::open(&config.audit_path(), &config.audit_key())?;
        recover(&config, &mut index, &mut audit)?;
        let (control, control_rx) = unbounded();
        let (media_tx, media_rx) = bounded(MEDIA_QUEUE);
        let stats = Arc::new(RecorderStats::default());
        let (events_tx, events) = unbounded();
        let worker = Worker {
            events: events_tx,
            config,
            index,
            audit,
            rooms: HashMap::new(),
            taps: HashMap::new(),
            stats: stats.clone(),
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || worker.run(control_rx, media_rx))
            .map_err(|source| RecorderError::Io {
                path: "recorder thread".into(),
                source,
            })?;
        Ok(Recorder {
            control,
            media: MediaSender {
                tx: media_tx,
                stats: stats.clone(),
            },
            stats,
            events,
        })
    }

    /// The recorder's own reports (a track that failed), for the rooms concerned.
    pub fn events(&self) -> Receiver<RecorderEvent> {
        self.events.clone()
    }

    /// The handle for the media loop's taps.
    pub fn media(&self) -> MediaSender {
        self.media.clone()
    }

    /// The recorder's counters.
    pub fn stats(&self) -> &RecorderStats {
        &self.stats
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Control) -> Result<T, RecorderError> {
        let (tx, rx) = bounded(1);
        self.control
            .send(make(tx))
            .map_err(|_| RecorderError::Stopped)?;
        rx.recv().map_err(|_| RecorderError::Stopped)?
    }

    /// Opens a Recording of `room` (blocking); returns its id. `present` are the people in
    /// the room now.
    pub fn start_recording(
        &self,
        room: &str,
        by: Present,
        present: Vec<Present>,
    ) -> Result<String, RecorderError> {
        self.call(|reply| Control::Start {
            room: room.to_owned(),
            by,
            present,
            reply,
        })
    }

    /// Finishes the room's Recording: every file completed, synced and indexed (blocking).
    pub fn stop_recording(&self, room: &str, by: Present) -> Result<(), RecorderError> {
        self.call(|reply| Control::Stop {
            room: room.to_owned(),
            by,
            reply,
        })
    }

    /// Appends to the audit trail without waiting (a join, a leave).
    pub fn audit(&self, record: AuditRecord) {
        let _ = self.control.send(Control::Audit(record, None));
    }

    /// Appends to the audit trail and waits until it is synced (before serving a download).
    pub fn audit_synced(&self, record: AuditRecord) -> Result<(), RecorderError> {
        self.call(|reply| Control::Audit(record, Some(reply)))
    }

    /// Sets or clears a legal hold on a recording (blocking; audited).
    pub fn set_legal_hold(
        &self,
        id: &str,
        hold: bool,
        by: &str,
        reason: &str,
    ) -> Result<(), RecorderError> {
        self.call(|reply| Control::Hold {
            id: id.to_owned(),
            hold,
            by: by.to_owned(),
            reason: reason.to_owned(),
            reply,
        })
    }

    /// Lists an ambulance stream's telemetry record in the index (once; later calls do
    /// nothing): a recording of kind telemetry, id [`telemetry_id`], whose one track is the
    /// journal directory `telemetry/<stream>`. Does not wait.
    pub fn register_telemetry(&self, stream: &str, started_ms: i64) {
        let _ = self.control.send(Control::RegisterTelemetry {
            stream: stream.to_owned(),
            started_ms,
        });
    }

    /// The ambulance streams whose telemetry record is under legal hold (blocking).
    pub fn telemetry_holds(&self) -> Result<Vec<String>, RecorderError> {
        self.call(|reply| Control::TelemetryHolds { reply })
    }

    /// Appends an expiry of old telemetry (`detail` says what went) to the audit trail
    /// (blocking).
    pub fn audit_telemetry_expiry(
        &self,
        stream: &str,
        detail: String,
    ) -> Result<(), RecorderError> {
        self.audit_synced(AuditRecord {
            time_ms: now_ms() as u64,
            actor: "retention".into(),
            role: "system".into(),
            action: Action::ExpiryDelete,
            room: None,
            target: Some(format!("telemetry:{stream}")),
            detail: Some(detail),
        })
    }

    /// Deletes every recording whose retention has passed and that is not under legal hold;
    /// returns their ids (blocking; each deletion audited).
    pub fn expire(&self, retention: Retention) -> Result<Vec<String>, RecorderError> {
        self.call(|reply| Control::Expire { retention, reply })
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A Recording in progress.
struct Active {
    id: String,
    started_ms: i64,
    tracks: HashMap<u64, TrackRecording>,
    next_track: u32,
}

/// One track's file being written.
struct TrackRecording {
    track: TrackRef,
    start_offset_ms: i64,
    payload_type: u8,
    depacketizer: Depacketizer,
    writer: TrackWriter,
    file: SealedWriter,
    frames: u64,
    /// Written since the last flush.
    dirty: bool,
    /// The last frame, written when the next one comes (see [`TrackRecording::take`]).
    held: Option<Frame>,
    /// Whether a packet has come: the file's time 0 (the track is announced before).
    started: bool,
}

impl TrackRecording {
    /// Takes a depacketized frame and writes the one held before it; returns the frames
    /// written. A frame is held back until the next so that a keyframe re-encoding the same
    /// picture (same RTP timestamp), which a sender makes when a keyframe is requested,
    /// replaces it instead of following it at the same instant.
    fn take(&mut self, frame: Frame, out: &mut Vec<u8>) -> u64 {
        let held = match self.held.take() {
            Some(h) if frame.keyframe && h.rtp_timestamp == frame.rtp_timestamp => None,
            other => other,
        };
        self.held = Some(frame);
        held.map_or(0, |h| self.write(&h, out))
    }

    /// Writes the held frame (at the end of the track); returns the frames written.
    fn release(&mut self, out: &mut Vec<u8>) -> u64 {
        self.held.take().map_or(0, |h| self.write(&h, out))
    }

    fn write(&mut self, frame: &Frame, out: &mut Vec<u8>) -> u64 {
        // A video track starts at a keyframe; frames before it are not decodable.
        match self
            .writer
            .push(frame.timestamp_ms, &frame.data, frame.keyframe, out)
        {
            Ok(()) => {
                self.frames += 1;
                1
            }
            Err(_) => 0,
        }
    }
}

struct Worker {
    config: RecorderConfig,
    index: Index,
    audit: AuditLog,
    rooms: HashMap<String, Active>,
    /// Which room each tap belongs to.
    taps: HashMap<u64, String>,
    stats: Arc<RecorderStats>,
    /// Reused output buffer of the writers.
    buf: Vec<u8>,
    events: Sender<RecorderEvent>,
}

impl Worker {
    fn run(mut self, control: Receiver<Control>, media: Receiver<MediaInput>) {
        // The media queue is drained on a timer rather than waited on: a sender then never
        // has to wake this thread, which would cost the media loop several µs per packet.
        let drain = tick(DRAIN_EVERY);
        let flush = tick(FLUSH_EVERY);
        loop {
            select! {
                recv(control) -> c => match c {
                    Ok(c) => {
                        // What was tapped before the command is handled first.
                        self.drain(&media);
                        self.control(c);
                    }
                    Err(_) => break,
                },
                recv(drain) -> _ => self.drain(&media),
                recv(flush) -> _ => {
                    self.drain(&media);
                    self.flush();
                }
            }
        }
        self.drain(&media);
        // The server is stopping: finish what is open.
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let _ = self.stop(&room);
        }
    }

    fn drain(&mut self, media: &Receiver<MediaInput>) {
        for m in media.try_iter().take(MEDIA_QUEUE) {
            self.media(m);
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Start {
                room,
                by,
                present,
                reply,
            } => {
                let _ = reply.send(self.start(&room, &by, &present));
            }
            Control::Stop { room, by, reply } => {
                let result = self.stop(&room).and_then(|id| match id {
                    Some(id) => self.append(&AuditRecord {
                        time_ms: now_ms() as u64,
                        actor: by.identity,
                        role: by.role,
                        action: Action::RecordingStop,
                        room: Some(room),
                        target: Some(id),
                        detail: None,
                    }),
                    None => Ok(()),
                });
                let _ = reply.send(result);
            }
            Control::Audit(record, reply) => {
                self.note_presence(&record);
                let result = self.append(&record);
                if let Err(e) = &result {
                    warn!("audit append failed: {e}");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Control::Hold {
                id,
                hold,
                by,
                reason,
                reply,
            } => {
                let result = self
                    .index
                    .set_legal_hold(&id, hold, &by, &reason, now_ms())
                    .map_err(RecorderError::from)
                    .and_then(|()| {
                        self.append(&AuditRecord {
                            time_ms: now_ms() as u64,
                            actor: by.clone(),
                            role: "admin".into(),
                            action: if hold {
                                Action::LegalHoldSet
                            } else {
                                Action::LegalHoldCleared
                            },
                            room: None,
                            target: Some(id.clone()),
                            detail: None,
                        })
                    });
                let _ = reply.send(result);
            }
            Control::Expire { retention, reply } => {
                let _ = reply.send(self.expire(&retention));
            }
            Control::RegisterTelemetry { stream, started_ms } => {
                if let Err(e) = self.register_telemetry(&stream, started_ms) {
                    warn!("a telemetry record cannot be indexed: {e}");
                }
            }
            Control::TelemetryHolds { reply } => {
                let filter = ListFilter {
                    kind: Some(RecordingKind::Telemetry),
                    limit: crate::index::MAX_LIST_LIMIT,
                    ..ListFilter::default()
                };
                let held = self
                    .index
                    .list(&filter)
                    .map_err(RecorderError::from)
                    .map(|list| {
                        list.into_iter()
                            .filter(|r| r.legal_hold.is_some())
                            .map(|r| r.room)
                            .collect()
                    });
                let _ = reply.send(held);
            }
        }
    }

    fn register_telemetry(&mut self, stream: &str, started_ms: i64) -> Result<(), RecorderError> {
        let id = telemetry_id(stream);
        if self.index.get(&id)?.is_some() {
            return Ok(());
        }
        self.index.start_recording(&NewRecording {
            id: id.clone(),
            kind: RecordingKind::Telemetry,
            room: stream.to_owned(),
            started_ms,
            started_by: "gateway".into(),
        })?;
        self.index.add_track(&NewTrack {
            recording_id: id,
            track_id: "journal".into(),
            participant: stream.to_owned(),
            kind: TrackKind::Telemetry,
            codec: "medrelay-telemetry".into(),
            file: format!("telemetry/{stream}"),
            container: Container::Journal,
            start_offset_ms: 0,
        })?;
        Ok(())
    }

    fn append(&mut self, r: &AuditRecord) -> Result<(), RecorderError> {
        self.audit.append(&NewEntry {
            time_ms: r.time_ms,
            actor: &r.actor,
            role: &r.role,
            action: r.action,
            room: r.room.as_deref(),
            target: r.target.as_deref(),
            detail: r.detail.as_deref(),
        })?;
        Ok(())
    }

    /// Joins and leaves of a recorded room are its participants.
    fn note_presence(&mut self, r: &AuditRecord) {
        let Some(active) = r.room.as_deref().and_then(|room| self.rooms.get(room)) else {
            return;
        };
        let change = match r.action {
            Action::Join => PresenceChange::Joined {
                role: r.role.clone(),
            },
            Action::Leave => PresenceChange::Left,
            _ => return,
        };
        let event = ParticipantEvent {
            recording_id: active.id.clone(),
            identity: r.actor.clone(),
            at_ms: (r.time_ms as i64).max(active.started_ms),
            change,
        };
        // A second window of the same identity, or a leave of someone who joined twice, is
        // refused by the index; presence stays approximate for such duplicates.
        let _ = self.index.add_participant_event(&event);
    }

    fn start(
        &mut self,
        room: &str,
        by: &Present,
        present: &[Present],
    ) -> Result<String, RecorderError> {
        if let Some(active) = self.rooms.get(room) {
            return Ok(active.id.clone());
        }
        let started_ms = now_ms();
        let id = format!("rec-{started_ms}-{:08x}", rand_u32());
        self.index.start_recording(&NewRecording {
            id: id.clone(),
            kind: RecordingKind::Consult,
            room: room.to_owned(),
            started_ms,
            started_by: by.identity.clone(),
        })?;
        for p in present {
            let _ = self.index.add_participant_event(&ParticipantEvent {
                recording_id: id.clone(),
                identity: p.identity.clone(),
                at_ms: started_ms,
                change: PresenceChange::Joined {
                    role: p.role.clone(),
                },
            });
        }
        let dir = self.config.data_dir.join("recordings").join(&id);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        self.append(&AuditRecord {
            time_ms: started_ms as u64,
            actor: by.identity.clone(),
            role: by.role.clone(),
            action: Action::RecordingStart,
            room: Some(room.to_owned()),
            target: Some(id.clone()),
            detail: None,
        })?;
        self.rooms.insert(
            room.to_owned(),
            Active {
                id: id.clone(),
                started_ms,
                tracks: HashMap::new(),
                next_track: 0,
            },
        );
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        info!(recording = %id, "recording started");
        Ok(id)
    }

    /// Finishes the room's Recording; returns its id (None: it was not recorded).
    fn stop(&mut self, room: &str) -> Result<Option<String>, RecorderError> {
        let Some(mut active) = self.rooms.remove(room) else {
            return Ok(None);
        };
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        let now = now_ms();
        let mut state = RecordingState::Complete;
        for (tap, track) in active.tracks.drain() {
            self.taps.remove(&tap);
            let (track_ref, start) = (track.track.clone(), track.start_offset_ms);
            let offset = now - active.started_ms;
            if let Err(e) = finish_track(&mut self.index, track, offset, &mut self.buf) {
                // The others are still completed; this one is indexed as failed.
                warn!(track = %track_ref.track_id, "a track could not be completed: {e}");
                state = RecordingState::Failed;
                let empty = sha256_hex(&[]);
                let failed = RecordingState::Failed;
                let _ = self
                    .index
                    .finish_track(&track_ref, offset.max(start), 0, &empty, failed);
            }
        }
        self.taps.retain(|_, r| r != room);
        self.index.finish_recording(&active.id, now, state)?;
        info!(recording = %active.id, "recording stopped");
        Ok(Some(active.id))
    }

    fn media(&mut self, m: MediaInput) {
        match m {
            MediaInput::Started(t) => {
                if let Err(e) = self.start_track(&t) {
                    self.stats.failed_tracks.fetch_add(1, Ordering::Relaxed);
                    warn!(tap = t.tap, "a track cannot be recorded: {e}");
                }
            }
            MediaInput::Packet(p) => self.packet(&p),
            MediaInput::Ended { tap } => {
                let Some(room) = self.taps.remove(&tap) else {
                    return;
                };
                let Some(active) = self.rooms.get_mut(&room) else {
                    return;
                };
                if let Some(track) = active.tracks.remove(&tap) {
                    let offset = now_ms() - active.started_ms;
                    if let Err(e) = finish_track(&mut self.index, track, offset, &mut self.buf) {
                        warn!("finishing a track failed: {e}");
                    }
                }
            }
        }
    }

    fn start_track(&mut self, t: &TappedTrack) -> Result<(), String> {
        let Some(active) = self.rooms.get_mut(&t.room) else {
            return Ok(()); // its room's recording has just stopped
        };
        let primary = t.codecs.first().ok_or("no codec")?;
        let (codec, spec, name) = match primary.mime_type.to_ascii_lowercase().as_str() {
            "video/vp8" => (Codec::Vp8, video(VideoCodec::Vp8), "vp8"),
            "video/h264" => (Codec::H264, video(VideoCodec::H264), "h264"),
            "audio/opus" => (
                Codec::Opus,
                TrackSpec::Opus {
                    channels: primary.channels.clamp(1, 2) as u8,
                    input_sample_rate: 48_000,
                },
                "opus",
            ),
            other => return Err(format!("codec {other} is not recorded")),
        };
        let now = now_ms();
        active.next_track += 1;
        let track_id = format!("t{}-{}", active.next_track, t.kind.as_str());
        let writer = TrackWriter::new(spec, now).map_err(|e| e.to_string())?;
        let container = if writer.extension() == "mkv" {
            Container::Mkv
        } else {
            Container::Webm
        };
        let file = format!(
            "recordings/{}/{track_id}.{}.sealed",
            active.id,
            writer.extension()
        );
        let path = self.config.data_dir.join(&file);
        let context = format!("{}/{track_id}", active.id);
        let sealed = SealedWriter::create(&path, &self.config.master_key, context.as_bytes())
            .map_err(|e| e.to_string())?;
        let start_offset_ms = now - active.started_ms;
        self.index
            .add_track(&NewTrack {
                recording_id: active.id.clone(),
                track_id: track_id.clone(),
                participant: t.identity.clone(),
                kind: t.kind,
                codec: name.into(),
                file,
                container,
                start_offset_ms,
            })
            .map_err(|e| e.to_string())?;
        active.tracks.insert(
            t.tap,
            TrackRecording {
                track: TrackRef {
                    recording_id: active.id.clone(),
                    track_id,
                },
                start_offset_ms,
                payload_type: primary.payload_type,
                depacketizer: Depacketizer::new(codec),
                writer,
                file: sealed,
                frames: 0,
                dirty: false,
                held: None,
                started: false,
            },
        );
        self.taps.insert(t.tap, t.room.clone());
        Ok(())
    }

    fn packet(&mut self, p: &TappedPacket) {
        let Some(active) = self
            .taps
            .get(&p.tap)
            .and_then(|room| self.rooms.get_mut(room))
        else {
            return;
        };
        let started_ms = active.started_ms;
        let Some(track) = active.tracks.get_mut(&p.tap) else {
            return;
        };
        if p.payload_type != track.payload_type {
            return; // retransmissions and other codecs of the track are not recorded
        }
        if !track.started {
            // The file's time 0 is the first packet (its frames' times count from it): the
            // track starts then, not when it was announced, so that tracks replay in sync.
            track.started = true;
            track.start_offset_ms = now_ms() - started_ms;
            if let Err(e) = self
                .index
                .set_track_start(&track.track, track.start_offset_ms)
            {
                warn!(track = %track.track.track_id, "a track's start cannot be indexed: {e}");
            }
        }
        let _ = track.depacketizer.push(&RtpPacket {
            payload: &p.payload,
            sequence: p.sequence,
            timestamp: p.timestamp,
            marker: p.marker,
        });
        self.buf.clear();
        while let Some(frame) = track.depacketizer.poll() {
            let written = track.take(frame, &mut self.buf);
            self.stats.frames.fetch_add(written, Ordering::Relaxed);
        }
        if self.buf.is_empty() {
            return;
        }
        match track.file.write(&self.buf) {
            Ok(()) => {
                track.dirty = true;
                self.stats
                    .bytes
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(track = %track.track.track_id, "writing a recording failed: {e}");
                self.fail_track(p.tap, &e.to_string());
            }
        }
    }

    /// Closes a track whose file cannot be written (a full disk): indexed as failed; the
    /// rest of the consult is still recorded and forwarding is untouched.
    fn fail_track(&mut self, tap: u64, reason: &str) {
        self.stats.failed_tracks.fetch_add(1, Ordering::Relaxed);
        let Some(room) = self.taps.remove(&tap) else {
            return;
        };
        let Some(active) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Some(track) = active.tracks.remove(&tap) {
            let _ = self.events.send(RecorderEvent::TrackFailed {
                room: room.clone(),
                recording: active.id.clone(),
                track: track.track.track_id.clone(),
                reason: reason.to_owned(),
            });
            let offset = now_ms() - active.started_ms;
            let bytes = track.file.len();
            let digest = sha256_hex(&[]);
            let _ = self.index.update_track_progress(
                &track.track,
                bytes,
                track.frames,
                track.depacketizer.stats().dropped_frames,
            );
            let _ = self.index.finish_track(
                &track.track,
                offset.max(track.start_offset_ms),
                bytes,
                &digest,
                RecordingState::Failed,
            );
        }
    }

    /// Flushes (writes and syncs) every file with new data and indexes its progress.
    fn flush(&mut self) {
        let mut failed = Vec::new();
        for active in self.rooms.values_mut() {
            for (tap, track) in active.tracks.iter_mut().filter(|(_, t)| t.dirty) {
                track.dirty = false;
                if let Err(e) = track.file.flush() {
                    warn!(track = %track.track.track_id, "flushing a recording failed: {e}");
                    failed.push((*tap, e.to_string()));
                    continue;
                }
                let _ = self.index.update_track_progress(
                    &track.track,
                    track.file.len(),
                    track.frames,
                    track.depacketizer.stats().dropped_frames,
                );
            }
        }
        for (tap, reason) in failed {
            self.fail_track(tap, &reason);
        }
    }

    fn expire(&mut self, retention: &Retention) -> Result<Vec<String>, RecorderError> {
        let now = now_ms();
        let mut deleted = Vec::new();
        for r in self.index.expired(now, retention)? {
            // The tombstone first: it refuses a hold set since `expired` looked.
            if self.index.mark_deleted(&r.id, now).is_err() {
                continue;
            }
            let dir = self.config.data_dir.join("recordings").join(&r.id);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
            self.append(&AuditRecord {
                time_ms: now as u64,
                actor: "retention".into(),
                role: "system".into(),
                action: Action::ExpiryDelete,
                room: Some(r.room.clone()),
                target: Some(r.id.clone()),
                detail: None,
            })?;
            deleted.push(r.id);
        }
        Ok(deleted)
    }
}

fn video(codec: VideoCodec) -> TrackSpec {
    TrackSpec::Video {
        codec,
        width: None,
        height: None,
    }
}

/// Completes a track's file (Cues, Duration), seals it and indexes it as complete.
fn finish_track(
    index: &mut Index,
    mut track: TrackRecording,
    ended_offset_ms: i64,
    buf: &mut Vec<u8>,
) -> Result<(), RecorderError> {
    track.depacketizer.flush();
    buf.clear();
    while let Some(frame) = track.depacketizer.poll() {
        track.take(frame, buf);
    }
    track.release(buf);
    track.file.write(buf)?;
    let finish = track.writer.finish();
    track.file.write(&finish.append)?;
    for patch in &finish.patches {
        track.file.patch(patch.offset, &patch.bytes)?;
    }
    let summary = track.file.finish()?;
    index.update_track_progress(
        &track.track,
        summary.len,
        track.frames,
        track.depacketizer.stats().dropped_frames,
    )?;
    index.finish_track(
        &track.track,
        ended_offset_ms.max(track.start_offset_ms),
        summary.len,
        &hex(&summary.sha256),
        RecordingState::Complete,
    )?;
    Ok(())
}

/// Finishes every Recording a crash left running: each track's sealed file is cut to its
/// last whole chunk, its WebM to its last complete block and completed; the Recording is
/// marked recovered.
fn recover(
    config: &RecorderConfig,
    index: &mut Index,
    audit: &mut AuditLog,
) -> Result<(), RecorderError> {
    // Telemetry records stay open for as long as their stream exists: only consults recover.
    let consults = index
        .unfinished()?
        .into_iter()
        .filter(|r| r.kind == RecordingKind::Consult);
    for r in consults {
        let Some(detail) = index.get(&r.id)? else {
            continue;
        };
        let mut end_offset = 0;
        for t in detail
            .tracks
            .iter()
            .filter(|t| t.state == RecordingState::Recording)
        {
            let track = TrackRef {
                recording_id: r.id.clone(),
                track_id: t.track_id.clone(),
            };
            let path = config.data_dir.join(&t.file);
            match recover_file(config, &path) {
                Ok((len, sha256, duration_ms)) => {
                    let ended = t.start_offset_ms + duration_ms as i64;
                    end_offset = end_offset.max(ended);
                    index.update_track_progress(&track, len, t.frames, t.lost)?;
                    index.finish_track(&track, ended, len, &sha256, RecordingState::Recovered)?;
                }
                Err(e) => {
                    warn!(recording = %r.id, track = %t.track_id, "a track cannot be recovered: {e}");
                    index.finish_track(
                        &track,
                        t.start_offset_ms,
                        0,
                        &sha256_hex(&[]),
                        RecordingState::Failed,
                    )?;
                }
            }
        }
        index.finish_recording(&r.id, r.started_ms + end_offset, RecordingState::Recovered)?;
        audit.append(&NewEntry {
            time_ms: now_ms() as u64,
            actor: "recovery",
            role: "system",
            action: Action::RecordingRecovered,
            room: Some(&r.room),
            target: Some(&r.id),
            detail: None,
        })?;
        info!(recording = %r.id, "recording recovered after a crash");
    }
    Ok(())
}

/// Repairs one track file: returns its plaintext length, SHA-256 (hex) and duration.
fn recover_file(config: &RecorderConfig, path: &Path) -> Result<(u64, String, u64), String> {
    let key = &config.master_key;
    sealed::recover(path, key).map_err(|e| e.to_string())?;
    let mut reader = SealedReader::open(path, key).map_err(|e| e.to_string())?;
    let context = reader.context().to_vec();
    let mut plain = Vec::with_capacity(reader.len() as usize);
    reader.read_to_end(&mut plain).map_err(|e| e.to_string())?;
    let (bytes, duration_ms) = match webm::recover(&plain) {
        Ok(recovered) => {
            plain.truncate(recovered.valid_len as usize);
            recovered.finish.apply(&mut plain);
            (plain, recovered.finish.duration_ms)
        }
        // Nothing but (part of) a header: the track never got a frame.
        Err(webm::WebmError::TruncatedHeader) => (Vec::new(), 0),
        Err(e) => return Err(e.to_string()),
    };
    let tmp = path.with_extension("recovering");
    let _ = std::fs::remove_file(&tmp);
    let mut writer = SealedWriter::create(&tmp, key, &context).map_err(|e| e.to_string())?;
    writer.write(&bytes).map_err(|e| e.to_string())?;
    let summary = writer.finish().map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    Ok((summary.len, hex(&summary.sha256), duration_ms))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}
