//! A one-way signal (a connection closing, the node stopping) that hot paths check without a
//! lock: a flag raised before the `CancellationToken` that waiters wait on. The token's own
//! check takes a mutex, and each poll of its `cancelled()` registers a waiter under another.
//! Checked per frame that way, the token was 7 % of the server's CPU samples in a fan-out to
//! 1,000 watchers at 200 changes/s (its CPU per event fell by about 2 % with this), and the
//! node-wide stop signal was one mutex that every connection took for every message it read.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    token: CancellationToken,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once the signal is raised. Keep one across a loop's turns and poll it after
    /// the common case, checking [`Signal::is_raised`] at the top of each turn.
    pub(crate) fn raised(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_and_the_flag_is_up_when_it_does() {
        let signal = std::sync::Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let signal = signal.clone();
            async move {
                signal.raised().await;
                signal.is_raised()
            }
        });
        tokio::task::yield_now().await;
        assert!(!signal.is_raised());
        signal.raise();
        assert!(waiter.await.unwrap());
        signal.raised().await;
    }
}
