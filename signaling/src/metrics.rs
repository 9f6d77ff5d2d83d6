//! Prometheus metrics: signaling counters plus the media loop's and registry's snapshot,
//! read at scrape time.

use crate::registry::Registry as Rooms;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sfu::shell::SfuHandle;
use std::sync::Arc;

/// Signaling's own counters and the registry they are exposed from.
pub struct Metrics {
    registry: Registry,
    /// Accepted joins.
    pub joins: IntCounter,
    /// Client messages handled.
    pub ws_messages: IntCounter,
    /// Protocol errors sent, by code.
    pub ws_errors: IntCounterVec,
    /// Participants suspended after losing their socket.
    pub suspensions: IntCounter,
    /// Participants resumed on a new socket.
    pub resumes: IntCounter,
}

impl Metrics {
    /// Registers every metric, including a collector that snapshots rooms and media.
    pub fn new(rooms: Arc<Rooms>, sfu: SfuHandle) -> Self {
        let registry = Registry::new_custom(Some("medrelay".into()), None).expect("valid prefix");
        let joins =
            IntCounter::new("joins_total", "Participants admitted to a room").expect("metric");
        let ws_messages =
            IntCounter::new("ws_messages_total", "Signaling messages received").expect("metric");
        let ws_errors = IntCounterVec::new(
            Opts::new(
                "ws_errors_total",
                "Signaling errors sent to clients, by code",
            ),
            &["code"],
        )
        .expect("metric");
        let suspensions = IntCounter::new(
            "suspensions_total",
            "Participants suspended after losing their signaling socket",
        )
        .expect("metric");
        let resumes = IntCounter::new(
            "resumes_total",
            "Participants resumed on a new signaling socket",
        )
        .expect("metric");
        for counter in [&joins, &suspensions, &resumes] {
            registry
                .register(Box::new(counter.clone()))
                .expect("register");
        }
        registry
            .register(Box::new(ws_messages.clone()))
            .expect("register");
        registry
            .register(Box::new(ws_errors.clone()))
            .expect("register");
        registry
            .register(Box::new(Snapshot { rooms, sfu }))
            .expect("register");
        Self {
            registry,
            joins,
            ws_messages,
            ws_errors,
            suspensions,
            resumes,
        }
    }

    /// Adds another component's metrics (e.g. the telemetry gateway's) to `/metrics`.
    pub fn register(&self, collector: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("utf-8 exposition")
    }
}

/// Reads rooms and media statistics when scraped.
struct Snapshot {
    rooms: Arc<Rooms>,
    sfu: SfuHandle,
}

pub(crate) fn gauge(name: &str, help: &str, value: u64) -> Vec<MetricFamily> {
    let g = IntGauge::new(name, help).expect("metric");
    g.set(value as i64);
    g.collect()
}

/// A gauge with one label, one sample per `(label value, value)`.
fn labelled_gauge(
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> Vec<MetricFamily> {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("metric");
    for (l, v) in values {
        g.with_label_values(&[l.as_str()]).set(*v as i64);
    }
    g.collect()
}

pub(crate) fn counter(name: &str, help: &str, value: u64) -> Vec<MetricFamily> {
    let c = IntCounter::new(name, help).expect("metric");
    c.inc_by(value);
    c.collect()
}

impl Collector for Snapshot {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (rooms, participants) = self.rooms.counts();
        let media = self.sfu.stats();
        let r = &media.router;
        [
            gauge("rooms", "Open rooms", rooms as u64),
            gauge("participants", "Participants in rooms", participants as u64),
            gauge(
                "suspended_participants",
                "Participants without a signaling socket, within their resume window",
                self.rooms.suspended_count() as u64,
            ),
            gauge("tracks", "Published tracks", media.tracks as u64),
            gauge(
                "subscriptions",
                "Forwarded track-subscriber pairs",
                media.subscriptions as u64,
            ),
            counter(
                "forwarded_packets_total",
                "RTP packets forwarded",
                r.forwarded_packets,
            ),
            counter(
                "forwarded_bytes_total",
                "RTP payload bytes forwarded",
                r.forwarded_bytes,
            ),
            counter(
                "dropped_packets_total",
                "RTP packets not forwarded to a subscriber",
                r.dropped_packets,
            ),
            counter(
                "fec_packets_total",
                "ULPFEC parity packets sent to subscribers whose link loses packets",
                r.fec_packets,
            ),
            counter(
                "nacks_received_total",
                "NACK feedback from subscribers",
                r.nacks_received,
            ),
            counter(
                "keyframe_requests_received_total",
                "PLI/FIR from subscribers",
                r.keyframe_requests_received,
            ),
            counter("plis_sent_total", "PLIs sent to publishers", r.plis_sent),
            counter(
                "unroutable_datagrams_total",
                "Datagrams matching no peer connection",
                r.unroutable_datagrams,
            ),
            counter(
                "dropped_chat_messages_total",
                "Chat messages refused",
                r.dropped_chat_messages,
            ),
            counter(
                "dropped_taps_total",
                "Recording taps dropped in the media loop",
                r.dropped_taps,
            ),
            counter(
                "layer_switches_total",
                "Simulcast layer switches made for subscribers",
                r.layer_switches,
            ),
            labelled_gauge(
                "subscriber_bandwidth_estimate_bps",
                "Estimated bandwidth towards each participant's subscriber connection",
                "participant",
                &r.estimates
                    .iter()
                    .map(|(p, bps)| (p.to_string(), *bps))
                    .collect::<Vec<_>>(),
            ),
            labelled_gauge(
                "subscriber_fec_group",
                "Video packets per ULPFEC parity packet towards each participant (0: none)",
                "participant",
                &r.fec_groups
                    .iter()
                    .map(|(p, group)| (p.to_string(), *group))
                    .collect::<Vec<_>>(),
            ),
            labelled_gauge(
                "video_subscriptions",
                "Video subscriptions by the simulcast layer they receive, or why paused",
                "layer",
                &r.video_subscriptions,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
