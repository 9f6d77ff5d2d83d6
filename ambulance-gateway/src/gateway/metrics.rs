//! The gateway's Prometheus metrics (prefix `medrelay_telemetry_`), exposed on `/metrics`.

use crate::gateway::viewer::StreamSummary;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

/// Counters the handlers bump and gauges the timer sets.
pub struct GatewayMetrics {
    /// Frames taken from agents (new, not duplicates).
    pub frames: IntCounter,
    /// Duplicate frames dropped.
    pub duplicates: IntCounter,
    /// Frames or requests refused, by error code.
    pub rejected: IntCounterVec,
    /// Messages dropped from slow viewers' queues.
    pub viewer_dropped: IntCounter,
    /// Journal append or sync failures.
    pub journal_errors: IntCounter,
    /// HL7 v2 messages received over MLLP, by acknowledgment code (`AA`, `AE`, `AR`).
    pub hl7_messages: IntCounterVec,
    /// Viewers connected.
    pub viewers: IntGauge,
    /// Time from a message being made for a viewer (as its frame is taken) until the
    /// viewer's socket accepted it, whether it was sent at once or queued first.
    pub fanout: Histogram,
    streams: IntGauge,
    streams_up: IntGauge,
    active_alarms: IntGauge,
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(format!("telemetry_{name}"), help).expect("metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(format!("telemetry_{name}"), help).expect("metric")
}

impl GatewayMetrics {
    /// Creates the metrics.
    pub fn new() -> Self {
        Self {
            frames: counter("frames_total", "Telemetry frames received (not duplicates)"),
            duplicates: counter(
                "duplicate_frames_total",
                "Duplicate telemetry frames dropped",
            ),
            rejected: IntCounterVec::new(
                Opts::new(
                    "telemetry_rejected_total",
                    "Refused frames and requests, by code",
                ),
                &["code"],
            )
            .expect("metric"),
            viewer_dropped: counter(
                "viewer_dropped_messages_total",
                "Messages dropped from slow viewers' queues",
            ),
            journal_errors: counter("journal_errors_total", "Journal append or sync failures"),
            hl7_messages: IntCounterVec::new(
                Opts::new(
                    "telemetry_hl7_messages_total",
                    "HL7 v2 messages received over MLLP, by acknowledgment code",
                ),
                &["ack"],
            )
            .expect("metric"),
            viewers: gauge("viewers", "Viewers connected"),
            fanout: Histogram::with_opts(
                HistogramOpts::new(
                    "telemetry_fanout_seconds",
                    "Ingest-to-viewer time inside the gateway: frame taken until written to the socket",
                )
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ]),
            )
            .expect("metric"),
            streams: gauge("streams", "Streams seen since start"),
            streams_up: gauge("streams_up", "Streams whose agent is connected"),
            active_alarms: gauge("active_alarms", "Alarms active or not yet acknowledged"),
        }
    }

    /// Adds every metric to the server's registry.
    pub fn register(&self, registry: &signaling::metrics::Metrics) {
        let all: [Box<dyn prometheus::core::Collector>; 11] = [
            Box::new(self.fanout.clone()),
            Box::new(self.frames.clone()),
            Box::new(self.duplicates.clone()),
            Box::new(self.rejected.clone()),
            Box::new(self.viewer_dropped.clone()),
            Box::new(self.journal_errors.clone()),
            Box::new(self.hl7_messages.clone()),
            Box::new(self.viewers.clone()),
            Box::new(self.streams.clone()),
            Box::new(self.streams_up.clone()),
            Box::new(self.active_alarms.clone()),
        ];
        for c in all {
            registry.register(c).expect("unique telemetry metric names");
        }
    }

    /// Sets the gauges from the streams list.
    pub fn observe(&self, list: &[StreamSummary]) {
        self.streams.set(list.len() as i64);
        self.streams_up
            .set(list.iter().filter(|s| s.link == "up").count() as i64);
        self.active_alarms
            .set(list.iter().map(|s| s.active_alarms as i64).sum());
    }
}
