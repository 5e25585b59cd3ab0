//! `Replies`: one worker process's answers on their way to the ingress nodes' reply queues.
//!
//! Every partition consumer of the process hands its answers here, and one task sends them on
//! a channel of its own, one AMQP message per reply queue at a time: while a queue's reply
//! message is being written, the answers for that queue (from any message of any partition)
//! wait and then travel together. Each apply round's answers already arrive together; under
//! load the rounds of several partitions meet here too, and the broker carries fewer, larger
//! messages, while an answer at low load waits for nothing. The ingress matches answers by
//! instruction id, so which message carries an answer does not matter.
//!
//! Answers are not durable and not confirmed (a confirm per reply message costs the broker
//! more than it saves): one lost with its connection is answered `unavailable` by the ingress
//! when its reply times out, and the idempotency key makes the client's retry safe. So a
//! partition consumer may acknowledge its instruction message as soon as the answers are
//! handed over here (the changes are in the WAL by then).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use ferry_protocol::Answer;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::encode_answers;

/// Most answers in one reply message.
const MAX_ANSWERS_PER_MESSAGE: usize = 4096;

/// Hands answers to the process's [`Replies`]; cheap to clone, never blocks.
#[derive(Clone)]
pub struct ReplySender {
    tx: mpsc::UnboundedSender<(String, Vec<Answer>)>,
}

impl ReplySender {
    /// Queues `answers` for the reply queue `queue`. After the [`Replies`] stopped they are
    /// dropped (their ingress times them out).
    pub fn send(&self, queue: String, answers: Vec<Answer>) {
        if !answers.is_empty() {
            let _ = self.tx.send((queue, answers));
        }
    }
}

/// What a [`Replies`] sent: answers over messages is how well replies batch.
#[derive(Debug, Default)]
pub struct ReplyStats {
    pub answers: AtomicU64,
    pub messages: AtomicU64,
}

/// The reply publisher of one broker connection. See the module documentation.
pub struct Replies {
    tx: mpsc::UnboundedSender<(String, Vec<Answer>)>,
    closing: CancellationToken,
    task: JoinHandle<()>,
    stats: Arc<ReplyStats>,
}

impl Replies {
    /// Opens the reply channel on `connection` and starts its task.
    pub async fn start(connection: &Connection) -> lapin::Result<Replies> {
        let channel = connection.create_channel().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let stats = Arc::new(ReplyStats::default());
        let task = tokio::spawn(run(channel, rx, closing.clone(), stats.clone()));
        Ok(Replies { tx, closing, task, stats })
    }

    pub fn stats(&self) -> &ReplyStats {
        &self.stats
    }

    pub fn sender(&self) -> ReplySender {
        ReplySender { tx: self.tx.clone() }
    }

    /// Whether the reply channel failed: answers handed over now are lost, so the owner
    /// should reconnect.
    pub fn has_failed(&self) -> bool {
        self.task.is_finished()
    }

    /// Sends what was handed over until now and closes the channel.
    pub async fn close(self) {
        self.closing.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the reply task failed");
        }
    }
}

type InFlight = Pin<Box<dyn Future<Output = (String, Result<(), String>)> + Send>>;

async fn run(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<(String, Vec<Answer>)>,
    closing: CancellationToken,
    stats: Arc<ReplyStats>,
) {
    let mut batches = ReplyBatches::new(MAX_ANSWERS_PER_MESSAGE);
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut open = true;
    loop {
        while let Some((queue, answers)) = batches.next_ready() {
            let body = match encode_answers(&answers) {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(error = %e, "encoding answers");
                    batches.settled(&queue);
                    continue;
                }
            };
            stats.answers.fetch_add(answers.len() as u64, Ordering::Relaxed);
            stats.messages.fetch_add(1, Ordering::Relaxed);
            let mut sending = publish(channel.clone(), queue, body);
            // lapin queues the frames on the first poll: send them now, not at the next wake.
            match futures_util::poll!(&mut sending) {
                Poll::Ready((queue, result)) => {
                    batches.settled(&queue);
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "sending answers: the reply channel is gone");
                        return;
                    }
                }
                Poll::Pending => in_flight.push(sending),
            }
        }
        if !open && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            Some((queue, result)) = in_flight.next(), if !in_flight.is_empty() => {
                batches.settled(&queue);
                if let Err(e) = result {
                    tracing::warn!(error = %e, "sending answers: the reply channel is gone");
                    return;
                }
            }
            received = rx.recv(), if open => match received {
                Some((queue, answers)) => {
                    batches.push(queue, answers);
                    while let Ok((queue, answers)) = rx.try_recv() {
                        batches.push(queue, answers);
                    }
                }
                None => open = false,
            },
            _ = closing.cancelled(), if open => {
                open = false;
                while let Ok((queue, answers)) = rx.try_recv() {
                    batches.push(queue, answers);
                }
            }
        }
    }
    let _ = channel.close(200, "replies sent".into()).await;
}

/// Publishes one reply message; resolves once lapin has written it (an error means the
/// channel is gone).
fn publish(channel: Channel, queue: String, body: Vec<u8>) -> InFlight {
    Box::pin(async move {
        let published = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await;
        (queue, published.map(drop).map_err(|e| e.to_string()))
    })
}

/// Answers waiting per reply queue, each queue with at most one message being written (pure).
struct ReplyBatches<T> {
    max_items: usize,
    queues: HashMap<String, Waiting<T>>,
}

struct Waiting<T> {
    items: Vec<T>,
    in_flight: bool,
}

impl<T> ReplyBatches<T> {
    fn new(max_items: usize) -> ReplyBatches<T> {
        ReplyBatches { max_items: max_items.max(1), queues: HashMap::new() }
    }

    fn push(&mut self, queue: String, items: Vec<T>) {
        let waiting = self
            .queues
            .entry(queue)
            .or_insert_with(|| Waiting { items: Vec::new(), in_flight: false });
        waiting.items.extend(items);
    }

    /// A queue's waiting items (at most `max_items`) when nothing of it is being written; that
    /// queue then has a message in flight until [`ReplyBatches::settled`].
    fn next_ready(&mut self) -> Option<(String, Vec<T>)> {
        let (queue, waiting) =
            self.queues.iter_mut().find(|(_, w)| !w.in_flight && !w.items.is_empty())?;
        waiting.in_flight = true;
        let rest = waiting.items.split_off(waiting.items.len().min(self.max_items));
        let items = std::mem::replace(&mut waiting.items, rest);
        Some((queue.clone(), items))
    }

    /// `queue`'s message was written (or lost). A queue with nothing left is forgotten, so
    /// that the queues of ingress nodes long gone do not pile up.
    fn settled(&mut self, queue: &str) {
        if let Some(waiting) = self.queues.get_mut(queue) {
            waiting.in_flight = false;
            if waiting.items.is_empty() {
                self.queues.remove(queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_for_a_queue_with_a_reply_in_flight_wait_and_then_travel_together() {
        let mut b = ReplyBatches::new(100);
        b.push("a".into(), vec![1]);
        assert_eq!(b.next_ready(), Some(("a".into(), vec![1])));
        b.push("a".into(), vec![2]);
        b.push("a".into(), vec![3, 4]);
        assert_eq!(b.next_ready(), None, "a's reply is being written");
        // Another queue is not held up by a's.
        b.push("b".into(), vec![9]);
        assert_eq!(b.next_ready(), Some(("b".into(), vec![9])));
        b.settled("a");
        assert_eq!(b.next_ready(), Some(("a".into(), vec![2, 3, 4])));
        assert_eq!(b.next_ready(), None);
    }

    #[test]
    fn a_reply_message_holds_at_most_max_items_in_order() {
        let mut b = ReplyBatches::new(2);
        b.push("a".into(), vec![1, 2, 3]);
        assert_eq!(b.next_ready(), Some(("a".into(), vec![1, 2])));
        b.settled("a");
        assert_eq!(b.next_ready(), Some(("a".into(), vec![3])));
    }

    #[test]
    fn a_settled_queue_with_nothing_waiting_is_forgotten() {
        let mut b = ReplyBatches::new(10);
        b.push("a".into(), vec![1]);
        assert!(b.next_ready().is_some());
        b.settled("a");
        assert!(b.queues.is_empty());
        b.settled("gone");
        assert_eq!(b.next_ready(), None);
    }
}
