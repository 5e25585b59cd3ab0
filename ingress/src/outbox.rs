//! A connection's way out: a bounded queue of text frames drained by the connection's writer
//! (a busy topic's events come as one shared run, counted as its frames), and the close
//! signal. Everything that sends to a client (answers from worker threads, events from the
//! bus, the connection itself) goes through here and never waits: a full queue means a slow
//! consumer, which is closed instead of buffered without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::WaitForCancellationFuture;

use crate::signal::Signal;

/// Why the server closes a connection: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// A frame or message over `ingress.max_frame_bytes`.
pub const CLOSE_TOO_LARGE: CloseReason = CloseReason { code: 1009, reason: "frame too large" };
/// The connection's send queue filled up.
pub const CLOSE_SLOW_CONSUMER: CloseReason = CloseReason { code: 4008, reason: "slow consumer" };
/// Changes of a watched topic may not have reached this connection: the change bus lost them
/// (e.g. a broker reconnect its history cannot bridge), or the node's fan-out of the topic fell
/// too far behind. The client resubscribes with `since_rev`.
pub const CLOSE_CHANGES_LOST: CloseReason =
    CloseReason { code: 4009, reason: "changes lost: resubscribe with since_rev" };
/// Nothing received (not even a pong) for `ingress.idle_timeout_ms`.
pub const CLOSE_IDLE: CloseReason = CloseReason { code: 1001, reason: "idle timeout" };
/// The server is stopping.
pub const CLOSE_SHUTDOWN: CloseReason = CloseReason { code: 1001, reason: "server shutting down" };
/// A WebSocket protocol violation.
pub const CLOSE_PROTOCOL: CloseReason = CloseReason { code: 1002, reason: "protocol error" };

pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Queued>,
    /// Frames queued and not yet taken by the writer, at most `capacity`.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    reason: OnceLock<Option<CloseReason>>,
    closing: Signal,
    in_flight: AtomicUsize,
    answered: Notify,
}

/// What the queue holds: a frame, or a run of a topic's events shared by every connection that
/// watches it (one queue entry and one reference count for the run, not one per event).
enum Queued {
    Frame(Utf8Bytes),
    /// `run[from..]`.
    Run(Arc<[Utf8Bytes]>, usize),
}

/// The writer's end of an [`Outbox`]: frames one at a time, in the order they were queued.
pub(crate) struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
    /// The rest of a run taken from the queue.
    run: Option<(Arc<[Utf8Bytes]>, usize)>,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let outbox = Outbox {
            tx,
            queued: queued.clone(),
            capacity: capacity.max(1),
            reason: OnceLock::new(),
            closing: Signal::default(),
            in_flight: AtomicUsize::new(0),
            answered: Notify::new(),
        };
        (outbox, OutboxReceiver { rx, queued, run: None })
    }

    /// Queues a frame; false if the connection is closed or closing. A full queue closes the
    /// connection as a slow consumer.
    pub(crate) fn send(&self, text: Utf8Bytes) -> bool {
        self.enqueue(1, Queued::Frame(text))
    }

    /// Queues the frames `run[from..]`, as [`Outbox::send`] would one by one.
    pub(crate) fn send_run(&self, run: &Arc<[Utf8Bytes]>, from: usize) -> bool {
        match run.len().checked_sub(from) {
            Some(0) | None => !self.is_closing(),
            Some(frames) => self.enqueue(frames, Queued::Run(run.clone(), from)),
        }
    }

    fn enqueue(&self, frames: usize, queued: Queued) -> bool {
        if self.is_closing() {
            return false;
        }
        if self.queued.fetch_add(frames, Ordering::AcqRel) + frames > self.capacity {
            self.queued.fetch_sub(frames, Ordering::AcqRel);
            self.close(Some(CLOSE_SLOW_CONSUMER));
            return false;
        }
        if self.tx.send(queued).is_err() {
            self.queued.fetch_sub(frames, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Starts closing: `Some` sends that close frame, `None` (the client closed) sends nothing
    /// more. The first reason wins.
    pub(crate) fn close(&self, reason: Option<CloseReason>) {
        let _ = self.reason.set(reason);
        self.closing.raise();
    }

    /// Whether [`Outbox::close`] was called (a flag: cheap on every frame).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_raised()
    }

    /// Completes once [`Outbox::close`] is called (see [`Signal::raised`]).
    pub(crate) fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closing.raised()
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.reason.get().copied().flatten()
    }

    /// Counts a request whose answer is still to come.
    pub(crate) fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts an answer in (sent or not).
    pub(crate) fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.answered.notify_waiters();
        }
    }

    /// Waits until every request begun has been answered.
    pub(crate) async fn all_answered(&self) {
        loop {
            let notified = self.answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl OutboxReceiver {
    /// The next frame; `None` once the [`Outbox`] is dropped and everything queued was taken.
    pub(crate) async fn recv(&mut self) -> Option<Utf8Bytes> {
        if let Some(text) = self.rest_of_run() {
            return Some(text);
        }
        let queued = self.rx.recv().await?;
        self.take(queued)
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Utf8Bytes> {
        if let Some(text) = self.rest_of_run() {
            return Some(text);
        }
        let queued = self.rx.try_recv().ok()?;
        self.take(queued)
    }

    fn rest_of_run(&mut self) -> Option<Utf8Bytes> {
        let (run, next) = self.run.as_mut()?;
        let text = run[*next].clone();
        *next += 1;
        if *next == run.len() {
            self.run = None;
        }
        Some(text)
    }

    /// Takes `queued` off the count; a run's frames are then handed out by
    /// [`OutboxReceiver::rest_of_run`] (never empty: [`Outbox::send_run`] queues none such).
    fn take(&mut self, queued: Queued) -> Option<Utf8Bytes> {
        match queued {
            Queued::Frame(text) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                Some(text)
            }
            Queued::Run(run, from) => {
                self.queued.fetch_sub(run.len() - from, Ordering::AcqRel);
                self.run = Some((run, from));
                self.rest_of_run()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_closes_as_slow_consumer() {
        let (outbox, mut rx) = Outbox::new(2);
        assert!(outbox.send("a".into()));
        assert!(outbox.send("b".into()));
        assert!(!outbox.send("c".into()));
        assert_eq!(outbox.close_reason(), Some(CLOSE_SLOW_CONSUMER));
        assert!(!outbox.send("d".into()));
        assert_eq!(rx.recv().await.unwrap().as_str(), "a");
        assert_eq!(rx.recv().await.unwrap().as_str(), "b");
    }

    #[tokio::test]
    async fn a_run_counts_as_its_frames_and_arrives_in_order_between_frames() {
        let (outbox, mut rx) = Outbox::new(5);
        let run: Arc<[Utf8Bytes]> = ["r1", "r2", "r3"].into_iter().map(Utf8Bytes::from).collect();
        assert!(outbox.send("a".into()));
        assert!(outbox.send_run(&run, 1));
        assert!(outbox.send("b".into()));
        assert!(outbox.send_run(&run, 3), "an empty rest queues nothing");
        let taken: Vec<String> =
            std::iter::from_fn(|| rx.try_recv()).map(|t| t.as_str().to_owned()).collect();
        assert_eq!(taken, ["a", "r2", "r3", "b"]);
        // Taken frames free their places; a run larger than what is left closes.
        assert!(outbox.send_run(&run, 0));
        assert!(!outbox.send_run(&run, 0));
        assert_eq!(outbox.close_reason(), Some(CLOSE_SLOW_CONSUMER));
        assert_eq!(rx.recv().await.unwrap().as_str(), "r1");
    }

    #[tokio::test]
    async fn all_answered_waits_for_every_request() {
        let (outbox, _rx) = Outbox::new(2);
        let outbox = std::sync::Arc::new(outbox);
        outbox.begin_request();
        outbox.begin_request();
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.all_answered().await }
        });
        outbox.end_request();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        outbox.end_request();
        waiter.await.unwrap();
    }
}
