//! A client connection driven by the one task that uses it, its frames read into the few
//! fields a load generator checks: what `ferry bench` runs each of its connections on.
//!
//! Why not [`crate::client::Client`]: it runs a reader and a writer task per connection, hands
//! every frame through a channel and parses it into a `serde_json::Value`. A load generator
//! shares the machine with the server it measures; at the peak preset (10,000 connections)
//! this connection spends about a fifth less of the generator's CPU (`BENCHMARKS.md`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{checked, open_socket, rev_of, ClientError, CloseInfo, ConnectOptions, Socket};

/// How long closing may wait for the socket at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a load generator reads of an answer or an event; other fields are skipped unread.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// Answers: the request's id.
    pub id: Option<u64>,
    pub ok: Option<bool>,
    pub rev: Option<u64>,
    #[serde(borrow)]
    pub error: Option<ErrorBody<'a>>,
    /// Events: `change` or `snapshot`.
    #[serde(borrow)]
    pub event: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub path: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub content: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub struct ErrorBody<'a> {
    #[serde(borrow)]
    pub code: Cow<'a, str>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> Option<Frame<'a>> {
        Frame::change_event(text).or_else(|| serde_json::from_str(text).ok())
    }

    /// A `change` event as Ferry's server writes it (fields in the order of its encoder: event,
    /// path, rev, op, content), read without a JSON parser: in a fan-out they are nearly all
    /// of the frames a load generator reads, a million a second. `None` for anything else, and
    /// for any escape in the path or the content: [`Frame::parse`] then reads it as JSON.
    fn change_event(text: &'a str) -> Option<Frame<'a>> {
        let rest = text.strip_prefix(r#"{"event":"change","path":""#)?;
        let (path, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(r#","rev":"#)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let rev = rest[..digits].parse().ok()?;
        let rest = rest[digits..].strip_prefix(r#","op":""#)?;
        let (_, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(r#","content":""#)?;
        let (content, rest) = plain_string(rest)?;
        if !rest.starts_with([',', '}']) {
            return None;
        }
        Some(Frame {
            id: None,
            ok: None,
            rev: Some(rev),
            error: None,
            event: Some(Cow::Borrowed("change")),
            path: Some(Cow::Borrowed(path)),
            content: Some(Cow::Borrowed(content)),
        })
    }
}

/// A JSON string's contents up to its closing quote, and what follows the quote; `None` if it
/// holds an escape (or has no end). One vectorized scan: the content of a fan-out's events was
/// the generator's largest single cost when scanned twice, for the quote and for a backslash.
fn plain_string(s: &str) -> Option<(&str, &str)> {
    let end = memchr::memchr2(b'"', b'\\', s.as_bytes())?;
    (s.as_bytes()[end] == b'"').then(|| (&s[..end], &s[end + 1..]))
}

pub struct DirectConnection {
    socket: Socket,
    /// Frames that arrived while a subscription waited for its answer, read before the socket.
    early: VecDeque<Utf8Bytes>,
    close: Option<CloseInfo>,
    next_id: u64,
}

impl DirectConnection {
    pub async fn open(options: &ConnectOptions) -> Result<DirectConnection, ClientError> {
        let socket = open_socket(options).await?;
        Ok(DirectConnection { socket, early: VecDeque::new(), close: None, next_id: 1 })
    }

    /// Watches `path`; its revision when subscribed. Events that arrive meanwhile wait for
    /// [`DirectConnection::next`]. Ids from 1 up are this method's.
    pub async fn sub(&mut self, path: &str) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = serde_json::json!({"op": "sub", "id": id, "path": path});
        self.send([request.to_string()]).await?;
        loop {
            let Some(text) = self.read_socket().await else {
                return Err(ClientError::Closed(self.close.clone()));
            };
            match Frame::parse(text.as_str()) {
                Some(Frame { id: Some(got), event: None, .. }) if got == id => {
                    // Once per subscription: the answer is read whole, as `Client` reads it.
                    let answer = serde_json::from_str(text.as_str()).unwrap_or_default();
                    return rev_of(checked(answer)?);
                }
                _ => self.early.push_back(text),
            }
        }
    }

    /// Sends `frames` in one write to the socket.
    pub async fn send(
        &mut self,
        frames: impl IntoIterator<Item = String>,
    ) -> Result<(), ClientError> {
        for frame in frames {
            if self.socket.feed(Message::text(frame)).await.is_err() {
                return Err(ClientError::Closed(self.close.clone()));
            }
        }
        self.socket.flush().await.map_err(|_| ClientError::Closed(self.close.clone()))
    }

    /// The next text frame; `None` once the connection is closed
    /// ([`DirectConnection::close_info`] says how, when the server said). Cancel-safe.
    pub async fn next(&mut self) -> Option<Utf8Bytes> {
        match self.early.pop_front() {
            Some(text) => Some(text),
            None => self.read_socket().await,
        }
    }

    /// The next text frame if one can be had without waiting: buffered, or readable from the
    /// socket now. `None` otherwise, also once the connection ended ([`DirectConnection::next`]
    /// then says so).
    pub fn next_ready(&mut self) -> Option<Utf8Bytes> {
        self.next().now_or_never().flatten()
    }

    async fn read_socket(&mut self) -> Option<Utf8Bytes> {
        // Reading on after the close frame completes the close handshake; pings are answered
        // by tungstenite as it reads.
        while let Some(Ok(message)) = self.socket.next().await {
            match message {
                Message::Text(text) => return Some(text),
                Message::Close(Some(frame)) => self.close = Some(CloseInfo::from(&frame)),
                _ => {}
            }
        }
        None
    }

    /// The server's close frame, once one arrived.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.close.as_ref()
    }

    /// Sends a normal close frame, without waiting long for a socket that does not take it.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_events_are_read_with_or_without_escapes() {
        let answer = Frame::parse(r#"{"id":7,"ok":true,"rev":3,"extra":[1,{"a":2}]}"#).unwrap();
        assert_eq!((answer.id, answer.ok, answer.rev), (Some(7), Some(true), Some(3)));
        assert!(answer.event.is_none());
        let refused =
            Frame::parse(r#"{"id":8,"ok":false,"error":{"code":"busy","message":"m"}}"#).unwrap();
        assert_eq!(refused.error.unwrap().code, "busy");
        let event = Frame::parse(
            r#"{"event":"change","path":"/a/b","rev":9,"op":"put","content":"x\"y\u00e9","ts":1}"#,
        )
        .unwrap();
        assert_eq!(event.event.as_deref(), Some("change"));
        assert_eq!(event.path.as_deref(), Some("/a/b"));
        assert_eq!(event.content.as_deref(), Some("x\"y\u{e9}"));
        assert_eq!(event.rev, Some(9));
        let escaped_path = r#"{"event":"change","path":"/a\"b","rev":1,"op":"put","content":"c"}"#;
        assert!(Frame::change_event(escaped_path).is_none(), "an escape is left to serde_json");
        assert_eq!(Frame::parse(escaped_path).unwrap().path.as_deref(), Some("/a\"b"));
        assert!(Frame::parse("not json").is_none());
        assert!(Frame::parse(r#"{"id":"seven"}"#).is_none(), "a mistyped field is no frame");
    }

    /// The server's own encoder writes what the reader without a parser expects; what it
    /// reads is what serde_json reads.
    #[test]
    fn the_servers_change_events_are_read_without_a_parser_as_serde_reads_them() {
        use ferry_protocol::message::{ChangeEvent, ChangeOp};
        use ferry_protocol::wire::change_event_json;

        for (path, content) in [("/home/a/f.txt", "000000000042.000000001234.rest"), ("/é", "")] {
            let event = ChangeEvent {
                path: path.into(),
                rev: 77,
                change: ChangeOp::Put { content: content.to_owned().into() },
                author: "alice".into(),
                ts_ms: 5,
                partition: 3,
            };
            let text = change_event_json(&event);
            let fast = Frame::change_event(&text).expect("read without a parser");
            let parsed: Frame<'_> = serde_json::from_str(&text).unwrap();
            assert_eq!(fast.event, parsed.event);
            assert_eq!(fast.path.as_deref(), Some(path));
            assert_eq!(fast.path, parsed.path);
            assert_eq!(fast.rev, parsed.rev);
            assert_eq!(fast.content, parsed.content);
            assert_eq!((fast.id, fast.ok), (None, None));
        }
        let escaped = r#"{"event":"change","path":"/a","rev":1,"op":"put","content":"a\"b"}"#;
        assert!(Frame::change_event(escaped).is_none(), "an escape goes to the parser");
        assert_eq!(Frame::parse(escaped).unwrap().content.as_deref(), Some("a\"b"));
        let broken = r#"{"event":"change","path":"/a","rev":1,"op":"put","content":"a"b"}"#;
        assert!(Frame::parse(broken).is_none(), "what follows the content is checked");
        let snapshot = r#"{"event":"snapshot","path":"/a","rev":1,"content":"x"}"#;
        assert!(Frame::change_event(snapshot).is_none());
        assert_eq!(Frame::parse(snapshot).unwrap().event.as_deref(), Some("snapshot"));
    }
}
