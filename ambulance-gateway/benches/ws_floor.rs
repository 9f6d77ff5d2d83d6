//! The floor under issue 3's targets: what any telemetry gateway must spend, on this machine
//! and over loopback, to move `gateway_load`'s traffic, measured with no gateway at all.
//!
//! Issue 3 asks for 1,000 ambulances with 3 viewers each in under one core, end-to-end p99
//! under 10 ms, on 2 vCPUs shared with the load. The gateway's own code is a small part of
//! what `gateway_load` measures; most is loopback TCP (one send per WebSocket message, and the
//! receiver's TCP input runs inside the sender's system call) and tokio's scheduling. This
//! bench moves the same messages over the same sockets with nothing else, so its server CPU is
//! what no design that keeps one WebSocket per viewer can go below here.
//!
//! - **Floor server** (runtime threads `floor-rt`, 2 workers, as `gw-rt`): a listener on
//!   127.0.0.1, `TCP_NODELAY` on every socket. A connection's first 16 bytes say `ingest K` or
//!   `view K` (no HTTP upgrade); the data path is WebSocket framing. One task per ingest socket
//!   reads, unmasks each client frame and writes it as an unmasked binary frame to each of
//!   its ambulance's viewer sockets, one `write` each (`TcpStream::try_write`). What a socket
//!   does not take at once waits in a backlog, sent by a task spawned for it when the socket
//!   is writable, and later messages queue behind; both are counted. `--mode tungstenite`
//!   does the same with tokio-tungstenite on both ends (the library under the gateway's axum
//!   WebSockets): each message is offered to the viewer's stream without waiting, as the
//!   gateway's `DirectSink` does, and awaited only if it would block.
//! - **Load** (threads `load-rt`, 2 workers): N ambulances, each sending every 40 ms a
//!   556-byte payload (the cycles spread evenly over the period) and every second a 100-byte
//!   one, as masked binary frames (2-byte header, 2-byte length over 125 bytes, random 4-byte
//!   mask key). A payload starts with its send time (ns since a shared `Instant`), the
//!   ambulance's sequence number and the ambulance. V viewers per ambulance record end-to-end
//!   latency in an HDR histogram and check the sequence numbers for gaps and repeats; at the
//!   end every viewer must have all its ambulance sent.
//! - **CPU**: utime + stime per thread (`/proc/self/task/*/stat`, counted as `gateway_load`
//!   counts it: loopback delivery in softirq lands on the thread it interrupts) and the whole
//!   machine (`/proc/stat`) over the measured period.
//!
//! `cargo bench -p ambulance-gateway --bench ws_floor [-- --ambulances N --viewers V
//! --seconds S --warmup S --mode raw|tungstenite]`; it exits with 1 if a message was lost or
//! repeated, or a connection failed.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The medrelay binary's allocator, so the floor and `gateway_load` compare like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One waveform payload per ambulance per period.
const PERIOD: Duration = Duration::from_millis(40);
/// Periods per numerics payload: one a second.
const PERIODS_PER_NUMERICS: u32 = 25;
/// Payload sizes: a waveform frame of 12 leads × 20 i16 samples with its header, and a
/// numerics frame.
const WAVEFORM_BYTES: usize = 556;
const NUMERICS_BYTES: usize = 100;
/// The handshake: `ingest K` or `view K`, space-padded, newline-terminated.
const HELLO_BYTES: usize = 16;
/// Read buffer of a raw socket; holds several frames.
const READ_BYTES: usize = 8 * 1024;
/// First byte of every data frame: FIN and the binary opcode.
const FIN_BINARY: u8 = 0x82;
const MASKED: u8 = 0x80;
/// Latency histogram shards (viewer `v` records into `v % SHARDS`).
const SHARDS: usize = 16;
/// Issue 3's targets.
const TARGET_CORES: f64 = 1.0;
const TARGET_P99_MS: f64 = 10.0;

const USAGE: &str = "\
ws_floor: the CPU floor under the telemetry gateway's traffic, with no gateway.

  cargo bench -p ambulance-gateway --bench ws_floor [-- OPTIONS]

  --ambulances N           ambulances (default 1000)
  --viewers V              viewers per ambulance (default 3)
  --seconds S              measured period (default 20)
  --warmup S               warm-up before it (default 3)
  --mode raw|tungstenite   hand-written framing, or tokio-tungstenite on both ends (raw)";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Tungstenite,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Tungstenite => "tungstenite",
        }
    }
}

struct Args {
    ambulances: usize,
    viewers: usize,
    seconds: u64,
    warmup: u64,
    mode: Mode,
}

fn parse_args() -> Args {
    let mut args = Args {
        mode: Mode::Raw,
        ambulances: 1000,
        viewers: 3,
        seconds: 20,
        warmup: 3,
    };
    let usage = |why: String| -> ! {
        eprintln!("ws_floor: {why}\n\n{USAGE}");
        std::process::exit(2)
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        let (flag, value) = match word.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (word, None),
        };
        match flag.as_str() {
            // `cargo bench` passes `--bench` to harness-less targets.
            "--bench" => continue,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            "--ambulances" | "--viewers" | "--seconds" | "--warmup" | "--mode" => {}
            _ => usage(format!("unknown argument {flag:?}")),
        }
        let value = value.or_else(|| words.next()).unwrap_or_default();
        if flag == "--mode" {
            args.mode = match value.as_str() {
                "raw" => Mode::Raw,
                "tungstenite" => Mode::Tungstenite,
                _ => usage(format!("--mode is raw or tungstenite, not {value:?}")),
            };
            continue;
        }
        let Ok(n) = value.parse::<u64>() else {
            usage(format!("{flag} needs a number, got {value:?}"))
        };
        match flag.as_str() {
            "--ambulances" => args.ambulances = n as usize,
            "--viewers" => args.viewers = n as usize,
            "--seconds" => args.seconds = n,
            _ => args.warmup = n,
        }
    }
    if args.ambulances == 0 || args.viewers == 0 || args.seconds == 0 {
        usage("ambulances, viewers and seconds must be positive".into());
    }
    args
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, what.into())
}

// ----- WebSocket framing ----------------------------------------------------------------------

/// Appends a binary frame's header for a `len`-byte payload, with `mask` as a client's.
fn put_header(out: &mut Vec<u8>, len: usize, mask: Option<[u8; 4]>) {
    let masked = if mask.is_some() { MASKED } else { 0 };
    out.push(FIN_BINARY);
    if len < 126 {
        out.push(masked | len as u8);
    } else {
        let len = u16::try_from(len).expect("payloads are under 64 KiB");
        out.push(masked | 126);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// XORs `data` with the mask key, as a client masks and a server unmasks.
fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let x = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// A frame as read: a client's mask key, and the payload, still masked if it has one.
struct Frame<'a> {
    key: Option<[u8; 4]>,
    payload: &'a mut [u8],
}

/// Binary frames read from a raw socket into one reused buffer.
struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl FrameReader {
    fn new() -> Self {
        Self {
            buf: vec![0; READ_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Moves a partial frame to the front and reads more; false at end of stream.
    async fn fill(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            return Err(invalid("a frame larger than the read buffer"));
        }
        let n = sock.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next whole frame in the buffer.
    fn frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] != FIN_BINARY {
            return Err(invalid(format!("frame byte 0 is {:#04x}", b[0])));
        }
        let (len, mut at) = match b[1] & !MASKED {
            126 if b.len() < 4 => return Ok(None),
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => return Err(invalid("a frame over 64 KiB")),
            n => (n as usize, 2),
        };
        let mut key = None;
        if b[1] & MASKED != 0 {
            let Some(k) = b.get(at..at + 4) else {
                return Ok(None);
            };
            key = Some([k[0], k[1], k[2], k[3]]);
            at += 4;
        }
        if b.len() < at + len {
            return Ok(None);
        }
        let payload = self.start + at;
        self.start = payload + len;
        Ok(Some(Frame {
            key,
            payload: &mut self.buf[payload..payload + len],
        }))
    }
}

// ----- the floor server -----------------------------------------------------------------------

type Ws = WebSocketStream<TcpStream>;

/// Viewer sockets by ambulance, parked until that ambulance's ingest socket claims them.
type Parked<T> = Mutex<HashMap<usize, Vec<T>>>;

struct Floor {
    mode: Mode,
    per: usize,
    raw: Parked<Arc<RawViewer>>,
    ws: Parked<Ws>,
    /// Writes to a viewer the socket did not take whole at once.
    would_block: AtomicU64,
    /// Messages queued behind an earlier one's backlog (raw mode).
    queued: AtomicU64,
    errors: AtomicU64,
}

/// A viewer socket written directly by its ambulance's ingest task, with a backlog for what
/// the socket does not take at once.
struct RawViewer {
    sock: TcpStream,
    backlog: Mutex<Vec<u8>>,
    /// Set while the backlog is not empty: then a drain task owns the socket's writes.
    queued: AtomicBool,
}

impl RawViewer {
    fn send(self: &Arc<Self>, frame: &[u8], floor: &Floor) {
        loop {
            if !self.queued.load(Acquire) {
                let taken = match self.sock.try_write(frame) {
                    Ok(n) if n == frame.len() => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(_) => {
                        floor.errors.fetch_add(1, Relaxed);
                        return;
                    }
                };
                floor.would_block.fetch_add(1, Relaxed);
                self.backlog
                    .lock()
                    .expect("backlog")
                    .extend_from_slice(&frame[taken..]);
                self.queued.store(true, Release);
                tokio::spawn(self.clone().drain());
                return;
            }
            let mut backlog = self.backlog.lock().expect("backlog");
            if self.queued.load(Acquire) {
                backlog.extend_from_slice(frame);
                floor.queued.fetch_add(1, Relaxed);
                return;
            }
            // The drain task has just emptied the backlog: write directly again.
        }
    }

    async fn drain(self: Arc<Self>) {
        loop {
            if self.sock.writable().await.is_err() {
                return;
            }
            let mut backlog = self.backlog.lock().expect("backlog");
            match self.sock.try_write(&backlog) {
                Ok(n) => {
                    backlog.drain(..n);
                    if backlog.is_empty() {
                        self.queued.store(false, Release);
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

fn server_config() -> WebSocketConfig {
    // As the gateway's ingest and view routes: a 4 KiB read buffer.
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

async fn serve(floor: Arc<Floor>, listener: TcpListener) {
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                eprintln!("ws_floor: accept: {e}");
                floor.errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let floor = floor.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(&floor, sock).await {
                eprintln!("ws_floor: server: {e}");
                floor.errors.fetch_add(1, Relaxed);
            }
        });
    }
}

async fn connection(floor: &Floor, mut sock: TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let mut hello = [0; HELLO_BYTES];
    sock.read_exact(&mut hello).await?;
    let (role, k) = std::str::from_utf8(&hello)
        .ok()
        .and_then(|s| s.trim_end().split_once(' '))
        .and_then(|(role, k)| Some((role, k.parse::<usize>().ok()?)))
        .ok_or_else(|| invalid("a bad hello"))?;
    match (role, floor.mode) {
        ("view", mode) => {
            sock.write_all(b"!").await?;
            if mode == Mode::Raw {
                let viewer = RawViewer {
                    sock,
                    backlog: Mutex::default(),
                    queued: AtomicBool::new(false),
                };
                park(&floor.raw, k, Arc::new(viewer));
            } else {
                let ws = Ws::from_raw_socket(sock, Role::Server, Some(server_config())).await;
                park(&floor.ws, k, ws);
            }
            Ok(())
        }
        ("ingest", Mode::Raw) => {
            let viewers = claim(&floor.raw, k, floor.per).await?;
            sock.write_all(b"!").await?;
            ingest_raw(floor, sock, viewers).await
        }
        ("ingest", Mode::Tungstenite) => {
            let viewers = claim(&floor.ws, k, floor.per).await?;
            sock.write_all(b"!").await?;
            let ws = Ws::from_raw_socket(sock, Role::Server, Some(server_config())).await;
            ingest_ws(floor, ws, viewers).await
        }
        _ => Err(invalid(format!("an unknown role {role:?}"))),
    }
}

fn park<T>(parked: &Parked<T>, k: usize, viewer: T) {
    let mut parked = parked.lock().expect("parked viewers");
    parked.entry(k).or_default().push(viewer);
}

/// Takes ambulance `k`'s viewers once all `want` are parked (the load connects them first).
async fn claim<T>(parked: &Parked<T>, k: usize, want: usize) -> io::Result<Vec<T>> {
    for _ in 0..10_000 {
        {
            let mut parked = parked.lock().expect("parked viewers");
            if parked.get(&k).is_some_and(|v| v.len() >= want) {
                return Ok(parked.remove(&k).unwrap_or_default());
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(invalid(format!("ambulance {k}'s viewers never came")))
}

/// Reads client frames, and writes each, unmasked, to every viewer.
async fn ingest_raw(
    floor: &Floor,
    mut sock: TcpStream,
    viewers: Vec<Arc<RawViewer>>,
) -> io::Result<()> {
    let mut frames = FrameReader::new();
    let mut out = Vec::with_capacity(4 + WAVEFORM_BYTES);
    while frames.fill(&mut sock).await? {
        while let Some(Frame { key, payload }) = frames.frame()? {
            let key = key.ok_or_else(|| invalid("an unmasked client frame"))?;
            out.clear();
            put_header(&mut out, payload.len(), None);
            let at = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[at..], key);
            for viewer in &viewers {
                viewer.send(&out, floor);
            }
        }
    }
    Ok(())
}

async fn ingest_ws(floor: &Floor, mut ws: Ws, mut viewers: Vec<Ws>) -> io::Result<()> {
    while let Some(msg) = ws.next().await {
        let data = match msg.map_err(io::Error::other)? {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        for viewer in &mut viewers {
            offer(viewer, Message::Binary(data.clone()), floor).await?;
        }
    }
    Ok(())
}

/// What offering a message to a viewer's stream without waiting left to do.
enum Offered {
    Sent,
    /// Taken into the stream's buffer, not yet all written.
    Flush,
    /// Not taken: the stream is still writing an earlier message.
    Send(Message),
}

/// Offers `msg` as the gateway's `DirectSink` does, with a waker that is never woken.
fn try_offer(ws: &mut Ws, msg: Message) -> io::Result<Offered> {
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(ready) = ws.poll_ready_unpin(&mut cx) else {
        return Ok(Offered::Send(msg));
    };
    ready.map_err(io::Error::other)?;
    ws.start_send_unpin(msg).map_err(io::Error::other)?;
    match ws.poll_flush_unpin(&mut cx) {
        Poll::Ready(flushed) => flushed.map(|()| Offered::Sent).map_err(io::Error::other),
        Poll::Pending => Ok(Offered::Flush),
    }
}

/// Sends `msg` at once if the socket takes it; otherwise counts that and waits.
async fn offer(ws: &mut Ws, msg: Message, floor: &Floor) -> io::Result<()> {
    let left = try_offer(ws, msg)?;
    if !matches!(left, Offered::Sent) {
        floor.would_block.fetch_add(1, Relaxed);
    }
    let done = match left {
        Offered::Sent => Ok(()),
        Offered::Flush => ws.flush().await,
        Offered::Send(msg) => ws.send(msg).await,
    };
    done.map_err(io::Error::other)
}

// ----- the load -------------------------------------------------------------------------------

struct Load {
    epoch: Instant,
    n: usize,
    per: usize,
    stop: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    /// Messages a viewer never got, and the holes they came in.
    missing: AtomicU64,
    gaps: AtomicU64,
    repeats: AtomicU64,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    /// Per ambulance, the last sequence number sent; per viewer, the last received.
    last_sent: Vec<AtomicU64>,
    last_seen: Vec<AtomicU64>,
    /// End-to-end latency in µs.
    latency: Vec<Mutex<Histogram<u64>>>,
}

impl Load {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Relaxed);
        self.first_failure
            .lock()
            .expect("first failure")
            .get_or_insert(what);
    }

    /// All latencies recorded since the last call.
    fn take_latency(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.latency {
            let mut shard = shard.lock().expect("latency shard");
            all.add(&*shard).expect("same bounds");
            shard.reset();
        }
        all
    }
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// A payload starts with: send time (ns since the epoch), sequence number, ambulance.
fn stamp(payload: &mut [u8], sent_ns: u64, seq: u64, ambulance: u32) {
    payload[..8].copy_from_slice(&sent_ns.to_le_bytes());
    payload[8..16].copy_from_slice(&seq.to_le_bytes());
    payload[16..20].copy_from_slice(&ambulance.to_le_bytes());
}

fn read_stamp(p: &[u8]) -> Option<(u64, u64, u32)> {
    let word = |at: usize| Some(u64::from_le_bytes(p.get(at..at + 8)?.try_into().ok()?));
    let ambulance = u32::from_le_bytes(p.get(16..20)?.try_into().ok()?);
    Some((word(0)?, word(8)?, ambulance))
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(2 * 1024)
}

/// An ambulance's socket.
enum Uplink {
    Raw { sock: TcpStream, frame: Vec<u8> },
    Ws(Box<Ws>),
}

impl Uplink {
    async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        match self {
            Uplink::Raw { sock, frame } => {
                let key = rand::random::<[u8; 4]>();
                frame.clear();
                put_header(frame, payload.len(), Some(key));
                let at = frame.len();
                frame.extend_from_slice(payload);
                apply_mask(&mut frame[at..], key);
                sock.write_all(frame).await
            }
            Uplink::Ws(ws) => {
                let msg = Message::Binary(Bytes::copy_from_slice(payload));
                ws.send(msg).await.map_err(io::Error::other)
            }
        }
    }

    /// Ends the stream: a close frame on a WebSocket, end of stream on a raw socket.
    async fn close(self) {
        if let Uplink::Ws(mut ws) = self {
            let _ = ws.close().await;
        }
    }
}

/// A viewer's socket.
enum Downlink {
    Raw {
        sock: TcpStream,
        frames: FrameReader,
    },
    Ws(Box<Ws>),
}

impl Downlink {
    /// Waits for data and hands each message's payload to `each`; false at the end.
    async fn recv(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
        match self {
            Downlink::Raw { sock, frames } => {
                if !frames.fill(sock).await? {
                    return Ok(false);
                }
                while let Some(Frame { key, payload }) = frames.frame()? {
                    if key.is_some() {
                        return Err(invalid("a masked server frame"));
                    }
                    each(payload);
                }
                Ok(true)
            }
            Downlink::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    each(&data);
                    Ok(true)
                }
                Some(Ok(Message::Close(_))) | None => Ok(false),
                Some(Ok(_)) => Ok(true),
                Some(Err(e)) => Err(io::Error::other(e)),
            },
        }
    }
}

async fn ambulance(load: Arc<Load>, i: usize, mut up: Uplink) {
    let fill = |len: usize| -> Vec<u8> { (0..len).map(|j| (j * 31 + i * 7) as u8).collect() };
    let mut payloads = [fill(WAVEFORM_BYTES), fill(NUMERICS_BYTES)];
    // This ambulance's slot in the period, and its first whole period from now.
    let phase = load.epoch + PERIOD.mul_f64(i as f64 / load.n as f64);
    let since = Instant::now().saturating_duration_since(phase);
    let mut period = (since.as_nanos() / PERIOD.as_nanos()) as u32 + 1;
    let mut seq = 0;
    loop {
        tokio::time::sleep_until((phase + PERIOD * period).into()).await;
        if load.stop.load(Relaxed) {
            break;
        }
        let count = if period.is_multiple_of(PERIODS_PER_NUMERICS) {
            2
        } else {
            1
        };
        for payload in payloads.iter_mut().take(count) {
            seq += 1;
            stamp(payload, load.now_ns(), seq, i as u32);
            if let Err(e) = up.send(payload).await {
                load.fail(format!("ambulance {i}: {e}"));
                return;
            }
            load.last_sent[i].store(seq, Relaxed);
            load.sent.fetch_add(1, Relaxed);
        }
        period += 1;
    }
    up.close().await;
}

async fn viewer(load: Arc<Load>, v: usize, mut down: Downlink) {
    let ambulance = (v / load.per) as u32;
    let shard = &load.latency[v % SHARDS];
    let mut next = 1;
    let mut malformed = 0;
    loop {
        let open = down
            .recv(|p| {
                let now = load.now_ns();
                let Some((sent, seq, _)) = read_stamp(p).filter(|s| s.2 == ambulance) else {
                    malformed += 1;
                    return;
                };
                load.received.fetch_add(1, Relaxed);
                let us = now.saturating_sub(sent) / 1000;
                shard.lock().expect("latency shard").saturating_record(us);
                if seq < next {
                    load.repeats.fetch_add(1, Relaxed);
                    return;
                }
                if seq > next {
                    load.gaps.fetch_add(1, Relaxed);
                    load.missing.fetch_add(seq - next, Relaxed);
                }
                next = seq + 1;
                load.last_seen[v].store(seq, Relaxed);
            })
            .await;
        let stopping = load.stop.load(Relaxed);
        let trouble = match open {
            Ok(true) if malformed == 0 => continue,
            Ok(true) => format!("{malformed} malformed or misrouted messages"),
            Ok(false) | Err(_) if stopping => return,
            Ok(false) => "the connection closed".into(),
            Err(e) => e.to_string(),
        };
        load.fail(format!("viewer {v}: {trouble}"));
        return;
    }
}

/// Connects, says who it is, and waits for the server's one-byte go-ahead.
async fn connect(addr: SocketAddr, role: &str, k: usize) -> io::Result<TcpStream> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let hello = format!("{:<w$}\n", format!("{role} {k}"), w = HELLO_BYTES - 1);
    sock.write_all(hello.as_bytes()).await?;
    sock.read_exact(&mut [0]).await?;
    Ok(sock)
}

/// Connects every viewer, then every ambulance (which starts sending at once).
async fn start_load(load: Arc<Load>, addr: SocketAddr, mode: Mode) -> io::Result<()> {
    for v in 0..load.n * load.per {
        let sock = connect(addr, "view", v / load.per).await?;
        let down = match mode {
            Mode::Raw => Downlink::Raw {
                sock,
                frames: FrameReader::new(),
            },
            Mode::Tungstenite => Downlink::Ws(Box::new(
                Ws::from_raw_socket(sock, Role::Client, Some(client_config())).await,
            )),
        };
        tokio::spawn(viewer(load.clone(), v, down));
    }
    for i in 0..load.n {
        let sock = connect(addr, "ingest", i).await?;
        let up = match mode {
            Mode::Raw => Uplink::Raw {
                sock,
                frame: Vec::with_capacity(8 + WAVEFORM_BYTES),
            },
            Mode::Tungstenite => Uplink::Ws(Box::new(
                Ws::from_raw_socket(sock, Role::Client, Some(client_config())).await,
            )),
        };
        tokio::spawn(ambulance(load.clone(), i, up));
    }
    Ok(())
}

// ----- CPU ------------------------------------------------------------------------------------

/// The comm and utime + stime (fields 14 and 15) of a `/proc/.../stat` line.
fn comm_and_ticks(stat: &str) -> Option<(&str, u64)> {
    let (head, tail) = stat.rsplit_once(')')?;
    let (_, comm) = head.split_once('(')?;
    let mut times = tail
        .split_whitespace()
        .skip(11)
        .map(|f| f.parse::<u64>().ok());
    Some((comm, times.next()?? + times.next()??))
}

/// CPU ticks used so far.
struct Cpu {
    at: Instant,
    floor: u64,
    load: u64,
    process: u64,
    /// `/proc/stat`'s first line: user nice system idle iowait irq softirq steal.
    machine: [u64; 8],
}

impl Cpu {
    fn now() -> Cpu {
        let mut cpu = Cpu {
            at: Instant::now(),
            floor: 0,
            load: 0,
            process: 0,
            machine: [0; 8],
        };
        let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            match comm_and_ticks(&stat) {
                Some((comm, t)) if comm.starts_with("floor-rt") => cpu.floor += t,
                Some((comm, t)) if comm.starts_with("load-rt") => cpu.load += t,
                _ => {}
            }
        }
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        cpu.process = comm_and_ticks(&stat).map_or(0, |(_, t)| t);
        let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let first = all.lines().next().unwrap_or_default().split_whitespace();
        for (slot, f) in cpu.machine.iter_mut().zip(first.skip(1)) {
            *slot = f.parse().unwrap_or(0);
        }
        cpu
    }

    fn cores_until(&self, later: &Cpu) -> Cores {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let per_s = hz * later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / per_s;
        let m = |i: usize| cores(self.machine[i], later.machine[i]);
        Cores {
            floor: cores(self.floor, later.floor),
            load: cores(self.load, later.load),
            process: cores(self.process, later.process),
            machine: m(0) + m(1) + m(2) + m(5) + m(6),
            softirq: m(6),
            steal: m(7),
        }
    }
}

/// Cores used between two [`Cpu`] readings.
struct Cores {
    floor: f64,
    load: f64,
    process: f64,
    machine: f64,
    softirq: f64,
    steal: f64,
}

// ----- the run --------------------------------------------------------------------------------

/// Raises the open-files limit to its hard limit (every connection is two sockets here).
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = hard;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let end = text
        .match_indices(' ')
        .nth(2)
        .map_or(text.len(), |(at, _)| at);
    text[..end].to_owned()
}

/// Waits `secs`, printing rates and cores every 5 s.
fn run_for(load: &Load, label: &str, secs: u64, begin: Instant) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut cpu = Cpu::now();
    let (mut sent, mut received) = (load.sent.load(Relaxed), load.received.load(Relaxed));
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(Duration::from_secs(5)));
        let now = Cpu::now();
        let (s, r) = (load.sent.load(Relaxed), load.received.load(Relaxed));
        let secs = now.at.duration_since(cpu.at).as_secs_f64().max(1e-9);
        let c = cpu.cores_until(&now);
        println!(
            "[{:>5.1} s {label:<7}] in {:>6.0}/s  out {:>6.0}/s  cores: floor-rt {:.2}  \
             load-rt {:.2}  machine {:.2}",
            begin.elapsed().as_secs_f64(),
            (s - sent) as f64 / secs,
            (r - received) as f64 / secs,
            c.floor,
            c.load,
            c.machine
        );
        (cpu, sent, received) = (now, s, r);
    }
}

fn main() {
    let args = parse_args();
    let (n, per) = (args.ambulances, args.viewers);
    let begin = Instant::now();
    let files = raise_nofile();
    let needed = 2 * (n + n * per) as u64 + 64;
    if files < needed {
        eprintln!("ws_floor: {needed} open files needed, the limit is {files}");
        std::process::exit(2);
    }
    println!(
        "ws_floor ({} mode): {n} ambulances × {per} viewers, warm-up {} s, measured {} s; \
         floor-rt 2 threads, load-rt 2 threads; {} cores; load average {}",
        args.mode.name(),
        args.warmup,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        load_average()
    );
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };
    let (floor_rt, load_rt) = (runtime("floor-rt"), runtime("load-rt"));
    let floor = Arc::new(Floor {
        mode: args.mode,
        per,
        raw: Mutex::default(),
        ws: Mutex::default(),
        would_block: AtomicU64::new(0),
        queued: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let listener = floor_rt
        .block_on(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("listener address");
    floor_rt.spawn(serve(floor.clone(), listener));

    let counters = || (0..).map(|_| AtomicU64::new(0));
    let load = Arc::new(Load {
        epoch: Instant::now(),
        n,
        per,
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        missing: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        repeats: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        first_failure: Mutex::new(None),
        last_sent: counters().take(n).collect(),
        last_seen: counters().take(n * per).collect(),
        latency: (0..SHARDS)
            .map(|_| Mutex::new(latency_histogram()))
            .collect(),
    });
    if let Err(e) = load_rt.block_on(start_load(load.clone(), addr, args.mode)) {
        eprintln!("ws_floor: connecting the load: {e}");
        std::process::exit(1);
    }
    println!(
        "[{:>5.1} s setup  ] {} viewers and {n} ambulances connected to {addr}",
        begin.elapsed().as_secs_f64(),
        n * per
    );

    run_for(&load, "warm-up", args.warmup, begin);
    load.take_latency();
    let cpu0 = Cpu::now();
    let (sent0, received0) = (load.sent.load(Relaxed), load.received.load(Relaxed));
    run_for(&load, "measure", args.seconds, begin);
    let cpu1 = Cpu::now();
    let (sent1, received1) = (load.sent.load(Relaxed), load.received.load(Relaxed));
    let latency = load.take_latency();

    // Stop, let the viewers drain, then count what never arrived.
    load.stop.store(true, Relaxed);
    std::thread::sleep(PERIOD * 3);
    let behind = || -> u64 {
        let seen = load.last_seen.iter().enumerate();
        let gap = |(v, s): (usize, &AtomicU64)| {
            let sent = load.last_sent[v / per].load(Relaxed);
            sent.saturating_sub(s.load(Relaxed))
        };
        seen.map(gap).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while behind() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let tail = behind();

    let secs = cpu1.at.duration_since(cpu0.at).as_secs_f64();
    let c = cpu0.cores_until(&cpu1);
    let rate_in = (sent1 - sent0) as f64 / secs;
    let rate_out = (received1 - received0) as f64 / secs;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let lost = load.missing.load(Relaxed) + tail;
    let repeats = load.repeats.load(Relaxed);
    let failures = load.failures.load(Relaxed);
    let errors = floor.errors.load(Relaxed);
    let would_block = floor.would_block.load(Relaxed);
    let all_out = load.received.load(Relaxed);

    let per_message = |rate: f64| c.floor * 1e6 / rate.max(1e-9);
    let outside = (c.machine - c.process).max(0.0);
    let max_ms = latency.max() as f64 / 1000.0;
    let (missing, gaps) = (load.missing.load(Relaxed), load.gaps.load(Relaxed));
    let queued = match args.mode {
        Mode::Raw => format!("{} queued behind a backlog", floor.queued.load(Relaxed)),
        Mode::Tungstenite => "each waited for by its ingest task".into(),
    };
    let first_failure = load.first_failure.lock().expect("first failure").clone();
    println!(
        "\n== ws_floor ({} mode): {n} ambulances × {per} viewers, {secs:.1} s measured ==",
        args.mode.name()
    );
    let rows = [
        ("messages/s in (from ambulances)", format!("{rate_in:.0}")),
        ("messages/s out (to viewers)", format!("{rate_out:.0}")),
        ("floor server cores (floor-rt)", format!("{:.3}", c.floor)),
        (
            "  CPU per message in / per message out",
            format!(
                "{:.2} / {:.2} µs",
                per_message(rate_in),
                per_message(rate_out)
            ),
        ),
        ("load cores (load-rt)", format!("{:.3}", c.load)),
        ("process cores", format!("{:.2}", c.process)),
        (
            "machine cores busy (all processes, kernel)",
            format!(
                "{:.2}  (softirq {:.2}, outside this process {outside:.2}; stolen {:.2})",
                c.machine, c.softirq, c.steal
            ),
        ),
        (
            "latency end-to-end p50 / p99 / p99.9 / max",
            format!(
                "{:.3} / {:.3} / {:.3} / {max_ms:.3} ms  ({} messages)",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                latency.len()
            ),
        ),
        (
            "lost (in gaps + at the end) / gaps / repeats",
            format!("{lost} ({missing} + {tail}) / {gaps} / {repeats}"),
        ),
        (
            "writes that would block (whole run)",
            format!("{would_block} of {all_out} messages out; {queued}"),
        ),
        (
            "server errors / load failures",
            format!("{errors} / {failures}"),
        ),
        (
            "first load failure",
            first_failure.unwrap_or_else(|| "-".into()),
        ),
    ];
    for (what, value) in rows {
        println!("  {what:<44} {value}");
    }
    println!(
        "  issue 3's {TARGET_CORES} core: the floor takes {:.0} % of it, leaving {:.2} core for gateway logic",
        c.floor / TARGET_CORES * 100.0,
        TARGET_CORES - c.floor
    );
    println!(
        "  issue 3's p99 < {TARGET_P99_MS} ms: the floor's p99 is {:.3} ms",
        ms(0.99)
    );
    println!("  load average at end {}", load_average());

    let broken = lost > 0 || repeats > 0 || failures > 0 || errors > 0;
    load_rt.shutdown_background();
    floor_rt.shutdown_background();
    std::process::exit(i32::from(broken));
}
