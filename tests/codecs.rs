//! Every codec end to end through the real server with str0m peers on real UDP (no browser).
//!
//! For each codec a publisher whose SDP offers only that codec, under payload types of its own
//! choosing, sends synthetic packets shaped like the codec's RTP payload format (see
//! `common::synthetic_payload`). A subscriber that supports every codec receives them with the
//! payload type its own negotiation gave that codec (matched on format parameters too, e.g.
//! H264 profile-level-id and packetization-mode), with the payload intact.
//!
//! Video is published as 3-layer simulcast. The subscriber switches high → low → high; the
//! switch only completes at a packet the SFU recognises as the start of a keyframe of that codec,
//! so each switch proves that codec's keyframe detector. Sequence numbers stay gap-free and, for
//! VP8 and VP9, picture ids (and VP9 TL0PICIDX) stay continuous across switches although every
//! layer numbers its pictures differently.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use str0m::format::{Codec, FormatParams};
use str0m::media::Pt;
use str0m::RtcConfig;

/// The publisher's payload type for `codec`: deliberately none of str0m's (and so the SFU's)
/// defaults, so forwarding must map it.
fn publisher_pt(codec: Codec) -> (u8, Option<u8>) {
    match codec {
        Codec::Opus => (109, None),
        Codec::Vp8 => (118, Some(119)),
        Codec::Vp9 => (112, Some(113)),
        Codec::H264 => (126, Some(125)),
        Codec::Av1 => (110, Some(94)),
        other => panic!("no publisher payload type for {other:?}"),
    }
}

/// Format parameters the publisher offers: what Chromium offers for that codec.
fn publisher_format(codec: Codec) -> FormatParams {
    match codec {
        Codec::Opus => FormatParams {
            min_p_time: Some(10),
            use_inband_fec: Some(true),
            ..Default::default()
        },
        Codec::Vp9 => FormatParams {
            profile_id: Some(0),
            ..Default::default()
        },
        // Chromium's first choice: constrained baseline 3.1, non-interleaved mode.
        Codec::H264 => FormatParams {
            level_asymmetry_allowed: Some(true),
            packetization_mode: Some(1),
            profile_level_id: Some(0x42e01f),
            ..Default::default()
        },
        _ => FormatParams::default(),
    }
}

/// A peer whose only codec is `codec`, under [`publisher_pt`].
async fn single_codec_publisher(codec: Codec) -> Peer {
    let (pt, rtx) = publisher_pt(codec);
    let mut config = RtcConfig::new().clear_codecs();
    let (clock, channels) = if codec.is_audio() {
        (str0m::media::Frequency::FORTY_EIGHT_KHZ, Some(2))
    } else {
        (str0m::media::Frequency::NINETY_KHZ, None)
    };
    config.codec_config().add_config(
        Pt::from(pt),
        rtx.map(Pt::from),
        codec,
        clock,
        channels,
        publisher_format(codec),
    );
    Peer::spawn_with(config).await
}

/// A subscriber supporting every codec with str0m's defaults (several H264 flavours).
async fn all_codec_subscriber() -> Peer {
    Peer::spawn_with(
        RtcConfig::new()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_vp9(true)
            .enable_h264(true)
            .enable_av1(true),
    )
    .await
}

/// The payload type the subscriber's own negotiation gave the publisher's codec and format.
async fn negotiated_pt(subscriber: &Peer, codec: Codec) -> u8 {
    let wanted = publisher_format(codec);
    subscriber
        .with(move |s| {
            let params = s.rtc.codec_config().params();
            let matching: Vec<_> = params
                .iter()
                .filter(|p| p.spec().codec == codec)
                .filter(|p| {
                    codec != Codec::H264
                        || (p.spec().format.profile_level_id == wanted.profile_level_id
                            && p.spec().format.packetization_mode == wanted.packetization_mode)
                })
                .filter(|p| codec != Codec::Vp9 || p.spec().format.profile_id == Some(0))
                .collect();
            assert_eq!(matching.len(), 1, "{codec:?} params: {params:?}");
            *matching[0].pt()
        })
        .await
}

/// Packets of one mid at the subscriber, in arrival order.
async fn raw_of(peer: &Peer, mid: &str) -> Vec<RawReceived> {
    let mid = mid.to_string();
    peer.with(move |s| {
        s.raw
            .iter()
            .filter(|r| r.mid.to_string() == mid)
            .cloned()
            .collect()
    })
    .await
}

fn layer_of(r: &RawReceived) -> u8 {
    *r.payload.last().expect("non-empty payload")
}

/// Publisher with only `codec`, one all-codec subscriber; returns them once the subscriber
/// receives packets. `(server, pub_ws, sub_ws, publisher, subscriber, mid, producer_id)`.
async fn setup(
    codec: Codec,
    room: &str,
) -> (
    sfu::ServerHandle,
    WsClient,
    WsClient,
    Peer,
    Peer,
    String,
    String,
) {
    let server = start_server().await;
    let mut pub_ws = joined(&server, room, "pub", true).await;
    let mut sub_ws = joined(&server, room, "sub", false).await;
    let publisher = single_codec_publisher(codec).await;
    let simulcast = !codec.is_audio();
    let published = publisher.publish_codec(&mut pub_ws, codec, simulcast).await;
    let producers = published["producers"].as_array().unwrap();
    assert_eq!(producers.len(), 1, "{published}");
    let kind = if codec.is_audio() { "audio" } else { "video" };
    assert_eq!(producers[0]["kind"], kind);
    if simulcast {
        assert_eq!(producers[0]["layers"], json!(["q", "h", "f"]));
    }
    let producer_id = producers[0]["producerId"].as_str().unwrap().to_string();
    // The SFU accepted exactly the offered codec under the publisher's payload type.
    let answer = published["sdp"].as_str().unwrap();
    let (pt, _) = publisher_pt(codec);
    assert!(
        answer.contains(&format!("a=rtpmap:{pt} ")),
        "answer lacks the publisher's payload type {pt}: {answer}"
    );

    let subscriber = all_codec_subscriber().await;
    let offer = negotiate_subscriber(&mut sub_ws, &subscriber, 1).await;
    let mid = offer["data"]["tracks"][0]["mid"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("publisher connected", Duration::from_secs(10), || {
        publisher.connected()
    })
    .await;
    wait_until(
        &format!("{codec:?} packets at the subscriber"),
        Duration::from_secs(10),
        || async { raw_of(&subscriber, &mid).await.len() > 10 },
    )
    .await;
    (
        server,
        pub_ws,
        sub_ws,
        publisher,
        subscriber,
        mid,
        producer_id,
    )
}

/// Payload types: every received packet carries the subscriber's negotiated payload type for
/// the codec, which differs from the publisher's.
async fn assert_payload_types(codec: Codec, subscriber: &Peer, mid: &str) {
    let expected = negotiated_pt(subscriber, codec).await;
    let (publisher_pt, _) = publisher_pt(codec);
    assert_ne!(expected, publisher_pt, "test needs distinct payload types");
    let received = raw_of(subscriber, mid).await;
    let pts: std::collections::BTreeSet<u8> = received.iter().map(|r| r.pt).collect();
    assert_eq!(
        pts,
        [expected].into(),
        "{codec:?}: subscriber negotiated PT {expected}, received {pts:?}"
    );
}

async fn audio_codec_is_forwarded(codec: Codec) {
    let (server, _pub_ws, _sub_ws, _publisher, subscriber, mid, _) =
        setup(codec, &format!("codec-{codec:?}")).await;
    assert_payload_types(codec, &subscriber, &mid).await;
    let received = raw_of(&subscriber, &mid).await;
    for r in &received {
        assert_eq!(
            &r.payload[..3],
            &[0xfc, 0xff, 0xfe],
            "payload altered: {r:?}"
        );
    }
    for pair in received.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "gap: {pair:?}");
    }
    server.stop().await;
}

async fn video_codec_is_forwarded_and_switches_layers(codec: Codec) {
    let room = format!("codec-{codec:?}").to_lowercase();
    let (server, _pub_ws, mut sub_ws, publisher, subscriber, mid, producer_id) =
        setup(codec, &room).await;

    // Auto starts on the highest layer.
    wait_until("high layer flowing", Duration::from_secs(10), || async {
        raw_of(&subscriber, &mid)
            .await
            .iter()
            .rev()
            .take(3)
            .all(|r| layer_of(r) == 2)
    })
    .await;

    for (layer, index) in [("low", 0u8), ("high", 2u8)] {
        let reply = sub_ws
            .request(
                "setPreferredLayer",
                json!({ "producerId": producer_id, "layer": layer }),
            )
            .await;
        ok(&reply, "setPreferredLayerResponse");
        // Earlier notifications (auto ramping up to high) may still be queued: skip them.
        loop {
            let changed = sub_ws
                .notification("layerChanged", Duration::from_secs(5))
                .await;
            if changed["data"]["layer"] == layer {
                break;
            }
        }
        wait_until(
            &format!("{codec:?} layer {layer} flowing"),
            Duration::from_secs(5),
            || async {
                let r = raw_of(&subscriber, &mid).await;
                r.len() > 10 && r.iter().rev().take(10).all(|p| layer_of(p) == index)
            },
        )
        .await;
    }

    assert_payload_types(codec, &subscriber, &mid).await;
    let video = raw_of(&subscriber, &mid).await;
    assert!(
        video.len() > 30,
        "{codec:?}: too few packets: {}",
        video.len()
    );
    assert!(
        synthetic_is_keyframe(codec, &video[0].payload),
        "{codec:?}: stream must start with a keyframe: {:?}",
        video[0]
    );
    let mut layers_seen = vec![layer_of(&video[0])];
    for pair in video.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.seq, a.seq + 1, "{codec:?}: sequence gap {a:?} → {b:?}");
        assert!(
            b.timestamp.wrapping_sub(a.timestamp) < 90_000,
            "{codec:?}: timestamp jump {a:?} → {b:?}"
        );
        if layer_of(a) != layer_of(b) {
            layers_seen.push(layer_of(b));
            assert!(
                synthetic_is_keyframe(codec, &b.payload),
                "{codec:?}: switch to layer {} not at a keyframe: {b:?}",
                layer_of(b)
            );
        }
        // One packet per frame: picture ids (and VP9 TL0PICIDX) advance by exactly one, even
        // across switches between layers whose own numbering differs by 1000 (50).
        match codec {
            Codec::Vp8 => {
                let pid = |r: &RawReceived| u16::from_be_bytes([r.payload[2] & 0x7f, r.payload[3]]);
                assert_eq!(
                    pid(b),
                    (pid(a) + 1) % 0x8000,
                    "VP8 picture id jump {a:?} → {b:?}"
                );
            }
            Codec::Vp9 => {
                let pid = |r: &RawReceived| u16::from_be_bytes([r.payload[1] & 0x7f, r.payload[2]]);
                assert_eq!(
                    pid(b),
                    (pid(a) + 1) % 0x8000,
                    "VP9 picture id jump {a:?} → {b:?}"
                );
                assert_eq!(
                    b.payload[4],
                    a.payload[4].wrapping_add(1),
                    "VP9 TL0PICIDX jump {a:?} → {b:?}"
                );
                assert_eq!(b.payload[1] & 0x80, 0x80, "M bit kept: {b:?}");
            }
            _ => {}
        }
        // Everything but the rewritten ids arrives as sent.
        let frame_independent = match codec {
            Codec::Vp8 => b.payload[4..].to_vec(),
            Codec::Vp9 => vec![b.payload[0], b.payload[3], b.payload[5], b.payload[6]],
            _ => b.payload.clone(),
        };
        let sent = synthetic_payload(
            codec,
            0,
            layer_of(b),
            synthetic_is_keyframe(codec, &b.payload),
        );
        let sent = match codec {
            Codec::Vp8 => sent[4..].to_vec(),
            Codec::Vp9 => vec![sent[0], sent[3], sent[5], sent[6]],
            _ => sent,
        };
        assert_eq!(frame_independent, sent, "{codec:?}: payload altered: {b:?}");
    }
    // Auto may start on a lower layer before the high one is seen; then high → low → high.
    // Back up, the preference is a cap, not a force: with the estimate still proving the top
    // layer's headroom the climb may pass the middle layer, but only upwards.
    let low_at = layers_seen.iter().rposition(|l| *l == 0);
    assert!(
        low_at.is_some_and(|i| layers_seen[..i].contains(&2)
            && layers_seen[i..].windows(2).all(|w| w[0] < w[1])
            && layers_seen.last() == Some(&2)),
        "{codec:?}: expected high→low→high at the end, saw {layers_seen:?}"
    );
    // The switches asked the publisher for keyframes on the low layer.
    let requests = publisher.with(|s| s.keyframe_requests.clone()).await;
    assert!(
        requests
            .iter()
            .any(|r| r.map(|r| r.to_string()) == Some("q".into())),
        "{codec:?}: no keyframe request on the low layer: {requests:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_is_forwarded_with_the_subscribers_payload_type() {
    audio_codec_is_forwarded(Codec::Opus).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp8_is_forwarded_and_switches_simulcast_layers_at_keyframes() {
    video_codec_is_forwarded_and_switches_layers(Codec::Vp8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_is_forwarded_and_switches_simulcast_layers_at_keyframes() {
    video_codec_is_forwarded_and_switches_layers(Codec::Vp9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_and_switches_simulcast_layers_at_keyframes() {
    video_codec_is_forwarded_and_switches_layers(Codec::H264).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn av1_is_forwarded_and_switches_simulcast_layers_at_keyframes() {
    video_codec_is_forwarded_and_switches_layers(Codec::Av1).await;
}

/// A server configured with a subset refuses the other codecs: a VP9-only publisher's video
/// m-line is rejected by an `opus,vp8` server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_codecs_limits_what_is_negotiated() {
    let server = start_server_with(&["--codecs", "opus,vp8"]).await;
    let mut ws = joined(&server, "subset", "pub", true).await;
    let publisher = single_codec_publisher(Codec::Vp9).await;
    let reply = publisher.publish_codec(&mut ws, Codec::Vp9, false).await;
    let sdp = reply["sdp"].as_str().unwrap();
    assert!(
        !sdp.contains("VP9"),
        "VP9 accepted by an opus,vp8 server: {sdp}"
    );
    assert!(
        sdp.contains("m=video 0 "),
        "video m-line not rejected: {sdp}"
    );
    server.stop().await;
}
