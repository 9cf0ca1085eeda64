//! End-to-end forwarding with real str0m peers over UDP (no browser): one publisher sends
//! synthetic Opus and 3-layer VP8 simulcast, two subscribers receive through the SFU.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Joins `room` and returns the signaling client with its subscriber peer.
async fn join(server: &sfu::ServerHandle, room: &str, name: &str) -> (WsClient, Peer) {
    (joined(server, room, name, false).await, Peer::spawn().await)
}

/// Received video packets of one mid, in arrival order.
fn video_of(received: &[Received], mid: &str) -> Vec<Received> {
    received
        .iter()
        .filter(|r| r.mid.to_string() == mid && r.layer != 255)
        .cloned()
        .collect()
}

/// The mid of the video track in a `subscriberOffer`.
fn video_mid_of(offer: &serde_json::Value) -> String {
    offer["data"]["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "video")
        .unwrap()["mid"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_forwarding_switches_layers_at_keyframes_with_continuous_sequence_numbers() {
    let server = start_server().await;

    let mut publisher_ws = WsClient::connect(server.http_addr).await;
    let reply = publisher_ws
        .join(&token(&server, "pub"), "fwd", "Pub", true)
        .await;

    let (mut sub1_ws, sub1) = join(&server, "fwd", "sub1").await;
    let (mut sub2_ws, sub2) = join(&server, "fwd", "sub2").await;

    let publisher = Peer::spawn().await;
    let published = publisher.publish(&mut publisher_ws).await;
    let producers = published["producers"].as_array().unwrap();
    assert_eq!(producers.len(), 2, "audio and video producers: {published}");
    let video_producer = producers
        .iter()
        .find(|p| p["kind"] == "video")
        .expect("video producer");
    assert_eq!(video_producer["layers"], json!(["q", "h", "f"]));
    let video_producer_id = video_producer["producerId"].as_str().unwrap().to_string();

    // Both subscribers are told and get an offer carrying both tracks.
    for ws in [&mut sub1_ws, &mut sub2_ws] {
        let n = ws.notification("newProducer", Duration::from_secs(5)).await;
        assert_eq!(
            n["data"]["producer"]["participantId"],
            reply["data"]["participantId"]
        );
    }
    let offer1 = negotiate_subscriber(&mut sub1_ws, &sub1, 2).await;
    let offer2 = negotiate_subscriber(&mut sub2_ws, &sub2, 2).await;
    // Each subscriber transport has its own mids.
    let (video_mid, video_mid2) = (video_mid_of(&offer1), video_mid_of(&offer2));

    wait_until("publisher connected", Duration::from_secs(10), || {
        publisher.connected()
    })
    .await;
    // Auto reaches the highest layer (the bandwidth allocator may start one lower and climb once
    // the estimate allows); both subscribers receive it, plus audio.
    for sub in [&sub1, &sub2] {
        wait_until(
            "high layer and audio at subscriber",
            Duration::from_secs(10),
            || async {
                let r = sub.received().await;
                r.iter().any(|p| p.layer == 2) && r.iter().any(|p| p.layer == 255)
            },
        )
        .await;
    }

    // sub1 switches high → low → high.
    for (layer, index) in [("low", 0u8), ("high", 2u8)] {
        let reply = sub1_ws
            .request(
                "setPreferredLayer",
                json!({ "producerId": video_producer_id, "layer": layer }),
            )
            .await;
        ok(&reply, "setPreferredLayerResponse");
        // The video's switch (audio and the bandwidth allocator's start-up switches may
        // have been announced before it).
        let asked = std::time::Instant::now();
        loop {
            let left = Duration::from_secs(5).saturating_sub(asked.elapsed());
            let changed = sub1_ws.notification("layerChanged", left).await;
            if changed["data"]["producerId"] == video_producer_id.as_str()
                && changed["data"]["layer"] == layer
            {
                break;
            }
        }
        wait_until("switched layer flowing", Duration::from_secs(5), || async {
            let v = video_of(&sub1.received().await, &video_mid);
            v.iter().rev().take(5).filter(|p| p.layer == index).count() == 5
        })
        .await;
    }

    let video = video_of(&sub1.received().await, &video_mid);
    // Each switch waits only for its keyframe (the synthetic publisher answers PLIs at once),
    // so the whole sequence is about half a second of video: enough to check continuity.
    assert!(video.len() > 20, "too few video packets: {}", video.len());
    assert!(video[0].keyframe, "stream must start with a keyframe");
    let mut runs = vec![video[0].layer];
    for pair in video.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.seq, a.seq + 1, "sequence gap between {a:?} and {b:?}");
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) < 90_000,
            "timestamp jump {a:?} {b:?}"
        );
        if a.layer != b.layer {
            runs.push(b.layer);
            assert!(
                b.keyframe,
                "switch to layer {} not at a keyframe: {b:?}",
                b.layer
            );
        }
    }
    // high→low→high, after a start-up that only climbs: a new subscriber starts on the
    // lowest layer's keyframe (fast start), moves to where the allocator's first estimate puts
    // it (medium at 1 Mbit/s) and climbs from there.
    let start_up = &runs[..runs.len().saturating_sub(3)];
    assert!(
        runs.ends_with(&[2, 0, 2]) && start_up.windows(2).all(|w| w[0] < w[1]),
        "expected (climbing start-up →) high → low → high, got layers {runs:?}"
    );
    // The publisher was asked for keyframes (initial + each switch), and only on real layers.
    let requests = publisher.with(|s| s.keyframe_requests.clone()).await;
    assert!(requests
        .iter()
        .any(|r| r.map(|r| r.to_string()) == Some("q".into())));

    // A subscriber's PLI reaches the publisher as a keyframe request on the forwarded layer.
    tokio::time::sleep(Duration::from_millis(400)).await; // past the per-layer rate limit
    let high_requests = |r: &Vec<Option<str0m::media::Rid>>| {
        r.iter()
            .filter(|r| r.map(|r| r.to_string()) == Some("f".into()))
            .count()
    };
    let before = high_requests(&publisher.with(|s| s.keyframe_requests.clone()).await);
    let mid = video_mid2.clone();
    sub2.with(move |s| {
        let mid: str0m::media::Mid = mid.as_str().into();
        s.rtc
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .expect("subscriber receive stream")
            .request_keyframe(str0m::media::KeyframeRequestKind::Pli);
    })
    .await;
    wait_until(
        "subscriber PLI forwarded to publisher",
        Duration::from_secs(5),
        || async { high_requests(&publisher.with(|s| s.keyframe_requests.clone()).await) > before },
    )
    .await;

    // sub2 never asked for a layer: its start-up only climbed, and once on the high layer it
    // stayed there.
    let video2 = video_of(&sub2.received().await, &video_mid2);
    let reached_high = video2
        .iter()
        .position(|p| p.layer == 2)
        .expect("sub2 reached the high layer");
    assert!(video2[reached_high..].iter().all(|p| p.layer == 2));
    assert!(video2[..reached_high]
        .windows(2)
        .all(|w| w[0].layer <= w[1].layer));

    // Leaving cleans up: all transports, producers and consumers are gone.
    let stats = server.ctx.media.stats().await;
    assert_eq!((stats.producers, stats.consumers), (2, 4), "{stats:?}");
    assert!(stats.rtp_packets_forwarded > 0);
    for ws in [&mut publisher_ws, &mut sub1_ws, &mut sub2_ws] {
        ok(
            &ws.request("leaveRoom", json!({})).await,
            "leaveRoomResponse",
        );
    }
    let stats = server.ctx.media.stats().await;
    assert_eq!(
        (stats.transports, stats.producers, stats.consumers),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(server.ctx.rooms.counts().rooms, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_disconnect_closes_its_producers_for_others() {
    let server = start_server().await;
    let mut a = WsClient::connect(server.http_addr).await;
    a.join(&token(&server, "a"), "gone", "A", true).await;
    let (mut b, b_peer) = join(&server, "gone", "b").await;
    let publisher = Peer::spawn().await;
    publisher.publish(&mut a).await;
    b.notification("newProducer", Duration::from_secs(5)).await;
    negotiate_subscriber(&mut b, &b_peer, 2).await;
    wait_until("b receives A", Duration::from_secs(10), || async {
        b_peer.received().await.len() > 10
    })
    .await;

    // A's signaling connection drops without leaveRoom: after the grace period B is told,
    // and state is cleaned.
    drop(a);
    let closed = b
        .notification("producerClosed", Duration::from_secs(5))
        .await;
    assert!(closed["data"]["producerId"].is_string());
    b.notification("participantLeft", Duration::from_secs(5))
        .await;
    // Others are told first; the worker drops the transports right after.
    wait_until("A's producers gone", Duration::from_secs(5), || async {
        server.ctx.media.stats().await.producers == 0
    })
    .await;

    // B's re-offer keeps the dead m-lines in the BUNDLE as inactive: a browser would tear the
    // whole transport down if every m-line were stopped (port 0), and B could never receive again.
    let offer = b
        .notification("subscriberOffer", Duration::from_secs(5))
        .await;
    assert_eq!(offer["data"]["tracks"], json!([]));
    let sdp = offer["data"]["sdp"].as_str().unwrap();
    assert!(
        !sdp.contains("m=audio 0 ") && !sdp.contains("m=video 0 "),
        "{sdp}"
    );
    assert_eq!(sdp.matches("a=inactive").count(), 2, "{sdp}");
    b_peer.answer_subscriber_offer(&mut b, &offer).await;

    // And B still receives the next publisher on the same transport.
    let before = b_peer.received().await.len();
    let (mut c, _) = join(&server, "gone", "c").await;
    let c_peer = Peer::spawn().await;
    c_peer.publish(&mut c).await;
    negotiate_subscriber(&mut b, &b_peer, 2).await;
    wait_until(
        "b receives C on the same transport",
        Duration::from_secs(10),
        || async { b_peer.received().await.len() > before + 10 },
    )
    .await;
    server.stop().await;
}

/// A subscriber that loses every 7th video packet still gets every one: its NACKs are
/// answered from the SFU's resend cache over RTX. Run with the estimator off (packets leave
/// through `send_rtp_now`'s direct path, which must fill the cache) and on (str0m's pacer
/// sends them).
/// A room with one publisher live and one subscriber receiving its video: the server, both
/// signaling clients and peers (kept alive by the caller), and the subscriber's video mid.
struct VideoRoom {
    server: sfu::ServerHandle,
    _publisher: (WsClient, Peer),
    _sub_ws: WsClient,
    sub: Peer,
    video_mid: String,
}

async fn room_with_video(extra: &[&str], room: &str) -> VideoRoom {
    let server = start_server_with(extra).await;
    let mut publisher_ws = WsClient::connect(server.http_addr).await;
    publisher_ws
        .join(&token(&server, "pub"), room, "Pub", true)
        .await;
    let (mut sub_ws, sub) = join(&server, room, "sub").await;
    let publisher = Peer::spawn().await;
    publisher.publish(&mut publisher_ws).await;
    let offer = negotiate_subscriber(&mut sub_ws, &sub, 2).await;
    let video_mid = video_mid_of(&offer);
    wait_until("video at subscriber", Duration::from_secs(10), || async {
        video_of(&sub.received().await, &video_mid).len() > 20
    })
    .await;
    VideoRoom {
        server,
        _publisher: (publisher_ws, publisher),
        _sub_ws: sub_ws,
        sub,
        video_mid,
    }
}

async fn lost_packets_come_back(extra: &[&str]) {
    let room = room_with_video(extra, "resend").await;
    let (sub, video_mid) = (&room.sub, room.video_mid.as_str());

    // Only the video's own packets are discarded, never their resends (RTX has its own PT).
    let video_pt = video_of(&sub.received().await, video_mid)[0].pt;
    sub.with(move |s| s.inbound_loss = Some(InboundLoss::every(7).of_payload_type(video_pt)))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let discarded = sub
        .with(|s| s.inbound_loss.take().map_or(0, |l| l.discarded))
        .await;
    // Resends of the last losses take a round trip and str0m's NACK interval.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(discarded >= 20, "only {discarded} datagrams discarded");
    let arrived: Vec<u64> = video_of(&sub.received().await, video_mid)
        .iter()
        .map(|p| p.seq)
        .collect();
    // Resent packets arrive after later ones.
    let mut highest = 0;
    let late = arrived
        .iter()
        .filter(|&&s| {
            let late = s < highest;
            highest = highest.max(s);
            late
        })
        .count();
    assert!(late >= 5, "only {late} video packets came back late");
    let mut seqs = arrived;
    seqs.sort_unstable();
    seqs.dedup();
    let (first, last) = (seqs[0], *seqs.last().unwrap());
    let missing: Vec<u64> = (first..=last)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} video packets never arrived after {discarded} discards: {:?}",
        missing.len(),
        last - first + 1,
        &missing[..missing.len().min(20)]
    );
    room.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_resent_with_the_estimator_off() {
    lost_packets_come_back(&["--bwe-enabled=false"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_resent_with_the_estimator_on() {
    lost_packets_come_back(&[]).await;
}

/// RFC 8843 §9.2 / libwebrtc: MID (and RID) identify an SSRC only until the receiver has bound
/// it, which its first receiver report for that SSRC shows; after that they are bytes on
/// every packet for nothing. (str0m 0.25 missed the report for streams with an RTX SSRC, so
/// video carried MID for its whole life: vendor/README.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_stops_carrying_mid_once_the_subscriber_reported_its_ssrc() {
    let room = room_with_video(&["--bwe-enabled=false"], "mid").await;
    let (sub, video_mid) = (&room.sub, room.video_mid.as_str());
    // str0m reports on a receive stream about once a second.
    wait_until("video without MID", Duration::from_secs(6), || async {
        let video = video_of(&sub.received().await, video_mid);
        video.len() > 30 && video[video.len() - 10..].iter().all(|p| !p.carried_mid)
    })
    .await;
    let video = video_of(&sub.received().await, video_mid);
    assert!(
        video[0].carried_mid,
        "the first video packets must carry MID"
    );
    room.server.stop().await;
}
