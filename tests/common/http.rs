//! Plain HTTP/1.1 GETs to a node's HTTP routes (`/v1/route`, `/metrics`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the node serving the WebSocket URL `ws_url`, over a fresh connection: the
/// status code and the body.
pub async fn get(ws_url: &str, path: &str) -> (u16, String) {
    let addr = ws_url.trim_start_matches("ws://").trim_end_matches("/v1/ws");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: ferry\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// The value of the sample `name` (with its labels, as written in OpenMetrics text) in
/// `text`, if present.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of the samples of `family` over all its label sets (e.g. every partition's).
pub fn sum_of(text: &str, family: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(family)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            (labels.is_empty() || labels.starts_with('{')).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
