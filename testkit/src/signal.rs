//! The signaling client: JSON messages over WebSocket (`/ws`, one text frame each) or over
//! WebTransport (one bidirectional stream, [`crate::frame`] framing), trusting the server's
//! certificate by the hash it publishes at `GET /webtransport`.
//!
//! Two flavours of every call: tests want the raw reply and a panic with context when the
//! server stays silent (`request`, `notification`, `recv`); the load runner wants errors it can
//! count (`call`, `next_notification`, `read`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::frame::{self, FrameBuffer};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A QUIC client endpoint; one can carry many connections (the load runner shares one).
pub type WtEndpoint = wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>;

/// Which signaling transport a client uses; tests run the same body over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    WebTransport,
}

/// Where the server's WebTransport endpoint is and which certificate to trust.
#[derive(Debug, Clone)]
pub struct WtTarget {
    pub url: String,
    pub hash: [u8; 32],
}

impl WtTarget {
    /// The endpoint on loopback at `port`.
    pub fn local(port: u16, hash: [u8; 32]) -> Self {
        WtTarget {
            url: format!("https://127.0.0.1:{port}/wt"),
            hash,
        }
    }
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

/// A client endpoint (one UDP socket) that trusts `target`'s certificate. The load runner
/// shares one among hundreds of sessions, so its receive buffer is grown past the kernel's
/// default (≈ 208 KB), which a join ramp's room notices overflowed: the drops, and QUIC's
/// retransmission timers after them, were charged to the server as join time.
pub fn client_endpoint(target: &WtTarget) -> anyhow::Result<Arc<WtEndpoint>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    // Capped by net.core.rmem_max (4 MB on common distributions); a smaller one still helps.
    let _ = socket.set_recv_buffer_size(4 * 1024 * 1024);
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)).into())?;
    let config = wtransport::ClientConfig::builder()
        .with_bind_socket(socket.into())
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(target.hash)])
        .keep_alive_interval(Some(Duration::from_secs(3)))
        .build();
    Ok(Arc::new(wtransport::Endpoint::client(config)?))
}

/// A request the server answered with an error, with its code.
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

/// Why [`SignalClient::read`] got no message (a timeout is `Ok(None)` instead).
#[derive(Debug)]
pub enum ReadError {
    /// The connection or stream ended or failed.
    Closed(String),
    /// The server sent something that is not JSON: always a server bug.
    NotJson(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed(why) => write!(f, "signaling connection ended: {why}"),
            ReadError::NotJson(text) => write!(f, "server sent non-JSON: {text}"),
        }
    }
}

impl std::error::Error for ReadError {}

enum Pipe {
    Ws(Box<Ws>),
    Wt {
        // The endpoint must outlive the connection.
        _endpoint: Arc<WtEndpoint>,
        connection: wtransport::Connection,
        send: wtransport::SendStream,
        recv: wtransport::RecvStream,
        frames: FrameBuffer,
    },
}

/// One signaling session's connection.
pub struct SignalClient {
    pipe: Pipe,
    next_id: u64,
    /// Highest `seq` seen, for resume.
    pub last_seq: u64,
    /// The `seq` last acknowledged with `ping {lastSeq}`, and when.
    acked: (u64, Instant),
    /// Messages that arrived while a request waited for its reply, oldest first.
    pub backlog: Vec<Value>,
}

impl SignalClient {
    fn new(pipe: Pipe) -> Self {
        SignalClient {
            pipe,
            next_id: 1,
            last_seq: 0,
            acked: (0, Instant::now()),
            backlog: Vec::new(),
        }
    }

    /// WebSocket to `ws://{addr}/ws`.
    pub async fn connect_ws(addr: SocketAddr) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .with_context(|| format!("WebSocket connect to {addr}"))?;
        Ok(Self::new(Pipe::Ws(Box::new(ws))))
    }

    /// WebTransport to `target` through `endpoint` (shareable between clients).
    pub async fn connect_wt(endpoint: Arc<WtEndpoint>, target: &WtTarget) -> anyhow::Result<Self> {
        let connection = endpoint
            .connect(&target.url)
            .await
            .with_context(|| format!("WebTransport connect to {}", target.url))?;
        let (send, recv) = connection.open_bi().await?.await?;
        Ok(Self::new(Pipe::Wt {
            _endpoint: endpoint,
            connection,
            send,
            recv,
            frames: FrameBuffer::default(),
        }))
    }

    /// WebTransport to a loopback server's `port`, with an endpoint of its own.
    pub async fn connect_wt_local(port: u16, hash: [u8; 32]) -> anyhow::Result<Self> {
        let target = WtTarget::local(port, hash);
        Self::connect_wt(client_endpoint(&target)?, &target).await
    }

    /// Send one message as a frame (WebSocket text, or a length-prefixed WebTransport frame).
    pub async fn try_send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        match &mut self.pipe {
            Pipe::Ws(ws) => ws.send(Message::Text(text.to_string().into())).await?,
            Pipe::Wt { send, .. } => send.write_all(&frame::encode(text)).await?,
        }
        Ok(())
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.try_send_raw(text).await.expect("send");
    }

    /// Write bytes to the WebTransport stream as they are (framing is the caller's).
    pub async fn send_bytes_wt(&mut self, bytes: &[u8]) {
        let Pipe::Wt { send, .. } = &mut self.pipe else {
            panic!("not a WebTransport client")
        };
        send.write_all(bytes).await.expect("send");
    }

    pub fn wt_connection(&self) -> &wtransport::Connection {
        let Pipe::Wt { connection, .. } = &self.pipe else {
            panic!("not a WebTransport client")
        };
        connection
    }

    /// The next message off the wire: `Ok(None)` on timeout.
    pub async fn read(&mut self, within: Duration) -> Result<Option<Value>, ReadError> {
        let deadline = tokio::time::Instant::now() + within;
        let text = match &mut self.pipe {
            Pipe::Ws(ws) => loop {
                let Ok(msg) = tokio::time::timeout_at(deadline, ws.next()).await else {
                    return Ok(None);
                };
                match msg {
                    None => return Err(ReadError::Closed("WebSocket ended".into())),
                    Some(Err(e)) => return Err(ReadError::Closed(e.to_string())),
                    Some(Ok(Message::Text(t))) => break t.to_string(),
                    Some(Ok(Message::Close(_))) => {
                        return Err(ReadError::Closed("close frame".into()))
                    }
                    Some(Ok(_)) => continue,
                }
            },
            Pipe::Wt { recv, frames, .. } => loop {
                if let Some(body) = frames.next_frame() {
                    break String::from_utf8(body)
                        .map_err(|e| ReadError::NotJson(format!("not UTF-8: {e}")))?;
                }
                let mut chunk = [0u8; 16 * 1024];
                match tokio::time::timeout_at(deadline, recv.read(&mut chunk)).await {
                    Err(_) => return Ok(None),
                    Ok(Ok(Some(n))) => frames.push(&chunk[..n]),
                    Ok(Ok(None)) => return Err(ReadError::Closed("stream finished".into())),
                    Ok(Err(e)) => return Err(ReadError::Closed(e.to_string())),
                }
            },
        };
        let value: Value = serde_json::from_str(&text).map_err(|_| ReadError::NotJson(text))?;
        if let Some(seq) = value["seq"].as_u64() {
            self.last_seq = self.last_seq.max(seq);
        }
        Ok(Some(value))
    }

    /// The next message, `None` on timeout or when the connection ended.
    pub async fn recv(&mut self, within: Duration) -> Option<Value> {
        match self.read(within).await {
            Ok(message) => message,
            Err(ReadError::Closed(_)) => None,
            Err(e @ ReadError::NotJson(_)) => panic!("{e}"),
        }
    }

    /// Send a request and wait for the message carrying its requestId (reply or error); other
    /// messages go to the backlog.
    pub async fn exchange(
        &mut self,
        kind: &str,
        data: Value,
        within: Duration,
    ) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({ "type": kind, "data": data, "requestId": id }).to_string();
        self.try_send_raw(&text).await?;
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await? {
                None => bail!("no reply to {kind} within {within:?}"),
                Some(m) if m["requestId"] == json!(id) => return Ok(m),
                Some(m) => self.backlog.push(m),
            }
        }
    }

    /// Tell the server, at most every `every`, which messages arrived (`ping {lastSeq}`), so it
    /// stops keeping them for a resume; the `pong` is left for the caller to skip.
    pub async fn acknowledge_every(&mut self, every: Duration) -> anyhow::Result<()> {
        let (acked, at) = self.acked;
        if self.last_seq <= acked || at.elapsed() < every {
            return Ok(());
        }
        let text = json!({ "type": "ping", "data": { "lastSeq": self.last_seq } }).to_string();
        self.try_send_raw(&text).await?;
        self.acked = (self.last_seq, Instant::now());
        Ok(())
    }

    /// [`SignalClient::exchange`] for tests: the raw reply, a panic if none comes in 10 s.
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        self.exchange(kind, data, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("no reply to {kind}: {e:#}"))
    }

    /// A request whose error reply is an `Err` ([`RequestError`]); `RATE_LIMITED` is retried
    /// after the pause the server advises.
    pub async fn call(&mut self, kind: &str, data: Value) -> anyhow::Result<Value> {
        for _ in 0..8 {
            let reply = self
                .exchange(kind, data.clone(), Duration::from_secs(15))
                .await?;
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

    /// The next notification (backlog first); `Ok(None)` when nothing came within `within`.
    pub async fn next_notification(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        if !self.backlog.is_empty() {
            return Ok(Some(self.backlog.remove(0)));
        }
        Ok(self.read(within).await?)
    }

    /// Wait for a notification of `kind`, looking at the backlog first; panics after `within`.
    pub async fn notification(&mut self, kind: &str, within: Duration) -> Value {
        if let Some(pos) = self.backlog.iter().position(|m| m["type"] == kind) {
            return self.backlog.remove(pos);
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .recv(left)
                .await
                .unwrap_or_else(|| panic!("no `{kind}` notification within {within:?}"));
            if msg["type"] == kind {
                return msg;
            }
            self.backlog.push(msg);
        }
    }

    pub async fn authenticate(&mut self, token: &str) -> Value {
        let reply = self
            .request("authenticate", json!({ "token": token }))
            .await;
        assert_eq!(reply["type"], "connected", "{reply}");
        reply
    }

    /// Continue a dropped session on this (new) connection; `access_token` is a JWT of the
    /// session's user (the resume token alone proves nothing).
    pub async fn resume(&mut self, token: &str, last_seq: u64, access_token: &str) -> Value {
        self.last_seq = last_seq;
        let data = json!({ "token": token, "lastSeq": last_seq, "accessToken": access_token });
        self.request("resume", data).await
    }

    /// Authenticate and join `room` (creating it first when `create`); returns the
    /// `joinRoomResponse`. Panics on any error.
    pub async fn join(&mut self, token: &str, room: &str, name: &str, create: bool) -> Value {
        self.authenticate(token).await;
        if create {
            let created = self
                .request("createRoom", json!({ "name": room, "roomId": room }))
                .await;
            assert_eq!(ok(&created, "createRoomResponse")["roomId"], room);
        }
        let reply = self
            .request("joinRoom", json!({ "roomId": room, "displayName": name }))
            .await;
        ok(&reply, "joinRoomResponse");
        reply
    }
}

/// The reply's `data`, asserting its `type`.
pub fn ok<'a>(reply: &'a Value, kind: &str) -> &'a Value {
    assert_eq!(reply["type"], kind, "unexpected reply: {reply}");
    &reply["data"]
}

/// The error reply's code, asserting it is an error with a message.
pub fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "expected an error, got {reply}");
    assert!(
        reply["error"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {reply}"
    );
    reply["data"]["code"].as_str().expect("error code")
}
