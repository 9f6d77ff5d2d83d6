//! A crash-safe, append-only journal of records.
//!
//! A journal is a directory of segment files, `00000000000000000001.seg`,
//! `00000000000000000002.seg`, …, each a sequence of records:
//!
//! | size | field |
//! | --- | --- |
//! | 4 | payload length, u32 little-endian |
//! | 4 | CRC-32C of the kind byte followed by the payload, u32 little-endian |
//! | 1 | kind |
//! | length | payload |
//!
//! **Durability.** [`Journal::append`] only buffers. [`Journal::sync`] writes the buffer and
//! `fdatasync`s the segment, and also fsyncs the directory when a segment file was created
//! since the last sync. Rolling to a new segment syncs the full one before the new file is
//! created, so every segment but the last is complete on disk. [`FilesystemSync`] does the
//! same for many journals at once, with one `syncfs`.
//!
//! **Recovery.** [`Journal::open`] checks the last segment record by record. Damage at its
//! end is the torn tail of writes that were never synced, and is cut off (the file is
//! truncated to the last valid record and synced): a record cut short, a stretch of zeros
//! (blocks a power loss did not write), or bytes from which no valid record can be read
//! until the end of the file. Damage followed by a valid record is corruption of data that
//! may have been acknowledged, and opening fails with [`JournalError::Corrupt`]. Earlier
//! segments are checked as they are read ([`Journal::records`]); damage there, even at their
//! end, is [`JournalError::Corrupt`].
//!
//! A journal has a single writer: do not open one directory twice at the same time.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::iter::FusedIterator;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Largest payload of one record, in bytes (16 MiB).
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Bytes in front of each payload on disk: length, CRC and kind.
pub const RECORD_HEADER_LEN: usize = 9;
/// Default [`JournalOptions::segment_bytes`] (16 MiB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Appends are gathered in memory up to this size before they are written to the file.
const WRITE_BUFFER: usize = 64 * 1024;
/// Read buffer of the segment readers.
const READ_BUFFER: usize = 64 * 1024;
/// Granularity of the zero-filled holes that a power loss can leave in a file.
const SECTOR: u64 = 512;
/// Most bytes checksummed while looking for a valid record after a damaged one.
const RESYNC_BUDGET: u64 = 1 << 30;

/// How a [`Journal`] lays out its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// A segment rolls over before it would grow past this size. A record larger than this
    /// gets a segment of its own.
    pub segment_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// One record read back from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The kind byte given to [`Journal::append`].
    pub kind: u8,
    /// The payload given to [`Journal::append`].
    pub payload: Vec<u8>,
    /// The id of the segment that holds the record.
    pub segment: u64,
}

/// Why a journal operation failed.
#[derive(thiserror::Error, Debug)]
pub enum JournalError {
    /// An I/O operation on `path` (a segment file or the directory) failed. `path` is empty
    /// when the error was converted from a bare [`io::Error`].
    #[error("journal I/O error{}: {source}", on_path(.path))]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// A record that is not at the torn tail of the journal is damaged: data that may have
    /// been acknowledged is unreadable. Nothing is dropped; the journal needs attention.
    #[error("journal segment {segment} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// Id of the damaged segment.
        segment: u64,
        /// Byte offset of the damaged record in the segment file.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload is longer than [`MAX_PAYLOAD`]; nothing was appended.
    #[error("a record payload of {0} bytes is larger than the limit of {MAX_PAYLOAD} bytes")]
    RecordTooLarge(usize),
    /// An earlier write or sync failed in a way that leaves the state on disk unknown (for
    /// example a failed `fdatasync`); the journal refuses to append or sync until reopened.
    #[error("the journal failed an earlier write or sync; reopen it")]
    Poisoned,
}

impl From<io::Error> for JournalError {
    /// An I/O error without the path it happened on.
    fn from(source: io::Error) -> Self {
        JournalError::Io {
            path: PathBuf::new(),
            source,
        }
    }
}

fn on_path(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" on {}", path.display())
    }
}

/// Attaches the path an I/O operation was on to its error.
trait AtPath<T> {
    fn at(self, path: &Path) -> Result<T, JournalError>;
}

impl<T> AtPath<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, JournalError> {
        self.map_err(|source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// An append-only journal of records in a directory of segment files (see the
/// [module documentation](self) for the format and the crash guarantees).
pub struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    /// Ids of the segments on disk, ascending; the last one is `current`.
    segments: Vec<u64>,
    /// The segment appended to.
    current: u64,
    /// Path of the current segment.
    path: PathBuf,
    /// The current segment, opened for appending.
    file: File,
    /// Bytes written to `file`; always the end of a whole record.
    file_len: u64,
    /// Encoded records not yet written to `file`.
    buf: Vec<u8>,
    /// `file` has data that has not been synced.
    file_unsynced: bool,
    /// A segment file was created (or the directory itself) since the last sync.
    dir_unsynced: bool,
    /// A failure left the file in an unknown state.
    poisoned: bool,
    /// The device of the filesystem the journal is on.
    device: u64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("segments", &self.segments)
            .field("written", &self.file_len)
            .field("buffered", &self.buf.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the journal in `dir`, creating the directory and the first segment if needed.
    ///
    /// Recovers from a crash: a torn or partially written record at the end of the last
    /// segment is cut off (the file is truncated to the last valid record, then synced).
    /// Damage in the last segment that a valid record follows is [`JournalError::Corrupt`].
    /// Only the last segment is checked here; the others are checked as they are read.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        let existed = dir.is_dir();
        fs::create_dir_all(dir).at(dir)?;
        if !existed {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let device = fs::metadata(dir).at(dir)?.dev();
        let mut segments = list_segments(dir)?;
        let (current, file, file_len, dir_unsynced) = match segments.last() {
            Some(&id) => {
                let (file, len) = recover_segment(dir, id)?;
                (id, file, len, false)
            }
            None => {
                let file = create_segment(dir, 1)?;
                segments.push(1);
                (1, file, 0, true)
            }
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            options,
            segments,
            current,
            path: segment_path(dir, current),
            file,
            file_len,
            buf: Vec::new(),
            // What a previous process wrote may not be durable yet: the first sync syncs it.
            file_unsynced: true,
            dir_unsynced,
            poisoned: false,
            device,
        })
    }

    /// Appends one record. It is buffered in memory (and written to the file in batches) and
    /// is not durable until [`Journal::sync`]. Rolls to a new segment first when the current
    /// one would grow past [`JournalOptions::segment_bytes`] (which syncs the full segment).
    ///
    /// Returns the id of the segment that holds the record. On an error nothing is appended;
    /// records appended before stay buffered.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<u64, JournalError> {
        self.check_usable()?;
        if payload.len() > MAX_PAYLOAD {
            return Err(JournalError::RecordTooLarge(payload.len()));
        }
        let record_len = RECORD_HEADER_LEN + payload.len();
        let size = self.file_len + self.buf.len() as u64;
        if size > 0 && size + record_len as u64 > self.options.segment_bytes {
            self.roll()?;
        }
        if !self.buf.is_empty() && self.buf.len() + record_len > WRITE_BUFFER {
            self.write_buffer()?;
        }
        let len = u32::try_from(payload.len()).expect("MAX_PAYLOAD fits in u32");
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&checksum(kind, payload).to_le_bytes());
        self.buf.push(kind);
        self.buf.extend_from_slice(payload);
        Ok(self.current)
    }

    /// Writes the buffered records and makes everything appended so far durable: flush,
    /// `File::sync_data`, and an fsync of the directory when a segment file was created
    /// since the last sync.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        self.check_usable()?;
        self.write_buffer()?;
        self.sync_file()?;
        if self.dir_unsynced {
            sync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Reads every record on disk, oldest first: what was written by this journal (records
    /// still buffered by [`Journal::append`] are written by [`Journal::sync`]) or left by a
    /// previous process. The reader streams segment by segment and does not borrow the
    /// journal; it sees the records written when it was created. Damage is yielded as
    /// [`JournalError::Corrupt`], after which the reader ends.
    pub fn records(&self) -> Result<Records, JournalError> {
        self.records_from(0)
    }

    /// Like [`Journal::records`], for the segments with an id of at least `segment` only.
    pub fn records_from(&self, segment: u64) -> Result<Records, JournalError> {
        let pending: Vec<(u64, Option<u64>)> = self
            .segments
            .iter()
            .filter(|&&id| id >= segment)
            .map(|&id| (id, (id == self.current).then_some(self.file_len)))
            .collect();
        Ok(Records {
            dir: self.dir.clone(),
            pending: pending.into_iter(),
            reader: None,
            done: false,
        })
    }

    /// Ids of the segments on disk, oldest first. The last one is appended to.
    pub fn segments(&self) -> Vec<u64> {
        self.segments.clone()
    }

    /// Deletes the whole segments with an id below `segment`, except the one appended to,
    /// oldest first, then syncs the directory.
    pub fn remove_segments_before(&mut self, segment: u64) -> Result<(), JournalError> {
        let limit = segment.min(self.current);
        let count = self.segments.partition_point(|&id| id < limit);
        if count == 0 {
            return Ok(());
        }
        let mut removed = 0;
        let mut result = Ok(());
        for &id in &self.segments[..count] {
            let path = segment_path(&self.dir, id);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    result = Err(e).at(&path);
                    break;
                }
            }
        }
        self.segments.drain(..removed);
        result?;
        sync_dir(&self.dir)
    }

    /// Deletes the whole segments, except the one appended to, last written before `cutoff`
    /// (retention), oldest first; returns how many. Stops at the first segment written since.
    pub fn expire_before(&mut self, cutoff: std::time::SystemTime) -> Result<usize, JournalError> {
        let mut first_kept = self.current;
        for &id in &self.segments {
            let path = segment_path(&self.dir, id);
            let modified = fs::metadata(&path).and_then(|m| m.modified()).at(&path)?;
            if id >= self.current || modified >= cutoff {
                first_kept = id;
                break;
            }
        }
        let before = self.segments.len();
        self.remove_segments_before(first_kept)?;
        Ok(before - self.segments.len())
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether anything written has not been synced.
    fn unsynced(&self) -> bool {
        self.file_unsynced || self.dir_unsynced
    }

    fn check_usable(&self) -> Result<(), JournalError> {
        if self.poisoned {
            Err(JournalError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Closes the current segment (written and synced) and starts the next one.
    fn roll(&mut self) -> Result<(), JournalError> {
        self.write_buffer()?;
        self.sync_file()?;
        let next = self
            .current
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment ids exhausted"))
            .at(&self.dir)?;
        self.file = create_segment(&self.dir, next)?;
        self.segments.push(next);
        self.current = next;
        self.path = segment_path(&self.dir, next);
        self.file_len = 0;
        self.file_unsynced = false;
        self.dir_unsynced = true;
        Ok(())
    }

    /// Writes the buffered records to the current segment.
    fn write_buffer(&mut self) -> Result<(), JournalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // A partial write would leave a torn record that later appends would bury in the
            // middle of the segment: cut it off, or give up on this journal.
            if self.file.set_len(self.file_len).is_err() {
                self.poisoned = true;
            }
            return Err(e).at(&self.path);
        }
        self.file_len += self.buf.len() as u64;
        self.file_unsynced = true;
        self.buf.clear();
        if self.buf.capacity() > 4 * WRITE_BUFFER {
            self.buf.shrink_to(WRITE_BUFFER);
        }
        Ok(())
    }

    /// `fdatasync`s the current segment if it has unsynced writes.
    fn sync_file(&mut self) -> Result<(), JournalError> {
        if self.file_unsynced {
            if let Err(e) = self.file.sync_data() {
                // After a failed fsync the kernel may have dropped the dirty pages: what is
                // on disk is unknown.
                self.poisoned = true;
                return Err(e).at(&self.path);
            }
            self.file_unsynced = false;
        }
        Ok(())
    }
}

/// Group commit across journals: makes many journals on one filesystem durable with a single
/// `syncfs` instead of an `fdatasync` per segment (each of which also flushes the disk's
/// cache). A telemetry gateway syncs hundreds of streams' journals every half second.
///
/// Errors: `syncfs` reports a writeback error on the filesystem once per open file
/// description, so the handle is opened once and kept; every error since then fails the
/// sync of all journals that depended on it, which are then left unusable like a journal
/// whose `fdatasync` failed.
#[derive(Debug)]
pub struct FilesystemSync {
    root: File,
    device: u64,
}

impl FilesystemSync {
    /// A handle on the filesystem that holds `dir` (a directory, created if missing).
    pub fn open(dir: &Path) -> Result<FilesystemSync, JournalError> {
        fs::create_dir_all(dir).at(dir)?;
        let root = File::open(dir).at(dir)?;
        let device = root.metadata().at(dir)?.dev();
        Ok(FilesystemSync { root, device })
    }

    /// Writes each journal's buffered records and makes everything appended to them durable,
    /// like [`Journal::sync`] on each; returns each journal's result, in order. Journals on
    /// another filesystem are synced one by one.
    pub fn sync(&self, journals: &mut [&mut Journal]) -> Vec<Result<(), JournalError>> {
        let mut results: Vec<Result<(), JournalError>> = journals
            .iter_mut()
            .map(|j| {
                j.check_usable()?;
                if j.device == self.device {
                    j.write_buffer()
                } else {
                    j.sync()
                }
            })
            .collect();
        let waiting = journals
            .iter()
            .zip(&results)
            .any(|(j, r)| r.is_ok() && j.device == self.device && j.unsynced());
        if !waiting {
            return results;
        }
        let failed = nix::unistd::syncfs(&self.root).err().map(io::Error::from);
        for (j, r) in journals.iter_mut().zip(results.iter_mut()) {
            if r.is_err() || j.device != self.device {
                continue;
            }
            match &failed {
                Some(e) if j.unsynced() => {
                    j.poisoned = true;
                    *r = Err(io::Error::new(e.kind(), e.to_string())).at(&j.path);
                }
                _ => {
                    j.file_unsynced = false;
                    j.dir_unsynced = false;
                }
            }
        }
        results
    }
}

impl Drop for Journal {
    /// Writes the buffered records to the file (without syncing them).
    fn drop(&mut self) {
        if !self.poisoned {
            let _ = self.write_buffer();
        }
    }
}

/// A streaming reader over the records of a journal's segments, from [`Journal::records`].
pub struct Records {
    dir: PathBuf,
    /// Segments still to read, with the length to read for the one being appended to.
    pending: std::vec::IntoIter<(u64, Option<u64>)>,
    reader: Option<SegmentReader>,
    done: bool,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("dir", &self.dir)
            .field("segment", &self.reader.as_ref().map(|r| r.id))
            .field("offset", &self.reader.as_ref().map(|r| r.offset))
            .finish_non_exhaustive()
    }
}

impl Iterator for Records {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let reader = match &mut self.reader {
                Some(reader) => reader,
                None => {
                    let Some((id, limit)) = self.pending.next() else {
                        self.done = true;
                        return None;
                    };
                    match SegmentReader::open(&self.dir, id, limit) {
                        Ok(reader) => self.reader.insert(reader),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
            };
            let mut payload = Vec::new();
            match reader.next_into(&mut payload) {
                Ok(Step::Record(kind)) => {
                    return Some(Ok(Record {
                        kind,
                        payload,
                        segment: reader.id,
                    }));
                }
                Ok(Step::End) => self.reader = None,
                Ok(Step::Damaged(damage)) => {
                    self.done = true;
                    return Some(Err(JournalError::Corrupt {
                        segment: reader.id,
                        offset: reader.offset,
                        reason: damage.reason(),
                    }));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl FusedIterator for Records {}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    Header,
    Length,
    Payload,
    Checksum,
}

impl Damage {
    fn reason(self) -> &'static str {
        match self {
            Damage::Header => "truncated record header",
            Damage::Length => "record length above the maximum",
            Damage::Payload => "truncated record payload",
            Damage::Checksum => "record checksum mismatch",
        }
    }
}

/// The outcome of reading one record.
enum Step {
    /// A valid record of this kind.
    Record(u8),
    /// The end of the segment, on a record boundary.
    End,
    /// A damaged record at the reader's offset.
    Damaged(Damage),
}

/// Reads the records of one segment file in order, up to a length.
struct SegmentReader {
    id: u64,
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset of the next record.
    offset: u64,
    /// Bytes of the file to read.
    limit: u64,
}

impl SegmentReader {
    /// Opens segment `id` to read `limit` bytes of it (all of it when `None`).
    fn open(dir: &Path, id: u64, limit: Option<u64>) -> Result<SegmentReader, JournalError> {
        let path = segment_path(dir, id);
        let file = File::open(&path).at(&path)?;
        let limit = match limit {
            Some(limit) => limit,
            None => file.metadata().at(&path)?.len(),
        };
        Ok(SegmentReader {
            id,
            path,
            reader: BufReader::with_capacity(READ_BUFFER, file),
            offset: 0,
            limit,
        })
    }

    /// Reads the next record, its payload into `payload`. After [`Step::Damaged`] the reader
    /// must not be used again.
    fn next_into(&mut self, payload: &mut Vec<u8>) -> Result<Step, JournalError> {
        let left = self.limit - self.offset;
        if left == 0 {
            return Ok(Step::End);
        }
        if left < RECORD_HEADER_LEN as u64 {
            return Ok(Step::Damaged(Damage::Header));
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        if let Some(damage) = self.read_exact(&mut header, Damage::Header)? {
            return Ok(Step::Damaged(damage));
        }
        let (len, crc, kind) = parse_header(&header);
        if len > MAX_PAYLOAD as u64 {
            return Ok(Step::Damaged(Damage::Length));
        }
        if len > left - RECORD_HEADER_LEN as u64 {
            return Ok(Step::Damaged(Damage::Payload));
        }
        payload.clear();
        payload.resize(len as usize, 0);
        if let Some(damage) = self.read_exact(payload, Damage::Payload)? {
            return Ok(Step::Damaged(damage));
        }
        if checksum(kind, payload) != crc {
            return Ok(Step::Damaged(Damage::Checksum));
        }
        self.offset += RECORD_HEADER_LEN as u64 + len;
        Ok(Step::Record(kind))
    }

    /// Fills `buf`; a file shorter than expected is `damage`.
    fn read_exact(
        &mut self,
        buf: &mut [u8],
        damage: Damage,
    ) -> Result<Option<Damage>, JournalError> {
        match self.reader.read_exact(buf) {
            Ok(()) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(damage)),
            Err(e) => Err(e).at(&self.path),
        }
    }
}

/// Length, CRC and kind of an encoded record header.
fn parse_header(header: &[u8; RECORD_HEADER_LEN]) -> (u64, u32, u8) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (u64::from(len), crc, header[8])
}

/// The CRC-32C stored with a record.
fn checksum(kind: u8, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload)
}

/// Checks the last segment, cuts a torn tail off and opens it for appending; returns the
/// file and its valid length.
fn recover_segment(dir: &Path, id: u64) -> Result<(File, u64), JournalError> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new().append(true).open(&path).at(&path)?;
    let size = file.metadata().at(&path)?.len();
    let mut reader = SegmentReader::open(dir, id, Some(size))?;
    let mut payload = Vec::new();
    loop {
        match reader.next_into(&mut payload)? {
            Step::Record(_) => {}
            Step::End => return Ok((file, size)),
            Step::Damaged(damage) => {
                let at = reader.offset;
                let mut tail = Vec::new();
                let mut f = File::open(&path).at(&path)?;
                io::Seek::seek(&mut f, io::SeekFrom::Start(at)).at(&path)?;
                f.read_to_end(&mut tail).at(&path)?;
                if !is_torn_tail(&tail, at) {
                    return Err(JournalError::Corrupt {
                        segment: id,
                        offset: at,
                        reason: damage.reason(),
                    });
                }
                file.set_len(at).at(&path)?;
                file.sync_data().at(&path)?;
                return Ok((file, at));
            }
        }
    }
}

/// Whether `tail`, the bytes of the last segment from a damaged record at file offset
/// `start` to the end, is the torn tail of unsynced writes rather than corruption.
///
/// Everything after a hole that a power loss left (zeros in whole sectors) was written
/// after the last sync, as a sync makes the whole file durable. Otherwise the damage is a
/// torn tail only if no valid record follows it.
fn is_torn_tail(tail: &[u8], start: u64) -> bool {
    // The bytes the damaged record claims.
    let span = if tail.len() < RECORD_HEADER_LEN {
        tail.len()
    } else {
        let header: &[u8; RECORD_HEADER_LEN] =
            tail[..RECORD_HEADER_LEN].try_into().expect("9 bytes");
        match parse_header(header).0 {
            len if len <= MAX_PAYLOAD as u64 => (RECORD_HEADER_LEN + len as usize).min(tail.len()),
            _ => RECORD_HEADER_LEN,
        }
    };
    // A sector overlapping the record that is zero from the record (or the sector's start)
    // to the sector's end (or the end of the file).
    let mut sector = start / SECTOR * SECTOR;
    while sector < start + span as u64 {
        let from = (sector.max(start) - start) as usize;
        let to = ((sector + SECTOR - start) as usize).min(tail.len());
        if tail[from..to].iter().all(|&b| b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    // Look for a valid record at every later offset. Crafted bytes could make that cost
    // quadratic: past a budget, assume one may follow (an error rather than lost data).
    let mut budget = RESYNC_BUDGET;
    !(1..tail.len()).any(|at| is_valid_record(&tail[at..], &mut budget).unwrap_or(true))
}

/// Whether `bytes` begins with a whole record whose checksum matches; `None` when checking
/// would exceed `budget` (bytes left to checksum), which it reduces.
fn is_valid_record(bytes: &[u8], budget: &mut u64) -> Option<bool> {
    let Some(header) = bytes.first_chunk::<RECORD_HEADER_LEN>() else {
        return Some(false);
    };
    let (len, crc, kind) = parse_header(header);
    if len > MAX_PAYLOAD as u64 || len > (bytes.len() - RECORD_HEADER_LEN) as u64 {
        return Some(false);
    }
    *budget = budget.checked_sub(len + 1)?;
    let payload = &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len as usize];
    Some(checksum(kind, payload) == crc)
}

/// The file name of segment `id`.
fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The id in a segment file name, `None` for other files.
fn parse_segment_name(name: &OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Ids of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let Some(id) = parse_segment_name(&entry.file_name()) else {
            continue;
        };
        if entry.file_type().at(&entry.path())?.is_file() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates segment `id`, which must not exist, for appending.
fn create_segment(dir: &Path, id: u64) -> Result<File, JournalError> {
    let path = segment_path(dir, id);
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .at(&path)
}

/// Makes the entries of `dir` (files created or removed) durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload that never contains zero bytes and differs from record to record.
    fn payload(i: usize) -> Vec<u8> {
        (0..(i * 7) % 50 + 1)
            .map(|j| ((i * 31 + j * 7) % 251 + 1) as u8)
            .collect()
    }

    fn small() -> JournalOptions {
        JournalOptions { segment_bytes: 256 }
    }

    /// Appends `n` records, syncs, and returns what `records()` should give.
    fn fill(journal: &mut Journal, from: usize, n: usize) -> Vec<Record> {
        let mut expected = Vec::new();
        for i in from..from + n {
            let kind = (i % 5) as u8;
            let segment = journal.append(kind, &payload(i)).unwrap();
            expected.push(Record {
                kind,
                payload: payload(i),
                segment,
            });
        }
        journal.sync().unwrap();
        expected
    }

    fn read_all(journal: &Journal) -> Vec<Record> {
        journal
            .records()
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn last_segment_path(journal: &Journal) -> PathBuf {
        segment_path(journal.dir(), *journal.segments().last().unwrap())
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0x40;
        fs::write(path, bytes).unwrap();
    }

    /// Offsets of the records of one segment.
    fn offsets(records: &[Record], segment: u64) -> Vec<u64> {
        let mut at = 0;
        let mut out = Vec::new();
        for r in records.iter().filter(|r| r.segment == segment) {
            out.push(at);
            at += (RECORD_HEADER_LEN + r.payload.len()) as u64;
        }
        out
    }

    #[test]
    fn retention_removes_whole_old_segments_but_never_the_current_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let expected = fill(&mut journal, 0, 60);
        let segments = journal.segments();
        assert!(segments.len() > 4, "{segments:?}");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        // The first three segments were last written an hour ago.
        for &id in &segments[..3] {
            let f = fs::File::options()
                .write(true)
                .open(segment_path(tmp.path(), id))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        let cutoff = old + std::time::Duration::from_secs(60);
        assert_eq!(journal.expire_before(cutoff).unwrap(), 3);
        assert_eq!(journal.segments(), segments[3..].to_vec());
        let kept: Vec<Record> = expected
            .into_iter()
            .filter(|r| r.segment > segments[2])
            .collect();
        assert_eq!(read_all(&journal), kept);
        // Everything is older than a cutoff in the future, but the current segment stays.
        let future = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        journal.expire_before(future).unwrap();
        assert_eq!(journal.segments(), vec![*segments.last().unwrap()]);
    }

    #[test]
    fn filesystem_sync_makes_many_journals_durable_and_reports_each() {
        let tmp = tempfile::tempdir().unwrap();
        let filesystem = FilesystemSync::open(tmp.path()).unwrap();
        let mut journals: Vec<Journal> = (0..4)
            .map(|i| Journal::open(&tmp.path().join(format!("s{i}")), small()).unwrap())
            .collect();
        let mut expected = Vec::new();
        for (n, journal) in journals.iter_mut().enumerate() {
            // Enough records to roll segments: their directories need syncing too.
            let records: Vec<Record> = (0..20 + n)
                .map(|i| Record {
                    kind: 1,
                    payload: payload(i),
                    segment: journal.append(1, &payload(i)).unwrap(),
                })
                .collect();
            expected.push(records);
        }
        // One journal is unusable, one is on "another filesystem" (synced on its own).
        journals[1].poisoned = true;
        journals[2].device = filesystem.device.wrapping_add(1);
        let results = filesystem.sync(&mut journals.iter_mut().collect::<Vec<_>>());
        assert!(matches!(results[1], Err(JournalError::Poisoned)));
        for i in [0, 2, 3] {
            assert!(results[i].is_ok(), "journal {i}: {:?}", results[i]);
            assert!(!journals[i].unsynced());
            assert_eq!(read_all(&journals[i]), expected[i]);
        }
        drop(journals);
        for i in [0, 2, 3] {
            let reopened = Journal::open(&tmp.path().join(format!("s{i}")), small()).unwrap();
            assert_eq!(read_all(&reopened), expected[i]);
        }
    }

    #[test]
    fn new_journal_has_one_empty_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let mut journal = Journal::open(&dir, JournalOptions::default()).unwrap();
        assert_eq!(journal.dir(), dir);
        assert_eq!(journal.segments(), vec![1]);
        assert!(dir.join("00000000000000000001.seg").is_file());
        assert_eq!(journal.records().unwrap().count(), 0);
        journal.sync().unwrap();
        assert_eq!(JournalOptions::default().segment_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn round_trip_across_segment_rolls() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let expected = fill(&mut journal, 0, 100);
        let segments = journal.segments();
        assert!(segments.len() > 5, "{segments:?}");
        assert_eq!(segments, (1..=segments.len() as u64).collect::<Vec<_>>());
        assert_eq!(read_all(&journal), expected);
        for &id in &segments {
            assert!(file_len(&segment_path(tmp.path(), id)) <= 256);
        }
        // Segment ids never go down and every record is in the segment append named.
        assert!(expected.windows(2).all(|w| w[0].segment <= w[1].segment));
        let tail: Vec<Record> = journal
            .records_from(segments[3])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<Record> = expected
            .iter()
            .filter(|r| r.segment >= segments[3])
            .cloned()
            .collect();
        assert_eq!(tail, want);
        assert_eq!(journal.records_from(u64::MAX).unwrap().count(), 0);
    }

    #[test]
    fn large_record_gets_a_segment_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        assert_eq!(journal.append(1, b"small").unwrap(), 1);
        assert_eq!(journal.append(2, &[7; 1000]).unwrap(), 2);
        assert_eq!(journal.append(3, b"after").unwrap(), 3);
        journal.sync().unwrap();
        let kinds: Vec<(u8, u64)> = read_all(&journal)
            .iter()
            .map(|r| (r.kind, r.segment))
            .collect();
        assert_eq!(kinds, vec![(1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn empty_payload_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        journal.append(9, &[]).unwrap();
        journal.sync().unwrap();
        assert_eq!(
            read_all(&journal),
            vec![Record {
                kind: 9,
                payload: vec![],
                segment: 1
            }]
        );
    }

    #[test]
    fn reopen_continues_in_the_last_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let mut expected = fill(&mut journal, 0, 22);
        let last = *journal.segments().last().unwrap();
        let last_len = file_len(&last_segment_path(&journal));
        assert!(
            last_len + 13 <= 256,
            "the test wants room in the last segment"
        );
        drop(journal);

        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        assert_eq!(journal.segments().last(), Some(&last));
        assert_eq!(read_all(&journal), expected);
        assert_eq!(journal.append(0, b"next").unwrap(), last);
        journal.sync().unwrap();
        assert_eq!(
            file_len(&segment_path(tmp.path(), last)),
            last_len + RECORD_HEADER_LEN as u64 + 4
        );
        expected.push(Record {
            kind: 0,
            payload: b"next".to_vec(),
            segment: last,
        });
        expected.extend(fill(&mut journal, 22, 30));
        assert!(expected.last().unwrap().segment > last);
        assert_eq!(read_all(&journal), expected);
        drop(journal);
        assert_eq!(
            read_all(&Journal::open(tmp.path(), small()).unwrap()),
            expected
        );
    }

    #[test]
    fn drop_writes_buffered_records() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        journal.append(1, b"one").unwrap();
        journal.append(2, b"two").unwrap();
        // Not written yet, so not read.
        assert_eq!(journal.records().unwrap().count(), 0);
        drop(journal);
        let journal = Journal::open(tmp.path(), small()).unwrap();
        let got: Vec<Vec<u8>> = read_all(&journal).into_iter().map(|r| r.payload).collect();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn a_reader_sees_the_records_written_when_it_was_made() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let expected = fill(&mut journal, 0, 10);
        let reader = journal.records().unwrap();
        fill(&mut journal, 10, 40);
        let got: Vec<Record> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn torn_last_record_is_cut_off_at_every_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let (expected, start, end) = {
            let mut journal = Journal::open(&tmp.path().join("orig"), small()).unwrap();
            let expected = fill(&mut journal, 0, 27);
            let end = file_len(&last_segment_path(&journal));
            let last = expected.last().unwrap();
            (
                expected.clone(),
                end - (RECORD_HEADER_LEN + last.payload.len()) as u64,
                end,
            )
        };
        let last_segment = expected.last().unwrap().segment;
        let kept = &expected[..expected.len() - 1];
        assert!(end - start > 20);
        for cut in start..end {
            let dir = tmp.path().join(format!("cut{cut}"));
            fs::create_dir(&dir).unwrap();
            for entry in fs::read_dir(tmp.path().join("orig")).unwrap() {
                let entry = entry.unwrap();
                fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
            let path = segment_path(&dir, last_segment);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut)
                .unwrap();

            let mut journal = Journal::open(&dir, small()).unwrap();
            assert_eq!(file_len(&path), start, "cut at {cut}");
            assert_eq!(read_all(&journal), kept, "cut at {cut}");
            let segment = journal.append(4, b"after recovery").unwrap();
            journal.sync().unwrap();
            drop(journal);

            let journal = Journal::open(&dir, small()).unwrap();
            let mut want = kept.to_vec();
            want.push(Record {
                kind: 4,
                payload: b"after recovery".to_vec(),
                segment,
            });
            assert_eq!(read_all(&journal), want, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_cut_off() {
        let mut lcg = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..700)
            .map(|_| {
                lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (lcg >> 56) as u8
            })
            .collect();
        let mut fake_record = Vec::new();
        fake_record.extend_from_slice(&3u32.to_le_bytes());
        fake_record.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        fake_record.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut half_record = Vec::new();
        half_record.extend_from_slice(&(payload(99).len() as u32).to_le_bytes());
        half_record.extend_from_slice(&checksum(1, &payload(99)).to_le_bytes());
        half_record.push(1);
        half_record.extend_from_slice(&payload(99)[..payload(99).len() / 2]);
        let cases: [(&str, Vec<u8>); 5] = [
            ("zeros", vec![0; 1000]),
            ("one zero", vec![0]),
            ("random", random),
            ("bad checksum", fake_record),
            ("half a record", half_record),
        ];
        for (name, garbage) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let mut journal = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            let expected = fill(&mut journal, 0, 30);
            let path = last_segment_path(&journal);
            drop(journal);
            let len = file_len(&path);
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(&garbage).unwrap();
            drop(file);

            let mut journal = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            assert_eq!(file_len(&path), len, "{name}");
            assert_eq!(read_all(&journal), expected, "{name}");
            journal.append(1, b"more").unwrap();
            journal.sync().unwrap();
            assert_eq!(read_all(&journal).len(), expected.len() + 1, "{name}");
        }
    }

    #[test]
    fn unwritten_sectors_cut_off_what_follows_them() {
        // A power loss can persist a later block of unsynced writes and not an earlier one,
        // which reads back as zeros: everything from there on was never synced.
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        let expected = fill(&mut journal, 0, 500);
        let path = last_segment_path(&journal);
        drop(journal);
        let mut bytes = fs::read(&path).unwrap();
        assert!(bytes.len() > 3 * 4096);
        bytes[4096..8192].fill(0);
        fs::write(&path, &bytes).unwrap();

        let at = offsets(&expected, 1);
        // The record holding byte 4096 (or starting there) is the first one damaged.
        let first_damaged = at.iter().rposition(|&o| o <= 4096).unwrap();
        let journal = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(file_len(&path), at[first_damaged]);
        assert_eq!(read_all(&journal), expected[..first_damaged]);
    }

    #[test]
    fn damage_in_the_middle_of_the_last_segment_is_corrupt() {
        // Payload, length, checksum and kind bytes of a record that valid records follow.
        for delta in [12, 0, 5, 8] {
            let tmp = tempfile::tempdir().unwrap();
            let mut journal = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
            let expected = fill(&mut journal, 0, 30);
            let path = last_segment_path(&journal);
            drop(journal);
            let at = offsets(&expected, 1)[10];
            flip_byte(&path, at + delta);
            let len = file_len(&path);

            match Journal::open(tmp.path(), JournalOptions::default()) {
                Err(JournalError::Corrupt {
                    segment, offset, ..
                }) => {
                    assert_eq!((segment, offset), (1, at), "byte {delta}");
                }
                other => panic!("byte {delta}: {other:?}"),
            }
            assert_eq!(file_len(&path), len, "nothing is cut off");
        }
    }

    #[test]
    fn damage_in_an_earlier_segment_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let expected = fill(&mut journal, 0, 60);
        drop(journal);
        let at = offsets(&expected, 2);
        flip_byte(&segment_path(tmp.path(), 2), at[1] + 11);

        let journal = Journal::open(tmp.path(), small()).unwrap();
        let got: Vec<Result<Record, JournalError>> = journal.records().unwrap().collect();
        let before = expected.iter().position(|r| r.segment == 2).unwrap() + 1;
        assert_eq!(got.len(), before + 1, "the reader stops at the damage");
        for (got, want) in got.iter().zip(&expected[..before]) {
            assert_eq!(got.as_ref().unwrap(), want);
        }
        match &got[before] {
            Err(JournalError::Corrupt {
                segment: 2,
                offset,
                reason,
            }) => {
                assert_eq!(*offset, at[1]);
                assert_eq!(*reason, "record checksum mismatch");
            }
            other => panic!("{other:?}"),
        }
        // Reading from a later segment skips the damage.
        assert!(journal.records_from(3).unwrap().all(|r| r.is_ok()));
    }

    #[test]
    fn a_truncated_earlier_segment_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        fill(&mut journal, 0, 60);
        drop(journal);
        let path = segment_path(tmp.path(), 1);
        let len = file_len(&path);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let journal = Journal::open(tmp.path(), small()).unwrap();
        let last = journal.records().unwrap().last().unwrap();
        assert!(
            matches!(last, Err(JournalError::Corrupt { segment: 1, .. })),
            "{last:?}"
        );
    }

    #[test]
    fn remove_segments_before_keeps_the_current_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let expected = fill(&mut journal, 0, 60);
        let segments = journal.segments();
        let current = *segments.last().unwrap();
        assert!(current >= 5);

        journal.remove_segments_before(3).unwrap();
        assert_eq!(journal.segments(), segments[2..]);
        assert!(!segment_path(tmp.path(), 1).exists());
        assert!(!segment_path(tmp.path(), 2).exists());
        let want: Vec<Record> = expected
            .iter()
            .filter(|r| r.segment >= 3)
            .cloned()
            .collect();
        assert_eq!(read_all(&journal), want);
        journal.remove_segments_before(2).unwrap();
        assert_eq!(journal.segments(), segments[2..]);

        journal.remove_segments_before(u64::MAX).unwrap();
        assert_eq!(journal.segments(), vec![current]);
        assert!(segment_path(tmp.path(), current).exists());
        assert_eq!(journal.append(1, b"x").unwrap(), current);
        journal.sync().unwrap();
        drop(journal);
        let journal = Journal::open(tmp.path(), small()).unwrap();
        assert_eq!(journal.segments(), vec![current]);
        assert_eq!(read_all(&journal).last().unwrap().payload, b"x");
    }

    #[test]
    fn record_too_large() {
        let tmp = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        let big = vec![3u8; MAX_PAYLOAD + 1];
        assert!(matches!(
            journal.append(1, &big),
            Err(JournalError::RecordTooLarge(n)) if n == MAX_PAYLOAD + 1
        ));
        journal.append(1, b"ok").unwrap();
        let segment = journal.append(2, &big[..MAX_PAYLOAD]).unwrap();
        journal.sync().unwrap();
        let got = read_all(&journal);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].segment, got[1].payload.len()),
            (segment, MAX_PAYLOAD)
        );
    }

    #[test]
    fn other_files_in_the_directory_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "notes.txt",
            "1.seg",
            "0000000000000000000a.seg",
            "99999999999999999999.seg",
        ] {
            fs::write(tmp.path().join(name), b"not a segment").unwrap();
        }
        let mut journal = Journal::open(tmp.path(), small()).unwrap();
        assert_eq!(journal.segments(), vec![1]);
        let expected = fill(&mut journal, 0, 5);
        assert_eq!(read_all(&journal), expected);
    }

    #[test]
    fn segment_names() {
        assert_eq!(
            segment_path(Path::new("d"), 1),
            Path::new("d/00000000000000000001.seg")
        );
        assert_eq!(
            parse_segment_name(OsStr::new("00000000000000000042.seg")),
            Some(42)
        );
        assert_eq!(
            parse_segment_name(OsStr::new("18446744073709551615.seg")),
            Some(u64::MAX)
        );
        assert_eq!(
            parse_segment_name(OsStr::new("+0000000000000000042.seg")),
            None
        );
        assert_eq!(
            parse_segment_name(OsStr::new("00000000000000000042.log")),
            None
        );
    }

    #[test]
    fn errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain");
        fs::write(&file, b"").unwrap();
        let err = Journal::open(&file.join("journal"), small()).unwrap_err();
        assert!(err.to_string().contains("plain"), "{err}");
        let bare = JournalError::from(io::Error::other("boom"));
        assert_eq!(bare.to_string(), "journal I/O error: boom");
    }
}
