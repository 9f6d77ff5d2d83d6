//! The agent's disk spool: every frame is stored here before it is sent, and stays until the
//! gateway acknowledges it.
//!
//! The spool is a [`Journal`] in `<dir>/journal/` whose records are frames, each preceded by
//! the source position after it (so that a restart resumes the source exactly where the last
//! stored frame ended), and a small state file, `<dir>/state.json` (written atomically), that
//! keeps the next sequence number, the source position and how far the gateway acknowledged
//! for when the journal no longer holds the last frames.

use crate::wire::{self, StreamId};
use recorder::journal::{Journal, JournalError, JournalOptions};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use tracing::{debug, warn};

/// Record kind of a frame: `u64` little-endian source position, then the encoded frame.
const KIND_FRAME: u8 = 1;
/// Default size of the journal's segments: small, so that acknowledged data goes soon.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The journal failed.
    #[error("spool journal: {0}")]
    Journal(#[from] JournalError),
    /// The state file could not be read or written.
    #[error("spool state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Identity of the source the position belongs to.
    source: String,
    /// Sequence number of the next frame.
    next_seq: u64,
    /// Source index of the first sample not in a stored frame.
    position: u64,
    /// Every frame up to this one is acknowledged.
    acked_through: u64,
}

/// What was found in the spool when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Frames stored and not known to be acknowledged, oldest first: (sequence, bytes).
    pub frames: Vec<(u64, Vec<u8>)>,
    /// Sequence number for the next frame.
    pub next_seq: u64,
    /// Where the source resumes (0 when the source is not the one the spool last read).
    pub position: u64,
    /// Frames up to this one were acknowledged.
    pub acked_through: u64,
    /// The spool was empty: nothing tells where the stream's sequence stands.
    pub fresh: bool,
}

/// The spool (see the [module documentation](self)).
pub struct Spool {
    journal: Journal,
    state_path: PathBuf,
    state: State,
    /// (sequence, segment) of the stored frames not yet forgotten, oldest first.
    index: VecDeque<(u64, u64)>,
    /// (next sequence, position) after the last appended frame.
    appended: Option<(u64, u64)>,
    /// Segment of the last appended frame.
    last_segment: Option<u64>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir` for `stream`, reading from source `source`.
    pub fn open(
        dir: &Path,
        stream: &StreamId,
        source: &str,
        segment_bytes: u64,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let state_path = dir.join("state.json");
        let journal = Journal::open(&dir.join("journal"), JournalOptions { segment_bytes })?;
        let saved = read_state(&state_path)?;
        let mut index = VecDeque::new();
        let mut frames = Vec::new();
        let mut last: Option<(u64, u64)> = None;
        let mut foreign = 0usize;
        let mut last_segment = None;
        let acked_through = saved.as_ref().map_or(0, |s| s.acked_through);
        for record in journal.records()? {
            let record = record?;
            if record.kind != KIND_FRAME || record.payload.len() < 8 {
                continue;
            }
            let (pos, bytes) = record.payload.split_at(8);
            let position = u64::from_le_bytes(pos.try_into().expect("8 bytes"));
            let header = match wire::decode_header(bytes) {
                Ok(h) if &h.stream == stream => h,
                Ok(_) | Err(_) => {
                    foreign += 1;
                    continue;
                }
            };
            last = Some((header.seq + 1, position));
            last_segment = Some(record.segment);
            index.push_back((header.seq, record.segment));
            if header.seq > acked_through {
                frames.push((header.seq, bytes.to_vec()));
            }
        }
        if foreign > 0 {
            warn!(
                foreign,
                "the spool holds frames of another stream or unreadable ones; they are skipped"
            );
        }
        let fresh = saved.is_none() && last.is_none();
        let state = saved.unwrap_or_default();
        let same_source = state.source == source;
        let (next_seq, position) = match last {
            // The journal's last frame is newer than the state file.
            Some((next, pos)) if next > state.next_seq => (next, if same_source { pos } else { 0 }),
            _ => (
                state.next_seq.max(1),
                if same_source { state.position } else { 0 },
            ),
        };
        let mut spool = Spool {
            journal,
            state_path,
            state: State {
                source: source.to_owned(),
                next_seq,
                position,
                acked_through,
            },
            index,
            appended: None,
            last_segment,
        };
        if !fresh {
            spool.write_state()?;
        }
        spool.forget(acked_through)?;
        debug!(frames = frames.len(), next_seq, position, "spool opened");
        Ok((
            spool,
            Recovered {
                frames,
                next_seq,
                position,
                acked_through,
                fresh,
            },
        ))
    }

    /// Stores a frame (buffered until [`Spool::sync`]); `position` is the source index after it.
    pub fn append(&mut self, seq: u64, position: u64, frame: &[u8]) -> Result<(), SpoolError> {
        let mut payload = Vec::with_capacity(8 + frame.len());
        payload.extend_from_slice(&position.to_le_bytes());
        payload.extend_from_slice(frame);
        let segment = self.journal.append(KIND_FRAME, &payload)?;
        self.index.push_back((seq, segment));
        self.appended = Some((seq + 1, position));
        self.last_segment = Some(segment);
        Ok(())
    }

    /// Makes every appended frame durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.journal.sync()?;
        if let Some((next_seq, position)) = self.appended.take() {
            self.state.next_seq = next_seq;
            self.state.position = position;
        }
        Ok(())
    }

    /// Records where the stream stands before anything is appended (a fresh spool learns the
    /// next sequence number from the gateway).
    pub fn start_at(&mut self, next_seq: u64, position: u64) -> Result<(), SpoolError> {
        self.state.next_seq = next_seq;
        self.state.position = position;
        self.write_state()
    }

    /// Frames up to `through` are acknowledged: deletes the segments that hold only such
    /// frames (after saving the state they no longer give).
    pub fn forget(&mut self, through: u64) -> Result<(), SpoolError> {
        self.state.acked_through = self.state.acked_through.max(through);
        while self.index.front().is_some_and(|&(seq, _)| seq <= through) {
            self.index.pop_front();
        }
        let keep = match (self.index.front(), self.last_segment) {
            (Some(&(_, segment)), _) => segment,
            (None, Some(segment)) => segment,
            (None, None) => return Ok(()),
        };
        if self.journal.segments().first().is_some_and(|&s| s < keep) {
            self.write_state()?;
            self.journal.remove_segments_before(keep)?;
            debug!(before = keep, "acknowledged spool segments deleted");
        }
        Ok(())
    }

    /// Saves the state file now (at exit).
    pub fn save(&mut self) -> Result<(), SpoolError> {
        self.write_state()
    }

    fn write_state(&self) -> Result<(), SpoolError> {
        let err = |source| SpoolError::State {
            path: self.state_path.clone(),
            source,
        };
        let tmp = self.state_path.with_extension("json.tmp");
        let json = serde_json::to_vec(&self.state).expect("the state serializes");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(err)?;
        fs::rename(&tmp, &self.state_path).map_err(err)?;
        if let Some(dir) = self.state_path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

fn read_state(path: &Path) -> Result<Option<State>, SpoolError> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(Some(state)),
            Err(e) => {
                warn!(error = %e, "the spool's state file is unreadable; ignoring it");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SpoolError::State {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Frame, Header, Kind, Numeric, Payload, encode};

    fn stream() -> StreamId {
        "AMB-7".parse().unwrap()
    }

    fn frame(seq: u64) -> Vec<u8> {
        encode(&Frame {
            header: Header {
                kind: Kind::Numerics,
                flags: 0,
                stream: stream(),
                seq,
                capture_us: seq as i64,
            },
            payload: Payload::Numerics(vec![Numeric {
                code: 1,
                value: seq as f64,
            }]),
        })
        .unwrap()
    }

    fn segments(dir: &Path) -> usize {
        fs::read_dir(dir.join("journal")).unwrap().count()
    }

    #[test]
    fn a_fresh_spool_knows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, r) = Spool::open(dir.path(), &stream(), "src", SEGMENT_BYTES).unwrap();
        assert!(r.fresh);
        assert_eq!((r.next_seq, r.position, r.frames.len()), (1, 0, 0));
    }

    #[test]
    fn a_restart_recovers_unacked_frames_and_the_position() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), &stream(), "src", SEGMENT_BYTES).unwrap();
            s.start_at(1, 0).unwrap();
            for seq in 1..=10 {
                s.append(seq, seq * 14, &frame(seq)).unwrap();
            }
            s.sync().unwrap();
            s.forget(4).unwrap();
            // Appended but never synced: still written to the file when the process ends
            // (a kill -9 keeps what reached the OS; only a power loss could drop it).
            s.append(11, 154, &frame(11)).unwrap();
        }
        let (_, r) = Spool::open(dir.path(), &stream(), "src", SEGMENT_BYTES).unwrap();
        assert!(!r.fresh);
        assert_eq!(r.next_seq, 12);
        assert_eq!(r.position, 154);
        // The acknowledgement of 1..=4 was not saved (no segment was deleted): those come
        // back too, and the gateway's welcome will say they are durable.
        assert_eq!(r.frames.first().unwrap().0, 1);
        assert_eq!(r.frames.len(), 11);
        assert_eq!(r.frames[3].1, frame(4));
        // Another source starts over at position 0, and the sequence goes on.
        let (_, r) = Spool::open(dir.path(), &stream(), "other", SEGMENT_BYTES).unwrap();
        assert_eq!((r.next_seq, r.position), (12, 0));
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_the_state_file_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let small = 300;
        {
            let (mut s, _) = Spool::open(dir.path(), &stream(), "src", small).unwrap();
            s.start_at(1, 0).unwrap();
            for seq in 1..=40 {
                s.append(seq, 1000 + seq, &frame(seq)).unwrap();
                s.sync().unwrap();
            }
            let before = segments(dir.path());
            assert!(before > 5, "{before} segments");
            s.forget(20).unwrap();
            let after = segments(dir.path());
            assert!(after < before && after > 1, "{before} → {after}");
            s.forget(40).unwrap();
            assert_eq!(segments(dir.path()), 1, "the segment appended to stays");
        }
        let (mut s, r) = Spool::open(dir.path(), &stream(), "src", small).unwrap();
        assert!(r.frames.is_empty(), "all acknowledged");
        assert_eq!((r.next_seq, r.position, r.acked_through), (41, 1040, 40));
        s.append(41, 1041, &frame(41)).unwrap();
        s.sync().unwrap();
        drop(s);
        let (_, r) = Spool::open(dir.path(), &stream(), "src", small).unwrap();
        assert_eq!(r.frames.iter().map(|f| f.0).collect::<Vec<_>>(), vec![41]);
        assert_eq!((r.next_seq, r.position), (42, 1041));
    }

    #[test]
    fn the_state_file_covers_an_emptied_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = Spool::open(dir.path(), &stream(), "src", SEGMENT_BYTES).unwrap();
            s.start_at(501, 7200).unwrap();
        }
        fs::remove_dir_all(dir.path().join("journal")).unwrap();
        let (_, r) = Spool::open(dir.path(), &stream(), "src", SEGMENT_BYTES).unwrap();
        assert!(!r.fresh);
        assert_eq!((r.next_seq, r.position), (501, 7200));
    }
}
