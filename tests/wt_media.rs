//! Media over WebTransport with a wtransport client (no browser). Publisher side: a track
//! published with `publishFrames` and sent as frames on unidirectional streams reaches a
//! WebRTC (str0m) subscriber and a WHEP player as RTP — simulcast layers, switches, keyframe
//! requests — and a client that breaks the framing is refused with a code while everyone else
//! keeps going. Subscriber side: `consumeFrames` of WebRTC and WebTransport publishers, layer
//! switches, and a subscriber that stops reading.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use testkit::wtmedia::{tagged_vp8_frame, FrameReceiver, ReceivedFrame, TrackStream};
use uuid::Uuid;

async fn wt_joined(server: &sfu::ServerHandle, room: &str, name: &str, create: bool) -> WsClient {
    let mut c = connect_wt(server).await.expect("WebTransport connects");
    c.join(&token(server, name), room, name, create).await;
    c
}

/// A str0m peer that offers to receive audio and video and POSTs the offer to `/whep/<room>`.
async fn whep_viewer(server: &sfu::ServerHandle, room: &str) -> Peer {
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaKind};
    let peer = Peer::spawn().await;
    let (offer, pending) = peer
        .with(|s| {
            let mut api = s.rtc.sdp_api();
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            let (offer, pending) = api.apply().expect("offer");
            (offer.to_sdp_string(), pending)
        })
        .await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/whep/{room}", server.http_addr))
        .bearer_auth(token(server, "whep-viewer"))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .await
        .expect("WHEP request");
    assert_eq!(response.status().as_u16(), 201);
    let answer = SdpAnswer::from_sdp_string(&response.text().await.unwrap()).expect("SDP answer");
    peer.with(move |s| {
        s.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accepted")
    })
    .await;
    peer
}

async fn publish_frames(c: &mut WsClient, data: Value) -> Uuid {
    let reply = c.request("publishFrames", data).await;
    ok(&reply, "publishFramesResponse")["producerId"]
        .as_str()
        .expect("producerId")
        .parse()
        .expect("uuid")
}

/// The next `frameError` notification's code.
async fn frame_error(c: &mut WsClient) -> String {
    let n = c.notification("frameError", Duration::from_secs(5)).await;
    n["data"]["code"].as_str().unwrap_or_default().to_string()
}

/// A publisher's three VP8 layers at 30 fps, one stream per one-second group of pictures per
/// layer, plus Opus every 20 ms; a keyframe also whenever `keyframe_now` is raised.
fn spawn_sender(
    connection: wtransport::Connection,
    video: Uuid,
    audio: Uuid,
    keyframe_now: Arc<AtomicBool>,
    frames_sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut layers: Vec<Option<TrackStream>> = vec![None, None, None];
        let mut mic = TrackStream::open(&connection, audio, 0)
            .await
            .expect("audio stream");
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            let ts = start.elapsed().as_micros() as u64;
            if n.is_multiple_of(2)
                && mic
                    .write_frame(false, ts, &[0xfc, 0xff, 0xfe])
                    .await
                    .is_err()
            {
                return;
            }
            if !n.is_multiple_of(3) {
                continue;
            }
            let frame = n / 3;
            let key = frame.is_multiple_of(30) || keyframe_now.swap(false, Ordering::Relaxed);
            for (layer, slot) in layers.iter_mut().enumerate() {
                if key {
                    // A new group of pictures: the old stream ends, a new one starts.
                    if let Some(old) = slot.take() {
                        let _ = old.finish().await;
                    }
                    match TrackStream::open(&connection, video, layer as u8).await {
                        Ok(s) => *slot = Some(s),
                        Err(_) => return,
                    }
                }
                let Some(stream) = slot.as_mut() else {
                    continue;
                };
                let payload = tagged_vp8_frame(key, layer as u8);
                if stream.write_frame(key, ts, &payload).await.is_err() {
                    return;
                }
                frames_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn video_layers(received: &[Received]) -> Vec<u8> {
    received
        .iter()
        .filter(|p| p.layer != 255)
        .map(|p| p.layer)
        .collect()
}

fn last_video_on(received: &[Received], layer: u8) -> bool {
    let v = video_layers(received);
    v.len() >= 5 && v.iter().rev().take(5).all(|l| *l == layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_from_webtransport_reach_a_webrtc_subscriber() {
    let server = start_server().await;
    let mut publisher = wt_joined(&server, "wtm", "pub", true).await;
    let mut sub_ws = joined(&server, "wtm", "sub", false).await;
    let sub = Peer::spawn().await;

    let video = publish_frames(
        &mut publisher,
        json!({ "codec": "vp8", "layers": ["q", "h", "f"] }),
    )
    .await;
    let audio = publish_frames(&mut publisher, json!({ "codec": "opus" })).await;
    let note = sub_ws
        .notification("newProducer", Duration::from_secs(5))
        .await;
    assert_eq!(note["data"]["producer"]["kind"], "video", "{note}");
    assert_eq!(note["data"]["producer"]["layers"], json!(["q", "h", "f"]));

    let keyframe_now = Arc::new(AtomicBool::new(false));
    let frames_sent = Arc::new(AtomicU64::new(0));
    let sender = spawn_sender(
        publisher.wt_connection().clone(),
        video,
        audio,
        keyframe_now.clone(),
        frames_sent.clone(),
    );
    negotiate_subscriber(&mut sub_ws, &sub, 2).await;

    // The subscriber's start asks the publisher for a keyframe, over signaling.
    let ask = publisher
        .notification("keyFrameRequest", Duration::from_secs(10))
        .await;
    assert_eq!(ask["data"]["producerId"], video.to_string(), "{ask}");
    assert!(ask["data"]["layer"].as_u64().is_some_and(|l| l < 3));
    keyframe_now.store(true, Ordering::Relaxed);

    wait_until(
        "video on the top layer",
        Duration::from_secs(10),
        || async { last_video_on(&sub.received().await, 2) },
    )
    .await;
    let received = sub.received().await;
    let audio_packets = received.iter().filter(|p| p.layer == 255).count();
    assert!(audio_packets > 10, "audio forwarded: {audio_packets}");
    let first_video = received.iter().find(|p| p.layer != 255).expect("video");
    assert!(first_video.keyframe, "video starts at a keyframe");

    // A WHEP player (RFC 9725) plays the WebTransport publisher's tracks too.
    let viewer = whep_viewer(&server, "wtm").await;
    wait_until(
        "WHEP viewer gets video and audio",
        Duration::from_secs(10),
        || async {
            let got = viewer.received().await;
            got.iter().any(|p| p.layer == 255) && got.iter().filter(|p| p.layer != 255).count() > 10
        },
    )
    .await;

    // A layer switch across frames from WebTransport: down to the lowest layer.
    ok(
        &sub_ws
            .request(
                "setPreferredLayer",
                json!({ "producerId": video.to_string(), "layer": "low" }),
            )
            .await,
        "setPreferredLayerResponse",
    );
    wait_until("video on the low layer", Duration::from_secs(5), || async {
        last_video_on(&sub.received().await, 0)
    })
    .await;
    // Announced too (after the audio's and the video's own start, still queued).
    loop {
        let changed = sub_ws
            .notification("layerChanged", Duration::from_secs(5))
            .await;
        if changed["data"]["producerId"] == video.to_string() && changed["data"]["layer"] == "low" {
            break;
        }
    }

    // Sequence numbers stay continuous over the switches (one SSRC per consumer, no gaps
    // beyond what the layer choice dropped).
    let received = sub.received().await;
    let video_mid = received.iter().find(|p| p.layer != 255).unwrap().mid;
    let seqs: Vec<u64> = received
        .iter()
        .filter(|p| p.mid == video_mid)
        .map(|p| p.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless sequence numbers"
    );

    // Hostile input from another WebTransport participant: each refused with its code, the
    // session stays up, and the subscriber keeps receiving.
    let mut mallory = wt_joined(&server, "wtm", "mallory", false).await;
    let own = publish_frames(&mut mallory, json!({ "codec": "vp8" })).await;
    let conn = mallory.wt_connection().clone();

    let mut s = TrackStream::open(&conn, video, 0).await.unwrap();
    s.write_frame(true, 0, &[0, 0, 0, 0]).await.unwrap();
    assert_eq!(frame_error(&mut mallory).await, "TRACK_NOT_YOURS");

    let mut s = TrackStream::open(&conn, own, 7).await.unwrap();
    s.write_frame(true, 0, &[0]).await.unwrap();
    assert_eq!(frame_error(&mut mallory).await, "INVALID_FRAME");

    let mut raw = conn.open_uni().await.unwrap().await.unwrap();
    raw.write_all(&[9; 18]).await.unwrap();
    assert_eq!(frame_error(&mut mallory).await, "INVALID_FRAME");

    let mut s = TrackStream::open(&conn, own, 0).await.unwrap();
    let mut huge = vec![1u8];
    huge.extend_from_slice(&0u64.to_be_bytes());
    huge.extend_from_slice(&(64u32 << 20).to_be_bytes());
    s.write_raw(&huge).await.unwrap();
    assert_eq!(frame_error(&mut mallory).await, "FRAME_TOO_LARGE");

    let reply = mallory
        .request("publishFrames", json!({ "codec": "h265" }))
        .await;
    assert_eq!(error_code(&reply), "UNSUPPORTED_CODEC");
    let reply = mallory
        .request("publishFrames", json!({ "codec": "opus", "layers": ["a"] }))
        .await;
    assert_eq!(error_code(&reply), "INVALID_RTP_PARAMETERS");
    let reply = mallory
        .request(
            "publishFrames",
            json!({ "codec": "vp8", "layers": ["q", "q"] }),
        )
        .await;
    assert_eq!(error_code(&reply), "INVALID_RTP_PARAMETERS");
    // Over WebSocket there is nowhere to send frames.
    let reply = sub_ws
        .request("publishFrames", json!({ "codec": "vp8" }))
        .await;
    assert_eq!(error_code(&reply), "WEBTRANSPORT_REQUIRED");
    ok(&mallory.request("ping", json!({})).await, "pong");

    let before = sub.received().await.len();
    wait_until("media still flowing", Duration::from_secs(5), || async {
        sub.received().await.len() > before + 50
    })
    .await;
    let status = status(&server).await;
    let refused: u64 = status["perWorker"]
        .as_array()
        .expect("perWorker")
        .iter()
        .map(|w| w["media"]["frameStreamsRefused"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refused, 4, "{status}");

    // A session outside any room cannot open media streams; past a budget it is closed.
    let mut outsider = connect_wt(&server).await.unwrap();
    outsider.authenticate(&token(&server, "outsider")).await;
    let conn = outsider.wt_connection().clone();
    for _ in 0..17 {
        let _ = TrackStream::open(&conn, own, 0).await;
    }
    assert_eq!(frame_error(&mut outsider).await, "NOT_IN_ROOM");
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    assert!(closed.is_ok(), "the outsider's session is closed");

    // The publisher leaves: its frame producers close for the subscriber.
    assert!(frames_sent.load(Ordering::Relaxed) > 100);
    ok(
        &publisher.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
    let mut closed = Vec::new();
    while closed.len() < 2 {
        let n = sub_ws
            .notification("producerClosed", Duration::from_secs(5))
            .await;
        closed.push(n["data"]["producerId"].as_str().unwrap().to_string());
    }
    closed.sort();
    let mut expected = vec![video.to_string(), audio.to_string()];
    expected.sort();
    assert_eq!(closed, expected);
    sender.abort();
}

/// A WebTransport subscriber: joined with `media: "webtransport"`, receiving its frames.
async fn wt_subscriber(
    server: &sfu::ServerHandle,
    room: &str,
    name: &str,
) -> (WsClient, FrameReceiver) {
    let mut c = connect_wt(server).await.expect("WebTransport connects");
    c.authenticate(&token(server, name)).await;
    let joined = c
        .request(
            "joinRoom",
            json!({ "roomId": room, "displayName": name, "media": "webtransport" }),
        )
        .await;
    ok(&joined, "joinRoomResponse");
    let frames = FrameReceiver::spawn(c.wt_connection().clone());
    (c, frames)
}

async fn consume(c: &mut WsClient, producer: &str) -> Value {
    let reply = c
        .request("consumeFrames", json!({ "producerId": producer }))
        .await;
    ok(&reply, "consumeFramesResponse").clone()
}

/// A single-layer WebTransport publisher of `size`-byte VP8-tagged frames at 30 fps, with a
/// keyframe every second; the payload's byte 1 counts frames (mod 256).
fn spawn_big_sender(
    connection: wtransport::Connection,
    video: Uuid,
    size: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut stream: Option<TrackStream> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        for n in 0u64.. {
            tick.tick().await;
            let key = n.is_multiple_of(30);
            if key {
                if let Some(old) = stream.take() {
                    let _ = old.finish().await;
                }
                match TrackStream::open(&connection, video, 0).await {
                    Ok(s) => stream = Some(s),
                    Err(_) => return,
                }
            }
            let mut payload = vec![0x5au8; size];
            payload[..4].copy_from_slice(&tagged_vp8_frame(key, 0));
            payload[1] = n as u8;
            let ts = start.elapsed().as_micros() as u64;
            if stream
                .as_mut()
                .unwrap()
                .write_frame(key, ts, &payload)
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

/// Frames of `producer` whose payload (as the publisher tagged it) says `layer`.
fn of(frames: &[ReceivedFrame], producer: Uuid) -> Vec<&ReceivedFrame> {
    frames.iter().filter(|f| f.producer == producer).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_subscribers_get_frames_from_webrtc_and_webtransport_publishers() {
    let server = start_server().await;
    let mut rtc_ws = joined(&server, "wtsub", "rtc", true).await;
    let rtc = Peer::spawn().await;
    let published = rtc.publish(&mut rtc_ws).await;
    let id_of = |kind: &str| {
        published["producers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .unwrap()["producerId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (rtc_video, rtc_audio) = (id_of("video"), id_of("audio"));
    let rtc_video_id: Uuid = rtc_video.parse().unwrap();

    // WebRTC → WebTransport: RTP rebuilt into frames, simulcast layers chosen per subscriber.
    let (mut a, a_frames) = wt_subscriber(&server, "wtsub", "a").await;
    let info = consume(&mut a, &rtc_video).await;
    assert_eq!(info["producer"]["codec"], "video/VP8", "{info}");
    assert_eq!(info["producer"]["layers"], json!(["q", "h", "f"]));
    consume(&mut a, &rtc_audio).await;
    wait_until(
        "frames of the top layer",
        Duration::from_secs(10),
        || async {
            let f = a_frames.frames();
            let video = of(&f, rtc_video_id);
            video.len() >= 10 && video.iter().rev().take(5).all(|f| f.layer == 2)
        },
    )
    .await;
    let frames = a_frames.frames();
    let video = of(&frames, rtc_video_id);
    assert!(
        video[0].first_in_stream && video[0].keyframe,
        "a stream starts at a keyframe"
    );
    // What the publisher put in each frame: the keyframe bit and the layer it was sent on.
    for f in &video {
        assert_eq!(f.payload.len(), 4);
        assert_eq!(
            f.payload[3], f.layer,
            "the frame of the layer the stream names"
        );
        assert_eq!(f.payload[0] & 1 == 0, f.keyframe);
    }
    let audio_id: Uuid = rtc_audio.parse().unwrap();
    wait_until("audio frames", Duration::from_secs(5), || async {
        of(&a_frames.frames(), audio_id).len() > 10
    })
    .await;
    let frames = a_frames.frames();
    assert!(
        of(&frames, audio_id)
            .iter()
            .filter(|f| f.first_in_stream)
            .count()
            == 1,
        "audio stays on one stream"
    );
    // Frames arrive in timestamp order within a stream.
    assert!(video
        .windows(2)
        .all(|w| w[0].stream != w[1].stream || w[0].timestamp_us < w[1].timestamp_us));

    ok(
        &a.request(
            "setPreferredLayer",
            json!({ "producerId": rtc_video, "layer": "low" }),
        )
        .await,
        "setPreferredLayerResponse",
    );
    let changed = a.notification("layerChanged", Duration::from_secs(5)).await;
    assert_eq!(changed["data"]["producerId"], rtc_video);
    wait_until(
        "frames of the low layer",
        Duration::from_secs(5),
        || async {
            let f = a_frames.frames();
            of(&f, rtc_video_id)
                .iter()
                .rev()
                .take(5)
                .all(|f| f.layer == 0)
        },
    )
    .await;
    let frames = a_frames.frames();
    let switched = of(&frames, rtc_video_id)
        .into_iter()
        .find(|f| f.layer == 0)
        .expect("a low-layer frame");
    assert!(
        switched.first_in_stream && switched.keyframe,
        "the switch starts a stream at a keyframe"
    );

    // WebTransport → WebTransport: the publisher's own bytes, not repacketized.
    let mut wt_pub = wt_joined(&server, "wtsub", "wtpub", false).await;
    let big = publish_frames(&mut wt_pub, json!({ "codec": "vp8" })).await;
    let sender = spawn_big_sender(wt_pub.wt_connection().clone(), big, 100_000);
    let (mut fast, fast_frames) = wt_subscriber(&server, "wtsub", "fast").await;
    let (mut slow, slow_frames) = wt_subscriber(&server, "wtsub", "slow").await;
    consume(&mut fast, &big.to_string()).await;
    consume(&mut slow, &big.to_string()).await;
    wait_until("big frames on both", Duration::from_secs(10), || async {
        of(&fast_frames.frames(), big).len() > 20 && of(&slow_frames.frames(), big).len() > 20
    })
    .await;
    let frames = fast_frames.frames();
    let f = of(&frames, big)[5];
    assert_eq!(f.payload.len(), 100_000);
    assert!(f.payload[4..].iter().all(|b| *b == 0x5a), "byte for byte");

    // A subscriber that stops reading: it is reset and skipped, the others are not held up,
    // and when it reads again it resumes at a keyframe.
    slow_frames
        .paused
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let before = of(&fast_frames.frames(), big).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = of(&fast_frames.frames(), big).len() - before;
    assert!(
        during >= 90,
        "the fast subscriber kept receiving: {during} frames in 4 s"
    );
    let media = &status(&server).await["media"];
    assert!(media["framesDropped"].as_u64().unwrap() > 0, "{media}");
    let slow_before = slow_frames.frames().len();
    slow_frames
        .paused
        .store(false, std::sync::atomic::Ordering::Relaxed);
    wait_until(
        "the slow subscriber resumes",
        Duration::from_secs(10),
        || async {
            let frames = slow_frames.frames();
            frames[slow_before..]
                .iter()
                .any(|f| f.producer == big && f.first_in_stream && f.keyframe)
                && frames.len() > slow_before + 30
        },
    )
    .await;
    // Frame counters (payload byte 1) of the fast subscriber: no frame missing.
    let counters: Vec<u8> = of(&fast_frames.frames(), big)
        .iter()
        .map(|f| f.payload[1])
        .collect();
    assert!(
        counters.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "the fast subscriber lost nothing"
    );

    // Refusals.
    let reply = rtc_ws
        .request("consumeFrames", json!({ "producerId": rtc_video }))
        .await;
    assert_eq!(error_code(&reply), "WEBTRANSPORT_REQUIRED");
    let reply = a
        .request(
            "consumeFrames",
            json!({ "producerId": Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(error_code(&reply), "PRODUCER_NOT_FOUND");
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(&token(&server, "ws")).await;
    let reply = ws
        .request(
            "joinRoom",
            json!({ "roomId": "wtsub", "displayName": "ws", "media": "webtransport" }),
        )
        .await;
    assert_eq!(error_code(&reply), "WEBTRANSPORT_REQUIRED");

    // Leaving ends the subscriber's consumers; the counts go back.
    for c in [&mut a, &mut fast, &mut slow] {
        ok(
            &c.request("leaveRoom", json!({})).await,
            "leaveRoomResponse",
        );
    }
    sender.abort();
}
