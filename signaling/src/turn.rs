//! Short-lived TURN credentials for each participant, so that clinics behind firewalls that
//! allow only TCP (or only a relay) reach the SFU through a TURN server such as coturn.
//!
//! The scheme is the "TURN REST API" one that coturn checks with `use-auth-secret`: the
//! username is `<expiry unix time>:<participant id>` and the password is
//! `base64(HMAC-SHA1(shared secret, username))`. The TURN server needs only the shared
//! secret; a credential stops working at its expiry.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The TURN servers participants are given, and how their credentials are made.
#[derive(Clone)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs, e.g. `turn:turn.example.org:3478?transport=tcp`.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    pub secret: Vec<u8>,
    /// How long a credential is valid.
    pub ttl: Duration,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// One entry of a browser's `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// The TURN URLs.
    pub urls: Vec<String>,
    /// `<expiry unix time>:<participant id>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub credential: String,
}

impl TurnConfig {
    /// A credential for `participant`, valid from `now` for the configured time.
    pub fn credentials(&self, participant: &str, now: SystemTime) -> IceServer {
        let expiry = now
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let username = format!("{expiry}:{participant}");
        let mut mac =
            Hmac::<Sha1>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(username.as_bytes());
        let credential =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        IceServer {
            urls: self.urls.clone(),
            username,
            credential,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_api_scheme() {
        let config = TurnConfig {
            urls: vec!["turn:127.0.0.1:3478?transport=tcp".into()],
            secret: b"north".to_vec(),
            ttl: Duration::from_secs(3600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let server = config.credentials("p42", now);
        assert_eq!(server.username, "1700003600:p42");
        // base64(HMAC-SHA1("north", "1700003600:p42")), as coturn computes it.
        let mut mac = Hmac::<Sha1>::new_from_slice(b"north").unwrap();
        mac.update(b"1700003600:p42");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(server.credential, expected);
        assert_eq!(server.credential.len(), 28, "20 bytes of SHA-1 in base64");
        // Another participant or another secret gives another password.
        assert_ne!(config.credentials("p43", now).credential, server.credential);
        let other = TurnConfig {
            secret: b"south".to_vec(),
            ..config.clone()
        };
        assert_ne!(other.credentials("p42", now).credential, server.credential);
    }
}
