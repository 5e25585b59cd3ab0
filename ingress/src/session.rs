//! One WebSocket connection: reads requests, enforces the per-connection limits, stamps the
//! subject and rights on instructions, submits them, and keeps the connection's watches.
//! A writer task drains the [`Outbox`] into the socket and pings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use ferry_protocol::{
    answer_json, error_json, is_reserved, ok_json, parse_request_with, snapshot_json, AnswerBody,
    ErrorBody, ErrorCode, History, Instruction, Operation, QueueError, ReplyTo, Request, RequestId,
    Topic,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::auth::Identity;
use crate::metrics::RequestKind;
use crate::outbox::{
    Outbox, OutboxReceiver, CLOSE_CHANGES_LOST, CLOSE_IDLE, CLOSE_PROTOCOL, CLOSE_SHUTDOWN,
    CLOSE_SLOW_CONSUMER, CLOSE_TOO_LARGE,
};
use crate::rate::RequestRate;
use crate::server::{ConnectionSlot, Shared};
use crate::subscriptions::Watch;

/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a closing connection may take to send what it still sends (a blocked write, the
/// close frame) before it is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

struct Session {
    shared: Arc<Shared>,
    identity: Identity,
    client_id: Arc<str>,
    outbox: Arc<Outbox>,
    watches: HashMap<Topic, Arc<Watch>>,
    rate: RequestRate,
    assigned_keys: u64,
}

/// Serves one upgraded connection until it closes.
pub(crate) async fn run(
    shared: Arc<Shared>,
    socket: WebSocket,
    identity: Identity,
    conn_id: u64,
    _slot: ConnectionSlot,
) {
    let (outbox, rx) = Outbox::new(shared.options.send_queue);
    let outbox = Arc::new(outbox);
    let (sink, mut stream) = socket.split();
    let writer = tokio::spawn(write_loop(sink, rx, outbox.clone(), shared.options.ping_interval));
    let mut session = Session {
        client_id: format!("{}c{conn_id}", shared.node_tag).into(),
        rate: RequestRate::new(shared.options.max_requests_per_sec, Instant::now()),
        shared,
        identity,
        outbox,
        watches: HashMap::new(),
        assigned_keys: 0,
    };
    tracing::debug!(client = %session.client_id, subject = %session.identity.subject, "connected");
    if session.shared.subject_connected(&session.identity.subject) {
        session.working_set(true);
    }
    session.read_loop(&mut stream).await;
    if session.shared.subject_disconnected(&session.identity.subject) {
        session.working_set(false);
    }
    match session.outbox.close_reason() {
        Some(CLOSE_SLOW_CONSUMER) => session.shared.count_slow_consumer(),
        Some(CLOSE_CHANGES_LOST) => session.shared.count_changes_lost(),
        _ => {}
    }
    session.unwatch_all().await;
    let _ = writer.await;
    // Let the client's close frame arrive (a TCP close with unread data would reset the
    // connection and could lose our close frame).
    let _ = timeout(CLOSE_HANDSHAKE, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    tracing::debug!(client = %session.client_id, "disconnected");
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboxReceiver,
    outbox: Arc<Outbox>,
    ping_interval: std::time::Duration,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    // One close signal for the loop's life, polled only when the queue is empty: creating,
    // polling and dropping one per frame took the token's locks three times a frame.
    let closed = outbox.closed();
    tokio::pin!(closed);
    loop {
        if outbox.is_closing() {
            break;
        }
        let next = tokio::select! {
            biased;
            text = rx.recv() => match text {
                Some(text) => Some(text),
                None => break,
            },
            _ = &mut closed => break,
            _ = ping.tick() => None,
        };
        let sent = {
            let send = async {
                match next {
                    Some(text) => feed_all(&mut sink, &mut rx, text).await,
                    None => sink.send(Message::Ping(Default::default())).await,
                }
            };
            tokio::pin!(send);
            // A client that stops reading blocks the send; once the connection is closing,
            // it gets a grace period and is then dropped.
            tokio::select! {
                biased;
                sent = &mut send => sent,
                _ = &mut closed => match timeout(CLOSE_GRACE, send).await {
                    Ok(sent) => sent,
                    Err(_) => return,
                },
            }
        };
        if sent.is_err() {
            outbox.close(None);
            return;
        }
    }
    let _ = timeout(CLOSE_GRACE, close_socket(&mut sink, &mut rx, &outbox)).await;
}

/// Sends what is still queued (unless the client is too slow for it) and the close frame.
async fn close_socket(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut OutboxReceiver,
    outbox: &Outbox,
) {
    if let Some(reason) = outbox.close_reason() {
        if reason != CLOSE_SLOW_CONSUMER {
            // Answers already queued (e.g. while draining for shutdown) still go out.
            while let Some(text) = rx.try_recv() {
                if sink.feed(Message::Text(text)).await.is_err() {
                    return;
                }
            }
        }
        let frame = CloseFrame { code: reason.code, reason: Utf8Bytes::from_static(reason.reason) };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    let _ = sink.flush().await;
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn feed_all(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut OutboxReceiver,
    first: Utf8Bytes,
) -> Result<(), axum::Error> {
    sink.feed(Message::Text(first)).await?;
    for _ in 0..64 {
        match rx.try_recv() {
            Some(text) => sink.feed(Message::Text(text)).await?,
            None => break,
        }
    }
    sink.flush().await
}

fn is_too_large(error: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Session {
    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>) {
        let idle = self.shared.options.idle_timeout;
        let (shared, outbox) = (self.shared.clone(), self.outbox.clone());
        // The signals are checked by their flags at each turn and waited on only after the
        // stream, each by one future kept for the loop's life (see `Signal`).
        let closed = outbox.closed();
        let stopping = shared.shutdown.raised();
        tokio::pin!(closed, stopping);
        // One timer for the connection's life, moved on only when it fires: a timer per
        // message (a wheel insert and removal each) was a few percent of the ingress's CPU.
        let mut last_heard = tokio::time::Instant::now();
        let idle_check = tokio::time::sleep_until(last_heard + idle);
        tokio::pin!(idle_check);
        loop {
            if outbox.is_closing() {
                return;
            }
            if shared.shutdown.is_raised() {
                let _ = timeout(shared.options.drain_timeout, outbox.all_answered()).await;
                outbox.close(Some(CLOSE_SHUTDOWN));
                return;
            }
            let next = tokio::select! {
                biased;
                next = stream.next() => next,
                _ = &mut closed => return,
                // Handled at the top of the loop.
                _ = &mut stopping => continue,
                _ = &mut idle_check => {
                    let deadline = last_heard + idle;
                    if deadline <= tokio::time::Instant::now() {
                        self.outbox.close(Some(CLOSE_IDLE));
                        return;
                    }
                    idle_check.as_mut().reset(deadline);
                    continue;
                }
            };
            let message = match next {
                None => {
                    self.outbox.close(None);
                    return;
                }
                Some(Err(e)) => {
                    let reason = if is_too_large(&e) { CLOSE_TOO_LARGE } else { CLOSE_PROTOCOL };
                    tracing::debug!(client = %self.client_id, error = %e, "closing");
                    self.outbox.close(Some(reason));
                    return;
                }
                Some(Ok(message)) => message,
            };
            last_heard = tokio::time::Instant::now();
            match message {
                Message::Text(text) => self.handle_text(text.as_str()).await,
                Message::Binary(_) => {
                    self.shared.requests.received(RequestKind::Invalid);
                    self.send_error(
                        RequestKind::Invalid,
                        None,
                        ErrorCode::BadRequest,
                        "binary frames are not accepted: send one JSON object per text frame",
                    );
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => {
                    self.outbox.close(None);
                    return;
                }
            }
        }
    }

    /// Answers the request (of `kind`, with `id` when it could be read) with an error.
    fn send_error(
        &self,
        kind: RequestKind,
        id: Option<&RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.send_error_body(kind, id, &ErrorBody::new(code, message));
    }

    fn send_error_body(&self, kind: RequestKind, id: Option<&RequestId>, error: &ErrorBody) {
        self.shared.requests.error(kind, error.code);
        self.outbox.send(error_json(id, error).into());
    }

    async fn handle_text(&mut self, text: &str) {
        let arrived = Instant::now();
        let within_rate = self.rate.try_take(arrived);
        let custom = &self.shared.options.custom_ops;
        let metrics = &self.shared.requests;
        let frame = match parse_request_with(text, &|op| custom.iter().any(|c| c == op)) {
            Ok(frame) => frame,
            Err(e) => {
                metrics.received(RequestKind::Invalid);
                let body = ErrorBody::new(e.code, e.message);
                self.send_error_body(RequestKind::Invalid, e.id.as_ref(), &body);
                return;
            }
        };
        let kind = RequestKind::of(&frame.request);
        metrics.received(kind);
        if !within_rate {
            let limit = self.shared.options.max_requests_per_sec;
            self.send_error(
                kind,
                Some(&frame.id),
                ErrorCode::Busy,
                format!("over {limit} requests per second on this connection: slow down"),
            );
            return;
        }
        match frame.request {
            Request::Instruction { op, key } => self.submit(frame.id, op, key, arrived),
            // Boxed: the rare, large future stays out of every connection's task.
            Request::Sub { topic, since_rev } => {
                Box::pin(self.subscribe(frame.id, topic, since_rev)).await
            }
            Request::Unsub { topic } => self.unsubscribe(frame.id, topic).await,
        }
    }

    /// Why the subject may not do `op` on `path`, if it may not.
    fn refusal(&self, path: &str, write: bool) -> Option<String> {
        let rights = &self.identity.rights;
        if is_reserved(path) {
            Some(format!("{path:?} is reserved for Ferry itself"))
        } else if write && !rights.may_write(path) {
            Some(format!("{} may not write {path:?}", self.identity.subject))
        } else if !write && !rights.may_read(path) {
            Some(format!("{} may not read {path:?}", self.identity.subject))
        } else {
            None
        }
    }

    fn instruction(
        &mut self,
        request_id: RequestId,
        op: Operation,
        key: Option<String>,
    ) -> Instruction {
        let key = match key {
            Some(key) => key,
            // Only a queue that may deliver twice needs a key to make the second apply nothing.
            None if op.is_write() && self.shared.queue.may_redeliver() => {
                self.assigned_keys += 1;
                format!("{}:{}:{}", self.shared.key_prefix, self.client_id, self.assigned_keys)
            }
            None => String::new(),
        };
        Instruction {
            id: self.shared.next_instruction_id(),
            client_id: self.client_id.clone(),
            request_id,
            subject: self.identity.subject.clone(),
            rights: self.identity.rights.clone(),
            key,
            op,
            received_at_us: now_us(),
        }
    }

    fn submit(&mut self, id: RequestId, op: Operation, key: Option<String>, arrived: Instant) {
        let kind = RequestKind::of_op(&op);
        if let Some(why) = self.refusal(op.path(), op.is_write()) {
            self.send_error(kind, Some(&id), ErrorCode::Forbidden, why);
            return;
        }
        let instruction = self.instruction(id.clone(), op, key);
        let outbox = self.outbox.clone();
        let shared = self.shared.clone();
        let reply: ReplyTo = Box::new(move |answer| {
            let error = answer.result.as_ref().err().map(|e| e.code);
            outbox.send(answer_json(&answer).into());
            outbox.end_request();
            shared.requests.answered(kind, arrived, error);
        });
        self.outbox.begin_request();
        if let Err(e) = self.shared.queue.submit(instruction, reply) {
            self.outbox.end_request();
            self.send_queue_error(kind, &id, e);
        }
    }

    fn send_queue_error(&self, kind: RequestKind, id: &RequestId, error: QueueError) {
        let code = match error {
            QueueError::Busy => ErrorCode::Busy,
            _ => ErrorCode::Unavailable,
        };
        self.send_error(kind, Some(id), code, error.to_string());
    }

    /// Asks the worker and waits for the answer (used inside `sub`).
    async fn ask(&mut self, id: &RequestId, op: Operation) -> Result<AnswerBody, ErrorBody> {
        let instruction = self.instruction(id.clone(), op, None);
        let (tx, rx) = oneshot::channel();
        let reply: ReplyTo = Box::new(move |answer| {
            let _ = tx.send(answer.result);
        });
        match self.shared.queue.submit(instruction, reply) {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(ErrorBody::new(ErrorCode::Unavailable, "the worker dropped the request"))
            }),
            Err(QueueError::Busy) => {
                Err(ErrorBody::new(ErrorCode::Busy, QueueError::Busy.to_string()))
            }
            Err(e) => Err(ErrorBody::new(ErrorCode::Unavailable, e.to_string())),
        }
    }

    async fn subscribe(&mut self, id: RequestId, topic: Topic, since_rev: Option<u64>) {
        let path = match &topic {
            Topic::Path(p) | Topic::Prefix(p) => p.clone(),
        };
        if let Some(why) = self.refusal(&path, false) {
            self.send_error(RequestKind::Sub, Some(&id), ErrorCode::Forbidden, why);
            return;
        }
        if let Some(old) = self.watches.remove(&topic) {
            self.unwatch(topic.clone(), old).await;
        } else if self.watches.len() >= self.shared.options.max_subscriptions {
            let limit = self.shared.options.max_subscriptions;
            self.send_error(
                RequestKind::Sub,
                Some(&id),
                ErrorCode::LimitExceeded,
                format!("at most {limit} subscriptions per connection"),
            );
            return;
        }
        let watch = {
            let shared = self.shared.clone();
            let outbox = self.outbox.clone();
            let topic = topic.clone();
            let limit = shared.options.send_queue;
            tokio::task::spawn_blocking(move || shared.fanout.watch(&topic, outbox, limit))
                .await
                .expect("the fanout does not panic")
        };
        self.watches.insert(topic.clone(), watch.clone());
        let result = match (&topic, since_rev) {
            (Topic::Prefix(_), _) => {
                watch.go_live_after(
                    0,
                    vec![ok_json(&id, &AnswerBody::Subscribed { rev: None }).into()],
                );
                Ok(())
            }
            (Topic::Path(path), None) => self.start_live(&id, path, &watch).await,
            (Topic::Path(path), Some(since)) => self.catch_up(&id, path, since, &watch).await,
        };
        if let Err(error) = result {
            if let Some(watch) = self.watches.remove(&topic) {
                self.unwatch(topic, watch).await;
            }
            self.send_error_body(RequestKind::Sub, Some(&id), &error);
        }
    }

    /// A path watch without `since_rev`: answers with the file's current revision.
    async fn start_live(
        &mut self,
        id: &RequestId,
        path: &str,
        watch: &Watch,
    ) -> Result<(), ErrorBody> {
        let rev = match self.ask(id, Operation::Stat { path: path.to_owned() }).await {
            Ok(body) => body.rev().unwrap_or(0),
            Err(e) if e.code == ErrorCode::NotFound => 0,
            Err(e) => return Err(e),
        };
        // The answer promises the changes after `rev`: an event the stat already saw (published
        // between the watch and the stat, or queued in the fan-out before the watch) is not
        // sent, every later one is (the watch existed before the stat read the file).
        watch.go_live_after(
            rev,
            vec![ok_json(id, &AnswerBody::Subscribed { rev: Some(rev) }).into()],
        );
        Ok(())
    }

    /// A path watch with `since_rev`: history then live, or a snapshot when history cannot
    /// bridge the gap.
    async fn catch_up(
        &mut self,
        id: &RequestId,
        path: &str,
        since: u64,
        watch: &Watch,
    ) -> Result<(), ErrorBody> {
        let history = {
            let bus = self.shared.bus.clone();
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || bus.history(&path, since))
                .await
                .expect("the bus does not panic")
        };
        if let History::Events(events) = &history {
            let answered = watch.go_live_from(since, events, |current| {
                vec![ok_json(id, &AnswerBody::Subscribed { rev: Some(current) }).into()]
            });
            if answered.is_ok() {
                return Ok(());
            }
        }
        let gap_rev = match history {
            History::Gap { current_rev } => current_rev,
            History::Events(events) => events.last().map(|e| e.rev),
        };
        // A client at another revision than the file (behind beyond the history, or ahead of
        // a store restored from older data) gets the whole file, and then every later change.
        let (rev, snapshot) = match self.ask(id, Operation::Get { path: path.to_owned() }).await {
            Ok(AnswerBody::File(file)) => {
                let snapshot =
                    (file.rev != since).then(|| snapshot_json(path, file.rev, Some(&file.content)));
                (file.rev, snapshot)
            }
            Ok(other) => {
                return Err(ErrorBody::new(ErrorCode::Internal, format!("get answered {other:?}")))
            }
            Err(e) if e.code == ErrorCode::NotFound => {
                let rev = gap_rev.unwrap_or(0);
                (rev, (since > 0).then(|| snapshot_json(path, rev, None)))
            }
            Err(e) => return Err(e),
        };
        let mut first =
            vec![Utf8Bytes::from(ok_json(id, &AnswerBody::Subscribed { rev: Some(rev) }))];
        first.extend(snapshot.map(Utf8Bytes::from));
        watch.go_live_after(rev, first);
        Ok(())
    }

    async fn unsubscribe(&mut self, id: RequestId, topic: Topic) {
        if let Some(watch) = self.watches.remove(&topic) {
            self.unwatch(topic, watch).await;
        }
        self.outbox.send(ok_json(&id, &AnswerBody::Unsubscribed).into());
    }

    async fn unwatch(&self, topic: Topic, watch: Arc<Watch>) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.fanout.unwatch(&topic, &watch)).await;
    }

    async fn unwatch_all(&mut self) {
        for (topic, watch) in std::mem::take(&mut self.watches) {
            self.unwatch(topic, watch).await;
        }
    }

    /// Asks the worker to bring the subject's home prefix into its cache (`load`, on the
    /// subject's first connection to this node), or to flush it and let it leave the cache
    /// (after the last one). The answer goes to no client.
    fn working_set(&mut self, load: bool) {
        let prefix = self.shared.options.home_prefix.replace("{sub}", &self.identity.subject);
        if self.refusal(&prefix, false).is_some() {
            return;
        }
        let op = Operation::WorkingSet { prefix, load };
        let instruction = self.instruction(RequestId::Text("working-set".into()), op, None);
        let _ = self.shared.queue.submit(instruction, Box::new(|_| {}));
    }
}
