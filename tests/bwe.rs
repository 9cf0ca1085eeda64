//! Bandwidth estimation end to end with real str0m peers, no browser: one subscriber's downlink
//! goes through a bottleneck the test controls ([`testkit::shaper::Shaper`]: a rate and a
//! bounded queue, like `tc tbf`), another's is plain loopback. The publisher sends stamped,
//! realistically sized 3-layer VP8 simulcast (150 k / 500 k / 1.5 Mbit/s) and Opus.

mod common;

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

// Tracks issue 13 with bwe_browser.rs: on this 2-core machine about one run in four fails,
// either the unshaped subscriber dips to the middle layer (GCC on loopback reads CPU
// starvation as queueing delay) or one audio packet is lost at 150 kbit/s while video is
// paused. Run it with `cargo test --test bwe -- --ignored --nocapture`.
#[ignore = "BWE is opt-in and not steady enough yet (issue 13); run with --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_gets_what_its_own_link_carries() {
    let server = start_server_with(&["--bwe-enabled", "true"]).await;
    let shared = Shared::new();
    shared.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    let load_peer = |subscriber| {
        Peer::spawn_opts(PeerOptions::load(
            [127, 0, 0, 1].into(),
            Arc::clone(&shared),
            subscriber,
        ))
    };

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
