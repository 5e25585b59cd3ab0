//! Who a connection is: HS256 JWTs carrying the subject and the path prefixes it may read and
//! write, checked once at the WebSocket handshake.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_protocol::Rights;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The subject of every client of an open (unauthenticated) server.
pub const ANONYMOUS: &str = "anonymous";

/// Seconds of clock difference tolerated between the token's issuer and this server.
const LEEWAY_SECS: u64 = 5;

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: the author of every change it makes.
    pub sub: String,
    /// Path prefixes it may read (`get`, `stat`, `list`, `sub`).
    #[serde(default)]
    pub read: Vec<String>,
    /// Path prefixes it may write.
    #[serde(default)]
    pub write: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// An authenticated connection's identity, stamped on each of its instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Arc<str>,
    pub rights: Arc<Rights>,
}

/// Why a handshake was refused (HTTP 401) or a token could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("missing token: send `Authorization: Bearer <token>` or `?token=<token>`")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

/// How handshakes are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    /// No secret: every client is [`ANONYMOUS`] with every right (loopback binds only).
    Open,
    /// Tokens signed with the shared HS256 secret are required.
    Hs256 { key: DecodingKey, validation: Box<Validation> },
}

impl Authenticator {
    pub fn hs256(secret: &[u8]) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator::Hs256 {
            key: DecodingKey::from_secret(secret),
            validation: Box::new(validation),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Authenticator::Open)
    }

    /// The identity a handshake's token proves. An open server ignores any token.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let (key, validation) = match self {
            Authenticator::Open => {
                return Ok(Identity { subject: ANONYMOUS.into(), rights: Arc::new(Rights::all()) })
            }
            Authenticator::Hs256 { key, validation } => (key, validation),
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string().to_lowercase()),
            })?
            .claims;
        check_claims(&claims)?;
        Ok(Identity {
            subject: claims.sub.into(),
            rights: Arc::new(Rights { read: claims.read, write: claims.write }),
        })
    }
}

fn check_claims(claims: &Claims) -> Result<(), AuthError> {
    if claims.sub.is_empty() || claims.sub.contains(['/', '\0']) {
        return Err(AuthError::Invalid(format!(
            "claim `sub` {:?} must be non-empty without '/' or NUL",
            claims.sub
        )));
    }
    for prefix in claims.read.iter().chain(&claims.write) {
        if !prefix.starts_with('/') {
            return Err(AuthError::Invalid(format!(
                "path prefix {prefix:?} in claims `read`/`write` does not start with '/'"
            )));
        }
    }
    Ok(())
}

/// Signs `claims` with `secret` (HS256), after the same checks a server makes.
pub fn issue_token(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    check_claims(claims)?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .map_err(|e| AuthError::Signing(e.to_string()))
}

/// Seconds since the Unix epoch, for `exp`.
pub fn unix_now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            read: vec!["/".into()],
            write: vec!["/home/alice/".into()],
            exp,
        }
    }

    #[test]
    fn a_signed_token_gives_its_subject_and_rights() {
        let token = issue_token(SECRET, &claims(unix_now_secs() + 60)).unwrap();
        let id = Authenticator::hs256(SECRET).authenticate(Some(&token)).unwrap();
        assert_eq!(&*id.subject, "alice");
        assert!(id.rights.may_write("/home/alice/x"));
        assert!(!id.rights.may_write("/home/bob/x"));
        assert!(id.rights.may_read("/home/bob/x"));
    }

    #[test]
    fn missing_expired_forged_and_garbage_tokens_are_refused() {
        let auth = Authenticator::hs256(SECRET);
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some("")), Err(AuthError::Missing));
        let old = issue_token(SECRET, &claims(unix_now_secs() - 3600)).unwrap();
        assert_eq!(auth.authenticate(Some(&old)), Err(AuthError::Expired));
        let forged =
            issue_token(b"another-secret-another-secret", &claims(unix_now_secs() + 60)).unwrap();
        assert!(matches!(auth.authenticate(Some(&forged)), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.authenticate(Some("not.a.jwt")), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn bad_claims_are_refused_when_issuing() {
        let mut bad = claims(unix_now_secs() + 60);
        bad.write = vec!["home/".into()];
        assert!(matches!(issue_token(SECRET, &bad), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn an_open_server_makes_everyone_anonymous_with_every_right() {
        let id = Authenticator::Open.authenticate(None).unwrap();
        assert_eq!(&*id.subject, ANONYMOUS);
        assert!(id.rights.may_write("/anything"));
    }
}
