//! Sequencing of one stream's frames at the gateway: deduplication, ordering and durable
//! acknowledgement. A plain state machine: frames in, decisions out.
//!
//! Frames are delivered to viewers as soon as they arrive, in whatever order; they reach the
//! journal strictly in sequence order (frames ahead of a gap wait here); the agent is
//! acknowledged only up to what the journal has synced.

use bytes::Bytes;
use std::collections::BTreeMap;

/// How far ahead of the durable point a sequence number may be before it is refused.
pub const MAX_AHEAD: u64 = 1_000_000;
/// Most bytes held waiting for a gap to close; frames beyond are deferred (not acknowledged,
/// so the agent sends them again later).
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// Why a frame was refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The sequence number is more than [`MAX_AHEAD`] past the durable point.
    #[error("sequence number {seq} is too far ahead of {durable} (limit {MAX_AHEAD})")]
    OutOfWindow {
        /// The frame's sequence number.
        seq: u64,
        /// What is durable.
        durable: u64,
    },
}

/// What became of a received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// First time seen: deliver it to viewers (`late`: a newer frame arrived before it), and
    /// hand `append` (possibly empty: a gap is still open) to the journal, in order.
    New {
        /// Whether frames after it were already delivered.
        late: bool,
        /// Frames now contiguous with the journal, in sequence order.
        append: Vec<(u64, Bytes)>,
    },
    /// Seen before: drop it (the agent missed an acknowledgement).
    Duplicate,
    /// Too much is already waiting for a gap: not taken; the agent will send it again.
    Deferred,
}

/// One stream's sequencing state.
#[derive(Debug)]
pub struct StreamIngest {
    /// All frames up to here are synced in the journal.
    durable: u64,
    /// All frames up to here have been handed to the journal.
    appended: u64,
    /// Highest sequence number delivered.
    max_seen: u64,
    /// Frames received above a gap, waiting for it to close.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: usize,
}

impl StreamIngest {
    /// A stream whose journal holds every frame up to `durable`.
    pub fn new(durable: u64) -> Self {
        Self {
            durable,
            appended: durable,
            max_seen: durable,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    /// Every frame up to this sequence number is durable.
    pub fn durable_through(&self) -> u64 {
        self.durable
    }

    /// Highest sequence number received.
    pub fn max_seen(&self) -> u64 {
        self.max_seen
    }

    /// Frames waiting for a gap before them to close.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Takes one frame.
    pub fn receive(&mut self, seq: u64, frame: Bytes) -> Result<Received, IngestError> {
        if seq > self.durable.saturating_add(MAX_AHEAD) {
            return Err(IngestError::OutOfWindow {
                seq,
                durable: self.durable,
            });
        }
        if seq <= self.appended || self.pending.contains_key(&seq) {
            return Ok(Received::Duplicate);
        }
        let late = seq < self.max_seen;
        if seq == self.appended + 1 {
            self.appended = seq;
            let mut append = vec![(seq, frame)];
            while let Some(next) = self.pending.remove(&(self.appended + 1)) {
                self.pending_bytes -= next.len();
                self.appended += 1;
                append.push((self.appended, next));
            }
            self.max_seen = self.max_seen.max(seq);
            return Ok(Received::New { late, append });
        }
        if self.pending_bytes + frame.len() > MAX_PENDING_BYTES {
            return Ok(Received::Deferred);
        }
        self.pending_bytes += frame.len();
        self.pending.insert(seq, frame);
        self.max_seen = self.max_seen.max(seq);
        Ok(Received::New {
            late,
            append: Vec::new(),
        })
    }

    /// The journal has synced every frame up to `through`; returns the new acknowledgement
    /// point if it moved.
    pub fn synced(&mut self, through: u64) -> Option<u64> {
        let through = through.min(self.appended);
        (through > self.durable).then(|| {
            self.durable = through;
            through
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(seq: u64) -> Bytes {
        Bytes::from(seq.to_le_bytes().to_vec())
    }

    fn appended(r: Received) -> Vec<u64> {
        match r {
            Received::New { append, .. } => append.into_iter().map(|(s, _)| s).collect(),
            other => panic!("expected New, got {other:?}"),
        }
    }

    #[test]
    fn in_order_frames_go_straight_to_the_journal() {
        let mut s = StreamIngest::new(0);
        for seq in 1..=3 {
            assert_eq!(appended(s.receive(seq, b(seq)).unwrap()), vec![seq]);
        }
        assert_eq!(s.synced(3), Some(3));
        assert_eq!(s.synced(3), None);
        assert_eq!(s.durable_through(), 3);
    }

    #[test]
    fn live_first_then_backlog_fills_the_gap_in_order() {
        // Durable through 10; the link came back: live 21.. first, then backlog 11..20.
        let mut s = StreamIngest::new(10);
        for seq in 21..=25 {
            match s.receive(seq, b(seq)).unwrap() {
                Received::New { late, append } => {
                    assert!(!late);
                    assert!(append.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
        for seq in 11..=19 {
            match s.receive(seq, b(seq)).unwrap() {
                Received::New { late, append } => {
                    assert!(late, "backlog frame {seq} is late");
                    assert_eq!(append.len(), 1);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            appended(s.receive(20, b(20)).unwrap()),
            (20..=25).collect::<Vec<_>>()
        );
        assert_eq!(s.pending(), 0);
        // Acknowledgement never passes what was handed to the journal.
        assert_eq!(s.synced(100), Some(25));
    }

    #[test]
    fn duplicates_are_dropped_before_and_after_the_journal() {
        let mut s = StreamIngest::new(0);
        s.receive(1, b(1)).unwrap();
        s.receive(3, b(3)).unwrap();
        assert_eq!(s.receive(1, b(1)).unwrap(), Received::Duplicate);
        assert_eq!(s.receive(3, b(3)).unwrap(), Received::Duplicate);
        s.synced(1);
        assert_eq!(s.receive(1, b(1)).unwrap(), Received::Duplicate);
    }

    #[test]
    fn far_future_sequence_numbers_are_refused() {
        let mut s = StreamIngest::new(5);
        assert_eq!(
            s.receive(5 + MAX_AHEAD + 1, b(0)),
            Err(IngestError::OutOfWindow {
                seq: 5 + MAX_AHEAD + 1,
                durable: 5
            })
        );
        assert!(s.receive(5 + MAX_AHEAD, b(0)).is_ok());
    }

    #[test]
    fn a_full_reorder_buffer_defers_instead_of_growing() {
        let mut s = StreamIngest::new(0);
        let big = Bytes::from(vec![0u8; MAX_PENDING_BYTES / 2]);
        assert!(matches!(
            s.receive(3, big.clone()).unwrap(),
            Received::New { .. }
        ));
        assert!(matches!(
            s.receive(4, big.clone()).unwrap(),
            Received::New { .. }
        ));
        assert_eq!(s.receive(5, big).unwrap(), Received::Deferred);
        // The deferred frame is not remembered: sent again later, it is taken.
        assert_eq!(appended(s.receive(1, b(1)).unwrap()), vec![1]);
        assert_eq!(appended(s.receive(2, b(2)).unwrap()), vec![2, 3, 4]);
        assert_eq!(appended(s.receive(5, b(5)).unwrap()), vec![5]);
    }
}
