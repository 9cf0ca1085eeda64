//! The ORTC dialect (mediasoup-style messages) and WHIP/WHEP over HTTP, against a real server:
//! what a well-behaved client gets, and that each malformed request gets its own clear error
//! while other sessions carry on. mediasoup-client itself runs in tests/browser/mediasoup.mjs.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use str0m::media::{Direction, MediaKind};
use str0m::RtcConfig;

use common::{error_code, ok, token_for, Transport, WsClient};

/// Authenticate, create (if asked) and join `room`; returns the join response data.
async fn joined(
    server: &sfu::ServerHandle,
    user: &str,
    room: &str,
    create: bool,
) -> (WsClient, Value) {
    let mut ws = WsClient::connect_with(server, Transport::WebSocket).await;
    ws.authenticate(&token_for(user)).await;
    if create {
        let r = ws
            .request("createRoom", json!({ "name": room, "roomId": room }))
            .await;
        ok(&r, "createRoomResponse");
    }
    let r = ws
        .request("joinRoom", json!({ "roomId": room, "displayName": user }))
        .await;
    let data = ok(&r, "joinRoomResponse").clone();
    (ws, data)
}

fn opus_parameters(ssrc: u32) -> Value {
    json!({
        "mid": "0",
        "codecs": [{ "mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2,
                     "parameters": { "minptime": 10, "useinbandfec": 1 }, "rtcpFeedback": [] }],
        "headerExtensions": [{ "uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 4 }],
        "encodings": [{ "ssrc": ssrc }],
        "rtcp": { "cname": "test", "reducedSize": true }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ortc_messages_answer_in_the_seed_shapes_and_refuse_bad_parameters() {
    let server = common::start_server().await;
    let (mut alice, join) = joined(&server, "alice", "ortc-a", true).await;

    // routerRtpCapabilities: codecs with str0m's payload types, header extensions with ids.
    let caps = &join["routerRtpCapabilities"];
    let mimes: Vec<&str> = caps["codecs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["mimeType"].as_str())
        .collect();
    assert!(
        mimes.contains(&"audio/opus") && mimes.contains(&"video/VP8"),
        "{mimes:?}"
    );
    assert!(caps["codecs"][0]["preferredPayloadType"].is_u64());
    assert!(!caps["headerExtensions"].as_array().unwrap().is_empty());

    let send = alice
        .request(
            "createWebRtcTransport",
            json!({ "roomId": "ortc-a", "direction": "send" }),
        )
        .await;
    let send = ok(&send, "createWebRtcTransportResponse").clone();
    let transport_id = send["transportId"].as_str().unwrap().to_string();
    assert!(send["iceParameters"]["usernameFragment"].is_string());
    assert_eq!(send["iceParameters"]["iceLite"], true);
    assert_eq!(
        send["dtlsParameters"]["fingerprints"][0]["algorithm"],
        "sha-256"
    );
    assert!(send["iceCandidates"][0]["port"].as_u64().unwrap() > 0);
    // mediasoup's shape for ICE-TCP: a passive TCP candidate on the node's ICE-TCP port,
    // ranked below UDP.
    let candidates = send["iceCandidates"].as_array().unwrap();
    let udp = candidates.iter().find(|c| c["protocol"] == "udp").unwrap();
    let tcp = candidates
        .iter()
        .find(|c| c["protocol"] == "tcp")
        .expect("an ICE-TCP candidate");
    assert_eq!(tcp["tcpType"], "passive");
    assert_eq!(
        tcp["port"].as_u64().unwrap(),
        u64::from(server.ctx.media.ice_tcp_addr().unwrap().port())
    );
    assert!(tcp["priority"].as_u64() < udp["priority"].as_u64());

    // Every malformed request has its own code and a message naming the problem.
    let publish = |params: Value, kind: &str| json!({ "roomId": "ortc-a", "kind": kind, "transportId": transport_id, "rtpParameters": params });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown codec",
            publish(
                json!({ "codecs": [{ "mimeType": "video/H265", "payloadType": 96, "clockRate": 90000 }],
                            "encodings": [{ "ssrc": 1111 }] }),
                "video",
            ),
            "UNSUPPORTED_CODEC",
        ),
        (
            "duplicate SSRCs",
            publish(
                json!({ "codecs": [{ "mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000 }],
                            "encodings": [{ "ssrc": 7 }, { "ssrc": 7 }] }),
                "video",
            ),
            "INVALID_RTP_PARAMETERS",
        ),
        (
            "video codec on an audio producer",
            publish(
                json!({ "codecs": [{ "mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000 }],
                            "encodings": [{ "ssrc": 8 }] }),
                "audio",
            ),
            "INVALID_RTP_PARAMETERS",
        ),
        (
            "SDP injection through a codec parameter",
            publish(
                json!({ "codecs": [{ "mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000,
                                         "parameters": { "x": "1\r\na=ice-lite" } }],
                            "encodings": [{ "ssrc": 9 }] }),
                "audio",
            ),
            "INVALID_RTP_PARAMETERS",
        ),
        (
            "payload type out of range",
            publish(
                json!({ "codecs": [{ "mimeType": "audio/opus", "payloadType": 300, "clockRate": 48000 }],
                            "encodings": [{ "ssrc": 10 }] }),
                "audio",
            ),
            "INVALID_PAYLOAD",
        ),
        (
            "unknown transport",
            json!({ "kind": "audio", "transportId": "nope", "rtpParameters": opus_parameters(11) }),
            "TRANSPORT_NOT_FOUND",
        ),
    ];
    for (what, data, code) in cases {
        let reply = alice.request("publish", data).await;
        assert_eq!(error_code(&reply), code, "{what}: {reply}");
    }
    let reply = alice
        .request(
            "connectWebRtcTransport",
            json!({ "transportId": transport_id, "dtlsParameters": { "role": "client",
                    "fingerprints": [{ "algorithm": "sha-256", "value": "AB:CD" }] } }),
        )
        .await;
    assert_eq!(error_code(&reply), "INVALID_RTP_PARAMETERS", "{reply}");
    let reply = alice
        .request(
            "connectWebRtcTransport",
            json!({ "transportId": transport_id, "dtlsParameters": { "role": "client",
                    "fingerprints": [{ "algorithm": "md5", "value": "AB" }] } }),
        )
        .await;
    assert_eq!(error_code(&reply), "INVALID_RTP_PARAMETERS", "{reply}");

    // After all that, a valid publish works on the same transport.
    let reply = alice
        .request(
            "publish",
            json!({ "kind": "audio", "transportId": transport_id, "rtpParameters": opus_parameters(4242) }),
        )
        .await;
    let published = ok(&reply, "publishResponse");
    let producer_id = published["producerId"].as_str().unwrap().to_string();
    assert_eq!(published["kind"], "audio");
    // The same mid or SSRC again is refused.
    let reply = alice
        .request(
            "publish",
            json!({ "kind": "audio", "transportId": transport_id, "rtpParameters": opus_parameters(4242) }),
        )
        .await;
    assert_eq!(error_code(&reply), "INVALID_RTP_PARAMETERS", "{reply}");

    // A participant of another room cannot consume it.
    let (mut mallory, join_b) = joined(&server, "mallory", "ortc-b", true).await;
    let recv = mallory
        .request("createWebRtcTransport", json!({ "direction": "recv" }))
        .await;
    ok(&recv, "createWebRtcTransportResponse");
    let reply = mallory
        .request(
            "consume",
            json!({ "producerId": producer_id, "rtpCapabilities": join_b["routerRtpCapabilities"] }),
        )
        .await;
    assert_eq!(error_code(&reply), "PRODUCER_NOT_FOUND", "{reply}");

    // A participant of the same room: learns of it, and consumes with capabilities.
    let (mut bob, join_c) = joined(&server, "bob", "ortc-a", false).await;
    let reply = bob
        .request(
            "consume",
            json!({ "producerId": producer_id, "rtpCapabilities": join_c["routerRtpCapabilities"] }),
        )
        .await;
    assert_eq!(
        error_code(&reply),
        "TRANSPORT_NOT_FOUND",
        "consume before a recv transport: {reply}"
    );
    let recv = bob
        .request("createWebRtcTransport", json!({ "direction": "recv" }))
        .await;
    let recv_id = ok(&recv, "createWebRtcTransportResponse")["transportId"].clone();
    let video_only = json!({ "codecs": [{ "kind": "video", "mimeType": "video/VP8",
                                          "preferredPayloadType": 96, "clockRate": 90000 }] });
    let reply = bob
        .request(
            "consume",
            json!({ "producerId": producer_id, "rtpCapabilities": video_only }),
        )
        .await;
    assert_eq!(error_code(&reply), "UNSUPPORTED_CODEC", "{reply}");
    let reply = bob
        .request(
            "consume",
            json!({ "producerId": producer_id, "transportId": recv_id,
                    "rtpCapabilities": join_c["routerRtpCapabilities"], "paused": true }),
        )
        .await;
    let consumed = ok(&reply, "consumeResponse").clone();
    assert_eq!(consumed["kind"], "audio");
    assert_eq!(consumed["paused"], true);
    assert_eq!(consumed["type"], "simple");
    let rtp = &consumed["rtpParameters"];
    assert_eq!(rtp["codecs"][0]["mimeType"], "audio/opus");
    assert!(rtp["encodings"][0]["ssrc"].as_u64().unwrap() > 0);
    assert!(rtp["mid"].is_string());
    let consumer_id = consumed["consumerId"].as_str().unwrap().to_string();
    for kind in ["resumeConsumer", "pauseConsumer"] {
        let reply = bob
            .request(kind, json!({ "consumerId": consumer_id }))
            .await;
        ok(&reply, &format!("{kind}Response"));
    }
    let reply = bob
        .request("resumeConsumer", json!({ "consumerId": "nope" }))
        .await;
    assert_eq!(error_code(&reply), "CONSUMER_NOT_FOUND", "{reply}");
    let reply = bob
        .request(
            "setConsumerPreferredLayers",
            json!({ "consumerId": consumer_id, "spatialLayer": 0 }),
        )
        .await;
    ok(&reply, "setConsumerPreferredLayersResponse");
    // mediasoup's consumer.setPriority, by consumer id; someone else's id is not found.
    let reply = bob
        .request(
            "setConsumerPriority",
            json!({ "consumerId": consumer_id, "priority": 200 }),
        )
        .await;
    assert_eq!(
        ok(&reply, "setConsumerPriorityResponse")["priority"],
        200,
        "{reply}"
    );
    assert_eq!(
        ok(&reply, "setConsumerPriorityResponse")["consumerId"],
        consumer_id.as_str()
    );
    let reply = bob
        .request(
            "setConsumerPriority",
            json!({ "consumerId": "nope", "priority": 2 }),
        )
        .await;
    assert_eq!(error_code(&reply), "CONSUMER_NOT_FOUND", "{reply}");
    // Bob may not pause or close Alice's producer.
    let reply = bob
        .request("closeProducer", json!({ "producerId": producer_id }))
        .await;
    assert_eq!(error_code(&reply), "PRODUCER_NOT_FOUND", "{reply}");

    // restartIce hands out new credentials.
    let reply = alice
        .request("restartIce", json!({ "transportId": transport_id }))
        .await;
    let ice = &ok(&reply, "restartIceResponse")["iceParameters"];
    assert_ne!(
        ice["usernameFragment"],
        send["iceParameters"]["usernameFragment"]
    );

    // Alice closes her producer: Bob hears producerClosed and consumerClosed.
    let reply = alice
        .request("closeProducer", json!({ "producerId": producer_id }))
        .await;
    ok(&reply, "closeProducerResponse");
    let closed = bob
        .notification("consumerClosed", Duration::from_secs(5))
        .await;
    assert_eq!(closed["data"]["consumerId"], consumer_id);
    let stats = server.ctx.media.stats().await;
    assert_eq!(stats.producers, 0, "{stats:?}");
    assert_eq!(stats.consumers, 0, "{stats:?}");
    server.stop().await;
}

/// An SDP offer from a str0m endpoint that sends the given kinds.
fn offer(kinds: &[MediaKind]) -> String {
    offer_with(kinds, Direction::SendOnly)
}

fn offer_with(kinds: &[MediaKind], direction: Direction) -> String {
    let mut rtc = RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    for kind in kinds {
        api.add_media(*kind, direction, None, None, None);
    }
    let (offer, _) = api.apply().expect("offer");
    offer.to_sdp_string()
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: String,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = http
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_refuse_bad_requests_with_status_and_code() {
    // Opus only, so a video-only offer has no usable codec.
    let server = common::start_server_with(&["--codecs=opus"]).await;
    let base = format!("http://{}", server.http_addr);
    let http = reqwest::Client::new();
    let alice = token_for("alice");
    let whip = format!("{base}/whip/whip-room");

    let (status, body, _) = post(
        &http,
        &whip,
        None,
        "application/sdp",
        offer(&[MediaKind::Audio]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("NOT_AUTHENTICATED")),
        "{body}"
    );
    let (status, body, _) = post(
        &http,
        &whip,
        Some("garbage"),
        "application/sdp",
        offer(&[MediaKind::Audio]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("INVALID_TOKEN")),
        "{body}"
    );
    let (status, body, _) = post(
        &http,
        &whip,
        Some(&alice),
        "text/plain",
        offer(&[MediaKind::Audio]),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let (status, body, _) = post(
        &http,
        &whip,
        Some(&alice),
        "application/sdp",
        "hello".into(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_SDP")),
        "{body}"
    );
    let (status, body, _) = post(
        &http,
        &whip,
        Some(&alice),
        "application/sdp",
        offer(&[MediaKind::Video]),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("UNSUPPORTED_CODEC")),
        "{body}"
    );

    // The failed publishes left no room behind: WHEP finds none.
    let whep = format!("{base}/whep/whip-room");
    let play = offer_with(&[MediaKind::Audio], Direction::RecvOnly);
    let (status, body, _) = post(&http, &whep, Some(&alice), "application/sdp", play.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("ROOM_NOT_FOUND")),
        "{body}"
    );

    // A good publish: 201, SDP answer, Location; the producer is visible to the room.
    let (status, body, headers) = post(
        &http,
        &whip,
        Some(&alice),
        "application/sdp",
        offer(&[MediaKind::Audio]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.as_str().unwrap().contains("a=fingerprint"), "{body}");
    let location = headers["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/whip/whip-room/"), "{location}");
    assert_eq!(server.ctx.media.stats().await.producers, 1);

    // WHEP: a video-only player finds nothing to play; an audio player gets the producer.
    let video_play = offer_with(&[MediaKind::Video], Direction::RecvOnly);
    let (status, body, _) = post(&http, &whep, Some(&alice), "application/sdp", video_play).await;
    assert_eq!(status, 400, "{body}");
    let (status, body, headers) = post(&http, &whep, Some(&alice), "application/sdp", play).await;
    assert_eq!(status, 201, "{body}");
    assert!(headers["location"]
        .to_str()
        .unwrap()
        .starts_with("/whep/whip-room/"));
    assert_eq!(server.ctx.media.stats().await.consumers, 1);

    // A WebSocket participant joining the room sees the WHIP producer.
    let (mut ws, join) = joined(&server, "bob", "whip-room", false).await;
    let whip_producers: Vec<&Value> = join["participants"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["producers"].as_array().unwrap())
        .collect();
    assert_eq!(whip_producers.len(), 1, "{join}");
    assert_eq!(whip_producers[0]["kind"], "audio", "{join}");

    // PATCH is not offered; someone else's DELETE is refused; the owner's ends it; then 404.
    let url = format!("{base}{location}");
    let patch = http.patch(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(patch.status().as_u16(), 405);
    let other = http
        .delete(&url)
        .bearer_auth(token_for("mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 403);
    assert_eq!(
        server.ctx.media.stats().await.producers,
        1,
        "a refused DELETE changed nothing"
    );
    let own = http.delete(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(own.status().as_u16(), 200);
    let closed = ws
        .notification("producerClosed", Duration::from_secs(5))
        .await;
    assert!(closed["data"]["producerId"].is_string());
    let again = http.delete(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 404);
    // The WHEP player had nothing left to play: its session ended with the publish.
    let stats = server.ctx.media.stats().await;
    assert_eq!((stats.producers, stats.consumers), (0, 0), "{stats:?}");
    let reply = ws.request("ping", json!({})).await;
    ok(&reply, "pong");
    server.stop().await;
}
