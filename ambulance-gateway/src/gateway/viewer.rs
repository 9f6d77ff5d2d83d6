//! Viewers: the messages they exchange with the gateway and each viewer's bounded queue.

use crate::gateway::alarms::{Alarm, Limit};
use crate::wire::{Channel, StreamId, Vital};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Messages a viewer sends (JSON text).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ViewerRequest {
    /// First message: the viewer's token.
    Auth {
        /// A signed token (`er` or `specialist`).
        token: String,
    },
    /// Start receiving a stream: layout, limits, alarms, the last 10 s, then live data.
    Subscribe {
        /// The stream.
        stream: StreamId,
    },
    /// Stop receiving a stream.
    Unsubscribe {
        /// The stream.
        stream: StreamId,
    },
    /// Acknowledge an alarm (`er` only).
    AckAlarm {
        /// The stream.
        stream: StreamId,
        /// The alarm's id.
        alarm: u64,
    },
    /// Change a vital's limits (`er` only).
    SetLimits {
        /// The stream.
        stream: StreamId,
        /// The vital.
        vital: Vital,
        /// Lower limit, `null` for none.
        low: Option<f64>,
        /// Upper limit, `null` for none.
        high: Option<f64>,
    },
}

/// One stream in the `streams` list.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StreamSummary {
    /// The stream (ambulance) id.
    #[schema(value_type = String)]
    pub id: StreamId,
    /// `up` while its agent is connected, else `down`.
    pub link: &'static str,
    /// When data last arrived, ms since the Unix epoch (null: never).
    pub last_update_ms: Option<i64>,
    /// The latest value of each vital.
    #[schema(value_type = Object)]
    pub numerics: BTreeMap<Vital, f64>,
    /// Alarms active or not yet acknowledged.
    pub active_alarms: usize,
}

/// Messages the gateway sends (JSON text; waveforms go as binary frames).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ViewerEvent<'a> {
    /// Answer to `auth`.
    Welcome {
        /// The token's identity.
        identity: &'a str,
        /// The token's role.
        role: &'a str,
        /// Whether this viewer may acknowledge alarms and change limits.
        can_acknowledge: bool,
    },
    /// The streams this viewer may see.
    Streams {
        /// One entry per stream.
        streams: &'a [StreamSummary],
    },
    /// A stream's channels.
    Layout {
        /// The stream.
        stream: &'a StreamId,
        /// Its channels.
        channels: &'a [Channel],
    },
    /// Vital-sign values.
    Numerics {
        /// The stream.
        stream: &'a StreamId,
        /// The frame's sequence number.
        seq: u64,
        /// Capture time, ms since the Unix epoch.
        t_ms: i64,
        /// Arrived after newer data (back-filled after an outage).
        late: bool,
        /// Part of the history sent on subscribe.
        history: bool,
        /// Values by vital.
        values: &'a BTreeMap<Vital, f64>,
    },
    /// An alarm was raised, changed, cleared or acknowledged.
    Alarm {
        /// The stream.
        stream: &'a StreamId,
        /// The alarm.
        alarm: &'a Alarm,
    },
    /// A stream's alarm limits.
    Limits {
        /// The stream.
        stream: &'a StreamId,
        /// Limits by vital.
        limits: &'a BTreeMap<Vital, Limit>,
    },
    /// This viewer's queue overflowed and its oldest messages were dropped.
    Gap {
        /// The stream whose messages were dropped.
        stream: &'a StreamId,
        /// How many.
        dropped: u64,
    },
    /// A refused request.
    Error {
        /// Machine-readable code.
        code: &'a str,
        /// Explanation.
        message: &'a str,
    },
}

impl ViewerEvent<'_> {
    /// The event as a JSON text message.
    pub fn to_text(&self) -> Arc<str> {
        serde_json::to_string(self)
            .expect("viewer events serialize")
            .into()
    }
}

/// A message queued for a viewer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A JSON text message.
    Text(Arc<str>),
    /// A binary waveform frame.
    Binary(Bytes),
}

/// Messages queued per viewer.
pub const VIEWER_QUEUE: usize = 1024;

/// A viewer's bounded queue: when full, the oldest message goes, and the viewer is told with
/// a `gap` message before the next one it receives. Never blocks the producer.
#[derive(Debug)]
pub struct ViewerQueue {
    items: VecDeque<(Option<Arc<StreamId>>, Outgoing, Instant)>,
    capacity: usize,
    dropped: HashMap<Arc<StreamId>, u64>,
    dropped_total: u64,
}

impl ViewerQueue {
    /// An empty queue holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::with_capacity(capacity.min(64)),
            capacity,
            dropped: HashMap::new(),
            dropped_total: 0,
        }
    }

    /// Queues a message (about `stream`, if any) made at `at`, dropping the oldest when full.
    pub fn push(&mut self, stream: Option<&Arc<StreamId>>, msg: Outgoing, at: Instant) {
        if self.items.len() == self.capacity
            && let Some((old_stream, _, _)) = self.items.pop_front()
        {
            self.dropped_total += 1;
            if let Some(s) = old_stream {
                *self.dropped.entry(s).or_default() += 1;
            }
        }
        self.items.push_back((stream.cloned(), msg, at));
    }

    /// The next message to send and when it was queued: first a `gap` notice for any drops
    /// (no time), then the oldest.
    pub fn pop(&mut self) -> Option<(Outgoing, Option<Instant>)> {
        if let Some(stream) = self.dropped.keys().next().cloned() {
            let dropped = self.dropped.remove(&stream).unwrap_or_default();
            let gap = ViewerEvent::Gap {
                stream: &stream,
                dropped,
            };
            return Some((Outgoing::Text(gap.to_text()), None));
        }
        self.items.pop_front().map(|(_, m, at)| (m, Some(at)))
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped.is_empty()
    }

    /// Messages dropped since the queue was made.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_its_oldest_and_announces_the_gap() {
        let s: Arc<StreamId> = Arc::new("AMB-1".parse().unwrap());
        let mut q = ViewerQueue::new(3);
        let t = Instant::now();
        for i in 0..5u8 {
            q.push(Some(&s), Outgoing::Binary(Bytes::from(vec![i])), t);
        }
        assert_eq!(q.dropped_total(), 2);
        let Some((Outgoing::Text(gap), None)) = q.pop() else {
            panic!("gap first")
        };
        assert_eq!(&*gap, r#"{"type":"gap","stream":"AMB-1","dropped":2}"#);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop().map(|(m, _)| m)).collect();
        assert_eq!(
            rest,
            (2..5u8)
                .map(|i| Outgoing::Binary(Bytes::from(vec![i])))
                .collect::<Vec<_>>()
        );
        assert!(q.is_empty());
    }

    #[test]
    fn requests_parse_and_unknown_fields_are_refused() {
        let r: ViewerRequest = serde_json::from_str(
            r#"{"type":"set_limits","stream":"AMB-7","vital":"hr","low":40,"high":null}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            ViewerRequest::SetLimits {
                stream: "AMB-7".parse().unwrap(),
                vital: Vital::Hr,
                low: Some(40.0),
                high: None
            }
        );
        assert!(
            serde_json::from_str::<ViewerRequest>(r#"{"type":"subscribe","stream":"a b"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<ViewerRequest>(r#"{"type":"subscribe","stream":"A","x":1}"#)
                .is_err()
        );
    }
}
