//! Graceful shutdown of the real binary: SIGTERM → clients get `serverShuttingDown`, /readyz
//! turns 503, new sessions are refused, and the process exits 0 once clients leave or
//! DRAIN_TIMEOUT passes. A second signal exits at once.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

type Server = ServerProcess;

async fn spawn(drain_timeout_secs: u64) -> Server {
    let timeout = drain_timeout_secs.to_string();
    spawn_server_process(&[("NODE_ENV", "production"), ("DRAIN_TIMEOUT", &timeout)]).await
}

fn signal(server: &Server, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.get(9..12)?.parse().ok()
}

async fn joined_client(addr: SocketAddr, user: &str, room: &str) -> WsClient {
    let token = token_for(user);
    let mut ws = WsClient::connect(addr).await;
    ws.authenticate(&token).await;
    let _ = ws
        .request("createRoom", json!({ "name": room, "roomId": room }))
        .await;
    ok(
        &ws.request("joinRoom", json!({ "roomId": room, "displayName": user }))
            .await,
        "joinRoomResponse",
    );
    ws
}

async fn wait_exit(server: &mut Server, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero_when_clients_leave() {
    let mut server = spawn(20).await;
    assert_eq!(http_status(server.addr, "/readyz").await, Some(200));
    let mut client = joined_client(server.addr, "alice", "drain").await;

    signal(&server, "-TERM");
    let notice = client
        .notification("serverShuttingDown", Duration::from_secs(5))
        .await;
    assert_eq!(notice["data"]["deadlineMs"], 20_000);
    assert!(notice["data"]["reconnectAfterMs"].is_number());
    assert_eq!(http_status(server.addr, "/readyz").await, Some(503));
    assert_eq!(http_status(server.addr, "/healthz").await, Some(200));
    // No new sessions while draining.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await;
    assert!(refused.is_err(), "upgrade must be refused while draining");
    let reply = client
        .request("createRoom", json!({ "name": "late", "roomId": "late" }))
        .await;
    assert_eq!(error_code(&reply), "SERVER_SHUTTING_DOWN");

    // The client leaves: the process exits 0 well before the 20 s deadline.
    let started = Instant::now();
    drop(client);
    let status = wait_exit(&mut server, Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_the_wait_and_second_signal_is_immediate() {
    // A client that never leaves: exit 0 once DRAIN_TIMEOUT (2 s) has passed.
    let mut server = spawn(2).await;
    let _stubborn = joined_client(server.addr, "bob", "stay").await;
    let started = Instant::now();
    signal(&server, "-TERM");
    let status = wait_exit(&mut server, Duration::from_secs(8)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() >= Duration::from_millis(1900));

    // Second signal during a long drain: out at once.
    let mut server = spawn(60).await;
    let _stubborn = joined_client(server.addr, "carol", "stay2").await;
    signal(&server, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    signal(&server, "-INT");
    let status = wait_exit(&mut server, Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(3));
}
