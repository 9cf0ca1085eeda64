//! The runner's signaling client: WebTransport (one bidirectional stream, 4-byte big-endian
//! length + JSON per message), trusting the server's certificate by the hash it publishes at
//! `GET /webtransport`. (No WebSocket client is among the crate's normal dependencies.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};

/// Where the server's WebTransport endpoint is and which certificate to trust.
#[derive(Debug, Clone)]
pub struct WtTarget {
    pub url: String,
    pub hash: [u8; 32],
}

/// Read `GET {base}/webtransport`.
pub async fn discover(http: &reqwest::Client, base: &str) -> anyhow::Result<WtTarget> {
    let info: Value = http
        .get(format!("{}/webtransport", base.trim_end_matches('/')))
        .send()
        .await
        .context("GET /webtransport")?
        .error_for_status()?
        .json()
        .await?;
    let url = info["url"]
        .as_str()
        .ok_or_else(|| anyhow!("the server has WebTransport disabled: {info}"))?
        .to_string();
    let value = info["certificateHashes"][0]["value"]
        .as_str()
        .ok_or_else(|| anyhow!("no certificate hash in /webtransport: {info}"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value)?;
    let hash: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("certificate hash is not 32 bytes"))?;
    Ok(WtTarget { url, hash })
}

/// One QUIC client endpoint (one UDP socket) shared by every signaling connection of a run.
pub fn client_endpoint(
    target: &WtTarget,
) -> anyhow::Result<Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(target.hash)])
        .keep_alive_interval(Some(Duration::from_secs(3)))
        .build();
    Ok(Arc::new(wtransport::Endpoint::client(config)?))
}

/// A failed request, with the server's error code when it answered one.
#[derive(Debug)]
pub struct RequestError {
    pub code: String,
    pub reply: Value,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.reply)
    }
}

impl std::error::Error for RequestError {}

pub struct Signal {
    _endpoint: Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>,
    _connection: wtransport::Connection,
    send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    buffer: Vec<u8>,
    next_id: u64,
    /// Notifications that arrived while a request waited for its reply.
    backlog: VecDeque<Value>,
}

impl Signal {
    pub async fn connect(
        endpoint: Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>,
        target: &WtTarget,
    ) -> anyhow::Result<Signal> {
        let connection = endpoint
            .connect(&target.url)
            .await
            .with_context(|| format!("WebTransport connect to {}", target.url))?;
        let (send, recv) = connection.open_bi().await?.await?;
        Ok(Signal {
            _endpoint: endpoint,
            _connection: connection,
            send,
            recv,
            buffer: Vec::new(),
            next_id: 1,
            backlog: VecDeque::new(),
        })
    }

    async fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        let text = message.to_string();
        let mut frame = (text.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(text.as_bytes());
        self.send.write_all(&frame).await?;
        Ok(())
    }

    /// The next message off the wire: `Ok(None)` on timeout, an error when the stream ended.
    async fn read(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.buffer.len() >= 4 {
                let len = u32::from_be_bytes([
                    self.buffer[0],
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                ]) as usize;
                if self.buffer.len() >= 4 + len {
                    let value = serde_json::from_slice(&self.buffer[4..4 + len])?;
                    self.buffer.drain(..4 + len);
                    return Ok(Some(value));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.recv.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                Ok(Ok(Some(n))) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Ok(None)) => bail!("signaling stream closed by the server"),
                Ok(Err(e)) => bail!("signaling stream failed: {e}"),
            }
        }
    }

    /// The next notification (backlog first); `Ok(None)` when nothing came within `within`.
    pub async fn next_notification(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        if let Some(message) = self.backlog.pop_front() {
            return Ok(Some(message));
        }
        self.read(within).await
    }

    /// Send a request and wait for its reply; `RATE_LIMITED` is retried after the advised pause.
    pub async fn request(&mut self, kind: &str, data: Value) -> anyhow::Result<Value> {
        for _ in 0..8 {
            let id = self.next_id;
            self.next_id += 1;
            self.send(&json!({ "type": kind, "data": data, "requestId": id }))
                .await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let reply = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.read(left).await? {
                    None => bail!("no reply to {kind} within 15 s"),
                    Some(m) if m["requestId"] == json!(id) => break m,
                    Some(m) => self.backlog.push_back(m),
                }
            };
            if reply["type"] != "error" {
                return Ok(reply);
            }
            let code = reply["data"]["code"]
                .as_str()
                .unwrap_or("UNKNOWN")
                .to_string();
            if code == "RATE_LIMITED" {
                let pause = reply["data"]["retryAfterMs"].as_u64().unwrap_or(500);
                tokio::time::sleep(Duration::from_millis(pause.clamp(10, 5000))).await;
                continue;
            }
            return Err(RequestError { code, reply }.into());
        }
        bail!("{kind}: still rate limited after 8 attempts")
    }
}
