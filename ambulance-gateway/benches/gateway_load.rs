//! The 1,000-ambulance benchmark of the telemetry gateway (issue 3, "Speed, in a benchmark";
//! results and how to read them in `docs/benchmarks.md`, section "Telemetry gateway").
//!
//! ```text
//! cargo bench -p ambulance-gateway --bench gateway_load [-- --ambulances 1000 --viewers 3 --seconds 30]
//! ```
//!
//! One process, two tokio runtimes:
//!
//! - the **server**: [`Gateway::start`] and [`http::routes`] served by axum (plain WebSocket)
//!   on 127.0.0.1, worker threads named `gw-rt`, journals in a temporary directory (the
//!   journal thread is `telemetry-journal`), tokens signed with a random secret;
//! - the **load**, worker threads named `load-rt`: N simulated ambulances on
//!   `/telemetry/ingest`, each sending its layout, then every 40 ms a waveform frame (12 leads
//!   × 20 samples, 500 Hz, a precomputed synthetic ECG) and every second a numerics frame;
//!   the ambulances' 40 ms cycles are staggered evenly. Each ambulance has V viewers on
//!   `/telemetry/view` with a specialist token for that ambulance only, subscribed to it.
//!
//! Viewers read only the header of each frame: end-to-end latency (receive time − capture
//! time; both are this machine's clock) into an HDR histogram, sequence continuity of the live
//! data after the history (missing, duplicate), and `gap` messages. After a warm-up the
//! measured period samples the server threads' CPU time (`/proc/self/task/*/stat`), the
//! process's memory (`VmRSS`, and heap bytes allocated outside the load threads, counted by a
//! wrapper around mimalloc, the medrelay binary's allocator) and the gateway's own
//! `telemetry_fanout_seconds` histogram (frame taken → accepted by a viewer's socket), read
//! through [`Gateway::register_metrics`].

use ambulance_gateway::agent::simulator::{GAIN, SimConfig, Simulator};
use ambulance_gateway::agent::source::{TWELVE_LEADS, lead_mdc};
use ambulance_gateway::gateway::{Gateway, GatewayConfig, http};
use ambulance_gateway::wire::{
    self, Block, Channel, FLAG_HISTORY, FLAG_LATE, Frame, Header, Kind, Layout, Numeric, Payload,
    Vital, Waveform,
};
use axum::serve::ListenerExt;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use mimalloc::MiMalloc;
use signaling::token::{Role, Scope, TokenKeys};
use std::alloc::{GlobalAlloc, Layout as AllocLayout};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

// ----- settings -------------------------------------------------------------------------------

/// One waveform frame per this period, per ambulance.
const FRAME_PERIOD: Duration = Duration::from_millis(40);
/// Waveform frames per numerics frame (one numerics frame a second).
const FRAMES_PER_NUMERICS: u64 = 25;
/// Leads per waveform frame.
const LEADS: usize = 12;
/// Samples per lead per frame (40 ms at 500 Hz).
const SAMPLES_PER_FRAME: usize = 20;
/// Sample rate of every lead.
const RATE_HZ: f64 = 500.0;
/// Frames in the precomputed ECG table: 4 s, five beats at 75 /min, so it loops seamlessly.
const TABLE_FRAMES: usize = 100;
/// Frames a ring buffer is sized for per second of `ring_seconds` (the gateway's private
/// `RING_FRAMES_PER_SECOND`, restated here for the memory estimate).
const RING_FRAMES_PER_SECOND: u64 = 30;
/// Connection handshakes in flight at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Latency histogram shards (viewers record into shard `viewer % SHARDS`).
const SHARDS: usize = 32;
/// Targets of issue 3: p99 latency and gateway cores.
const TARGET_P99_MS: f64 = 10.0;
const TARGET_CORES: f64 = 1.0;

#[derive(Debug, Clone)]
struct Args {
    ambulances: usize,
    viewers: usize,
    seconds: u64,
    warmup: u64,
    ring_seconds: u32,
    server_threads: usize,
    client_threads: usize,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            ambulances: 1000,
            viewers: 3,
            seconds: 30,
            warmup: 5,
            ring_seconds: 120,
            server_threads: 2,
            client_threads: 2,
        }
    }
}

const USAGE: &str = "\
gateway_load: the telemetry gateway under N ambulances with V viewers each.

  cargo bench -p ambulance-gateway --bench gateway_load [-- OPTIONS]

  --ambulances N      simulated ambulances (default 1000)
  --viewers V         viewers per ambulance (default 3)
  --seconds S         measured period (default 30)
  --warmup S          warm-up before it (default 5)
  --ring-seconds S    the gateway's ring_seconds (default 120, the product default)
  --server-threads T  gateway runtime worker threads (default 2)
  --client-threads T  load runtime worker threads (default 2)";

fn parse_args() -> Args {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let flag = matches!(
            key.as_str(),
            "--ambulances"
                | "--viewers"
                | "--seconds"
                | "--warmup"
                | "--ring-seconds"
                | "--server-threads"
                | "--client-threads"
        );
        if !flag {
            match key.as_str() {
                // `cargo bench` passes `--bench` to harness-less targets.
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => eprintln!("gateway_load: ignoring argument {other:?}"),
            }
            continue;
        }
        let value = inline.or_else(|| it.next()).unwrap_or_default();
        let n: u64 = value.parse().unwrap_or_else(|_| {
            eprintln!("gateway_load: {key} needs a number, got {value:?}\n\n{USAGE}");
            std::process::exit(2);
        });
        match key.as_str() {
            "--ambulances" => a.ambulances = n as usize,
            "--viewers" => a.viewers = n as usize,
            "--seconds" => a.seconds = n,
            "--warmup" => a.warmup = n,
            "--ring-seconds" => a.ring_seconds = n as u32,
            "--server-threads" => a.server_threads = n as usize,
            _ => a.client_threads = n as usize,
        }
    }
    if a.ambulances == 0 || a.seconds == 0 || a.server_threads == 0 || a.client_threads == 0 {
        eprintln!("gateway_load: ambulances, seconds and thread counts must be positive");
        std::process::exit(2);
    }
    a
}

// ----- heap accounting ------------------------------------------------------------------------

/// The medrelay binary's allocator (mimalloc), counting live heap bytes of the load threads
/// apart from the rest (the gateway's threads, its journal thread, this main thread).
struct Counting;

#[repr(align(64))]
struct Padded(AtomicI64);

static HEAP_LOAD: Padded = Padded(AtomicI64::new(0));
static HEAP_REST: Padded = Padded(AtomicI64::new(0));

thread_local! {
    /// Set on the load runtime's threads.
    static LOAD_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn account(delta: i64) {
    let load = LOAD_THREAD.try_with(Cell::get).unwrap_or(false);
    let counter = if load { &HEAP_LOAD.0 } else { &HEAP_REST.0 };
    counter.fetch_add(delta, Relaxed);
}

// SAFETY: every call is forwarded to `MiMalloc` (the medrelay binary's allocator) unchanged;
// only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { MiMalloc.dealloc(ptr, layout) };
        account(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ----- /proc ----------------------------------------------------------------------------------

/// CPU ticks (utime + stime) of each thread of this process: tid → (comm, ticks).
fn thread_ticks() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((comm, ticks)) = parse_stat(&stat) {
            out.insert(tid, (comm, ticks));
        }
    }
    out
}

/// (comm, utime + stime) from a `stat` line: `pid (comm) state ppid … utime stime …`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields 14 and 15 of the line; the first after the comm is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The whole process's CPU ticks (exited threads included).
fn process_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(0, |(_, t)| t)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    /// The gateway's tokio threads (`gw-rt`).
    Server,
    /// The gateway's durability thread (`telemetry-journal`, truncated to 15 characters).
    Journal,
    /// The simulated ambulances and viewers (`load-rt`).
    Load,
    Other,
}

fn group_of(comm: &str) -> Group {
    if comm.starts_with("gw-rt") {
        Group::Server
    } else if comm.starts_with("telemetry-jour") {
        Group::Journal
    } else if comm.starts_with("load-rt") {
        Group::Load
    } else {
        Group::Other
    }
}

/// A CPU snapshot: per-thread ticks and the process total.
struct CpuSnap {
    threads: HashMap<u32, (String, u64)>,
    process: u64,
    machine: (u64, u64, u64),
    at: Instant,
}

impl CpuSnap {
    fn take() -> Self {
        Self {
            threads: thread_ticks(),
            process: process_ticks(),
            machine: machine_ticks(),
            at: Instant::now(),
        }
    }

    /// Cores used by each group, and by the process, between `self` and `later`.
    fn cores_until(&self, later: &CpuSnap, tck: f64) -> (HashMap<Group, f64>, f64) {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let mut by: HashMap<Group, f64> = HashMap::new();
        for (tid, (comm, ticks)) in &later.threads {
            let before = self.threads.get(tid).map_or(0, |(_, t)| *t);
            let d = ticks.saturating_sub(before) as f64 / tck / secs;
            *by.entry(group_of(comm)).or_default() += d;
        }
        let process = later.process.saturating_sub(self.process) as f64 / tck / secs;
        (by, process)
    }

    /// Machine-wide cores busy, of which softirq, and stolen, between `self` and `later`.
    fn machine_until(&self, later: &CpuSnap, tck: f64) -> (f64, f64, f64) {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / tck / secs;
        (
            d(self.machine.0, later.machine.0),
            d(self.machine.1, later.machine.1),
            d(self.machine.2, later.machine.2),
        )
    }
}

/// Machine-wide CPU ticks from `/proc/stat`: (busy, softirq, steal), busy counting user,
/// nice, system, irq and softirq time of every process and the kernel.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let f = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (f(0) + f(1) + f(2) + f(5) + f(6), f(6), f(7))
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Raises the soft limit on open files to the hard limit (every connection is two sockets
/// here, plus the journals).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

// ----- the gateway's fanout histogram -----------------------------------------------------

/// Cumulative buckets (upper bound in s, count) of `medrelay_telemetry_fanout_seconds`.
#[derive(Debug, Clone, Default)]
struct Buckets {
    le: Vec<(f64, u64)>,
}

impl Buckets {
    fn scrape(metrics: &signaling::metrics::Metrics) -> Self {
        let text = metrics.render();
        let mut le = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("medrelay_telemetry_fanout_seconds_bucket{le=\"")
            else {
                continue;
            };
            let Some((bound, count)) = rest.split_once("\"}") else {
                continue;
            };
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().unwrap_or(f64::NAN)
            };
            let count = count.trim().parse().unwrap_or(0);
            le.push((bound, count));
        }
        le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { le }
    }

    fn minus(&self, earlier: &Buckets) -> Buckets {
        let le = self
            .le
            .iter()
            .map(|&(b, c)| {
                let before = earlier
                    .le
                    .iter()
                    .find(|(eb, _)| *eb == b)
                    .map_or(0, |(_, c)| *c);
                (b, c.saturating_sub(before))
            })
            .collect();
        Buckets { le }
    }

    fn count(&self) -> u64 {
        self.le.last().map_or(0, |(_, c)| *c)
    }

    /// Quantile in seconds, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does); infinite if it falls in the +Inf bucket.
    fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return f64::NAN;
        }
        let rank = q * total as f64;
        let mut prev_bound = 0.0;
        let mut prev_count = 0u64;
        for &(bound, count) in &self.le {
            if count as f64 >= rank {
                if bound.is_infinite() {
                    return f64::INFINITY;
                }
                let inside = (count - prev_count) as f64;
                let frac = if inside > 0.0 {
                    (rank - prev_count as f64) / inside
                } else {
                    1.0
                };
                return prev_bound + (bound - prev_bound) * frac;
            }
            prev_bound = bound;
            prev_count = count;
        }
        f64::INFINITY
    }

    /// Share of observations at or under `bound` seconds (a bucket bound).
    fn share_within(&self, bound: f64) -> f64 {
        let total = self.count();
        let under = self
            .le
            .iter()
            .find(|(b, _)| *b == bound)
            .map_or(0, |(_, c)| *c);
        if total == 0 {
            f64::NAN
        } else {
            under as f64 / total as f64
        }
    }
}

// ----- frames ---------------------------------------------------------------------------------

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// The payloads (everything after the header) of [`TABLE_FRAMES`] consecutive waveform
/// frames: 12 leads × 20 samples of the agent's simulated ECG at a fixed 75 /min, in µV.
fn ecg_payloads() -> Vec<Vec<u8>> {
    let sim = Simulator::new(SimConfig {
        rate_hz: RATE_HZ,
        hr: Some(75.0),
        spo2: None,
    })
    .expect("valid simulator settings");
    let lead = |l: usize, i: usize| -> i32 { sim.leads_at(i as u64)[l] };
    let probe: wire::StreamId = "X".parse().expect("valid id");
    let header_len = 4 + 1 + 16;
    (0..TABLE_FRAMES)
        .map(|f| {
            let blocks = (0..LEADS)
                .map(|l| Block {
                    channel: l as u8,
                    samples: (0..SAMPLES_PER_FRAME)
                        .map(|s| lead(l, f * SAMPLES_PER_FRAME + s))
                        .collect(),
                })
                .collect();
            let frame = Frame {
                header: Header {
                    kind: Kind::Waveform,
                    flags: 0,
                    stream: probe.clone(),
                    seq: 1,
                    capture_us: 0,
                },
                payload: Payload::Waveform(Waveform { blocks }),
            };
            wire::encode(&frame).expect("encodable")[header_len..].to_vec()
        })
        .collect()
}

/// A waveform frame: the header written in place, the payload copied from the table.
fn waveform_frame(id: &[u8], seq: u64, capture_us: i64, payload: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(20 + id.len() + payload.len());
    v.extend_from_slice(&[wire::VERSION, Kind::Waveform as u8, 0, id.len() as u8]);
    v.extend_from_slice(id);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&capture_us.to_le_bytes());
    v.extend_from_slice(payload);
    Bytes::from(v)
}

fn layout_frame(id: &wire::StreamId, capture_us: i64) -> Bytes {
    let channels = (0..LEADS)
        .map(|l| Channel {
            index: l as u8,
            label: TWELVE_LEADS[l].into(),
            unit: "mV".into(),
            rate_hz: RATE_HZ,
            gain: GAIN,
            baseline: 0.0,
            mdc: lead_mdc(TWELVE_LEADS[l]),
        })
        .collect();
    let frame = Frame {
        header: Header {
            kind: Kind::Layout,
            flags: 0,
            stream: id.clone(),
            seq: 1,
            capture_us,
        },
        payload: Payload::Layout(Layout { channels }),
    };
    Bytes::from(wire::encode(&frame).expect("encodable"))
}

fn numerics_frame(id: &wire::StreamId, seq: u64, capture_us: i64, second: u64) -> Bytes {
    let wobble = (second % 5) as f64;
    let values = [
        (Vital::Hr, 75.0 + wobble),
        (Vital::Spo2, 97.0),
        (Vital::NibpSys, 122.0),
        (Vital::NibpDia, 78.0),
        (Vital::NibpMean, 93.0),
        (Vital::Rr, 16.0),
        (Vital::Temp, 36.8),
        (Vital::Etco2, 38.0),
        (Vital::Lat, 31.2397 - second as f64 * 1e-5),
        (Vital::Lon, 121.4998 - second as f64 * 1e-5),
    ];
    let frame = Frame {
        header: Header {
            kind: Kind::Numerics,
            flags: 0,
            stream: id.clone(),
            seq,
            capture_us,
        },
        payload: Payload::Numerics(
            values
                .iter()
                .map(|&(v, value)| Numeric {
                    code: v.code(),
                    value,
                })
                .collect(),
        ),
    };
    Bytes::from(wire::encode(&frame).expect("encodable"))
}

/// Whether sequence number `seq` (≥ 2) of an ambulance is a waveform frame: after the layout
/// (1) every cycle is 25 waveform frames and one numerics frame.
fn is_waveform_seq(seq: u64) -> bool {
    seq >= 2 && (seq - 2) % (FRAMES_PER_NUMERICS + 1) != FRAMES_PER_NUMERICS
}

/// Waveform frames among sequence numbers `from..=to`.
fn waveforms_in(from: u64, to: u64) -> u64 {
    (from..=to).filter(|&s| is_waveform_seq(s)).count() as u64
}

/// (seq, capture_us, flags) of an encoded frame, reading nothing else.
fn peek_header(b: &[u8]) -> Option<(u64, i64, u8)> {
    let len = *b.get(3)? as usize;
    let seq = u64::from_le_bytes(b.get(4 + len..12 + len)?.try_into().ok()?);
    let cap = i64::from_le_bytes(b.get(12 + len..20 + len)?.try_into().ok()?);
    Some((seq, cap, b[2]))
}

// ----- shared state of the load ---------------------------------------------------------------

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    msgs_recv: AtomicU64,
    live_waveforms: AtomicU64,
    history_msgs: AtomicU64,
    missing_frames: AtomicU64,
    missing_waveforms: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    gaps: AtomicU64,
    gap_dropped: AtomicU64,
    alarms: AtomicU64,
    errors: AtomicU64,
    disconnects: AtomicU64,
}

struct Shared {
    epoch: Instant,
    n: usize,
    stop: AtomicBool,
    c: Counters,
    ambulances_up: AtomicUsize,
    viewers_up: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Per ambulance: the last sequence number sent, and the last acknowledged (durable).
    last_sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// Per viewer: the last live sequence number received.
    viewer_last: Vec<AtomicU64>,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().expect("first error");
        if first.is_none() {
            *first = Some(what);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn client_config() -> WebSocketConfig {
    // Small read buffers: 4,000 client sockets share this process with the gateway, and each
    // read zero-fills the buffer's free part first. A frame is about 600 bytes.
    WebSocketConfig::default().read_buffer_size(2 * 1024)
}

fn stream_id(i: usize) -> String {
    format!("AMB-{}", i + 1)
}

// ----- an ambulance ---------------------------------------------------------------------------

async fn ambulance(
    sh: Arc<Shared>,
    i: usize,
    url: String,
    token: String,
    gate: Arc<Semaphore>,
    table: Arc<Vec<Vec<u8>>>,
) {
    if let Err(e) = ambulance_run(sh.clone(), i, url, token, gate, table).await {
        sh.fail(format!("ambulance {}: {e}", stream_id(i)));
    }
}

async fn ambulance_run(
    sh: Arc<Shared>,
    i: usize,
    url: String,
    token: String,
    gate: Arc<Semaphore>,
    table: Arc<Vec<Vec<u8>>>,
) -> Result<(), String> {
    let id: wire::StreamId = stream_id(i).parse().map_err(|e| format!("{e}"))?;
    let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad header")?,
    );
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(client_config()), true)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sink, mut source) = ws.split();
    match tokio::time::timeout(Duration::from_secs(30), source.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"welcome\"") => {}
        other => return Err(format!("no welcome: {other:?}")),
    }
    drop(permit);
    sink.send(Message::Binary(layout_frame(&id, now_us())))
        .await
        .map_err(|e| format!("send layout: {e}"))?;
    sh.last_sent[i].store(1, Relaxed);

    // Acknowledgements (and anything else) from the gateway.
    let reader_sh = sh.clone();
    tokio::spawn(async move {
        #[derive(serde::Deserialize)]
        struct Control<'a> {
            #[serde(rename = "type", borrow)]
            ty: &'a str,
            through: Option<u64>,
        }
        while let Some(msg) = source.next().await {
            match msg {
                Ok(Message::Text(t)) => match serde_json::from_str::<Control<'_>>(&t) {
                    Ok(Control {
                        ty: "ack",
                        through: Some(n),
                    }) => {
                        reader_sh.acked[i].store(n, Relaxed);
                    }
                    Ok(Control { ty: "error", .. }) => {
                        reader_sh.c.errors.fetch_add(1, Relaxed);
                        reader_sh.fail(format!("gateway error to {}: {t}", stream_id(i)));
                    }
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !reader_sh.stop.load(Relaxed) {
            reader_sh.c.disconnects.fetch_add(1, Relaxed);
        }
    });
    sh.ambulances_up.fetch_add(1, Relaxed);

    // This ambulance's slot in the 40 ms cycle.
    let offset = FRAME_PERIOD * i as u32 / sh.n as u32;
    let phase0 = sh.epoch + offset;
    let now = tokio::time::Instant::now().into_std();
    let cycles = now.saturating_duration_since(phase0).as_micros() / FRAME_PERIOD.as_micros() + 1;
    let first = phase0 + FRAME_PERIOD * cycles as u32;
    let mut tick = tokio::time::interval_at(first.into(), FRAME_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);

    let id_bytes = id.as_str().as_bytes().to_vec();
    let mut seq = 1u64;
    let mut second = 0u64;
    let mut until_numerics = FRAMES_PER_NUMERICS;
    let mut pos = i % TABLE_FRAMES;
    loop {
        tick.tick().await;
        if sh.stop.load(Relaxed) {
            break;
        }
        seq += 1;
        let frame = waveform_frame(&id_bytes, seq, now_us(), &table[pos]);
        pos = (pos + 1) % TABLE_FRAMES;
        if sink.send(Message::Binary(frame)).await.is_err() {
            break;
        }
        sh.last_sent[i].store(seq, Relaxed);
        sh.c.frames_sent.fetch_add(1, Relaxed);
        until_numerics -= 1;
        if until_numerics == 0 {
            until_numerics = FRAMES_PER_NUMERICS;
            second += 1;
            seq += 1;
            let frame = numerics_frame(&id, seq, now_us(), second);
            if sink.send(Message::Binary(frame)).await.is_err() {
                break;
            }
            sh.last_sent[i].store(seq, Relaxed);
            sh.c.frames_sent.fetch_add(1, Relaxed);
        }
    }
    // Keep the connection open (quiet) until the process ends.
    std::future::pending::<()>().await;
    drop(sink);
    Ok(())
}

// ----- a viewer -------------------------------------------------------------------------------

/// Sequence continuity of one viewer's live data.
struct Continuity {
    /// Highest sequence number received in the history.
    history: u64,
    /// Last live sequence number (0: none yet).
    last: u64,
}

impl Continuity {
    fn live(&mut self, seq: u64, c: &Counters) {
        let expected = if self.last == 0 {
            if self.history == 0 {
                // Nothing to compare the first live frame with.
                self.last = seq;
                return;
            }
            self.history + 1
        } else {
            self.last + 1
        };
        if seq == expected {
            self.last = seq;
        } else if seq > expected {
            c.missing_frames.fetch_add(seq - expected, Relaxed);
            c.missing_waveforms
                .fetch_add(waveforms_in(expected, seq - 1), Relaxed);
            self.last = seq;
        } else {
            c.duplicates.fetch_add(1, Relaxed);
        }
    }
}

async fn viewer(
    sh: Arc<Shared>,
    v: usize,
    amb: usize,
    url: String,
    token: String,
    gate: Arc<Semaphore>,
) {
    if let Err(e) = viewer_run(sh.clone(), v, amb, url, token, gate).await {
        sh.fail(format!("viewer {v} of {}: {e}", stream_id(amb)));
    }
}

async fn viewer_run(
    sh: Arc<Shared>,
    v: usize,
    amb: usize,
    url: String,
    token: String,
    gate: Arc<Semaphore>,
) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type", borrow)]
        ty: &'a str,
        seq: Option<u64>,
        history: Option<bool>,
        late: Option<bool>,
        dropped: Option<u64>,
    }

    let permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
    // Not split into a sink and a stream: after subscribing the viewer only reads, and one
    // owner saves the lock that the split halves share on every read.
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true)
            .await
            .map_err(|e| format!("connect: {e}"))?;
    let auth = serde_json::json!({"type": "auth", "token": token}).to_string();
    ws.send(Message::text(auth))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains("\"welcome\"") => {}
        other => return Err(format!("no welcome: {other:?}")),
    }
    let sub = serde_json::json!({"type": "subscribe", "stream": stream_id(amb)}).to_string();
    ws.send(Message::text(sub))
        .await
        .map_err(|e| e.to_string())?;
    drop(permit);

    let c = &sh.c;
    let shard = &sh.shards[v % SHARDS];
    let mut seen = Continuity {
        history: 0,
        last: 0,
    };
    let mut subscribed = false;
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(_) => break,
        };
        match msg {
            Message::Binary(b) => {
                let recv_us = now_us();
                c.msgs_recv.fetch_add(1, Relaxed);
                let Some((seq, capture_us, flags)) = peek_header(&b) else {
                    sh.fail(format!("viewer {v}: undecodable frame"));
                    continue;
                };
                if flags & FLAG_HISTORY != 0 {
                    c.history_msgs.fetch_add(1, Relaxed);
                    seen.history = seen.history.max(seq);
                    continue;
                }
                if flags & FLAG_LATE != 0 {
                    c.late.fetch_add(1, Relaxed);
                }
                c.live_waveforms.fetch_add(1, Relaxed);
                seen.live(seq, c);
                sh.viewer_last[v].store(seen.last, Relaxed);
                let latency = (recv_us - capture_us).max(0) as u64;
                shard.lock().expect("shard").saturating_record(latency);
            }
            Message::Text(t) => {
                c.msgs_recv.fetch_add(1, Relaxed);
                let Ok(e) = serde_json::from_str::<Event<'_>>(&t) else {
                    continue;
                };
                match e.ty {
                    "numerics" => {
                        let seq = e.seq.unwrap_or(0);
                        if e.history == Some(true) {
                            c.history_msgs.fetch_add(1, Relaxed);
                            seen.history = seen.history.max(seq);
                        } else {
                            if e.late == Some(true) {
                                c.late.fetch_add(1, Relaxed);
                            }
                            seen.live(seq, c);
                            sh.viewer_last[v].store(seen.last, Relaxed);
                        }
                    }
                    "layout" if !subscribed => {
                        subscribed = true;
                        sh.viewers_up.fetch_add(1, Relaxed);
                    }
                    "gap" => {
                        c.gaps.fetch_add(1, Relaxed);
                        c.gap_dropped.fetch_add(e.dropped.unwrap_or(0), Relaxed);
                    }
                    "alarm" => {
                        c.alarms.fetch_add(1, Relaxed);
                    }
                    "error" => {
                        c.errors.fetch_add(1, Relaxed);
                        sh.fail(format!("viewer {v}: {t}"));
                    }
                    _ => {}
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    if !sh.stop.load(Relaxed) {
        c.disconnects.fetch_add(1, Relaxed);
    }
    Ok(())
}

// ----- the run --------------------------------------------------------------------------------

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Moves every shard's samples into `into` (and empties the shards).
fn drain_shards(sh: &Shared, into: &mut Histogram<u64>) {
    for s in &sh.shards {
        let mut s = s.lock().expect("shard");
        into.add(&*s).expect("same bounds");
        s.reset();
    }
}

/// Counters at one moment, for rates.
#[derive(Clone, Copy)]
struct Tally {
    at: Instant,
    sent: u64,
    recv: u64,
    live_waveforms: u64,
}

impl Tally {
    fn take(c: &Counters) -> Self {
        Self {
            at: Instant::now(),
            sent: c.frames_sent.load(Relaxed),
            recv: c.msgs_recv.load(Relaxed),
            live_waveforms: c.live_waveforms.load(Relaxed),
        }
    }
}

/// Median and largest number of frames each ambulance has sent beyond its acknowledgement.
fn ack_lag(sh: &Shared) -> (u64, u64) {
    let mut lag: Vec<u64> = (0..sh.n)
        .map(|i| {
            sh.last_sent[i]
                .load(Relaxed)
                .saturating_sub(sh.acked[i].load(Relaxed))
        })
        .collect();
    lag.sort_unstable();
    (lag[sh.n / 2], lag[sh.n - 1])
}

/// Frames per second of one ambulance.
const FRAMES_PER_SEC: f64 =
    1000.0 / 40.0 * (FRAMES_PER_NUMERICS + 1) as f64 / FRAMES_PER_NUMERICS as f64;

fn say(s: impl AsRef<str>) {
    println!("{}", s.as_ref());
    let _ = std::io::stdout().flush();
}

/// Runs for `secs`, printing progress every 5 s; hands each interval's latencies to `on_tick`.
fn run_phase(
    sh: &Shared,
    name: &str,
    secs: u64,
    start: Instant,
    tck: f64,
    mut on_tick: impl FnMut(&Histogram<u64>),
) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut last_t = Tally::take(&sh.c);
    let mut last_cpu = CpuSnap::take();
    let mut interval = new_histogram();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_secs(5)));
        let t = Tally::take(&sh.c);
        let cpu = CpuSnap::take();
        drain_shards(sh, &mut interval);
        let dt = t.at.duration_since(last_t.at).as_secs_f64().max(1e-9);
        let (by, process) = last_cpu.cores_until(&cpu, tck);
        let server = by.get(&Group::Server).copied().unwrap_or(0.0)
            + by.get(&Group::Journal).copied().unwrap_or(0.0);
        let (machine, _, _) = last_cpu.machine_until(&cpu, tck);
        let (lag50, _) = ack_lag(sh);
        say(format!(
            "[{:>5.1}s {name:<7}] in {:>6.0} frames/s  out {:>6.0} msg/s  latency p50 {:>6.2} p99 {:>7.2} max {:>7.2} ms  cores: server {:.2} process {:.2} machine {:.2}  ack lag {:.1} s  lost {} gaps {} disconnects {}",
            start.elapsed().as_secs_f64(),
            (t.sent - last_t.sent) as f64 / dt,
            (t.recv - last_t.recv) as f64 / dt,
            quantile_ms(&interval, 0.50),
            quantile_ms(&interval, 0.99),
            interval.max() as f64 / 1000.0,
            server,
            process,
            machine,
            lag50 as f64 / FRAMES_PER_SEC,
            sh.c.missing_waveforms.load(Relaxed) * (LEADS * SAMPLES_PER_FRAME) as u64,
            sh.c.gaps.load(Relaxed),
            sh.c.disconnects.load(Relaxed),
        ));
        on_tick(&interval);
        interval.reset();
        last_t = t;
        last_cpu = cpu;
    }
}

fn wait_for(sh: &Shared, what: &str, target: usize, count: impl Fn() -> usize, start: Instant) {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_print = Instant::now();
    loop {
        let n = count();
        let failed = sh.failed.load(Relaxed);
        if n >= target {
            say(format!(
                "[{:>5.1}s setup  ] {n} {what} ready",
                start.elapsed().as_secs_f64()
            ));
            return;
        }
        if failed > 0 || Instant::now() > deadline {
            let e = sh
                .first_error
                .lock()
                .expect("first error")
                .clone()
                .unwrap_or_default();
            eprintln!(
                "gateway_load: {failed} connections failed, {n}/{target} {what} ready; first error: {e}"
            );
            std::process::exit(1);
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            say(format!(
                "[{:>5.1}s setup  ] {n}/{target} {what}",
                start.elapsed().as_secs_f64()
            ));
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn main() {
    let args = parse_args();
    let start = Instant::now();
    let tck = clock_ticks_per_sec();
    let nofile = raise_nofile();
    let n = args.ambulances;
    let nv = n * args.viewers;
    let cores = std::thread::available_parallelism().map_or(0, |c| c.get());
    say(format!(
        "gateway_load: {n} ambulances × {} viewers, warm-up {} s, measured {} s, ring {} s; server {} threads, load {} threads; {cores} cores; open files ≤ {nofile}",
        args.viewers,
        args.warmup,
        args.seconds,
        args.ring_seconds,
        args.server_threads,
        args.client_threads
    ));

    let dir = tempfile::Builder::new()
        .prefix("medrelay-gateway-load-")
        .tempdir()
        .expect("temporary directory");
    let secret: [u8; 32] = rand::random();
    let keys = TokenKeys::new(&secret);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("gw-rt")
        .enable_all()
        .build()
        .expect("server runtime");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("load-rt")
        .on_thread_start(|| LOAD_THREAD.with(|l| l.set(true)))
        .enable_all()
        .build()
        .expect("load runtime");

    let (gw, addr, metrics) = server_rt.block_on(async {
        let gw = Gateway::start(
            GatewayConfig {
                data_dir: dir.path().to_path_buf(),
                ring_seconds: args.ring_seconds,
                // Sealed journals, as `medrelay serve` writes them.
                master_key: Some(recorder::sealed::MasterKey::from_bytes(rand::random())),
            },
            keys.clone(),
        );
        // A metrics registry like `medrelay serve`'s, to read the gateway's own histogram.
        let (sfu, events) =
            sfu::shell::spawn("127.0.0.1:0".parse().expect("addr"), None, None, false)
                .await
                .expect("media socket");
        std::mem::forget(events);
        let metrics = signaling::metrics::Metrics::new(
            Arc::new(signaling::registry::Registry::default()),
            sfu,
        );
        gw.register_metrics(&metrics);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        // As `medrelay serve` (axum-server) does: no Nagle delay on accepted sockets.
        let listener = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        let app = http::routes(gw.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (gw, addr, metrics)
    });

    // Everything the load needs, made before the memory baseline.
    let table = Arc::new(ecg_payloads());
    {
        let probe = waveform_frame(b"AMB-1", 2, 1, &table[0]);
        let f = wire::decode(&probe).expect("the bench's frames decode");
        let Payload::Waveform(w) = f.payload else {
            panic!("not a waveform")
        };
        assert!(
            w.blocks.len() == LEADS
                && w.blocks
                    .iter()
                    .all(|b| b.samples.len() == SAMPLES_PER_FRAME)
        );
    }
    let frame_bytes = waveform_frame(stream_id(n / 2).as_bytes(), 2, 1, &table[0]).len();
    let now = SystemTime::now();
    let ttl = Duration::from_secs(3600);
    let crew: Vec<String> = (0..n)
        .map(|i| {
            let scope = Scope {
                room: None,
                ambulance: Some(stream_id(i)),
            };
            keys.issue(
                &scope,
                &format!("{} crew", stream_id(i)),
                Role::Crew,
                ttl,
                now,
            )
        })
        .collect();
    let specialist: Vec<String> = (0..n)
        .map(|i| {
            let scope = Scope {
                room: None,
                ambulance: Some(stream_id(i)),
            };
            keys.issue(&scope, "Bench specialist", Role::Specialist, ttl, now)
        })
        .collect();
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        n,
        stop: AtomicBool::new(false),
        c: Counters::default(),
        ambulances_up: AtomicUsize::new(0),
        viewers_up: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        last_sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
        viewer_last: (0..nv).map(|_| AtomicU64::new(0)).collect(),
        shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
    });
    let mut measured = new_histogram();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));

    let rss_before = vm_rss_kib();
    let heap_before = HEAP_REST.0.load(Relaxed);
    say(format!(
        "[{:>5.1}s setup  ] gateway on ws://{addr}; VmRSS before the ambulances connect: {:.1} MiB",
        start.elapsed().as_secs_f64(),
        rss_before as f64 / 1024.0
    ));

    // Tasks are spawned from a load thread, so that their memory is counted as the load's.
    let ingest_url = format!("ws://{addr}/telemetry/ingest");
    load_rt.spawn({
        let (sh, gate, table) = (sh.clone(), gate.clone(), table.clone());
        async move {
            for (i, token) in crew.into_iter().enumerate() {
                let task = ambulance(
                    sh.clone(),
                    i,
                    ingest_url.clone(),
                    token,
                    gate.clone(),
                    table.clone(),
                );
                tokio::spawn(task);
            }
        }
    });
    wait_for(
        &sh,
        "ambulances",
        n,
        || sh.ambulances_up.load(Relaxed),
        start,
    );

    let view_url = format!("ws://{addr}/telemetry/view");
    let per = args.viewers;
    load_rt.spawn({
        let (sh, gate) = (sh.clone(), gate.clone());
        async move {
            for v in 0..nv {
                let amb = v / per;
                let task = viewer(
                    sh.clone(),
                    v,
                    amb,
                    view_url.clone(),
                    specialist[amb].clone(),
                    gate.clone(),
                );
                tokio::spawn(task);
            }
        }
    });
    wait_for(
        &sh,
        "viewers subscribed",
        nv,
        || sh.viewers_up.load(Relaxed),
        start,
    );

    run_phase(&sh, "warm-up", args.warmup, start, tck, |_| {});

    // The measured period.
    {
        let mut discard = new_histogram();
        drain_shards(&sh, &mut discard);
    }
    let t0 = Tally::take(&sh.c);
    let cpu0 = CpuSnap::take();
    let fan0 = Buckets::scrape(&metrics);
    let heap_mid = HEAP_REST.0.load(Relaxed);
    let mut interval_p99: Vec<f64> = Vec::new();
    run_phase(&sh, "measure", args.seconds, start, tck, |h| {
        measured.add(h).expect("same bounds");
        interval_p99.push(quantile_ms(h, 0.99));
    });
    let t1 = Tally::take(&sh.c);
    let cpu1 = CpuSnap::take();
    let fan = Buckets::scrape(&metrics).minus(&fan0);
    let rss_after = vm_rss_kib();
    let heap_after = HEAP_REST.0.load(Relaxed);
    // Durability: how far each ambulance's acknowledgements trail what it sent.
    let (lag50, lag_max) = ack_lag(&sh);
    let unacked: u64 = (0..n)
        .map(|i| {
            sh.last_sent[i]
                .load(Relaxed)
                .saturating_sub(sh.acked[i].load(Relaxed))
        })
        .sum();
    let frames_per_amb = sh.last_sent.iter().map(|s| s.load(Relaxed)).sum::<u64>() / n as u64;

    // Stop the ambulances and let the viewers drain, then look for frames never delivered.
    sh.stop.store(true, Relaxed);
    std::thread::sleep(FRAME_PERIOD * 3);
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    let behind = || {
        (0..nv)
            .filter(|&v| {
                sh.viewer_last[v].load(Relaxed) < sh.last_sent[v / args.viewers].load(Relaxed)
            })
            .count()
    };
    while behind() > 0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tail_frames = 0u64;
    let mut tail_waveforms = 0u64;
    for v in 0..nv {
        let sent = sh.last_sent[v / args.viewers].load(Relaxed);
        let got = sh.viewer_last[v].load(Relaxed);
        if got < sent {
            tail_frames += sent - got;
            tail_waveforms += waveforms_in(got + 1, sent);
        }
    }

    // ----- the report ----------------------------------------------------------------------
    let c = &sh.c;
    let secs = t1.at.duration_since(t0.at).as_secs_f64();
    let (by, process_cores) = cpu0.cores_until(&cpu1, tck);
    let load_heap_mib = HEAP_LOAD.0.load(Relaxed) as f64 / 1048576.0;
    let core = |g| by.get(&g).copied().unwrap_or(0.0);
    let server_cores = core(Group::Server) + core(Group::Journal);
    let frames_in = (t1.sent - t0.sent) as f64 / secs;
    let msgs_out = (t1.recv - t0.recv) as f64 / secs;
    let samples_out =
        (t1.live_waveforms - t0.live_waveforms) as f64 * (LEADS * SAMPLES_PER_FRAME) as f64 / secs;
    let p50 = quantile_ms(&measured, 0.50);
    let p99 = quantile_ms(&measured, 0.99);
    let p999 = quantile_ms(&measured, 0.999);
    let max = measured.max() as f64 / 1000.0;
    let fan_ms = |q| fan.quantile(q) * 1000.0;
    let lost_frames = c.missing_frames.load(Relaxed) + tail_frames;
    let lost_samples =
        (c.missing_waveforms.load(Relaxed) + tail_waveforms) * (LEADS * SAMPLES_PER_FRAME) as u64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rss_per_stream_kib = (rss_after as f64 - rss_before as f64) / n as f64;
    let heap_per_stream_kib = (heap_after - heap_before) as f64 / 1024.0 / n as f64;
    let growth_per_stream = (heap_after - heap_mid) as f64 / 1024.0 / n as f64 / secs;
    let ring_cap = args.ring_seconds as u64 * RING_FRAMES_PER_SECOND;
    let ring_now = frames_per_amb.min(ring_cap);
    let ring_span_s = ring_cap as f64 / FRAMES_PER_SEC;
    // A ring slot (`RingEntry`: seq, capture time, `Bytes` or a map) is 48 bytes, allocated
    // with the stream. A waveform frame it holds is a slice of the socket's read buffer:
    // the frame plus its 8-byte WebSocket header (client frames are masked, 16-bit length).
    // A numerics entry holds a one-node BTreeMap of 10 values (~112 bytes).
    let slot = 48.0;
    let wave_share = FRAMES_PER_NUMERICS as f64 / (FRAMES_PER_NUMERICS + 1) as f64;
    let held = |frames: f64| {
        frames * (wave_share * (frame_bytes as f64 + 8.0) + (1.0 - wave_share) * 112.0)
    };
    let ring_full_kib = (ring_cap as f64 * slot + held(ring_cap as f64)) / 1024.0;
    let full_est_kib = heap_per_stream_kib + held((ring_cap - ring_now) as f64) / 1024.0;
    let (machine, softirq, steal) = cpu0.machine_until(&cpu1, tck);
    let mut spread = interval_p99.clone();
    spread.retain(|x| x.is_finite());
    spread.sort_by(f64::total_cmp);

    let row = |k: &str, v: String| say(format!("  {k:<42} {v}"));
    say("");
    say(format!(
        "== telemetry gateway: {n} ambulances × {} viewers, {:.1} s measured (after {} s warm-up) ==",
        args.viewers, secs, args.warmup
    ));
    row("ambulances (streams)", format!("{n}"));
    row("viewers", format!("{nv} ({} per stream)", args.viewers));
    row(
        "frames/s in (waveform + numerics)",
        format!("{frames_in:.0}"),
    );
    row("messages/s out (to viewers)", format!("{msgs_out:.0}"));
    row("samples/s out (live waveform)", format!("{samples_out:.0}"));
    row(
        "latency end-to-end p50 / p99 / p99.9 / max",
        format!(
            "{p50:.2} / {p99:.2} / {p999:.2} / {max:.2} ms  ({} frames)",
            measured.len()
        ),
    );
    row(
        "  p99 per 5 s interval (min … max)",
        match (spread.first(), spread.last()) {
            (Some(a), Some(b)) => format!("{a:.2} … {b:.2} ms"),
            _ => "-".into(),
        },
    );
    row(
        "gateway fanout (taken → socket) p50 / p99",
        format!(
            "{:.3} / {:.3} ms  ({} msgs; {:.2} % ≤ 10 ms; bucketed)",
            fan_ms(0.50),
            fan_ms(0.99),
            fan.count(),
            fan.share_within(0.01) * 100.0
        ),
    );
    row(
        "server cores (gw-rt + telemetry-journal)",
        format!(
            "{server_cores:.2}  (gw-rt {:.2}, journal {:.2})",
            core(Group::Server),
            core(Group::Journal)
        ),
    );
    row(
        "process cores (server + load + other)",
        format!(
            "{process_cores:.2}  (load-rt {:.2}, other {:.2}) of {cores}",
            core(Group::Load),
            core(Group::Other)
        ),
    );
    row(
        "machine cores busy (all processes, kernel)",
        format!(
            "{machine:.2} of {cores}  (softirq {softirq:.2}, outside this process {:.2}; stolen {steal:.2})",
            (machine - process_cores).max(0.0)
        ),
    );
    row(
        "VmRSS before → after; Δ per stream",
        format!(
            "{:.1} → {:.1} MiB; {:.0} KiB (includes the load's sockets)",
            mib(rss_before),
            mib(rss_after),
            rss_per_stream_kib
        ),
    );
    row(
        "gateway heap Δ per stream, now",
        format!(
            "{heap_per_stream_kib:.0} KiB  (ring holds {ring_now} of {ring_cap} frames; growing {growth_per_stream:.1} KiB/s; load's heap {load_heap_mib:.0} MiB apart)",
        ),
    );
    row(
        "gateway heap per stream, ring full (est.)",
        format!(
            "{full_est_kib:.0} KiB  (now + {} more frames held; the ring spans {:.0} s)",
            ring_cap - ring_now,
            ring_span_s
        ),
    );
    row(
        "ring buffer alone per stream, full",
        format!(
            "{ring_full_kib:.0} KiB  ({ring_cap} slots × {slot:.0} B + frames of {frame_bytes} B + 8 B ws header)",
        ),
    );
    row(
        "durable acknowledgement lag p50 / max",
        format!(
            "{:.2} / {:.2} s  ({lag50} / {lag_max} frames; {unacked} frames unacknowledged)",
            lag50 as f64 / FRAMES_PER_SEC,
            lag_max as f64 / FRAMES_PER_SEC,
        ),
    );
    row(
        "samples lost (must be 0)",
        format!(
            "{lost_samples}  ({lost_frames} frames missing, {tail_frames} of them never arrived)"
        ),
    );
    row(
        "duplicates / late / gaps (dropped msgs)",
        format!(
            "{} / {} / {} ({})",
            c.duplicates.load(Relaxed),
            c.late.load(Relaxed),
            c.gaps.load(Relaxed),
            c.gap_dropped.load(Relaxed)
        ),
    );
    row(
        "disconnects / errors / alarms",
        format!(
            "{} / {} / {}",
            c.disconnects.load(Relaxed),
            c.errors.load(Relaxed),
            c.alarms.load(Relaxed)
        ),
    );
    row(
        "history frames at subscribe",
        format!("{}", c.history_msgs.load(Relaxed)),
    );
    say(format!(
        "  target: ingest-to-viewer p99 < {TARGET_P99_MS} ms  {}  (end-to-end {p99:.2} ms; in-gateway fanout {:.3} ms)",
        pass(p99 < TARGET_P99_MS),
        fan_ms(0.99)
    ));
    say(format!(
        "  target: server under {TARGET_CORES} core          {}  (server {server_cores:.2} cores)",
        pass(server_cores < TARGET_CORES)
    ));
    say(format!(
        "  samples lost = 0                      {}",
        if lost_samples == 0 { "PASS" } else { "FAIL" }
    ));
    say(format!(
        "  total run time {:.1} s",
        start.elapsed().as_secs_f64()
    ));

    let broken = lost_samples > 0 || c.disconnects.load(Relaxed) > 0 || sh.failed.load(Relaxed) > 0;
    drop(gw);
    load_rt.shutdown_background();
    server_rt.shutdown_background();
    std::thread::sleep(Duration::from_millis(200));
    let _ = dir.close();
    std::process::exit(if broken { 1 } else { 0 });
}
