//! From the `[ingress]` and `[auth]` configuration sections to the ingress's own types.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_config::{AuthConfig, IngressConfig};
use ferry_ingress::{Authenticator, IngressOptions};

pub fn ingress_options(c: &IngressConfig) -> IngressOptions {
    IngressOptions {
        max_frame_bytes: c.max_frame_bytes,
        max_requests_per_sec: c.max_requests_per_sec,
        max_subscriptions: c.max_subscriptions,
        max_connections: c.max_connections,
        send_queue: c.send_queue,
        fanout_linger: Duration::from_millis(c.fanout_linger_ms),
        handshake_timeout: Duration::from_millis(c.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(c.idle_timeout_ms),
        ping_interval: Duration::from_millis(c.ping_interval_ms),
        drain_timeout: Duration::from_millis(c.drain_timeout_ms),
        allowed_origins: c.allowed_origins.clone(),
        home_prefix: c.home_prefix.clone(),
        custom_ops: Vec::new(),
        route_threshold_percent: c.route_threshold_percent,
    }
}

/// The configured listen address (validated by the config crate).
pub fn listen_addr(c: &IngressConfig) -> anyhow::Result<SocketAddr> {
    c.listen.parse().with_context(|| format!("ingress.listen = {:?}", c.listen))
}

/// The HS256 secret from `auth.secret` or `auth.secret_file`, if one is configured.
pub fn auth_secret(c: &AuthConfig) -> anyhow::Result<Option<Vec<u8>>> {
    let secret = match (&c.secret, &c.secret_file) {
        (Some(secret), _) => secret.expose().as_bytes().to_vec(),
        (None, Some(path)) => {
            let mut bytes = std::fs::read(path)
                .with_context(|| format!("reading auth.secret_file {}", path.display()))?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            bytes
        }
        (None, None) => return Ok(None),
    };
    let min = ferry_config::auth::MIN_SECRET_BYTES;
    if secret.len() < min {
        bail!("the auth secret is {} bytes long: at least {min} are needed", secret.len());
    }
    Ok(Some(secret))
}

/// Tokens signed with the configured secret; with none, an open server, allowed on loopback
/// only.
pub fn authenticator(listen: SocketAddr, c: &AuthConfig) -> anyhow::Result<Authenticator> {
    Ok(match auth_secret(c)? {
        Some(secret) => Authenticator::hs256(&secret),
        None if listen.ip().is_loopback() => Authenticator::Open,
        None => bail!(
            "refusing to listen on {listen} without an auth secret: set auth.secret \
             (FERRY_AUTH__SECRET) or auth.secret_file, or listen on a loopback address"
        ),
    })
}
