//! The ambulance agent against a fake gateway (plain WebSocket on 127.0.0.1): it replays a
//! slice of the real MIT-BIH record in real time, and the gateway checks that every sample
//! arrives, once, in order — also across a gateway outage and an agent restart.

use ambulance_gateway::agent::{self, AgentArgs, AgentError};
use ambulance_gateway::wire::{
    AgentControl, FLAG_LATE, Frame, GatewayControl, Kind, Payload, decode,
};
use base64::Engine;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

const RECORD: &str = "../../shared/data/ecg/mitdb-208-mlii-360hz.u16le.raw";
const RATE: usize = 360;

/// The first `seconds` of the real record, written to a temporary raw file.
fn ecg_slice(dir: &Path, seconds: usize) -> (PathBuf, Vec<i32>) {
    let record = Path::new(env!("CARGO_MANIFEST_DIR")).join(RECORD);
    let bytes = std::fs::read(&record)
        .unwrap_or_else(|e| panic!("the test record {} is missing: {e}", record.display()));
    let slice = &bytes[..seconds * RATE * 2];
    let path = dir.join("ecg.raw");
    std::fs::write(&path, slice).unwrap();
    let samples = slice
        .chunks_exact(2)
        .map(|b| i32::from(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    (path, samples)
}

/// A crew token naming `AMB-7` (unsigned: the fake gateway compares it as a string).
fn crew_token() -> String {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.c2ln",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(r#"{"sub":"AMB-7","ambulance":"AMB-7","role":"crew","iat":1,"exp":9999999999}"#)
    )
}

/// What the fake gateway holds: its "journal" survives its restarts.
#[derive(Default)]
struct Held {
    /// Frames kept, by sequence number (first copy).
    frames: BTreeMap<u64, Frame>,
    /// Every frame up to this one is held.
    durable: u64,
    /// Binary messages received, duplicates included.
    received: usize,
    /// Frames received with the late flag.
    late: usize,
    /// Broken promises: frames resent although the welcome said they were durable.
    violations: Vec<String>,
}

#[derive(Clone)]
struct Gateway {
    held: Arc<Mutex<Held>>,
    /// Keep and acknowledge frames (else drop them silently, like a gateway losing them).
    keep: Arc<AtomicBool>,
    token: String,
}

impl Gateway {
    fn new() -> Self {
        Self {
            held: Arc::default(),
            keep: Arc::new(AtomicBool::new(true)),
            token: crew_token(),
        }
    }

    /// Listens on `addr`; aborting the handle drops the listener and every connection.
    async fn start(&self, addr: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = self.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                conns.spawn(gw.clone().serve(tcp));
            }
        });
        (addr, task)
    }

    async fn serve(self, tcp: tokio::net::TcpStream) {
        let expected = format!("Bearer {}", self.token);
        // The callback's signature is tungstenite's.
        #[allow(clippy::result_large_err)]
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if auth == Some(expected.as_str()) && req.uri().path() == "/telemetry/ingest" {
                Ok(resp)
            } else {
                let body = r#"{"code":"unauthorized","message":"bad token"}"#;
                Err(tokio_tungstenite::tungstenite::http::Response::builder()
                    .status(401)
                    .body(Some(body.into()))
                    .unwrap())
            }
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        let welcomed_through = self.held.lock().unwrap().durable;
        let welcome = GatewayControl::Welcome {
            stream: "AMB-7".parse().unwrap(),
            durable_through: welcomed_through,
        };
        if tx.send(text(&welcome)).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = rx.next().await {
            let reply = match msg {
                Message::Binary(bytes) => {
                    let frame = decode(&bytes).expect("a valid frame");
                    let seq = frame.header.seq;
                    let mut held = self.held.lock().unwrap();
                    held.received += 1;
                    if frame.header.flags & FLAG_LATE != 0 {
                        held.late += 1;
                    }
                    if seq <= welcomed_through {
                        held.violations.push(format!(
                            "frame {seq} resent after the welcome said {welcomed_through} was durable"
                        ));
                    }
                    if !self.keep.load(Ordering::SeqCst) {
                        continue;
                    }
                    held.frames.entry(seq).or_insert(frame);
                    while held.frames.contains_key(&(held.durable + 1)) {
                        held.durable += 1;
                    }
                    GatewayControl::Ack {
                        stream: "AMB-7".parse().unwrap(),
                        through: held.durable,
                    }
                }
                Message::Text(t) => match serde_json::from_str(&t).expect("a control message") {
                    AgentControl::Time { t0 } => GatewayControl::Time { t0, t1: now_us() },
                },
                _ => continue,
            };
            if tx.send(text(&reply)).await.is_err() {
                return;
            }
        }
    }

    /// Checks that the held frames are the layout then exactly `samples`, sequence numbers
    /// without gaps, and that no promise was broken. Returns the number of layouts.
    fn check(&self, samples: &[i32]) -> usize {
        let held = self.held.lock().unwrap();
        assert!(held.violations.is_empty(), "{:?}", held.violations);
        let seqs: Vec<u64> = held.frames.keys().copied().collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gaps");
        let first = held.frames.values().next().expect("frames arrived");
        assert_eq!(
            first.header.kind,
            Kind::Layout,
            "the first frame is the layout"
        );
        let mut got = Vec::new();
        let mut layouts = 0;
        for frame in held.frames.values() {
            match &frame.payload {
                Payload::Waveform(w) => got.extend_from_slice(&w.blocks[0].samples),
                Payload::Layout(l) => {
                    layouts += 1;
                    let ch = &l.channels[0];
                    assert_eq!((ch.rate_hz, ch.gain, ch.baseline), (360.0, 200.0, 1024.0));
                    assert_eq!(ch.label, "MLII");
                }
                Payload::Numerics(_) => panic!("a recording has no numerics"),
            }
        }
        assert_eq!(got.len(), samples.len(), "sample count");
        assert!(got == samples, "the samples differ from the record");
        layouts
    }
}

fn text(msg: &GatewayControl) -> Message {
    Message::Text(serde_json::to_string(msg).unwrap().into())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

/// Runs the agent on its own thread (it builds its own runtime) and reports its result.
fn spawn_agent(
    addr: SocketAddr,
    token: &str,
    file: &Path,
    spool: &Path,
    extra: &[&str],
) -> oneshot::Receiver<Result<(), AgentError>> {
    let mut argv = record_argv(addr, token, file, spool);
    argv.extend(extra.iter().map(|s| s.to_string()));
    let args = Cli::try_parse_from(argv).unwrap().args;
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(agent::run(args));
    });
    rx
}

async fn finished(rx: oneshot::Receiver<Result<(), AgentError>>) -> Result<(), AgentError> {
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the agent finishes in time")
        .expect("the agent thread reports")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_sample_arrives_once_in_order_and_the_agent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (file, samples) = ecg_slice(dir.path(), 2);
    let gw = Gateway::new();
    let (addr, _server) = gw.start("127.0.0.1:0".parse().unwrap()).await;
    let started = std::time::Instant::now();
    let agent = spawn_agent(addr, &gw.token, &file, &dir.path().join("spool"), &[]);
    finished(agent).await.expect("the agent exits cleanly");
    // Real time: 2 s of samples take about 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gw.check(&samples), 1);
    let held = gw.held.lock().unwrap();
    assert_eq!(
        held.received,
        held.frames.len(),
        "no duplicates on a healthy link"
    );
    assert_eq!(held.late, 0, "no backlog on a healthy link");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, samples) = ecg_slice(dir.path(), 4);
    let gw = Gateway::new();
    let (addr, server) = gw.start("127.0.0.1:0".parse().unwrap()).await;
    let agent = spawn_agent(addr, &gw.token, &file, &dir.path().join("spool"), &[]);
    wait_until("a second of frames", || {
        gw.held.lock().unwrap().durable >= 25
    })
    .await;
    server.abort();
    let _ = server.await;
    let before = gw.held.lock().unwrap().durable;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, _server) = gw.start(addr).await;
    finished(agent).await.expect("the agent exits cleanly");
    assert_eq!(gw.check(&samples), 1);
    let held = gw.held.lock().unwrap();
    assert!(held.late > 0, "the outage's frames came from the backlog");
    assert!(held.durable > before + 25);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_resumes_where_its_spool_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (file, samples) = ecg_slice(dir.path(), 2);
    let spool = dir.path().join("spool");
    let gw = Gateway::new();
    // First run: the gateway takes the frames but never acknowledges them.
    gw.keep.store(false, Ordering::SeqCst);
    let (addr, _server) = gw.start("127.0.0.1:0".parse().unwrap()).await;
    let run = spawn_agent(
        addr,
        &gw.token,
        &file,
        &spool,
        &["--duration", "1", "--drain-timeout", "0.3"],
    );
    let err = finished(run).await.expect_err("the drain times out");
    assert!(
        matches!(err, AgentError::DrainTimeout { unacked, .. } if unacked > 25),
        "{err}"
    );
    assert!(gw.held.lock().unwrap().received > 25);
    // Second run: the spool's frames go first (as backlog), then the next second of samples.
    gw.keep.store(true, Ordering::SeqCst);
    let run = spawn_agent(addr, &gw.token, &file, &spool, &["--duration", "1"]);
    finished(run).await.expect("the agent exits cleanly");
    assert_eq!(gw.check(&samples), 2, "one layout per run");
    assert!(gw.held.lock().unwrap().late > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = ecg_slice(dir.path(), 1);
    let gw = Gateway::new();
    let (addr, _server) = gw.start("127.0.0.1:0".parse().unwrap()).await;
    let wrong = format!("{}x", gw.token);
    let run = spawn_agent(addr, &wrong, &file, &dir.path().join("spool"), &[]);
    let err = finished(run).await.expect_err("refused");
    assert!(
        matches!(err, AgentError::Refused { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad token"), "{err}");
}

/// Environment variable that makes [`child_agent`] run the agent (arguments separated by
/// the unit separator).
const CHILD_ARGS: &str = "MEDRELAY_TEST_AGENT_ARGS";

/// Runs the agent in a child process of [`a_killed_agent_loses_and_repeats_nothing`] (which
/// starts this test binary again); does nothing in a normal test run.
#[test]
fn child_agent() {
    let Ok(argv) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let args = Cli::try_parse_from(argv.split('\u{1f}')).unwrap().args;
    agent::run(args).unwrap();
}

/// The agent's command line replaying the MIT-BIH record `file` (raw, 360 Hz, gain 200,
/// baseline 1024) to the gateway at `addr`.
fn record_argv(addr: SocketAddr, token: &str, file: &Path, spool: &Path) -> Vec<String> {
    let gateway = format!("ws://{addr}");
    [
        "agent",
        "--gateway",
        &gateway,
        "--token",
        token,
        "--source",
        file.to_str().unwrap(),
        "--format",
        "raw",
        "--rate",
        "360",
        "--gain",
        "200",
        "--baseline",
        "1024",
        "--labels",
        "MLII",
        "--spool",
        spool.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn_child(addr: SocketAddr, token: &str, file: &Path, spool: &Path) -> std::process::Child {
    let argv = record_argv(addr, token, file, spool).join("\u{1f}");
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_agent", "--test-threads=1", "--quiet"])
        .env(CHILD_ARGS, argv)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, samples) = ecg_slice(dir.path(), 3);
    let spool = dir.path().join("spool");
    let gw = Gateway::new();
    let (addr, _server) = gw.start("127.0.0.1:0".parse().unwrap()).await;
    let mut child = spawn_child(addr, &gw.token, &file, &spool);
    wait_until("a second of frames", || {
        gw.held.lock().unwrap().received >= 25
    })
    .await;
    // SIGKILL: no chance to save anything.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_child(addr, &gw.token, &file, &spool);
    let mut status = None;
    for _ in 0..400 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        child.kill().unwrap();
        panic!("the restarted agent did not finish in time");
    };
    assert!(
        status.success(),
        "the restarted agent exits cleanly: {status}"
    );
    // The whole recording exactly once: the restart resumed at the first sample never stored.
    assert_eq!(gw.check(&samples), 2, "one layout per run");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_streams_twelve_leads_and_vitals() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::new();
    let (addr, _server) = gw.start("127.0.0.1:0".parse().unwrap()).await;
    let argv = [
        "agent".to_string(),
        "--gateway".into(),
        format!("ws://{addr}/telemetry/ingest"),
        "--token".into(),
        gw.token.clone(),
        "--simulate".into(),
        "--sim-hr".into(),
        "151".into(),
        "--duration".into(),
        "1.2".into(),
        "--spool".into(),
        dir.path().join("spool").to_str().unwrap().into(),
    ];
    let args = Cli::try_parse_from(argv).unwrap().args;
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(agent::run(args));
    });
    finished(rx).await.expect("the agent exits cleanly");
    let held = gw.held.lock().unwrap();
    let mut leads = vec![Vec::new(); 12];
    let mut hr = Vec::new();
    for frame in held.frames.values() {
        match &frame.payload {
            Payload::Layout(l) => {
                let labels: Vec<&str> = l.channels.iter().map(|c| c.label.as_str()).collect();
                assert_eq!(labels[..3], ["I", "II", "III"]);
                assert_eq!(labels.len(), 12);
                assert!(
                    l.channels
                        .iter()
                        .all(|c| c.rate_hz == 500.0 && c.gain == 1000.0)
                );
            }
            Payload::Waveform(w) => {
                for b in &w.blocks {
                    leads[b.channel as usize].extend_from_slice(&b.samples);
                }
            }
            Payload::Numerics(values) => hr.extend(
                values
                    .iter()
                    .filter(|n| n.code == ambulance_gateway::wire::Vital::Hr.code())
                    .map(|n| n.value),
            ),
        }
    }
    assert!(
        leads.iter().all(|l| l.len() == 600),
        "1.2 s at 500 Hz per lead"
    );
    for ((l1, l2), l3) in leads[0].iter().zip(&leads[1]).zip(&leads[2]) {
        assert_eq!(*l3, l2 - l1, "III = II - I");
    }
    assert_eq!(hr, [151.0, 151.0], "numerics at 0 s and 1 s");
}
