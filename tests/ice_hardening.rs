//! ICE hardening against a real server and real str0m peers: STUN binding requests that name a
//! live transport's ufrag without knowing its password must not tie their source address to
//! it (issue 12, item 2). Spoofed sources are played by many local sockets, and by the
//! victim's own socket sending on behalf of a forged ICE agent.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use str0m::ice::{StunMessage, TransId};
use str0m::{Candidate, IceCreds, Input, RtcConfig};
use tokio::net::UdpSocket;

/// `a=ice-ufrag` and the host candidate's address of an SDP.
fn ufrag_and_candidate(sdp: &str) -> (String, SocketAddr) {
    let ufrag = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("ice-ufrag")
        .trim()
        .to_string();
    let candidate = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=candidate:"))
        .expect("candidate");
    // foundation component protocol priority ip port typ host
    let parts: Vec<&str> = candidate.split_whitespace().collect();
    let addr = format!("{}:{}", parts[4], parts[5])
        .parse()
        .expect("address");
    (ufrag, addr)
}

/// A binding request for `ufrag` signed with a password that is not the transport's.
fn forged_request(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:attacker");
    let mut buf = vec![0u8; 512];
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let n = StunMessage::binding_request(&username, TransId::new(), true, 1, 1_000, true)
        .to_bytes(Some(b"not-the-password-000000"), &mut buf, |k, p| {
            hmac.sha1_hmac(k, p)
        })
        .expect("stun serializes");
    buf.truncate(n);
    buf
}

/// Many sources (one socket each) send forged requests naming `ufrag`.
async fn flood(server: SocketAddr, ufrag: &str, sources: usize) -> Vec<UdpSocket> {
    let mut sockets = Vec::with_capacity(sources);
    for _ in 0..sources {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..3 {
            socket
                .send_to(&forged_request(ufrag), server)
                .await
                .unwrap();
        }
        sockets.push(socket);
    }
    sockets
}

async fn dropped(server: &sfu::ServerHandle) -> u64 {
    server.ctx.media.stats().await.datagrams_dropped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_binding_requests_neither_steal_addresses_nor_block_a_later_client() {
    let server = start_server().await;
    let mut publisher_ws = WsClient::connect(server.http_addr).await;
    publisher_ws.authenticate(&token(&server, "pub")).await;
    let created = publisher_ws
        .request("createRoom", json!({ "name": "Ice", "roomId": "ice" }))
        .await;
    ok(&created, "createRoomResponse");
    let reply = publisher_ws
        .request("joinRoom", json!({ "roomId": "ice", "displayName": "Pub" }))
        .await;
    ok(&reply, "joinRoomResponse");
    let publisher = Peer::spawn().await;
    let answer = publisher.publish(&mut publisher_ws).await;
    let (publisher_ufrag, media_addr) = ufrag_and_candidate(answer["sdp"].as_str().unwrap());
    wait_until("publisher connected", Duration::from_secs(10), || {
        publisher.connected()
    })
    .await;

    // 200 spoofed sources name the live publisher transport.
    let before = dropped(&server).await;
    let _flood = flood(media_addr, &publisher_ufrag, 200).await;

    let mut viewer_ws = WsClient::connect(server.http_addr).await;
    viewer_ws.authenticate(&token(&server, "viewer")).await;
    let reply = viewer_ws
        .request(
            "joinRoom",
            json!({ "roomId": "ice", "displayName": "Viewer" }),
        )
        .await;
    ok(&reply, "joinRoomResponse");
    let viewer = Peer::spawn().await;
    let offer = viewer_ws
        .notification("subscriberOffer", Duration::from_secs(10))
        .await;
    let (viewer_ufrag, _) = ufrag_and_candidate(offer["data"]["sdp"].as_str().unwrap());
    // The viewer's own transport is flooded too, before its client ever sends a request.
    let _flood_viewer = flood(media_addr, &viewer_ufrag, 200).await;

    // The viewer's own address sends forged requests naming the publisher's ufrag first (the
    // attacker spoofing exactly the address a later client comes from): a forged ICE agent
    // borrows the viewer's socket, then the real one takes over.
    let real = viewer
        .with(move |s| {
            let mut forged = RtcConfig::new().build(Instant::now());
            forged.add_local_candidate(
                Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap(),
            );
            forged.add_remote_candidate(Candidate::host(media_addr, "udp").unwrap());
            let mut api = forged.direct_api();
            api.set_ice_controlling(true);
            api.set_remote_ice_credentials(IceCreds {
                ufrag: publisher_ufrag,
                pass: "not-the-password-000000".into(),
            });
            // A first tick starts its connectivity checks; later ones follow its timeouts.
            forged.handle_input(Input::Timeout(Instant::now())).unwrap();
            std::mem::replace(&mut s.rtc, forged)
        })
        .await;
    // Its checks leave at 0, 250 and 750 ms.
    tokio::time::sleep(Duration::from_millis(900)).await;
    viewer.with(move |s| s.rtc = real).await;

    viewer.answer_subscriber_offer(&mut viewer_ws, &offer).await;
    let mut tracks = offer["data"]["tracks"].as_array().unwrap().len();
    while tracks < 2 {
        let offer = viewer_ws
            .notification("subscriberOffer", Duration::from_secs(10))
            .await;
        viewer.answer_subscriber_offer(&mut viewer_ws, &offer).await;
        tracks = offer["data"]["tracks"].as_array().unwrap().len();
    }
    wait_until("viewer connected", Duration::from_secs(10), || {
        viewer.connected()
    })
    .await;
    wait_until("viewer receives media", Duration::from_secs(10), || async {
        viewer.received().await.len() >= 20
    })
    .await;
    // Every forged request was refused before str0m saw it: 2 × 200 sources × 3, plus the
    // forged agent's checks from the viewer's address.
    let refused = dropped(&server).await - before;
    assert!(refused > 1200, "only {refused} datagrams refused");
    let stats = server.ctx.media.stats().await;
    assert!(stats.rtp_packets_forwarded > 0, "{stats:?}");
    server.stop().await;
}
