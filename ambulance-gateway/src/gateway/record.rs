//! A stream's durable record as read back from its journal: the frames in sequence order,
//! each once, and the alarm events. The base of every export (FHIR, EDF+).

use crate::gateway::alarms::Alarm;
use crate::gateway::stream::record_kind;
use crate::wire::{self, Frame, Kind};
use recorder::journal::{JournalError, Records};
use recorder::journal_seal::JournalKey;
use std::collections::BTreeMap;
use tracing::warn;

/// A time window on capture times, µs since the Unix epoch (inclusive bounds; `None`: open).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Earliest capture time kept.
    pub from_us: Option<i64>,
    /// Latest capture time kept.
    pub to_us: Option<i64>,
}

impl Window {
    fn contains(&self, t: i64) -> bool {
        self.from_us.is_none_or(|f| t >= f) && self.to_us.is_none_or(|u| t <= u)
    }
}

/// What a stream's journal holds.
#[derive(Debug, Default)]
pub struct StreamRecord {
    /// Frames in sequence order, each sequence number once. Layout frames are always kept;
    /// waveform and numerics frames only when their capture time is in the window.
    pub frames: Vec<Frame>,
    /// Alarm events (raise, clear, acknowledgement) in the order they were recorded.
    pub alarms: Vec<Alarm>,
}

impl StreamRecord {
    /// Reads `records` (blocking file IO), opening each with `seal` when the journal is
    /// sealed, keeping what falls in `window`. A record that fails authentication is skipped
    /// with a warning.
    pub fn collect(
        records: Records,
        window: Window,
        seal: Option<&JournalKey>,
    ) -> Result<Self, JournalError> {
        let mut frames = BTreeMap::new();
        let mut alarms = Vec::new();
        for record in records {
            let mut record = record?;
            if let Some(key) = seal {
                match key.open(record.kind, &record.payload) {
                    Ok(plain) => record.payload = plain,
                    Err(e) => {
                        warn!("skipping a journal record: {e}");
                        continue;
                    }
                }
            }
            match record.kind {
                record_kind::FRAME => match wire::decode(&record.payload) {
                    Ok(f)
                        if f.header.kind == Kind::Layout
                            || window.contains(f.header.capture_us) =>
                    {
                        frames.entry(f.header.seq).or_insert(f);
                    }
                    Ok(_) => {}
                    Err(e) => warn!("skipping an undecodable frame in a journal: {e}"),
                },
                record_kind::ALARM => match serde_json::from_slice::<Alarm>(&record.payload) {
                    Ok(a) if window.contains(a.raised_at_ms * 1000) => alarms.push(a),
                    Ok(_) => {}
                    Err(e) => warn!("skipping an unreadable alarm in a journal: {e}"),
                },
                _ => {}
            }
        }
        Ok(Self {
            frames: frames.into_values().collect(),
            alarms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Block, Header, Payload, Waveform};
    use recorder::journal::{Journal, JournalOptions};

    fn frame(seq: u64, t: i64) -> Vec<u8> {
        wire::encode(&Frame {
            header: Header {
                kind: Kind::Waveform,
                flags: 0,
                stream: "AMB-1".parse().unwrap(),
                seq,
                capture_us: t,
            },
            payload: Payload::Waveform(Waveform {
                blocks: vec![Block {
                    channel: 0,
                    samples: vec![seq as i32],
                }],
            }),
        })
        .unwrap()
    }

    #[test]
    fn frames_come_back_once_in_order_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        // A journal failure can leave a batch written twice: 2 and 3 repeat.
        for (seq, t) in [(1, 10), (2, 20), (3, 30), (2, 20), (3, 30), (4, 40)] {
            j.append(record_kind::FRAME, &frame(seq, t)).unwrap();
        }
        j.sync().unwrap();
        let all = StreamRecord::collect(j.records().unwrap(), Window::default(), None).unwrap();
        let seqs: Vec<u64> = all.frames.iter().map(|f| f.header.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        let window = Window {
            from_us: Some(20),
            to_us: Some(30),
        };
        let some = StreamRecord::collect(j.records().unwrap(), window, None).unwrap();
        let seqs: Vec<u64> = some.frames.iter().map(|f| f.header.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
    }
}
