//! Several `sfu` processes sharing the machine's Redis (127.0.0.1:6379): a room lives on one
//! node, clients reaching another node are redirected there, a dead node's rooms are taken
//! over, and a Redis outage leaves running rooms alone.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Tests here share Redis (one of them stops it): run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Node {
    // Held so the process lives as long as the node (killed on drop).
    _process: ServerProcess,
    id: String,
    addr: SocketAddr,
}

async fn spawn_node(name: &str) -> Node {
    let id = format!("{name}-{}-{}", std::process::id(), free_port());
    let process = spawn_server_process(&[("REDIS_URL", REDIS_URL), ("NODE_ID", &id)]).await;
    let addr = process.addr;
    wait_registered(&id).await;
    Node {
        _process: process,
        id,
        addr,
    }
}

async fn wait_registered(node_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(client) = redis::Client::open(REDIS_URL) {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let url: Option<String> = redis::cmd("HGET")
                    .arg(format!("sfu:node:{node_id}"))
                    .arg("url")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                if url.is_some() {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {node_id} never registered in Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unique_room(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), free_port())
}

async fn subscribe_all(ws: &mut SignalClient, peer: &Peer, tracks: usize) {
    loop {
        let offer = ws
            .notification("subscriberOffer", Duration::from_secs(10))
            .await;
        peer.answer_subscriber_offer(ws, &offer).await;
        if offer["data"]["tracks"].as_array().unwrap().len() >= tracks {
            return;
        }
    }
}

async fn wait_media(peer: &Peer, more_than: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while peer.received().await.len() <= more_than {
        assert!(Instant::now() < deadline, "no media: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Join `room` through `addr`, following a redirect to the owning node. Returns the client
/// and the address it ended up on.
async fn join_following_redirect(
    addr: SocketAddr,
    user: &str,
    room: &str,
) -> (SignalClient, SocketAddr) {
    let mut c = client_at(addr, user).await;
    let reply = c
        .request("joinRoom", json!({ "roomId": room, "displayName": user }))
        .await;
    if reply["type"] == "joinRoomResponse" {
        return (c, addr);
    }
    assert_eq!(error_code(&reply), "ROOM_ON_OTHER_NODE");
    let url = reply["data"]["nodeUrl"]
        .as_str()
        .expect("nodeUrl")
        .to_string();
    let owner: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let mut c = client_at(owner, user).await;
    let reply = c
        .request("joinRoom", json!({ "roomId": room, "displayName": user }))
        .await;
    ok(&reply, "joinRoomResponse");
    (c, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_created_on_one_node_is_joined_through_another_and_survives_its_death() {
    let _serial = SERIAL.lock().await;
    let a = spawn_node("a").await;
    let b = spawn_node("b").await;
    let room = unique_room("cross");

    // Created through A (tie on load: A keeps it), publisher on A.
    let mut publisher_ws = client_at(a.addr, "pub").await;
    let created = publisher_ws
        .request("createRoom", json!({ "name": "Cross", "roomId": room }))
        .await;
    assert_eq!(
        ok(&created, "createRoomResponse")["nodeUrl"],
        format!("http://127.0.0.1:{}", a.addr.port())
    );
    ok(
        &publisher_ws
            .request("joinRoom", json!({ "roomId": room, "displayName": "Pub" }))
            .await,
        "joinRoomResponse",
    );
    let publisher = Peer::spawn().await;
    publisher.publish(&mut publisher_ws).await;

    // A client connecting to B is sent to A, and receives the publisher's media there.
    let (mut sub_ws, landed) = join_following_redirect(b.addr, "sub", &room).await;
    assert_eq!(landed, a.addr, "redirected to the owner");
    let subscriber = Peer::spawn().await;
    subscribe_all(&mut sub_ws, &subscriber, 2).await;
    wait_media(&subscriber, 20, "B-routed subscriber on A").await;

    // The directory lists the room's participants.
    let mut conn = redis_connection().await;
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("sfu:room:{room}:participants"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members.len(), 2);

    // A dies hard. Its registry entry expires, and the next join through B re-creates the
    // room on B, which works for media.
    drop(sub_ws);
    drop(publisher_ws);
    let a_id = a.id.clone();
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("sfu:node:{a_id}"))
            .query_async(&mut conn)
            .await
            .unwrap_or(false);
        let owner_alive = {
            let owner: Option<String> = redis::cmd("HGET")
                .arg(format!("sfu:room:{room}"))
                .arg("node")
                .query_async(&mut conn)
                .await
                .unwrap();
            let owner = owner.expect("room record kept until taken over");
            redis::cmd("EXISTS")
                .arg(format!("sfu:node:{owner}"))
                .query_async::<bool>(&mut conn)
                .await
                .unwrap()
        };
        if !exists {
            assert!(!owner_alive, "the room's owner is the dead node");
        }
        if !exists && !owner_alive {
            break;
        }
        assert!(Instant::now() < deadline, "dead node's entry never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (mut p2_ws, landed) = join_following_redirect(b.addr, "pub2", &room).await;
    assert_eq!(landed, b.addr, "the room now lives on B");
    let owner: String = redis::cmd("HGET")
        .arg(format!("sfu:room:{room}"))
        .arg("node")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owner, b.id);
    let (mut s2_ws, _) = join_following_redirect(b.addr, "sub2", &room).await;
    let publisher2 = Peer::spawn().await;
    publisher2.publish(&mut p2_ws).await;
    let subscriber2 = Peer::spawn().await;
    subscribe_all(&mut s2_ws, &subscriber2, 2).await;
    wait_media(&subscriber2, 20, "room re-created on B").await;
}

/// Restart Redis the way the machine starts it (no persistence), whatever happens.
struct RedisRestart;

impl Drop for RedisRestart {
    fn drop(&mut self) {
        start_redis();
    }
}

fn start_redis() {
    let _ = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_leaves_running_rooms_alone_and_the_node_re_registers() {
    let _serial = SERIAL.lock().await;
    let node = spawn_node("outage").await;
    let room = unique_room("outage");
    let mut publisher_ws = client_at(node.addr, "p").await;
    ok(
        &publisher_ws
            .request("createRoom", json!({ "name": "Outage", "roomId": room }))
            .await,
        "createRoomResponse",
    );
    ok(
        &publisher_ws
            .request("joinRoom", json!({ "roomId": room, "displayName": "P" }))
            .await,
        "joinRoomResponse",
    );
    let (mut sub_ws, _) = join_following_redirect(node.addr, "s", &room).await;
    let publisher = Peer::spawn().await;
    publisher.publish(&mut publisher_ws).await;
    let subscriber = Peer::spawn().await;
    subscribe_all(&mut sub_ws, &subscriber, 2).await;
    wait_media(&subscriber, 10, "before the outage").await;

    // Redis goes away.
    let _restart = RedisRestart;
    let _ = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "shutdown", "nosave"])
        .status();
    let before = subscriber.received().await.len();
    wait_media(&subscriber, before + 30, "during the outage").await;
    // Local room: joining still works. Unknown (possibly remote) rooms: a clear error.
    let (_late, _) = join_following_redirect(node.addr, "late", &room).await;
    let mut stranger = client_at(node.addr, "x").await;
    let reply = stranger
        .request(
            "joinRoom",
            json!({ "roomId": unique_room("elsewhere"), "displayName": "X" }),
        )
        .await;
    assert_eq!(error_code(&reply), "DIRECTORY_UNAVAILABLE");
    let reply = stranger
        .request(
            "createRoom",
            json!({ "name": "n", "roomId": unique_room("new") }),
        )
        .await;
    assert_eq!(error_code(&reply), "DIRECTORY_UNAVAILABLE");

    // Redis returns: the node re-registers by itself and new rooms work again.
    start_redis();
    wait_registered(&node.id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = stranger
            .request(
                "createRoom",
                json!({ "name": "n", "roomId": unique_room("after") }),
            )
            .await;
        if reply["type"] == "createRoomResponse" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "directory never came back: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let still = subscriber.received().await.len();
    wait_media(&subscriber, still + 10, "after the outage").await;
}

/// A WHEP/WHIP offer of one m-line (`direction` is the client's side).
fn http_offer(direction: str0m::media::Direction, kind: str0m::media::MediaKind) -> String {
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(kind, direction, None, None, None);
    api.apply().expect("offer").0.to_sdp_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_on_a_node_that_does_not_own_the_room_redirect_to_its_owner() {
    let _serial = SERIAL.lock().await;
    let a = spawn_node("a").await;
    let b = spawn_node("b").await;
    let room = unique_room("whipredirect");
    // A WHIP publisher creates the room on A.
    let whip = reqwest::Client::new()
        .post(format!("http://{}/whip/{room}", a.addr))
        .bearer_auth(token_for("whip-pub"))
        .header("content-type", "application/sdp")
        .body(http_offer(
            str0m::media::Direction::SendOnly,
            str0m::media::MediaKind::Audio,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(whip.status(), 201, "WHIP on the owner");

    // Redirects are followed by hand below: reqwest (like curl) drops the Bearer token when a
    // redirect changes the origin, a WHIP client re-posts its offer with it (RFC 9725 §4.5).
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let owner = format!("http://127.0.0.1:{}", a.addr.port());
    for (endpoint, direction) in [
        ("whep", str0m::media::Direction::RecvOnly),
        ("whip", str0m::media::Direction::SendOnly),
    ] {
        let token = token_for(&format!("{endpoint}-user"));
        let post = |url: String| {
            client
                .post(url)
                .bearer_auth(&token)
                .header("content-type", "application/sdp")
                .body(http_offer(direction, str0m::media::MediaKind::Audio))
                .send()
        };
        // B answers 307 to the same endpoint on A (a JSON body still says why).
        let redirected = post(format!("http://{}/{endpoint}/{room}", b.addr))
            .await
            .unwrap();
        assert_eq!(redirected.status(), 307, "{endpoint} on B");
        let location = redirected.headers()["location"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(location, format!("{owner}/{endpoint}/{room}"));
        let body: serde_json::Value = redirected.json().await.unwrap();
        assert_eq!(body["code"], "ROOM_ON_OTHER_NODE");
        // Posting the offer again at the Location gets the session from A.
        let followed = post(location).await.unwrap();
        assert_eq!(followed.status(), 201, "{endpoint} at the owner");
        let answer = followed.text().await.unwrap();
        assert!(answer.starts_with("v=0"), "{answer}");
    }
}
