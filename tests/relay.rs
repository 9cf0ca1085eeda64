//! One room over two nodes (issue 17): `sfu` processes sharing the machine's Redis, the
//! room owned by A, its subscribers joining through B (RELAY_ROOMS), which relays the room
//! from A over a node link. Real str0m peers on both sides; A is then killed.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use testkit::measure::{Shared, PHASE_MEASURE};

struct Node {
    process: Option<ServerProcess>,
    id: String,
    addr: SocketAddr,
}

async fn spawn_node(name: &str, extra: &[(&str, &str)]) -> Node {
    let id = format!("{name}-{}-{}", std::process::id(), free_port());
    let mut env = vec![
        ("REDIS_URL", REDIS_URL),
        ("NODE_ID", id.as_str()),
        ("BWE_ENABLED", "false"),
    ];
    env.extend_from_slice(extra);
    let process = spawn_server_process(&env).await;
    let addr = process.addr;
    // Registered with its link endpoint (the heartbeat after WebTransport is up).
    let mut conn = redis_connection().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url: Option<String> = redis::cmd("HGET")
            .arg(format!("sfu:node:{id}"))
            .arg("linkUrl")
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if url.is_some_and(|u| u.ends_with("/relay")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never published a link endpoint"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Node {
        process: Some(process),
        id,
        addr,
    }
}

/// A WHEP/WHIP offer of one video m-line (`direction` is the client's side).
fn http_offer(direction: str0m::media::Direction) -> String {
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(str0m::media::MediaKind::Video, direction, None, None, None);
    api.apply().expect("offer").0.to_sdp_string()
}

fn layer_counts(rx: &testkit::measure::RxStats) -> [u64; 4] {
    let l = &rx.layer_packets;
    [l[0], l[1], l[2], l[3]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_a_relay_node_get_the_owners_room_and_hear_when_it_dies() {
    let a = spawn_node("owner", &[]).await;
    let b = spawn_node("relay", &[("RELAY_ROOMS", "true"), ("SFU_WORKERS", "2")]).await;
    let room = format!("relayed-{}-{}", std::process::id(), free_port());
    let shared = Shared::new();
    shared
        .phase
        .store(PHASE_MEASURE, std::sync::atomic::Ordering::Relaxed);
    let peer = |subscriber| {
        Peer::spawn_opts(PeerOptions::load(
            [127, 0, 0, 1].into(),
            Arc::clone(&shared),
            subscriber,
        ))
    };

    // The room lives on A, with a simulcast publisher.
    let mut publisher_ws = client_at(a.addr, "pub").await;
    ok(
        &publisher_ws
            .request("createRoom", json!({ "name": "Relayed", "roomId": room }))
            .await,
        "createRoomResponse",
    );
    ok(
        &publisher_ws
            .request("joinRoom", json!({ "roomId": room, "displayName": "Pub" }))
            .await,
        "joinRoomResponse",
    );
    let publisher = peer(false).await.unwrap();
    let published = publisher
        .publish_spec(&mut publisher_ws, Publish::load(true, false))
        .await
        .unwrap();
    let video = video_producer(&published);

    // Subscribers join through B and stay there: B relays the room.
    let mut subscribers = Vec::new();
    for i in 0..4 {
        let mut ws = client_at(b.addr, &format!("sub{i}")).await;
        let joined = ws
            .request(
                "joinRoom",
                json!({ "roomId": room, "displayName": format!("Sub {i}") }),
            )
            .await;
        let data = ok(&joined, "joinRoomResponse");
        let participants = data["participants"].as_array().expect("participants");
        let owner = participants
            .iter()
            .find(|p| p["displayName"] == "Pub")
            .unwrap_or_else(|| panic!("the owner's publisher is shown on B: {data}"));
        assert_eq!(
            owner["producers"].as_array().map(Vec::len),
            Some(2),
            "{owner}"
        );
        let sub = peer(true).await.unwrap();
        negotiate_subscriber(&mut ws, &sub, 2).await;
        subscribers.push((ws, sub));
    }
    let status_b = status_at(b.addr).await;
    assert_eq!(
        status_b["cluster"]["relayLinks"], 1,
        "one link for the room: {status_b}"
    );
    assert_eq!(status_at(a.addr).await["cluster"]["ownerLinks"], 1);
    let mut conn = redis_connection().await;
    let relays: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("sfu:room:{room}:relays"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        relays,
        vec![b.id.clone()],
        "Redis records who relays the room"
    );

    // Continuous media through the link, on both of B's workers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, sub) in &subscribers {
        sub.take_stats().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, (_, sub)) in subscribers.iter().enumerate() {
        let (rx, _) = sub.take_stats().await.unwrap();
        let layers = layer_counts(&rx);
        assert!(
            layers[..3].iter().sum::<u64>() > 50 && layers[3] > 50,
            "subscriber {i} on B: {layers:?}"
        );
        let (mut expected, mut received) = (0, 0);
        for stream in rx.streams.values() {
            expected += stream.expected();
            received += stream.received;
        }
        assert!(
            received as f64 >= expected as f64 * 0.98,
            "loss through the relay for subscriber {i}: {received}/{expected}"
        );
    }
    let status_b = status_at(b.addr).await;
    let consumers: Vec<u64> = status_b["perWorker"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["media"]["consumers"].as_u64().unwrap())
        .collect();
    assert!(
        consumers.iter().all(|c| *c >= 2),
        "both of B's workers serve: {consumers:?}"
    );
    assert!(
        status_b["cluster"]["datagramsIn"].as_u64().unwrap() > 200,
        "{status_b}"
    );

    // Layer switches: the keyframe each needs is asked of A's publisher across the link.
    let (ws, sub) = &mut subscribers[0];
    for (layer, index) in [("low", 0usize), ("high", 2usize)] {
        ok(
            &ws.request(
                "setPreferredLayer",
                json!({ "producerId": video, "layer": layer }),
            )
            .await,
            "setPreferredLayerResponse",
        );
        let asked = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sub.take_stats().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (rx, _) = sub.take_stats().await.unwrap();
            let layers = layer_counts(&rx);
            let others: u64 = (0..3).filter(|l| *l != index).map(|l| layers[l]).sum();
            if layers[index] > 10 && others == 0 {
                eprintln!(
                    "switched to {layer} through the relay in {:?}",
                    asked.elapsed()
                );
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "no switch to {layer} through the relay: {layers:?}"
            );
        }
    }

    // Publishing happens on the owner: B says where.
    let offer = peer(false)
        .await
        .unwrap()
        .publish_offer(Publish::load(true, false))
        .await
        .unwrap();
    let refused = ws.request("publisherOffer", json!({ "sdp": offer })).await;
    assert_eq!(error_code(&refused), "ROOM_ON_OTHER_NODE");
    assert_eq!(
        refused["data"]["nodeUrl"],
        format!("http://127.0.0.1:{}", a.addr.port())
    );

    // WHEP plays the relayed room on B itself; WHIP is sent to the owner.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (endpoint, direction, status) in [
        ("whep", str0m::media::Direction::RecvOnly, 201),
        ("whip", str0m::media::Direction::SendOnly, 307),
    ] {
        let reply = http
            .post(format!("http://{}/{endpoint}/{room}", b.addr))
            .bearer_auth(token_for(&format!("{endpoint}-user")))
            .header("content-type", "application/sdp")
            .body(http_offer(direction))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), status, "{endpoint} on the relay node");
        if status == 307 {
            assert_eq!(
                reply.headers()["location"].to_str().unwrap(),
                format!("http://127.0.0.1:{}/whip/{room}", a.addr.port())
            );
        } else {
            let answer = reply.text().await.unwrap();
            assert!(
                answer.contains("m=video") && answer.contains("a=sendonly"),
                "{answer}"
            );
        }
    }

    // One room: A's publisher was told of the viewers joining on B.
    let mut seen_on_a = std::collections::HashSet::new();
    while seen_on_a.len() < 4 {
        let joined = publisher_ws
            .notification("participantJoined", Duration::from_secs(5))
            .await;
        seen_on_a.insert(joined["data"]["participant"]["displayName"].to_string());
    }
    // A participant joining on A sees B's viewers, and is announced on B.
    let mut late = client_at(a.addr, "late").await;
    let late_joined = late
        .request("joinRoom", json!({ "roomId": room, "displayName": "Late" }))
        .await;
    let names: Vec<String> = ok(&late_joined, "joinRoomResponse")["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["displayName"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        (0..4).all(|i| names.contains(&format!("Sub {i}"))) && names.contains(&"Pub".to_string()),
        "the owner lists the relay's participants: {names:?}"
    );
    // A producer that starts on A after the relay linked reaches B too, and B's subscribers
    // receive it (the SDP flow subscribes them on their own).
    let late_publisher = Peer::spawn().await;
    late_publisher
        .publish_spec(&mut late, Publish::load(false, false))
        .await
        .unwrap();
    let announced = ws.notification("newProducer", Duration::from_secs(5)).await;
    assert_eq!(
        announced["data"]["producer"]["kind"], "audio",
        "{announced}"
    );
    let consumers_on_b = |status: Value| -> u64 {
        status["perWorker"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["media"]["consumers"].as_u64().unwrap())
            .sum()
    };
    wait_until(
        "B's subscribers consume the late producer",
        Duration::from_secs(5),
        || async { consumers_on_b(status_at(b.addr).await) >= 4 * 3 },
    )
    .await;
    let (ws, _) = &mut subscribers[0];

    // (Earlier ones announced the other subscribers joining on B.)
    loop {
        let joined = ws
            .notification("participantJoined", Duration::from_secs(5))
            .await;
        if joined["data"]["participant"]["displayName"] == "Late" {
            break;
        }
    }

    // And leaving on A is announced on B too.
    ok(
        &late.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
    let left = ws
        .notification("participantLeft", Duration::from_secs(5))
        .await;
    assert!(left["data"]["participantId"].is_string(), "{left}");

    // A dies hard: B's subscribers are told, and their next join finds the room again
    // (taken over by B once A's registry entry expires).
    let mut a = a;
    drop(a.process.take());
    let closed = ws.notification("roomClosed", Duration::from_secs(10)).await;
    eprintln!("told of the dead owner: {closed}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let rejoined = loop {
        let reply = ws
            .request(
                "joinRoom",
                json!({ "roomId": room, "displayName": "Sub 0" }),
            )
            .await;
        if reply["type"] == "joinRoomResponse" {
            break reply;
        }
        let code = error_code(&reply).to_string();
        assert!(
            ["OWNER_UNREACHABLE", "ALREADY_IN_ROOM"].contains(&code.as_str()),
            "{reply}"
        );
        assert!(
            Instant::now() < deadline,
            "the room never came back: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ok(&rejoined, "joinRoomResponse");
    let owner: String = redis::cmd("HGET")
        .arg(format!("sfu:room:{room}"))
        .arg("node")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner, b.id, "B owns the room now");
    assert_eq!(status_at(b.addr).await["cluster"]["relayLinks"], 0);
    // And it works for media as any room of B's.
    let mut p2_ws = client_at(b.addr, "pub2").await;
    ok(
        &p2_ws
            .request("joinRoom", json!({ "roomId": room, "displayName": "Pub2" }))
            .await,
        "joinRoomResponse",
    );
    let publisher2 = Peer::spawn().await;
    publisher2.publish(&mut p2_ws).await;
    let mut s2_ws = client_at(b.addr, "sub-after").await;
    ok(
        &s2_ws
            .request(
                "joinRoom",
                json!({ "roomId": room, "displayName": "After" }),
            )
            .await,
        "joinRoomResponse",
    );
    let subscriber2 = Peer::spawn().await;
    negotiate_subscriber(&mut s2_ws, &subscriber2, 2).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while subscriber2.received().await.len() <= 20 {
        assert!(
            Instant::now() < deadline,
            "no media in the room taken over by B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(b);
}

/// The load runner's relay mode: the room on one node, its subscribers on another; every
/// subscriber receives, and both nodes' CPU is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_runner_measures_a_livestream_relayed_to_another_node() {
    let a = spawn_node("bench-owner", &[]).await;
    let b = spawn_node("bench-relay", &[("RELAY_ROOMS", "true")]).await;
    let pid = |n: &Node| n.process.as_ref().expect("running").child.id();
    let mut config =
        loadrun::BenchConfig::new(format!("http://{}", a.addr), loadrun::Scenario::Livestream);
    config.ramp_per_sec = 50.0;
    config.jwt_secret = Some(common::SECRET.to_string());
    config.subscribers = 6;
    config.layer = loadrun::Layer::High;
    config.duration = Duration::from_secs(2);
    config.settle = Duration::from_millis(300);
    config.ready_timeout = Duration::from_secs(10);
    config.floor_budget = None;
    config.server_pid = Some(pid(&a));
    config.relay_url = Some(format!("http://{}", b.addr));
    config.relay_pid = Some(pid(&b));
    let report = loadrun::run(config).await.expect("bench runs");
    println!("{report:#?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.subscribers_ready, 6);
    assert!(
        report.subscriber_packets.iter().all(|p| *p > 50),
        "every relayed subscriber receives: {:?}",
        report.subscriber_packets
    );
    assert!(report.loss_percent < 2.0, "loss {}", report.loss_percent);
    let relay = report.relay.as_ref().expect("relay node measured");
    assert!(relay.cpu_seconds > 0.0 && relay.cpu_us_per_forwarded_packet.is_some());
    assert!(report.server.is_some());
    let status = status_at(b.addr).await;
    assert!(
        status["cluster"]["datagramsIn"].as_u64().unwrap() > 500,
        "{status}"
    );
    // The runner's subscribers left: the relay ends with the last of them, on both nodes.
    wait_until("the link ends", Duration::from_secs(5), || async {
        status_at(b.addr).await["cluster"]["relayLinks"] == 0
            && status_at(a.addr).await["cluster"]["ownerLinks"] == 0
    })
    .await;
}
