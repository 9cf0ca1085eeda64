//! Bandwidth estimation end to end with real str0m peers, no browser: one subscriber's downlink
//! goes through a bottleneck the test controls ([`testkit::shaper::Shaper`]: a rate and a
//! bounded queue, like `tc tbf`), another's is plain loopback. The publisher sends stamped,
//! realistically sized 3-layer VP8 simulcast (150 k / 500 k / 1.5 Mbit/s) and Opus.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use testkit::measure::{RxStats, Shared, PHASE_MEASURE};
use testkit::payload::AUDIO_LAYER;
use testkit::shaper::Shaper;

const LOW: usize = 0;
const HIGH: usize = 2;

/// What a subscriber received over one window.
struct Window {
    /// Video packets per layer (low, medium, high), audio packets.
    layers: [u64; 4],
    video_loss: f64,
    audio_lost: u64,
}

impl Window {
    fn of(rx: &RxStats) -> Self {
        let (mut video_expected, mut video_lost, mut audio_lost) = (0, 0, 0);
        for ((_, layer), stream) in &rx.streams {
            let lost = stream.expected().saturating_sub(stream.received);
            if *layer == AUDIO_LAYER {
                audio_lost += lost;
            } else {
                video_expected += stream.expected();
                video_lost += lost;
            }
        }
        Window {
            layers: rx.layer_packets,
            video_loss: video_lost as f64 / video_expected.max(1) as f64,
            audio_lost,
        }
    }

    fn video(&self) -> u64 {
        self.layers[..3].iter().sum()
    }

    /// The layer most video packets came from.
    fn dominant(&self) -> Option<usize> {
        (self.video() > 0).then(|| (0..3).max_by_key(|l| self.layers[*l]).unwrap_or(0))
    }
}

/// Counters every peer of a test adds to, measuring from the start.
fn measuring() -> Arc<Shared> {
    let shared = Shared::new();
    shared.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    shared
}

/// A str0m peer that stamps what it sends and measures what it receives.
async fn load_peer(shared: &Arc<Shared>, subscriber: bool) -> anyhow::Result<Peer> {
    Peer::spawn_opts(PeerOptions::load(
        [127, 0, 0, 1].into(),
        Arc::clone(shared),
        subscriber,
    ))
    .await
}

async fn window(peer: &Peer, length: Duration) -> Window {
    peer.take_stats().await.expect("peer alive");
    tokio::time::sleep(length).await;
    Window::of(&peer.take_stats().await.expect("peer alive").0)
}

/// Windows of `length` until `done` holds for one; panics after `limit`.
async fn until(
    what: &str,
    peer: &Peer,
    limit: Duration,
    done: impl Fn(&Window) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let w = window(peer, Duration::from_millis(500)).await;
        if done(&w) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not reached within {limit:?}; last window: layers {:?}, video loss {:.3}",
            w.layers,
            w.video_loss
        );
    }
}

async fn set_link(peer: &Peer, rate_bps: u64) {
    peer.with(move |s| s.downlink.as_mut().expect("shaped").set_rate(rate_bps))
        .await;
}

// Tracks issue 13 with bwe_browser.rs (media/core/link_estimate.rs holds the loss cap, its
// step-down, the clean floor and the stall restart). In the suite since the step-down and no
// probing under a loss cap: 6 of 6 runs of this file passed on the 2026-12-03 machine, paused
// 1.4-2.4 s after the cut, back on top 4.0-7.0 s after the raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_gets_what_its_own_link_carries() {
    let server = start_server_with(&["--bwe-enabled", "true"]).await;
    let shared = measuring();
    let load_peer = |subscriber| load_peer(&shared, subscriber);

    let mut publisher_ws = joined(&server, "bwe", "pub", true).await;
    let mut thin_ws = joined(&server, "bwe", "thin", false).await;
    let mut wide_ws = joined(&server, "bwe", "wide", false).await;
    let thin = load_peer(true).await.unwrap();
    // 700 kbit/s with 100 ms of queue, from the very first packet.
    thin.with(|s| s.downlink = Some(Shaper::new(700_000, Duration::from_millis(100))))
        .await;
    let wide = load_peer(true).await.unwrap();

    let publisher = load_peer(false).await.unwrap();
    publisher
        .publish_spec(&mut publisher_ws, Publish::load(true, false))
        .await
        .expect("publish");
    negotiate_subscriber(&mut thin_ws, &thin, 2).await;
    negotiate_subscriber(&mut wide_ws, &wide, 2).await;

    // 700 kbit/s: settles below the top layer and then plays cleanly.
    let settled = until(
        "thin link settled below the top layer",
        &thin,
        Duration::from_secs(8),
        |w| w.video() > 0 && w.layers[HIGH] == 0 && w.video_loss < 0.02,
    )
    .await;
    for _ in 0..5 {
        let w = window(&thin, Duration::from_secs(1)).await;

        assert_eq!(
            w.layers[HIGH], 0,
            "top layer on a 700 kbit/s link: {:?}",
            w.layers
        );
        assert!(w.video() >= 25, "video keeps flowing: {:?}", w.layers);
        assert!(
            w.video_loss < 0.02,
            "loss {:.3} on the thin link",
            w.video_loss
        );
    }
    // The unshaped subscriber climbs to (and stays on) the top layer meanwhile.
    let wide_top = until(
        "wide link on the top layer",
        &wide,
        Duration::from_secs(15),
        |w| w.dominant() == Some(HIGH),
    )
    .await;

    // Link raised: back on the top layer.
    set_link(&thin, 20_000_000).await;
    let recovered = until(
        "thin link back on the top layer",
        &thin,
        Duration::from_secs(15),
        |w| w.dominant() == Some(HIGH) && w.video_loss < 0.02,
    )
    .await;

    // 150 kbit/s: video is paused and announced, audio keeps flowing without loss.
    thin_ws.backlog.clear();
    set_link(&thin, 150_000).await;
    let cut = Instant::now();
    let paused = loop {
        let left = Duration::from_secs(6).saturating_sub(cut.elapsed());
        let changed = thin_ws.notification("layerChanged", left).await;
        if changed["data"]["paused"] == true {
            break changed;
        }
    };
    let paused_after = cut.elapsed();
    assert_eq!(paused["data"]["paused"], true, "{paused}");
    assert_eq!(paused["data"]["reason"], "bandwidth", "{paused}");
    assert!(paused["data"]["layer"].is_null(), "{paused}");
    // Media already paced into str0m's queue before the pause still drains at the estimate.
    let drained = until(
        "video drained after the pause",
        &thin,
        Duration::from_secs(5),
        |w| w.video() == 0,
    )
    .await;
    // The link's queue empties of what was sent before the pause; then the steady state.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..2 {
        let w = window(&thin, Duration::from_secs(1)).await;
        // At most a straggler that str0m had already paced before the pause (its resend
        // buffer is emptied at the pause, so old frames are not retransmitted).
        assert!(w.video() <= 2, "video while paused: {:?}", w.layers);
        assert!(w.layers[3] >= 40, "audio keeps flowing: {:?}", w.layers);
        assert_eq!(w.audio_lost, 0, "audio lost while video is paused");
    }
    let wide_now = window(&wide, Duration::from_secs(1)).await;
    assert_eq!(
        wide_now.dominant(),
        Some(HIGH),
        "wide link: {:?}",
        wide_now.layers
    );
    assert!(
        wide_now.layers[LOW] == 0,
        "wide link dropped: {:?}",
        wide_now.layers
    );

    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "sfu_bwe_estimate_bps_bucket",
        "sfu_bwe_allocation_changes_total{reason=\"congestion\"}",
        "sfu_bwe_paused_tracks 1",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    eprintln!(
        "thin link: settled in {settled:?}, recovered in {recovered:?}, paused in {paused_after:?} \
         (drained {drained:?} later); \
         wide link on top in {wide_top:?}"
    );
}

/// Video packets per layer (low, medium, high) of each mid over one window.
async fn layers_by_mid(peer: &Peer, length: Duration) -> HashMap<String, [u64; 3]> {
    peer.take_stats().await.expect("peer alive");
    tokio::time::sleep(length).await;
    let (rx, _) = peer.take_stats().await.expect("peer alive");
    let mut out: HashMap<String, [u64; 3]> = HashMap::new();
    for ((mid, layer), stream) in &rx.streams {
        if usize::from(*layer) < 3 {
            out.entry(mid.to_string()).or_default()[usize::from(*layer)] += stream.received;
        }
    }
    out
}

/// One second of the two pictures' video packets per layer: (A's, B's).
async fn picture_layers(peer: &Peer, a_mid: &str, b_mid: &str) -> ([u64; 3], [u64; 3]) {
    let w = layers_by_mid(peer, Duration::from_secs(1)).await;
    (
        w.get(a_mid).copied().unwrap_or_default(),
        w.get(b_mid).copied().unwrap_or_default(),
    )
}

/// The mid on which the subscriber receives `producer` (from its latest offer).
fn mid_of(offer: &serde_json::Value, producer: &str) -> String {
    offer["data"]["tracks"]
        .as_array()
        .and_then(|tracks| tracks.iter().find(|t| t["producerId"] == producer))
        .and_then(|t| t["mid"].as_str())
        .unwrap_or_else(|| panic!("{producer} not in {offer}"))
        .to_string()
}

/// A link with room for one of two pictures on the middle layer: the one the subscriber pins
/// (`setConsumerPriority`) gets it. The subscriber hears its estimate (`bandwidthEstimate`)
/// and `/status` shows the room's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_picture_is_served_first_and_the_estimate_is_reported() {
    let server = start_server_with(&["--bwe-enabled", "true"]).await;
    let shared = measuring();
    let load_peer = |subscriber| load_peer(&shared, subscriber);
    let mut a_ws = joined(&server, "pin", "a", true).await;
    let mut b_ws = joined(&server, "pin", "b", false).await;
    let mut viewer_ws = joined(&server, "pin", "viewer", false).await;
    let viewer = load_peer(true).await.unwrap();
    // Audio ~2 × 50 k, two low layers 2 × 150 k, one climb to the middle layer +350 k (with
    // the allocator's 1.25 margin): about 840 k for one medium picture, 1.3 M for two.
    viewer
        .with(|s| s.downlink = Some(Shaper::new(1_150_000, Duration::from_millis(100))))
        .await;
    let a = load_peer(false).await.unwrap();
    let b = load_peer(false).await.unwrap();
    let a_video = video_producer(
        &a.publish_spec(&mut a_ws, Publish::load(true, false))
            .await
            .unwrap(),
    );
    let b_video = video_producer(
        &b.publish_spec(&mut b_ws, Publish::load(true, false))
            .await
            .unwrap(),
    );
    let offer = negotiate_subscriber(&mut viewer_ws, &viewer, 4).await;
    let (a_mid, b_mid) = (mid_of(&offer, &a_video), mid_of(&offer, &b_video));

    // The estimate reaches the subscriber.
    let estimate = viewer_ws
        .notification("bandwidthEstimate", Duration::from_secs(10))
        .await;
    let bps = estimate["data"]["estimateBps"]
        .as_u64()
        .expect("estimateBps");
    assert!((50_000..20_000_000).contains(&bps), "{estimate}");

    // Bad rankings are refused with a code, and change nothing.
    for (data, code) in [
        (
            serde_json::json!({ "producerId": b_video, "priority": 0 }),
            "INVALID_PAYLOAD",
        ),
        (
            serde_json::json!({ "producerId": b_video, "priority": 256 }),
            "INVALID_PAYLOAD",
        ),
        (serde_json::json!({ "priority": 3 }), "INVALID_PAYLOAD"),
        (
            serde_json::json!({ "producerId": b_video, "consumerId": "c", "priority": 3 }),
            "INVALID_PAYLOAD",
        ),
        (
            serde_json::json!({ "producerId": uuid::Uuid::new_v4().to_string(), "priority": 3 }),
            "CONSUMER_NOT_FOUND",
        ),
        (
            serde_json::json!({ "producerId": "not-a-uuid", "priority": 3 }),
            "CONSUMER_NOT_FOUND",
        ),
    ] {
        let reply = viewer_ws.request("setConsumerPriority", data.clone()).await;
        assert_eq!(
            testkit::signal::error_code(&reply),
            code,
            "{data} -> {reply}"
        );
    }

    // Unpinned, the two rank equal and the first subscribed (A) climbs first.
    let started = Instant::now();
    loop {
        let (a, b) = picture_layers(&viewer, &a_mid, &b_mid).await;
        if a[1] + a[2] > 0 && b[1] + b[2] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A never climbed before the pin: A {a:?}, B {b:?}"
        );
    }

    // Pin B: B climbs instead, and from then on A stays on the low layer. (On this link a
    // climb may be undone by the next keyframe's burst and retried; what matters is who.)
    let reply = viewer_ws
        .request(
            "setConsumerPriority",
            serde_json::json!({ "producerId": b_video, "priority": 255 }),
        )
        .await;
    assert_eq!(reply["type"], "setConsumerPriorityResponse", "{reply}");
    assert_eq!(reply["data"]["priority"], 255, "{reply}");
    let pinned = Instant::now();
    loop {
        let (a, b) = picture_layers(&viewer, &a_mid, &b_mid).await;
        if b[1] + b[2] > 0 && a[1] + a[2] == 0 {
            break;
        }
        assert!(
            pinned.elapsed() < Duration::from_secs(12),
            "the pinned picture did not take the climb: A {a:?}, B {b:?}"
        );
    }
    let took = pinned.elapsed();
    let (mut a_total, mut b_total) = ([0u64; 3], [0u64; 3]);
    for _ in 0..6 {
        let (a, b) = picture_layers(&viewer, &a_mid, &b_mid).await;
        for (total, layers) in [(&mut a_total, a), (&mut b_total, b)] {
            for (t, l) in total.iter_mut().zip(layers) {
                *t += l;
            }
        }
    }
    eprintln!(
        "pinned B took the climb in {took:?}; the next 6 s: A {a_total:?}, B {b_total:?} \
         (low, medium, high)"
    );
    assert_eq!(
        a_total[1] + a_total[2],
        0,
        "the unpinned picture climbed: A {a_total:?}, B {b_total:?}"
    );

    // `/status` carries the room's estimates.
    let status = common::status(&server).await;
    let room = &status["bandwidth"]["pin"];
    assert!(room["subscribersEstimated"].as_u64() >= Some(1), "{status}");
    assert!(
        room["estimateBpsMin"].as_u64() <= room["estimateBpsMax"].as_u64(),
        "{room}"
    );
    // On a dip the unpinned picture is the one paused, so 0 or 1.
    assert!(room["pausedTracks"].as_u64() <= Some(1), "{room}");
    eprintln!("first estimate {bps} bit/s; room: {room}");
}
