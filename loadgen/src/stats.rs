//! What the run measures: when each publisher sent each packet of the clip, what each
//! subscriber received, and the latency between the two on this process's one clock.

use crate::clip::{Clip, Kind};
use hdrhistogram::Histogram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Latencies above this (in µs) are clamped into the histogram's top bucket.
const MAX_LATENCY_US: u64 = 60_000_000;

/// When one publisher last sent each packet of the clip, in wall-clock ns since the run's
/// start (0: never). The clip loops every several seconds, so a slot is overwritten long after any
/// subscriber received its packet.
#[derive(Debug)]
pub struct SendLog {
    video: Box<[AtomicU64]>,
    audio: Box<[AtomicU64]>,
}

impl SendLog {
    /// An empty log sized for `clip`.
    pub fn new(clip: &Clip) -> Self {
        let slots = |n: u32| (0..n).map(|_| AtomicU64::new(0)).collect();
        Self {
            video: slots(clip.video.packets),
            audio: slots(clip.audio.packets),
        }
    }

    fn slots(&self, kind: Kind) -> &[AtomicU64] {
        match kind {
            Kind::Audio => &self.audio,
            Kind::Video => &self.video,
        }
    }

    /// Notes that packet `index` of the `kind` track is being sent at `at_ns`.
    pub fn sent(&self, kind: Kind, index: u32, at_ns: u64) {
        self.slots(kind)[index as usize].store(at_ns, Ordering::Relaxed);
    }

    /// When packet `index` was last sent, if it was.
    pub fn sent_at(&self, kind: Kind, index: u32) -> Option<u64> {
        let at = self
            .slots(kind)
            .get(index as usize)?
            .load(Ordering::Relaxed);
        (at != 0).then_some(at)
    }
}

/// The run's shared counters and latency histograms.
#[derive(Debug)]
pub struct Meter {
    /// The instant the run started.
    pub epoch: Instant,
    /// The same instant on the wall clock, ns since the Unix epoch: all `*_ns` times count
    /// from it.
    wall_epoch_ns: u64,
    /// RTP packets written by publishers.
    pub sent_packets: AtomicU64,
    /// RTP packets subscribers received (after SRTP).
    pub received_packets: AtomicU64,
    /// RTP payload bytes subscribers received.
    pub received_bytes: AtomicU64,
    /// Received packets whose send time was found (latency measured).
    pub timed_packets: AtomicU64,
    /// Received packets missing from their track's sequence (gaps never filled).
    pub lost_packets: AtomicU64,
    /// Datagrams the kernel dropped at the load generator's own sockets because it read
    /// them too slowly: its own overload, not the SFU's.
    pub socket_drops: AtomicU64,
    /// Peer connections that reached `connected` (each counted once, however often it
    /// reconnects).
    pub connected_peers: AtomicU64,
    /// Peer connections that failed.
    pub failed_peers: AtomicU64,
    /// Publishers send while this is true; the run clears it before the end so that what
    /// is in flight arrives before subscribers stop counting.
    pub publishing: AtomicBool,
    window: Mutex<Histogram<u64>>,
    total: Mutex<Histogram<u64>>,
}

impl Meter {
    /// A meter whose clock starts now.
    pub fn new() -> Self {
        let histogram = || Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid bounds");
        Self {
            epoch: Instant::now(),
            wall_epoch_ns: unix_ns(SystemTime::now()),
            sent_packets: AtomicU64::new(0),
            received_packets: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            timed_packets: AtomicU64::new(0),
            lost_packets: AtomicU64::new(0),
            socket_drops: AtomicU64::new(0),
            connected_peers: AtomicU64::new(0),
            failed_peers: AtomicU64::new(0),
            publishing: AtomicBool::new(true),
            window: Mutex::new(histogram()),
            total: Mutex::new(histogram()),
        }
    }

    /// The wall clock (the clock the kernel stamps received datagrams with) in ns since the
    /// Unix epoch, minus the run's start.
    pub fn wall_ns(&self) -> u64 {
        self.since_start(unix_ns(SystemTime::now()))
    }

    /// `unix_ns` (ns since the Unix epoch) in ns since the run's start.
    pub fn since_start(&self, unix_ns: u64) -> u64 {
        unix_ns.saturating_sub(self.wall_epoch_ns)
    }

    /// A histogram for one task to fill and [`Meter::merge`] from time to time.
    pub fn local_histogram(&self) -> Histogram<u64> {
        Histogram::new_with_max(MAX_LATENCY_US, 3).expect("valid bounds")
    }

    /// Adds a task's latencies (µs) to the run's and empties it.
    pub fn merge(&self, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        let _ = self.window.lock().expect("meter lock").add(&*local);
        let _ = self.total.lock().expect("meter lock").add(&*local);
        local.reset();
    }

    /// The latencies since the last call, and resets them.
    pub fn take_window(&self) -> Histogram<u64> {
        let mut window = self.window.lock().expect("meter lock");
        let taken = window.clone();
        window.reset();
        taken
    }

    /// Every latency of the run so far.
    pub fn total(&self) -> Histogram<u64> {
        self.total.lock().expect("meter lock").clone()
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Tracks one received RTP stream's sequence numbers to count gaps.
#[derive(Debug, Default)]
pub struct SequenceTracker {
    /// Extended highest sequence number seen, and the first.
    highest: Option<u64>,
    first: u64,
    received: u64,
}

impl SequenceTracker {
    /// Notes a received sequence number.
    pub fn observe(&mut self, seq: u16) {
        let extended = match self.highest {
            None => {
                self.first = u64::from(seq);
                u64::from(seq)
            }
            Some(highest) => {
                let cycle = highest & !0xffff;
                let candidates = [
                    cycle.wrapping_sub(0x1_0000) | u64::from(seq),
                    cycle | u64::from(seq),
                    (cycle + 0x1_0000) | u64::from(seq),
                ];
                *candidates
                    .iter()
                    .filter(|c| **c >= self.first)
                    .min_by_key(|c| c.abs_diff(highest))
                    .unwrap_or(&candidates[1])
            }
        };
        self.highest = Some(self.highest.map_or(extended, |h| h.max(extended)));
        self.received += 1;
    }

    /// Sequence numbers between the first and the highest that never arrived.
    pub fn lost(&self) -> u64 {
        match self.highest {
            None => 0,
            Some(h) => (h - self.first + 1).saturating_sub(self.received),
        }
    }
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    /// The figures of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_across_a_wrap_are_counted_once() {
        let mut t = SequenceTracker::default();
        for seq in (65_530u16..=65_535).chain(0..5) {
            if seq != 65_533 && seq != 2 {
                t.observe(seq);
            }
        }
        assert_eq!(t.lost(), 2);
        // A late arrival fills its gap.
        t.observe(2);
        assert_eq!(t.lost(), 1);
    }

    #[test]
    fn no_packets_means_no_loss() {
        assert_eq!(SequenceTracker::default().lost(), 0);
    }
}
