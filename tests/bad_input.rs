//! Hostile and careless input: every bad request gets an error with a stable code and a human
//! message, the connection stays usable where that makes sense, and nobody else notices.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signaling_input_gets_coded_errors_and_leaves_other_sessions_alone() {
    let server = start_server().await;

    // A bystander in a room, to prove nothing below disturbs it.
    let mut bystander = WsClient::connect(server.http_addr).await;
    bystander.authenticate(&token(&server, "bystander")).await;
    ok(
        &bystander
            .request("createRoom", json!({ "name": "calm", "roomId": "calm" }))
            .await,
        "createRoomResponse",
    );
    ok(
        &bystander
            .request("joinRoom", json!({ "roomId": "calm", "displayName": "B" }))
            .await,
        "joinRoomResponse",
    );

    let mut ws = WsClient::connect(server.http_addr).await;

    // Before authentication.
    ws.send_raw("{not json").await;
    let reply = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "PARSE_ERROR");
    ws.send_raw("[1,2,3]").await;
    let reply = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "INVALID_MESSAGE");
    let reply = ws.request("createRoom", json!({ "name": "x" })).await;
    assert_eq!(error_code(&reply), "NOT_AUTHENTICATED");
    let reply = ws.request("fly", json!({})).await;
    assert_eq!(error_code(&reply), "UNKNOWN_TYPE");
    assert_eq!(reply["data"]["requestType"], "fly");

    // Bad tokens: garbage, wrong secret, expired, missing user id.
    let reply = ws
        .request("authenticate", json!({ "token": "abc.def.ghi" }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_TOKEN");
    let forged = sfu::auth::Authenticator::new(Some("some-other-secret-entirely"), None)
        .unwrap()
        .issue_for("u", None, 60)
        .unwrap();
    let reply = ws.request("authenticate", json!({ "token": forged })).await;
    assert_eq!(error_code(&reply), "TOKEN_SIGNATURE_INVALID");
    let expired = server
        .ctx
        .auth
        .issue(&sfu::auth::Claims {
            user_id: json!("u"),
            exp: sfu::auth::unix_now() - 3600,
            ..Default::default()
        })
        .unwrap();
    let reply = ws
        .request("authenticate", json!({ "token": expired }))
        .await;
    assert_eq!(error_code(&reply), "TOKEN_EXPIRED");
    let reply = ws.request("authenticate", json!({ "token": 42 })).await;
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");

    // The same connection still authenticates afterwards.
    ws.authenticate(&token(&server, "careless")).await;
    let reply = ws
        .request("authenticate", json!({ "token": token(&server, "x") }))
        .await;
    assert_eq!(error_code(&reply), "ALREADY_AUTHENTICATED");

    // Missing and mistyped fields, out-of-range values.
    let reply = ws.request("joinRoom", json!({ "roomId": "calm" })).await;
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");
    assert!(
        reply["error"].as_str().unwrap().contains("displayName"),
        "{reply}"
    );
    let reply = ws
        .request("joinRoom", json!({ "roomId": 7, "displayName": "x" }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");
    let reply = ws
        .request("createRoom", json!({ "name": "x", "maxParticipants": 0 }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");
    let reply = ws
        .request("createRoom", json!({ "name": "x", "roomId": "../etc" }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");
    let reply = ws
        .request("createRoom", json!({ "name": "calm", "roomId": "calm" }))
        .await;
    assert_eq!(error_code(&reply), "ROOM_EXISTS");
    let reply = ws
        .request(
            "joinRoom",
            json!({ "roomId": "nowhere", "displayName": "x" }),
        )
        .await;
    assert_eq!(error_code(&reply), "ROOM_NOT_FOUND");
    let reply = ws.request("publisherOffer", json!({ "sdp": "v=0" })).await;
    assert_eq!(error_code(&reply), "NOT_IN_ROOM");
    let reply = ws
        .request(
            "setPreferredLayer",
            json!({ "producerId": "p", "layer": "ultra" }),
        )
        .await;
    assert_eq!(error_code(&reply), "INVALID_PAYLOAD");

    // An oversized message is refused without closing the connection.
    let big =
        json!({ "type": "createRoom", "data": { "name": "x".repeat(70_000) }, "requestId": "big" });
    ws.send_raw(&big.to_string()).await;
    let reply = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "MESSAGE_TOO_LARGE");

    // Inside a room: garbage SDP, an answer nobody asked for, an unknown producer.
    ok(
        &ws.request("createRoom", json!({ "name": "mess", "roomId": "mess" }))
            .await,
        "createRoomResponse",
    );
    ok(
        &ws.request("joinRoom", json!({ "roomId": "mess", "displayName": "C" }))
            .await,
        "joinRoomResponse",
    );
    let reply = ws
        .request("publisherOffer", json!({ "sdp": "this is not sdp" }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_SDP");
    let reply = ws
        .request("subscriberAnswer", json!({ "sdp": "v=0\r\n" }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_SDP");
    let reply = ws
        .request(
            "setPreferredLayer",
            json!({ "producerId": "00000000-0000-0000-0000-000000000000", "layer": "low" }),
        )
        .await;
    assert_eq!(error_code(&reply), "PRODUCER_NOT_FOUND");
    let reply = ws
        .request(
            "joinRoom",
            json!({ "roomId": "calm", "displayName": "again" }),
        )
        .await;
    assert_eq!(error_code(&reply), "ALREADY_IN_ROOM");
    // Still usable after all of that.
    ok(&ws.request("ping", json!({})).await, "pong");
    ok(
        &ws.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );

    // The bystander saw nothing and still works.
    assert!(bystander.backlog.is_empty(), "{:?}", bystander.backlog);
    assert!(bystander.recv(Duration::from_millis(300)).await.is_none());
    ok(&bystander.request("ping", json!({})).await, "pong");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_room_is_refused() {
    let server = start_server().await;
    let mut a = WsClient::connect(server.http_addr).await;
    a.authenticate(&token(&server, "a")).await;
    ok(
        &a.request(
            "createRoom",
            json!({ "name": "tiny", "roomId": "tiny", "maxParticipants": 1 }),
        )
        .await,
        "createRoomResponse",
    );
    ok(
        &a.request("joinRoom", json!({ "roomId": "tiny", "displayName": "A" }))
            .await,
        "joinRoomResponse",
    );
    let mut b = WsClient::connect(server.http_addr).await;
    b.authenticate(&token(&server, "b")).await;
    let reply = b
        .request("joinRoom", json!({ "roomId": "tiny", "displayName": "B" }))
        .await;
    assert_eq!(error_code(&reply), "ROOM_FULL");
    // The refused join left no transport behind.
    assert_eq!(server.ctx.media.stats().await.transports, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_to_the_media_ports_change_nothing() {
    let server = start_server().await;
    let before = server.ctx.media.stats().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun_like = {
        // A STUN binding request header naming a ufrag no transport has.
        let mut m = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&[0x00, 0x06, 0x00, 0x09]);
        m.extend_from_slice(b"nobody:me\0\0\0");
        m
    };
    let payloads: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 1],
        vec![0x80; 1200],
        (0..1500u32).map(|i| (i * 7919 % 251) as u8).collect(),
        vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0],
        stun_like,
    ];
    for addr in server.ctx.media.worker_addrs() {
        let target = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port());
        for _ in 0..50 {
            for p in &payloads {
                socket.send_to(p, target).await.unwrap();
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.ctx.media.stats().await;
    assert_eq!(
        (after.transports, after.producers, after.consumers),
        (0, 0, 0)
    );
    assert_eq!(after.rtp_packets_in, before.rtp_packets_in);
    assert!(after.datagrams_dropped > before.datagrams_dropped);
    // Workers still answer.
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(&token(&server, "after")).await;
    server.stop().await;
}
