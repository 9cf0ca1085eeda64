//! The Django integration against a real HTTP stand-in for Django (axum on 127.0.0.1:0):
//! signed, ordered, retried webhooks that never block the caller, and room metadata lookups.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sfu::integrations::django::{
    verify_signature, LookupError, RoomLookup, RoomMetadata, WebhookConfig, WebhookEvent, Webhooks,
    DEFAULT_ROOM_LOOKUP_PATH,
};

const SECRET: &str = "test-webhook-secret";

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// What the stand-in answers to its n-th request (0-based): status, body, delay before answering.
type Script = dyn Fn(usize, &Recorded) -> (u16, String, Duration) + Send + Sync;

struct StandIn {
    requests: Mutex<Vec<Recorded>>,
    script: Box<Script>,
}

struct Django {
    addr: SocketAddr,
    state: Arc<StandIn>,
}

impl Django {
    async fn start(
        script: impl Fn(usize, &Recorded) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Django {
        let state = Arc::new(StandIn {
            requests: Mutex::new(Vec::new()),
            script: Box::new(script),
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Django { addr, state }
    }

    /// A stand-in answering every request with `status` at once.
    async fn answering(status: u16) -> Django {
        Django::start(move |_, _| (status, String::new(), Duration::ZERO)).await
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/sfu/", self.addr)
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    async fn wait_for_requests(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.requests().len() < n {
            assert!(
                Instant::now() < deadline,
                "stand-in got {} requests, expected {n}",
                self.requests().len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn record(
    State(state): State<Arc<StandIn>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Recorded {
        method,
        path: uri.path().to_string(),
        headers,
        body,
    };
    let (status, body, delay) = {
        let mut requests = state.requests.lock().unwrap();
        let answer = (state.script)(requests.len(), &request);
        requests.push(request);
        answer
    };
    tokio::time::sleep(delay).await;
    let status = StatusCode::from_u16(status).unwrap();
    (status, [("content-type", "application/json")], body).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config(url: String) -> WebhookConfig {
    WebhookConfig {
        max_attempts: 4,
        timeout: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(20),
        ..WebhookConfig::new(url, SECRET)
    }
}

fn room_started(room: &str) -> WebhookEvent {
    WebhookEvent::RoomStarted {
        room_id: room.into(),
        name: format!("Room {room}"),
    }
}

fn all_event_kinds() -> Vec<WebhookEvent> {
    vec![
        room_started("r1"),
        WebhookEvent::ParticipantJoined {
            room_id: "r1".into(),
            participant_id: "p1".into(),
            user_id: "42".into(),
            display_name: "Ada".into(),
        },
        WebhookEvent::ProducerPublished {
            room_id: "r1".into(),
            participant_id: "p1".into(),
            producer_id: "m1".into(),
            kind: "video".into(),
        },
        WebhookEvent::ParticipantLeft {
            room_id: "r1".into(),
            participant_id: "p1".into(),
            user_id: "42".into(),
            duration_seconds: 61,
        },
        WebhookEvent::RoomFinished {
            room_id: "r1".into(),
            duration_seconds: 62,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arrive_in_order_signed_and_flush_reports_delivery() {
    let django = Django::answering(204).await;
    let webhooks = Webhooks::start(config(django.url()));
    for event in all_event_kinds() {
        webhooks.notify(event);
    }
    assert!(webhooks.flush(Duration::from_secs(5)).await);
    assert_eq!(webhooks.stats().delivered, 5);
    assert_eq!(webhooks.dropped(), 0);

    let requests = django.requests();
    let types: Vec<_> = requests.iter().map(|r| r.json()["type"].clone()).collect();
    assert_eq!(
        types,
        [
            "room.started",
            "participant.joined",
            "producer.published",
            "participant.left",
            "room.finished"
        ]
    );
    let mut ids = std::collections::HashSet::new();
    for request in &requests {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/hooks/sfu/");
        assert_eq!(request.header("content-type"), "application/json");
        let body = request.json();
        assert_eq!(request.header("x-sfu-event"), body["type"]);
        assert_eq!(request.header("x-sfu-delivery"), body["id"]);
        assert!(uuid::Uuid::parse_str(request.header("x-sfu-delivery")).is_ok());
        assert!(ids.insert(body["id"].as_str().unwrap().to_string()));
        assert!(body["createdAt"].as_u64().unwrap().abs_diff(now()) < 60);

        let signature = request.header("x-sfu-signature");
        assert!(signature.starts_with("t="), "{signature}");
        assert!(verify_signature(
            SECRET,
            signature,
            &request.body,
            now(),
            300
        ));
        let mut tampered = request.body.to_vec();
        tampered[1] ^= 1;
        assert!(!verify_signature(SECRET, signature, &tampered, now(), 300));
        assert!(!verify_signature(
            "wrong",
            signature,
            &request.body,
            now(),
            300
        ));
        assert!(!verify_signature(
            SECRET,
            signature,
            &request.body,
            now() + 3600,
            300
        ));
    }

    assert_eq!(
        requests[1].json()["data"],
        serde_json::json!({
            "roomId": "r1", "participantId": "p1", "userId": "42", "displayName": "Ada"
        })
    );
    assert_eq!(
        requests[2].json()["data"],
        serde_json::json!({
            "roomId": "r1", "participantId": "p1", "producerId": "m1", "kind": "video"
        })
    );
    assert_eq!(
        requests[3].json()["data"],
        serde_json::json!({
            "roomId": "r1", "participantId": "p1", "userId": "42", "durationSeconds": 61
        })
    );
    assert_eq!(
        requests[4].json()["data"],
        serde_json::json!({"roomId": "r1", "durationSeconds": 62})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_a_stable_delivery_id() {
    let django = Django::start(|n, _| {
        let status = if n < 2 { 500 } else { 200 };
        (status, String::new(), Duration::ZERO)
    })
    .await;
    let webhooks = Webhooks::start(config(django.url()));
    webhooks.notify(room_started("first"));
    webhooks.notify(room_started("second"));
    assert!(webhooks.flush(Duration::from_secs(5)).await);

    let requests = django.requests();
    assert_eq!(
        requests.len(),
        4,
        "3 attempts for the first, 1 for the second"
    );
    let first_id = requests[0].header("x-sfu-delivery").to_string();
    for attempt in &requests[..3] {
        assert_eq!(attempt.header("x-sfu-delivery"), first_id);
        assert_eq!(attempt.body, requests[0].body, "same body on every retry");
        assert_eq!(attempt.json()["data"]["roomId"], "first");
        assert!(verify_signature(
            SECRET,
            attempt.header("x-sfu-signature"),
            &attempt.body,
            now(),
            300
        ));
    }
    assert_eq!(requests[3].json()["data"]["roomId"], "second");
    assert_ne!(requests[3].header("x-sfu-delivery"), first_id);
    let stats = webhooks.stats();
    assert_eq!((stats.delivered, stats.gave_up), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_408_and_429_are_retried() {
    let django = Django::start(|n, _| match n {
        0 => (200, String::new(), Duration::from_secs(3)), // longer than the 200 ms timeout
        1 => (408, String::new(), Duration::ZERO),
        2 => (429, String::new(), Duration::ZERO),
        _ => (200, String::new(), Duration::ZERO),
    })
    .await;
    let webhooks = Webhooks::start(WebhookConfig {
        timeout: Duration::from_millis(200),
        ..config(django.url())
    });
    webhooks.notify(room_started("r"));
    assert!(webhooks.flush(Duration::from_secs(5)).await);
    assert_eq!(django.requests().len(), 4);
    assert_eq!(webhooks.stats().delivered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let django = Django::answering(400).await;
    let webhooks = Webhooks::start(config(django.url()));
    webhooks.notify(room_started("a"));
    webhooks.notify(room_started("b"));
    assert!(
        webhooks.flush(Duration::from_secs(5)).await,
        "given up counts as drained"
    );
    let rooms: Vec<_> = django
        .requests()
        .iter()
        .map(|r| r.json()["data"]["roomId"].clone())
        .collect();
    assert_eq!(rooms, ["a", "b"], "one attempt each");
    let stats = webhooks.stats();
    assert_eq!((stats.delivered, stats.gave_up), (0, 2));
    assert_eq!(webhooks.dropped(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_attempts() {
    let django = Django::answering(503).await;
    let webhooks = Webhooks::start(WebhookConfig {
        max_attempts: 3,
        ..config(django.url())
    });
    webhooks.notify(room_started("r"));
    assert!(webhooks.flush(Duration::from_secs(5)).await);
    assert_eq!(django.requests().len(), 3);
    assert_eq!(webhooks.stats().gave_up, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_never_blocks_and_flush_times_out_while_the_endpoint_hangs() {
    let django = Django::start(|_, _| (200, String::new(), Duration::from_secs(3))).await;
    let webhooks = Webhooks::start(WebhookConfig {
        timeout: Duration::from_millis(200),
        ..config(django.url())
    });
    webhooks.notify(room_started("first"));
    django.wait_for_requests(1).await; // the delivery task is now stuck on the endpoint

    let started = Instant::now();
    for i in 0..100 {
        webhooks.notify(room_started(&format!("r{i}")));
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(100),
        "100 notifies took {elapsed:?}"
    );
    assert_eq!(webhooks.stats().queued, 100);
    assert_eq!(webhooks.dropped(), 0);

    let started = Instant::now();
    assert!(!webhooks.flush(Duration::from_millis(300)).await);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts() {
    let django = Django::start(|_, _| (200, String::new(), Duration::from_secs(3))).await;
    let webhooks = Webhooks::start(WebhookConfig {
        queue_capacity: 2,
        timeout: Duration::from_millis(500),
        ..config(django.url())
    });
    webhooks.notify(room_started("in-flight"));
    django.wait_for_requests(1).await; // taken off the queue, hanging on the endpoint
    for i in 0..10 {
        webhooks.notify(room_started(&format!("r{i}")));
    }
    let stats = webhooks.stats();
    assert_eq!(stats.queued, 2);
    assert_eq!(stats.dropped_queue_full, 8);
    assert_eq!(webhooks.dropped(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lookup_answers() {
    let django = Django::start(|_, request| {
        let (status, body) = match request.path.as_str() {
            "/api/rooms/snake/" => (
                200,
                r#"{"name": "Standup", "description": "daily", "max_participants": 8, "x": 1}"#,
            ),
            "/api/rooms/camel/" => (200, r#"{"name": "Retro", "maxParticipants": 12}"#),
            "/api/rooms/minimal/" => (200, r#"{"name": "Bare"}"#),
            "/api/rooms/forbidden/" => (403, r#"{"detail": "nope"}"#),
            "/api/rooms/unauthenticated/" => (401, r#"{"detail": "nope"}"#),
            "/api/rooms/broken/" => (500, "oops"),
            "/api/rooms/garbage/" => (200, "<html>"),
            "/api/rooms/teapot/" => (418, ""),
            _ => (404, r#"{"detail": "Not found."}"#),
        };
        (status, body.to_string(), Duration::ZERO)
    })
    .await;
    let lookup = RoomLookup::new(
        &django.base_url(),
        DEFAULT_ROOM_LOOKUP_PATH,
        Duration::from_secs(2),
    );

    assert_eq!(
        lookup.lookup("snake", "tok-1").await.unwrap(),
        Some(RoomMetadata {
            name: "Standup".into(),
            description: Some("daily".into()),
            max_participants: Some(8),
        })
    );
    assert_eq!(
        lookup.lookup("camel", "tok-2").await.unwrap(),
        Some(RoomMetadata {
            name: "Retro".into(),
            description: None,
            max_participants: Some(12),
        })
    );
    assert_eq!(
        lookup
            .lookup("minimal", "t")
            .await
            .unwrap()
            .unwrap()
            .max_participants,
        None
    );
    assert_eq!(lookup.lookup("unknown-room", "t").await.unwrap(), None);
    assert!(matches!(
        lookup.lookup("forbidden", "t").await,
        Err(LookupError::Denied)
    ));
    assert!(matches!(
        lookup.lookup("unauthenticated", "t").await,
        Err(LookupError::Denied)
    ));
    assert!(matches!(
        lookup.lookup("broken", "t").await,
        Err(LookupError::Unavailable(_))
    ));
    assert!(matches!(
        lookup.lookup("garbage", "t").await,
        Err(LookupError::BadResponse(_))
    ));
    assert!(matches!(
        lookup.lookup("teapot", "t").await,
        Err(LookupError::BadResponse(_))
    ));
    assert_eq!(lookup.lookup("a b/c", "t").await.unwrap(), None);

    let requests = django.requests();
    assert_eq!(requests[0].method, Method::GET);
    assert_eq!(requests[0].path, "/api/rooms/snake/");
    assert_eq!(requests[0].header("authorization"), "Bearer tok-1");
    assert_eq!(requests[1].header("authorization"), "Bearer tok-2");
    assert_eq!(
        requests.last().unwrap().path,
        "/api/rooms/a%20b%2Fc/",
        "room id percent-encoded into one segment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_lookup_unavailable_when_django_is_down_or_slow() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let lookup = RoomLookup::new(
        &format!("http://{closed}"),
        DEFAULT_ROOM_LOOKUP_PATH,
        Duration::from_secs(2),
    );
    let error = lookup.lookup("r", "t").await.unwrap_err();
    assert!(matches!(error, LookupError::Unavailable(_)), "{error:?}");

    let slow = Django::start(|_, _| (200, r#"{"name":"x"}"#.into(), Duration::from_secs(3))).await;
    let lookup = RoomLookup::new(
        &slow.base_url(),
        DEFAULT_ROOM_LOOKUP_PATH,
        Duration::from_millis(200),
    );
    let started = Instant::now();
    let error = lookup.lookup("r", "t").await.unwrap_err();
    assert!(matches!(error, LookupError::Unavailable(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}
