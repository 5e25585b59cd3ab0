//! A Rust client of Ferry's WebSocket protocol (`docs/PROTOCOL.md`), on tokio-tungstenite.
//!
//! [`Client::connect`] opens a connection; requests get numeric ids and are matched with their
//! answers, so that many can be in flight at once ([`Client::request`], or the typed helpers
//! [`Client::put`], [`Client::get`], ...). Events arrive through [`Client::next_event`];
//! answers that match no request (e.g. to a malformed frame sent with [`Client::send_text`])
//! through [`Client::next_unmatched`]. Events are read from the socket only as fast as they are
//! taken: a client that stops taking them is, as it should be, a slow consumer to the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// Events (and unmatched answers) buffered before the client stops reading the socket.
const INCOMING_BUFFER: usize = 4096;
/// Bytes tungstenite reads at a time (from the buffer below). It zero-fills that much of its
/// buffer before every read: at its default of 128 KiB that fill was a sixth of a bench
/// generator's CPU, at 8 KiB still 3 % at 20,000 writes/s, where a read finds one frame of
/// about 600 bytes (a larger frame still arrives whole over several reads).
const READ_BUFFER_BYTES: usize = 2 * 1024;
/// Bytes taken from the socket at a time, beneath tungstenite: its reads came back a frame or a
/// few kilobytes at a time, about five `recv`s for each of the server's writes in a fan-out (a
/// run of a busy file's events is about 10 KiB), so its reads are served from this buffer.
const SOCKET_READ_BYTES: usize = 16 * 1024;

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `ws://host:port/v1/ws`.
    pub url: String,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Sent as the `Origin` header.
    pub origin: Option<String>,
    /// Largest message accepted from the server (default: tungstenite's 64 MiB).
    pub max_message_bytes: Option<usize>,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("bad url or header for {url}: {message}")]
    BadRequest { url: String, message: String },
    #[error("the server refused the connection to {url}: HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: tungstenite::Error },
    #[error("the connection is closed{}", close_text(.0))]
    Closed(Option<CloseInfo>),
    #[error("{code}: {message}")]
    Server { code: String, message: String, rev: Option<u64>, answer: Value },
    #[error("unexpected answer {0}")]
    Unexpected(Value),
}

fn close_text(info: &Option<CloseInfo>) -> String {
    info.as_ref().map(|c| format!(" (code {}: {})", c.code, c.reason)).unwrap_or_default()
}

impl ClientError {
    /// The protocol error code, for an error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The server's close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

impl From<&tungstenite::protocol::CloseFrame> for CloseInfo {
    fn from(frame: &tungstenite::protocol::CloseFrame) -> CloseInfo {
        CloseInfo { code: frame.code.into(), reason: frame.reason.as_str().to_owned() }
    }
}

/// A `change` or `snapshot` event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `change` or `snapshot`.
    pub kind: String,
    pub path: String,
    pub rev: u64,
    /// The whole event as received.
    pub raw: Value,
}

/// A WebSocket connection to a Ferry server, handshake done.
pub(crate) type Socket = WebSocketStream<BufReader<TcpStream>>;

/// Opens a WebSocket to `options.url` with the token and origin headers: what [`Client`] and
/// [`crate::direct_client::DirectConnection`] run on.
pub(crate) async fn open_socket(options: &ConnectOptions) -> Result<Socket, ClientError> {
    let url = options.url.clone();
    let bad = |message: String| ClientError::BadRequest { url: url.clone(), message };
    let mut request = url.as_str().into_client_request().map_err(|e| bad(e.to_string()))?;
    if let Some(token) = &options.token {
        let value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| bad(e.to_string()))?;
        request.headers_mut().insert("authorization", value);
    }
    if let Some(origin) = &options.origin {
        let value = HeaderValue::from_str(origin).map_err(|e| bad(e.to_string()))?;
        request.headers_mut().insert("origin", value);
    }
    let mut config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    if let Some(max) = options.max_message_bytes {
        config = config.max_message_size(Some(max)).max_frame_size(Some(max));
    }
    let uri = request.uri();
    if uri.scheme_str() != Some("ws") {
        return Err(bad("only ws:// URLs are supported".into()));
    }
    let host = uri.host().ok_or_else(|| bad("the URL has no host".into()))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let connect = |source: std::io::Error| ClientError::Connect {
        url: url.clone(),
        source: tungstenite::Error::Io(source),
    };
    let stream = TcpStream::connect((host, uri.port_u16().unwrap_or(80))).await.map_err(connect)?;
    stream.set_nodelay(true).map_err(connect)?;
    let stream = BufReader::with_capacity(SOCKET_READ_BYTES, stream);
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => ClientError::Refused {
                url: url.clone(),
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default(),
            },
            source => ClientError::Connect { url: url.clone(), source },
        })?;
    Ok(socket)
}

/// An answer, `ok` or not: an error answer as [`ClientError::Server`].
pub(crate) fn checked(answer: Value) -> Result<Value, ClientError> {
    match answer["ok"].as_bool() {
        Some(true) => Ok(answer),
        Some(false) => Err(ClientError::Server {
            code: answer["error"]["code"].as_str().unwrap_or_default().to_owned(),
            message: answer["error"]["message"].as_str().unwrap_or_default().to_owned(),
            rev: answer["rev"].as_u64(),
            answer,
        }),
        None => Err(ClientError::Unexpected(answer)),
    }
}

/// The revision an `ok` answer carries.
pub(crate) fn rev_of(answer: Value) -> Result<u64, ClientError> {
    answer["rev"].as_u64().ok_or(ClientError::Unexpected(answer))
}

/// Requests waiting for their answers; `None` once the connection has ended.
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Value>>>>>;

/// One connection to a Ferry server. Cheap operations take `&self`, so one client can be
/// shared by tasks; reading events takes `&mut self`.
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    events: mpsc::Receiver<Event>,
    unmatched: mpsc::UnboundedReceiver<Value>,
    close: Arc<OnceLock<CloseInfo>>,
    next_id: AtomicU64,
}

impl Client {
    /// Connects to `url`, with `token` if given.
    pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Client::connect_with(&ConnectOptions {
            url: url.to_owned(),
            token: token.map(str::to_owned),
            ..ConnectOptions::default()
        })
        .await
    }

    pub async fn connect_with(options: &ConnectOptions) -> Result<Client, ClientError> {
        let socket = open_socket(options).await?;
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let close = Arc::new(OnceLock::new());
        let (events_tx, events) = mpsc::channel(INCOMING_BUFFER);
        let (unmatched_tx, unmatched) = mpsc::unbounded_channel();
        {
            let pending = pending.clone();
            let close = close.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Text(text) => {
                            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                                continue;
                            };
                            if value.get("event").is_some() {
                                let event = Event {
                                    kind: value["event"].as_str().unwrap_or_default().to_owned(),
                                    path: value["path"].as_str().unwrap_or_default().to_owned(),
                                    rev: value["rev"].as_u64().unwrap_or(0),
                                    raw: value,
                                };
                                if events_tx.send(event).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                            let waiter = value.get("id").and_then(Value::as_u64).and_then(|id| {
                                let mut pending =
                                    pending.lock().unwrap_or_else(PoisonError::into_inner);
                                pending.as_mut().and_then(|p| p.remove(&id))
                            });
                            match waiter {
                                Some(waiter) => drop(waiter.send(value)),
                                None => drop(unmatched_tx.send(value)),
                            }
                        }
                        // Reading on after the close frame completes the close handshake.
                        Message::Close(Some(frame)) => {
                            let _ = close.set(CloseInfo::from(&frame));
                        }
                        _ => {}
                    }
                }
                // Fail every waiting request (their senders drop), and every later one.
                pending.lock().unwrap_or_else(PoisonError::into_inner).take();
            });
        }
        Ok(Client { out, pending, events, unmatched, close, next_id: AtomicU64::new(1) })
    }

    /// The server's close frame, once the connection is closed.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.close.get().cloned()
    }

    fn closed(&self) -> ClientError {
        ClientError::Closed(self.close_info())
    }

    /// Sends `request` (an object; its `id` is set here) and returns the answer object, `ok`
    /// or not.
    pub async fn request(&self, mut request: Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(self.closed()),
        };
        if self.out.send(Message::text(request.to_string())).is_err() {
            return Err(self.closed());
        }
        // The reader records the close frame before it fails the waiting requests.
        rx.await.map_err(|_| self.closed())
    }

    /// [`Client::request`], with an error answer as [`ClientError::Server`].
    pub async fn call(&self, request: Value) -> Result<Value, ClientError> {
        checked(self.request(request).await?)
    }

    async fn call_rev(&self, request: Value) -> Result<u64, ClientError> {
        rev_of(self.call(request).await?)
    }

    /// Creates or replaces `path`; the new revision.
    pub async fn put(&self, path: &str, content: &str) -> Result<u64, ClientError> {
        self.call_rev(json!({"op": "put", "path": path, "content": content})).await
    }

    /// Appends to `path` (creating it); the new revision.
    pub async fn append(&self, path: &str, content: &str) -> Result<u64, ClientError> {
        self.call_rev(json!({"op": "append", "path": path, "content": content})).await
    }

    /// The `get` answer: `path`, `rev`, `content` (or `content_b64`), `size`, `mtime`, `author`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(json!({"op": "get", "path": path})).await
    }

    /// One page of a listing: the answer with `entries` and `next`.
    pub async fn list(&self, prefix: &str, after: Option<&str>) -> Result<Value, ClientError> {
        self.call(json!({"op": "list", "prefix": prefix, "after": after})).await
    }

    /// Watches `path`, from `since_rev` if given; the file's current revision.
    pub async fn sub(&self, path: &str, since_rev: Option<u64>) -> Result<u64, ClientError> {
        self.call_rev(json!({"op": "sub", "path": path, "since_rev": since_rev})).await
    }

    /// Watches every file under `prefix`.
    pub async fn sub_prefix(&self, prefix: &str) -> Result<(), ClientError> {
        self.call(json!({"op": "sub", "prefix": prefix})).await.map(drop)
    }

    /// Stops watching `path`.
    pub async fn unsub(&self, path: &str) -> Result<(), ClientError> {
        self.call(json!({"op": "unsub", "path": path})).await.map(drop)
    }

    /// Sends a raw text frame (answers come back through [`Client::next_unmatched`] unless its
    /// id is one of this client's).
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.out.send(Message::text(text.into())).map_err(|_| self.closed())
    }

    /// Sends a raw binary frame.
    pub fn send_binary(&self, data: Vec<u8>) -> Result<(), ClientError> {
        self.out.send(Message::binary(data)).map_err(|_| self.closed())
    }

    /// The next event; `None` once the connection is closed and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next answer that matched no request; `None` once the connection is closed.
    pub async fn next_unmatched(&mut self) -> Option<Value> {
        self.unmatched.recv().await
    }

    /// Waits until the server closes the connection (taking and dropping pending events) and
    /// returns its close frame.
    pub async fn wait_closed(&mut self) -> Option<CloseInfo> {
        while self.events.recv().await.is_some() {}
        self.close_info()
    }

    /// Closes the connection (a normal close frame).
    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_other_than_plain_ws_is_refused_before_connecting() {
        for url in ["wss://127.0.0.1:1/v1/ws", "http://127.0.0.1:1/v1/ws"] {
            let options = ConnectOptions { url: url.into(), ..ConnectOptions::default() };
            match open_socket(&options).await {
                Err(ClientError::BadRequest { url: named, message }) => {
                    assert_eq!(named, url);
                    assert!(message.contains("ws://"), "{message}");
                }
                other => panic!("{url}: {:?}", other.map(|_| ())),
            }
        }
    }
}
