//! WebTransport signaling (wtransport over QUIC) on its own UDP port.
//!
//! Framing: the client opens one bidirectional stream; every message, both directions, is a
//! 4-byte big-endian length N followed by N bytes of UTF-8 JSON — the same envelopes as `/ws`.
//! Unidirectional streams carry media frames (`media/frames/wire.rs`) and go to the session.
//! Anything else a client opens (more bidirectional streams, datagrams) is refused and
//! counted; past a small budget the session is closed, so a flood costs the server little.
//!
//! Certificates: by default a self-signed ECDSA P-256 certificate, valid at most 14 days (the
//! limit for `serverCertificateHashes`), rotated at half its life without touching open
//! sessions; its SHA-256 is served at `GET /webtransport`. Operators can supply their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use base64::Engine;
use serde_json::json;
use wtransport::config::{states::WantsIdentity, ServerConfigBuilder};
use wtransport::endpoint::endpoint_side::Server;
use wtransport::endpoint::IncomingSession;
use wtransport::tls::self_signed::time::OffsetDateTime;
use wtransport::{Connection, Endpoint, Identity, RecvStream, SendStream, ServerConfig, VarInt};

use super::admission::{self, Caller, Entry};
use crate::media::frames::sink::{BoxFuture, FrameSession, FrameStreamOut};
use crate::session::driver::{drive, Inbound, SignalingConnection};
use crate::session::protocol::{ErrorCode, OutboundEnvelope};
use crate::AppContext;

/// Path clients connect to: `https://host:port/wt`.
pub const PATH: &str = "/wt";
/// Extra streams or datagrams a client may try before its session is closed.
const STRAY_BUDGET: u32 = 16;
const FIRST_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Generated at start-up and rotated at half of `validity`.
    SelfSigned {
        validity: Duration,
        sans: Vec<String>,
    },
    /// Operator-provided PEM files, re-read every hour so renewals apply without a restart.
    Files { cert: PathBuf, key: PathBuf },
}

/// What `/webtransport` tells clients.
pub struct WebTransportState {
    pub local_addr: SocketAddr,
    pub public_url: Option<String>,
    current: RwLock<CertInfo>,
}

#[derive(Clone)]
struct CertInfo {
    /// SHA-256 of the DER certificate; `None` for operator certificates (CA-verified).
    hash: Option<[u8; 32]>,
    not_after: Option<SystemTime>,
}

impl WebTransportState {
    /// The JSON served at `GET /webtransport` for a request that reached us as `host`.
    pub fn describe(&self, host: Option<&str>) -> serde_json::Value {
        let info = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let url = self.public_url.clone().unwrap_or_else(|| {
            // Same host the page came from, our UDP port.
            let hostname = host
                .map(|h| match h.rsplit_once(':') {
                    Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
                    _ => h,
                })
                .unwrap_or("127.0.0.1");
            format!("https://{hostname}:{}{PATH}", self.local_addr.port())
        });
        let hashes: Vec<serde_json::Value> = info
            .hash
            .iter()
            .map(|h| {
                json!({
                    "algorithm": "sha-256",
                    "value": base64::engine::general_purpose::STANDARD.encode(h),
                })
            })
            .collect();
        json!({
            "url": url,
            "certificateHashes": hashes,
            "notAfter": info.not_after.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            "framing": "u32be-length-prefixed-json",
        })
    }

    /// Hex SHA-256 of the current certificate (tests, logs).
    pub fn certificate_hash(&self) -> Option<[u8; 32]> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).hash
    }
}

async fn load_identity(source: &CertSource) -> anyhow::Result<(Identity, CertInfo)> {
    match source {
        CertSource::SelfSigned { validity, sans } => {
            let now = OffsetDateTime::now_utc();
            let validity = wtransport::tls::self_signed::time::Duration::try_from(*validity)?;
            let identity = Identity::self_signed_builder()
                .subject_alt_names(sans)
                .not_before(now)
                .not_after(now + validity)
                .build()?;
            let cert = &identity.certificate_chain().as_slice()[0];
            let info = CertInfo {
                hash: Some(*cert.hash().as_ref()),
                not_after: Some(SystemTime::now() + validity.unsigned_abs()),
            };
            Ok((identity, info))
        }
        CertSource::Files { cert, key } => {
            let identity = Identity::load_pemfiles(cert, key).await.map_err(|e| {
                anyhow::anyhow!("WEBTRANSPORT_CERT_FILE/KEY_FILE could not be loaded: {e}")
            })?;
            Ok((
                identity,
                CertInfo {
                    hash: None,
                    not_after: None,
                },
            ))
        }
    }
}

/// Bidirectional streams a peer may have open at once: the HTTP/3 CONNECT stream and our one
/// signaling (or node-link control) stream, with slack. quinn sets up state for every stream
/// the limit allows when a connection starts (its default of 100 is ≈ 5 KB per connection),
/// and extra bidirectional streams are refused anyway. Unidirectional streams (HTTP/3
/// control and QPACK, media) keep quinn's default of 100.
const MAX_BIDI_STREAMS: u32 = 4;

fn server_config(bind: ServerConfigBuilder<WantsIdentity>, identity: Identity) -> ServerConfig {
    let mut transport = wtransport::config::QuicTransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into());
    bind.with_custom_transport(identity, transport)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(Duration::from_secs(20)))
        .expect("idle timeout in range")
        .build()
}

/// Bind the endpoint and start accepting sessions and rotating certificates.
pub async fn start(
    ctx: Arc<AppContext>,
    bind: SocketAddr,
    source: CertSource,
    public_url: Option<String>,
) -> anyhow::Result<Arc<WebTransportState>> {
    let (identity, info) = load_identity(&source).await?;
    // One socket carries every client's handshakes and signaling. With the kernel's default
    // buffer (≈ 208 KB) a join ramp's room notices (each join is told to everyone) overflowed
    // it at 100 joins/s into a 300-viewer room: lost handshake packets wait out QUIC's
    // doubling retransmission timer, so joins took up to 15 s and some hit READ_TIMEOUT_SECS.
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|e| anyhow::anyhow!("cannot bind WebTransport UDP {bind}: {e}"))?;
    crate::media::worker::grow_socket_buffers(&socket);
    let endpoint = Endpoint::server(server_config(
        ServerConfig::builder().with_bind_socket(socket),
        identity,
    ))
    .map_err(|e| anyhow::anyhow!("cannot start WebTransport on {bind}: {e}"))?;
    let local_addr = endpoint.local_addr()?;
    let state = Arc::new(WebTransportState {
        local_addr,
        public_url,
        current: RwLock::new(info),
    });
    let endpoint = Arc::new(endpoint);
    tokio::spawn(rotate_certificates(
        endpoint.clone(),
        Arc::downgrade(&state),
        local_addr,
        source,
    ));
    let accept_ctx = Arc::downgrade(&ctx);
    tokio::spawn(async move {
        loop {
            let incoming = endpoint.accept().await;
            let Some(ctx) = accept_ctx.upgrade() else {
                return;
            };
            tokio::spawn(handle_session(ctx, incoming));
        }
    });
    tracing::info!(%local_addr, "WebTransport listening");
    Ok(state)
}

/// Swap in a fresh certificate before the current one expires. Only new handshakes see it;
/// established sessions keep their connection.
async fn rotate_certificates(
    endpoint: Arc<Endpoint<Server>>,
    state: std::sync::Weak<WebTransportState>,
    bind: SocketAddr,
    source: CertSource,
) {
    loop {
        let wait = match &source {
            CertSource::SelfSigned { validity, .. } => *validity / 2,
            CertSource::Files { .. } => Duration::from_secs(3600),
        };
        tokio::time::sleep(wait).await;
        let Some(state) = state.upgrade() else { return };
        match load_identity(&source).await {
            Ok((identity, info)) => {
                if let Err(e) = endpoint.reload_config(
                    server_config(ServerConfig::builder().with_bind_address(bind), identity),
                    false,
                ) {
                    tracing::error!(error = %e, "WebTransport certificate reload failed");
                    continue;
                }
                *state.current.write().unwrap_or_else(|p| p.into_inner()) = info;
                tracing::info!("WebTransport certificate rotated");
            }
            Err(e) => tracing::error!(error = %e, "WebTransport certificate renewal failed"),
        }
    }
}

async fn handle_session(ctx: Arc<AppContext>, incoming: IncomingSession) {
    // Counted from the first packet on, like a TCP connection from accept on.
    let Some(_open) = ctx.limits.open_connection(incoming.remote_address().ip()) else {
        incoming.refuse();
        return;
    };
    let read_timeout = Duration::from_secs(ctx.settings.config.read_timeout_secs);
    let request =
        match tokio::time::timeout(read_timeout, std::future::IntoFuture::into_future(incoming))
            .await
        {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebTransport handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("WebTransport handshake timed out");
                return;
            }
        };
    if request.path() == crate::cluster::LINK_PATH {
        // Another node's link: it proves itself with a node token, not an Origin.
        let Some(cluster) = ctx.cluster.clone() else {
            request.not_found().await;
            return;
        };
        if let Ok(connection) = request.accept().await {
            cluster.serve_link(connection).await;
        }
        return;
    }
    if request.path() != PATH {
        request.not_found().await;
        return;
    }
    let caller = Caller {
        ip: request.remote_address().ip(),
        origin: request.origin(),
        host: Some(request.authority()),
    };
    if let Err(refusal) = admission::admit(&ctx, Entry::WebTransport, &caller) {
        match refusal.status {
            StatusCode::FORBIDDEN => request.forbidden().await,
            _ => request.too_many_requests().await,
        }
        return;
    }
    let connection = match request.accept().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "WebTransport accept failed");
            return;
        }
    };
    let stream = tokio::time::timeout(FIRST_STREAM_TIMEOUT, connection.accept_bi()).await;
    let Ok(Ok((send, recv))) = stream else {
        connection.close(VarInt::from_u32(1), b"expected a signaling stream");
        return;
    };
    let max_frame = hard_frame_cap(ctx.settings.config.max_message_size);
    let conn = WtConnection {
        connection,
        send,
        recv,
        buffer: Vec::new(),
        chunk: vec![0u8; READ_CHUNK],
        max_frame,
        strays: 0,
        frame_timeout: read_timeout,
        partial_since: None,
    };
    drive(ctx, conn).await;
}

/// One read's buffer. Signaling messages are mostly well under 2 KB, and a rare large one
/// (an SDP offer) costs a few more reads; at 16 KB this buffer was the largest allocation a
/// signaling session of ours made (heaptrack at 1 × 200: 16.5 KB of ≈ 340 KB per viewer).
const READ_CHUNK: usize = 2 * 1024;
/// What the frame buffer may keep allocated while empty: an SDP offer or a join reply can be
/// tens of KB, and a session that received one once need not hold that for its lifetime.
const IDLE_BUFFER_CAPACITY: usize = 4 * 1024;

/// Frames up to this size are read (and answered with MESSAGE_TOO_LARGE when above
/// MAX_MESSAGE_SIZE, as on WebSocket); a larger length prefix ends the session.
pub fn hard_frame_cap(max_message_size: usize) -> usize {
    max_message_size.saturating_mul(16).max(1 << 20)
}

struct WtConnection {
    connection: Connection,
    send: SendStream,
    recv: RecvStream,
    /// Bytes received but not yet a whole frame. Kept across `recv` calls so a cancelled
    /// read (the driver selects) never loses data.
    buffer: Vec<u8>,
    /// What one `read` fills (see [`READ_CHUNK`]).
    chunk: Vec<u8>,
    max_frame: usize,
    strays: u32,
    /// A started frame must be complete this long after its first byte arrived.
    frame_timeout: Duration,
    partial_since: Option<tokio::time::Instant>,
}

enum Framed {
    Frame(Vec<u8>),
    TooLarge(usize),
    Incomplete,
}

impl WtConnection {
    fn take_frame(&mut self) -> Framed {
        if self.buffer.len() < 4 {
            return Framed::Incomplete;
        }
        let len = u32::from_be_bytes([
            self.buffer[0],
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
        ]) as usize;
        if len > self.max_frame {
            return Framed::TooLarge(len);
        }
        if self.buffer.len() < 4 + len {
            return Framed::Incomplete;
        }
        let frame = self.buffer[4..4 + len].to_vec();
        self.buffer.drain(..4 + len);
        if self.buffer.is_empty() && self.buffer.capacity() > IDLE_BUFFER_CAPACITY {
            self.buffer = Vec::new();
        }
        self.partial_since = None;
        Framed::Frame(frame)
    }

    /// Count something the client should not have sent; true when over budget.
    fn stray(&mut self, what: &str) -> bool {
        self.strays += 1;
        metrics::counter!("sfu_webtransport_refused_total", "what" => what.to_string())
            .increment(1);
        if self.strays > STRAY_BUDGET {
            tracing::warn!(peer = %self.connection.remote_address(), what, "WebTransport client over its stray budget; closing");
            self.connection
                .close(VarInt::from_u32(2), b"only one signaling stream is allowed");
            return true;
        }
        false
    }
}

impl SignalingConnection for WtConnection {
    async fn recv(&mut self) -> Option<Inbound> {
        loop {
            match self.take_frame() {
                Framed::Frame(bytes) => {
                    return Some(match String::from_utf8(bytes) {
                        Ok(text) => Inbound::Text(text),
                        Err(_) => Inbound::Invalid("frame is not valid UTF-8 JSON"),
                    })
                }
                Framed::TooLarge(len) => {
                    tracing::warn!(len, "WebTransport frame over the hard cap; closing");
                    // The same coded error WebSocket sends before its close frame.
                    let reply = OutboundEnvelope::error(
                        ErrorCode::MessageTooLarge,
                        "frame exceeds the hard size cap; the connection is closed",
                        None,
                        None,
                    );
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        self.send(reply.to_json().into()),
                    )
                    .await;
                    self.close("frame too large").await;
                    return None;
                }
                Framed::Incomplete => {}
            }
            if self.buffer.is_empty() {
                self.partial_since = None;
            }
            let frame_deadline = self.partial_since.map(|since| since + self.frame_timeout);
            tokio::select! {
                _ = tokio::time::sleep_until(frame_deadline.unwrap_or_else(tokio::time::Instant::now)), if frame_deadline.is_some() => {
                    tracing::warn!(peer = %self.connection.remote_address(), buffered = self.buffer.len(), "WebTransport frame incomplete past READ_TIMEOUT_SECS; closing");
                    metrics::counter!("sfu_webtransport_refused_total", "what" => "incomplete_frame").increment(1);
                    self.connection.close(VarInt::from_u32(5), b"incomplete frame timed out");
                    return None;
                }
                read = self.recv.read(&mut self.chunk) => match read {
                    Ok(Some(n)) => {
                        self.buffer.extend_from_slice(&self.chunk[..n]);
                        self.partial_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                    _ => return None,
                },
                extra = self.connection.accept_bi() => {
                    let Ok((_, recv)) = extra else { return None };
                    recv.stop(VarInt::from_u32(4));
                    if self.stray("bidi_stream") {
                        return None;
                    }
                }
                // Media: each unidirectional stream carries one track's frames (README
                // "Media over WebTransport"); the session checks it may take them.
                media = self.connection.accept_uni() => {
                    let Ok(recv) = media else { return None };
                    return Some(Inbound::FrameStream(Box::new(recv)));
                }
                datagram = self.connection.receive_datagram() => {
                    if datagram.is_err() || self.stray("datagram") {
                        return None;
                    }
                }
            }
        }
    }

    async fn send(&mut self, text: Arc<str>) -> bool {
        let mut frame = Vec::with_capacity(4 + text.len());
        frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
        frame.extend_from_slice(text.as_bytes());
        self.send.write_all(&frame).await.is_ok()
    }

    fn kind(&self) -> &'static str {
        "webtransport"
    }

    fn frame_session(&self) -> Option<Arc<dyn FrameSession>> {
        Some(Arc::new(WtFrameSession(self.connection.clone())))
    }

    async fn close(&mut self, reason: &'static str) {
        // Closing the connection at once would discard stream data still in flight: finish
        // the stream and give the client a moment to read it first.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if self.send.finish().await.is_ok() {
                self.send.stopped().await;
            }
        })
        .await;
        self.connection
            .close(VarInt::from_u32(6), reason.as_bytes());
    }
}

/// Frames to a WebTransport subscriber go on unidirectional streams of its session.
struct WtFrameSession(Connection);

/// Application error code of a stream the server abandoned (the subscriber was behind).
const STALE_STREAM: u32 = 0x10;

impl FrameSession for WtFrameSession {
    fn open_stream(&self) -> BoxFuture<'static, Option<Box<dyn FrameStreamOut>>> {
        let connection = self.0.clone();
        Box::pin(async move {
            let stream = connection.open_uni().await.ok()?.await.ok()?;
            Some(Box::new(stream) as Box<dyn FrameStreamOut>)
        })
    }

    /// Congestion window over smoothed RTT: what QUIC lets this path carry now.
    fn estimate_bps(&self) -> Option<u64> {
        let stats = self.0.quic_connection().stats();
        let rtt = stats.path.rtt.as_secs_f64().max(0.001);
        Some((stats.path.cwnd as f64 * 8.0 / rtt) as u64)
    }
}

impl FrameStreamOut for SendStream {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.write_all(bytes).await.is_ok() })
    }

    fn reset(&mut self) {
        let _ = SendStream::reset(self, VarInt::from_u32(STALE_STREAM));
    }
}
