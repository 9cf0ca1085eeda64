//! ICE-TCP on one port (RFC 6544 passive candidates, RFC 4571 framing) with real str0m peers,
//! and what the TCP port does with bad input: garbage, huge lengths, unknown ufrags, a flood
//! of idle connections and a client that stops reading. Each is bounded and closed while
//! other sessions keep their media.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn tcp_addr(server: &sfu::ServerHandle) -> SocketAddr {
    server
        .ctx
        .media
        .ice_tcp_addr()
        .expect("ICE-TCP is on by default")
}

async fn tcp_peer(server: &sfu::ServerHandle, stop_reading: Arc<AtomicBool>) -> Peer {
    Peer::spawn_tcp(PeerOptions::default(), tcp_addr(server), stop_reading)
        .await
        .expect("TCP peer connects")
}

/// `/status`'s `iceTcp`: this server's links and closed connections by reason (metrics hold
/// the same numbers, but the recorder is shared by every server of this test process).
async fn ice_tcp_status(server: &sfu::ServerHandle) -> serde_json::Value {
    common::status(server).await["iceTcp"].clone()
}

async fn links(server: &sfu::ServerHandle) -> u64 {
    ice_tcp_status(server).await["links"].as_u64().unwrap()
}

async fn closed(server: &sfu::ServerHandle, reason: &str) -> u64 {
    ice_tcp_status(server).await["closed"][reason]
        .as_u64()
        .unwrap()
}

/// Video packets a peer has received so far.
async fn video_packets(peer: &Peer) -> usize {
    peer.received()
        .await
        .iter()
        .filter(|r| r.layer != 255)
        .count()
}

async fn audio_packets(peer: &Peer) -> usize {
    peer.received()
        .await
        .iter()
        .filter(|r| r.layer == 255)
        .count()
}

/// Waits until `peer` receives 50 more packets than it had (media keeps flowing to it).
async fn keeps_receiving(what: &str, peer: &Peer) {
    let before = peer.received().await.len();
    wait_until(what, Duration::from_secs(10), || async {
        peer.received().await.len() > before + 50
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn str0m_peers_publish_and_subscribe_over_ice_tcp() {
    let server = start_server().await;
    let mut publisher_ws = joined(&server, "tcp", "pub", true).await;
    let mut tcp_sub_ws = joined(&server, "tcp", "tcp-sub", false).await;
    let mut udp_sub_ws = joined(&server, "tcp", "udp-sub", false).await;

    // The publisher has no UDP at all: its only candidate is the TCP connection.
    let publisher = tcp_peer(&server, Arc::default()).await;
    let answer = publisher.publish(&mut publisher_ws).await;
    let sdp = answer["sdp"].as_str().unwrap();
    let port = tcp_addr(&server).port();
    assert!(
        sdp.lines().any(|l| l.starts_with("a=candidate:")
            && l.contains(" tcp ")
            && l.contains(&format!(" {port} typ host tcptype passive"))),
        "the answer carries the passive TCP candidate:\n{sdp}"
    );
    assert!(
        sdp.lines()
            .any(|l| l.starts_with("a=candidate:") && l.contains(" udp ")),
        "and the UDP one:\n{sdp}"
    );
    wait_until(
        "publisher connected over TCP",
        Duration::from_secs(10),
        || publisher.connected(),
    )
    .await;

    let tcp_sub = tcp_peer(&server, Arc::default()).await;
    let udp_sub = Peer::spawn().await;
    let offer = negotiate_subscriber(&mut tcp_sub_ws, &tcp_sub, 2).await;
    assert!(
        offer["data"]["sdp"]
            .as_str()
            .unwrap()
            .contains("tcptype passive"),
        "subscriber offers carry the TCP candidate too"
    );
    negotiate_subscriber(&mut udp_sub_ws, &udp_sub, 2).await;

    // TCP in, TCP out and TCP in, UDP out.
    for (what, sub) in [
        ("video at the TCP subscriber", &tcp_sub),
        ("video at the UDP subscriber", &udp_sub),
    ] {
        keeps_receiving(what, sub).await;
    }
    wait_until("video over TCP", Duration::from_secs(10), || async {
        video_packets(&tcp_sub).await > 50
    })
    .await;
    assert!(audio_packets(&tcp_sub).await > 10, "audio over TCP too");

    let status = ice_tcp_status(&server).await;
    assert_eq!(status["addr"], tcp_addr(&server).to_string());
    assert_eq!(status["links"], 2, "one link per TCP peer: {status}");
    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sfu_ice_tcp_links "), "{metrics}");
    assert!(metrics.contains("sfu_ice_tcp_closed_total{reason=\"slow_reader\"}"));

    // A closed transport takes its link along.
    drop(tcp_sub_ws);
    wait_until("the TCP link closes", Duration::from_secs(10), || async {
        links(&server).await == 1
    })
    .await;
    assert_eq!(closed(&server, "transport_gone").await, 1);
    keeps_receiving("video at the UDP subscriber after", &udp_sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_answers_carry_the_tcp_candidate() {
    let server = start_server().await;
    let port = tcp_addr(&server).port();
    for (path, direction) in [
        ("/whip/tcp-whip", str0m::media::Direction::SendOnly),
        ("/whep/tcp-whip", str0m::media::Direction::RecvOnly),
    ] {
        let mut rtc = str0m::RtcConfig::new().build(std::time::Instant::now());
        let mut api = rtc.sdp_api();
        api.add_media(str0m::media::MediaKind::Audio, direction, None, None, None);
        let offer = api.apply().expect("offer").0.to_sdp_string();
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", server.http_addr))
            .bearer_auth(token(&server, "whip-user"))
            .header("content-type", "application/sdp")
            .body(offer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{path}");
        let answer = response.text().await.unwrap();
        assert!(
            answer.contains(&format!(" {port} typ host tcptype passive")),
            "{path} answer:\n{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_stops_reading_is_dropped_and_others_keep_their_media() {
    let server = start_server().await;
    let mut publisher_ws = joined(&server, "slow", "pub", true).await;
    let mut slow_ws = joined(&server, "slow", "slow", false).await;
    let mut udp_ws = joined(&server, "slow", "udp", false).await;
    let mut tcp_ws = joined(&server, "slow", "tcp", false).await;
    // Realistically sized packets (≈ 1.5 Mbit/s at the top layer), so a stalled client's
    // buffers fill in seconds.
    let publisher = Peer::spawn().await;
    publisher
        .publish_spec(&mut publisher_ws, Publish::load(true, false))
        .await
        .expect("publish");

    let stop = Arc::new(AtomicBool::new(false));
    let slow = tcp_peer(&server, stop.clone()).await;
    let udp_sub = Peer::spawn().await;
    let tcp_sub = tcp_peer(&server, Arc::default()).await;
    negotiate_subscriber(&mut slow_ws, &slow, 2).await;
    negotiate_subscriber(&mut udp_ws, &udp_sub, 2).await;
    negotiate_subscriber(&mut tcp_ws, &tcp_sub, 2).await;
    keeps_receiving("video at the client that will stall", &slow).await;

    stop.store(true, Ordering::Relaxed);
    // Its queue and socket buffers fill; then the worker drops it rather than wait or grow.
    let stalled = tokio::time::Instant::now();
    loop {
        let status = ice_tcp_status(&server).await;
        if status["closed"]["slow_reader"] == 1 {
            break;
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(30),
            "the stalled link was not dropped: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("stalled link dropped after {:?}", stalled.elapsed());
    assert_eq!(
        links(&server).await,
        1,
        "only the other TCP subscriber's link is left"
    );
    keeps_receiving("video at the UDP subscriber", &udp_sub).await;
    keeps_receiving("video at the other TCP subscriber", &tcp_sub).await;
}

/// A TCP connection from `ip` (any 127/8 address is loopback) to the ICE-TCP port.
async fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket.connect(to).await.expect("TCP connect")
}

/// Whether the server closes `stream` within `within` (EOF or reset; data is read past).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_tcp_port_is_bounded_and_closed() {
    let server = start_server().await;
    let to = tcp_addr(&server);
    let mut publisher_ws = joined(&server, "bad", "pub", true).await;
    let mut udp_ws = joined(&server, "bad", "udp", false).await;
    let mut tcp_ws = joined(&server, "bad", "tcp", false).await;
    let publisher = Peer::spawn().await;
    publisher.publish(&mut publisher_ws).await;
    let udp_sub = Peer::spawn().await;
    let tcp_sub = tcp_peer(&server, Arc::default()).await;
    negotiate_subscriber(&mut udp_ws, &udp_sub, 2).await;
    negotiate_subscriber(&mut tcp_ws, &tcp_sub, 2).await;
    keeps_receiving("video at the TCP subscriber", &tcp_sub).await;

    // Garbage: an HTTP request reads as a 18245-byte frame, over the cap.
    let mut garbage = connect_from([127, 0, 0, 3], to).await;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut garbage, Duration::from_secs(2)).await);

    // The largest length RFC 4571 allows, then a trickle: refused at the header.
    let mut huge = connect_from([127, 0, 0, 3], to).await;
    huge.write_all(&[0xff, 0xff, 0, 1, 0, 0]).await.unwrap();
    assert!(closed_within(&mut huge, Duration::from_secs(2)).await);

    // A well-formed frame that is not a signed binding request for any transport.
    let mut unknown = connect_from([127, 0, 0, 3], to).await;
    let junk = [0u8; 20];
    unknown.write_all(&[0, 20]).await.unwrap();
    unknown.write_all(&junk).await.unwrap();
    assert!(closed_within(&mut unknown, Duration::from_secs(2)).await);

    // 1,000 idle connections from one address: all but a few are closed at once, and those
    // few when their first frame is overdue. Other clients are not affected meanwhile.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect_from([127, 0, 0, 2], to).await);
    }
    let mut closed_at_once = 0u64;
    for stream in &mut idle {
        if closed_within(stream, Duration::from_millis(20)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 1000 - 32 - 16,
        "only {closed_at_once} of 1000 idle connections were refused at once"
    );
    keeps_receiving("video at the TCP subscriber during the flood", &tcp_sub).await;
    keeps_receiving("video at the UDP subscriber during the flood", &udp_sub).await;
    // A new TCP client from another address still gets in while the flood holds its slots.
    let mut late_ws = joined(&server, "bad", "late", false).await;
    let late = tcp_peer(&server, Arc::default()).await;
    negotiate_subscriber(&mut late_ws, &late, 2).await;
    keeps_receiving(
        "video at a TCP subscriber that joined during the flood",
        &late,
    )
    .await;
    for stream in &mut idle {
        assert!(
            closed_within(stream, Duration::from_secs(7)).await,
            "an idle connection outlived the first-frame timeout"
        );
    }
    let status = ice_tcp_status(&server).await;
    let closed = &status["closed"];
    let (busy, idle) = (
        closed["busy"].as_u64().unwrap(),
        closed["idle"].as_u64().unwrap(),
    );
    assert_eq!(busy + idle, 1000, "{status}");
    assert!(busy >= 900, "{status}");
    assert_eq!(closed["oversize"], 2, "{status}");
    assert_eq!(closed["unclaimed"], 1, "{status}");
    assert_eq!(status["links"], 2, "the two TCP subscribers: {status}");
}
