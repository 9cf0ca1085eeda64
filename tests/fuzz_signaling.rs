//! Property-based fuzzing of what clients control (proptest; cargo-fuzz needs a nightly
//! toolchain CI does not have). CI runs a short pass; a long run is
//! `PROPTEST_CASES=100000 cargo test --release --test fuzz_signaling` (README "Fuzzing").
//!
//! - the signaling envelope and every request type's `data`: never a panic, always a stable
//!   code, a bounded reply that keeps the requestId;
//! - ORTC `rtpParameters` validation: never a panic, a verdict for every input;
//! - SDP offers over `publisherOffer` on a live server: mutated offers are answered or refused
//!   with a coded, bounded error that carries no debug output, and the server keeps serving.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};
use sfu::session::protocol::{parse_request, ErrorCode, OutboundEnvelope};

const REQUEST_TYPES: &[&str] = &[
    "authenticate",
    "resume",
    "createRoom",
    "joinRoom",
    "leaveRoom",
    "publisherOffer",
    "subscriberAnswer",
    "setPreferredLayer",
    "kickParticipant",
    "closeRoom",
    "createWebRtcTransport",
    "connectWebRtcTransport",
    "publish",
    "consume",
    "pauseConsumer",
    "resumeConsumer",
    "pauseProducer",
    "resumeProducer",
    "closeProducer",
    "setConsumerPreferredLayers",
    "restartIce",
    "ping",
];

/// Arbitrary JSON, a few levels deep, with the field names requests use.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("roomId".to_string()),
        Just("sdp".to_string()),
        Just("token".to_string()),
        Just("kind".to_string()),
        Just("rtpParameters".to_string()),
        Just("codecs".to_string()),
        Just("encodings".to_string()),
        Just("producerId".to_string()),
        Just("displayName".to_string()),
        "[a-zA-Z]{1,12}",
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn envelope() -> impl Strategy<Value = String> {
    prop_oneof![
        // Well-formed envelopes with arbitrary data.
        (
            prop::sample::select(REQUEST_TYPES),
            json_value(),
            json_value()
        )
            .prop_map(
                |(t, data, id)| json!({ "type": t, "data": data, "requestId": id }).to_string()
            ),
        // Arbitrary JSON and arbitrary text.
        json_value().prop_map(|v| v.to_string()),
        ".{0,200}",
    ]
}

/// Cases per property: a short CI pass unless PROPTEST_CASES asks for a long run.
fn cases(ci_default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ci_default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), ..ProptestConfig::default() })]

    #[test]
    fn every_frame_gets_a_stable_bounded_answer(frame in envelope()) {
        match parse_request(&frame, 64 * 1024) {
            Ok(parsed) => prop_assert!(!parsed.request_type.is_empty()),
            Err(failure) => {
                let code = serde_json::to_value(failure.code).unwrap();
                prop_assert!(code.as_str().is_some_and(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')));
                let reply = OutboundEnvelope::error(
                    failure.code,
                    failure.message,
                    failure.request_type.as_deref(),
                    failure.request_id,
                )
                .to_json();
                prop_assert!(reply.len() < 2048, "reply of {} bytes", reply.len());
            }
        }
    }

    #[test]
    fn request_ids_survive_refusals(id in prop_oneof![any::<u32>().prop_map(Value::from), "[a-z0-9-]{1,40}".prop_map(Value::from)],
                                   data in json_value()) {
        let frame = json!({ "type": "joinRoom", "data": data, "requestId": id }).to_string();
        if let Err(failure) = parse_request(&frame, 64 * 1024) {
            prop_assert_eq!(failure.request_id, Some(id));
            prop_assert!(matches!(failure.code, ErrorCode::InvalidPayload));
        }
    }

    #[test]
    fn rtp_parameters_validation_has_a_verdict_for_everything(params in json_value(), video in any::<bool>()) {
        let kind = if video { sfu::media::Kind::Video } else { sfu::media::Kind::Audio };
        // Shapes serde accepts reach the validator; it must decide without panicking.
        if let Ok(params) = serde_json::from_value::<sfu::media::ortc::RtpParameters>(params) {
            let _ = sfu::media::ortc::validate_producer(kind, &params);
        }
    }
}

/// A browser-like publisher offer (audio + video), mutated line by line below.
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
a=ssrc:1111 cname:x\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n\
a=ssrc:2222 cname:x\r\n";

/// One mutation of the offer: drop, duplicate, truncate or garble a line.
fn mutated_offer() -> impl Strategy<Value = String> {
    let lines: Vec<String> = OFFER.split("\r\n").map(str::to_string).collect();
    let n = lines.len();
    prop::collection::vec((0..n, 0u8..5, ".{0,30}"), 1..4).prop_map(move |edits| {
        let mut lines = lines.clone();
        for (i, op, junk) in edits {
            let i = i % lines.len().max(1);
            match op {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let line = lines[i].clone();
                    lines.insert(i, line);
                }
                2 => {
                    // Cut at a character boundary (earlier edits may have added non-ASCII).
                    let half = lines[i].chars().count() / 2;
                    lines[i] = lines[i].chars().take(half).collect();
                }
                3 => lines[i].push_str(&junk),
                _ => lines.insert(i, junk),
            }
            if lines.is_empty() {
                lines.push(String::new());
            }
        }
        lines.join("\r\n")
    })
}

#[tokio::test]
async fn mutated_sdp_offers_are_answered_or_refused_cleanly() {
    // Many sessions in a second: this test is not about rate limits.
    let server = start_server_with(&[
        "--rate-limit-connections-per-minute",
        "100000",
        "--rate-limit-messages-per-second",
        "100000",
    ])
    .await;
    let mut runner = proptest::test_runner::TestRunner::default();
    let mut offers = Vec::new();
    // Each offer costs a session on the live server: a tenth of the property cases.
    for _ in 0..(cases(600) / 10) {
        offers.push(mutated_offer().new_tree(&mut runner).unwrap().current());
    }
    // One session; each offer in a fresh room, so an accepted offer never meets a negotiated
    // transport.
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(&token(&server, "fuzzer")).await;
    for (n, offer) in offers.into_iter().enumerate() {
        let room = format!("fuzz-{n}");
        ws.request("createRoom", json!({ "name": "fuzz", "roomId": room }))
            .await;
        ws.request("joinRoom", json!({ "roomId": room, "displayName": "f" }))
            .await;
        let reply = ws.request("publisherOffer", json!({ "sdp": offer })).await;
        if reply["type"] == "error" {
            let code = error_code(&reply).to_string();
            assert!(
                [
                    "INVALID_SDP",
                    "UNSUPPORTED_CODEC",
                    "PUBLISH_DENIED",
                    "INVALID_PAYLOAD"
                ]
                .contains(&code.as_str()),
                "unexpected code {code} for offer {offer:?}: {reply}"
            );
            let message = reply["error"].as_str().unwrap();
            assert!(message.len() <= 400, "unbounded message: {message}");
            assert!(
                !message.contains("0x") && !message.contains("PointerOffset"),
                "debug output in an error: {message}"
            );
        } else {
            ok(&reply, "publisherAnswer");
        }
        ok(
            &ws.request("leaveRoom", json!({})).await,
            "leaveRoomResponse",
        );
    }
    // Still serving, to this session and to a new one.
    ok(&ws.request("ping", json!({})).await, "pong");
    let mut other = WsClient::connect(server.http_addr).await;
    ok(&other.request("ping", json!({})).await, "pong");
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await;
}
