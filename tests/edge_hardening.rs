//! The edge against idle, slow and greedy clients and loose checks (issue 12, items 4, 5, 7,
//! 12): the authentication deadline, HTTP header and WebTransport frame timeouts, the
//! per-client open-connection cap, `/readyz` with Redis down, the exact Origin check,
//! room-admin scope on WHIP/WHEP sessions, and limit trips audited once per window.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use str0m::media::{Direction, MediaKind};
use str0m::RtcConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Read until the peer closes (or `within` passes); the bytes read and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

async fn get_status(addr: SocketAddr, path: &str) -> u16 {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_closed_at_the_auth_deadline() {
    let server = start_server_with(&["--auth-timeout-secs", "1"]).await;
    for transport in [Transport::WebSocket, Transport::WebTransport] {
        let mut idle = WsClient::connect_with(&server, transport).await;
        let mut authed = WsClient::connect_with(&server, transport).await;
        authed.authenticate(&token(&server, "alice")).await;
        let started = Instant::now();
        let notice = idle
            .recv(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{transport:?}: no error before the close"));
        assert_eq!(error_code(&notice), "NOT_AUTHENTICATED", "{notice}");
        assert!(started.elapsed() < Duration::from_secs(3), "{transport:?}");
        assert!(
            idle.recv(Duration::from_secs(3)).await.is_none(),
            "{transport:?}: still open after the deadline"
        );
        // An authenticated connection is not on the deadline.
        tokio::time::sleep(Duration::from_millis(500)).await;
        ok(&authed.request("ping", json!({})).await, "pong");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_http_requests_and_wt_frames_time_out() {
    let server = start_server_with(&["--read-timeout-secs", "1"]).await;
    // Headers that never finish: closed after READ_TIMEOUT, never answered 200.
    let mut slow = TcpStream::connect(server.http_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a half-sent request held its connection");
    assert!(!answer.contains(" 200 "), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // A connection that sends nothing is closed too.
    let mut silent = TcpStream::connect(server.http_addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(5))
            .await
            .1
    );
    // A whole request on the same kind of connection is answered.
    assert_eq!(get_status(server.http_addr, "/healthz").await, 200);

    // A WebTransport frame that starts and never ends: the session is closed.
    let mut client = connect_wt(&server).await.unwrap();
    client.authenticate(&token(&server, "bob")).await;
    client.send_bytes_wt(&[0, 0, 0, 40, b'{']).await;
    let closed =
        tokio::time::timeout(Duration::from_secs(5), client.wt_connection().closed()).await;
    assert!(
        closed.is_ok(),
        "a partial WebTransport frame held the session"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_per_client_are_capped() {
    let server = start_server_with(&["--max-connections-per-ip", "3"]).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(server.http_addr).await.unwrap());
    }
    let ws = WsClient::connect(server.http_addr).await;
    // Two half-open sockets and a WebSocket: the fourth connection is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = TcpStream::connect(server.http_addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut fourth, Duration::from_secs(3)).await;
    assert!(closed && answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("RATE_LIMITED"), "{answer}");
    // Closing the WebSocket frees its slot.
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_status(server.http_addr, "/healthz").await != 200 {
        assert!(Instant::now() < deadline, "slot not freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_redis_is_unreachable() {
    let closed_port = free_port();
    let url = format!("redis://127.0.0.1:{closed_port}");
    let server = start_server_with(&["--redis-url", &url]).await;
    assert_eq!(get_status(server.http_addr, "/healthz").await, 200);
    assert_eq!(get_status(server.http_addr, "/readyz").await, 503);
    let health: Value = reqwest::get(format!("http://{}/health", server.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health["dependencies"]["roomStore"]["status"], "unavailable",
        "{health}"
    );
    server.stop().await;

    let server = start_server_with(&["--redis-url", "redis://127.0.0.1:6379"]).await;
    assert_eq!(get_status(server.http_addr, "/readyz").await, 200);
    server.stop().await;
}

/// The status of a WebSocket upgrade sent with `origin`.
async fn upgrade_status(addr: SocketAddr, origin: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origin_must_name_this_host_exactly() {
    let server = start_server_with(&["--allowed-origins", "https://app.example"]).await;
    let addr = server.http_addr;
    assert_eq!(upgrade_status(addr, &format!("http://{addr}")).await, 101);
    assert_eq!(upgrade_status(addr, "https://app.example").await, 101);
    for evil in [
        format!("http://evil.example//{addr}"),
        format!("http://evil.example/{addr}"),
        format!("http://{addr}.evil.example"),
        format!("http://{}:1", addr.ip()),
        "null".to_string(),
    ] {
        assert_eq!(upgrade_status(addr, &evil).await, 403, "{evil}");
    }
    server.stop().await;
}

fn offer(direction: Direction) -> String {
    let mut rtc = RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, direction, None, None, None);
    api.apply().expect("offer").0.to_sdp_string()
}

/// A token for `user` with explicit grants.
fn granted(user: &str, rooms: &[&str], room_admin: bool) -> String {
    let claims = json!({
        "user_id": user,
        "exp": sfu::auth::unix_now() + 600,
        "grants": {
            "rooms": rooms,
            "createRoom": true,
            "publish": ["audio", "video"],
            "subscribe": true,
            "roomAdmin": room_admin,
        },
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn start_session(base: &str, path: &str, token: &str, direction: Direction) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(offer(direction))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "{path}");
    response.headers()["location"].to_str().unwrap().to_string()
}

async fn delete(base: &str, path: &str, token: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .delete(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_admin_reaches_only_its_rooms_and_sessions_only_their_own_path() {
    let server = start_server().await;
    let base = format!("http://{}", server.http_addr);
    let owner = granted("owner", &["*"], false);
    let whip = start_session(&base, "/whip/roomC", &owner, Direction::SendOnly).await;
    let whep = start_session(&base, "/whep/roomC", &owner, Direction::RecvOnly).await;
    let session = whip.rsplit('/').next().unwrap();
    let viewer = whep.rsplit('/').next().unwrap();

    // Admin of roomA only: no rights in roomC.
    let other_admin = granted("admin-a", &["roomA"], true);
    let (status, body) = delete(&base, &whip, &other_admin).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("ADMIN_REQUIRED")),
        "{body}"
    );
    // A WHIP session is not reachable under /whep, nor a WHEP one under /whip.
    let (status, body) = delete(&base, &format!("/whep/roomC/{session}"), &owner).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("PARTICIPANT_NOT_FOUND")),
        "{body}"
    );
    let (status, _) = delete(&base, &format!("/whip/roomC/{viewer}"), &owner).await;
    assert_eq!(status, 404);
    assert_eq!(
        server.ctx.rooms.http_sessions().len(),
        2,
        "nothing ended so far"
    );

    // An admin of roomC may end the WHEP session; the owner ends the WHIP one.
    let room_admin = granted("admin-c", &["roomC"], true);
    assert_eq!(delete(&base, &whep, &room_admin).await.0, 200);
    assert_eq!(delete(&base, &whip, &owner).await.0, 200);
    assert!(server.ctx.rooms.http_sessions().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_limit_trips_writes_one_audit_row_per_window() {
    let server = start_server_with(&["--rate-limit-http-per-minute", "2"]).await;
    let mut limited = 0;
    for _ in 0..30 {
        if get_status(server.http_addr, "/status").await == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 25, "only {limited} requests limited");
    assert!(server.ctx.audit.flush(Duration::from_secs(5)).await);
    let events = server.ctx.audit.query(None, 1000).await.unwrap();
    let trips: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .filter(|e| e.contains("limit_tripped"))
        .collect();
    assert_eq!(trips.len(), 1, "{trips:?}");
    // Once the window is over, one summary row carries the count of all its trips.
    tokio::time::sleep(sfu::limits::TRIP_WINDOW + Duration::from_millis(200)).await;
    server.ctx.limits.prune();
    assert!(server.ctx.audit.flush(Duration::from_secs(5)).await);
    let events = server.ctx.audit.query(None, 1000).await.unwrap();
    let trips: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .filter(|e| e.to_string().contains("limit_tripped"))
        .collect();
    assert_eq!(trips.len(), 2, "{trips:?}");
    assert!(
        trips
            .iter()
            .any(|e| e.to_string().contains(&format!("\"count\":{limited}"))),
        "no summary with count {limited}: {trips:?}"
    );
    server.stop().await;
}
