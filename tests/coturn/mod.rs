//! coturn for the TURN tests: Debian `coturn` on loopback with `use-auth-secret`, killed on
//! drop, and a hand-made TURN Allocate (RFC 5766 §6, long-term credentials RFC 5389 §10.2).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use tokio::net::UdpSocket;

pub const TURN_SECRET: &str = "turn-test-secret-0123456789";
pub const REALM: &str = "sfu.test";

/// coturn on 127.0.0.1 with a free port, killed (and reaped) when dropped.
pub struct Coturn {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// coturn on a fresh port, answering STUN. A port picked free can be taken again before
    /// coturn binds it (parallel tests bind ephemeral ports), so a silent start is retried.
    pub async fn start() -> Coturn {
        for _ in 0..5 {
            let turn = Coturn::spawn();
            if turn.answers_binding().await {
                return turn;
            }
        }
        panic!("coturn did not come up on 5 ports");
    }

    fn spawn() -> Coturn {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = crate::common::scratch_dir();
        let log = dir.join("turn.log");
        let child = Command::new("turnserver")
            .args([
                "-n",
                "--use-auth-secret",
                &format!("--static-auth-secret={TURN_SECRET}"),
                &format!("--realm={REALM}"),
                &format!("--listening-port={port}"),
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--allow-loopback-peers",
                // UDP only: the test allocates over UDP, and no TCP port can collide.
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--simple-log",
                &format!("--log-file={}", log.display()),
                &format!("--pidfile={}", dir.join("turn.pid").display()),
                &format!("--userdb={}", dir.join("turndb").display()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver (Debian coturn; tests/run.sh installs it) starts");
        Coturn {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    /// A STUN Binding request (no auth needed) gets its success response within 3 s.
    async fn answers_binding(&self) -> bool {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let request = Message::new(BINDING);
        let mut buf = vec![0u8; 1500];
        for _ in 0..30 {
            socket.send_to(&request.0, self.addr).await.unwrap();
            let reply =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await;
            if let Ok(Ok((n, _))) = reply {
                if n >= 20
                    && buf[0..2] == BINDING_OK.to_be_bytes()
                    && buf[8..20] == request.0[8..20]
                {
                    return true;
                }
            }
        }
        false
    }

    pub fn url(&self) -> String {
        format!("turn:{}?transport=udp", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

const BINDING: u16 = 0x0001;
const BINDING_OK: u16 = 0x0101;
const ALLOCATE: u16 = 0x0003;
const ALLOCATE_OK: u16 = 0x0103;
const ALLOCATE_ERR: u16 = 0x0113;
const MAGIC: u32 = 0x2112_A442;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR: u16 = 0x0009;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_XOR_RELAYED: u16 = 0x0016;
const ATTR_TRANSPORT: u16 = 0x0019;

/// A STUN message being built: header, then attributes padded to 4 bytes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16) -> Message {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&rand_id());
        Message(b)
    }

    fn attr(mut self, kind: u16, value: &[u8]) -> Message {
        self.0.extend_from_slice(&kind.to_be_bytes());
        self.0
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().div_ceil(4) * 4, 0);
        let len = (self.0.len() - 20) as u16;
        self.0[2..4].copy_from_slice(&len.to_be_bytes());
        self
    }

    /// MESSAGE-INTEGRITY: HMAC-SHA1 keyed with MD5(username:realm:password) over the
    /// message whose length already counts the integrity attribute (RFC 5389 §15.4).
    fn integrity(mut self, key: &[u8]) -> Message {
        let len = (self.0.len() - 20 + 24) as u16;
        self.0[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
        mac.update(&self.0);
        let tag = mac.finalize().into_bytes();
        self.attr(ATTR_INTEGRITY, &tag)
    }
}

fn rand_id() -> [u8; 12] {
    let mut id = [0u8; 12];
    id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
    id
}

/// A parsed response: its type and attributes.
struct Response {
    kind: u16,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Response {
    fn parse(b: &[u8]) -> Response {
        assert!(b.len() >= 20, "short STUN message");
        let kind = u16::from_be_bytes([b[0], b[1]]);
        let mut attrs = Vec::new();
        let mut at = 20;
        while at + 4 <= b.len() {
            let t = u16::from_be_bytes([b[at], b[at + 1]]);
            let l = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
            let value = b[at + 4..(at + 4 + l).min(b.len())].to_vec();
            attrs.push((t, value));
            at += 4 + l.div_ceil(4) * 4;
        }
        Response { kind, attrs }
    }

    fn get(&self, kind: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(t, _)| *t == kind)
            .map(|(_, v)| v.as_slice())
    }

    /// ERROR-CODE as class * 100 + number.
    fn error(&self) -> Option<u16> {
        self.get(ATTR_ERROR)
            .map(|v| (v[2] & 7) as u16 * 100 + v[3] as u16)
    }
}

async fn exchange(socket: &UdpSocket, server: SocketAddr, m: &Message) -> Response {
    let mut buf = vec![0u8; 2048];
    // Retries cover coturn still starting (and a lost datagram); each waits 300 ms.
    for _ in 0..20 {
        socket.send_to(&m.0, server).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
        {
            return Response::parse(&buf[..n]);
        }
    }
    panic!("no answer from coturn at {server}");
}

/// Allocate a UDP relay with long-term credentials: the unauthenticated request draws 401
/// with REALM and NONCE, the signed one succeeds (XOR-RELAYED-ADDRESS) or fails with a code.
pub async fn allocate(server: SocketAddr, username: &str, password: &str) -> Result<(), u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let transport = [17u8, 0, 0, 0];
    let first = exchange(
        &socket,
        server,
        &Message::new(ALLOCATE).attr(ATTR_TRANSPORT, &transport),
    )
    .await;
    assert_eq!(
        first.kind, ALLOCATE_ERR,
        "unauthenticated Allocate is challenged"
    );
    assert_eq!(first.error(), Some(401));
    let realm = first.get(ATTR_REALM).expect("401 carries REALM").to_vec();
    let nonce = first.get(ATTR_NONCE).expect("401 carries NONCE").to_vec();
    assert_eq!(realm, REALM.as_bytes());

    let mut md5 = Md5::new();
    md5.update(format!("{username}:{REALM}:{password}").as_bytes());
    let key = md5.finalize();
    let signed = Message::new(ALLOCATE)
        .attr(ATTR_TRANSPORT, &transport)
        .attr(ATTR_USERNAME, username.as_bytes())
        .attr(ATTR_REALM, &realm)
        .attr(ATTR_NONCE, &nonce)
        .integrity(&key);
    let reply = exchange(&socket, server, &signed).await;
    match reply.kind {
        ALLOCATE_OK => {
            assert!(
                reply.get(ATTR_XOR_RELAYED).is_some(),
                "success carries a relayed address"
            );
            Ok(())
        }
        ALLOCATE_ERR => Err(reply.error().unwrap_or(0)),
        other => panic!("unexpected STUN type {other:#06x}"),
    }
}
