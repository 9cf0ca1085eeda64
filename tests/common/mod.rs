//! Test harness: an in-process server, a WebSocket signaling client, and str0m peers on real
//! UDP sockets that publish synthetic Opus + 3-layer VP8 simulcast and record what they receive.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

pub const LAYERS: [&str; 3] = ["q", "h", "f"];

pub async fn start_server() -> sfu::ServerHandle {
    start_server_with(&[]).await
}

/// The HS256 secret every test server uses.
pub const SECRET: &str = "integration-test-secret";

/// The test server, with extra command-line style settings appended (they override).
pub async fn start_server_with(extra: &[&str]) -> sfu::ServerHandle {
    let mut args = vec![
        "sfu",
        "--environment",
        "test",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--rtc-min-port",
        "0",
        "--rtc-listen-ip",
        "127.0.0.1",
        "--workers",
        "2",
        "--jwt-secret",
        SECRET,
        "--log-level",
        "warn",
        "--metrics-port",
        "0",
        "--webtransport-port",
        "0",
        "--resume-grace-secs",
        "1",
    ];
    // Each server its own audit files, so parallel tests never share a SQLite database.
    let dir = scratch_dir();
    let audit_db = format!("--audit-sqlite-path={}", dir.join("audit.db").display());
    let audit_spill = format!(
        "--audit-spill-path={}",
        dir.join("audit-spill.jsonl").display()
    );
    args.push(&audit_db);
    args.push(&audit_spill);
    args.extend_from_slice(extra);
    let config = sfu::config::Config::parse_from(args).expect("test config parses");
    let _ = sfu::telemetry::init_logging(
        &std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()),
        false,
    );
    sfu::start(config.resolve().expect("test config valid"))
        .await
        .expect("server starts")
}

/// A fresh directory under the system temp dir for one server's files.
pub fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A free TCP port on loopback (for spawned server processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `sfu` binary running as its own process, killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary with a clean environment (test defaults + `env`). It binds port 0 itself
/// and the real address is read from its start-up log line, so no port can be raced away.
pub async fn spawn_server_process(env: &[(&str, &str)]) -> ServerProcess {
    use std::io::BufRead;
    let dir = scratch_dir();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sfu"));
    command
        .env_clear()
        .env("NODE_ENV", "test")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("METRICS_PORT", "0")
        .env("WEBTRANSPORT_PORT", "0")
        .env("MEDIASOUP_WORKER_RTC_MIN_PORT", "0")
        .env("RTC_LISTEN_IP", "127.0.0.1")
        .env("SFU_WORKERS", "1")
        .env("DJANGO_JWT_SECRET", SECRET)
        // `sfu=info` for the "sfu listening" line; warnings stay visible.
        .env("LOG_LEVEL", "warn,sfu=info")
        .env("AUDIT_SQLITE_PATH", dir.join("audit.db"))
        .env("AUDIT_SPILL_PATH", dir.join("audit-spill.jsonl"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("sfu binary starts");
    // Logs go to stdout; keep draining both pipes so the server never blocks on them.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            match listening_addr(&line) {
                Some(addr) => {
                    let _ = tx.send(addr);
                }
                // Info lines are noise here; warnings and errors are worth seeing.
                None if !line.contains("INFO") => {
                    eprintln!("[sfu] {line}");
                }
                None => {}
            }
        }
    });
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[sfu] {line}");
        }
    });
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("server process logged its address");
    ServerProcess { child, addr }
}

/// The HTTP address in the "sfu listening" log line (pretty or JSON format).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("sfu listening") {
        return None;
    }
    let after = &line[line.find("http_addr")?..];
    let start = after.find("127.0.0.1:")?;
    let addr: String = after[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}

/// A token signed with [`SECRET`], for servers this process does not hold a handle to.
pub fn token_for(user: &str) -> String {
    sfu::auth::Authenticator::new(Some(SECRET), None)
        .unwrap()
        .issue_for(user, Some(user), 600)
        .unwrap()
}

pub fn token(server: &sfu::ServerHandle, user: &str) -> String {
    server
        .ctx
        .auth
        .issue_for(user, Some(user), 600)
        .expect("HS256 secret configured")
}

// ---------------------------------------------------------------------------------------------
// Signaling client.

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Which signaling transport a client uses; tests run the same body over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    WebTransport,
}

enum Pipe {
    Ws(Ws),
    Wt {
        // Kept alive for the session's lifetime.
        _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
        connection: wtransport::Connection,
        send: wtransport::SendStream,
        recv: wtransport::RecvStream,
        buffer: Vec<u8>,
    },
}

/// A signaling client over WebSocket or WebTransport (4-byte length-prefixed JSON frames).
pub struct WsClient {
    pipe: Pipe,
    next_id: u64,
    /// Highest `seq` seen, for resume.
    pub last_seq: u64,
    /// Notifications received while waiting for a reply.
    pub backlog: Vec<Value>,
}

pub type SignalClient = WsClient;

/// Connect to the server's WebTransport endpoint, trusting the certificate by its hash.
pub async fn connect_wt(server: &sfu::ServerHandle) -> Result<WsClient, String> {
    let state = server.ctx.webtransport.get().expect("WebTransport enabled");
    let hash = state.certificate_hash().expect("self-signed certificate");
    connect_wt_with(state.local_addr.port(), hash).await
}

pub async fn connect_wt_with(port: u16, hash: [u8; 32]) -> Result<WsClient, String> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    let endpoint = wtransport::Endpoint::client(config).map_err(|e| e.to_string())?;
    let connection = endpoint
        .connect(format!("https://127.0.0.1:{port}/wt"))
        .await
        .map_err(|e| e.to_string())?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(WsClient {
        pipe: Pipe::Wt {
            _endpoint: endpoint,
            connection,
            send,
            recv,
            buffer: Vec::new(),
        },
        next_id: 1,
        last_seq: 0,
        backlog: Vec::new(),
    })
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket connects");
        WsClient {
            pipe: Pipe::Ws(ws),
            next_id: 1,
            last_seq: 0,
            backlog: Vec::new(),
        }
    }

    pub async fn connect_with(server: &sfu::ServerHandle, transport: Transport) -> Self {
        match transport {
            Transport::WebSocket => Self::connect(server.http_addr).await,
            Transport::WebTransport => connect_wt(server).await.expect("WebTransport connects"),
        }
    }

    /// Send one message as a frame (WebSocket text, or a length-prefixed WebTransport frame).
    pub async fn send_raw(&mut self, text: &str) {
        match &mut self.pipe {
            Pipe::Ws(ws) => ws
                .send(Message::Text(text.to_string().into()))
                .await
                .expect("send"),
            Pipe::Wt { send, .. } => {
                let mut frame = (text.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(text.as_bytes());
                send.write_all(&frame).await.expect("send");
            }
        }
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

    pub async fn recv(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let text = match &mut self.pipe {
            Pipe::Ws(ws) => loop {
                let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
                match msg.ok()? {
                    Message::Text(t) => break t.to_string(),
                    Message::Close(_) => return None,
                    _ => continue,
                }
            },
            Pipe::Wt { recv, buffer, .. } => loop {
                if buffer.len() >= 4 {
                    let len =
                        u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
                    if buffer.len() >= 4 + len {
                        let text = String::from_utf8(buffer[4..4 + len].to_vec()).expect("UTF-8");
                        buffer.drain(..4 + len);
                        break text;
                    }
                }
                let mut chunk = [0u8; 8192];
                let n = tokio::time::timeout_at(deadline, recv.read(&mut chunk))
                    .await
                    .ok()?
                    .ok()??;
                buffer.extend_from_slice(&chunk[..n]);
            },
        };
        let value: Value = serde_json::from_str(&text).expect("server JSON");
        if let Some(seq) = value["seq"].as_u64() {
            self.last_seq = self.last_seq.max(seq);
        }
        Some(value)
    }

    /// Send a request and wait for the message carrying its requestId (reply or error).
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({ "type": kind, "data": data, "requestId": id }).to_string();
        self.send_raw(&text).await;
        loop {
            let msg = self
                .recv(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no reply to {kind}"));
            if msg["requestId"] == json!(id) {
                return msg;
            }
            self.backlog.push(msg);
        }
    }

    /// Wait for a notification of `kind`, looking at the backlog first.
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

    /// Continue a dropped session on this (new) connection.
    pub async fn resume(&mut self, token: &str, last_seq: u64) -> Value {
        self.last_seq = last_seq;
        self.request("resume", json!({ "token": token, "lastSeq": last_seq }))
            .await
    }
}

pub fn ok<'a>(reply: &'a Value, kind: &str) -> &'a Value {
    assert_eq!(reply["type"], kind, "unexpected reply: {reply}");
    &reply["data"]
}

pub fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["type"], "error", "expected an error, got {reply}");
    assert!(
        reply["error"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {reply}"
    );
    reply["data"]["code"].as_str().expect("error code")
}

// ---------------------------------------------------------------------------------------------
// str0m peer.

/// One RTP packet as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mid: Mid,
    pub seq: u64,
    pub timestamp: u32,
    pub keyframe: bool,
    /// Layer index the synthetic publisher wrote into the payload (255 for audio).
    pub layer: u8,
    pub pt: u8,
}

/// State owned by a peer's task; tests reach it through [`Peer::with`].
pub struct PeerState {
    pub rtc: Rtc,
    source: Option<SyntheticSource>,
    pub received: Vec<Received>,
    pub keyframe_requests: Vec<Option<Rid>>,
    pub connected: bool,
    /// Publisher of synthetic packets shaped like one codec (see [`Peer::publish_codec`]).
    codec_source: Option<CodecSource>,
    /// Every received RTP packet with its payload; filled only for peers made by
    /// [`Peer::spawn_with`] (codec tests look inside payloads).
    pub raw: Vec<RawReceived>,
    record_raw: bool,
}

type Job = Box<dyn FnOnce(&mut PeerState) + Send>;

/// A str0m endpoint on its own UDP socket, driven by a tokio task.
pub struct Peer {
    jobs: mpsc::UnboundedSender<Job>,
}

/// What a publishing peer sends every 20 ms: one VP8 "frame" (a single packet) per layer and
/// one Opus packet. Keyframes only on the first frame and when the SFU asks, so a test can
/// tell that a layer switch waited for one.
struct SyntheticSource {
    audio: Mid,
    video: Mid,
    frame: u64,
    keyframe_due: HashSet<Rid>,
    started: bool,
}

impl SyntheticSource {
    fn write(&mut self, rtc: &mut Rtc) {
        let now = Instant::now();
        let frame = self.frame;
        self.frame += 1;
        let opus = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        let vp8 = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt());
        let (Some(opus), Some(vp8)) = (opus, vp8) else {
            return;
        };
        let mut api = rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(self.audio, None) {
            let payload = vec![0xfc, 0xff, 0xfe, 0x00];
            tx.write_rtp(RtpWrite::new(
                opus,
                SeqNo::from(frame + 1),
                (frame * 960) as u32,
                now,
                payload,
            ));
        }
        for (layer, rid) in LAYERS.iter().enumerate() {
            let rid = Rid::from(*rid);
            let keyframe = !self.started || self.keyframe_due.remove(&rid);
            let pid = (frame % 0x8000) as u16;
            // VP8 payload descriptor: X=1 S=1 PID=0; I=1; 15-bit picture id. Then the VP8
            // payload header whose lowest bit is 0 for a keyframe. The last byte is the layer.
            let payload = vec![
                0x90,
                0x80,
                0x80 | (pid >> 8) as u8,
                (pid & 0xff) as u8,
                if keyframe { 0x00 } else { 0x01 },
                0x00,
                0x00,
                layer as u8,
            ];
            if let Some(tx) = api.stream_tx_by_mid(self.video, Some(rid)) {
                tx.write_rtp(
                    RtpWrite::new(
                        vp8,
                        SeqNo::from(frame + 1),
                        (frame * 1800) as u32,
                        now,
                        payload,
                    )
                    .marker(true)
                    .nackable(true),
                );
            }
        }
        self.started = true;
    }
}

impl Peer {
    pub async fn spawn() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let state = PeerState {
            rtc,
            source: None,
            received: Vec::new(),
            keyframe_requests: Vec::new(),
            connected: false,
            codec_source: None,
            raw: Vec::new(),
            record_raw: false,
        };
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_peer(socket, local, state, rx));
        Peer { jobs }
    }

    /// A peer with its own codec configuration (RTP mode is switched on here), recording every
    /// received payload in [`PeerState::raw`].
    pub async fn spawn_with(config: RtcConfig) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = config.set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let state = PeerState {
            rtc,
            source: None,
            received: Vec::new(),
            keyframe_requests: Vec::new(),
            connected: false,
            codec_source: None,
            raw: Vec::new(),
            record_raw: true,
        };
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_peer(socket, local, state, rx));
        Peer { jobs }
    }

    /// Publish one track of `codec`: Opus audio, or video as 3-layer simulcast (rids
    /// [`LAYERS`]) when `simulcast`, else one layer. Every 20 ms one packet per layer is sent,
    /// shaped like that codec (see [`synthetic_payload`]); keyframes on the first frame and when
    /// the SFU asks. Returns the `publisherAnswer` data.
    pub async fn publish_codec(&self, ws: &mut WsClient, codec: Codec, simulcast: bool) -> Value {
        let (offer, pending, mid) = self
            .with(move |s| {
                let mut api = s.rtc.sdp_api();
                let mid = if codec.is_audio() {
                    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None)
                } else {
                    let sim = simulcast.then(|| {
                        let mut sim = Simulcast::new();
                        for rid in LAYERS {
                            sim.add_send_layer(SimulcastLayer::new(rid));
                        }
                        sim
                    });
                    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim)
                };
                let (offer, pending) = api.apply().expect("offer");
                (offer.to_sdp_string(), pending, mid)
            })
            .await;
        let reply = ws.request("publisherOffer", json!({ "sdp": offer })).await;
        let data = ok(&reply, "publisherAnswer").clone();
        let answer =
            SdpAnswer::from_sdp_string(data["sdp"].as_str().unwrap()).expect("answer parses");
        self.with(move |s| {
            s.rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .expect("answer accepted");
            s.codec_source = Some(CodecSource {
                codec,
                mid,
                rids: if simulcast && !codec.is_audio() {
                    LAYERS.iter().map(|r| Some(Rid::from(*r))).collect()
                } else {
                    vec![None]
                },
                frame: 0,
                keyframe_due: HashSet::new(),
                started: false,
            });
        })
        .await;
        data
    }

    /// Run `f` on the peer's task and return its result.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PeerState) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |state| {
                let _ = tx.send(f(state));
            }))
            .expect("peer alive");
        rx.await.expect("peer job ran")
    }

    /// Publish audio + 3-layer simulcast video: offer → server → answer.
    pub async fn publish(&self, ws: &mut WsClient) -> Value {
        let (offer, pending, mids) = self
            .with(|s| {
                let mut api = s.rtc.sdp_api();
                let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
                let mut sim = Simulcast::new();
                for rid in LAYERS {
                    sim.add_send_layer(SimulcastLayer::new(rid));
                }
                let video =
                    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim));
                let (offer, pending) = api.apply().expect("offer");
                (offer.to_sdp_string(), pending, (audio, video))
            })
            .await;
        let reply = ws.request("publisherOffer", json!({ "sdp": offer })).await;
        let data = ok(&reply, "publisherAnswer").clone();
        let answer =
            SdpAnswer::from_sdp_string(data["sdp"].as_str().unwrap()).expect("answer parses");
        self.with(move |s| {
            s.rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .expect("answer accepted");
            s.source = Some(SyntheticSource {
                audio: mids.0,
                video: mids.1,
                frame: 0,
                keyframe_due: HashSet::new(),
                started: false,
            });
        })
        .await;
        data
    }

    /// Answer one `subscriberOffer` notification.
    pub async fn answer_subscriber_offer(&self, ws: &mut WsClient, offer: &Value) {
        let sdp = offer["data"]["sdp"]
            .as_str()
            .expect("offer sdp")
            .to_string();
        let answer = self
            .with(move |s| {
                let offer = SdpOffer::from_sdp_string(&sdp).expect("offer parses");
                s.rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .expect("offer accepted")
                    .to_sdp_string()
            })
            .await;
        let reply = ws
            .request("subscriberAnswer", json!({ "sdp": answer }))
            .await;
        ok(&reply, "subscriberAnswerResponse");
    }

    pub async fn received(&self) -> Vec<Received> {
        self.with(|s| s.received.clone()).await
    }

    pub async fn connected(&self) -> bool {
        self.with(|s| s.connected).await
    }
}

/// One received RTP packet with its payload (peers made by [`Peer::spawn_with`]).
#[derive(Debug, Clone)]
pub struct RawReceived {
    pub mid: Mid,
    pub seq: u64,
    pub timestamp: u32,
    pub pt: u8,
    pub payload: Vec<u8>,
}

/// Synthetic publisher of one codec (see [`Peer::publish_codec`]).
struct CodecSource {
    codec: Codec,
    mid: Mid,
    /// One entry per layer, lowest first; `None` for a single unlayered stream.
    rids: Vec<Option<Rid>>,
    frame: u64,
    keyframe_due: HashSet<Option<Rid>>,
    started: bool,
}

impl CodecSource {
    fn write(&mut self, rtc: &mut Rtc) {
        let now = Instant::now();
        let frame = self.frame;
        self.frame += 1;
        let Some(pt) = rtc
            .codec_config()
            .find(|p| p.spec().codec == self.codec)
            .map(|p| p.pt())
        else {
            return;
        };
        let audio = self.codec.is_audio();
        let mut api = rtc.direct_api();
        for (layer, rid) in self.rids.iter().enumerate() {
            let keyframe = !self.started || self.keyframe_due.remove(rid);
            let payload = synthetic_payload(self.codec, frame, layer as u8, keyframe);
            let (ts, nackable) = if audio {
                (frame * 960, false)
            } else {
                (frame * 1800, true)
            };
            if let Some(tx) = api.stream_tx_by_mid(self.mid, *rid) {
                tx.write_rtp(
                    RtpWrite::new(pt, SeqNo::from(frame + 1), ts as u32, now, payload)
                        .marker(!audio)
                        .nackable(nackable),
                );
            }
        }
        self.started = true;
    }
}

/// Per-layer picture id (VP8/VP9) of a synthetic frame: each layer has its own sequence, as a
/// real simulcast encoder's layers do, so the SFU must rewrite it on a switch.
pub fn synthetic_picture_id(frame: u64, layer: u8) -> u16 {
    ((frame + 1000 * layer as u64) % 0x8000) as u16
}

/// Per-layer TL0PICIDX (VP9) of a synthetic frame.
pub fn synthetic_tl0(frame: u64, layer: u8) -> u8 {
    (frame + 50 * layer as u64) as u8
}

/// One packet that is a whole frame, shaped like `codec`'s RTP payload format so that the SFU's
/// keyframe detection and id rewriting see what a browser would send. The last byte is always
/// the layer index.
///
/// - Opus: a TOC byte and a few bytes.
/// - VP8: descriptor X=1 S=1 with a 15-bit picture id, then the keyframe bit (0 = key).
/// - VP9: descriptor I|L|B|E (+P for a delta frame), 15-bit picture id, layer byte (TID/SID 0),
///   TL0PICIDX, then an uncompressed-header byte (frame_type 0 = key).
/// - H264: key = STAP-A holding SPS, PPS and an IDR slice; delta = a single non-IDR slice.
/// - AV1: aggregation header W=1 with N=1 and a sequence-header OBU for a key, N=0 and an
///   OBU_FRAME for a delta frame.
pub fn synthetic_payload(codec: Codec, frame: u64, layer: u8, keyframe: bool) -> Vec<u8> {
    let pid = synthetic_picture_id(frame, layer);
    match codec {
        Codec::Vp8 => vec![
            0x90,
            0x80,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            if keyframe { 0x00 } else { 0x01 },
            0x00,
            0x00,
            layer,
        ],
        Codec::Vp9 => vec![
            if keyframe { 0xac } else { 0xec },
            0x80 | (pid >> 8) as u8,
            pid as u8,
            0x00,
            synthetic_tl0(frame, layer),
            if keyframe { 0x80 } else { 0x84 },
            layer,
        ],
        Codec::H264 if keyframe => vec![
            0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce, 0x00, 0x03, 0x65, 0x88, layer,
        ],
        Codec::H264 => vec![0x41, 0x9a, layer],
        Codec::Av1 if keyframe => vec![0x18, 0x08, 0x00, layer],
        Codec::Av1 => vec![0x10, 0x30, 0x00, layer],
        _ => vec![0xfc, 0xff, 0xfe, layer],
    }
}

/// Whether a payload made by [`synthetic_payload`] is a keyframe, read the way a receiver of
/// that codec would (independently of the SFU's detectors).
pub fn synthetic_is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => payload.len() > 4 && payload[4] & 0x01 == 0,
        Codec::Vp9 => payload.first().is_some_and(|b| b & 0x40 == 0),
        Codec::H264 => payload.first().is_some_and(|b| b & 0x1f == 24),
        Codec::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
        _ => false,
    }
}

fn record(state: &mut PeerState, event: Event) {
    match event {
        Event::Connected => state.connected = true,
        Event::KeyframeRequest(req) => {
            state.keyframe_requests.push(req.rid);
            if let (Some(source), Some(rid)) = (state.source.as_mut(), req.rid) {
                source.keyframe_due.insert(rid);
            }
            if let Some(source) = state.codec_source.as_mut() {
                source.keyframe_due.insert(req.rid);
            }
        }
        Event::RtpPacket(packet) => {
            let mid = state
                .rtc
                .direct_api()
                .stream_rx(&packet.header.ssrc)
                .map(|s| s.mid());
            let Some(mid) = mid else { return };
            if state.record_raw {
                state.raw.push(RawReceived {
                    mid,
                    seq: *packet.seq_no,
                    timestamp: packet.header.timestamp,
                    pt: *packet.header.payload_type,
                    payload: packet.payload.to_vec(),
                });
            }
            let payload = &packet.payload;
            let video = payload.len() == 8 && payload[0] == 0x90;
            state.received.push(Received {
                mid,
                seq: *packet.seq_no,
                timestamp: packet.header.timestamp,
                keyframe: video && payload[4] & 1 == 0,
                layer: if video { payload[7] } else { 255 },
                pt: *packet.header.payload_type,
            });
        }
        _ => {}
    }
}

async fn run_peer(
    socket: UdpSocket,
    local: SocketAddr,
    mut state: PeerState,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut buf = vec![0u8; 2000];
    let mut media = tokio::time::interval(Duration::from_millis(20));
    loop {
        // Drain str0m until it asks to be woken later.
        let deadline = loop {
            match state.rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => record(&mut state, e),
                Err(_) => return,
            }
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job(&mut state),
                None => return,
            },
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r {
                    if let Ok(rx) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                        let _ = state.rtc.handle_input(Input::Receive(Instant::now(), rx));
                    }
                }
            }
            _ = media.tick() => {
                if let Some(source) = state.source.as_mut() {
                    if state.connected {
                        source.write(&mut state.rtc);
                    }
                }
                if let Some(source) = state.codec_source.as_mut() {
                    if state.connected {
                        source.write(&mut state.rtc);
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {
                let _ = state.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The machine's PostgreSQL (trust auth, database `test`), for audit tests that stop it.

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL installed")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .expect("a PostgreSQL version")
}

/// `pg_ctlcluster … <action>`; exit code 2 means it was already in that state.
pub fn pg_ctl(action: &str) -> bool {
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &pg_version(), "main", action])
        .status()
        .is_ok_and(|status| status.success() || status.code() == Some(2))
}

/// Restarts PostgreSQL when dropped, so a failing outage test does not leave it down.
pub struct RestartPostgres;

impl Drop for RestartPostgres {
    fn drop(&mut self) {
        // No assertion here: this may run while a failed test unwinds.
        if !pg_ctl("start") {
            eprintln!("could not restart PostgreSQL (pg_ctlcluster start)");
        }
    }
}
