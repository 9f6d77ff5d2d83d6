//! Join tokens: signed (HS256) claims naming a room, an identity and a role.

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

/// The signed content of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The participant's display name.
    pub sub: String,
    /// The room the token admits to.
    pub room: String,
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

    /// Issues a token valid for `ttl` from `now`.
    pub fn issue(
        &self,
        room: &str,
        identity: &str,
        role: Role,
        ttl: Duration,
        now: SystemTime,
    ) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            sub: identity.to_owned(),
            room: room.to_owned(),
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
        if claims.sub.is_empty()
            || claims.room.is_empty()
            || claims.sub.len() > MAX_NAME_LEN
            || claims.room.len() > MAX_NAME_LEN
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
            "consult-1",
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
        let token = keys.issue("r", "a", Role::Clinic, Duration::from_secs(60), now);
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
    fn roles_parse_and_only_observers_cannot_publish() {
        for role in ["specialist", "clinic", "crew", "er"] {
            assert!(role.parse::<Role>().unwrap().can_publish());
        }
        assert!(!"observer".parse::<Role>().unwrap().can_publish());
        assert!("admin".parse::<Role>().is_err());
    }
}
