//! Headless Chromium against the real server. The browser side lives in tests/browser/*.mjs;
//! `tests/run.sh` installs Chromium and its npm packages.
//!
//! - simulcast.mjs: page A publishes 1280x720 simulcast, page B subscribes, decodes, switches
//!   layers.
//! - webtransport.mjs wt: both pages signal over WebTransport (serverCertificateHashes), media
//!   flows, and B survives a signaling drop by resuming.
//! - webtransport.mjs fallback: the advertised WebTransport port is unreachable; the pages fall
//!   back to WebSocket and media flows.
//! - codecs.mjs <codec>: page A publishes simulcast forced to one codec (setCodecPreferences),
//!   page B decodes it as that codec and switches layers; once per VP8, VP9, H264, AV1.

mod common;

use std::time::Duration;

/// Run one browser script against `server`; it prints `N passed, M failed` and exits 0 on success.
/// One browser script at a time: two of them (four Chromium pages encoding 720p simulcast) on
/// two cores starve each other, and the SFU's bandwidth estimator rightly reads that as
/// queueing delay and steps subscribers down, which is not what these tests are about.
static ONE_BROWSER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_script(server: &sfu::ServerHandle, script: &str, args: &[&str]) {
    let _turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let url = format!("http://{}", server.http_addr);
    let (status, stdout) = common::run_browser_script(
        script,
        std::iter::once(url.as_str()).chain(args.iter().copied()),
        Duration::from_secs(150),
    )
    .await;
    let stats = server.ctx.media.stats().await;
    println!("server media stats: {stats:?}");
    assert!(status.success(), "{script} {args:?} failed (output above)");
    assert!(stdout.contains(" passed, 0 failed"), "no summary line");
    // Forwarded to its own subscribers, or handed to another worker or node that serves them.
    assert!(stats.rtp_packets_forwarded > 0 || stats.relay_packets_out > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_simulcast_and_subscriber_switches_layers() {
    let server = common::start_server().await;
    run_script(&server, "simulcast.mjs", &[]).await;
    server.stop().await;
}

/// Join → first remote video frame in the demo, publisher already live (issue 16's goal is
/// 250 ms; the bound here is what a loaded two-core CI machine keeps, the figure is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_join_to_first_remote_frame_is_quick() {
    let server = common::start_server().await;
    run_script(&server, "join_latency.mjs", &["1000"]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_signals_over_webtransport_and_resumes_after_a_drop() {
    let server = common::start_server().await;
    run_script(&server, "webtransport.mjs", &["wt"]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_falls_back_to_websocket_when_webtransport_is_unreachable() {
    // Advertise a WebTransport URL where nothing listens.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let public_url = format!("--webtransport-public-url=https://127.0.0.1:{port}/wt");
    let server = common::start_server_with(&[&public_url]).await;
    run_script(&server, "webtransport.mjs", &["fallback"]).await;
    server.stop().await;
}

/// Every video codec Chromium can send, one after another (each run encodes three layers, so
/// they must not overlap on a 2-core machine). Debian Chromium 156 lists VP8, VP9, H264
/// (OpenH264) and AV1 (libaom) in `RTCRtpSender.getCapabilities` and simulcasts all four; a
/// codec a future build cannot send makes its run prove the demo refuses it (`# CANNOT ENCODE`
/// in the output) instead of failing here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sends_each_video_codec_and_subscriber_decodes_and_switches_layers() {
    let server = common::start_server().await;
    for codec in ["vp8", "vp9", "h264", "av1"] {
        println!("===== {codec} =====");
        run_script(&server, "codecs.mjs", &[codec]).await;
    }
    server.stop().await;
}

/// Two in-process nodes sharing the machine's Redis: page A creates the room on node 1, page B
/// opens the demo on node 2, is redirected to node 1 and receives A's simulcast there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_follows_a_room_redirect_to_the_owning_node() {
    let redis = "--redis-url=redis://127.0.0.1:6379";
    // The redirect is under test, not estimation: a CPU-starved estimator held B's top layer
    // back here once (issue 13's open instability), so the owner runs without BWE.
    let no_bwe = "--bwe-enabled=false";
    let node1 = common::start_server_with(&[redis, "--node-id=browser-node-1", no_bwe]).await;
    let node2 = common::start_server_with(&[redis, "--node-id=browser-node-2", no_bwe]).await;
    let page_b = format!("http://{}", node2.http_addr);
    run_script(&node1, "simulcast.mjs", &[&page_b, "publisher", "no-bwe"]).await;
    assert_eq!(
        node2.ctx.rooms.counts().rooms,
        0,
        "node 2 redirected instead of hosting the room"
    );
    node1.stop().await;
    node2.stop().await;
}

/// One room over two nodes: Alice publishes on node 1 (the owner); Bob opens the demo on
/// node 2, which relays the room (RELAY_ROOMS) instead of redirecting him, and decodes her
/// simulcast video and audio there, switching layers (keyframes and dynacast across the
/// node link). A publishing page on node 2 would be sent to the owner (`relayedFrom`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_watches_a_room_relayed_from_its_owner_node() {
    let redis = "--redis-url=redis://127.0.0.1:6379";
    let owner = common::start_server_with(&[redis, "--node-id=browser-owner"]).await;
    // Relaying, not estimation: without BWE on the relay, a CPU-starved estimator cannot hold
    // Bob's top layer back (layers follow his preference only).
    let relay = common::start_server_with(&[
        redis,
        "--node-id=browser-relay",
        "--relay-rooms=true",
        "--bwe-enabled=false",
    ])
    .await;
    let page_b = format!("http://{}", relay.http_addr);
    run_script(&owner, "simulcast.mjs", &[&page_b, "viewer", "no-bwe"]).await;
    let stats = relay.ctx.cluster.as_ref().expect("node links").stats();
    assert!(
        stats.datagrams_in > 100,
        "media came over the link: {stats:?}"
    );
    owner.stop().await;
    relay.stop().await;
}

/// Unmodified mediasoup-client (bundled at test time with esbuild) against the ORTC messages:
/// A produces audio + 3-layer simulcast, B consumes and decodes, then
/// setConsumerPreferredLayers(0) lowers B's decoded width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mediasoup_client_produces_and_consumes_simulcast() {
    let server = common::start_server().await;
    run_script(&server, "mediasoup.mjs", &[]).await;
    server.stop().await;
}

/// WHIP publish from page A, WHEP play on page B (plain RTCPeerConnection): B decodes; another
/// user's DELETE is refused; the owner's DELETE ends the publish and B's tracks end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publish_and_whep_playback_in_chromium() {
    // WHIP/WHEP semantics, not estimation: with BWE a CPU-starved estimator once paused B's
    // video mid-test (issue 13's open instability).
    let server = common::start_server_with(&["--bwe-enabled", "false"]).await;
    run_script(&server, "whip_whep.mjs", &[]).await;
    server.stop().await;
}

/// Media over WebTransport (WebCodecs): a WebTransport publisher decoded by a WebRTC page and
/// a WebTransport page, a WebRTC publisher decoded by the WebTransport page, audio both ways,
/// a layer switch on the WebTransport subscriber (tests/browser/wt_media.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sends_and_receives_media_over_webtransport_bridged_with_webrtc() {
    let server = common::start_server().await;
    run_script(&server, "wt_media.mjs", &[]).await;
    let stats = server.ctx.media.stats().await;
    assert!(stats.frames_in > 0 && stats.frames_out > 0, "{stats:?}");
    server.stop().await;
}
