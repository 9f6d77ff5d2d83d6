//! The server's configuration: one typed struct from a TOML file, environment variables
//! (`MEDRELAY_…`) and flags, in rising precedence, over embedded defaults.

use clap::Args;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Flags (and their environment variables) of `medrelay serve`.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flag names with `_`).
    #[arg(long, env = "MEDRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP(S) and WebSocket address [default: 127.0.0.1:8080].
    #[arg(long, env = "MEDRELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// UDP port shared by every WebRTC peer [default: 50000].
    #[arg(long, env = "MEDRELAY_MEDIA_PORT")]
    pub media_port: Option<u16>,
    /// Address announced in ICE candidates when it differs from the bound one (NAT).
    #[arg(long, env = "MEDRELAY_ANNOUNCE_IP")]
    pub announce_ip: Option<IpAddr>,
    /// Directory for keys and, later, recordings [default: ./medrelay-data].
    #[arg(long, env = "MEDRELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain for HTTPS.
    #[arg(long, env = "MEDRELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "MEDRELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate generated at start (for trials only).
    #[arg(long, env = "MEDRELAY_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Allow plain HTTP on a non-loopback address.
    #[arg(long, env = "MEDRELAY_INSECURE")]
    pub insecure: bool,
    /// REST API key [default: generated into DATA_DIR/api.key].
    #[arg(long, env = "MEDRELAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds of recent telemetry each ambulance stream keeps in memory [default: 120].
    #[arg(long, env = "MEDRELAY_TELEMETRY_RING_SECONDS")]
    pub telemetry_ring_seconds: Option<u32>,
    /// Accept HL7 v2 (IHE PCD-01) from monitors over MLLP on this TCP address [default: off].
    #[arg(long, env = "MEDRELAY_MLLP_LISTEN")]
    pub mllp_listen: Option<SocketAddr>,
    /// Make MLLP connections TLS sessions, with the HTTPS certificate.
    #[arg(long, env = "MEDRELAY_MLLP_TLS")]
    pub mllp_tls: bool,
    /// The master key file that recordings are encrypted under (keep it apart from the data)
    /// [default: DATA_DIR/master.key, created for a new data directory].
    #[arg(long, env = "MEDRELAY_MASTER_KEY")]
    pub master_key: Option<PathBuf>,
    /// TURN server URLs given to every participant with short-lived credentials, e.g.
    /// `turn:turn.example.org:3478?transport=tcp` (comma-separated) [default: none].
    #[arg(long, env = "MEDRELAY_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    #[arg(long, env = "MEDRELAY_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// How long a participant's TURN credential is valid [default: 12h].
    #[arg(long, env = "MEDRELAY_TURN_TTL", value_parser = humantime::parse_duration)]
    pub turn_ttl: Option<Duration>,
    /// How long a participant whose signaling socket was lost (without `leave`) may come
    /// back as itself before the others see it leave; 0 turns resume off [default: 30s].
    #[arg(long, env = "MEDRELAY_RESUME_WINDOW", value_parser = humantime::parse_duration)]
    pub resume_window: Option<Duration>,
    /// Send subscribers' video in RED and follow it with ULPFEC parity packets while their
    /// link loses packets, so that most losses are repaired without a round trip
    /// (docs/signaling.md); `--fec=false` turns it off [default: true].
    #[arg(long, env = "MEDRELAY_FEC", num_args = 0..=1, default_missing_value = "true")]
    pub fec: Option<bool>,
    /// Days consult recordings, telemetry records and audit entries are kept after they end
    /// [default: 5479, 15 years].
    #[arg(long, env = "MEDRELAY_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
}

/// The same settings as read from the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    media_port: Option<u16>,
    announce_ip: Option<IpAddr>,
    data_dir: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_self_signed: Option<bool>,
    insecure: Option<bool>,
    api_key: Option<String>,
    telemetry_ring_seconds: Option<u32>,
    mllp_listen: Option<SocketAddr>,
    mllp_tls: Option<bool>,
    master_key: Option<PathBuf>,
    retention: Option<recorder::index::Retention>,
    turn_urls: Option<Vec<String>>,
    turn_secret: Option<String>,
    turn_ttl_seconds: Option<u64>,
    resume_window_seconds: Option<u64>,
    fec: Option<bool>,
}

/// How HTTPS is provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP.
    Off,
    /// Certificate and key files.
    Files { cert: PathBuf, key: PathBuf },
    /// A certificate generated at start.
    SelfSigned,
}

/// The resolved configuration of `medrelay serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub media_port: u16,
    pub announce_ip: Option<IpAddr>,
    pub data_dir: PathBuf,
    pub tls: Tls,
    pub api_key: Option<String>,
    pub telemetry_ring_seconds: u32,
    pub mllp_listen: Option<SocketAddr>,
    /// MLLP over TLS (with the HTTPS certificate).
    pub mllp_tls: bool,
    /// The master key file, and whether it was given (a given key must exist).
    pub master_key: (PathBuf, bool),
    /// Retention per kind of record.
    pub retention: recorder::index::Retention,
    /// TURN servers and their credentials, if configured.
    pub turn: Option<signaling::turn::TurnConfig>,
    /// How long a participant that lost its socket may resume (zero: never).
    pub resume_window: Duration,
    /// ULPFEC parity packets for lossy subscribers.
    pub fec: bool,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "refusing to serve plain HTTP on {0}, which is not a loopback address: \
         configure --tls-cert/--tls-key or --tls-self-signed, or pass --insecure"
    )]
    PlainHttpOutsideLoopback(SocketAddr),
    #[error(
        "refusing to accept MLLP (plain TCP, no TLS) on {0}, which is not a loopback address: \
         pass --mllp-tls (with a TLS certificate), or --insecure to allow it"
    )]
    PlainMllpOutsideLoopback(SocketAddr),
    #[error(
        "--mllp-tls uses the HTTPS certificate: configure --tls-cert/--tls-key or --tls-self-signed"
    )]
    MllpTlsWithoutCertificate,
    #[error("give either --tls-cert/--tls-key or --tls-self-signed, not both")]
    TwoTlsSources,
    #[error(
        "--turn-urls needs --turn-secret (the TURN server's static-auth-secret), and the other way round"
    )]
    TurnHalfConfigured,
}

impl ServeArgs {
    /// Merges file, environment and flags over the defaults and checks the result.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let cert = self.tls_cert.or(file.tls_cert);
        let key = self.tls_key.or(file.tls_key);
        let self_signed = self.tls_self_signed || file.tls_self_signed.unwrap_or(false);
        let tls = match (cert, key, self_signed) {
            (Some(_), _, true) | (_, Some(_), true) => return Err(ConfigError::TwoTlsSources),
            (Some(cert), Some(key), false) => Tls::Files { cert, key },
            (_, _, true) => Tls::SelfSigned,
            _ => Tls::Off,
        };
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let insecure = self.insecure || file.insecure.unwrap_or(false);
        if tls == Tls::Off && !listen.ip().is_loopback() && !insecure {
            return Err(ConfigError::PlainHttpOutsideLoopback(listen));
        }
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("medrelay-data"));
        let mllp_listen = self.mllp_listen.or(file.mllp_listen);
        let mllp_tls = self.mllp_tls || file.mllp_tls.unwrap_or(false);
        if mllp_tls && tls == Tls::Off {
            return Err(ConfigError::MllpTlsWithoutCertificate);
        }
        if let Some(addr) = mllp_listen
            && !addr.ip().is_loopback()
            && !insecure
            && !mllp_tls
        {
            return Err(ConfigError::PlainMllpOutsideLoopback(addr));
        }
        let turn_urls = if self.turn_urls.is_empty() {
            file.turn_urls.unwrap_or_default()
        } else {
            self.turn_urls
        };
        let turn = match (turn_urls.is_empty(), self.turn_secret.or(file.turn_secret)) {
            (true, None) => None,
            (false, Some(secret)) if !secret.is_empty() => Some(signaling::turn::TurnConfig {
                urls: turn_urls,
                secret: secret.into_bytes(),
                ttl: self
                    .turn_ttl
                    .or(file.turn_ttl_seconds.map(Duration::from_secs))
                    .unwrap_or(Duration::from_secs(12 * 3600)),
            }),
            _ => return Err(ConfigError::TurnHalfConfigured),
        };
        Ok(ServeConfig {
            turn,
            fec: self.fec.or(file.fec).unwrap_or(true),
            resume_window: self
                .resume_window
                .or(file.resume_window_seconds.map(Duration::from_secs))
                .unwrap_or(signaling::resume::DEFAULT_RESUME_WINDOW),
            listen,
            media_port: self.media_port.or(file.media_port).unwrap_or(50000),
            announce_ip: self.announce_ip.or(file.announce_ip),
            tls,
            api_key: self.api_key.or(file.api_key),
            telemetry_ring_seconds: self
                .telemetry_ring_seconds
                .or(file.telemetry_ring_seconds)
                .unwrap_or(120)
                .clamp(10, 3600),
            mllp_listen,
            mllp_tls,
            master_key: match self.master_key.or(file.master_key) {
                Some(path) => (path, true),
                None => (data_dir.join("master.key"), false),
            },
            retention: match self.retention_days {
                Some(days) => recorder::index::Retention {
                    consult_days: days,
                    telemetry_days: days,
                    audit_days: days,
                },
                None => file.retention.unwrap_or_default(),
            },
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_needs_both_urls_and_secret() {
        let urls = || vec!["turn:127.0.0.1:3478?transport=tcp".to_owned()];
        let only_urls = ServeArgs {
            turn_urls: urls(),
            ..Default::default()
        };
        assert!(matches!(
            only_urls.resolve(),
            Err(ConfigError::TurnHalfConfigured)
        ));
        let only_secret = ServeArgs {
            turn_secret: Some("s".into()),
            ..Default::default()
        };
        assert!(matches!(
            only_secret.resolve(),
            Err(ConfigError::TurnHalfConfigured)
        ));
        let both = ServeArgs {
            turn_urls: urls(),
            turn_secret: Some("s".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let turn = both.turn.expect("TURN configured");
        assert_eq!(turn.urls, urls());
        assert_eq!(turn.ttl, Duration::from_secs(12 * 3600));
        assert!(ServeArgs::default().resolve().unwrap().turn.is_none());
    }

    #[test]
    fn defaults_bind_loopback_without_tls() {
        let c = ServeArgs::default().resolve().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.media_port, 50000);
        assert_eq!(c.tls, Tls::Off);
        assert_eq!(c.resume_window, Duration::from_secs(30));
        let off = ServeArgs {
            resume_window: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(off.resolve().unwrap().resume_window, Duration::ZERO);
        assert!(c.fec, "parity for lossy subscribers is on by default");
        let fec = ServeArgs {
            fec: Some(false),
            ..Default::default()
        };
        assert!(!fec.resolve().unwrap().fec);
    }

    #[test]
    fn fec_flag_alone_or_with_a_value() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let fec = |args: &[&str]| {
            let cli = <Cli as clap::Parser>::try_parse_from(["medrelay"].iter().chain(args));
            cli.unwrap().serve.fec
        };
        assert_eq!(fec(&["--fec"]), Some(true));
        assert_eq!(fec(&["--fec=false"]), Some(false));
        assert_eq!(fec(&[]), None);
    }

    #[test]
    fn plain_http_elsewhere_than_loopback_is_refused_unless_insecure() {
        let args = || ServeArgs {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            args().resolve(),
            Err(ConfigError::PlainHttpOutsideLoopback(_))
        ));
        assert!(
            ServeArgs {
                insecure: true,
                ..args()
            }
            .resolve()
            .is_ok()
        );
        let tls = ServeArgs {
            tls_self_signed: true,
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(tls.tls, Tls::SelfSigned);
    }

    #[test]
    fn mllp_is_off_by_default_and_loopback_only_unless_tls_or_insecure() {
        assert_eq!(ServeArgs::default().resolve().unwrap().mllp_listen, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medrelay.toml");
        std::fs::write(&path, "mllp_listen = \"127.0.0.1:2575\"\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert_eq!(
            from_file.resolve().unwrap().mllp_listen,
            Some("127.0.0.1:2575".parse().unwrap())
        );
        let outside = || ServeArgs {
            mllp_listen: Some("0.0.0.0:2575".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            outside().resolve(),
            Err(ConfigError::PlainMllpOutsideLoopback(_))
        ));
        let tls = ServeArgs {
            tls_self_signed: true,
            ..outside()
        };
        assert!(
            matches!(tls.resolve(), Err(ConfigError::PlainMllpOutsideLoopback(_))),
            "HTTPS does not cover MLLP"
        );
        let mllp_tls = ServeArgs {
            tls_self_signed: true,
            mllp_tls: true,
            ..outside()
        };
        assert!(mllp_tls.resolve().unwrap().mllp_tls);
        let no_certificate = ServeArgs {
            mllp_tls: true,
            ..outside()
        };
        assert!(matches!(
            no_certificate.resolve(),
            Err(ConfigError::MllpTlsWithoutCertificate)
        ));
        let insecure = ServeArgs {
            insecure: true,
            ..outside()
        };
        assert!(insecure.resolve().is_ok());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medrelay.toml");
        std::fs::write(&path, "media_port = 40000\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            media_port: Some(41000),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.media_port, 41000);
        assert_eq!(c.listen, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());
        std::fs::write(&path, "no_such_setting = 1\n").unwrap();
        let bad = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(matches!(bad.resolve(), Err(ConfigError::Parse { .. })));
    }
}
