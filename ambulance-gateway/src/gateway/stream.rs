//! One ambulance's stream at the gateway: sequencing, the ring buffer of recent data, alarm
//! rules and fan-out to its viewers. Plain state: frames, requests and time in; records for
//! the journal out, messages pushed onto viewers' queues (memory only, never blocking).

use crate::gateway::alarms::{Alarm, AlarmEngine, AlarmError, Limit};
use crate::gateway::ingest::{IngestError, Received, StreamIngest};
use crate::gateway::viewer::{Outgoing, StreamSummary, ViewerEvent, ViewerQueue};
use crate::wire::{
    self, Channel, FLAG_HISTORY, FLAG_LATE, Frame, Layout, Payload, StreamId, Vital,
};
use bytes::Bytes;
use ringbuf::HeapRb;
use ringbuf::traits::{Consumer, RingBuffer};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// History a viewer gets when it subscribes, in microseconds.
pub const HISTORY_US: i64 = 10_000_000;

/// Record kinds in a stream's journal.
pub mod record_kind {
    /// An encoded frame (flags cleared).
    pub const FRAME: u8 = 1;
    /// An alarm event (JSON).
    pub const ALARM: u8 = 2;
    /// A change of limits (JSON).
    pub const LIMITS: u8 = 3;
}

/// A record for the stream's journal.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRecord {
    /// One of [`record_kind`].
    pub kind: u8,
    /// Its bytes.
    pub payload: Bytes,
    /// For frames, the sequence number (acknowledged once synced).
    pub seq: Option<u64>,
}

/// What became of a message offered straight to a viewer's socket ([`ViewerSink::offer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Sent: the socket took it.
    Sent,
    /// Taken, but the socket did not take all of it yet: the viewer's writer must finish.
    Unflushed,
    /// Not taken (the socket is busy with the writer): queue it.
    Refused,
}

/// A viewer's socket as seen by the tasks that produce its messages: live data goes out
/// through it at once when the socket takes it without waiting, saving the writer task a
/// wake-up per message. It never blocks.
pub trait ViewerSink: Send + Sync {
    /// Offers `msg`, made at `at`, to the socket.
    fn offer(&self, msg: &Outgoing, at: std::time::Instant) -> Offer;
}

/// A viewer: its bounded queue and a wake-up for the task that writes its socket.
pub struct Viewer {
    /// Unique id.
    pub id: u64,
    queue: Mutex<ViewerQueue>,
    /// Signalled whenever something is queued.
    pub wake: tokio::sync::Notify,
    sink: std::sync::OnceLock<Box<dyn ViewerSink>>,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("direct", &self.sink.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Viewer {
    /// A viewer with an empty queue of `capacity` messages.
    pub fn new(capacity: usize) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::new(ViewerQueue::new(capacity)),
            wake: tokio::sync::Notify::new(),
            sink: std::sync::OnceLock::new(),
        })
    }

    /// Lets live data go straight to `sink` while nothing is queued (see [`ViewerSink`]).
    /// Its writer must hold the socket while it drains the queue, so that nothing overtakes
    /// what is queued. Only the first sink attached counts.
    pub fn attach(&self, sink: Box<dyn ViewerSink>) {
        let _ = self.sink.set(sink);
    }

    /// Queues a message and wakes the writer.
    pub fn push(&self, stream: Option<&Arc<StreamId>>, msg: Outgoing) {
        let now = std::time::Instant::now();
        self.queue
            .lock()
            .expect("viewer queue")
            .push(stream, msg, now);
        self.wake.notify_one();
    }

    /// Sends live data at once if nothing is queued and the socket takes it; queues it
    /// otherwise. Under the queue's lock, so it cannot overtake a message being queued.
    fn deliver(&self, stream: Option<&Arc<StreamId>>, msg: Outgoing, at: std::time::Instant) {
        let mut queue = self.queue.lock().expect("viewer queue");
        if let Some(sink) = self.sink.get()
            && queue.is_empty()
        {
            match sink.offer(&msg, at) {
                Offer::Sent => return,
                Offer::Unflushed => {
                    drop(queue);
                    self.wake.notify_one();
                    return;
                }
                Offer::Refused => {}
            }
        }
        queue.push(stream, msg, at);
        drop(queue);
        self.wake.notify_one();
    }

    /// Moves up to `max` queued messages, with the times they were queued, into `out` under
    /// one lock.
    pub fn drain_into(&self, out: &mut Vec<(Outgoing, Option<std::time::Instant>)>, max: usize) {
        let mut queue = self.queue.lock().expect("viewer queue");
        out.extend(std::iter::from_fn(|| queue.pop()).take(max));
    }

    /// Messages this viewer lost to overflow.
    pub fn dropped_total(&self) -> u64 {
        self.queue.lock().expect("viewer queue").dropped_total()
    }
}

/// Recent data kept for new viewers.
#[derive(Debug)]
struct RingEntry {
    seq: u64,
    capture_us: i64,
    /// A waveform frame with flags cleared, or the values of a numerics frame.
    data: RingData,
}

#[derive(Debug)]
enum RingData {
    Waveform(Bytes),
    Numerics(BTreeMap<Vital, f64>),
}

/// What a frame did.
#[derive(Debug, Default)]
pub struct FrameOutcome {
    /// Records to append to the journal, in order.
    pub records: Vec<JournalRecord>,
    /// Whether the frame was new (false: a duplicate or deferred).
    pub fresh: bool,
}

/// One ambulance's live stream.
pub struct AmbulanceStream {
    id: Arc<StreamId>,
    ingest: StreamIngest,
    alarms: AlarmEngine,
    ring: HeapRb<RingEntry>,
    layout: Option<(u64, Vec<Channel>)>,
    numerics: BTreeMap<Vital, f64>,
    viewers: Vec<Arc<Viewer>>,
    link_up: bool,
    last_update_ms: Option<i64>,
}

impl AmbulanceStream {
    /// A stream whose journal is durable through `durable`, keeping `ring_frames` recent
    /// frames.
    pub fn new(id: StreamId, durable: u64, ring_frames: usize, now_ms: i64) -> Self {
        Self {
            id: Arc::new(id),
            ingest: StreamIngest::new(durable),
            alarms: AlarmEngine::new(now_ms),
            ring: HeapRb::new(ring_frames.max(1)),
            layout: None,
            numerics: BTreeMap::new(),
            viewers: Vec::new(),
            link_up: false,
            last_update_ms: None,
        }
    }

    /// The stream's id.
    pub fn id(&self) -> &StreamId {
        &self.id
    }

    /// Every frame up to here is durable.
    pub fn durable_through(&self) -> u64 {
        self.ingest.durable_through()
    }

    /// The sequence number after the highest received: where a producer that numbers the
    /// stream's frames itself (the HL7 listener) continues.
    pub fn next_seq(&self) -> u64 {
        self.ingest.max_seen() + 1
    }

    /// The current channels, if a layout was received.
    pub fn layout(&self) -> Option<&[Channel]> {
        self.layout.as_ref().map(|(_, c)| c.as_slice())
    }

    /// Number of viewers subscribed.
    pub fn viewer_count(&self) -> usize {
        self.viewers.len()
    }

    /// Takes a frame received from the agent at `now_ms` (`bytes` is its encoding).
    pub fn on_frame(
        &mut self,
        frame: &Frame,
        bytes: Bytes,
        now_ms: i64,
    ) -> Result<FrameOutcome, IngestError> {
        let seq = frame.header.seq;
        let stored = if frame.header.flags == 0 {
            bytes
        } else {
            let mut b = bytes.to_vec();
            wire::set_flags(&mut b, 0);
            Bytes::from(b)
        };
        let (late, append) = match self.ingest.receive(seq, stored.clone())? {
            // Late: newer frames came first, or the agent sent it from its backlog (the first
            // backlog frame after a reconnect can arrive before any live one).
            Received::New { late, append } => (late || frame.header.flags & FLAG_LATE != 0, append),
            Received::Duplicate | Received::Deferred => return Ok(FrameOutcome::default()),
        };
        let mut records: Vec<JournalRecord> = append
            .into_iter()
            .map(|(seq, payload)| JournalRecord {
                kind: record_kind::FRAME,
                payload,
                seq: Some(seq),
            })
            .collect();
        self.last_update_ms = Some(now_ms);
        let capture_us = frame.header.capture_us;
        let mut changed = self.alarms.on_data(now_ms);
        match &frame.payload {
            Payload::Layout(layout) => {
                if self.layout.as_ref().is_none_or(|(s, _)| *s < seq) {
                    self.layout = Some((seq, layout.channels.clone()));
                    let text = self.layout_event();
                    self.broadcast(Outgoing::Text(text));
                }
            }
            Payload::Waveform(_) => {
                let out = if late {
                    let mut b = stored.to_vec();
                    wire::set_flags(&mut b, FLAG_LATE);
                    Bytes::from(b)
                } else {
                    stored.clone()
                };
                self.broadcast(Outgoing::Binary(out));
                self.ring.push_overwrite(RingEntry {
                    seq,
                    capture_us,
                    data: RingData::Waveform(stored),
                });
            }
            Payload::Numerics(values) => {
                let values: BTreeMap<Vital, f64> = values
                    .iter()
                    .filter_map(|n| Vital::from_code(n.code).map(|v| (v, n.value)))
                    .collect();
                if !late {
                    self.numerics.extend(values.iter().map(|(k, v)| (*k, *v)));
                    let list: Vec<(Vital, f64)> = values.iter().map(|(k, v)| (*k, *v)).collect();
                    changed.extend(self.alarms.on_values(now_ms, &list));
                }
                let text = ViewerEvent::Numerics {
                    stream: &self.id,
                    seq,
                    t_ms: capture_us.div_euclid(1000),
                    late,
                    history: false,
                    values: &values,
                }
                .to_text();
                self.broadcast(Outgoing::Text(text));
                self.ring.push_overwrite(RingEntry {
                    seq,
                    capture_us,
                    data: RingData::Numerics(values),
                });
            }
        }
        records.extend(self.publish_alarms(&changed));
        Ok(FrameOutcome {
            records,
            fresh: true,
        })
    }

    /// The journal synced every frame up to `through`; returns the new acknowledgement point.
    pub fn on_synced(&mut self, through: u64) -> Option<u64> {
        self.ingest.synced(through)
    }

    /// Time passed: the silence alarm. Returns journal records for raised alarms.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<JournalRecord> {
        let changed = self.alarms.on_tick(now_ms);
        self.publish_alarms(&changed)
    }

    /// Sets the layout recovered from the journal (sequence number `seq`).
    pub fn restore_layout(&mut self, seq: u64, layout: Layout) {
        self.layout = Some((seq, layout.channels));
    }

    /// Forgets frames handed to the journal but not yet durable (after a journal failure),
    /// so that they are taken again when the agent resends them.
    pub fn rewind_to_durable(&mut self) {
        self.ingest = StreamIngest::new(self.ingest.durable_through());
    }

    /// Whether the agent is connected.
    pub fn set_link(&mut self, up: bool) {
        self.link_up = up;
    }

    /// Adds a viewer: it gets the layout, limits, current alarms and the last
    /// [`HISTORY_US`] of data (flag `history`), then live data.
    pub fn subscribe(&mut self, viewer: Arc<Viewer>, now_ms: i64) {
        self.viewers.retain(|v| v.id != viewer.id);
        let id = Some(&self.id);
        if self.layout.is_some() {
            viewer.push(id, Outgoing::Text(self.layout_event()));
        }
        viewer.push(id, Outgoing::Text(self.limits_event()));
        for alarm in self.alarms.current() {
            viewer.push(
                id,
                Outgoing::Text(
                    ViewerEvent::Alarm {
                        stream: &self.id,
                        alarm,
                    }
                    .to_text(),
                ),
            );
        }
        let since = now_ms * 1000 - HISTORY_US;
        let mut recent: Vec<&RingEntry> =
            self.ring.iter().filter(|e| e.capture_us >= since).collect();
        recent.sort_by_key(|e| e.seq);
        for e in recent {
            let msg = match &e.data {
                RingData::Waveform(bytes) => {
                    let mut b = bytes.to_vec();
                    wire::set_flags(&mut b, FLAG_HISTORY);
                    Outgoing::Binary(Bytes::from(b))
                }
                RingData::Numerics(values) => Outgoing::Text(
                    ViewerEvent::Numerics {
                        stream: &self.id,
                        seq: e.seq,
                        t_ms: e.capture_us.div_euclid(1000),
                        late: false,
                        history: true,
                        values,
                    }
                    .to_text(),
                ),
            };
            viewer.push(id, msg);
        }
        self.viewers.push(viewer);
    }

    /// Removes a viewer.
    pub fn unsubscribe(&mut self, viewer: u64) {
        self.viewers.retain(|v| v.id != viewer);
    }

    /// Acknowledges an alarm for `who`; returns the journal record of the acknowledgement.
    pub fn acknowledge(
        &mut self,
        alarm: u64,
        who: &str,
        now_ms: i64,
    ) -> Result<Vec<JournalRecord>, AlarmError> {
        let alarm = self.alarms.acknowledge(alarm, who, now_ms)?;
        Ok(self.publish_alarms(&[alarm]))
    }

    /// Changes a vital's limits; returns the journal record of the change.
    pub fn set_limit(
        &mut self,
        vital: Vital,
        limit: Limit,
        who: &str,
        now_ms: i64,
    ) -> Result<Vec<JournalRecord>, AlarmError> {
        self.alarms.set_limit(vital, limit)?;
        let text = self.limits_event();
        self.broadcast(Outgoing::Text(text));
        let change = serde_json::json!({
            "vital": vital, "low": limit.low, "high": limit.high, "by": who, "at_ms": now_ms,
        });
        Ok(vec![JournalRecord {
            kind: record_kind::LIMITS,
            payload: Bytes::from(change.to_string()),
            seq: None,
        }])
    }

    /// The stream as listed to viewers.
    pub fn summary(&self) -> StreamSummary {
        StreamSummary {
            id: StreamId::clone(&self.id),
            link: if self.link_up { "up" } else { "down" },
            last_update_ms: self.last_update_ms,
            numerics: self.numerics.clone(),
            active_alarms: self.alarms.current().count(),
        }
    }

    fn layout_event(&self) -> Arc<str> {
        let channels = self
            .layout
            .as_ref()
            .map(|(_, c)| c.as_slice())
            .unwrap_or(&[]);
        ViewerEvent::Layout {
            stream: &self.id,
            channels,
        }
        .to_text()
    }

    fn limits_event(&self) -> Arc<str> {
        ViewerEvent::Limits {
            stream: &self.id,
            limits: self.alarms.limits(),
        }
        .to_text()
    }

    fn publish_alarms(&self, alarms: &[Alarm]) -> Vec<JournalRecord> {
        alarms
            .iter()
            .map(|alarm| {
                let text = ViewerEvent::Alarm {
                    stream: &self.id,
                    alarm,
                }
                .to_text();
                self.broadcast(Outgoing::Text(text));
                JournalRecord {
                    kind: record_kind::ALARM,
                    payload: Bytes::from(serde_json::to_vec(alarm).expect("alarm serializes")),
                    seq: None,
                }
            })
            .collect()
    }

    fn broadcast(&self, msg: Outgoing) {
        if self.viewers.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        for v in &self.viewers {
            v.deliver(Some(&self.id), msg.clone(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Block, Header, Kind, Numeric, Waveform};

    fn id() -> StreamId {
        "AMB-7".parse().unwrap()
    }

    fn frame(seq: u64, capture_ms: i64, payload: Payload) -> (Frame, Bytes) {
        let f = Frame {
            header: Header {
                kind: payload.kind(),
                flags: 0,
                stream: id(),
                seq,
                capture_us: capture_ms * 1000,
            },
            payload,
        };
        let bytes = Bytes::from(wire::encode(&f).unwrap());
        (f, bytes)
    }

    fn wave(seq: u64, ms: i64) -> (Frame, Bytes) {
        frame(
            seq,
            ms,
            Payload::Waveform(Waveform {
                blocks: vec![Block {
                    channel: 0,
                    samples: vec![seq as i32; 4],
                }],
            }),
        )
    }

    fn drain(v: &Viewer) -> Vec<Outgoing> {
        let mut out = Vec::new();
        v.drain_into(&mut out, usize::MAX);
        out.into_iter().map(|(m, _)| m).collect()
    }

    fn seqs(msgs: &[Outgoing]) -> Vec<(u64, u8)> {
        msgs.iter()
            .filter_map(|m| match m {
                Outgoing::Binary(b) => {
                    let h = wire::decode_header(b).unwrap();
                    Some((h.seq, h.flags))
                }
                Outgoing::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_new_viewer_gets_the_last_ten_seconds_then_live() {
        let mut s = AmbulanceStream::new(id(), 0, 1000, 0);
        let (f, b) = frame(
            1,
            0,
            Payload::Layout(Layout {
                channels: vec![Channel {
                    index: 0,
                    label: "II".into(),
                    unit: "mV".into(),
                    rate_hz: 100.0,
                    gain: 200.0,
                    baseline: 0.0,
                    mdc: 0,
                }],
            }),
        );
        s.on_frame(&f, b, 0).unwrap();
        for seq in 2..=31 {
            let (f, b) = wave(seq, (seq as i64 - 2) * 1000);
            s.on_frame(&f, b, 0).unwrap();
        }
        let v = Viewer::new(2000);
        s.subscribe(v.clone(), 30_000);
        let (f, b) = wave(32, 30_000);
        s.on_frame(&f, b, 30_000).unwrap();
        let msgs = drain(&v);
        let Outgoing::Text(first) = &msgs[0] else {
            panic!()
        };
        assert!(first.contains(r#""type":"layout""#));
        let got = seqs(&msgs);
        let history: Vec<_> = (22..=31).map(|s| (s, FLAG_HISTORY)).collect();
        assert_eq!(
            &got[..10],
            &history[..],
            "capture times 20..29 s are within 10 s"
        );
        assert_eq!(got[10], (32, 0));
    }

    #[test]
    fn backfilled_frames_reach_viewers_marked_late_and_the_journal_in_order() {
        let mut s = AmbulanceStream::new(id(), 0, 100, 0);
        let v = Viewer::new(100);
        s.subscribe(v.clone(), 0);
        drain(&v);
        let mut journal = Vec::new();
        for seq in [1, 2, 5, 6, 3, 4, 3] {
            let (f, b) = wave(seq, seq as i64);
            journal.extend(s.on_frame(&f, b, 10).unwrap().records);
        }
        assert_eq!(
            seqs(&drain(&v)),
            vec![
                (1, 0),
                (2, 0),
                (5, 0),
                (6, 0),
                (3, FLAG_LATE),
                (4, FLAG_LATE)
            ]
        );
        let order: Vec<u64> = journal.iter().filter_map(|r| r.seq).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.on_synced(6), Some(6));
    }

    #[test]
    fn a_backlog_frame_arriving_first_after_a_reconnect_is_still_late() {
        let mut s = AmbulanceStream::new(id(), 0, 100, 0);
        let v = Viewer::new(100);
        s.subscribe(v.clone(), 0);
        drain(&v);
        let (mut f, _) = wave(1, 1);
        f.header.flags = FLAG_LATE;
        let bytes = Bytes::from(wire::encode(&f).unwrap());
        let records = s.on_frame(&f, bytes, 10).unwrap().records;
        assert_eq!(seqs(&drain(&v)), vec![(1, FLAG_LATE)]);
        let stored = wire::decode_header(&records[0].payload).unwrap();
        assert_eq!(
            stored.flags, 0,
            "the journal keeps frames without transport flags"
        );
    }

    #[test]
    fn live_numerics_raise_alarms_for_viewers_and_the_journal_but_late_ones_do_not() {
        let mut s = AmbulanceStream::new(id(), 0, 100, 0);
        let v = Viewer::new(100);
        s.subscribe(v.clone(), 0);
        drain(&v);
        let hr = |value| {
            Payload::Numerics(vec![Numeric {
                code: Vital::Hr.code(),
                value,
            }])
        };
        let (f, b) = frame(2, 2000, hr(151.0));
        let out = s.on_frame(&f, b, 2000).unwrap();
        assert!(out.records.iter().any(|r| r.kind == record_kind::ALARM));
        let texts: Vec<String> = drain(&v)
            .into_iter()
            .filter_map(|m| match m {
                Outgoing::Text(t) => Some(t.to_string()),
                _ => None,
            })
            .collect();
        assert!(texts[0].contains(r#""type":"numerics""#));
        assert!(texts[1].contains(r#""type":"alarm""#) && texts[1].contains("HR 151 > 140"));
        assert_eq!(s.summary().active_alarms, 1);
        // Seq 1 arrives late with a low value: recorded, shown late, no alarm.
        let (f, b) = frame(1, 1000, hr(30.0));
        let out = s.on_frame(&f, b, 2100).unwrap();
        assert!(out.records.iter().all(|r| r.kind == record_kind::FRAME));
        assert_eq!(s.summary().numerics[&Vital::Hr], 151.0);
        assert_eq!(Kind::Numerics, f.header.kind);
    }

    /// A socket that takes what it is offered while `open`, and records it.
    #[derive(Default)]
    struct FakeSink {
        open: std::sync::atomic::AtomicBool,
        sent: Mutex<Vec<Outgoing>>,
    }

    impl ViewerSink for Arc<FakeSink> {
        fn offer(&self, msg: &Outgoing, _at: std::time::Instant) -> Offer {
            if !self.open.load(Ordering::Relaxed) {
                return Offer::Refused;
            }
            self.sent.lock().unwrap().push(msg.clone());
            Offer::Sent
        }
    }

    #[test]
    fn live_data_goes_straight_to_the_socket_but_never_ahead_of_the_queue() {
        let mut s = AmbulanceStream::new(id(), 0, 100, 0);
        let v = Viewer::new(100);
        let sink = Arc::new(FakeSink::default());
        v.attach(Box::new(sink.clone()));
        // The limits on subscribe are queued (the writer sends them), and the socket is busy:
        // live data waits behind them.
        s.subscribe(v.clone(), 0);
        for seq in 1..=2 {
            let (f, b) = wave(seq, seq as i64);
            s.on_frame(&f, b, 0).unwrap();
        }
        sink.open.store(true, Ordering::Relaxed);
        let (f, b) = wave(3, 3);
        s.on_frame(&f, b, 0).unwrap();
        assert!(
            sink.sent.lock().unwrap().is_empty(),
            "the queue is not empty"
        );
        let queued = drain(&v);
        assert_eq!(seqs(&queued), vec![(1, 0), (2, 0), (3, 0)]);
        // Once the queue is drained, live data is sent at once.
        for seq in 4..=5 {
            let (f, b) = wave(seq, seq as i64);
            s.on_frame(&f, b, 0).unwrap();
        }
        assert!(drain(&v).is_empty());
        assert_eq!(seqs(&sink.sent.lock().unwrap()), vec![(4, 0), (5, 0)]);
    }

    #[test]
    fn a_stalled_viewer_loses_its_own_oldest_data_only() {
        let mut s = AmbulanceStream::new(id(), 0, 100, 0);
        let slow = Viewer::new(4);
        let fast = Viewer::new(100);
        s.subscribe(slow.clone(), 0);
        s.subscribe(fast.clone(), 0);
        drain(&slow);
        drain(&fast);
        for seq in 1..=10 {
            let (f, b) = wave(seq, seq as i64);
            s.on_frame(&f, b, 0).unwrap();
        }
        assert_eq!(seqs(&drain(&fast)).len(), 10);
        let slow_msgs = drain(&slow);
        let Outgoing::Text(gap) = &slow_msgs[0] else {
            panic!()
        };
        assert!(gap.contains(r#""dropped":6"#));
        assert_eq!(seqs(&slow_msgs), vec![(7, 0), (8, 0), (9, 0), (10, 0)]);
    }
}
