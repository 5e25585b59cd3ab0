//! Graceful stop on SIGINT or SIGTERM, shared by the long-running commands.

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// A token cancelled at the first SIGINT or SIGTERM; `what` names the process in the message
/// it prints then. Call it inside the runtime.
pub fn cancel_on_signal(what: &'static str) -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    tokio::spawn({
        let token = token.clone();
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("ferry {what}: stopping");
            tracing::info!("signal received: stopping");
            token.cancel();
        }
    });
    Ok(token)
}
