//! Defects an adversarial pass found (issue 12), each reproduced against a real server:
//! unbounded echoes, replies without their requestId, rooms nobody joins, room-id grants on
//! create, and `roomId` on every room request.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A token with exactly these grants (raw claims, as a third-party issuer would write them).
fn token_with_grants(user: &str, grants: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "user_id": user, "exp": exp, "grants": grants }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn client(server: &sfu::ServerHandle, token: &str) -> WsClient {
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(token).await;
    ws
}

async fn create(ws: &mut WsClient, room_id: Option<&str>) -> Value {
    let mut data = json!({ "name": "hardening" });
    if let Some(id) = room_id {
        data["roomId"] = json!(id);
    }
    ws.request("createRoom", data).await
}

#[tokio::test]
async fn unauthenticated_garbage_is_answered_small_and_with_its_request_id() {
    let server = start_server_with(&["--max-message-size", "70000"]).await;
    let mut ws = WsClient::connect(server.http_addr).await;
    let long_type = "x".repeat(65_500);
    for n in 0..20 {
        ws.send_raw(&json!({ "type": long_type, "requestId": n }).to_string())
            .await;
        let reply = ws.recv(Duration::from_secs(5)).await.expect("a reply");
        assert_eq!(error_code(&reply), "UNKNOWN_TYPE");
        assert_eq!(reply["requestId"], json!(n));
        let size = reply.to_string().len();
        assert!(size < 1024, "reply of {size} bytes echoes the input");
    }
    ws.send_raw(r#"{"type":7,"requestId":5}"#).await;
    let reply = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "INVALID_MESSAGE");
    assert_eq!(reply["requestId"], json!(5));

    ws.send_raw(r#"{"type":"launch","requestId":null}"#).await;
    let reply = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "UNKNOWN_TYPE");
    assert!(
        reply.as_object().unwrap().contains_key("requestId"),
        "requestId null is echoed: {reply}"
    );

    let oversized =
        json!({ "requestId": "big", "type": "ping", "data": { "pad": "y".repeat(80_000) } });
    ws.send_raw(&oversized.to_string()).await;
    let reply = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "MESSAGE_TOO_LARGE");
    assert_eq!(reply["requestId"], json!("big"));
    server.stop().await;
}

#[tokio::test]
async fn rooms_nobody_joins_are_closed_after_the_empty_timeout() {
    let server = start_server_with(&["--empty-room-timeout-secs", "1"]).await;
    let mut ws = client(&server, &token(&server, "creator")).await;
    ok(
        &create(&mut ws, Some("idle-room")).await,
        "createRoomResponse",
    );
    ok(
        &create(&mut ws, Some("used-room")).await,
        "createRoomResponse",
    );
    ok(
        &ws.request(
            "joinRoom",
            json!({ "roomId": "used-room", "displayName": "stays" }),
        )
        .await,
        "joinRoomResponse",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !server.ctx.rooms.room_exists("idle-room"),
        "idle room closed"
    );
    assert!(
        server.ctx.rooms.room_exists("used-room"),
        "occupied room kept"
    );
    let mut other = client(&server, &token(&server, "late")).await;
    let reply = other
        .request(
            "joinRoom",
            json!({ "roomId": "idle-room", "displayName": "late" }),
        )
        .await;
    assert_eq!(error_code(&reply), "ROOM_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn one_user_cannot_exhaust_the_rooms_of_a_node() {
    let server = start_server_with(&["--max-rooms-per-user", "3"]).await;
    let mut hog = client(&server, &token(&server, "hog")).await;
    for _ in 0..3 {
        ok(&create(&mut hog, None).await, "createRoomResponse");
    }
    let refused = create(&mut hog, None).await;
    assert_eq!(error_code(&refused), "TOO_MANY_ROOMS");
    let mut other = client(&server, &token(&server, "someone-else")).await;
    ok(&create(&mut other, None).await, "createRoomResponse");
    server.stop().await;
}

#[tokio::test]
async fn a_token_limited_to_some_rooms_creates_only_those() {
    let server = start_server().await;
    let grants = json!({ "rooms": ["roomA"], "createRoom": true, "publish": [], "subscribe": true, "roomAdmin": false });
    let mut ws = client(&server, &token_with_grants("limited", grants)).await;
    let denied = create(&mut ws, Some("roomB")).await;
    assert_eq!(error_code(&denied), "ROOM_ACCESS_DENIED");
    let unnamed = create(&mut ws, None).await;
    assert_eq!(error_code(&unnamed), "ROOM_ACCESS_DENIED");
    assert!(!server.ctx.rooms.room_exists("roomB"));
    ok(&create(&mut ws, Some("roomA")).await, "createRoomResponse");
    server.stop().await;
}

#[tokio::test]
async fn room_requests_accept_the_room_id_and_check_it() {
    let server = start_server().await;
    let mut ws = client(&server, &token(&server, "ortc")).await;
    ok(&create(&mut ws, Some("here")).await, "createRoomResponse");
    ok(
        &ws.request("joinRoom", json!({ "roomId": "here", "displayName": "o" }))
            .await,
        "joinRoomResponse",
    );
    let consume = |room: &str| {
        json!({
            "roomId": room,
            "producerId": "00000000-0000-0000-0000-000000000000",
            "rtpCapabilities": { "codecs": [], "headerExtensions": [] },
        })
    };
    // The seed's clients put roomId in every room request: accepted, then checked.
    let reply = ws.request("consume", consume("here")).await;
    assert_eq!(error_code(&reply), "PRODUCER_NOT_FOUND");
    let reply = ws.request("consume", consume("elsewhere")).await;
    assert_eq!(error_code(&reply), "NOT_IN_ROOM");
    let reply = ws
        .request(
            "pauseConsumer",
            json!({ "roomId": "here", "consumerId": "c" }),
        )
        .await;
    assert_eq!(error_code(&reply), "CONSUMER_NOT_FOUND");
    ok(
        &ws.request("leaveRoom", json!({ "roomId": "here" })).await,
        "leaveRoomResponse",
    );
    server.stop().await;
}

fn token_expiring_in(user: &str, secs: u64) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({ "user_id": user, "exp": exp }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_session_ends_with_its_token_unless_refreshed() {
    let server = start_server().await;
    // The verifier allows 5 s of leeway past `exp`.
    let mut short = client(&server, &token_expiring_in("short", 1)).await;
    ok(
        &create(&mut short, Some("expiry")).await,
        "createRoomResponse",
    );
    ok(
        &short
            .request(
                "joinRoom",
                json!({ "roomId": "expiry", "displayName": "s" }),
            )
            .await,
        "joinRoomResponse",
    );
    let mut refreshed = client(&server, &token_expiring_in("fresh", 1)).await;
    // Refresh with a longer token of the same user; another user's token is refused.
    let reply = refreshed
        .request(
            "authenticate",
            json!({ "token": token_expiring_in("fresh", 600) }),
        )
        .await;
    ok(&reply, "connected");
    let reply = refreshed
        .request(
            "authenticate",
            json!({ "token": token(&server, "mallory") }),
        )
        .await;
    assert_eq!(error_code(&reply), "ALREADY_AUTHENTICATED");

    tokio::time::sleep(Duration::from_secs(7)).await;
    // The expired session was told, removed from its room and closed.
    let mut saw_expiry = false;
    while let Some(msg) = short.recv(Duration::from_secs(2)).await {
        if msg["type"] == "error" && msg["data"]["code"] == "TOKEN_EXPIRED" {
            saw_expiry = true;
        }
    }
    assert!(saw_expiry, "the expired session is told TOKEN_EXPIRED");
    assert!(
        !server.ctx.rooms.room_exists("expiry"),
        "its participant left"
    );
    // The refreshed one keeps working.
    ok(
        &create(&mut refreshed, Some("after-refresh")).await,
        "createRoomResponse",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_resume_token_alone_does_not_take_over_a_session() {
    let server = start_server().await;
    let alice_jwt = token(&server, "alice");
    let mut alice = WsClient::connect(server.http_addr).await;
    let connected = alice.authenticate(&alice_jwt).await;
    let resume_token = connected["data"]["resumeToken"]
        .as_str()
        .unwrap()
        .to_string();

    let resume = |access: Option<&str>| {
        let mut data = json!({ "token": resume_token, "lastSeq": 0 });
        if let Some(jwt) = access {
            data["accessToken"] = json!(jwt);
        }
        json!({ "type": "resume", "requestId": "r", "data": data }).to_string()
    };
    // Without a JWT, and with another user's JWT: refused, and Alice's socket stays.
    let mut thief = WsClient::connect(server.http_addr).await;
    thief.send_raw(&resume(None)).await;
    let reply = thief.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");
    let mallory = token(&server, "mallory");
    thief.send_raw(&resume(Some(&mallory))).await;
    let reply = thief.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "RESUME_FAILED");
    ok(&alice.request("ping", json!({})).await, "pong");
    ok(
        &create(&mut alice, Some("still-alice")).await,
        "createRoomResponse",
    );

    // With Alice's own JWT the resume is hers to make.
    let mut again = WsClient::connect(server.http_addr).await;
    again.send_raw(&resume(Some(&alice_jwt))).await;
    let reply = again.recv(Duration::from_secs(5)).await.unwrap();
    ok(&reply, "resumed");
    server.stop().await;
}

/// Read a raw WebSocket until it closes: the error envelopes and the close code.
async fn until_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> (Vec<Value>, Option<u16>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut replies = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => replies.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return (replies, frame.map(|f| u16::from(f.code)))
            }
            Ok(Some(Ok(_))) => {}
            _ => return (replies, None),
        }
    }
}

#[tokio::test]
async fn websocket_frames_it_cannot_read_are_answered_before_the_close() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;
    let server = start_server().await;
    let url = format!("ws://{}/ws", server.http_addr);

    // Invalid UTF-8 in a text frame: RFC 6455 requires failing the connection (1007).
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    let (replies, close) = until_closed(&mut ws).await;
    assert_eq!(error_code(&replies[0]), "INVALID_MESSAGE");
    assert_eq!(close, Some(1007));

    // A frame over the hard cap (1 MiB here): MESSAGE_TOO_LARGE, then close 1009.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let huge = json!({ "type": "ping", "data": { "pad": "z".repeat(1_100_000) } }).to_string();
    let _ = ws.send(Message::Text(huge.into())).await;
    let (replies, close) = until_closed(&mut ws).await;
    assert_eq!(error_code(&replies[0]), "MESSAGE_TOO_LARGE");
    // The close frame (1009) follows, but the client is still writing the rest of its frame:
    // the server's close of the socket can reset the connection before the frame is read.
    assert!(matches!(close, Some(1009) | None), "close code {close:?}");

    // Others are unaffected.
    let mut ws = client(&server, &token(&server, "bystander")).await;
    ok(&ws.request("ping", json!({})).await, "pong");
    server.stop().await;
}
