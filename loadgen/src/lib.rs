//! A WebRTC load generator for SFUs: `medrelay load`.
//!
//! It fills N rooms with P publishers and S subscribers each. Every participant is a real
//! WebRTC endpoint (the `rtc` crate's sans-IO peer connection: ICE, DTLS-SRTP, RTCP
//! reports, NACK and TWCC feedback) on its own UDP socket, and one process stands in for
//! hundreds of them because nobody encodes or decodes:
//!
//! - publishers send a VP8 and Opus clip that ffmpeg encoded at start ([`clip`]), paced in
//!   real time, and note when each packet went out ([`stats::SendLog`]);
//! - subscribers decrypt, count and timestamp what arrives, find each payload in the clip
//!   by its fingerprint, and so measure the latency the SFU adds, publisher socket to
//!   subscriber socket, on this process's one clock ([`peer`]).
//!
//! The same scenario drives medrelay ([`medrelay`]) or Janus's VideoRoom ([`janus`]), so
//! the two SFUs see identical load.

pub mod clip;
pub mod janus;
pub mod medrelay;
pub mod peer;
pub mod stats;
mod videoroom;

use crate::clip::{Clip, ClipSpec};
use crate::peer::{MediaPlan, Timing};
use crate::stats::{Latency, Meter, SendLog};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::warn;

/// Participants whose signaling connects from one loopback address (medrelay allows 30
/// joins per address in 10 s).
const SEATS_PER_ADDRESS: usize = 25;

/// How long subscribers keep counting after publishers stop.
const DRAIN: Duration = Duration::from_secs(1);

/// The SFU under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sfu {
    /// medrelay's own SFU (signaling WebSocket at `/ws`).
    Medrelay,
    /// Janus 1.1's VideoRoom plugin (WebSocket API).
    Janus,
}

/// How to mint a room token for medrelay: `(room, identity, publishes)` to a token.
pub type TokenMinter = Arc<dyn Fn(&str, &str, bool) -> String + Send + Sync>;

/// One load run.
#[derive(Debug, Clone, clap::Args)]
pub struct Scenario {
    /// Which SFU.
    #[arg(long, value_enum, default_value = "medrelay")]
    pub sfu: Sfu,
    /// The SFU's signaling address: medrelay's HTTP listener or Janus's WebSocket.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: SocketAddr,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room; each also receives every other publisher of its room.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribers per room that only receive.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// How long to measure, once everyone has joined and a warm-up has passed.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up after the last join, not measured.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Participants joined per second.
    #[arg(long, default_value_t = 50)]
    pub join_rate: u32,
    /// Video bitrate of the clip, kbit/s (720p, 30 frames/s).
    #[arg(long, default_value_t = 1_500)]
    pub video_kbps: u32,
    /// Where the encoded clip is kept between runs.
    #[arg(long, default_value = "target/loadgen-clip")]
    pub clip_dir: PathBuf,
    /// Print a line of progress every second.
    #[arg(long)]
    pub progress: bool,
}

/// What a run measured, over the measured window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The SFU.
    pub sfu: Sfu,
    /// Rooms.
    pub rooms: usize,
    /// Publishers per room.
    pub publishers: usize,
    /// Subscribers per room.
    pub subscribers: usize,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Peer connections that connected, and that were expected to.
    pub connected_peers: u64,
    /// Peer connections the scenario sets up.
    pub expected_peers: u64,
    /// Peer connections that failed.
    pub failed_peers: u64,
    /// RTP packets publishers sent per second.
    pub sent_pps: f64,
    /// RTP packets subscribers received per second: the SFU's forwarded packets.
    pub received_pps: f64,
    /// What subscribers should receive per second if nothing is lost.
    pub expected_pps: f64,
    /// Received payload in Mbit/s.
    pub received_mbps: f64,
    /// RTP packets publishers sent over the whole run (joins to stop; publishers stop a
    /// second before subscribers, so nothing is left in flight).
    pub total_sent: u64,
    /// RTP packets subscribers received over the whole run: compare with the SFU's own
    /// count of forwarded packets.
    pub total_received: u64,
    /// Packets missing from received sequences (over the whole run).
    pub lost_packets: u64,
    /// Datagrams the kernel dropped at the load generator's own sockets (over the whole
    /// run): the load generator fell behind, so the run overstates the SFU's losses by as
    /// much (a NACK may still have repaired them).
    pub socket_drops: u64,
    /// Share of received packets whose latency was measured.
    pub timed_share: f64,
    /// Latency added by the SFU, publisher socket to subscriber socket.
    pub latency: Latency,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The clip could not be made.
    #[error(transparent)]
    Clip(#[from] clip::ClipError),
    /// No participant could join.
    #[error("no participant joined: {0}")]
    NobodyJoined(String),
    /// Janus refused the room.
    #[error(transparent)]
    Janus(#[from] janus::JanusError),
}

/// Counter values at one instant.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    sent: u64,
    received: u64,
    bytes: u64,
    timed: u64,
}

impl Snapshot {
    fn of(meter: &Meter) -> Self {
        Self {
            at: Instant::now(),
            sent: meter.sent_packets.load(Ordering::Relaxed),
            received: meter.received_packets.load(Ordering::Relaxed),
            bytes: meter.received_bytes.load(Ordering::Relaxed),
            timed: meter.timed_packets.load(Ordering::Relaxed),
        }
    }
}

/// The loopback address the `n`th participant's signaling connects from.
fn source_address(n: usize) -> IpAddr {
    let block = n / SEATS_PER_ADDRESS;
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        (1 + block / 250) as u8,
        (1 + block % 250) as u8,
    ))
}

/// An edge of the measured window, for a caller that samples the server around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Measuring starts (everyone joined, warm-up over).
    Start,
    /// Measuring ends (before anyone leaves).
    End,
}

/// Runs `scenario` and returns what it measured. `mint` makes medrelay tokens (unused for
/// Janus).
pub async fn run(scenario: &Scenario, mint: TokenMinter) -> Result<Summary, LoadError> {
    run_observed(scenario, mint, |_| {}).await
}

/// [`run`], calling `window` when the measured window starts and ends.
pub async fn run_observed(
    scenario: &Scenario,
    mint: TokenMinter,
    mut window: impl FnMut(Window),
) -> Result<Summary, LoadError> {
    let spec = ClipSpec {
        video_kbps: scenario.video_kbps,
        ..ClipSpec::default()
    };
    std::fs::create_dir_all(&scenario.clip_dir).map_err(|e| clip::ClipError::Read {
        path: scenario.clip_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let dir = scenario.clip_dir.clone();
    let clip = Arc::new(
        tokio::task::spawn_blocking(move || Clip::make(&dir, spec))
            .await
            .expect("clip task")?,
    );
    let publishers = scenario.rooms * scenario.publishers;
    let logs: Arc<Vec<SendLog>> = Arc::new((0..publishers).map(|_| SendLog::new(&clip)).collect());
    let meter = Arc::new(Meter::new());
    let timing = Timing {
        clip: clip.clone(),
        logs: logs.clone(),
        meter: meter.clone(),
    };
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let gap = Duration::from_secs(1) / scenario.join_rate.max(1);
    let progress = scenario.progress.then(|| {
        let meter = meter.clone();
        tokio::spawn(print_progress(meter))
    });

    match scenario.sfu {
        Sfu::Medrelay => {
            let mut n = 0;
            for room_index in 0..scenario.rooms {
                let room = format!("load-{room_index}");
                let seats = (0..scenario.publishers)
                    .map(|k| Some(room_index * scenario.publishers + k))
                    .chain((0..scenario.subscribers).map(|_| None));
                for publisher in seats {
                    let identity = match publisher {
                        Some(p) => format!("pub-{p}"),
                        None => format!("sub-{n}"),
                    };
                    let seat = medrelay::Seat {
                        server: scenario.server,
                        source: source_address(n),
                        room: room.clone(),
                        token: mint(&room, &identity, publisher.is_some()),
                        publisher,
                    };
                    let (clip, logs) = (clip.clone(), logs.clone());
                    let plan = move |tracks| MediaPlan {
                        clip,
                        tracks,
                        log: logs,
                        index: publisher.unwrap_or_default(),
                    };
                    let (timing, stop) = (timing.clone(), stop.clone());
                    tasks.spawn(async move {
                        medrelay::participate(seat, plan, timing, stop)
                            .await
                            .map_err(|e| e.to_string())
                    });
                    n += 1;
                    tokio::time::sleep(gap).await;
                }
            }
        }
        Sfu::Janus => {
            videoroom::fill_rooms(scenario, &clip, &logs, &timing, &stop, &mut tasks, gap).await?;
        }
    }

    tokio::time::sleep(scenario.warmup).await;
    if let Some(Ok(Err(e))) = tasks.try_join_next() {
        if meter.connected_peers.load(Ordering::Relaxed) == 0 {
            return Err(LoadError::NobodyJoined(e));
        }
        warn!(error = %e, "a participant failed");
    }
    let _ = meter.take_window();
    window(Window::Start);
    let start = Snapshot::of(&meter);
    let before = meter.total();
    tokio::time::sleep(scenario.duration).await;
    let end = Snapshot::of(&meter);
    window(Window::End);
    let mut latencies = meter.total();
    latencies.subtract(&before).expect("same bounds");
    // Publishers stop first; subscribers keep counting until what was in flight arrives.
    meter.publishing.store(false, Ordering::Relaxed);
    tokio::time::sleep(DRAIN).await;
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            warn!(error = %e, "a participant failed");
        }
    }
    if let Some(p) = progress {
        p.abort();
    }

    let seconds = end.at.duration_since(start.at).as_secs_f64();
    let per_second = |a: u64, b: u64| (b - a) as f64 / seconds;
    // Packets per second of one publisher's clip.
    let clip_pps = f64::from(clip.video.packets)
        / clip.video.frames.len() as f64
        / clip.video.frame_interval.as_secs_f64()
        + f64::from(clip.audio.packets)
            / clip.audio.frames.len() as f64
            / clip.audio.frame_interval.as_secs_f64();
    let receivers_per_publisher = (scenario.publishers - 1 + scenario.subscribers) as f64;
    let expected_peers = match scenario.sfu {
        // Each participant has a subscriber connection; publishers also a publisher one.
        Sfu::Medrelay => (scenario.rooms * (2 * scenario.publishers + scenario.subscribers)) as u64,
        // A publisher connection each, and one subscription per (receiver, feed).
        Sfu::Janus => {
            (scenario.rooms
                * (scenario.publishers
                    + scenario.publishers * (scenario.publishers - 1 + scenario.subscribers)))
                as u64
        }
    };
    let received = end.received - start.received;
    Ok(Summary {
        sfu: scenario.sfu,
        rooms: scenario.rooms,
        publishers: scenario.publishers,
        subscribers: scenario.subscribers,
        seconds,
        connected_peers: meter.connected_peers.load(Ordering::Relaxed),
        expected_peers,
        failed_peers: meter.failed_peers.load(Ordering::Relaxed),
        sent_pps: per_second(start.sent, end.sent),
        received_pps: per_second(start.received, end.received),
        expected_pps: clip_pps * publishers as f64 * receivers_per_publisher,
        received_mbps: per_second(start.bytes, end.bytes) * 8.0 / 1e6,
        total_sent: meter.sent_packets.load(Ordering::Relaxed),
        total_received: meter.received_packets.load(Ordering::Relaxed),
        lost_packets: meter.lost_packets.load(Ordering::Relaxed),
        socket_drops: meter.socket_drops.load(Ordering::Relaxed),
        timed_share: if received == 0 {
            0.0
        } else {
            (end.timed - start.timed) as f64 / received as f64
        },
        latency: Latency::of(&latencies),
    })
}

async fn print_progress(meter: Arc<Meter>) {
    let mut last = Snapshot::of(&meter);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = Snapshot::of(&meter);
        let seconds = now.at.duration_since(last.at).as_secs_f64();
        let window = Latency::of(&meter.take_window());
        eprintln!(
            "t={:>5.1}s peers={} sent={:.0}/s received={:.0}/s latency p50={}µs p99={}µs max={}µs",
            meter.epoch.elapsed().as_secs_f64(),
            meter.connected_peers.load(Ordering::Relaxed),
            (now.sent - last.sent) as f64 / seconds,
            (now.received - last.received) as f64 / seconds,
            window.p50_us,
            window.p99_us,
            window.max_us,
        );
        last = now;
    }
}
