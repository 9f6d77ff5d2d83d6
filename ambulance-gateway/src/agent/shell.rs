//! The agent's async shell: it paces the source in real time, writes the spool, owns the
//! WebSocket and the timers, and carries out what the [`Uplink`] core asks for.

use super::dicom_source::DicomSource;
use super::edf_source::EdfSource;
use super::simulator::Simulator;
use super::source::{FRAMES_PER_SEC, Framer, Produced, RawSource, Source};
use super::spool::{SEGMENT_BYTES, Spool, SpoolError};
use super::uplink::{AgentClock, Output, Uplink, UplinkConfig};
use super::{AgentError, MllpSpec, Settings, SourceSpec};
use crate::hl7::frames::frames_for;
use crate::hl7::listener::{self, MessageHandler};
use crate::hl7::pcd01::Observations;
use crate::hl7::{handle, not_stored};
use crate::wire::{Channel, GatewayControl, Payload};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{info, warn};

/// How long opening a connection (TCP, TLS, upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval of the progress log.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Identity of the HL7 input in the spool (it has no position to resume).
const MLLP_SOURCE: &str = "hl7-mllp";

/// A monitor's accepted message, handed to the main loop to be stored; the answer is `Ok`
/// once its frames are in the spool, else why not.
type Hl7Job = (Observations, oneshot::Sender<Result<(), String>>);

/// The HL7 input's numbering: the next sequence number (known once the spool has one) and
/// the channels of the last layout sent.
#[derive(Default)]
struct Hl7Input {
    next_seq: Option<u64>,
    layout: Option<Vec<Channel>>,
}

/// One MLLP connection from the monitor: parses each message and has the main loop store it.
struct MonitorConnection {
    jobs: mpsc::Sender<Hl7Job>,
}

impl MessageHandler for MonitorConnection {
    async fn message(&mut self, message: &[u8]) -> Vec<u8> {
        let now = crate::gateway::now_us();
        let handled = handle(message, now);
        let Some(observations) = handled.observations else {
            return handled.ack;
        };
        let (tx, rx) = oneshot::channel();
        let stored = match self.jobs.send((observations, tx)).await {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err("the agent is stopping".into())),
            Err(_) => Err("the agent is stopping".into()),
        };
        match stored {
            Ok(()) => handled.ack,
            Err(why) => not_stored(message, why, now),
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a monitor message was not stored.
#[derive(Debug, thiserror::Error)]
enum Hl7StoreError {
    /// This message cannot be stored now; the agent goes on.
    #[error("{0}")]
    Refused(String),
    /// The spool failed: the agent stops (what is in the spool stays for the next run).
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Why a connection attempt failed.
enum ConnectError {
    /// The gateway answered the upgrade with 401 or 403.
    Refused { status: u16, message: String },
    /// Anything else (network, TLS, timeout, another status): retry later.
    Other(String),
}

/// What the connection tasks report to the main loop; each carries its connection's id.
enum Event {
    Connected(u64, Box<Ws>),
    ConnectFailed(u64, ConnectError),
    Message(u64, Message),
    Closed(u64, String),
}

/// An open connection: a writer task fed by `tx` and a reader task feeding events.
struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Conn {
    /// Drops the connection at once.
    fn abort(self) {
        self.reader.abort();
        self.writer.abort();
    }

    /// Sends a close message and gives the writer a moment to deliver it.
    async fn close(self) {
        let _ = self.tx.send(Message::Close(None));
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer).await;
        self.reader.abort();
    }
}

/// Everything the main loop owns.
struct Agent {
    settings: Settings,
    request: Request<()>,
    connector: Connector,
    clock: AgentClock,
    spool: Spool,
    uplink: Uplink,
    /// The source until production starts, then the framer that reads it.
    source: Option<Box<dyn Source>>,
    framer: Option<Framer>,
    /// With `--mllp-listen`: the HL7 input instead of a source.
    hl7: Option<Hl7Input>,
    /// When the source's first sample of this run was (is to be) captured.
    origin: Instant,
    /// Source index of this run's first sample.
    start_position: u64,
    events: mpsc::UnboundedSender<Event>,
    conn: Option<Conn>,
    connecting: Option<u64>,
    next_conn_id: u64,
}

/// Runs the agent (see [`super::run`]).
pub(super) async fn run(settings: Settings) -> Result<(), AgentError> {
    let connector = Connector::Rustls(tls_config(settings.ca.as_deref())?);
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| AgentError::Usage(format!("--gateway: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", settings.token)).map_err(|_| {
        AgentError::Usage("the token has characters not allowed in a header".into())
    })?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    let (source, mut hl7_jobs): (Option<Box<dyn Source>>, _) = match &settings.source {
        SourceSpec::Raw(spec) => (Some(Box::new(RawSource::open(spec.clone())?)), None),
        SourceSpec::Edf(path) => (Some(Box::new(EdfSource::open(path)?)), None),
        SourceSpec::Dicom(path) => (Some(Box::new(DicomSource::open(path)?)), None),
        SourceSpec::Simulated(cfg) => (Some(Box::new(Simulator::new(*cfg)?)), None),
        SourceSpec::Mllp(spec) => (None, Some(listen_mllp(spec).await?)),
    };
    let identity = source.as_ref().map_or(MLLP_SOURCE.into(), |s| s.identity());
    let (spool, recovered) =
        Spool::open(&settings.spool, &settings.stream, &identity, SEGMENT_BYTES)?;
    info!(
        stream = %settings.stream,
        gateway = %settings.url,
        spool = %settings.spool.display(),
        backlog = recovered.frames.len(),
        next_seq = recovered.next_seq,
        position = recovered.position,
        "ambulance agent starting"
    );
    let numerics_frames = source.as_ref().is_none_or(|s| s.has_numerics());
    let frames_per_sec = (FRAMES_PER_SEC + u64::from(numerics_frames)) as f64;
    let clock = AgentClock::system();
    let now = Instant::now();
    let cfg = UplinkConfig {
        backlog_frames_per_sec: settings.backlog_rate * frames_per_sec,
        ..UplinkConfig::default()
    };
    let mut uplink = Uplink::new(cfg, clock, settings.stream.clone(), now, rand::random());
    for (seq, bytes) in recovered.frames {
        uplink.frame_produced(seq, bytes, now);
    }
    let (events, mut inbox) = mpsc::unbounded_channel();
    let mut agent = Agent {
        settings,
        request,
        connector,
        clock,
        spool,
        uplink,
        hl7: hl7_jobs.is_some().then(Hl7Input::default),
        source,
        framer: None,
        origin: now,
        start_position: recovered.position,
        events,
        conn: None,
        connecting: None,
        next_conn_id: 0,
    };
    if recovered.fresh {
        info!(
            "new spool: waiting for the gateway's welcome to learn where the stream's sequence stands"
        );
    } else {
        agent.start_source(recovered.next_seq);
    }
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut drain_deadline: Option<Instant> = None;
    loop {
        agent.carry_out()?;
        if agent.framer.as_ref().is_some_and(Framer::finished) {
            if agent.uplink.unacked() == 0 {
                info!(
                    acked_through = agent.uplink.acked_through(),
                    "the source has ended and the gateway has everything: done"
                );
                return agent.finish().await;
            }
            drain_deadline.get_or_insert_with(|| Instant::now() + agent.settings.drain_timeout);
        }
        let produce_at = agent
            .framer
            .as_ref()
            .and_then(Framer::next_due)
            .map(|d| agent.origin + d);
        let wake = agent.uplink.poll_timeout();
        tokio::select! {
            () = sleep_until(produce_at) => agent.produce()?,
            Some((observations, reply)) = next_job(&mut hl7_jobs) => {
                agent.take_hl7(&observations, reply)?;
            }
            () = sleep_until(wake) => agent.uplink.tick(Instant::now()),
            Some(event) = inbox.recv() => agent.handle(event)?,
            _ = progress.tick() => agent.log_progress(),
            () = sleep_until(drain_deadline) => {
                let unacked = agent.uplink.unacked();
                let secs = agent.settings.drain_timeout.as_secs_f64();
                agent.finish().await?;
                return Err(AgentError::DrainTimeout { unacked, secs });
            }
            _ = &mut ctrl_c => {
                warn!(unacked = agent.uplink.unacked(), "interrupted: unacknowledged frames stay in the spool for the next run");
                return agent.finish().await;
            }
        }
    }
}

/// The next monitor message to store, or never without an HL7 input.
async fn next_job(jobs: &mut Option<mpsc::Receiver<Hl7Job>>) -> Option<Hl7Job> {
    match jobs {
        Some(jobs) => jobs.recv().await,
        None => std::future::pending().await,
    }
}

/// Binds the MLLP address and serves the monitor's connections; their messages come out of
/// the returned channel.
async fn listen_mllp(spec: &MllpSpec) -> Result<mpsc::Receiver<Hl7Job>, AgentError> {
    let acceptor = match &spec.tls {
        Some((cert, key)) => Some(mllp_tls(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(spec.listen)
        .await
        .map_err(|e| AgentError::Usage(format!("cannot listen on {}: {e}", spec.listen)))?;
    let kind = if acceptor.is_some() {
        "MLLP over TLS"
    } else {
        "MLLP"
    };
    info!(listen = %spec.listen, "taking the monitor's HL7 over {kind}");
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(listener::serve(listener, acceptor, move |_| {
        MonitorConnection { jobs: tx.clone() }
    }));
    Ok(rx)
}

/// The TLS acceptor for MLLP from a certificate chain and key in PEM files.
fn mllp_tls(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, AgentError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| {
        AgentError::Tls(format!("{}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AgentError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| bad(cert, &e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    /// Starts reading the source (or taking HL7) now, numbering frames from `next_seq`.
    fn start_source(&mut self, next_seq: u64) {
        if let Some(hl7) = &mut self.hl7 {
            hl7.next_seq = Some(next_seq);
            info!(next_seq, "taking HL7 from the monitor");
            return;
        }
        let Some(source) = self.source.take() else {
            return;
        };
        let limit = self
            .settings
            .duration
            .map(|secs| (secs * source.rate_mhz() as f64 / 1000.0).round() as u64);
        self.origin = Instant::now();
        self.framer = Some(Framer::new(
            self.settings.stream.clone(),
            source,
            self.start_position,
            next_seq,
            limit,
            self.clock.micros(self.origin),
        ));
        info!(next_seq, position = self.start_position, "source started");
    }

    /// Makes the frames that are due, stores them durably, then hands them to the uplink.
    fn produce(&mut self) -> Result<(), AgentError> {
        let Some(framer) = &mut self.framer else {
            return Ok(());
        };
        let now = Instant::now();
        let mut produced: Vec<Produced> = Vec::new();
        while let Some(due) = framer.next_due() {
            if self.origin + due > now {
                break;
            }
            produced.extend(framer.produce()?);
        }
        if framer.finished() {
            info!(position = framer.position(), "the source has ended");
        }
        if produced.is_empty() {
            return Ok(());
        }
        for p in &produced {
            self.spool.append(p.seq, p.position, &p.bytes)?;
        }
        // Durable before it is sent: a restart neither loses nor repeats samples.
        self.spool.sync()?;
        for p in produced {
            self.uplink.frame_produced(p.seq, p.bytes, now);
        }
        Ok(())
    }

    /// Stores a monitor message and answers its connection; only a spool failure is an error.
    fn take_hl7(
        &mut self,
        observations: &Observations,
        reply: oneshot::Sender<Result<(), String>>,
    ) -> Result<(), AgentError> {
        match self.store_hl7(observations) {
            Ok(()) => {
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Err(Hl7StoreError::Refused(why)) => {
                warn!("a monitor message was not stored: {why}");
                let _ = reply.send(Err(why));
                Ok(())
            }
            Err(Hl7StoreError::Spool(e)) => {
                let _ = reply.send(Err("the agent's spool failed".into()));
                Err(e.into())
            }
        }
    }

    /// Stores a monitor message's frames in the spool (synced) and hands them to the uplink.
    fn store_hl7(&mut self, observations: &Observations) -> Result<(), Hl7StoreError> {
        let Some(hl7) = &mut self.hl7 else {
            return Err(Hl7StoreError::Refused("no HL7 input".into()));
        };
        let Some(next_seq) = hl7.next_seq else {
            return Err(Hl7StoreError::Refused(
                "the agent has not reached the gateway yet, so it cannot number values; retry later"
                    .into(),
            ));
        };
        let frames = frames_for(
            observations,
            &self.settings.stream,
            next_seq,
            hl7.layout.as_deref(),
        )
        .map_err(|e| Hl7StoreError::Refused(e.to_string()))?;
        let Some((last, _)) = frames.last() else {
            return Ok(());
        };
        let after = last.header.seq + 1;
        for (frame, bytes) in &frames {
            self.spool.append(frame.header.seq, 0, bytes)?;
        }
        // Durable before it is acknowledged to the monitor or sent.
        self.spool.sync()?;
        hl7.next_seq = Some(after);
        let now = Instant::now();
        for (frame, bytes) in frames {
            if let Payload::Layout(layout) = frame.payload {
                hl7.layout = Some(layout.channels);
            }
            self.uplink
                .frame_produced(frame.header.seq, bytes.to_vec(), now);
        }
        Ok(())
    }

    /// Carries out the core's outputs.
    fn carry_out(&mut self) -> Result<(), AgentError> {
        while let Some(output) = self.uplink.poll_output() {
            match output {
                Output::Connect => self.connect(),
                Output::Close => {
                    if let Some(conn) = self.conn.take() {
                        conn.abort();
                    }
                }
                Output::Send(bytes) => self.send(Message::Binary(bytes.into())),
                Output::SendText(text) => self.send(Message::Text(text.into())),
                Output::Ping => self.send(Message::Ping(Default::default())),
                Output::Forget(through) => self.spool.forget(through)?,
                Output::Welcomed { durable_through } => self.welcomed(durable_through)?,
                Output::Consult { room, crew_url } => {
                    let link = if crew_url.starts_with("http") {
                        crew_url
                    } else {
                        format!("{}{crew_url}", self.settings.web_base)
                    };
                    let line =
                        format!("consult requested by the ER: open {link} on the crew tablet");
                    info!(%room, "{line}");
                    println!("{line}");
                }
                Output::Fatal { code, message } => {
                    return Err(AgentError::NotGranted { code, message });
                }
            }
        }
        Ok(())
    }

    fn welcomed(&mut self, durable_through: u64) -> Result<(), AgentError> {
        if let Some(hl7) = &mut self.hl7 {
            match hl7.next_seq {
                None => {
                    self.spool.start_at(durable_through + 1, 0)?;
                    self.start_source(durable_through + 1);
                }
                Some(next) if next <= durable_through => {
                    warn!(
                        durable_through,
                        next_seq = next,
                        "the gateway is ahead of this spool: numbering on after its durable point"
                    );
                    hl7.next_seq = Some(durable_through + 1);
                }
                Some(_) => {}
            }
        } else if self.source.is_some() {
            let next_seq = durable_through + 1;
            self.spool.start_at(next_seq, self.start_position)?;
            self.start_source(next_seq);
        } else if let Some(framer) = &mut self.framer
            && framer.next_seq() <= durable_through
        {
            warn!(
                durable_through,
                next_seq = framer.next_seq(),
                "the gateway is ahead of this spool: numbering on after its durable point"
            );
            framer.skip_to_seq(durable_through + 1);
        }
        Ok(())
    }

    fn send(&self, message: Message) {
        if let Some(conn) = &self.conn {
            let _ = conn.tx.send(message);
        }
    }

    fn connect(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.abort();
        }
        self.next_conn_id += 1;
        let id = self.next_conn_id;
        self.connecting = Some(id);
        let request = self.request.clone();
        let connector = self.connector.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let attempt = tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                true,
                Some(connector),
            );
            let event = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok((ws, _))) => Event::Connected(id, Box::new(ws)),
                Ok(Err(e)) => Event::ConnectFailed(id, connect_error(e)),
                Err(_) => Event::ConnectFailed(id, ConnectError::Other("timed out".into())),
            };
            let _ = events.send(event);
        });
    }

    fn handle(&mut self, event: Event) -> Result<(), AgentError> {
        let now = Instant::now();
        match event {
            Event::Connected(id, ws) if self.connecting == Some(id) => {
                self.connecting = None;
                let (sink, stream) = (*ws).split();
                let (tx, rx) = mpsc::unbounded_channel();
                self.conn = Some(Conn {
                    id,
                    tx,
                    reader: tokio::spawn(read_loop(id, stream, self.events.clone())),
                    writer: tokio::spawn(write_loop(sink, rx)),
                });
                info!("connected to the gateway");
                self.uplink.connected(now);
            }
            Event::ConnectFailed(id, e) if self.connecting == Some(id) => {
                self.connecting = None;
                match e {
                    ConnectError::Refused { status, message } => {
                        return Err(AgentError::Refused { status, message });
                    }
                    ConnectError::Other(error) => {
                        warn!(%error, "cannot connect to the gateway; retrying");
                        self.uplink.disconnected(now);
                    }
                }
            }
            Event::Message(id, message) if self.is_current(id) => match message {
                Message::Text(text) => match serde_json::from_str::<GatewayControl>(&text) {
                    Ok(control) => self.uplink.received_control(control, now),
                    Err(e) => {
                        warn!(error = %e, "ignoring an unknown message from the gateway");
                        self.uplink.heard(now);
                    }
                },
                _ => self.uplink.heard(now),
            },
            Event::Closed(id, reason) if self.is_current(id) => {
                info!(%reason, "the connection to the gateway closed");
                if let Some(conn) = self.conn.take() {
                    conn.abort();
                }
                self.uplink.disconnected(now);
            }
            // Events of a connection given up on already.
            Event::Connected(..)
            | Event::ConnectFailed(..)
            | Event::Message(..)
            | Event::Closed(..) => {}
        }
        Ok(())
    }

    fn is_current(&self, id: u64) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id == id)
    }

    fn log_progress(&self) {
        info!(
            next_seq = self
                .framer
                .as_ref()
                .map(Framer::next_seq)
                .or(self.hl7.as_ref().and_then(|h| h.next_seq))
                .unwrap_or(0),
            unacked = self.uplink.unacked(),
            acked_through = self.uplink.acked_through(),
            connected = self.uplink.is_up(),
            offset_ms = self
                .uplink
                .offset_us()
                .map_or(f64::NAN, |o| o as f64 / 1000.0),
            "agent status"
        );
    }

    /// Saves the spool's state and closes the connection politely.
    async fn finish(mut self) -> Result<(), AgentError> {
        self.spool.sync()?;
        // A spool that never started its source stays new (it still has to learn the
        // stream's sequence from a welcome).
        let started = match &self.hl7 {
            Some(hl7) => hl7.next_seq.is_some(),
            None => self.source.is_none(),
        };
        if started {
            self.spool.save()?;
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
        Ok(())
    }
}

fn connect_error(e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let message = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| response.status().to_string());
            if status == 401 || status == 403 {
                ConnectError::Refused { status, message }
            } else {
                ConnectError::Other(format!("HTTP {status}: {message}"))
            }
        }
        other => ConnectError::Other(other.to_string()),
    }
}

async fn read_loop(id: u64, mut stream: SplitStream<Ws>, events: mpsc::UnboundedSender<Event>) {
    let reason = loop {
        match stream.next().await {
            Some(Ok(message)) => {
                if events.send(Event::Message(id, message)).is_err() {
                    return;
                }
            }
            Some(Err(e)) => break e.to_string(),
            None => break "closed by the gateway".to_owned(),
        }
    };
    let _ = events.send(Event::Closed(id, reason));
}

async fn write_loop(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(message) = rx.recv().await {
        let last = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || last {
            break;
        }
    }
}

/// TLS client settings: the public web roots plus the certificates in `ca`.
fn tls_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let bad = |e: &dyn std::fmt::Display| AgentError::Tls(format!("{}: {e}", path.display()));
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no certificate in the file"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AgentError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
