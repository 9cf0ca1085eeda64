//! TURN credentials against a real coturn (Debian `coturn`, `use-auth-secret` with the SFU's
//! TURN_SECRET): what joinRoomResponse, createWebRtcTransportResponse and the WHIP/WHEP `Link`
//! headers hand out ALLOCATEs a relay; an expired or forged credential is refused. The TURN
//! Allocate exchange (RFC 5766 §6, long-term credentials RFC 5389 §10.2) is done here by hand
//! over UDP, so nothing but coturn judges the credentials.

mod common;
mod coturn;

use std::time::Instant;

use serde_json::{json, Value};
use str0m::media::{Direction, MediaKind};
use str0m::RtcConfig;

use common::{ok, token_for, Transport, WsClient};
use coturn::{allocate, Coturn, TURN_SECRET};

/// The one entry of `iceServers`: (urls, username, credential).
fn ice_server(v: &Value) -> (Vec<String>, String, String) {
    let servers = v["iceServers"].as_array().expect("iceServers is an array");
    assert_eq!(servers.len(), 1, "{servers:?}");
    let s = &servers[0];
    let urls = s["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    (
        urls,
        s["username"].as_str().unwrap().to_string(),
        s["credential"].as_str().unwrap().to_string(),
    )
}

fn offer(direction: Direction) -> String {
    let mut rtc = RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, direction, None, None, None);
    api.apply().expect("offer").0.to_sdp_string()
}

/// POST a WHIP/WHEP offer; returns the status and its `Link` header values.
async fn links(base: &str, path: &str, user: &str, direction: Direction) -> (u16, Vec<String>) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token_for(user))
        .header("content-type", "application/sdp")
        .body(offer(direction))
        .send()
        .await
        .expect("request");
    let links = response
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    (response.status().as_u16(), links)
}

/// `name="value"` out of a Link header value.
fn link_param(link: &str, name: &str) -> String {
    let start = link
        .find(&format!("; {name}=\""))
        .unwrap_or_else(|| panic!("{name} in {link}"))
        + name.len()
        + 4;
    let end = start + link[start..].find('"').unwrap();
    link[start..end].to_string()
}

async fn join(server: &sfu::ServerHandle, user: &str, room: &str) -> (WsClient, Value) {
    let mut ws = WsClient::connect_with(server, Transport::WebSocket).await;
    ws.authenticate(&token_for(user)).await;
    let r = ws
        .request("createRoom", json!({ "name": room, "roomId": room }))
        .await;
    ok(&r, "createRoomResponse");
    let r = ws
        .request("joinRoom", json!({ "roomId": room, "displayName": user }))
        .await;
    let data = ok(&r, "joinRoomResponse").clone();
    (ws, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_out_credentials_allocate_on_coturn_and_expired_ones_are_refused() {
    let turn = Coturn::start().await;
    let url = turn.url();
    let server = common::start_server_with(&[
        "--turn-urls",
        &url,
        "--turn-secret",
        TURN_SECRET,
        "--turn-credential-ttl-secs",
        "600",
    ])
    .await;

    // joinRoomResponse: the configured URI, `<expiry>:<userId>`, a credential coturn accepts.
    let (mut ws, joined) = join(&server, "alice", "turn-a").await;
    let (urls, username, credential) = ice_server(&joined);
    assert_eq!(urls, vec![url.clone()]);
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let now = common::token::unix_now();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 590..=now + 601).contains(&expiry),
        "{expiry} vs {now}"
    );
    let allocated = allocate(turn.addr, &username, &credential).await;
    assert_eq!(
        allocated,
        Ok(()),
        "coturn log {}:\n{}",
        turn.log.display(),
        turn.log()
    );

    // The mediasoup-style transport reply carries the same servers.
    let r = ws
        .request(
            "createWebRtcTransport",
            json!({ "roomId": "turn-a", "direction": "send" }),
        )
        .await;
    let (urls, username, credential) = ice_server(ok(&r, "createWebRtcTransportResponse"));
    assert_eq!(urls, vec![url.clone()]);
    assert_eq!(allocate(turn.addr, &username, &credential).await, Ok(()));

    // Expired: the right HMAC for an expiry in the past; forged: a credential off by a byte.
    let expired = sfu::turn::credentials(TURN_SECRET, "alice", now - 60);
    let refused = allocate(turn.addr, &expired.username, &expired.credential).await;
    assert!(
        matches!(refused, Err(401) | Err(438)),
        "expired credential: {refused:?}"
    );
    let forged = format!("{}A", &credential[..credential.len() - 1]);
    let refused = allocate(turn.addr, &username, &forged).await;
    assert!(
        matches!(refused, Err(401)),
        "forged credential: {refused:?}"
    );

    // WHIP and WHEP 201s: one RFC 9725 Link per URI, whose credentials allocate too.
    let base = format!("http://{}", server.http_addr);
    for (path, direction) in [
        ("/whip/turn-w", Direction::SendOnly),
        ("/whep/turn-w", Direction::RecvOnly),
    ] {
        let (status, links) = links(&base, path, "bob", direction).await;
        assert_eq!(status, 201, "{path}");
        assert_eq!(links.len(), 1, "{path}: {links:?}");
        let link = &links[0];
        assert!(
            link.starts_with(&format!("<{url}>; rel=\"ice-server\"; ")),
            "{link}"
        );
        assert!(link.ends_with("; credential-type=\"password\""), "{link}");
        let username = link_param(link, "username");
        assert!(username.ends_with(":bob"), "{link}");
        let credential = link_param(link, "credential");
        assert_eq!(allocate(turn.addr, &username, &credential).await, Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_turn_urls_nothing_is_announced() {
    let server = common::start_server().await;
    let (mut ws, joined) = join(&server, "carol", "turn-none").await;
    assert!(joined.get("iceServers").is_none(), "{joined}");
    let r = ws
        .request(
            "createWebRtcTransport",
            json!({ "roomId": "turn-none", "direction": "recv" }),
        )
        .await;
    assert!(ok(&r, "createWebRtcTransportResponse")
        .get("iceServers")
        .is_none());
    let base = format!("http://{}", server.http_addr);
    let (status, links) = links(&base, "/whip/turn-none2", "carol", Direction::SendOnly).await;
    assert_eq!(status, 201);
    assert!(links.is_empty(), "{links:?}");
}
