//! The `[auth]` section: the HS256 secret that signs client tokens.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

use crate::error::Invalid;

/// Fewest bytes a signing secret may have: HS256 with a shorter key is guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// A signing secret. It never appears in `Debug` output or in `ferry config show`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for signing and verifying.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("(redacted)")
    }
}

/// Settings of client authentication. With neither key set, a server bound to loopback runs
/// open (every client may read and write everything) and any other bind refuses to start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The HS256 secret (at least 16 bytes), e.g. from `FERRY_AUTH__SECRET`. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// A file whose content (trailing newline removed) is the secret. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

impl AuthConfig {
    pub(crate) fn check(&self, out: &mut Vec<Invalid>) {
        if let Some(secret) = &self.secret {
            if secret.expose().len() < MIN_SECRET_BYTES {
                out.push(Invalid::new(
                    "auth.secret",
                    "(redacted)",
                    format!("a secret of at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            if self.secret_file.is_some() {
                out.push(Invalid::new(
                    "auth.secret_file",
                    self.secret_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    "unset when auth.secret is set (one source of the secret)",
                ));
            }
        }
        if self.secret_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            out.push(Invalid::new("auth.secret_file", "\"\"", "a non-empty file path"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_never_shows() {
        let config =
            AuthConfig { secret: Some(Secret::new("s3cr3t-s3cr3t-s3cr3t")), secret_file: None };
        assert!(!format!("{config:?}").contains("s3cr3t"));
        assert!(!toml::to_string(&config).unwrap().contains("s3cr3t"));
        let parsed: AuthConfig = toml::from_str("secret = \"s3cr3t-s3cr3t-s3cr3t\"").unwrap();
        assert_eq!(parsed.secret.unwrap().expose(), "s3cr3t-s3cr3t-s3cr3t");
    }

    #[test]
    fn short_secrets_and_two_sources_are_refused() {
        let config =
            AuthConfig { secret: Some(Secret::new("short")), secret_file: Some("/s".into()) };
        let mut out = Vec::new();
        config.check(&mut out);
        let keys: Vec<&str> = out.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["auth.secret", "auth.secret_file"]);
        assert!(!out.iter().any(|i| i.value.contains("short")));
    }
}
