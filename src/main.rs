//! `medrelay`: the whole server in one binary (signaling, SFU, pages) and its tools.
//!
//! - `medrelay serve` runs everything with embedded defaults;
//! - `medrelay token` prints a signed token (consult room, ambulance, or ER console);
//! - `medrelay ambulance` runs the ambulance agent that streams a monitor to the gateway.

mod config;
mod pages;
mod recording;
mod secrets;

use anyhow::Context;
use clap::{Parser, Subcommand};
use config::{ServeArgs, Tls};
use signaling::token::{Role, Scope, TokenKeys};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::info;

/// mimalloc instead of glibc's malloc: the gateway's rings allocate and free thousands of
/// frames a second across threads; with glibc's malloc 1,000 ambulances took 0.04-0.19 core
/// more, with a higher p99 (docs/benchmarks.md, "Telemetry gateway", fifth round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Real-time telemedicine and emergency media backend.
#[derive(Parser)]
#[command(name = "medrelay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run signaling, the SFU and the web pages.
    Serve(ServeArgs),
    /// Print a signed token for a consult room, an ambulance stream or an ER console.
    Token(TokenArgs),
    /// Stream an ambulance's monitor to the hospital gateway (store and forward).
    Ambulance(ambulance_gateway::agent::AgentArgs),
    /// Check or search the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Put rooms of WebRTC publishers and subscribers on an SFU (medrelay or Janus) and
    /// measure what it forwards and the latency it adds.
    Load(LoadArgs),
}

/// `medrelay load …`.
#[derive(clap::Args)]
struct LoadArgs {
    #[command(flatten)]
    scenario: loadgen::Scenario,
    /// The medrelay server's data directory, whose signing key makes the room tokens.
    #[arg(long, env = "MEDRELAY_DATA_DIR", default_value = "medrelay-data")]
    data_dir: PathBuf,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `medrelay audit …`.
#[derive(Subcommand)]
enum AuditCommand {
    /// Checks every entry's hash chain; names the first edited, removed or reordered entry.
    Verify(AuditDir),
    /// Prints the entries (JSON lines) that match every filter given.
    Query {
        #[command(flatten)]
        dir: AuditDir,
        /// Only this room.
        #[arg(long)]
        room: Option<String>,
        /// Only this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Only this action (join, leave, publish, recording_start, download, …).
        #[arg(long)]
        action: Option<recorder::audit::Action>,
        /// Only entries at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        from: Option<SystemTime>,
        /// Only entries before this time (RFC 3339).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        to: Option<SystemTime>,
    },
}

/// Where the audit trail and its key are.
#[derive(clap::Args)]
struct AuditDir {
    /// The server's data directory.
    #[arg(long, env = "MEDRELAY_DATA_DIR", default_value = "medrelay-data")]
    data_dir: PathBuf,
    /// The master key file [default: DATA_DIR/master.key].
    #[arg(long, env = "MEDRELAY_MASTER_KEY")]
    master_key: Option<PathBuf>,
}

impl AuditDir {
    /// The log's path and the key of its chain.
    fn open(&self) -> anyhow::Result<(PathBuf, recorder::audit::AuditKey)> {
        let key_path = self
            .master_key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"));
        let key = recorder::sealed::MasterKey::load(&key_path)?;
        let path = self.data_dir.join("audit").join("audit.log");
        Ok((path, recorder::audit::audit_key(&key)))
    }
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(dir) => {
            let (path, key) = dir.open()?;
            let report = recorder::audit::verify(&path, &key)
                .with_context(|| format!("the audit trail {} does not verify", path.display()))?;
            println!(
                "audit trail intact: {} entries, last seq {}",
                report.entries, report.last_seq
            );
            Ok(())
        }
        AuditCommand::Query {
            dir,
            room,
            identity,
            action,
            from,
            to,
        } => {
            let (path, _) = dir.open()?;
            let ms = |t: SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            };
            let filter = recorder::audit::Filter {
                room,
                actor: identity,
                action,
                target: None,
                from_ms: from.map(ms),
                to_ms: to.map(ms),
            };
            for entry in recorder::audit::query(&path, &filter)? {
                println!("{}", serde_json::to_string(&entry?)?);
            }
            Ok(())
        }
    }
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The consult room the token admits to.
    #[arg(long)]
    room: Option<String>,
    /// The ambulance stream the token may send (role crew) or view (er, specialist).
    #[arg(long)]
    ambulance: Option<String>,
    /// The holder's display name (defaults to the ambulance id).
    #[arg(long, required_unless_present = "ambulance")]
    identity: Option<String>,
    /// specialist, clinic, crew, er or observer.
    #[arg(long)]
    role: Role,
    /// Validity, e.g. 30m, 2h.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The server's data directory (where its signing key is).
    #[arg(long, env = "MEDRELAY_DATA_DIR", default_value = "medrelay-data")]
    data_dir: PathBuf,
}

/// Length of the token signing key and of a generated API key, in bytes.
const SIGNING_KEY_BYTES: usize = 32;
const API_KEY_BYTES: usize = 24;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The load generator's hundreds of peers would drown its progress in state changes.
    let default_filter = match cli.command {
        Command::Load(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDRELAY_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Command::Ambulance(args) => Ok(ambulance_gateway::agent::run(args)?),
        Command::Audit(command) => audit(command),
        Command::Load(args) => load(args),
        Command::Token(args) => {
            let secret = secrets::load_or_create(&args.data_dir, "signing.key", SIGNING_KEY_BYTES)
                .with_context(|| {
                    format!("reading the signing key in {}", args.data_dir.display())
                })?;
            let keys = TokenKeys::new(&hex::decode(secret)?);
            let identity = args
                .identity
                .or_else(|| args.ambulance.clone())
                .expect("clap requires --identity without --ambulance");
            if args.room.is_none() && args.ambulance.is_none() && args.role == Role::Crew {
                anyhow::bail!("a crew token names its ambulance: add --ambulance ID");
            }
            let scope = Scope {
                room: args.room,
                ambulance: args.ambulance,
            };
            println!(
                "{}",
                keys.issue(&scope, &identity, args.role, args.ttl, SystemTime::now())
            );
            Ok(())
        }
    }
}

fn load(args: LoadArgs) -> anyhow::Result<()> {
    let mint: loadgen::TokenMinter = match args.scenario.sfu {
        loadgen::Sfu::Medrelay => {
            // The running server's key; a load run never makes one.
            let secret = secrets::load(&args.data_dir, "signing.key").with_context(|| {
                format!(
                    "reading the server's signing key in {}",
                    args.data_dir.display()
                )
            })?;
            let keys = TokenKeys::new(&hex::decode(secret)?);
            Arc::new(move |room, identity, publishes| {
                let role = if publishes {
                    Role::Clinic
                } else {
                    Role::Observer
                };
                let ttl = Duration::from_secs(24 * 3600);
                keys.issue(&Scope::room(room), identity, role, ttl, SystemTime::now())
            })
        }
        loadgen::Sfu::Janus => Arc::new(|_, _, _| String::new()),
    };
    let summary = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(loadgen::run(&args.scenario, mint))?;
    let json = serde_json::to_string_pretty(&summary)?;
    println!("{json}");
    if let Some(path) = args.json {
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn serve(config: config::ServeConfig) -> anyhow::Result<()> {
    let secret = secrets::load_or_create(&config.data_dir, "signing.key", SIGNING_KEY_BYTES)
        .with_context(|| format!("preparing the data directory {}", config.data_dir.display()))?;
    let api_key = match config.api_key.clone() {
        Some(key) => key,
        None => secrets::load_or_create(&config.data_dir, "api.key", API_KEY_BYTES)?,
    };
    let keys = TokenKeys::new(&hex::decode(secret)?);

    let (key_path, key_given) = &config.master_key;
    let master_key = recording::master_key(key_path, &config.data_dir, *key_given)?;
    let journal_master_key = master_key.clone();
    let recorder_config = recorder::consult::RecorderConfig {
        data_dir: config.data_dir.clone(),
        master_key,
    };
    let recorder = Arc::new(
        recorder::consult::Recorder::start(recorder_config.clone())
            .context("starting the recorder")?,
    );
    let taps = Box::new(recording::Taps(recorder.media()));
    let media_bind = SocketAddr::new(config.listen.ip(), config.media_port);
    let (sfu, events) = sfu::shell::spawn(media_bind, config.announce_ip, Some(taps), config.fec)
        .await
        .with_context(|| format!("binding the media socket {media_bind}"))?;
    let recordings = signaling::recordings::RecordingsApi::new(
        keys.clone(),
        api_key.clone(),
        recorder.clone(),
        recorder_config,
        config.retention,
    )
    .context("opening the recordings index")?;
    let state = signaling::AppState::new(
        keys.clone(),
        api_key,
        sfu,
        Arc::new(recording::Records(recorder.clone())),
        config.turn.clone(),
        config.resume_window,
    );
    tokio::spawn(signaling::dispatch(state.clone(), events));
    recording::forward_events(&recorder, state.clone());
    let gateway = ambulance_gateway::gateway::Gateway::start(
        ambulance_gateway::gateway::GatewayConfig {
            data_dir: config.data_dir.clone(),
            ring_seconds: config.telemetry_ring_seconds,
            master_key: Some(journal_master_key),
        },
        keys,
    );
    gateway.register_metrics(&state.metrics);
    gateway.set_records(recorder.clone());
    tokio::spawn(recording::expire_hourly(
        recorder.clone(),
        gateway.clone(),
        config.retention,
    ));
    state
        .metrics
        .register(Box::new(signaling::recordings::RecorderMetrics::new(
            recorder.clone(),
        )))?;
    let tls = tls_server_config(&config)?;
    if let Some(addr) = config.mllp_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the MLLP address {addr}"))?;
        let acceptor = match (&tls, config.mllp_tls) {
            (Some(tls), true) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls.clone()))),
            _ => None,
        };
        let kind = if acceptor.is_some() {
            "MLLP over TLS"
        } else {
            "MLLP"
        };
        info!("accepting HL7 v2 over {kind} on {addr}");
        tokio::spawn(ambulance_gateway::gateway::mllp::serve_mllp(
            gateway.clone(),
            listener,
            acceptor,
        ));
    }

    let mut more = <ambulance_gateway::gateway::http::TelemetryApi as utoipa::OpenApi>::openapi();
    more.merge(<signaling::recordings::RecordingsDoc as utoipa::OpenApi>::openapi());
    let app = signaling::routes(state, more)
        .merge(ambulance_gateway::gateway::http::routes(gateway))
        .merge(signaling::recordings::routes(recordings))
        .merge(pages::routes())
        .into_make_service_with_connect_info::<SocketAddr>();
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.graceful_shutdown(Some(Duration::from_secs(5)));
    });

    let scheme = if config.tls == Tls::Off {
        "http"
    } else {
        "https"
    };
    info!(
        "medrelay serving {scheme}://{} (media udp {}, data {})",
        config.listen,
        media_bind,
        config.data_dir.display()
    );
    match tls {
        None => {
            axum_server::bind(config.listen)
                .handle(handle)
                .serve(app)
                .await?
        }
        Some(mut tls) => {
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            axum_server::bind_rustls(config.listen, rustls_config)
                .handle(handle)
                .serve(app)
                .await?
        }
    }
    Ok(())
}

/// The TLS server settings (certificate and key from files, or generated), when TLS is on.
fn tls_server_config(config: &config::ServeConfig) -> anyhow::Result<Option<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (certs, key) = match &config.tls {
        Tls::Off => return Ok(None),
        Tls::Files { cert, key } => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading the TLS key {}", key.display()))?;
            (certs, key)
        }
        Tls::SelfSigned => {
            let names = vec!["localhost".to_owned(), config.listen.ip().to_string()];
            let generated = rcgen::generate_simple_self_signed(names)?;
            let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
                .map_err(|e| anyhow::anyhow!("the generated key: {e}"))?;
            (vec![generated.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit together")?;
    Ok(Some(tls))
}
