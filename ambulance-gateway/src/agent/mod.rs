//! The ambulance agent, `medrelay ambulance` (`docs/telemetry.md`).
//!
//! It reads a monitor's samples in real time (a raw recording, [`source::RawSource`], an EDF
//! file, [`edf_source::EdfSource`], a DICOM ECG, [`dicom_source::DicomSource`], or the
//! [`simulator`]), cuts them into frames ([`source::Framer`]), or takes the monitor's HL7 v2
//! over MLLP (`--mllp-listen`, made into frames by [`crate::hl7::frames`]), stores every frame in its disk
//! [`spool`] before sending it, and sends frames to the gateway over a WebSocket until they
//! are acknowledged. The [`uplink`] core decides what goes on the wire when (live first,
//! backlog behind at a bounded rate, clock correction, reconnects); a thin tokio shell moves
//! the bytes.
//!
//! Entry point: [`run`] with the command line's [`AgentArgs`].

pub mod dicom_source;
pub mod edf_source;
mod shell;
pub mod simulator;
pub mod source;
pub mod spool;
pub mod uplink;

use crate::wire::StreamId;
use base64::Engine;
use source::{RawSpec, SampleType, SourceError};
use spool::SpoolError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Format of a recording given with `--source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Interleaved samples without a header (see `--sample-type`, `--channels`).
    Raw,
    /// EDF or EDF+ (channels, rate and scaling from the file).
    Edf,
    /// DICOM ECG Waveform Storage, 12-lead or general (channels, rate and scaling from the
    /// file).
    Dicom,
}

impl Format {
    /// The format a file name suggests: `.edf` EDF, `.dcm`/`.dicom` DICOM, else raw.
    fn of(path: &std::path::Path) -> Self {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("edf") => Format::Edf,
            Some("dcm" | "dicom") => Format::Dicom,
            _ => Format::Raw,
        }
    }
}

/// `medrelay ambulance`: stream a monitor (a recording or the simulator) to the gateway.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("input")
        .required(true)
        .args(["source", "simulate", "mllp_listen"])
))]
pub struct AgentArgs {
    /// The gateway: `wss://host:port` (or `ws://`), or the full `…/telemetry/ingest` URL.
    #[arg(long)]
    pub gateway: String,
    /// The crew token (it names the ambulance, which is the stream id).
    #[arg(long, env = "MEDRELAY_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A PEM file of certificates to trust besides the public roots (a self-signed gateway).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The stream id (default: the token's ambulance).
    #[arg(long)]
    pub stream: Option<String>,
    /// A recording to replay in real time.
    #[arg(long, value_name = "FILE")]
    pub source: Option<PathBuf>,
    /// The recording's format (default: from the file name, `.edf` EDF, `.dcm` DICOM, else
    /// raw).
    #[arg(long, value_enum, requires = "source")]
    pub format: Option<Format>,
    /// Samples per second of each channel (default 500 for --simulate; required with --source).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Raw units per physical unit of the recording.
    #[arg(long, requires = "source")]
    pub gain: Option<f64>,
    /// Raw value of physical zero in the recording.
    #[arg(long, default_value_t = 0.0, requires = "source")]
    pub baseline: f64,
    /// How the recording stores each sample.
    #[arg(long, value_enum, default_value_t, requires = "source")]
    pub sample_type: SampleType,
    /// Interleaved channels in the recording.
    #[arg(long, default_value_t = 1, requires = "source")]
    pub channels: u8,
    /// Channel labels, comma-separated (default `ECG` for one channel, else `I,II,III,…`).
    #[arg(long, value_delimiter = ',', requires = "source")]
    pub labels: Vec<String>,
    /// Physical unit of the recording's channels.
    #[arg(long, default_value = "mV", requires = "source")]
    pub unit: String,
    /// Simulate a patient: a 12-lead ECG and vital signs.
    #[arg(long)]
    pub simulate: bool,
    /// Take the on-board monitor's HL7 v2 (IHE PCD-01 `ORU^R01`, waveforms too) over MLLP on
    /// this address; each message is answered `AA` once it is in the spool.
    #[arg(long, value_name = "ADDR")]
    pub mllp_listen: Option<SocketAddr>,
    /// PEM certificate chain: MLLP connections are then TLS sessions.
    #[arg(long, value_name = "FILE", requires_all = ["mllp_listen", "mllp_tls_key"])]
    pub mllp_tls_cert: Option<PathBuf>,
    /// PEM private key for `--mllp-tls-cert`.
    #[arg(long, value_name = "FILE", requires = "mllp_tls_cert")]
    pub mllp_tls_key: Option<PathBuf>,
    /// Allow plain MLLP (no TLS) on an address that is not loopback.
    #[arg(long, requires = "mllp_listen")]
    pub mllp_insecure: bool,
    /// Simulated heart rate, /min (fixed; default drifts around 84).
    #[arg(long, alias = "simulate-hr", requires = "simulate")]
    pub sim_hr: Option<f64>,
    /// Simulated SpO2, % (fixed; default 96–98).
    #[arg(long, alias = "simulate-spo2", requires = "simulate")]
    pub sim_spo2: Option<f64>,
    /// Stop the source after this many seconds of samples (in this run); the recording also
    /// stops at its end. The agent then exits once everything is acknowledged.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Spool directory (default `./medrelay-agent-spool/<stream>`).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Speed of the backlog after a reconnect, as a multiple of real time.
    #[arg(long, default_value_t = 4.0)]
    pub backlog_rate: f64,
    /// Once the source has ended, how long to wait for the last acknowledgements, seconds.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub drain_timeout: f64,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The command line is inconsistent.
    #[error("{0}")]
    Usage(String),
    /// The stream id cannot be learnt from the token.
    #[error("cannot read the ambulance from the token ({0}); pass --stream")]
    Token(String),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The TLS settings are unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The gateway refused the token (HTTP 401 or 403): retrying cannot help.
    #[error("the gateway refused the connection with HTTP {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The gateway's explanation.
        message: String,
    },
    /// The gateway does not let this token send this stream.
    #[error("the gateway refused the stream ({code}): {message}")]
    NotGranted {
        /// The error code.
        code: String,
        /// The gateway's explanation.
        message: String,
    },
    /// The source ended but not everything was acknowledged in time.
    #[error(
        "the source has ended but {unacked} frames were still unacknowledged after {secs} s \
         of waiting; they stay in the spool and go with the next run"
    )]
    DrainTimeout {
        /// Frames not acknowledged.
        unacked: usize,
        /// The wait, seconds.
        secs: f64,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// The source to read, resolved from the arguments.
#[derive(Debug, Clone)]
enum SourceSpec {
    Raw(RawSpec),
    Edf(PathBuf),
    Dicom(PathBuf),
    Simulated(simulator::SimConfig),
    Mllp(MllpSpec),
}

/// Where the agent takes HL7 from the on-board monitor.
#[derive(Debug, Clone)]
struct MllpSpec {
    listen: SocketAddr,
    /// Certificate chain and key files, for MLLP over TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

/// The agent's settings, resolved and checked.
#[derive(Debug, Clone)]
struct Settings {
    /// The ingest WebSocket URL.
    url: url::Url,
    /// The gateway's web base (`https://host:port`), for consult links.
    web_base: String,
    token: String,
    ca: Option<PathBuf>,
    stream: StreamId,
    spool: PathBuf,
    source: SourceSpec,
    duration: Option<f64>,
    backlog_rate: f64,
    drain_timeout: Duration,
}

impl Settings {
    fn from_args(args: AgentArgs) -> Result<Self, AgentError> {
        let (url, web_base) = ingest_url(&args.gateway)?;
        let stream = match &args.stream {
            Some(s) => s
                .parse()
                .map_err(|_| AgentError::Usage(format!("invalid stream id {s:?}")))?,
            None => stream_from_token(&args.token)?,
        };
        let format = args
            .source
            .as_deref()
            .map(|p| args.format.unwrap_or(Format::of(p)));
        let source = if let (Some(path), Some(Format::Edf | Format::Dicom)) = (&args.source, format)
        {
            if args.rate.is_some() || args.gain.is_some() || !args.labels.is_empty() {
                return Err(AgentError::Usage(
                    "--rate, --gain and --labels are for raw recordings; EDF and DICOM files \
                     carry their own"
                        .into(),
                ));
            }
            if format == Some(Format::Edf) {
                SourceSpec::Edf(path.clone())
            } else {
                SourceSpec::Dicom(path.clone())
            }
        } else if let Some(listen) = args.mllp_listen {
            if args.rate.is_some() || args.sim_hr.is_some() || args.sim_spo2.is_some() {
                return Err(AgentError::Usage(
                    "--rate and the simulator's settings do not apply to --mllp-listen".into(),
                ));
            }
            let tls = args.mllp_tls_cert.zip(args.mllp_tls_key);
            if tls.is_none() && !listen.ip().is_loopback() && !args.mllp_insecure {
                return Err(AgentError::Usage(format!(
                    "refusing plain MLLP on {listen}, which is not a loopback address: give \
                     --mllp-tls-cert and --mllp-tls-key, or --mllp-insecure"
                )));
            }
            SourceSpec::Mllp(MllpSpec { listen, tls })
        } else if let Some(path) = args.source {
            let (Some(rate_hz), Some(gain)) = (args.rate, args.gain) else {
                return Err(AgentError::Usage("--source needs --rate and --gain".into()));
            };
            if args.channels == 0 {
                return Err(AgentError::Usage("--channels must be at least 1".into()));
            }
            let labels = if args.labels.is_empty() {
                source::default_labels(args.channels.into())
            } else if args.labels.len() == usize::from(args.channels) {
                args.labels
            } else {
                return Err(AgentError::Usage(format!(
                    "--labels names {} channels, --channels says {}",
                    args.labels.len(),
                    args.channels
                )));
            };
            SourceSpec::Raw(RawSpec {
                path,
                sample_type: args.sample_type,
                rate_hz,
                gain,
                baseline: args.baseline,
                labels,
                unit: args.unit,
            })
        } else {
            SourceSpec::Simulated(simulator::SimConfig {
                rate_hz: args.rate.unwrap_or(500.0),
                hr: args.sim_hr,
                spo2: args.sim_spo2,
            })
        };
        if args.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            return Err(AgentError::Usage("--duration must be positive".into()));
        }
        if !(args.backlog_rate.is_finite() && args.backlog_rate > 0.0) {
            return Err(AgentError::Usage("--backlog-rate must be positive".into()));
        }
        if !(args.drain_timeout.is_finite() && args.drain_timeout >= 0.0) {
            return Err(AgentError::Usage(
                "--drain-timeout must be zero or more".into(),
            ));
        }
        let spool = args
            .spool
            .unwrap_or_else(|| PathBuf::from("medrelay-agent-spool").join(stream.as_str()));
        Ok(Self {
            url,
            web_base,
            token: args.token,
            ca: args.ca,
            stream,
            spool,
            source,
            duration: args.duration,
            backlog_rate: args.backlog_rate,
            drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        })
    }
}

/// Runs the agent until the source has ended and everything is acknowledged (or Ctrl-C).
/// Builds its own tokio runtime: call it from a plain thread.
pub fn run(args: AgentArgs) -> Result<(), AgentError> {
    let settings = Settings::from_args(args)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(shell::run(settings))
}

/// The ingest URL for `--gateway` (a base or the full URL) and the matching web base.
fn ingest_url(gateway: &str) -> Result<(url::Url, String), AgentError> {
    let bad = |why: &str| AgentError::Usage(format!("--gateway {gateway:?}: {why}"));
    let mut url = url::Url::parse(gateway).map_err(|e| bad(&e.to_string()))?;
    let web_scheme = match url.scheme() {
        "ws" => "http",
        "wss" => "https",
        _ => return Err(bad("the scheme must be ws or wss")),
    };
    if url.host_str().is_none() {
        return Err(bad("no host"));
    }
    let path = url.path().trim_end_matches('/');
    let prefix = path
        .strip_suffix("/telemetry/ingest")
        .unwrap_or(path)
        .to_owned();
    url.set_path(&format!("{prefix}/telemetry/ingest"));
    url.set_query(None);
    url.set_fragment(None);
    let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let web_base = format!("{web_scheme}://{authority}{prefix}");
    Ok((url, web_base))
}

/// The `ambulance` claim of a JWT, read without verifying it (the agent has no key: the
/// gateway verifies; this only tells which stream to send).
fn stream_from_token(token: &str) -> Result<StreamId, AgentError> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AgentError::Token("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| AgentError::Token(e.to_string()))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Token(e.to_string()))?;
    let ambulance = claims
        .get("ambulance")
        .and_then(|a| a.as_str())
        .ok_or_else(|| AgentError::Token("it names no ambulance".into()))?;
    ambulance
        .parse()
        .map_err(|_| AgentError::Token(format!("{ambulance:?} is not a valid stream id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn token(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims)
        )
    }

    fn settings(extra: &[&str]) -> Result<Settings, AgentError> {
        let t = token(r#"{"sub":"AMB-7","ambulance":"AMB-7","role":"crew"}"#);
        let mut argv = vec!["x", "--gateway", "wss://er.example:8443", "--token", &t];
        argv.extend(extra);
        Settings::from_args(Cli::try_parse_from(argv).unwrap().args)
    }

    #[test]
    fn the_stream_comes_from_the_token_unless_given() {
        let s = settings(&["--simulate"]).unwrap();
        assert_eq!(s.stream.as_str(), "AMB-7");
        assert_eq!(s.spool, PathBuf::from("medrelay-agent-spool/AMB-7"));
        let s = settings(&["--simulate", "--stream", "AMB-9"]).unwrap();
        assert_eq!(s.stream.as_str(), "AMB-9");
        assert!(matches!(
            stream_from_token(&token(r#"{"sub":"Dr Wang","role":"er"}"#)),
            Err(AgentError::Token(_))
        ));
        assert!(matches!(
            stream_from_token("garbage"),
            Err(AgentError::Token(_))
        ));
    }

    #[test]
    fn gateway_urls_are_normalized() {
        let (url, base) = ingest_url("wss://er.example:8443").unwrap();
        assert_eq!(url.as_str(), "wss://er.example:8443/telemetry/ingest");
        assert_eq!(base, "https://er.example:8443");
        let (url, base) = ingest_url("ws://127.0.0.1:9000/medrelay/telemetry/ingest").unwrap();
        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:9000/medrelay/telemetry/ingest"
        );
        assert_eq!(base, "http://127.0.0.1:9000/medrelay");
        assert!(ingest_url("https://er.example").is_err());
    }

    #[test]
    fn a_recording_needs_its_rate_and_gain() {
        assert!(matches!(
            settings(&["--source", "f.raw"]),
            Err(AgentError::Usage(_))
        ));
        let s = settings(&[
            "--source",
            "f.raw",
            "--rate",
            "360",
            "--gain",
            "200",
            "--baseline",
            "1024",
            "--channels",
            "2",
        ])
        .unwrap();
        let SourceSpec::Raw(raw) = s.source else {
            panic!("not raw")
        };
        assert_eq!(raw.labels, ["I", "II"]);
        assert!(
            settings(&[
                "--source", "f.raw", "--rate", "1", "--gain", "1", "--labels", "A,B"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["x", "--gateway", "ws://h", "--token", "t"]).is_err());
    }

    #[test]
    fn mllp_listening_is_tls_or_loopback_unless_insecure() {
        let s = settings(&["--mllp-listen", "127.0.0.1:2575"]).unwrap();
        assert!(matches!(
            s.source,
            SourceSpec::Mllp(MllpSpec { tls: None, .. })
        ));
        assert!(matches!(
            settings(&["--mllp-listen", "0.0.0.0:2575"]),
            Err(AgentError::Usage(m)) if m.contains("--mllp-insecure")
        ));
        assert!(settings(&["--mllp-listen", "0.0.0.0:2575", "--mllp-insecure"]).is_ok());
        let tls = [
            "--mllp-listen",
            "0.0.0.0:2575",
            "--mllp-tls-cert",
            "c.pem",
            "--mllp-tls-key",
            "k.pem",
        ];
        assert!(matches!(
            settings(&tls).unwrap().source,
            SourceSpec::Mllp(MllpSpec { tls: Some(_), .. })
        ));
        assert!(matches!(
            settings(&["--mllp-listen", "127.0.0.1:2575", "--rate", "500"]),
            Err(AgentError::Usage(_))
        ));
        assert!(
            Cli::try_parse_from([
                "x",
                "--gateway",
                "ws://h",
                "--token",
                "t",
                "--simulate",
                "--mllp-listen",
                "127.0.0.1:1"
            ])
            .is_err(),
            "one input"
        );
    }

    #[test]
    fn edf_and_dicom_files_are_known_by_name_or_format() {
        let s = settings(&["--source", "a/ecg.EDF"]).unwrap();
        assert!(matches!(s.source, SourceSpec::Edf(p) if p == std::path::Path::new("a/ecg.EDF")));
        let s = settings(&["--source", "ecg.dcm"]).unwrap();
        assert!(matches!(s.source, SourceSpec::Dicom(_)));
        let s = settings(&["--source", "ecg.bin", "--format", "dicom"]).unwrap();
        assert!(matches!(s.source, SourceSpec::Dicom(_)));
        assert!(matches!(
            settings(&["--source", "ecg.edf", "--rate", "500"]),
            Err(AgentError::Usage(_))
        ));
        assert!(matches!(
            settings(&["--source", "ecg.edf", "--format", "raw"]),
            Err(AgentError::Usage(_))
        ));
    }
}
