//! Tokens: signed (HS256) claims naming an identity, a role and what they grant: a consult
//! room, an ambulance's telemetry stream, or (for ER and specialist consoles) neither.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a participant may do in a room. The server enforces it; the client only displays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A specialist joining a consult.
    Specialist,
    /// Staff of the clinic that opened the consult.
    Clinic,
    /// An ambulance crew.
    Crew,
    /// Emergency-room staff.
    Er,
    /// Watches and listens; may not publish.
    Observer,
}

impl Role {
    /// Whether this role may publish media.
    pub fn can_publish(self) -> bool {
        self != Role::Observer
    }

    /// The role's name as in tokens and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Specialist => "specialist",
            Role::Clinic => "clinic",
            Role::Crew => "crew",
            Role::Er => "er",
            Role::Observer => "observer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "specialist" => Role::Specialist,
            "clinic" => Role::Clinic,
            "crew" => Role::Crew,
            "er" => Role::Er,
            "observer" => Role::Observer,
            other => {
                return Err(format!(
                    "unknown role {other:?} (specialist, clinic, crew, er, observer)"
                ));
            }
        })
    }
}

/// What a token grants access to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The consult room it admits to.
    pub room: Option<String>,
    /// The ambulance stream it may send (crew) or view (er, specialist).
    pub ambulance: Option<String>,
}

impl Scope {
    /// A consult room only.
    pub fn room(room: &str) -> Self {
        Self {
            room: Some(room.to_owned()),
            ambulance: None,
        }
    }
}

/// The signed content of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant's display name.
    pub sub: String,
    /// The room the token admits to; empty when it names none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    /// The ambulance stream the token grants, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambulance: Option<String>,
    /// The participant's role.
    pub role: Role,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token, a bad signature, or unknown claims.
    #[error("the token is malformed or its signature is wrong")]
    Invalid,
    /// Its `exp` has passed.
    #[error("the token has expired")]
    Expired,
}

/// Signs and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Longest identity or room name accepted in a token, in bytes.
pub const MAX_NAME_LEN: usize = 128;

impl TokenKeys {
    /// Keys from a shared secret (at least 32 bytes of randomness).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Issues a token for `scope` valid for `ttl` from `now`.
    pub fn issue(
        &self,
        scope: &Scope,
        identity: &str,
        role: Role,
        ttl: Duration,
        now: SystemTime,
    ) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            sub: identity.to_owned(),
            room: scope.room.clone().unwrap_or_default(),
            ambulance: scope.ambulance.clone(),
            role,
            iat,
            exp: iat + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail")
    }

    /// Verifies a token's signature and expiry at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the `now` passed in, so tests control time.
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?
            .claims;
        let ambulance = claims.ambulance.as_deref();
        // A token without a room or an ambulance is a console token: only ER staff and
        // specialists get those; a crew token always names its ambulance.
        let scoped = !claims.room.is_empty() || ambulance.is_some();
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_NAME_LEN
            || claims.room.len() > MAX_NAME_LEN
            || ambulance.is_some_and(|a| a.is_empty() || a.len() > MAX_NAME_LEN)
            || (!scoped && !matches!(claims.role, Role::Er | Role::Specialist))
        {
            return Err(TokenError::Invalid);
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn issued_token_verifies_with_its_claims() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let now = UNIX_EPOCH + T0;
        let token = keys.issue(
            &Scope::room("consult-1"),
            "Dr Li",
            Role::Specialist,
            Duration::from_secs(60),
            now,
        );
        let claims = keys.verify(&token, now).unwrap();
        assert_eq!(claims.room, "consult-1");
        assert_eq!(claims.sub, "Dr Li");
        assert_eq!(claims.role, Role::Specialist);
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let other = TokenKeys::new(b"another secret of enough length!!");
        let now = UNIX_EPOCH + T0;
        let token = keys.issue(
            &Scope::room("r"),
            "a",
            Role::Clinic,
            Duration::from_secs(60),
            now,
        );
        assert_eq!(
            keys.verify(&token, now + Duration::from_secs(61)),
            Err(TokenError::Expired)
        );
        assert_eq!(other.verify(&token, now), Err(TokenError::Invalid));
        let mut tampered = token.clone();
        tampered.insert(tampered.len() - 3, 'x');
        assert_eq!(keys.verify(&tampered, now), Err(TokenError::Invalid));
        assert_eq!(keys.verify("not a token", now), Err(TokenError::Invalid));
    }

    #[test]
    fn console_tokens_only_for_er_and_specialists_and_crew_tokens_name_an_ambulance() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let now = UNIX_EPOCH + T0;
        let ttl = Duration::from_secs(60);
        let console = Scope::default();
        for (role, ok) in [
            (Role::Er, true),
            (Role::Specialist, true),
            (Role::Crew, false),
        ] {
            let token = keys.issue(&console, "x", role, ttl, now);
            assert_eq!(keys.verify(&token, now).is_ok(), ok, "{role}");
        }
        let crew = Scope {
            room: None,
            ambulance: Some("AMB-7".into()),
        };
        let claims = keys
            .verify(&keys.issue(&crew, "AMB-7", Role::Crew, ttl, now), now)
            .unwrap();
        assert_eq!(claims.ambulance.as_deref(), Some("AMB-7"));
        assert_eq!(claims.room, "");
    }

    #[test]
    fn roles_parse_and_only_observers_cannot_publish() {
        for role in ["specialist", "clinic", "crew", "er"] {
            assert!(role.parse::<Role>().unwrap().can_publish());
        }
        assert!(!"observer".parse::<Role>().unwrap().can_publish());
        assert!("admin".parse::<Role>().is_err());
    }
}
