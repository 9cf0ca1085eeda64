//! The server's audit trail, end to end: a scripted session produces exactly the expected rows,
//! read back through `GET /audit` by a room admin — against the embedded SQLite default and
//! against the machine's PostgreSQL.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sfu::auth::{unix_now, Claims, Grants};

async fn get_audit(server: &sfu::ServerHandle, room: &str, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let request = format!(
        "GET /audit?room={room}&limit=100 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The body may be chunked; the JSON object is between the first '{' and the last '}'.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

fn admin_token(server: &sfu::ServerHandle, room: &str) -> String {
    server
        .ctx
        .auth
        .issue(&Claims {
            user_id: json!("auditor"),
            exp: unix_now() + 600,
            grants: Some(Grants {
                rooms: vec![room.to_string()],
                room_admin: true,
                ..Grants::default_for_role(None)
            }),
            ..Default::default()
        })
        .unwrap()
}

async fn scripted_session(server: &sfu::ServerHandle, room: &str) {
    let mut a = WsClient::connect(server.http_addr).await;
    a.authenticate(&token(server, "alice")).await;
    ok(
        &a.request("createRoom", json!({ "name": "Audited", "roomId": room }))
            .await,
        "createRoomResponse",
    );
    ok(
        &a.request("joinRoom", json!({ "roomId": room, "displayName": "A" }))
            .await,
        "joinRoomResponse",
    );
    let publisher = Peer::spawn().await;
    publisher.publish(&mut a).await;
    let mut b = WsClient::connect(server.http_addr).await;
    b.authenticate(&token(server, "bob")).await;
    ok(
        &b.request("joinRoom", json!({ "roomId": room, "displayName": "B" }))
            .await,
        "joinRoomResponse",
    );
    ok(
        &b.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
    ok(
        &a.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
}

async fn assert_trail(server: &sfu::ServerHandle) {
    let room = format!("audit-{}", uuid::Uuid::new_v4().simple());
    scripted_session(server, &room).await;
    assert!(
        server.ctx.audit.flush(Duration::from_secs(20)).await,
        "audit flushed"
    );

    // Not for everyone.
    let (status, _) = get_audit(server, &room, &token(server, "nobody")).await;
    assert_eq!(status, 403);
    let (status, body) = get_audit(server, &room, &admin_token(server, &room)).await;
    assert_eq!(status, 200, "{body}");
    let mut kinds: Vec<String> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.reverse(); // newest first on the wire
    assert_eq!(
        kinds,
        [
            "room_created",
            "participant_joined",
            "producer_created",
            "producer_created",
            "participant_joined",
            "consumer_created",
            "consumer_created",
            "consumer_closed",
            "consumer_closed",
            "participant_left",
            "producer_closed",
            "producer_closed",
            "participant_left",
            "room_closed",
        ]
    );
    let events = body["events"].as_array().unwrap();
    let left = events
        .iter()
        .find(|e| e["kind"] == "participant_left")
        .unwrap();
    assert!(left["detail"]["duration_ms"].is_u64(), "{left}");
    assert!(events
        .iter()
        .all(|e| e["room_id"] == room.as_str() || e["roomId"] == room.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_audited_in_embedded_sqlite() {
    let server = start_server().await;
    assert!(server.ctx.audit.backend().describe().contains("sqlite"));
    assert_trail(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_session_audited_in_postgres() {
    let server =
        start_server_with(&["--database-url=postgres://postgres@127.0.0.1:5432/test"]).await;
    assert!(server.ctx.audit.backend().describe().contains("postgres"));
    assert_trail(&server).await;
    server.stop().await;
}
