//! WebTransport signaling: the same behaviour as WebSocket (one shared test body), session
//! resume across transports with media flowing, certificate rotation, and hostile input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The signaling assertions of the WebSocket tests, run over `transport`.
async fn room_lifecycle(server: &sfu::ServerHandle, transport: Transport) {
    let room = format!("shared-{transport:?}");
    let mut a = SignalClient::connect_with(server, transport).await;
    let connected = a.authenticate(&token(server, "ann")).await;
    assert!(connected["data"]["resumeToken"].as_str().unwrap().len() >= 32);
    assert!(
        connected["seq"].as_u64().is_some(),
        "messages are sequenced"
    );
    ok(
        &a.request("createRoom", json!({ "name": "Shared", "roomId": room }))
            .await,
        "createRoomResponse",
    );
    let joined = a
        .request("joinRoom", json!({ "roomId": room, "displayName": "Ann" }))
        .await;
    assert_eq!(ok(&joined, "joinRoomResponse")["participants"], json!([]));

    let mut b = SignalClient::connect_with(server, transport).await;
    b.authenticate(&token(server, "ben")).await;
    let joined = b
        .request("joinRoom", json!({ "roomId": room, "displayName": "Ben" }))
        .await;
    let others = &ok(&joined, "joinRoomResponse")["participants"];
    assert_eq!(others[0]["displayName"], "Ann");
    let ben_id = joined["data"]["participantId"].clone();
    let note = a
        .notification("participantJoined", Duration::from_secs(5))
        .await;
    assert_eq!(note["data"]["participant"]["participantId"], ben_id);

    let reply = b.request("fly", json!({})).await;
    assert_eq!(error_code(&reply), "UNKNOWN_TYPE");
    ok(
        &b.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
    let left = a
        .notification("participantLeft", Duration::from_secs(5))
        .await;
    assert_eq!(left["data"]["participantId"], ben_id);
    ok(
        &a.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_webtransport_behave_the_same() {
    let server = start_server().await;
    for transport in [Transport::WebSocket, Transport::WebTransport] {
        room_lifecycle(&server, transport).await;
    }
    // /webtransport tells browsers where to go and which certificate to trust.
    let info = server
        .ctx
        .webtransport
        .get()
        .unwrap()
        .describe(Some("127.0.0.1:3000"));
    let port = server.ctx.webtransport.get().unwrap().local_addr.port();
    assert_eq!(info["url"], format!("https://127.0.0.1:{port}/wt"));
    assert_eq!(info["certificateHashes"][0]["algorithm"], "sha-256");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_session_resumes_over_the_other_transport_with_media_flowing() {
    let server = start_server().await;
    // Publisher A signals over WebSocket; subscriber B over WebTransport.
    let mut a = SignalClient::connect_with(&server, Transport::WebSocket).await;
    let connected = a.authenticate(&token(&server, "a")).await;
    let resume_token = connected["data"]["resumeToken"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        &a.request("createRoom", json!({ "name": "r", "roomId": "resume" }))
            .await,
        "createRoomResponse",
    );
    let a_id = a
        .request(
            "joinRoom",
            json!({ "roomId": "resume", "displayName": "A" }),
        )
        .await["data"]["participantId"]
        .clone();
    let mut b = SignalClient::connect_with(&server, Transport::WebTransport).await;
    b.authenticate(&token(&server, "b")).await;
    ok(
        &b.request(
            "joinRoom",
            json!({ "roomId": "resume", "displayName": "B" }),
        )
        .await,
        "joinRoomResponse",
    );
    let publisher = Peer::spawn().await;
    let subscriber = Peer::spawn().await;
    publisher.publish(&mut a).await;
    loop {
        let offer = b
            .notification("subscriberOffer", Duration::from_secs(10))
            .await;
        subscriber.answer_subscriber_offer(&mut b, &offer).await;
        if offer["data"]["tracks"].as_array().unwrap().len() == 2 {
            break;
        }
    }
    let received = || async { subscriber.received().await.len() };
    wait_for("media before the drop", || async { received().await > 20 }).await;
    let transports_before = server.ctx.media.stats().await.transports;

    // A says what it has (`ping {lastSeq}`): the server lets those go, and the resume below
    // still gets everything after them.
    let replay = |status: serde_json::Value| status["replayBytes"].as_u64().expect("replayBytes");
    let before = replay(common::status(&server).await);
    let seen = a.last_seq;
    ok(&a.request("ping", json!({ "lastSeq": seen })).await, "pong");
    let after = replay(common::status(&server).await);
    assert!(
        after < before,
        "acknowledged messages are let go: {before} -> {after}"
    );

    // A's signaling dies. Meanwhile C joins, which A must not miss.
    let last_seq = a.last_seq;
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = SignalClient::connect_with(&server, Transport::WebSocket).await;
    c.authenticate(&token(&server, "c")).await;
    let c_id = c
        .request(
            "joinRoom",
            json!({ "roomId": "resume", "displayName": "C" }),
        )
        .await["data"]["participantId"]
        .clone();
    let during_drop = received().await;
    wait_for("media keeps flowing while A is away", || async {
        received().await > during_drop + 10
    })
    .await;

    // A comes back over WebTransport with its token.
    let mut a2 = SignalClient::connect_with(&server, Transport::WebTransport).await;
    let resumed = a2
        .resume(&resume_token, last_seq, &token(&server, "a"))
        .await;
    let data = ok(&resumed, "resumed");
    assert_eq!(data["participantId"], a_id);
    assert_eq!(data["roomId"], "resume");
    assert!(data["replayed"].as_u64().unwrap() >= 1);
    let replayed = a2
        .notification("participantJoined", Duration::from_secs(5))
        .await;
    assert_eq!(replayed["data"]["participant"]["participantId"], c_id);
    assert!(replayed["seq"].as_u64().unwrap() > last_seq);
    // Same session, same media: no new transports, packets still arriving, still in the room.
    ok(&a2.request("ping", json!({})).await, "pong");
    // C added its subscriber transport (it publishes nothing); A's are the same ones.
    assert_eq!(
        server.ctx.media.stats().await.transports,
        transports_before + 1
    );
    let after = received().await;
    wait_for("media after resume", || async {
        received().await > after + 10
    })
    .await;
    assert!(server
        .ctx
        .rooms
        .is_participant("resume", a_id.as_str().unwrap()));
    // Tokens are single use: the old one is dead, the reply carries the next one.
    assert_ne!(data["resumeToken"], resume_token.as_str());
    let mut thief = SignalClient::connect_with(&server, Transport::WebSocket).await;
    let stale = thief.resume(&resume_token, 0, &token(&server, "a")).await;
    assert_eq!(error_code(&stale), "RESUME_FAILED");
    ok(&a2.request("ping", json!({})).await, "pong");

    // C drops and never resumes: after the grace period (1 s in tests) everyone is told.
    drop(c);
    let left = a2
        .notification("participantLeft", Duration::from_secs(5))
        .await;
    assert_eq!(left["data"]["participantId"], c_id);
    let left = b
        .notification("participantLeft", Duration::from_secs(5))
        .await;
    assert_eq!(left["data"]["participantId"], c_id);
    // Others are told first; the transports close right after.
    wait_for("C's transports closed", || async {
        server.ctx.media.stats().await.transports == transports_before
    })
    .await;

    let mut unknown = SignalClient::connect_with(&server, Transport::WebTransport).await;
    let reply = unknown.resume("not-a-token", 0, &token(&server, "a")).await;
    assert_eq!(error_code(&reply), "RESUME_FAILED");
    server.stop().await;
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotates_without_dropping_open_sessions() {
    let server = start_server_with(&["--webtransport-cert-validity-secs", "10"]).await;
    let state = server.ctx.webtransport.get().unwrap().clone();
    let port = state.local_addr.port();
    let first = state.certificate_hash().unwrap();
    let mut open = connect_wt_with(port, first)
        .await
        .expect("first certificate works");
    open.authenticate(&token(&server, "early")).await;

    // Rotation happens at half the validity (5 s).
    wait_for_rotation(&state, first).await;
    let second = state.certificate_hash().unwrap();
    let described = state.describe(None);
    use base64::Engine;
    let served = base64::engine::general_purpose::STANDARD
        .decode(described["certificateHashes"][0]["value"].as_str().unwrap())
        .unwrap();
    assert_eq!(served, second.to_vec(), "the new hash is served");

    let mut fresh = connect_wt_with(port, second)
        .await
        .expect("new sessions use the new certificate");
    fresh.authenticate(&token(&server, "late")).await;
    assert!(
        connect_wt_with(port, first).await.is_err(),
        "the old hash no longer matches new handshakes"
    );
    // The session opened under the old certificate is untouched.
    ok(&open.request("ping", json!({})).await, "pong");
    server.stop().await;
}

async fn wait_for_rotation(state: &sfu::transport::webtransport::WebTransportState, old: [u8; 32]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while state.certificate_hash() == Some(old) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate never rotated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_webtransport_clients_are_bounded_and_isolated() {
    let server = start_server().await;
    let mut bystander = connect_wt(&server).await.unwrap();
    bystander.authenticate(&token(&server, "calm")).await;

    // Valid frame, invalid UTF-8: an error, connection kept.
    let mut c = connect_wt(&server).await.unwrap();
    c.send_bytes_wt(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd]).await;
    let reply = c.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "INVALID_MESSAGE");
    // Over MAX_MESSAGE_SIZE but under the hard cap: MESSAGE_TOO_LARGE, connection kept.
    let big = json!({ "type": "ping", "data": { "pad": "x".repeat(70_000) } }).to_string();
    c.send_raw(&big).await;
    let reply = c.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "MESSAGE_TOO_LARGE");
    ok(&c.request("ping", json!({})).await, "pong");
    // Garbage that claims a 4 GB frame: told why (as on WebSocket), then the session is closed.
    c.send_bytes_wt(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    let reply = c.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(error_code(&reply), "MESSAGE_TOO_LARGE");
    assert!(c.recv(Duration::from_secs(5)).await.is_none(), "closed");

    // A flood of extra streams: refused, then the session is closed.
    let flood = connect_wt(&server).await.unwrap();
    let conn = flood.wt_connection().clone();
    for _ in 0..40 {
        match conn.open_bi().await {
            Ok(opening) => {
                if let Ok((mut send, _recv)) = opening.await {
                    let _ = send.write_all(b"junk").await;
                }
            }
            Err(_) => break,
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(closed.is_ok(), "stream flood closes the session");

    // A flood of datagrams: same.
    let dgrams = connect_wt(&server).await.unwrap();
    let conn = dgrams.wt_connection().clone();
    for _ in 0..200 {
        if conn.send_datagram(b"noise").is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(closed.is_ok(), "datagram flood closes the session");

    // Nobody else noticed.
    ok(&bystander.request("ping", json!({})).await, "pong");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificate_from_files_is_used() {
    let dir = std::env::temp_dir().join(format!("sfu-certs-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sfu"))
        .args(["certs", "generate", "--out-dir"])
        .arg(&dir)
        .args(["--days", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let b64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("base64:"))
        .unwrap()
        .trim();
    use base64::Engine;
    let hash: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .try_into()
        .unwrap();
    let cert_arg = format!(
        "--webtransport-cert-file={}",
        dir.join("webtransport-cert.pem").display()
    );
    let key_arg = format!(
        "--webtransport-key-file={}",
        dir.join("webtransport-key.pem").display()
    );
    let server = start_server_with(&[&cert_arg, &key_arg]).await;
    let state = server.ctx.webtransport.get().unwrap();
    // A CA-style certificate is not advertised by hash...
    assert_eq!(state.describe(None)["certificateHashes"], json!([]));
    // ...but it is the one the endpoint presents.
    let mut client = connect_wt_with(state.local_addr.port(), hash)
        .await
        .expect("file certificate");
    client.authenticate(&token(&server, "op")).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
