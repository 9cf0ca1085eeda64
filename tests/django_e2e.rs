//! The server against a Django stand-in (a real HTTP server): rooms defined in Django are
//! materialized on join, and signed webhooks follow a join/publish/leave sequence — also when
//! the webhook endpoint fails for a while, without slowing signaling down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};
use sfu::integrations::django::verify_signature;

const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";

#[derive(Default)]
struct Django {
    webhooks: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    /// Answer the first N webhook attempts with 500.
    failures_left: Mutex<u32>,
    attempts: Mutex<u32>,
}

async fn hook(
    State(d): State<Arc<Django>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    *d.attempts.lock().unwrap() += 1;
    {
        let mut left = d.failures_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    d.webhooks.lock().unwrap().push((headers, body.to_vec()));
    StatusCode::NO_CONTENT
}

async fn room(Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, StatusCode> {
    assert!(headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer ey")));
    match id.as_str() {
        "from-django" => Ok(Json(
            json!({ "name": "Django room", "max_participants": 5 }),
        )),
        "forbidden" => Err(StatusCode::FORBIDDEN),
        _ => Err(StatusCode::NOT_FOUND),
    }
}

async fn start_django(failures: u32) -> (String, Arc<Django>) {
    let django = Arc::new(Django {
        failures_left: Mutex::new(failures),
        ..Default::default()
    });
    let app = Router::new()
        .route("/hooks", post(hook))
        .route("/api/rooms/{id}/", get(room))
        .with_state(django.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, django)
}

async fn sfu_with(django_url: &str) -> sfu::ServerHandle {
    start_server_with(&[
        "--django-base-url",
        django_url,
        "--django-room-lookup",
        "true",
        "--django-webhook-url",
        &format!("{django_url}/hooks"),
        "--django-webhook-secret",
        WEBHOOK_SECRET,
    ])
    .await
}

/// Delivered webhooks as (type, data), each checked for a valid signature and delivery id.
fn delivered(django: &Django) -> Vec<(String, Value)> {
    let now = sfu::auth::unix_now();
    django
        .webhooks
        .lock()
        .unwrap()
        .iter()
        .map(|(headers, body)| {
            let signature = headers["x-sfu-signature"].to_str().unwrap();
            assert!(verify_signature(WEBHOOK_SECRET, signature, body, now, 300));
            assert!(!verify_signature("wrong-secret", signature, body, now, 300));
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(headers["x-sfu-delivery"].to_str().unwrap(), v["id"]);
            assert_eq!(headers["x-sfu-event"].to_str().unwrap(), v["type"]);
            (v["type"].as_str().unwrap().to_string(), v["data"].clone())
        })
        .collect()
}

async fn wait_for_webhooks(django: &Django, n: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = delivered(django);
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} webhooks: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_come_from_django_and_a_session_is_reported_by_signed_webhooks() {
    let (url, django) = start_django(0).await;
    let server = sfu_with(&url).await;
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(&token(&server, "ada")).await;

    // Unknown here, known to Django: created from its metadata.
    let joined = ws
        .request(
            "joinRoom",
            json!({ "roomId": "from-django", "displayName": "Ada" }),
        )
        .await;
    let participant_id = ok(&joined, "joinRoomResponse")["participantId"].clone();
    let mut other = WsClient::connect(server.http_addr).await;
    other.authenticate(&token(&server, "x")).await;
    let reply = other
        .request(
            "joinRoom",
            json!({ "roomId": "forbidden", "displayName": "X" }),
        )
        .await;
    assert_eq!(error_code(&reply), "ROOM_ACCESS_DENIED");
    let reply = other
        .request(
            "joinRoom",
            json!({ "roomId": "nowhere", "displayName": "X" }),
        )
        .await;
    assert_eq!(error_code(&reply), "ROOM_NOT_FOUND");

    let publisher = Peer::spawn().await;
    publisher.publish(&mut ws).await;
    ok(
        &ws.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );

    let hooks = wait_for_webhooks(&django, 6).await;
    let types: Vec<&str> = hooks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "room.started",
            "participant.joined",
            "producer.published",
            "producer.published",
            "participant.left",
            "room.finished"
        ]
    );
    assert_eq!(hooks[0].1["name"], "Django room");
    assert_eq!(hooks[1].1["participantId"], participant_id);
    assert_eq!(hooks[1].1["userId"], "ada");
    let kinds: Vec<&Value> = hooks[2..4].iter().map(|(_, d)| &d["kind"]).collect();
    assert!(kinds.contains(&&json!("audio")) && kinds.contains(&&json!("video")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhook_endpoint_is_retried_without_blocking_signaling() {
    // The first three attempts fail; backoff is 0.5 s, 1 s, 2 s.
    let (url, django) = start_django(3).await;
    let server = sfu_with(&url).await;
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(&token(&server, "bo")).await;
    let started = Instant::now();
    ok(
        &ws.request("createRoom", json!({ "name": "r", "roomId": "retry" }))
            .await,
        "createRoomResponse",
    );
    ok(
        &ws.request(
            "joinRoom",
            json!({ "roomId": "retry", "displayName": "Bo" }),
        )
        .await,
        "joinRoomResponse",
    );
    ok(
        &ws.request("leaveRoom", json!({})).await,
        "leaveRoomResponse",
    );
    // Signaling answered while the endpoint was still failing.
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(delivered(&django).is_empty());

    let hooks = wait_for_webhooks(&django, 4).await;
    let types: Vec<&str> = hooks.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "room.started",
            "participant.joined",
            "participant.left",
            "room.finished"
        ]
    );
    assert_eq!(*django.attempts.lock().unwrap(), 3 + 4);
    server.stop().await;
}
