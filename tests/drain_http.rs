//! WHIP and WHEP follow the same lifecycle as signaling sessions: refused while the node drains
//! (503, `SERVER_SHUTTING_DOWN`), and a WHIP publisher and WHEP viewer active at SIGTERM hold
//! the drain — their media keeps flowing — until they DELETE or DRAIN_TIMEOUT passes.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::RtcConfig;

/// A static offer of one audio m-line (no peer behind it: enough to make a session).
fn offer(direction: Direction) -> String {
    let mut rtc = RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, direction, None, None, None);
    api.apply().expect("offer").0.to_sdp_string()
}

async fn post(base: &str, path: &str, token: &str, sdp: String) -> (u16, Value, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, location)
}

async fn delete(base: &str, location: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .delete(format!("{base}{location}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// A str0m peer in a WHIP or WHEP session: offer one audio m-line, POST it, apply the answer.
async fn http_peer(
    base: &str,
    path: &str,
    token: &str,
    direction: Direction,
) -> (Arc<Peer>, Mid, String) {
    let peer = Peer::spawn().await;
    let (sdp, pending, mid) = peer
        .with(move |s| {
            let mut api = s.rtc.sdp_api();
            let mid = api.add_media(MediaKind::Audio, direction, None, None, None);
            let (offer, pending) = api.apply().expect("offer");
            (offer.to_sdp_string(), pending, mid)
        })
        .await;
    let (status, body, location) = post(base, path, token, sdp).await;
    assert_eq!(status, 201, "{path}: {body}");
    let answer = SdpAnswer::from_sdp_string(body.as_str().expect("SDP answer")).expect("answer");
    peer.with(move |s| {
        s.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accepted")
    })
    .await;
    (Arc::new(peer), mid, location)
}

/// Send one synthetic Opus packet every 20 ms on `mid` until aborted.
fn send_audio(peer: Arc<Peer>, mid: Mid) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(20));
        for frame in 0u64.. {
            every.tick().await;
            peer.with(move |s| {
                let pt = s
                    .rtc
                    .codec_config()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .map(|p| p.pt());
                let Some(pt) = pt else { return };
                let mut api = s.rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(mid, None) {
                    let payload = vec![0xfc, 0xff, 0xfe, 0x00];
                    let rtp = RtpWrite::new(
                        pt,
                        SeqNo::from(frame + 1),
                        (frame * 960) as u32,
                        Instant::now(),
                        payload,
                    );
                    tx.write_rtp(rtp);
                }
            })
            .await;
        }
    })
}

async fn received(peer: &Peer) -> usize {
    peer.received().await.len()
}

/// Wait until `peer` has received more than `more_than` packets.
async fn receives(peer: &Peer, more_than: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = received(peer).await;
        if n > more_than {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no media within {within:?} ({n} packets)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_are_refused_while_draining_and_hold_the_drain() {
    let server = start_server().await;
    let base = format!("http://{}", server.http_addr);
    let alice = token(&server, "alice");
    let (status, body, whip) = post(&base, "/whip/d", &alice, offer(Direction::SendOnly)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body, whep) = post(&base, "/whep/d", &alice, offer(Direction::RecvOnly)).await;
    assert_eq!(status, 201, "{body}");

    let ctx = server.ctx.clone();
    assert_eq!(ctx.rooms.http_sessions().len(), 2);
    let drain = tokio::spawn(server.drain(Duration::from_secs(20)));
    while !ctx.is_draining() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (path, direction) in [
        ("/whep/d", Direction::RecvOnly),
        ("/whip/d", Direction::SendOnly),
    ] {
        let (status, body, _) = post(&base, path, &alice, offer(direction)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("SERVER_SHUTTING_DOWN")),
            "{path}: {body}"
        );
    }
    // The two HTTP sessions hold the drain; each DELETE lets one go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !drain.is_finished(),
        "the drain ended with WHIP/WHEP sessions active"
    );
    assert_eq!(delete(&base, &whep, &alice).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !drain.is_finished(),
        "the drain ended with a WHIP session active"
    );
    assert_eq!(delete(&base, &whip, &alice).await, 200);
    let remaining = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("drain ends once the sessions left")
        .unwrap();
    assert_eq!(remaining, 0);
}

fn sigterm(server: &ServerProcess) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn readyz(addr: SocketAddr) -> u16 {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn wait_exit(server: &mut ServerProcess, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WHIP publisher sending audio and a WHEP viewer receiving it, on a spawned server.
async fn broadcast(
    server: &ServerProcess,
) -> (
    Arc<Peer>,
    String,
    Arc<Peer>,
    String,
    tokio::task::JoinHandle<()>,
) {
    let base = format!("http://{}", server.addr);
    let token = token_for("obs");
    let (publisher, mid, whip) = http_peer(&base, "/whip/live", &token, Direction::SendOnly).await;
    let sending = send_audio(publisher.clone(), mid);
    let (viewer, _, whep) = http_peer(&base, "/whep/live", &token, Direction::RecvOnly).await;
    receives(&viewer, 10, Duration::from_secs(10)).await;
    (publisher, whip, viewer, whep, sending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_whip_and_whep_media_flowing_until_they_delete() {
    let mut server = spawn_server_process(&[("DRAIN_TIMEOUT", "30")]).await;
    let base = format!("http://{}", server.addr);
    let token = token_for("obs");
    let (_publisher, whip, viewer, whep, sending) = broadcast(&server).await;

    sigterm(&server);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with WHIP/WHEP sessions active"
    );
    assert_eq!(readyz(server.addr).await, 503);
    // Media keeps flowing during the drain: ~50 packets a second.
    let before = received(&viewer).await;
    receives(&viewer, before + 25, Duration::from_secs(3)).await;

    assert_eq!(delete(&base, &whep, &token).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with the WHIP publisher active"
    );
    assert_eq!(delete(&base, &whip, &token).await, 200);
    let left = Instant::now();
    let status = wait_exit(&mut server, Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(left.elapsed() < Duration::from_secs(10));
    sending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_ends_whip_and_whep_sessions_that_stay() {
    let mut server = spawn_server_process(&[("DRAIN_TIMEOUT", "3")]).await;
    let (_publisher, _whip, viewer, _whep, sending) = broadcast(&server).await;
    let started = Instant::now();
    sigterm(&server);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = received(&viewer).await;
    receives(&viewer, before + 15, Duration::from_millis(1300)).await;
    let status = wait_exit(&mut server, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "exited after {:?}, before DRAIN_TIMEOUT",
        started.elapsed()
    );
    sending.abort();
}
