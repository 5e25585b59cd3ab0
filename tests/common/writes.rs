//! Writes of a test's writer tasks through an ingress node: appends retried until acknowledged,
//! counted (the test waits for the load to be under way) and recorded request by request (the
//! test checks how requests were answered while a broker was down).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_ingress::client::{Client, ClientError};
use serde_json::json;
use tokio::sync::watch;

use super::cluster::within_for;

/// The ingress answers `unavailable` after its reply timeout (10 s by default): no answer by
/// this long is a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// One request of a writer: when it was sent, how long its answer took, and whether the answer
/// was `unavailable`.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub sent: Instant,
    pub took: Duration,
    pub unavailable: bool,
}

/// The writes of a test, shared by its writer tasks.
#[derive(Clone)]
pub struct Writes {
    acked: Arc<watch::Sender<u32>>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// How long one append may take to be acknowledged, and the test to wait for a count.
    limit: Duration,
}

impl Writes {
    pub fn new(limit: Duration) -> Writes {
        Writes {
            acked: Arc::new(watch::Sender::new(0)),
            calls: Arc::new(Mutex::new(Vec::new())),
            limit,
        }
    }

    /// Appends with an idempotency key, retrying `unavailable` and `busy` with the same key,
    /// until acknowledged; records every call and counts the acknowledgement; returns the
    /// revision.
    pub async fn append_until_acked(
        &self,
        client: &Client,
        path: &str,
        content: &str,
        key: &str,
    ) -> u64 {
        let deadline = Instant::now() + self.limit;
        loop {
            let request = json!({"op": "append", "path": path, "content": content, "key": key});
            let sent = Instant::now();
            let answer =
                tokio::time::timeout(ANSWER_WITHIN, client.call(request)).await.unwrap_or_else(
                    |_| panic!("append {key} to {path}: no answer in {ANSWER_WITHIN:?} (a hang)"),
                );
            let took = sent.elapsed();
            let unavailable = matches!(&answer, Err(e) if e.code() == Some("unavailable"));
            self.calls.lock().unwrap().push(Call { sent, took, unavailable });
            match answer {
                Ok(answer) => {
                    let rev = answer["rev"].as_u64().expect("a write answers its revision");
                    self.acked.send_modify(|n| *n += 1);
                    return rev;
                }
                Err(ClientError::Server { code, .. })
                    if code == "unavailable" || code == "busy" => {}
                Err(e) => panic!("append {key} to {path}: {e}"),
            }
            assert!(Instant::now() < deadline, "append {key} to {path} never acknowledged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The writes acknowledged so far.
    pub fn acked(&self) -> u32 {
        *self.acked.borrow()
    }

    /// Waits until `count` writes were acknowledged (the load is under way).
    pub async fn acked_at_least(&self, count: u32) {
        let mut seen = self.acked.subscribe();
        within_for(
            self.limit,
            &format!("{count} acknowledged writes"),
            seen.wait_for(|&n| n >= count),
        )
        .await
        .expect("the sender lives as long as the test");
    }

    /// Every call made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}
