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

/// Both PostgreSQL tests take this: the outage one stops the database under everyone else.
static PG_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const EXPECTED: [&str; 14] = [
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
];

async fn scripted_session(server: &sfu::ServerHandle, room: &str) {
    scripted_session_with_pause(server, room, || async {}).await;
}

/// The session, with `pause` run after the publisher is up and before the rest happens.
async fn scripted_session_with_pause<F, Fut>(server: &sfu::ServerHandle, room: &str, pause: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
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
    pause().await;
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
    assert_rows(server, &room).await;
}

/// `GET /audit` for `room` returns exactly the scripted session's rows, in order.
async fn assert_rows(server: &sfu::ServerHandle, room: &str) {
    let room = room.to_string();

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
    assert_eq!(kinds, EXPECTED);
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
    let _pg = PG_LOCK.lock().await;
    let server =
        start_server_with(&["--database-url=postgres://postgres@127.0.0.1:5432/test"]).await;
    assert!(server.ctx.audit.backend().describe().contains("postgres"));
    assert_trail(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_during_a_session_loses_and_duplicates_nothing() {
    let _pg = PG_LOCK.lock().await;
    let server = start_server_with(&[&format!("--database-url={PG_URL}")]).await;
    let room = format!("outage-{}", uuid::Uuid::new_v4().simple());
    let _restart = RestartPostgres;
    // Half the session with the database up, the rest while it is down.
    scripted_session_with_pause(&server, &room, || async {
        assert!(server.ctx.audit.flush(Duration::from_secs(20)).await);
        assert!(
            tokio::task::spawn_blocking(|| pg_ctl("stop"))
                .await
                .unwrap(),
            "PostgreSQL stopped"
        );
    })
    .await;
    // Signaling did not wait for the database; the events are queued or spilled.
    assert!(
        !server.ctx.audit.flush(Duration::from_secs(1)).await,
        "cannot be written yet"
    );
    assert!(
        tokio::task::spawn_blocking(|| pg_ctl("start"))
            .await
            .unwrap(),
        "PostgreSQL started"
    );
    assert!(
        server.ctx.audit.flush(Duration::from_secs(30)).await,
        "written after the outage"
    );
    assert_rows(&server, &room).await;
    // Directly in the database: every event exactly once.
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(PG_URL).await.unwrap();
    let row =
        sqlx::query("SELECT count(*), count(DISTINCT id) FROM audit_events WHERE room_id = $1")
            .bind(&room)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (rows, distinct),
        (EXPECTED.len() as i64, EXPECTED.len() as i64)
    );
    server.stop().await;
}
