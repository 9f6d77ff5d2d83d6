//! The audit trail: an append-only, hash-chained log of who did what.
//!
//! Every join, leave, publish, recording start and stop, view, download, export, alarm
//! acknowledgement and admin action becomes one [`AuditEntry`]. Entries carry identities,
//! roles, room and recording ids, never patient data: do not put vitals or clinical text
//! in [`NewEntry::detail`].
//!
//! # Log file
//!
//! One JSON object per line, each line ending in `\n`, in the order written, e.g.
//!
//! ```text
//! {"seq":1,"time_ms":1763938200000,"actor":"dr.li","role":"specialist","action":"recording_start","room":"c-17","target":"rec-42","prev":"00…00","hash":"5f…e1"}
//! ```
//!
//! `seq` counts from 1 without gaps, so line `n` holds seq `n`. `room`, `target` and
//! `detail` are left out when absent. `prev` is the `hash` of the entry before (64 zeros for
//! the first), and `hash` is the lowercase hex of HMAC-SHA256 under the [`AuditKey`] over
//! this canonical serialization (integers little-endian, strings as a u32 length and UTF-8
//! bytes, optional strings as a byte 0 when absent or 1 and the string):
//!
//! `"medrelay-audit-entry-v1\0"`, prev (32 bytes), seq (u64), time_ms (u64), actor, role,
//! action (its snake_case name), room?, target?, detail?
//!
//! Editing an entry therefore requires the key; removing or reordering entries breaks the
//! seq sequence and the `prev` chain.
//!
//! # Head file
//!
//! Removing the *last* entries leaves a valid chain, so `<log>.head` (e.g. `audit.jsonl.head`)
//! records the latest entry: one JSON line `{"seq":N,"hash":"…","mac":"…"}`, where `mac` is
//! the hex HMAC-SHA256 under the audit key over `"medrelay-audit-head-v1\0"`, seq (u64 LE)
//! and the 32 hash bytes. An empty log has a head with seq 0 and the all-zero hash. The head
//! is replaced atomically (write a temporary file, fsync, rename, fsync the directory) after
//! each append has been synced, so it may lag the log after a crash but is never ahead of it.
//! A head can be replayed by someone who kept an old copy; only an anchor outside the data
//! directory could detect that.
//!
//! # Crashes
//!
//! An append is one `write` of complete lines followed by `fdatasync`. A crash can leave a
//! last line without its `\n`; [`AuditLog::open`] cuts it off (it was never acknowledged),
//! and [`verify`] and [`query`] ignore it. A log has a single writer.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::sealed::{MasterKey, decode_hex, encode_hex};

/// Longest line accepted in the log (16 KiB); longer entries are refused on append.
pub const MAX_LINE: usize = 16 * 1024;

/// `prev` of the first entry, and the hash in the head of an empty log.
const GENESIS: [u8; 32] = [0; 32];
const ENTRY_LABEL: &[u8] = b"medrelay-audit-entry-v1\0";
const HEAD_LABEL: &[u8] = b"medrelay-audit-head-v1\0";
/// Label of the audit key derived from the master key.
const KEY_LABEL: &[u8] = b"medrelay audit-log HMAC key v1";

/// The 256-bit HMAC-SHA256 key that seals the audit log's entries and head.
#[derive(Clone)]
pub struct AuditKey(hmac::Key);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// An audit key from its raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> AuditKey {
        AuditKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }
}

/// Derives the audit key from the master key: HMAC-SHA256(master key, a fixed label).
pub fn audit_key(master: &MasterKey) -> AuditKey {
    let master = hmac::Key::new(hmac::HMAC_SHA256, master.secret());
    let mut bytes = [0; 32];
    bytes.copy_from_slice(hmac::sign(&master, KEY_LABEL).as_ref());
    AuditKey::from_bytes(&bytes)
}

/// What was done. Stored as its snake_case name (see [`Action::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A participant joined a room.
    Join,
    /// A participant left a room.
    Leave,
    /// A participant started publishing a track.
    Publish,
    /// A participant stopped publishing a track.
    Unpublish,
    /// Recording of a room started.
    RecordingStart,
    /// Recording of a room stopped.
    RecordingStop,
    /// A recording interrupted by a crash was recovered at start-up.
    RecordingRecovered,
    /// Someone viewed a recording's metadata or played it.
    View,
    /// Someone downloaded a track.
    Download,
    /// Someone exported a whole consult or telemetry record.
    Export,
    /// An alarm was acknowledged.
    AlarmAck,
    /// Alarm limits were changed.
    AlarmLimits,
    /// An access was refused (wrong role or room).
    AccessDenied,
    /// An admin put a record under legal hold.
    LegalHoldSet,
    /// An admin released a legal hold.
    LegalHoldCleared,
    /// The expiry job deleted a record whose retention period ended.
    ExpiryDelete,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 16] = [
        Action::Join,
        Action::Leave,
        Action::Publish,
        Action::Unpublish,
        Action::RecordingStart,
        Action::RecordingStop,
        Action::RecordingRecovered,
        Action::View,
        Action::Download,
        Action::Export,
        Action::AlarmAck,
        Action::AlarmLimits,
        Action::AccessDenied,
        Action::LegalHoldSet,
        Action::LegalHoldCleared,
        Action::ExpiryDelete,
    ];

    /// The snake_case name, as stored and as accepted by [`Action::from_str`].
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Join => "join",
            Action::Leave => "leave",
            Action::Publish => "publish",
            Action::Unpublish => "unpublish",
            Action::RecordingStart => "recording_start",
            Action::RecordingStop => "recording_stop",
            Action::RecordingRecovered => "recording_recovered",
            Action::View => "view",
            Action::Download => "download",
            Action::Export => "export",
            Action::AlarmAck => "alarm_ack",
            Action::AlarmLimits => "alarm_limits",
            Action::AccessDenied => "access_denied",
            Action::LegalHoldSet => "legal_hold_set",
            Action::LegalHoldCleared => "legal_hold_cleared",
            Action::ExpiryDelete => "expiry_delete",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given to [`Action::from_str`] is not an action.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown audit action {0:?}")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(name: &str) -> Result<Action, UnknownAction> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str() == name)
            .ok_or_else(|| UnknownAction(name.to_owned()))
    }
}

/// An entry to append; the log assigns its seq and chain hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry<'a> {
    /// When it happened, in milliseconds since the Unix epoch (the caller's clock).
    pub time_ms: u64,
    /// Who did it: the authenticated identity, or the API key's name.
    pub actor: &'a str,
    /// The actor's role, e.g. `specialist`, `observer`, `admin`.
    pub role: &'a str,
    /// What was done.
    pub action: Action,
    /// The room it happened in, if any.
    pub room: Option<&'a str>,
    /// What it was done to, e.g. a recording id.
    pub target: Option<&'a str>,
    /// A short note, e.g. a track name or a byte range. Never patient data.
    pub detail: Option<&'a str>,
}

/// One entry of the audit log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, counting from 1.
    pub seq: u64,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Who did it.
    pub actor: String,
    /// The actor's role.
    pub role: String,
    /// What was done.
    pub action: Action,
    /// The room, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// What it was done to, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A short note, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Hex hash of the entry before (64 zeros for the first).
    pub prev: String,
    /// Hex HMAC-SHA256 over `prev` and this entry (see the module documentation).
    pub hash: String,
}

impl AuditEntry {
    /// The HMAC over `prev` and the canonical serialization of this entry.
    fn mac(&self, key: &AuditKey, prev: &[u8; 32]) -> hmac::Tag {
        fn put(ctx: &mut hmac::Context, text: &str) {
            ctx.update(&(text.len() as u32).to_le_bytes());
            ctx.update(text.as_bytes());
        }
        fn put_opt(ctx: &mut hmac::Context, text: Option<&str>) {
            match text {
                None => ctx.update(&[0]),
                Some(text) => {
                    ctx.update(&[1]);
                    put(ctx, text);
                }
            }
        }
        let mut ctx = hmac::Context::with_key(&key.0);
        ctx.update(ENTRY_LABEL);
        ctx.update(prev);
        ctx.update(&self.seq.to_le_bytes());
        ctx.update(&self.time_ms.to_le_bytes());
        put(&mut ctx, &self.actor);
        put(&mut ctx, &self.role);
        put(&mut ctx, self.action.as_str());
        put_opt(&mut ctx, self.room.as_deref());
        put_opt(&mut ctx, self.target.as_deref());
        put_opt(&mut ctx, self.detail.as_deref());
        ctx.sign()
    }

    /// Checks the entry's own hash; returns it as bytes.
    fn check_hash(&self, key: &AuditKey) -> Result<[u8; 32], EntryProblem> {
        let mut prev = [0; 32];
        decode_hex(self.prev.as_bytes(), &mut prev)
            .ok_or_else(|| EntryProblem::Unreadable("prev is not 64 hex digits".into()))?;
        let tag = self.mac(key, &prev);
        if encode_hex(tag.as_ref()) != self.hash {
            return Err(EntryProblem::Edited);
        }
        let mut hash = [0; 32];
        hash.copy_from_slice(tag.as_ref());
        Ok(hash)
    }
}

/// What is wrong with one entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryProblem {
    /// The line is not a well-formed entry (or is longer than [`MAX_LINE`]).
    Unreadable(String),
    /// The hash does not match the content: the entry was edited.
    Edited,
    /// The seq is not the next one: entries before it were removed or reordered.
    OutOfOrder {
        /// The seq this line should have.
        expected: u64,
    },
    /// `prev` is not the hash of the entry before: the chain was spliced.
    BrokenChain,
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::Unreadable(why) => write!(f, "is unreadable: {why}"),
            EntryProblem::Edited => f.write_str("was edited: its hash does not match"),
            EntryProblem::OutOfOrder { expected } => write!(
                f,
                "is out of sequence (expected seq {expected}): entries were removed or reordered"
            ),
            EntryProblem::BrokenChain => {
                f.write_str("does not chain to the entry before: entries were removed or replaced")
            }
        }
    }
}

/// What is wrong with the head file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadProblem {
    /// The log has entries but no head file: it was deleted.
    Missing,
    /// The head file is not a well-formed head.
    Unreadable,
    /// The head's MAC does not match: it was edited.
    Forged,
    /// The head names a hash that is not the hash of the entry with its seq.
    Mismatch {
        /// The seq the head records.
        seq: u64,
    },
}

impl fmt::Display for HeadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadProblem::Missing => f.write_str("is missing although the log has entries"),
            HeadProblem::Unreadable => f.write_str("is unreadable"),
            HeadProblem::Forged => f.write_str("does not authenticate: it was edited"),
            HeadProblem::Mismatch { seq } => {
                write!(
                    f,
                    "does not match entry seq {seq} (line {seq}): it was replaced"
                )
            }
        }
    }
}

/// Why an audit log operation failed, or what [`verify`] found wrong.
#[derive(thiserror::Error, Debug)]
pub enum AuditError {
    /// An I/O operation on `path` failed.
    #[error("audit log I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// An entry of the log is damaged, edited, out of sequence or not chained.
    #[error("audit log line {line}{}: the entry {problem}", seq_note(*.seq))]
    Entry {
        /// Line number in the log, counting from 1.
        line: u64,
        /// The seq the line carries, when it could be read.
        seq: Option<u64>,
        /// What is wrong.
        problem: EntryProblem,
    },
    /// The last entries were removed: the head records a later entry than the log holds.
    #[error(
        "audit log line {line}: entries seq {line} to {head_seq} were removed \
         (the log ends at seq {last_seq}, its head records seq {head_seq})"
    )]
    Truncated {
        /// The line where the first missing entry should be.
        line: u64,
        /// The last seq in the log (0 if empty).
        last_seq: u64,
        /// The seq the head records.
        head_seq: u64,
    },
    /// The head file is missing, damaged or does not match the log.
    #[error("audit head file {} {problem}", .path.display())]
    Head {
        /// The head file.
        path: PathBuf,
        /// What is wrong.
        problem: HeadProblem,
    },
    /// The entry would be longer than [`MAX_LINE`] as a line; nothing was appended.
    #[error("audit entry of {0} bytes is longer than the limit of {MAX_LINE} bytes")]
    EntryTooLong(usize),
    /// An earlier append failed in a way that leaves the log's state unknown; reopen it.
    #[error("the audit log failed an earlier append; reopen it")]
    Poisoned,
}

fn seq_note(seq: Option<u64>) -> String {
    seq.map(|seq| format!(" (seq {seq})")).unwrap_or_default()
}

/// Attaches the path an I/O operation was on to its error.
trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, AuditError>;
}

impl<T> AtPath<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, AuditError> {
        self.map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// `<log>.head`, or `<log>.head.tmp` while it is being replaced.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

fn sync_parent_dir(path: &Path) -> Result<(), AuditError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// The head file's content.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadRecord {
    seq: u64,
    hash: String,
    mac: String,
}

/// The latest entry according to the head file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

impl Head {
    fn mac(&self, key: &AuditKey) -> String {
        let mut ctx = hmac::Context::with_key(&key.0);
        ctx.update(HEAD_LABEL);
        ctx.update(&self.seq.to_le_bytes());
        ctx.update(&self.hash);
        encode_hex(ctx.sign().as_ref())
    }

    /// Reads and authenticates the head of the log at `path`; `None` if there is none.
    fn read(path: &Path, key: &AuditKey) -> Result<Option<Head>, AuditError> {
        let head_path = sibling(path, ".head");
        let mut text = Vec::new();
        match File::open(&head_path) {
            Ok(file) => file.take(1024).read_to_end(&mut text).at(&head_path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&head_path),
        };
        let problem = |problem| AuditError::Head {
            path: head_path.clone(),
            problem,
        };
        let record: HeadRecord =
            serde_json::from_slice(&text).map_err(|_| problem(HeadProblem::Unreadable))?;
        let mut head = Head {
            seq: record.seq,
            hash: [0; 32],
        };
        decode_hex(record.hash.as_bytes(), &mut head.hash)
            .ok_or_else(|| problem(HeadProblem::Unreadable))?;
        if head.mac(key) != record.mac || encode_hex(&head.hash) != record.hash {
            return Err(problem(HeadProblem::Forged));
        }
        Ok(Some(head))
    }

    /// Replaces the head of the log at `path` atomically and durably.
    fn write(&self, path: &Path, key: &AuditKey) -> Result<(), AuditError> {
        let record = HeadRecord {
            seq: self.seq,
            hash: encode_hex(&self.hash),
            mac: self.mac(key),
        };
        let mut text = serde_json::to_vec(&record).expect("a head serializes");
        text.push(b'\n');
        let tmp = sibling(path, ".head.tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .at(&tmp)?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .at(&tmp)?;
        let head_path = sibling(path, ".head");
        fs::rename(&tmp, &head_path).at(&head_path)?;
        sync_parent_dir(path)
    }

    /// Checks the head against the log's last entry.
    fn check(&self, path: &Path, last: &Head) -> Result<(), AuditError> {
        if self.seq > last.seq {
            return Err(AuditError::Truncated {
                line: last.seq + 1,
                last_seq: last.seq,
                head_seq: self.seq,
            });
        }
        if self.seq == last.seq && self.hash != last.hash {
            return Err(AuditError::Head {
                path: sibling(path, ".head"),
                problem: HeadProblem::Mismatch { seq: self.seq },
            });
        }
        Ok(())
    }
}

/// One line read from the log.
enum Line {
    /// A line ending in `\n` (without it in the buffer), or a line too long to be an entry.
    Complete,
    /// The end of the file, after a last line without `\n`: the torn tail of a crash.
    Torn,
    /// The end of the file.
    End,
}

/// Reads the next line into `buf`, reading at most [`MAX_LINE`] + 1 bytes.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        Ok(Line::End)
    } else if buf.last() == Some(&b'\n') {
        buf.pop();
        Ok(Line::Complete)
    } else if buf.len() > MAX_LINE {
        Ok(Line::Complete)
    } else {
        Ok(Line::Torn)
    }
}

/// Parses one complete line of the log.
fn parse_entry(line: &[u8], number: u64) -> Result<AuditEntry, AuditError> {
    let unreadable = |why: String| AuditError::Entry {
        line: number,
        seq: None,
        problem: EntryProblem::Unreadable(why),
    };
    if line.len() > MAX_LINE {
        return Err(unreadable(format!("longer than {MAX_LINE} bytes")));
    }
    serde_json::from_slice(line).map_err(|e| unreadable(e.to_string()))
}

/// An open audit log, ready to append. Single writer: open a log once per process.
pub struct AuditLog {
    file: File,
    path: PathBuf,
    key: AuditKey,
    last: Head,
    /// Scratch space for the lines of one append.
    lines: Vec<u8>,
    poisoned: bool,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("last_seq", &self.last.seq)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log at `path`, creating it (mode `0600`) and its head if it does not exist.
    ///
    /// Cuts off a torn last line and checks the last entry's hash and the head: a head
    /// ahead of the log ([`AuditError::Truncated`]), a missing or forged head and a damaged
    /// last entry are refused, and nothing is changed then. A head that lags (a crash after
    /// the log was synced) is brought up to date. Does not check the whole chain: see
    /// [`verify`].
    pub fn open(path: &Path, key: &AuditKey) -> Result<AuditLog, AuditError> {
        let file = match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => {
                sync_parent_dir(path)?;
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
                .read(true)
                .append(true)
                .open(path)
                .at(path)?,
            Err(e) => return Err(e).at(path),
        };
        let file_len = file.metadata().at(path)?.len();
        let keep = complete_len(&file, file_len).at(path)?;
        let last = match last_line(&file, keep).at(path)? {
            None => Head {
                seq: 0,
                hash: GENESIS,
            },
            Some(line) => {
                let checked = parse_entry(&line, 0).and_then(|entry| {
                    let hash = entry.check_hash(key).map_err(|problem| AuditError::Entry {
                        line: 0,
                        seq: Some(entry.seq),
                        problem,
                    })?;
                    Ok(Head {
                        seq: entry.seq,
                        hash,
                    })
                });
                match checked {
                    Ok(head) => head,
                    Err(mut e) => {
                        if let AuditError::Entry { line, .. } = &mut e {
                            *line = count_lines(&file, keep).at(path)?;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let head = Head::read(path, key)?;
        check_head(head.as_ref(), path, &last)?;
        if keep < file_len {
            file.set_len(keep)
                .and_then(|()| file.sync_data())
                .at(path)?;
        }
        if head != Some(last) {
            last.write(path, key)?;
        }
        Ok(AuditLog {
            file,
            path: path.to_path_buf(),
            key: key.clone(),
            last,
            lines: Vec::new(),
            poisoned: false,
        })
    }

    /// The seq of the last entry (0 while the log is empty).
    pub fn last_seq(&self) -> u64 {
        self.last.seq
    }

    /// Appends one entry; it is on disk (`fdatasync`) when this returns its seq.
    pub fn append(&mut self, entry: &NewEntry<'_>) -> Result<u64, AuditError> {
        self.append_batch(std::slice::from_ref(entry))
    }

    /// Appends `entries` with consecutive seqs in one write and one `fdatasync`; returns the
    /// seq of the last one (the current last seq if `entries` is empty). If any entry is too
    /// long, nothing is appended.
    pub fn append_batch(&mut self, entries: &[NewEntry<'_>]) -> Result<u64, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        if entries.is_empty() {
            return Ok(self.last.seq);
        }
        self.lines.clear();
        let mut last = self.last;
        for new in entries {
            let mut entry = AuditEntry {
                seq: last.seq + 1,
                time_ms: new.time_ms,
                actor: new.actor.to_owned(),
                role: new.role.to_owned(),
                action: new.action,
                room: new.room.map(str::to_owned),
                target: new.target.map(str::to_owned),
                detail: new.detail.map(str::to_owned),
                prev: encode_hex(&last.hash),
                hash: String::new(),
            };
            let tag = entry.mac(&self.key, &last.hash);
            entry.hash = encode_hex(tag.as_ref());
            let start = self.lines.len();
            serde_json::to_writer(&mut self.lines, &entry).expect("an entry serializes");
            let len = self.lines.len() - start;
            if len > MAX_LINE {
                return Err(AuditError::EntryTooLong(len));
            }
            self.lines.push(b'\n');
            last.seq = entry.seq;
            last.hash.copy_from_slice(tag.as_ref());
        }
        let written = (&self.file)
            .write_all(&self.lines)
            .and_then(|()| self.file.sync_data())
            .at(&self.path)
            .and_then(|()| last.write(&self.path, &self.key));
        if let Err(e) = written {
            self.poisoned = true;
            return Err(e);
        }
        self.last = last;
        Ok(last.seq)
    }
}

/// The length of `file` without a torn last line (one not ending in `\n`).
fn complete_len(file: &File, file_len: u64) -> io::Result<u64> {
    let mut end = file_len;
    let mut block = [0; 4096];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let block = &mut block[..(end - start) as usize];
        file.read_exact_at(block, start)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The last complete line of the first `len` bytes of `file` (which end in `\n`), without
/// its `\n`; at most [`MAX_LINE`] + 1 bytes of it.
fn last_line(file: &File, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let start = (len - 1).saturating_sub(MAX_LINE as u64 + 1);
    let mut tail = vec![0; (len - 1 - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Some(tail.split_off(i + 1))),
        None => Ok(Some(tail)),
    }
}

/// The number of complete lines in the first `len` bytes of `file` (for error reports).
fn count_lines(file: &File, len: u64) -> io::Result<u64> {
    let mut reader = BufReader::new(file.take(len));
    let (mut lines, mut buf) = (0, Vec::new());
    while let Line::Complete = read_line(&mut reader, &mut buf)? {
        lines += 1;
    }
    Ok(lines)
}

/// What [`verify`] found in a sound log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of entries.
    pub entries: u64,
    /// Seq of the last entry (0 if the log is empty).
    pub last_seq: u64,
}

/// Checks the log's head (if any) against its last entry; a non-empty log must have one.
fn check_head(head: Option<&Head>, path: &Path, last: &Head) -> Result<(), AuditError> {
    match head {
        Some(head) => head.check(path, last),
        None if last.seq > 0 => Err(AuditError::Head {
            path: sibling(path, ".head"),
            problem: HeadProblem::Missing,
        }),
        None => Ok(()),
    }
}

/// Checks the whole log at `path` and its head: every entry's hash, the seq sequence, the
/// chain of `prev` hashes, and that the head is authentic and not ahead of the log. The
/// first problem found is the error, naming the line and seq of the entry. An unterminated
/// last line (torn by a crash) is ignored. Read-only; safe while a writer appends.
pub fn verify(path: &Path, key: &AuditKey) -> Result<VerifyReport, AuditError> {
    // The head first: it is written after the log, so it is never ahead of what we read next.
    let head = Head::read(path, key)?;
    let mut reader = BufReader::new(File::open(path).at(path)?);
    let mut buf = Vec::new();
    let mut last = Head {
        seq: 0,
        hash: GENESIS,
    };
    while let Line::Complete = read_line(&mut reader, &mut buf).at(path)? {
        let number = last.seq + 1;
        let entry = parse_entry(&buf, number)?;
        let problem = |problem| AuditError::Entry {
            line: number,
            seq: Some(entry.seq),
            problem,
        };
        let hash = entry.check_hash(key).map_err(problem)?;
        if entry.seq != number {
            return Err(problem(EntryProblem::OutOfOrder { expected: number }));
        }
        if entry.prev != encode_hex(&last.hash) {
            return Err(problem(EntryProblem::BrokenChain));
        }
        last = Head { seq: number, hash };
        if let Some(head) = head.filter(|head| head.seq == number) {
            head.check(path, &last)?;
        }
    }
    check_head(head.as_ref(), path, &last)?;
    Ok(VerifyReport {
        entries: last.seq,
        last_seq: last.seq,
    })
}

/// Which entries [`query`] returns: those matching every field that is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only entries in this room.
    pub room: Option<String>,
    /// Only entries by this identity.
    pub actor: Option<String>,
    /// Only entries with this action.
    pub action: Option<Action>,
    /// Only entries about this target, e.g. a recording id.
    pub target: Option<String>,
    /// Only entries at or after this time (ms since the Unix epoch).
    pub from_ms: Option<u64>,
    /// Only entries before this time (exclusive).
    pub to_ms: Option<u64>,
}

impl Filter {
    /// Whether `entry` passes the filter.
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        fn same(want: &Option<String>, have: &Option<String>) -> bool {
            want.is_none() || want == have
        }
        same(&self.room, &entry.room)
            && self
                .actor
                .as_ref()
                .is_none_or(|actor| *actor == entry.actor)
            && self.action.is_none_or(|action| action == entry.action)
            && same(&self.target, &entry.target)
            && self.from_ms.is_none_or(|from| entry.time_ms >= from)
            && self.to_ms.is_none_or(|to| entry.time_ms < to)
    }
}

/// Reads the entries of the log at `path` that pass `filter`, in log order, without
/// checking hashes (that is [`verify`]'s job). An unreadable line ends the iteration with
/// an error; an unterminated last line is ignored.
pub fn query(path: &Path, filter: &Filter) -> Result<Query, AuditError> {
    Ok(Query {
        reader: BufReader::new(File::open(path).at(path)?),
        path: path.to_path_buf(),
        filter: filter.clone(),
        line: 0,
        buf: Vec::new(),
        done: false,
    })
}

/// The entries [`query`] found, read lazily from the log.
#[derive(Debug)]
pub struct Query {
    reader: BufReader<File>,
    path: PathBuf,
    filter: Filter,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl Iterator for Query {
    type Item = Result<AuditEntry, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let entry = match read_line(&mut self.reader, &mut self.buf).at(&self.path) {
                Ok(Line::Complete) => {
                    self.line += 1;
                    parse_entry(&self.buf, self.line)
                }
                Ok(Line::Torn | Line::End) => {
                    self.done = true;
                    return None;
                }
                Err(e) => Err(e),
            };
            match entry {
                Ok(entry) if self.filter.matches(&entry) => return Some(Ok(entry)),
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

impl std::iter::FusedIterator for Query {}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        audit_key(&MasterKey::from_bytes([7; 32]))
    }

    fn entry(i: u64) -> NewEntry<'static> {
        const ACTORS: [&str; 3] = ["dr.li", "nurse.wang", "admin"];
        const ROOMS: [Option<&str>; 3] = [Some("c-1"), Some("c-2"), None];
        NewEntry {
            time_ms: 1_000 * i,
            actor: ACTORS[i as usize % 3],
            role: "specialist",
            action: Action::ALL[i as usize % Action::ALL.len()],
            room: ROOMS[i as usize % 3],
            target: [Some("rec-42"), None][i as usize % 2],
            detail: (i % 4 == 1).then_some("track \"video\"\n"),
        }
    }

    /// A log of `n` entries in a fresh directory; returns the directory and the log's path.
    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, &key()).unwrap();
        for i in 1..=n {
            assert_eq!(log.append(&entry(i)).unwrap(), i);
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    #[test]
    fn appended_entries_verify_and_read_back() {
        let (_dir, path) = log_with(20);
        assert_eq!(
            verify(&path, &key()).unwrap(),
            VerifyReport {
                entries: 20,
                last_seq: 20
            }
        );
        let all: Vec<AuditEntry> = query(&path, &Filter::default())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(all.len(), 20);
        assert_eq!(all[0].prev, "0".repeat(64));
        assert_eq!(all[4].detail.as_deref(), Some("track \"video\"\n"));
        assert!(all.windows(2).all(|w| w[1].prev == w[0].hash));

        let mut log = AuditLog::open(&path, &key()).unwrap();
        assert_eq!(log.last_seq(), 20);
        assert_eq!(log.append_batch(&[entry(21), entry(22)]).unwrap(), 22);
        assert_eq!(verify(&path, &key()).unwrap().entries, 22);
    }

    #[test]
    fn editing_any_byte_names_that_entry() {
        let (dir, path) = log_with(4);
        let original = fs::read(&path).unwrap();
        for (offset, flip) in (0..original.len()).flat_map(|o| [(o, false), (o, true)]) {
            let mut bytes = original.clone();
            bytes[offset] = match (flip, bytes[offset]) {
                (true, byte) => byte ^ 0x20, // letter case, and worse for other bytes
                (false, b'0') => b'1',
                (false, _) => b'0',
            };
            let copy = dir.path().join("copy.jsonl");
            fs::write(&copy, &bytes).unwrap();
            fs::copy(sibling(&path, ".head"), sibling(&copy, ".head")).unwrap();
            let line = 1 + original[..offset].iter().filter(|&&b| b == b'\n').count() as u64;
            match verify(&copy, &key()) {
                Err(AuditError::Entry { line: l, .. })
                | Err(AuditError::Truncated { line: l, .. }) => {
                    assert_eq!(l, line, "byte {offset}")
                }
                other => panic!("byte {offset}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_wrong_key_fails_verification() {
        let (_dir, path) = log_with(3);
        let other = AuditKey::from_bytes(&[1; 32]);
        assert!(matches!(
            verify(&path, &other),
            Err(AuditError::Head {
                problem: HeadProblem::Forged,
                ..
            })
        ));
    }

    #[test]
    fn deleting_a_middle_line_is_detected() {
        let (_dir, path) = log_with(5);
        let mut all = lines(&path);
        all.remove(2);
        write_lines(&path, &all);
        let err = verify(&path, &key()).unwrap_err();
        assert!(
            matches!(
                err,
                AuditError::Entry {
                    line: 3,
                    seq: Some(4),
                    problem: EntryProblem::OutOfOrder { expected: 3 }
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "audit log line 3 (seq 4): the entry is out of sequence (expected seq 3): \
             entries were removed or reordered"
        );
    }

    #[test]
    fn reordering_two_lines_is_detected() {
        let (_dir, path) = log_with(5);
        let mut all = lines(&path);
        all.swap(1, 2);
        write_lines(&path, &all);
        assert!(matches!(
            verify(&path, &key()),
            Err(AuditError::Entry {
                line: 2,
                seq: Some(3),
                ..
            })
        ));
    }

    #[test]
    fn deleting_the_last_lines_is_detected_by_verify_and_open() {
        for removed in [1, 2, 5] {
            let (_dir, path) = log_with(5);
            let mut all = lines(&path);
            all.truncate(5 - removed);
            if all.is_empty() {
                fs::write(&path, "").unwrap();
            } else {
                write_lines(&path, &all);
            }
            let last_seq = 5 - removed as u64;
            for err in [
                verify(&path, &key()).unwrap_err(),
                AuditLog::open(&path, &key()).unwrap_err(),
            ] {
                assert!(
                    matches!(err, AuditError::Truncated { line, last_seq: l, head_seq: 5 }
                        if line == last_seq + 1 && l == last_seq),
                    "{err:?}"
                );
            }
        }
    }

    #[test]
    fn a_deleted_or_forged_head_is_detected() {
        let (_dir, path) = log_with(3);
        let head = sibling(&path, ".head");
        let text = fs::read_to_string(&head).unwrap();
        fs::write(&head, text.replace("\"seq\":3", "\"seq\":2")).unwrap();
        assert!(matches!(
            verify(&path, &key()),
            Err(AuditError::Head {
                problem: HeadProblem::Forged,
                ..
            })
        ));
        fs::remove_file(&head).unwrap();
        for err in [
            verify(&path, &key()).unwrap_err(),
            AuditLog::open(&path, &key()).unwrap_err(),
        ] {
            assert!(matches!(
                err,
                AuditError::Head {
                    problem: HeadProblem::Missing,
                    ..
                }
            ));
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_off_on_open() {
        let (_dir, path) = log_with(3);
        let mut bytes = fs::read(&path).unwrap();
        let intact = bytes.len();
        bytes.extend_from_slice(b"{\"seq\":4,\"time_ms\":4000,\"ac");
        fs::write(&path, &bytes).unwrap();
        assert_eq!(verify(&path, &key()).unwrap().last_seq, 3);
        let mut log = AuditLog::open(&path, &key()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), intact as u64);
        assert_eq!(log.append(&entry(4)).unwrap(), 4);
        assert_eq!(verify(&path, &key()).unwrap().last_seq, 4);
    }

    #[test]
    fn a_head_lagging_after_a_crash_is_brought_up_to_date() {
        let (_dir, path) = log_with(2);
        let head = fs::read(sibling(&path, ".head")).unwrap();
        AuditLog::open(&path, &key())
            .unwrap()
            .append(&entry(3))
            .unwrap();
        fs::write(sibling(&path, ".head"), head).unwrap(); // crash before the head rename
        assert_eq!(verify(&path, &key()).unwrap().last_seq, 3);
        let log = AuditLog::open(&path, &key()).unwrap();
        assert_eq!(log.last_seq(), 3);
        let mut all = lines(&path);
        all.pop();
        write_lines(&path, &all);
        assert!(matches!(
            verify(&path, &key()),
            Err(AuditError::Truncated { head_seq: 3, .. })
        ));
    }

    #[test]
    fn open_refuses_a_damaged_last_entry_and_names_its_line() {
        let (_dir, path) = log_with(3);
        let mut all = lines(&path);
        all[2] = all[2].replace("\"time_ms\":3000", "\"time_ms\":3001");
        write_lines(&path, &all);
        assert!(matches!(
            AuditLog::open(&path, &key()),
            Err(AuditError::Entry {
                line: 3,
                seq: Some(3),
                problem: EntryProblem::Edited
            })
        ));
        all[2] = "not json".into();
        write_lines(&path, &all);
        assert!(matches!(
            AuditLog::open(&path, &key()),
            Err(AuditError::Entry {
                line: 3,
                seq: None,
                problem: EntryProblem::Unreadable(_)
            })
        ));
    }

    #[test]
    fn an_oversized_entry_is_refused_and_nothing_is_appended() {
        let (_dir, path) = log_with(1);
        let mut log = AuditLog::open(&path, &key()).unwrap();
        let long = "x".repeat(MAX_LINE);
        let big = NewEntry {
            detail: Some(&long),
            ..entry(2)
        };
        assert!(matches!(
            log.append_batch(&[entry(2), big]),
            Err(AuditError::EntryTooLong(_))
        ));
        assert_eq!(log.append(&entry(2)).unwrap(), 2);
        assert_eq!(verify(&path, &key()).unwrap().last_seq, 2);
    }

    #[test]
    fn query_filters_by_room_actor_action_target_and_time() {
        let (_dir, path) = log_with(30);
        let seqs = |filter: Filter| -> Vec<u64> {
            query(&path, &filter)
                .unwrap()
                .map(|e| e.unwrap().seq)
                .collect()
        };
        assert_eq!(
            seqs(Filter {
                room: Some("c-2".into()),
                ..Filter::default()
            }),
            [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]
        );
        assert_eq!(
            seqs(Filter {
                actor: Some("dr.li".into()),
                from_ms: Some(10_000),
                to_ms: Some(21_000),
                ..Filter::default()
            }),
            [12, 15, 18]
        );
        assert_eq!(
            seqs(Filter {
                action: Some(Action::Download),
                ..Filter::default()
            }),
            // The fixture cycles through Action::ALL (16 actions).
            [8, 24]
        );
        assert_eq!(
            seqs(Filter {
                target: Some("rec-42".into()),
                to_ms: Some(7_000),
                ..Filter::default()
            }),
            [2, 4, 6]
        );
    }

    #[test]
    fn actions_parse_from_their_names() {
        for action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>(), Ok(action));
            assert_eq!(
                serde_json::to_string(&action).unwrap(),
                format!("\"{action}\"")
            );
        }
        assert!("delete_everything".parse::<Action>().is_err());
    }
}
