//! One room across the node's workers (issue 17), with real str0m peers: with two workers a
//! room's subscribers are placed on both, the ones away from the room's worker are fed through
//! an in-process mirror, switch layers across the boundary (their keyframe requests travel
//! back), and everything is counted back to zero when they leave.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use testkit::measure::{Shared, PHASE_MEASURE};

const SUBSCRIBERS: usize = 8;

/// The worker whose UDP port the subscriber offer's candidate names.
fn worker_of(offer: &Value, status: &Value) -> usize {
    let sdp = offer["data"]["sdp"].as_str().expect("offer sdp");
    let port = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.to_ascii_lowercase().contains(" udp "))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no UDP candidate in {sdp}"));
    status["perWorker"]
        .as_array()
        .expect("perWorker")
        .iter()
        .position(|w| {
            w["addr"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
        })
        .unwrap_or_else(|| panic!("port {port} is no worker's: {status}"))
}

fn per_worker(status: &Value, field: &str) -> Vec<u64> {
    status["perWorker"]
        .as_array()
        .expect("perWorker")
        .iter()
        .map(|w| w["media"][field].as_u64().expect(field))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spreads_over_both_workers_and_switches_layers_across_them() {
    // Forwarding across workers, not estimation: layers follow preference only.
    let server = start_server_with(&["--workers", "2", "--bwe-enabled", "false"]).await;
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
    let mut publisher_ws = joined(&server, "spread", "pub", true).await;
    let publisher = peer(false).await.unwrap();
    let published = publisher
        .publish_spec(&mut publisher_ws, Publish::load(true, false))
        .await
        .unwrap();
    let video = video_producer(&published);

    let mut subscribers = Vec::new();
    let status = common::status(&server).await;
    for i in 0..SUBSCRIBERS {
        let mut ws = joined(&server, "spread", &format!("sub{i}"), false).await;
        let sub = peer(true).await.unwrap();
        let offer = negotiate_subscriber(&mut ws, &sub, 2).await;
        let worker = worker_of(&offer, &status);
        subscribers.push((ws, sub, worker));
    }
    let status = common::status(&server).await;
    let consumers = per_worker(&status, "consumers");
    let mirrors = per_worker(&status, "mirrors");
    eprintln!("consumers per worker {consumers:?}, mirrors {mirrors:?}");
    assert!(
        consumers.iter().all(|c| *c >= 4),
        "subscribers on both workers: {consumers:?}"
    );
    let home = per_worker(&status, "producers")
        .iter()
        .position(|p| *p == 2)
        .expect("the publisher's worker");
    let away = 1 - home;
    assert_eq!(mirrors[away], 2, "audio and video mirrored: {status}");
    assert_eq!(mirrors[home], 0);

    // Continuous media on both sides of the boundary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, sub, _) in &subscribers {
        sub.take_stats().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, sub, worker) in &subscribers {
        let (rx, _) = sub.take_stats().await.unwrap();
        let video: u64 = rx.layer_packets[..3].iter().sum();
        assert!(
            video > 50 && rx.layer_packets[3] > 50,
            "subscriber on worker {worker}: {:?}",
            rx.layer_packets
        );
        let (mut expected, mut received) = (0, 0);
        for stream in rx.streams.values() {
            expected += stream.expected();
            received += stream.received;
        }
        assert!(
            received as f64 >= expected as f64 * 0.98,
            "loss on worker {worker}: {received}/{expected}"
        );
    }
    let relayed = per_worker(&common::status(&server).await, "relayPacketsIn")[away];
    assert!(relayed > 100, "packets relayed to worker {away}: {relayed}");

    // A subscriber away from the room's worker switches to the low layer and back: each switch
    // needs a keyframe, asked for across the boundary.
    let (ws, sub, _) = subscribers
        .iter_mut()
        .find(|(_, _, w)| *w == away)
        .expect("a subscriber on the other worker");
    for (layer, index) in [("low", 0usize), ("high", 2usize)] {
        let reply = ws
            .request(
                "setPreferredLayer",
                json!({ "producerId": video, "layer": layer }),
            )
            .await;
        ok(&reply, "setPreferredLayerResponse");
        let asked = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sub.take_stats().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (rx, _) = sub.take_stats().await.unwrap();
            let others: u64 = (0..3)
                .filter(|l| *l != index)
                .map(|l| rx.layer_packets[l])
                .sum();
            if rx.layer_packets[index] > 10 && others == 0 {
                eprintln!("switched to {layer} in {:?}", asked.elapsed());
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "no switch to {layer} across workers: {:?}",
                rx.layer_packets
            );
        }
    }

    // Everyone leaves: consumers go at once, mirrors after their linger, and nothing is
    // relayed any more.
    for (ws, _, _) in subscribers.iter_mut() {
        ok(
            &ws.request("leaveRoom", json!({})).await,
            "leaveRoomResponse",
        );
    }
    let status = common::status(&server).await;
    assert_eq!(per_worker(&status, "consumers")[away], 0, "{status}");
    wait_until("mirrors retired", Duration::from_secs(10), || async {
        per_worker(&common::status(&server).await, "mirrors")[away] == 0
    })
    .await;
    let before = per_worker(&common::status(&server).await, "relayPacketsOut")[home];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = per_worker(&common::status(&server).await, "relayPacketsOut")[home];
    assert_eq!(before, after, "still relaying after the mirrors went");
    ok(
        &publisher_ws.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
    let stats = server.ctx.media.stats().await;
    assert_eq!(
        (
            stats.transports,
            stats.producers,
            stats.consumers,
            stats.mirrors
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    server.stop().await;
}
