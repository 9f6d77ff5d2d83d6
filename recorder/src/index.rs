//! The recordings index: an embedded SQLite database of every recording, who took part, which
//! files hold its tracks, and whether it may be deleted.
//!
//! A recording is a consult (one room's media, one file per track) or a telemetry record (an
//! ambulance stream, one "track" per journal directory). Both share the same tables, retention
//! and legal hold rules.
//!
//! # Schema (version 1, in `PRAGMA user_version`)
//!
//! ```sql
//! CREATE TABLE recordings (
//!     id            TEXT PRIMARY KEY,        -- chosen by the caller: [A-Za-z0-9_-]{1,128}
//!     kind          TEXT NOT NULL,           -- 'consult' | 'telemetry'
//!     room          TEXT NOT NULL,           -- consult room id, or ambulance stream id
//!     started_ms    INTEGER NOT NULL,        -- Unix time, milliseconds
//!     ended_ms      INTEGER,                 -- NULL exactly while state = 'recording'
//!     state         TEXT NOT NULL,           -- 'recording' | 'complete' | 'recovered' | 'failed'
//!     started_by    TEXT NOT NULL,           -- identity
//!     legal_hold    INTEGER NOT NULL,        -- 0 | 1; hold_* are set exactly when it is 1
//!     hold_by       TEXT,
//!     hold_reason   TEXT,
//!     hold_since_ms INTEGER,
//!     deleted_ms    INTEGER                  -- tombstone: media deleted by retention
//! ) STRICT;
//! CREATE TABLE participants (                -- one row per presence interval
//!     recording_id  TEXT NOT NULL REFERENCES recordings(id),
//!     identity      TEXT NOT NULL,
//!     role          TEXT NOT NULL,
//!     joined_ms     INTEGER NOT NULL,
//!     left_ms       INTEGER                  -- NULL while present; at most one open interval
//! ) STRICT;                                  --   per (recording, identity)
//! CREATE TABLE tracks (
//!     recording_id    TEXT NOT NULL REFERENCES recordings(id),
//!     track_id        TEXT NOT NULL,         -- [A-Za-z0-9_-]{1,128}, unique in its recording
//!     participant     TEXT NOT NULL,         -- identity of the publisher (or the ambulance)
//!     kind            TEXT NOT NULL,         -- 'audio' | 'video' | 'screen' | 'telemetry'
//!     codec           TEXT NOT NULL,         -- e.g. 'opus', 'vp8', 'h264'
//!     file            TEXT NOT NULL,         -- relative to the data directory, no '..'
//!     container       TEXT NOT NULL,         -- 'webm' | 'mkv' | 'journal' | 'edf'
//!     start_offset_ms INTEGER NOT NULL,      -- from the recording's start, for sync replay
//!     ended_offset_ms INTEGER,               -- NULL exactly while state = 'recording'
//!     bytes, frames, lost INTEGER NOT NULL,  -- lost: dropped because the queue was full
//!     sha256          TEXT,                  -- lowercase hex, set when finished
//!     state           TEXT NOT NULL,         -- as for recordings
//!     PRIMARY KEY (recording_id, track_id)
//! ) STRICT;
//! ```
//!
//! `CHECK` constraints hold the enumerations and the invariants in the comments; the exact
//! text is in [`SCHEMA_V1`]. A new schema version is a new entry in the migration list, applied
//! in one transaction that also bumps `user_version`; a database newer than this build is
//! refused ([`IndexError::UnsupportedSchema`]).
//!
//! # Retention and tombstones
//!
//! A finished recording expires when `ended_ms + retention(kind) < now` and it is not under
//! legal hold ([`is_expired`]). A recording still being recorded never expires: start-up
//! recovery finishes it first. [`Index::mark_deleted`] keeps the row as a tombstone
//! (`deleted_ms` set, participants and tracks kept): audit entries that name the recording
//! still resolve, the checksums say what was deleted, and an interrupted deletion can be
//! finished from the file list. Media is what retention deletes; this metadata is small.
//!
//! # Durability and concurrency
//!
//! The database runs in WAL mode with `synchronous = NORMAL`: a committed change survives a
//! crash of the process (`kill -9`); after a power loss the last commits may be rolled back,
//! never half applied. Foreign keys are enforced. Writes take the write lock up front
//! (`BEGIN IMMEDIATE`) and wait up to [`BUSY_TIMEOUT`] for another connection. An [`Index`] is
//! synchronous and not `Sync`: run it on a blocking thread, behind a mutex if shared.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Row, ToSql, TransactionBehavior, ffi,
    params_from_iter,
};
use serde::{Deserialize, Serialize};

/// Schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
/// How long a write waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most recordings one [`Index::list`] returns; larger limits are lowered to this.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// Most recordings one [`Index::expired`] returns, oldest first; call again after deleting.
pub const MAX_EXPIRED_BATCH: u32 = 1_000;
/// Default retention of every kind of record: 15 years, in days.
pub const DEFAULT_RETENTION_DAYS: u32 = 5479;
/// Longest recording or track id, in bytes.
pub const MAX_ID_LEN: usize = 128;

const DAY_MS: i64 = 86_400_000;

/// Version 1 of the schema.
pub const SCHEMA_V1: &str = "
CREATE TABLE recordings (
    id            TEXT PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('consult', 'telemetry')),
    room          TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    ended_ms      INTEGER CHECK (ended_ms >= started_ms),
    state         TEXT NOT NULL
                  CHECK (state IN ('recording', 'complete', 'recovered', 'failed')),
    started_by    TEXT NOT NULL,
    legal_hold    INTEGER NOT NULL DEFAULT 0 CHECK (legal_hold IN (0, 1)),
    hold_by       TEXT,
    hold_reason   TEXT,
    hold_since_ms INTEGER,
    deleted_ms    INTEGER,
    CHECK ((state = 'recording') = (ended_ms IS NULL)),
    CHECK ((legal_hold = 1) = (hold_by IS NOT NULL)
       AND (legal_hold = 1) = (hold_reason IS NOT NULL)
       AND (legal_hold = 1) = (hold_since_ms IS NOT NULL)),
    CHECK (deleted_ms IS NULL OR (ended_ms IS NOT NULL AND legal_hold = 0))
) STRICT;
CREATE INDEX recordings_room_started ON recordings (room, started_ms);
CREATE INDEX recordings_started ON recordings (started_ms);
CREATE INDEX recordings_unfinished ON recordings (started_ms) WHERE state = 'recording';
CREATE INDEX recordings_expiry ON recordings (ended_ms)
    WHERE deleted_ms IS NULL AND legal_hold = 0;

CREATE TABLE participants (
    recording_id TEXT NOT NULL REFERENCES recordings (id),
    identity     TEXT NOT NULL,
    role         TEXT NOT NULL,
    joined_ms    INTEGER NOT NULL,
    left_ms      INTEGER CHECK (left_ms >= joined_ms)
) STRICT;
CREATE INDEX participants_recording ON participants (recording_id, joined_ms);
CREATE UNIQUE INDEX participants_present ON participants (recording_id, identity)
    WHERE left_ms IS NULL;

CREATE TABLE tracks (
    recording_id    TEXT NOT NULL REFERENCES recordings (id),
    track_id        TEXT NOT NULL,
    participant     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('audio', 'video', 'screen', 'telemetry')),
    codec           TEXT NOT NULL,
    file            TEXT NOT NULL,
    container       TEXT NOT NULL CHECK (container IN ('webm', 'mkv', 'journal', 'edf')),
    start_offset_ms INTEGER NOT NULL CHECK (start_offset_ms >= 0),
    ended_offset_ms INTEGER CHECK (ended_offset_ms >= start_offset_ms),
    bytes           INTEGER NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    frames          INTEGER NOT NULL DEFAULT 0 CHECK (frames >= 0),
    lost            INTEGER NOT NULL DEFAULT 0 CHECK (lost >= 0),
    sha256          TEXT CHECK (length(sha256) = 64),
    state           TEXT NOT NULL
                    CHECK (state IN ('recording', 'complete', 'recovered', 'failed')),
    PRIMARY KEY (recording_id, track_id),
    CHECK ((state = 'recording') = (ended_offset_ms IS NULL))
) STRICT;
";

/// The schema migrations; entry `n` takes a database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[SCHEMA_V1];

/// Columns of `recordings`, in the order [`recording_from_row`] reads them.
const RECORDING_COLUMNS: &str = "id, kind, room, started_ms, ended_ms, state, started_by, \
     hold_by, hold_reason, hold_since_ms, deleted_ms";
/// Columns of `tracks`, in the order [`track_from_row`] reads them.
const TRACK_COLUMNS: &str = "track_id, participant, kind, codec, file, container, \
     start_offset_ms, ended_offset_ms, bytes, frames, lost, sha256, state";

/// What went wrong in the recordings index.
#[derive(thiserror::Error, Debug)]
pub enum IndexError {
    /// The file is not a SQLite database, or its pages are damaged.
    #[error("recordings index {path}: not a valid database: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        source: rusqlite::Error,
    },
    /// The database could not be opened or prepared for another reason (permissions, disk).
    #[error("recordings index {path}: cannot open: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        source: rusqlite::Error,
    },
    /// The database has a schema version this build does not know (written by a newer
    /// build, or not by medrelay); it is left untouched.
    #[error(
        "recordings index {path}: unknown schema version {found} (this build knows 0 to {supported})"
    )]
    UnsupportedSchema {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// No recording has this id.
    #[error("recording {id} not found")]
    NotFound {
        /// The recording id asked for.
        id: String,
    },
    /// The recording has no track with this id.
    #[error("track {track} of recording {recording} not found")]
    TrackNotFound {
        /// The recording id.
        recording: String,
        /// The track id asked for.
        track: String,
    },
    /// A recording with this id already exists.
    #[error("recording {id} already exists")]
    DuplicateRecording {
        /// The id.
        id: String,
    },
    /// The recording already has a track with this id.
    #[error("track {track} of recording {recording} already exists")]
    DuplicateTrack {
        /// The recording id.
        recording: String,
        /// The track id.
        track: String,
    },
    /// The recording is finished, so it takes no more participants, tracks or end.
    #[error("recording {id} is already finished")]
    RecordingFinished {
        /// The recording id.
        id: String,
    },
    /// The track is finished, so it takes no more progress or end.
    #[error("track {track} of recording {recording} is already finished")]
    TrackFinished {
        /// The recording id.
        recording: String,
        /// The track id.
        track: String,
    },
    /// A recording cannot finish while some of its tracks are still being recorded.
    #[error("recording {id} still has unfinished tracks: {tracks:?}")]
    UnfinishedTracks {
        /// The recording id.
        id: String,
        /// The ids of the unfinished tracks.
        tracks: Vec<String>,
    },
    /// A participant joined who is already present in the recording.
    #[error("{identity} is already present in recording {recording}")]
    AlreadyPresent {
        /// The recording id.
        recording: String,
        /// The participant.
        identity: String,
    },
    /// A participant left who is not present in the recording.
    #[error("{identity} is not present in recording {recording}")]
    NotPresent {
        /// The recording id.
        recording: String,
        /// The participant.
        identity: String,
    },
    /// The recording is under legal hold and must not be deleted.
    #[error("recording {id} is under legal hold")]
    OnLegalHold {
        /// The recording id.
        id: String,
    },
    /// The recording is still being recorded and must not be deleted.
    #[error("recording {id} is still being recorded")]
    StillRecording {
        /// The recording id.
        id: String,
    },
    /// The recording's media was deleted by retention; only its tombstone remains.
    #[error("recording {id} was deleted")]
    Deleted {
        /// The recording id.
        id: String,
    },
    /// An argument is malformed or inconsistent (the message says which and why).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Any other SQLite failure.
    #[error("recordings index: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Generates a text enumeration stored as text in SQLite and as the same text in JSON.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The value as stored in the index and written in JSON.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                match value.as_str()? {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(FromSqlError::InvalidType),
                }
            }
        }
    };
}

text_enum! {
    /// What a recording holds.
    RecordingKind {
        /// A consult room's media.
        Consult = "consult",
        /// An ambulance stream's telemetry.
        Telemetry = "telemetry",
    }
}

text_enum! {
    /// Where a recording or a track stands.
    RecordingState {
        /// Still being written.
        Recording = "recording",
        /// Stopped and closed normally.
        Complete = "complete",
        /// Cut short by a crash and finished by the start-up recovery step.
        Recovered = "recovered",
        /// Stopped by an error (a full disk, an unrecoverable file).
        Failed = "failed",
    }
}

text_enum! {
    /// What a track carries.
    TrackKind {
        /// A microphone.
        Audio = "audio",
        /// A camera.
        Video = "video",
        /// A screen share.
        Screen = "screen",
        /// Telemetry of an ambulance stream.
        Telemetry = "telemetry",
    }
}

text_enum! {
    /// The format of a track's file.
    Container {
        /// WebM (Opus, VP8, VP9).
        Webm = "webm",
        /// Matroska (H.264).
        Mkv = "mkv",
        /// A journal directory of segment files.
        Journal = "journal",
        /// An EDF+ file.
        Edf = "edf",
    }
}

/// How long each kind of record is kept after it ends, in days (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Consult recordings.
    pub consult_days: u32,
    /// Telemetry records.
    pub telemetry_days: u32,
    /// Audit trail entries (applied by the audit trail, not by this index).
    pub audit_days: u32,
}

impl Default for Retention {
    /// [`DEFAULT_RETENTION_DAYS`] (15 years) for every kind.
    fn default() -> Self {
        Retention {
            consult_days: DEFAULT_RETENTION_DAYS,
            telemetry_days: DEFAULT_RETENTION_DAYS,
            audit_days: DEFAULT_RETENTION_DAYS,
        }
    }
}

impl Retention {
    /// The retention of a kind of recording, in milliseconds.
    pub fn for_kind_ms(&self, kind: RecordingKind) -> i64 {
        let days = match kind {
            RecordingKind::Consult => self.consult_days,
            RecordingKind::Telemetry => self.telemetry_days,
        };
        i64::from(days) * DAY_MS
    }
}

/// A recording to register as it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecording {
    /// Unique id chosen by the caller: 1 to [`MAX_ID_LEN`] of `A-Z a-z 0-9 - _`.
    pub id: String,
    /// Consult or telemetry.
    pub kind: RecordingKind,
    /// The consult room id, or the ambulance stream id.
    pub room: String,
    /// Unix time in milliseconds.
    pub started_ms: i64,
    /// Identity that started it (a user, or the API key's name).
    pub started_by: String,
}

/// A legal hold: the recording must not be deleted until an admin clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegalHold {
    /// Identity that set the hold.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When it was set, Unix time in milliseconds.
    pub since_ms: i64,
}

/// A recording as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recording {
    /// Its id.
    pub id: String,
    /// Consult or telemetry.
    pub kind: RecordingKind,
    /// The consult room id, or the ambulance stream id.
    pub room: String,
    /// Unix time in milliseconds.
    pub started_ms: i64,
    /// Unix time in milliseconds; `None` while recording.
    pub ended_ms: Option<i64>,
    /// Where it stands.
    pub state: RecordingState,
    /// Identity that started it.
    pub started_by: String,
    /// The legal hold, if any.
    pub legal_hold: Option<LegalHold>,
    /// When retention deleted its media, Unix time in milliseconds.
    pub deleted_ms: Option<i64>,
}

/// A participant joining or leaving a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantEvent {
    /// The recording id.
    pub recording_id: String,
    /// The participant's identity.
    pub identity: String,
    /// Unix time in milliseconds, not before the recording started.
    pub at_ms: i64,
    /// Joined (with a role) or left.
    pub change: PresenceChange,
}

/// What a [`ParticipantEvent`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The participant joined (or was present when recording started) in this role.
    Joined {
        /// The role, e.g. `specialist`, `patient`, `observer`.
        role: String,
    },
    /// The participant left.
    Left,
}

/// One stretch of time a participant was present in a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// The participant's identity.
    pub identity: String,
    /// The role.
    pub role: String,
    /// Unix time in milliseconds.
    pub joined_ms: i64,
    /// Unix time in milliseconds; `None` while present. Finishing a recording closes it.
    pub left_ms: Option<i64>,
}

/// A track to register as its file is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTrack {
    /// The recording id.
    pub recording_id: String,
    /// Unique within the recording, same rules as a recording id. A track that comes back
    /// after it ended gets a new id (and a new file).
    pub track_id: String,
    /// Identity of the publisher (for telemetry, the ambulance stream).
    pub participant: String,
    /// Audio, video, screen or telemetry.
    pub kind: TrackKind,
    /// Codec name, e.g. `opus`, `vp8`, `h264`.
    pub codec: String,
    /// The file (or journal directory), relative to the data directory, without `..`.
    pub file: String,
    /// The file format.
    pub container: Container,
    /// When the track starts, in milliseconds from the recording's start.
    pub start_offset_ms: i64,
}

/// Names a track: its recording and its id there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrackRef {
    /// The recording id.
    pub recording_id: String,
    /// The track id.
    pub track_id: String,
}

/// A track as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Track {
    /// Its id within the recording.
    pub track_id: String,
    /// Identity of the publisher.
    pub participant: String,
    /// Audio, video, screen or telemetry.
    pub kind: TrackKind,
    /// Codec name.
    pub codec: String,
    /// The file, relative to the data directory.
    pub file: String,
    /// The file format.
    pub container: Container,
    /// Milliseconds from the recording's start.
    pub start_offset_ms: i64,
    /// Milliseconds from the recording's start; `None` while recording.
    pub ended_offset_ms: Option<i64>,
    /// Bytes written.
    pub bytes: u64,
    /// Frames written.
    pub frames: u64,
    /// Frames or packets dropped because the recorder's queue was full.
    pub lost: u64,
    /// SHA-256 of the finished file, lowercase hex.
    pub sha256: Option<String>,
    /// Where it stands.
    pub state: RecordingState,
}

/// A recording with its participants and tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingDetail {
    /// The recording.
    #[serde(flatten)]
    pub recording: Recording,
    /// Presence intervals, in order of joining.
    pub participants: Vec<Presence>,
    /// Tracks, in order of start.
    pub tracks: Vec<Track>,
}

/// Which recordings [`Index::list`] returns, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only these rooms (a user's rooms); `None` for all (admins). An empty list matches none.
    pub rooms: Option<Vec<String>>,
    /// Only this kind.
    pub kind: Option<RecordingKind>,
    /// Only recordings still running at or after this time (Unix ms).
    pub from_ms: Option<i64>,
    /// Only recordings started before this time (Unix ms).
    pub to_ms: Option<i64>,
    /// At most this many, capped at [`MAX_LIST_LIMIT`].
    pub limit: u32,
    /// Include tombstones of deleted recordings.
    pub include_deleted: bool,
}

impl Default for ListFilter {
    /// Every room and kind, any time, 100 recordings, no tombstones.
    fn default() -> Self {
        ListFilter {
            rooms: None,
            kind: None,
            from_ms: None,
            to_ms: None,
            limit: 100,
            include_deleted: false,
        }
    }
}

/// Whether retention may delete a recording now: it has ended, `ended_ms` plus the retention
/// of its kind is before `now_ms`, it is not under legal hold, and it is not deleted already.
pub fn is_expired(recording: &Recording, now_ms: i64, retention: &Retention) -> bool {
    let Some(ended_ms) = recording.ended_ms else {
        return false;
    };
    recording.state != RecordingState::Recording
        && recording.legal_hold.is_none()
        && recording.deleted_ms.is_none()
        && ended_ms < now_ms.saturating_sub(retention.for_kind_ms(recording.kind))
}

/// The recordings index: one SQLite connection.
#[derive(Debug)]
pub struct Index {
    conn: Connection,
}

impl Index {
    /// Opens the index at `path`, creating the file and its schema or migrating an older one.
    ///
    /// A file that is not a SQLite database is [`IndexError::Corrupt`]; one with a schema version
    /// this build does not know (a newer build's) is [`IndexError::UnsupportedSchema`].
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let fail = |source| open_error(path, source);
        let mut conn = Connection::open(path).map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(IndexError::Open {
                path: path.to_owned(),
                source: rusqlite::Error::InvalidParameterName(format!("journal_mode {mode}")),
            });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(fail)?;

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(fail)?;
        let applied = match usize::try_from(found) {
            Ok(applied) if applied <= MIGRATIONS.len() => applied,
            _ => {
                return Err(IndexError::UnsupportedSchema {
                    path: path.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
        };
        if applied < MIGRATIONS.len() {
            for migration in MIGRATIONS.iter().skip(applied) {
                tx.execute_batch(migration).map_err(fail)?;
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(fail)?;
        }
        tx.commit().map_err(fail)?;
        Ok(Index { conn })
    }

    /// Registers a recording that starts now, in state `recording`.
    pub fn start_recording(&mut self, new: &NewRecording) -> Result<(), IndexError> {
        check_id("recording id", &new.id)?;
        check_nonempty("room", &new.room)?;
        check_nonempty("started_by", &new.started_by)?;
        let inserted = self.conn.execute(
            "INSERT INTO recordings (id, kind, room, started_ms, state, started_by)
             VALUES (?1, ?2, ?3, ?4, 'recording', ?5)",
            (
                &new.id,
                new.kind,
                &new.room,
                new.started_ms,
                &new.started_by,
            ),
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Err(IndexError::DuplicateRecording { id: new.id.clone() })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records a participant joining or leaving a recording that is still running.
    pub fn add_participant_event(&mut self, event: &ParticipantEvent) -> Result<(), IndexError> {
        check_nonempty("identity", &event.identity)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status = running_status(&tx, &event.recording_id)?;
        if event.at_ms < status.started_ms {
            return Err(IndexError::Invalid(format!(
                "participant event at {} before recording {} started at {}",
                event.at_ms, event.recording_id, status.started_ms
            )));
        }
        match &event.change {
            PresenceChange::Joined { role } => {
                check_nonempty("role", role)?;
                let inserted = tx.execute(
                    "INSERT INTO participants (recording_id, identity, role, joined_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    (&event.recording_id, &event.identity, role, event.at_ms),
                );
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                        return Err(IndexError::AlreadyPresent {
                            recording: event.recording_id.clone(),
                            identity: event.identity.clone(),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            PresenceChange::Left => {
                let open: Option<(i64, i64)> = tx
                    .query_row(
                        "SELECT rowid, joined_ms FROM participants
                         WHERE recording_id = ?1 AND identity = ?2 AND left_ms IS NULL",
                        (&event.recording_id, &event.identity),
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let Some((rowid, joined_ms)) = open else {
                    return Err(IndexError::NotPresent {
                        recording: event.recording_id.clone(),
                        identity: event.identity.clone(),
                    });
                };
                if event.at_ms < joined_ms {
                    return Err(IndexError::Invalid(format!(
                        "{} left at {} before joining at {joined_ms}",
                        event.identity, event.at_ms
                    )));
                }
                tx.execute(
                    "UPDATE participants SET left_ms = ?1 WHERE rowid = ?2",
                    (event.at_ms, rowid),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Registers a track of a running recording, in state `recording` with zero counts.
    pub fn add_track(&mut self, new: &NewTrack) -> Result<(), IndexError> {
        check_id("track id", &new.track_id)?;
        check_nonempty("participant", &new.participant)?;
        check_nonempty("codec", &new.codec)?;
        check_relative_file(&new.file)?;
        if new.start_offset_ms < 0 {
            return Err(IndexError::Invalid(format!(
                "track {} starts before its recording ({} ms)",
                new.track_id, new.start_offset_ms
            )));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        running_status(&tx, &new.recording_id)?;
        let inserted = tx.execute(
            "INSERT INTO tracks (recording_id, track_id, participant, kind, codec, file,
                                 container, start_offset_ms, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'recording')",
            (
                &new.recording_id,
                &new.track_id,
                &new.participant,
                new.kind,
                &new.codec,
                &new.file,
                new.container,
                new.start_offset_ms,
            ),
        );
        match inserted {
            Ok(_) => {}
            Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                return Err(IndexError::DuplicateTrack {
                    recording: new.recording_id.clone(),
                    track: new.track_id.clone(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets the running totals of a track being recorded (call it about once a second).
    pub fn update_track_progress(
        &mut self,
        track: &TrackRef,
        bytes: u64,
        frames: u64,
        lost: u64,
    ) -> Result<(), IndexError> {
        let changed = self.conn.execute(
            "UPDATE tracks SET bytes = ?3, frames = ?4, lost = ?5
             WHERE recording_id = ?1 AND track_id = ?2 AND state = 'recording'",
            (
                &track.recording_id,
                &track.track_id,
                count("bytes", bytes)?,
                count("frames", frames)?,
                count("lost", lost)?,
            ),
        )?;
        if changed == 0 {
            return Err(track_not_running(&self.conn, track)?);
        }
        Ok(())
    }

    /// Moves a running track's start to when its media actually began (a track is announced
    /// before its first packet), in milliseconds from the recording's start.
    pub fn set_track_start(
        &mut self,
        track: &TrackRef,
        start_offset_ms: i64,
    ) -> Result<(), IndexError> {
        if start_offset_ms < 0 {
            return Err(IndexError::Invalid("a start offset is not negative".into()));
        }
        let changed = self.conn.execute(
            "UPDATE tracks SET start_offset_ms = ?3
             WHERE recording_id = ?1 AND track_id = ?2 AND state = 'recording'",
            (&track.recording_id, &track.track_id, start_offset_ms),
        )?;
        if changed == 0 {
            return Err(track_not_running(&self.conn, track)?);
        }
        Ok(())
    }

    /// Finishes a track: its end offset, final size and checksum, and final `state`
    /// (`complete`, or `recovered` / `failed` from the recovery step). Set the final frame
    /// and loss counts with [`Index::update_track_progress`] first.
    pub fn finish_track(
        &mut self,
        track: &TrackRef,
        ended_offset_ms: i64,
        bytes: u64,
        sha256: &str,
        state: RecordingState,
    ) -> Result<(), IndexError> {
        check_finished_state(state)?;
        check_sha256(sha256)?;
        let bytes = count("bytes", bytes)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let start: Option<i64> = tx
            .query_row(
                "SELECT start_offset_ms FROM tracks
                 WHERE recording_id = ?1 AND track_id = ?2 AND state = 'recording'",
                (&track.recording_id, &track.track_id),
                |row| row.get(0),
            )
            .optional()?;
        let Some(start_offset_ms) = start else {
            return Err(track_not_running(&tx, track)?);
        };
        if ended_offset_ms < start_offset_ms {
            return Err(IndexError::Invalid(format!(
                "track {} ends at {ended_offset_ms} ms, before it started at {start_offset_ms} ms",
                track.track_id
            )));
        }
        tx.execute(
            "UPDATE tracks SET ended_offset_ms = ?3, bytes = ?4, sha256 = ?5, state = ?6
             WHERE recording_id = ?1 AND track_id = ?2",
            (
                &track.recording_id,
                &track.track_id,
                ended_offset_ms,
                bytes,
                sha256,
                state,
            ),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Finishes a recording whose tracks are all finished, in `state` (`complete`,
    /// `recovered` or `failed`). Participants still present leave at `ended_ms`.
    pub fn finish_recording(
        &mut self,
        id: &str,
        ended_ms: i64,
        state: RecordingState,
    ) -> Result<(), IndexError> {
        check_finished_state(state)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status = running_status(&tx, id)?;
        if ended_ms < status.started_ms {
            return Err(IndexError::Invalid(format!(
                "recording {id} ends at {ended_ms}, before it started at {}",
                status.started_ms
            )));
        }
        let open_tracks = {
            let mut stmt = tx.prepare(
                "SELECT track_id FROM tracks
                 WHERE recording_id = ?1 AND state = 'recording' ORDER BY track_id",
            )?;
            stmt.query_map([id], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()?
        };
        if !open_tracks.is_empty() {
            return Err(IndexError::UnfinishedTracks {
                id: id.to_owned(),
                tracks: open_tracks,
            });
        }
        tx.execute(
            "UPDATE participants SET left_ms = max(joined_ms, ?2)
             WHERE recording_id = ?1 AND left_ms IS NULL",
            (id, ended_ms),
        )?;
        tx.execute(
            "UPDATE recordings SET ended_ms = ?2, state = ?3 WHERE id = ?1",
            (id, ended_ms, state),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Recordings still in state `recording`, oldest first: after a crash, the ones the
    /// recovery step must finish.
    pub fn unfinished(&self) -> Result<Vec<Recording>, IndexError> {
        self.recordings(
            &format!(
                "SELECT {RECORDING_COLUMNS} FROM recordings
                 WHERE state = 'recording' ORDER BY started_ms, id"
            ),
            &[],
        )
    }

    /// A recording with its participants and tracks (a tombstone too), or `None` if unknown.
    pub fn get(&self, id: &str) -> Result<Option<RecordingDetail>, IndexError> {
        // One read transaction, so the three queries see the same state.
        let tx = self.conn.unchecked_transaction()?;
        let recording = tx
            .query_row(
                &format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = ?1"),
                [id],
                recording_from_row,
            )
            .optional()?;
        let Some(recording) = recording else {
            return Ok(None);
        };
        let participants = {
            let mut stmt = tx.prepare(
                "SELECT identity, role, joined_ms, left_ms FROM participants
                 WHERE recording_id = ?1 ORDER BY joined_ms, rowid",
            )?;
            stmt.query_map([id], |row| {
                Ok(Presence {
                    identity: row.get(0)?,
                    role: row.get(1)?,
                    joined_ms: row.get(2)?,
                    left_ms: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?
        };
        let tracks = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {TRACK_COLUMNS} FROM tracks
                 WHERE recording_id = ?1 ORDER BY start_offset_ms, track_id"
            ))?;
            stmt.query_map([id], track_from_row)?
                .collect::<Result<Vec<_>, _>>()?
        };
        tx.finish()?;
        Ok(Some(RecordingDetail {
            recording,
            participants,
            tracks,
        }))
    }

    /// Recordings matching `filter`, newest first (by start, then id).
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Recording>, IndexError> {
        let mut sql = format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE 1");
        let mut params: Vec<Value> = Vec::new();
        if let Some(rooms) = &filter.rooms {
            let rooms = serde_json::Value::from(rooms.clone()).to_string();
            params.push(Value::Text(rooms));
            sql += &format!(
                " AND room IN (SELECT value FROM json_each(?{}))",
                params.len()
            );
        }
        if let Some(kind) = filter.kind {
            params.push(Value::Text(kind.as_str().to_owned()));
            sql += &format!(" AND kind = ?{}", params.len());
        }
        if let Some(from_ms) = filter.from_ms {
            params.push(Value::Integer(from_ms));
            sql += &format!(" AND (ended_ms IS NULL OR ended_ms >= ?{})", params.len());
        }
        if let Some(to_ms) = filter.to_ms {
            params.push(Value::Integer(to_ms));
            sql += &format!(" AND started_ms < ?{}", params.len());
        }
        if !filter.include_deleted {
            sql += " AND deleted_ms IS NULL";
        }
        params.push(Value::Integer(i64::from(filter.limit.min(MAX_LIST_LIMIT))));
        sql += &format!(" ORDER BY started_ms DESC, id LIMIT ?{}", params.len());
        self.recordings(&sql, &params)
    }

    /// Sets (`hold = true`, by `by` for `reason`) or clears a legal hold. Setting it again
    /// replaces who and why but keeps the original `since_ms`. Clearing ignores `by` and
    /// `reason` (the audit trail records who cleared it and why).
    pub fn set_legal_hold(
        &mut self,
        id: &str,
        hold: bool,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), IndexError> {
        if hold {
            check_nonempty("hold by", by)?;
            check_nonempty("hold reason", reason)?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status = status(&tx, id)?;
        if status.deleted {
            return Err(IndexError::Deleted { id: id.to_owned() });
        }
        if hold {
            tx.execute(
                "UPDATE recordings SET legal_hold = 1, hold_by = ?2, hold_reason = ?3,
                     hold_since_ms = coalesce(hold_since_ms, ?4)
                 WHERE id = ?1",
                (id, by, reason, now_ms),
            )?;
        } else {
            tx.execute(
                "UPDATE recordings SET legal_hold = 0, hold_by = NULL, hold_reason = NULL,
                     hold_since_ms = NULL
                 WHERE id = ?1",
                [id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Recordings that [`is_expired`] at `now_ms`, oldest end first, at most
    /// [`MAX_EXPIRED_BATCH`].
    pub fn expired(
        &self,
        now_ms: i64,
        retention: &Retention,
    ) -> Result<Vec<Recording>, IndexError> {
        let cutoff = |kind| Value::Integer(now_ms.saturating_sub(retention.for_kind_ms(kind)));
        let candidates = self.recordings(
            &format!(
                "SELECT {RECORDING_COLUMNS} FROM recordings
                 WHERE deleted_ms IS NULL AND legal_hold = 0 AND ended_ms IS NOT NULL
                   AND ((kind = 'consult' AND ended_ms < ?1)
                     OR (kind = 'telemetry' AND ended_ms < ?2))
                 ORDER BY ended_ms, id LIMIT ?3"
            ),
            &[
                cutoff(RecordingKind::Consult),
                cutoff(RecordingKind::Telemetry),
                Value::Integer(i64::from(MAX_EXPIRED_BATCH)),
            ],
        )?;
        // The query narrows with the index; the pure rule has the last word.
        Ok(candidates
            .into_iter()
            .filter(|recording| is_expired(recording, now_ms, retention))
            .collect())
    }

    /// Marks a finished recording's media as deleted, keeping its row as a tombstone.
    ///
    /// Call it *before* removing the files: it is the atomic check against a legal hold set
    /// since [`Index::expired`] ([`IndexError::OnLegalHold`]). If the files' removal is
    /// interrupted, [`Index::get`] still lists them so it can be finished. Marking a
    /// tombstone again changes nothing.
    pub fn mark_deleted(&mut self, id: &str, now_ms: i64) -> Result<(), IndexError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status = status(&tx, id)?;
        if status.deleted {
            return Ok(());
        }
        if status.state == RecordingState::Recording {
            return Err(IndexError::StillRecording { id: id.to_owned() });
        }
        if status.on_hold {
            return Err(IndexError::OnLegalHold { id: id.to_owned() });
        }
        tx.execute(
            "UPDATE recordings SET deleted_ms = ?2 WHERE id = ?1",
            (id, now_ms),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Runs a query over `recordings` selecting [`RECORDING_COLUMNS`].
    fn recordings(&self, sql: &str, params: &[Value]) -> Result<Vec<Recording>, IndexError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params_from_iter(params), recording_from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// The parts of a recording the write paths check.
struct Status {
    state: RecordingState,
    started_ms: i64,
    on_hold: bool,
    deleted: bool,
}

/// The status of recording `id`, or [`IndexError::NotFound`].
fn status(conn: &Connection, id: &str) -> Result<Status, IndexError> {
    conn.query_row(
        "SELECT state, started_ms, legal_hold, deleted_ms IS NOT NULL
         FROM recordings WHERE id = ?1",
        [id],
        |row| {
            Ok(Status {
                state: row.get(0)?,
                started_ms: row.get(1)?,
                on_hold: row.get(2)?,
                deleted: row.get(3)?,
            })
        },
    )
    .optional()?
    .ok_or_else(|| IndexError::NotFound { id: id.to_owned() })
}

/// The status of recording `id` if it is still running, else the error saying why not.
fn running_status(conn: &Connection, id: &str) -> Result<Status, IndexError> {
    let status = status(conn, id)?;
    if status.state != RecordingState::Recording {
        return Err(IndexError::RecordingFinished { id: id.to_owned() });
    }
    Ok(status)
}

/// Why a track is not in state `recording`: it does not exist, or it is finished.
fn track_not_running(conn: &Connection, track: &TrackRef) -> Result<IndexError, IndexError> {
    status(conn, &track.recording_id)?;
    let exists = conn
        .query_row(
            "SELECT 1 FROM tracks WHERE recording_id = ?1 AND track_id = ?2",
            (&track.recording_id, &track.track_id),
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let (recording, track) = (track.recording_id.clone(), track.track_id.clone());
    Ok(if exists {
        IndexError::TrackFinished { recording, track }
    } else {
        IndexError::TrackNotFound { recording, track }
    })
}

/// Reads a row of [`RECORDING_COLUMNS`].
fn recording_from_row(row: &Row<'_>) -> rusqlite::Result<Recording> {
    let hold_by: Option<String> = row.get(7)?;
    let hold_reason: Option<String> = row.get(8)?;
    let hold_since_ms: Option<i64> = row.get(9)?;
    let legal_hold = match (hold_by, hold_reason, hold_since_ms) {
        (Some(by), Some(reason), Some(since_ms)) => Some(LegalHold {
            by,
            reason,
            since_ms,
        }),
        _ => None,
    };
    Ok(Recording {
        id: row.get(0)?,
        kind: row.get(1)?,
        room: row.get(2)?,
        started_ms: row.get(3)?,
        ended_ms: row.get(4)?,
        state: row.get(5)?,
        started_by: row.get(6)?,
        legal_hold,
        deleted_ms: row.get(10)?,
    })
}

/// Reads a row of [`TRACK_COLUMNS`].
fn track_from_row(row: &Row<'_>) -> rusqlite::Result<Track> {
    let unsigned = |idx: usize| -> rusqlite::Result<u64> {
        let value: i64 = row.get(idx)?;
        u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
    };
    Ok(Track {
        track_id: row.get(0)?,
        participant: row.get(1)?,
        kind: row.get(2)?,
        codec: row.get(3)?,
        file: row.get(4)?,
        container: row.get(5)?,
        start_offset_ms: row.get(6)?,
        ended_offset_ms: row.get(7)?,
        bytes: unsigned(8)?,
        frames: unsigned(9)?,
        lost: unsigned(10)?,
        sha256: row.get(11)?,
        state: row.get(12)?,
    })
}

/// Classifies a failure while opening: a damaged or foreign file is [`IndexError::Corrupt`].
fn open_error(path: &Path, source: rusqlite::Error) -> IndexError {
    let path = path.to_owned();
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            IndexError::Corrupt { path, source }
        }
        _ => IndexError::Open { path, source },
    }
}

/// Whether `error` is a constraint violation with this extended code.
fn is_constraint(error: &rusqlite::Error, extended_code: i32) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == extended_code)
}

/// A counter as SQLite stores it (a signed 64-bit integer).
fn count(what: &str, value: u64) -> Result<i64, IndexError> {
    i64::try_from(value).map_err(|_| IndexError::Invalid(format!("{what} {value} is too large")))
}

fn check_nonempty(what: &str, value: &str) -> Result<(), IndexError> {
    if value.is_empty() {
        return Err(IndexError::Invalid(format!("{what} is empty")));
    }
    Ok(())
}

/// Recording and track ids may end up in file names and URLs: keep them plain.
fn check_id(what: &str, id: &str) -> Result<(), IndexError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(plain) {
        return Err(IndexError::Invalid(format!(
            "{what} {id:?} is not 1 to {MAX_ID_LEN} of A-Z a-z 0-9 - _"
        )));
    }
    Ok(())
}

/// A track's file is served for download later: it must stay inside the data directory.
fn check_relative_file(file: &str) -> Result<(), IndexError> {
    let inside = !file.is_empty()
        && !file.contains('\\')
        && Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(IndexError::Invalid(format!(
            "track file {file:?} is not a plain path relative to the data directory"
        )));
    }
    Ok(())
}

fn check_sha256(sha256: &str) -> Result<(), IndexError> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if sha256.len() != 64 || !sha256.bytes().all(lower_hex) {
        return Err(IndexError::Invalid(format!(
            "sha256 {sha256:?} is not 64 lowercase hex digits"
        )));
    }
    Ok(())
}

fn check_finished_state(state: RecordingState) -> Result<(), IndexError> {
    if state == RecordingState::Recording {
        return Err(IndexError::Invalid(
            "a finished state must be complete, recovered or failed".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const HASH_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn temp_index() -> (tempfile::TempDir, PathBuf, Index) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("index.sqlite");
        let index = Index::open(&path).expect("open index");
        (dir, path, index)
    }

    fn new_recording(id: &str, kind: RecordingKind, room: &str, started_ms: i64) -> NewRecording {
        NewRecording {
            id: id.to_owned(),
            kind,
            room: room.to_owned(),
            started_ms,
            started_by: "dr-li".to_owned(),
        }
    }

    fn new_track(recording: &str, track: &str, who: &str, kind: TrackKind, at: i64) -> NewTrack {
        NewTrack {
            recording_id: recording.to_owned(),
            track_id: track.to_owned(),
            participant: who.to_owned(),
            kind,
            codec: if kind == TrackKind::Audio {
                "opus"
            } else {
                "vp8"
            }
            .to_owned(),
            file: format!("recordings/{recording}/{track}.webm"),
            container: Container::Webm,
            start_offset_ms: at,
        }
    }

    fn track_ref(recording: &str, track: &str) -> TrackRef {
        TrackRef {
            recording_id: recording.to_owned(),
            track_id: track.to_owned(),
        }
    }

    fn joined(recording: &str, who: &str, role: &str, at_ms: i64) -> ParticipantEvent {
        ParticipantEvent {
            recording_id: recording.to_owned(),
            identity: who.to_owned(),
            at_ms,
            change: PresenceChange::Joined {
                role: role.to_owned(),
            },
        }
    }

    fn left(recording: &str, who: &str, at_ms: i64) -> ParticipantEvent {
        ParticipantEvent {
            recording_id: recording.to_owned(),
            identity: who.to_owned(),
            at_ms,
            change: PresenceChange::Left,
        }
    }

    /// Starts a recording at `started_ms` and finishes it, trackless, at `ended_ms`.
    fn finished(index: &mut Index, id: &str, kind: RecordingKind, started_ms: i64, ended_ms: i64) {
        index
            .start_recording(&new_recording(id, kind, "room-1", started_ms))
            .expect("start");
        index
            .finish_recording(id, ended_ms, RecordingState::Complete)
            .expect("finish");
    }

    fn ids(recordings: &[Recording]) -> Vec<&str> {
        recordings.iter().map(|r| r.id.as_str()).collect()
    }

    fn recording(id: &str, kind: RecordingKind, ended_ms: Option<i64>) -> Recording {
        Recording {
            id: id.to_owned(),
            kind,
            room: "room-1".to_owned(),
            started_ms: T0,
            ended_ms,
            state: if ended_ms.is_some() {
                RecordingState::Complete
            } else {
                RecordingState::Recording
            },
            started_by: "dr-li".to_owned(),
            legal_hold: None,
            deleted_ms: None,
        }
    }

    #[test]
    fn creates_the_schema_in_wal_mode_and_keeps_data_across_reopen() {
        let (_dir, path, mut index) = temp_index();
        let pragma = |index: &Index, name: &str| -> String {
            index
                .conn
                .pragma_query_value(None, name, |row| row.get::<_, Value>(0))
                .map(|v| match v {
                    Value::Integer(i) => i.to_string(),
                    Value::Text(s) => s,
                    other => format!("{other:?}"),
                })
                .expect("pragma")
        };
        assert_eq!(pragma(&index, "user_version"), SCHEMA_VERSION.to_string());
        assert_eq!(pragma(&index, "journal_mode"), "wal");
        assert_eq!(pragma(&index, "foreign_keys"), "1");
        index
            .start_recording(&new_recording(
                "rec-1",
                RecordingKind::Consult,
                "room-1",
                T0,
            ))
            .expect("start");
        drop(index);

        let index = Index::open(&path).expect("reopen");
        assert_eq!(pragma(&index, "user_version"), SCHEMA_VERSION.to_string());
        assert_eq!(pragma(&index, "foreign_keys"), "1");
        let detail = index.get("rec-1").expect("get").expect("persisted");
        assert_eq!(
            detail.recording,
            recording("rec-1", RecordingKind::Consult, None)
        );
        assert!(detail.participants.is_empty() && detail.tracks.is_empty());
    }

    #[test]
    fn full_lifecycle_with_two_participants_and_three_tracks() {
        let (_dir, _path, mut index) = temp_index();
        let id = "consult-7";
        index
            .start_recording(&new_recording(id, RecordingKind::Consult, "room-9", T0))
            .expect("start");
        index
            .add_participant_event(&joined(id, "dr-li", "specialist", T0))
            .expect("li joins");
        index
            .add_participant_event(&joined(id, "pat-wang", "patient", T0 + 1_000))
            .expect("wang joins");
        index
            .add_track(&new_track(id, "li-audio", "dr-li", TrackKind::Audio, 0))
            .expect("track");
        index
            .add_track(&new_track(id, "li-video", "dr-li", TrackKind::Video, 20))
            .expect("track");
        index
            .add_track(&new_track(
                id,
                "wang-audio",
                "pat-wang",
                TrackKind::Audio,
                1_000,
            ))
            .expect("track");
        // The patient drops out and comes back.
        index
            .add_participant_event(&left(id, "pat-wang", T0 + 5_000))
            .expect("wang leaves");
        index
            .add_participant_event(&joined(id, "pat-wang", "patient", T0 + 6_000))
            .expect("wang rejoins");
        // Its media began 5 ms after it was announced.
        index
            .set_track_start(&track_ref(id, "li-video"), 25)
            .expect("start");
        assert!(matches!(
            index.set_track_start(&track_ref(id, "li-video"), -1),
            Err(IndexError::Invalid(_))
        ));
        index
            .update_track_progress(&track_ref(id, "li-video"), 100, 10, 0)
            .expect("progress");
        index
            .update_track_progress(&track_ref(id, "li-video"), 2_000, 300, 4)
            .expect("progress");
        let ends = [("li-audio", 10_000, HASH_A), ("li-video", 9_990, HASH_B)];
        for (track, end, hash) in ends {
            index
                .finish_track(
                    &track_ref(id, track),
                    end,
                    2_000,
                    hash,
                    RecordingState::Complete,
                )
                .expect("finish track");
        }
        index
            .finish_track(
                &track_ref(id, "wang-audio"),
                4_000,
                500,
                HASH_A,
                RecordingState::Failed,
            )
            .expect("finish track");
        index
            .finish_recording(id, T0 + 10_000, RecordingState::Complete)
            .expect("finish");

        let detail = index.get(id).expect("get").expect("exists");
        assert_eq!(detail.recording.room, "room-9");
        assert_eq!(detail.recording.ended_ms, Some(T0 + 10_000));
        assert_eq!(detail.recording.state, RecordingState::Complete);
        let presence = |identity: &str, role: &str, joined_ms, left_ms| Presence {
            identity: identity.to_owned(),
            role: role.to_owned(),
            joined_ms,
            left_ms: Some(left_ms),
        };
        assert_eq!(
            detail.participants,
            vec![
                presence("dr-li", "specialist", T0, T0 + 10_000),
                presence("pat-wang", "patient", T0 + 1_000, T0 + 5_000),
                presence("pat-wang", "patient", T0 + 6_000, T0 + 10_000),
            ]
        );
        let tracks: Vec<_> = detail.tracks.iter().map(|t| t.track_id.as_str()).collect();
        assert_eq!(tracks, ["li-audio", "li-video", "wang-audio"]);
        assert_eq!(
            detail.tracks[1],
            Track {
                track_id: "li-video".to_owned(),
                participant: "dr-li".to_owned(),
                kind: TrackKind::Video,
                codec: "vp8".to_owned(),
                file: format!("recordings/{id}/li-video.webm"),
                container: Container::Webm,
                start_offset_ms: 25,
                ended_offset_ms: Some(9_990),
                bytes: 2_000,
                frames: 300,
                lost: 4,
                sha256: Some(HASH_B.to_owned()),
                state: RecordingState::Complete,
            }
        );
        assert_eq!(detail.tracks[2].state, RecordingState::Failed);
        assert_eq!(detail.tracks[2].start_offset_ms, 1_000);
        assert!(index.unfinished().expect("unfinished").is_empty());
    }

    #[test]
    fn list_shows_a_user_only_the_rooms_given() {
        let (_dir, _path, mut index) = temp_index();
        let starts = [
            ("a-1", RecordingKind::Consult, "room-a", T0),
            ("b-1", RecordingKind::Consult, "room-b", T0 + 1_000),
            ("a-2", RecordingKind::Consult, "room-a", T0 + 2_000),
            ("amb-1", RecordingKind::Telemetry, "amb-7", T0 + 3_000),
        ];
        for (id, kind, room, at) in starts {
            index
                .start_recording(&new_recording(id, kind, room, at))
                .expect("start");
        }
        index
            .finish_recording("a-1", T0 + 500, RecordingState::Complete)
            .expect("finish");
        let list_in =
            |index: &Index, filter: ListFilter| ids(&index.list(&filter).expect("list")).join(",");
        let list = |filter: ListFilter| list_in(&index, filter);
        let rooms = |rooms: &[&str]| Some(rooms.iter().map(|r| r.to_string()).collect());

        assert_eq!(list(ListFilter::default()), "amb-1,a-2,b-1,a-1");
        assert_eq!(
            list(ListFilter {
                rooms: rooms(&["room-a"]),
                ..ListFilter::default()
            }),
            "a-2,a-1"
        );
        assert_eq!(
            list(ListFilter {
                rooms: rooms(&["room-b", "amb-7", "room-zz"]),
                ..ListFilter::default()
            }),
            "amb-1,b-1"
        );
        assert_eq!(
            list(ListFilter {
                rooms: rooms(&[]),
                ..ListFilter::default()
            }),
            ""
        );
        assert_eq!(
            list(ListFilter {
                kind: Some(RecordingKind::Telemetry),
                ..ListFilter::default()
            }),
            "amb-1"
        );
        // a-1 ended before T0 + 1000; the others are still running.
        assert_eq!(
            list(ListFilter {
                from_ms: Some(T0 + 1_000),
                to_ms: Some(T0 + 3_000),
                ..ListFilter::default()
            }),
            "a-2,b-1"
        );
        assert_eq!(
            list(ListFilter {
                limit: 2,
                ..ListFilter::default()
            }),
            "amb-1,a-2"
        );
        index.mark_deleted("a-1", T0 + 9_000).expect("delete");
        let all_rooms = ListFilter::default();
        assert_eq!(list_in(&index, all_rooms.clone()), "amb-1,a-2,b-1");
        assert_eq!(
            list_in(
                &index,
                ListFilter {
                    include_deleted: true,
                    ..all_rooms
                }
            ),
            "amb-1,a-2,b-1,a-1"
        );
    }

    #[test]
    fn is_expired_follows_retention_per_kind_and_respects_hold() {
        let retention = Retention {
            consult_days: 10,
            telemetry_days: 2,
            audit_days: 1,
        };
        let end = T0;
        let consult = recording("c", RecordingKind::Consult, Some(end));
        let telemetry = recording("t", RecordingKind::Telemetry, Some(end));
        let ten_days = 10 * DAY_MS;

        assert!(
            !is_expired(&consult, end + ten_days, &retention),
            "boundary"
        );
        assert!(is_expired(&consult, end + ten_days + 1, &retention));
        assert!(!is_expired(&telemetry, end + 2 * DAY_MS, &retention));
        assert!(is_expired(&telemetry, end + 2 * DAY_MS + 1, &retention));

        let running = recording("r", RecordingKind::Consult, None);
        assert!(
            !is_expired(&running, i64::MAX, &retention),
            "still recording"
        );
        let held = Recording {
            legal_hold: Some(LegalHold {
                by: "admin".to_owned(),
                reason: "litigation".to_owned(),
                since_ms: end,
            }),
            ..consult.clone()
        };
        assert!(!is_expired(&held, i64::MAX, &retention), "legal hold");
        let deleted = Recording {
            deleted_ms: Some(end + ten_days + 1),
            ..consult.clone()
        };
        assert!(
            !is_expired(&deleted, i64::MAX, &retention),
            "already deleted"
        );
        let fifteen_years = i64::from(DEFAULT_RETENTION_DAYS) * DAY_MS;
        assert!(!is_expired(
            &consult,
            end + fifteen_years,
            &Retention::default()
        ));
        assert!(is_expired(
            &consult,
            end + fifteen_years + 1,
            &Retention::default()
        ));
        assert!(!is_expired(&consult, i64::MIN, &retention), "no overflow");
    }

    #[test]
    fn legal_hold_keeps_a_recording_from_expiry_until_cleared() {
        let (_dir, _path, mut index) = temp_index();
        let retention = Retention {
            consult_days: 1,
            telemetry_days: 1,
            audit_days: 1,
        };
        finished(&mut index, "old-held", RecordingKind::Consult, T0, T0 + 10);
        finished(
            &mut index,
            "old-free",
            RecordingKind::Telemetry,
            T0,
            T0 + 20,
        );
        finished(
            &mut index,
            "recent",
            RecordingKind::Consult,
            T0,
            T0 + 5 * DAY_MS,
        );
        index
            .start_recording(&new_recording("live", RecordingKind::Consult, "room-1", T0))
            .expect("start");
        index
            .set_legal_hold("old-held", true, "admin-zhao", "complaint 42", T0 + 100)
            .expect("hold");
        let now = T0 + 2 * DAY_MS;
        let expired =
            |index: &Index| ids(&index.expired(now, &retention).expect("expired")).join(",");

        assert_eq!(expired(&index), "old-free");
        let held = index
            .get("old-held")
            .expect("get")
            .expect("exists")
            .recording;
        assert_eq!(
            held.legal_hold,
            Some(LegalHold {
                by: "admin-zhao".to_owned(),
                reason: "complaint 42".to_owned(),
                since_ms: T0 + 100,
            })
        );
        assert!(matches!(
            index.mark_deleted("old-held", now),
            Err(IndexError::OnLegalHold { .. })
        ));
        assert!(matches!(
            index.mark_deleted("live", now),
            Err(IndexError::StillRecording { .. })
        ));

        index
            .set_legal_hold("old-held", false, "admin-zhao", "", now)
            .expect("clear");
        assert_eq!(expired(&index), "old-held,old-free");
        index.mark_deleted("old-held", now).expect("delete");
        index
            .mark_deleted("old-held", now + 1)
            .expect("delete again");
        let tombstone = index.get("old-held").expect("get").expect("tombstone");
        assert_eq!(tombstone.recording.deleted_ms, Some(now));
        assert_eq!(expired(&index), "old-free");
        assert!(matches!(
            index.set_legal_hold("old-held", true, "admin-zhao", "too late", now),
            Err(IndexError::Deleted { .. })
        ));
    }

    #[test]
    fn unfinished_recordings_survive_a_crash() {
        let (_dir, path, mut index) = temp_index();
        finished(&mut index, "done", RecordingKind::Consult, T0, T0 + 1_000);
        index
            .start_recording(&new_recording(
                "cut",
                RecordingKind::Consult,
                "room-1",
                T0 + 2_000,
            ))
            .expect("start");
        index
            .add_participant_event(&joined("cut", "dr-li", "specialist", T0 + 2_000))
            .expect("join");
        index
            .add_track(&new_track("cut", "li-audio", "dr-li", TrackKind::Audio, 0))
            .expect("track");
        index
            .update_track_progress(&track_ref("cut", "li-audio"), 4_096, 50, 0)
            .expect("progress");
        drop(index); // the process dies: nothing is finished

        let mut index = Index::open(&path).expect("reopen");
        assert_eq!(ids(&index.unfinished().expect("unfinished")), ["cut"]);
        let detail = index.get("cut").expect("get").expect("exists");
        assert_eq!(detail.tracks[0].bytes, 4_096);
        assert_eq!(detail.tracks[0].state, RecordingState::Recording);
        assert!(matches!(
            index.finish_recording("cut", T0 + 3_000, RecordingState::Recovered),
            Err(IndexError::UnfinishedTracks { tracks, .. }) if tracks == ["li-audio"]
        ));
        index
            .finish_track(
                &track_ref("cut", "li-audio"),
                900,
                4_000,
                HASH_A,
                RecordingState::Recovered,
            )
            .expect("recover track");
        index
            .finish_recording("cut", T0 + 2_900, RecordingState::Recovered)
            .expect("recover");
        assert!(index.unfinished().expect("unfinished").is_empty());
        let detail = index.get("cut").expect("get").expect("exists");
        assert_eq!(detail.recording.state, RecordingState::Recovered);
        assert_eq!(detail.participants[0].left_ms, Some(T0 + 2_900));
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let (_dir, _path, mut index) = temp_index();
        let not_found = |r: Result<(), IndexError>| matches!(r, Err(IndexError::NotFound { id }) if id == "nope");
        assert!(index.get("nope").expect("get").is_none());
        assert!(not_found(index.finish_recording(
            "nope",
            T0,
            RecordingState::Complete
        )));
        assert!(not_found(index.add_track(&new_track(
            "nope",
            "t",
            "x",
            TrackKind::Audio,
            0
        ))));
        assert!(not_found(
            index.add_participant_event(&joined("nope", "x", "patient", T0))
        ));
        assert!(not_found(
            index.set_legal_hold("nope", true, "admin", "why", T0)
        ));
        assert!(not_found(index.mark_deleted("nope", T0)));
        assert!(not_found(index.update_track_progress(
            &track_ref("nope", "t"),
            1,
            1,
            0
        )));

        index
            .start_recording(&new_recording("rec", RecordingKind::Consult, "room-1", T0))
            .expect("start");
        assert!(matches!(
            index.update_track_progress(&track_ref("rec", "ghost"), 1, 1, 0),
            Err(IndexError::TrackNotFound { track, .. }) if track == "ghost"
        ));
        assert!(matches!(
            index.finish_track(
                &track_ref("rec", "ghost"),
                1,
                1,
                HASH_A,
                RecordingState::Complete
            ),
            Err(IndexError::TrackNotFound { .. })
        ));
    }

    #[test]
    fn duplicates_and_out_of_order_events_are_typed_errors() {
        let (_dir, _path, mut index) = temp_index();
        let rec = new_recording("rec", RecordingKind::Consult, "room-1", T0);
        index.start_recording(&rec).expect("start");
        assert!(matches!(
            index.start_recording(&rec),
            Err(IndexError::DuplicateRecording { id }) if id == "rec"
        ));
        let track = new_track("rec", "t1", "dr-li", TrackKind::Screen, 0);
        index.add_track(&track).expect("track");
        assert!(matches!(
            index.add_track(&track),
            Err(IndexError::DuplicateTrack { .. })
        ));
        index
            .add_participant_event(&joined("rec", "dr-li", "specialist", T0))
            .expect("join");
        assert!(matches!(
            index.add_participant_event(&joined("rec", "dr-li", "specialist", T0 + 1)),
            Err(IndexError::AlreadyPresent { .. })
        ));
        assert!(matches!(
            index.add_participant_event(&left("rec", "pat-wang", T0 + 1)),
            Err(IndexError::NotPresent { .. })
        ));
        assert!(matches!(
            index.add_participant_event(&joined("rec", "pat-wang", "patient", T0 - 1)),
            Err(IndexError::Invalid(_))
        ));

        let t1 = track_ref("rec", "t1");
        index
            .finish_track(&t1, 100, 10, HASH_B, RecordingState::Complete)
            .expect("finish track");
        assert!(matches!(
            index.finish_track(&t1, 100, 10, HASH_B, RecordingState::Complete),
            Err(IndexError::TrackFinished { .. })
        ));
        assert!(matches!(
            index.update_track_progress(&t1, 11, 1, 0),
            Err(IndexError::TrackFinished { .. })
        ));
        index
            .finish_recording("rec", T0 + 100, RecordingState::Complete)
            .expect("finish");
        assert!(matches!(
            index.finish_recording("rec", T0 + 200, RecordingState::Complete),
            Err(IndexError::RecordingFinished { .. })
        ));
        assert!(matches!(
            index.add_track(&new_track("rec", "t2", "dr-li", TrackKind::Audio, 0)),
            Err(IndexError::RecordingFinished { .. })
        ));
    }

    #[test]
    fn malformed_input_is_rejected() {
        let (_dir, _path, mut index) = temp_index();
        let invalid = |r: Result<(), IndexError>| matches!(r, Err(IndexError::Invalid(_)));
        let bad_ids = [
            "",
            "a/b",
            "../x",
            "id with space",
            &"x".repeat(MAX_ID_LEN + 1),
        ];
        for id in bad_ids {
            let rec = new_recording(id, RecordingKind::Consult, "room-1", T0);
            assert!(invalid(index.start_recording(&rec)), "{id:?}");
        }
        index
            .start_recording(&new_recording("rec", RecordingKind::Consult, "room-1", T0))
            .expect("start");
        for file in [
            "",
            "/etc/passwd",
            "../escape.webm",
            "a/../../b",
            "a\\..\\b",
            "./a",
        ] {
            let track = NewTrack {
                file: file.to_owned(),
                ..new_track("rec", "t", "dr-li", TrackKind::Audio, 0)
            };
            assert!(invalid(index.add_track(&track)), "{file:?}");
        }
        let negative = new_track("rec", "t", "dr-li", TrackKind::Audio, -1);
        assert!(invalid(index.add_track(&negative)));
        index
            .add_track(&new_track("rec", "t", "dr-li", TrackKind::Audio, 50))
            .expect("track");
        let t = track_ref("rec", "t");
        assert!(invalid(index.update_track_progress(&t, u64::MAX, 0, 0)));
        let complete = RecordingState::Complete;
        for hash in [
            "",
            "abc",
            &HASH_A.to_uppercase(),
            &format!("{}g", &HASH_A[1..]),
        ] {
            assert!(
                invalid(index.finish_track(&t, 60, 1, hash, complete)),
                "{hash:?}"
            );
        }
        assert!(invalid(index.finish_track(&t, 49, 1, HASH_A, complete)));
        assert!(invalid(index.finish_track(
            &t,
            60,
            1,
            HASH_A,
            RecordingState::Recording
        )));
        assert!(invalid(index.set_legal_hold("rec", true, "", "reason", T0)));
        index
            .finish_track(&t, 60, 1, HASH_A, complete)
            .expect("finish track");
        assert!(invalid(index.finish_recording("rec", T0 - 1, complete)));
        assert!(invalid(index.finish_recording(
            "rec",
            T0 + 1,
            RecordingState::Recording
        )));
    }

    #[test]
    fn a_corrupt_or_newer_database_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let garbage = dir.path().join("garbage.sqlite");
        std::fs::write(&garbage, b"not a database, just some bytes\n".repeat(200)).expect("write");
        assert!(matches!(
            Index::open(&garbage),
            Err(IndexError::Corrupt { path, .. }) if path == garbage
        ));

        let newer = dir.path().join("newer.sqlite");
        drop(Index::open(&newer).expect("create"));
        Connection::open(&newer)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .expect("bump version");
        assert!(matches!(
            Index::open(&newer),
            Err(IndexError::UnsupportedSchema { found, .. }) if found == SCHEMA_VERSION + 1
        ));
    }
}
