//! Dynacast with str0m peers: when no subscriber needs a simulcast layer, its publisher is
//! told to stop it (`layersWanted`), and to resume it as soon as someone wants it again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The `layersWanted` notifications until one satisfies `done`.
async fn layers_wanted(
    ws: &mut WsClient,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        let n = ws.notification("layersWanted", left).await;
        if done(&n["data"]) {
            return (n["data"].clone(), start.elapsed());
        }
    }
}

fn active(data: &Value, rid: &str) -> bool {
    data["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["rid"] == rid)
        .map(|l| l["active"] == true)
        .unwrap_or_else(|| panic!("layer {rid} missing in {data}"))
}

/// The last five video packets came from the high layer.
fn on_high(received: &[Received]) -> bool {
    let video: Vec<&Received> = received.iter().filter(|p| p.layer != 255).collect();
    video.len() >= 5 && video.iter().rev().take(5).all(|p| p.layer == 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwanted_layers_are_suspended_and_resumed_at_once() {
    let server = start_server().await;
    let mut publisher_ws = joined(&server, "dyn", "pub", true).await;
    let mut sub_ws = joined(&server, "dyn", "sub", false).await;
    let sub = Peer::spawn().await;

    let publisher = Peer::spawn().await;
    let published = publisher.publish(&mut publisher_ws).await;
    let video = published["producers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "video")
        .expect("video producer")["producerId"]
        .as_str()
        .unwrap()
        .to_string();
    negotiate_subscriber(&mut sub_ws, &sub, 2).await;
    wait_until(
        "subscriber on the high layer",
        Duration::from_secs(10),
        || async { on_high(&sub.received().await) },
    )
    .await;

    // The only subscriber takes the low layer: after the hold, medium and high are suspended.
    let reply = sub_ws
        .request(
            "setPreferredLayer",
            json!({ "producerId": video, "layer": "low" }),
        )
        .await;
    ok(&reply, "setPreferredLayerResponse");
    let (data, after) = layers_wanted(&mut publisher_ws, Duration::from_secs(8), |d| {
        !active(d, "f") && !active(d, "h")
    })
    .await;
    assert_eq!(data["producerId"], video.as_str());
    assert!(active(&data, "q"), "the lowest layer stays wanted: {data}");
    assert!(
        after >= Duration::from_secs(2),
        "suspended after the hold, not at once: {after:?}"
    );

    // It asks for high again: resumed without waiting for any hold.
    let reply = sub_ws
        .request(
            "setPreferredLayer",
            json!({ "producerId": video, "layer": "high" }),
        )
        .await;
    ok(&reply, "setPreferredLayerResponse");
    let (data, after) = layers_wanted(&mut publisher_ws, Duration::from_secs(2), |d| {
        active(d, "f")
    })
    .await;
    assert!(after < Duration::from_secs(1), "resumed at once: {after:?}");
    assert!(!active(&data, "h"), "medium stays suspended: {data}");
    wait_until(
        "subscriber back on the high layer",
        Duration::from_secs(5),
        || async { on_high(&sub.received().await) },
    )
    .await;
    server.stop().await;
}
