//! The Django backend, reached two optional ways (both off unless configured):
//!
//! * [`Webhooks`]: signed, fire-and-forget event notifications (`room.started`,
//!   `participant.joined`, ...) POSTed to one URL, in order, from a background task with
//!   retries. The caller never waits on the network.
//! * [`RoomLookup`]: `GET {base}{path}{room_id}/` with the participant's bearer token, returning
//!   the room's metadata (or `None` when Django does not know the room).
//!
//! # Webhook wire format
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! X-SFU-Event: participant.joined
//! X-SFU-Delivery: 0b5c...   (the body's "id"; the same on every retry: deduplicate on it)
//! X-SFU-Signature: t=1700000000,v1=<hex HMAC-SHA256(secret, "1700000000." + raw body)>
//!
//! {"id":"0b5c...","type":"participant.joined","createdAt":1699999999,
//!  "data":{"roomId":"r1","participantId":"p1","userId":"42","displayName":"Ada"}}
//! ```
//!
//! Any 2xx acknowledges. Network errors, timeouts, 5xx, 408 and 429 are retried with exponential
//! backoff; any other status gives up at once. `t` is the time of the attempt (not of the event),
//! so a receiver can reject replays with a small tolerance, as [`verify_signature`] does. A
//! receiver in Django checks it the same way:
//!
//! ```python
//! import hashlib, hmac, time
//!
//! def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
//!     parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
//!     ts = [v for k, v in parts if k.strip() == "t"]
//!     sigs = [v for k, v in parts if k.strip() == "v1"]
//!     if len(ts) != 1 or not ts[0].isdigit() or abs(time.time() - int(ts[0])) > tolerance:
//!         return False
//!     signed = ts[0].encode() + b"." + body
//!     expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
//!     return any(hmac.compare_digest(expected, s) for s in sigs)
//! ```
//!
//! (use `request.body`, the raw bytes, never re-serialised JSON).

use std::error::Error as _;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the event type, e.g. `room.started`.
pub const EVENT_HEADER: &str = "X-SFU-Event";
/// Header carrying the delivery id (equal to the body's `id`, stable across retries).
pub const DELIVERY_HEADER: &str = "X-SFU-Delivery";
/// Header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-SFU-Signature";
/// Default path for room lookups, appended to the Django base URL.
pub const DEFAULT_ROOM_LOOKUP_PATH: &str = "/api/rooms/";

/// Backoff between webhook attempts never exceeds this (including `Retry-After`).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Room lookup bodies larger than this are rejected.
const MAX_LOOKUP_BODY: usize = 1024 * 1024;
/// How much of a failed webhook response body goes into the log.
const LOGGED_BODY: usize = 256;

fn user_agent() -> String {
    format!("sfu/{}", env!("CARGO_PKG_VERSION"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `err` and its sources, joined (reqwest's `Display` hides the interesting part).
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Read at most `limit` bytes of the body; the flag says whether more was cut off.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// The `X-SFU-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature_header(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={timestamp},v1={digest}")
}

/// Check an `X-SFU-Signature` header the way a receiver should: exactly one `t=`, within
/// `tolerance_secs` of `now_unix` (either direction), and at least one `v1=` equal (in constant
/// time) to HMAC-SHA256(secret, "<t>.<raw body>"). Several `v1=` entries are accepted so a
/// receiver can rotate secrets; unknown keys are ignored. Malformed headers are simply `false`.
pub fn verify_signature(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" => {
                if timestamp.is_some() {
                    return false;
                }
                match value.trim().parse::<u64>() {
                    Ok(t) => timestamp = Some(t),
                    Err(_) => return false,
                }
            }
            "v1" => signatures.push(value.trim()),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if now_unix.abs_diff(timestamp) > tolerance_secs {
        return false;
    }
    signatures.into_iter().any(|signature| {
        let Ok(expected) = hex::decode(signature) else {
            return false;
        };
        mac(secret, timestamp, body).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
    })
}

// ---------------------------------------------------------------------------------------------
// Webhook events
// ---------------------------------------------------------------------------------------------

/// An event for Django. Serialises as `{"type": "<wire name>", "data": {camelCase fields}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum WebhookEvent {
    #[serde(rename = "room.started")]
    RoomStarted { room_id: String, name: String },
    #[serde(rename = "room.finished")]
    RoomFinished {
        room_id: String,
        duration_seconds: u64,
    },
    #[serde(rename = "participant.joined")]
    ParticipantJoined {
        room_id: String,
        participant_id: String,
        user_id: String,
        display_name: String,
    },
    #[serde(rename = "participant.left")]
    ParticipantLeft {
        room_id: String,
        participant_id: String,
        user_id: String,
        duration_seconds: u64,
    },
    #[serde(rename = "producer.published")]
    ProducerPublished {
        room_id: String,
        participant_id: String,
        producer_id: String,
        /// `audio` or `video`.
        kind: String,
    },
}

impl WebhookEvent {
    /// The wire name (`type` field and `X-SFU-Event` header), also the metrics label.
    pub fn event_type(&self) -> &'static str {
        match self {
            WebhookEvent::RoomStarted { .. } => "room.started",
            WebhookEvent::RoomFinished { .. } => "room.finished",
            WebhookEvent::ParticipantJoined { .. } => "participant.joined",
            WebhookEvent::ParticipantLeft { .. } => "participant.left",
            WebhookEvent::ProducerPublished { .. } => "producer.published",
        }
    }
}

/// The body of one delivery: `{"id", "type", "data", "createdAt"}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    id: &'a str,
    #[serde(flatten)]
    event: &'a WebhookEvent,
    created_at: u64,
}

// ---------------------------------------------------------------------------------------------
// Webhook delivery
// ---------------------------------------------------------------------------------------------

/// Where and how webhooks are delivered. [`WebhookConfig::new`] fills in the defaults.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Endpoint that receives every event (POST).
    pub url: String,
    /// HMAC-SHA256 key shared with Django.
    pub secret: String,
    /// Attempts per event, the first included (default 6; 0 is treated as 1).
    pub max_attempts: u32,
    /// Events waiting for delivery beyond which new ones are dropped (default 10 000).
    pub queue_capacity: usize,
    /// Per request, connection to end of response (default 5 s).
    pub timeout: Duration,
    /// Wait after the first failure; doubles each retry, capped at 30 s (default 500 ms).
    pub initial_backoff: Duration,
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            max_attempts: 6,
            queue_capacity: 10_000,
            timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(500),
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("max_attempts", &self.max_attempts)
            .field("queue_capacity", &self.queue_capacity)
            .field("timeout", &self.timeout)
            .field("initial_backoff", &self.initial_backoff)
            .finish()
    }
}

/// Counters since [`Webhooks::start`], for tests and status pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Accepted by `notify`, not yet picked up by the delivery task.
    pub queued: usize,
    /// Acknowledged with a 2xx.
    pub delivered: u64,
    /// Rejected by `notify` because the queue was full (or the delivery task was gone).
    pub dropped_queue_full: u64,
    /// Abandoned after a non-retryable status or `max_attempts` failures.
    pub gave_up: u64,
}

struct Delivery {
    id: Uuid,
    created_at: u64,
    event: WebhookEvent,
}

enum Message {
    Deliver(Delivery),
    /// Answered once everything queued before it has been delivered or given up.
    Flush(oneshot::Sender<()>),
}

struct Shared {
    capacity: usize,
    queued: AtomicUsize,
    delivered: AtomicU64,
    dropped_queue_full: AtomicU64,
    gave_up: AtomicU64,
    /// Set while dropping, so a full queue logs one warning per episode, not one per event.
    overflowing: AtomicBool,
}

/// Handle to the webhook delivery task. Cheap to clone; the task stops once every clone is
/// dropped and the queue is empty.
#[derive(Clone)]
pub struct Webhooks {
    // Unbounded channel with capacity enforced by `Shared::queued`, so `flush` markers never
    // take a slot from events and never wait for one.
    tx: mpsc::UnboundedSender<Message>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Webhooks {
    /// Spawn the delivery task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (like `tokio::spawn`).
    pub fn start(config: WebhookConfig) -> Webhooks {
        if config.secret.is_empty() {
            tracing::warn!("webhook secret is empty: signatures are worthless");
        }
        let shared = Arc::new(Shared {
            capacity: config.queue_capacity,
            queued: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            overflowing: AtomicBool::new(false),
        });
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(user_agent())
            // A redirect would turn the POST into a GET or send the signature elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(
                    error = %error_chain(&e),
                    "webhook HTTP client setup failed; using defaults"
                );
                reqwest::Client::new()
            });
        let (tx, rx) = mpsc::unbounded_channel();
        tracing::info!(
            url = %config.url,
            max_attempts = config.max_attempts,
            queue_capacity = config.queue_capacity,
            "webhooks enabled"
        );
        tokio::spawn(run(rx, client, config, shared.clone()));
        Webhooks { tx, shared }
    }

    /// Queue `event` for delivery. Never blocks or awaits: when the queue is full the event is
    /// dropped, counted (`sfu_webhooks_dropped_total{reason="queue_full"}`) and logged (warn
    /// once per overflow episode and every 1000th drop, debug otherwise).
    pub fn notify(&self, event: WebhookEvent) {
        let event_type = event.event_type();
        let capacity = self.shared.capacity;
        let reserved = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            self.record_queue_full(event_type, "queue_full");
            return;
        }
        let delivery = Delivery {
            id: Uuid::new_v4(),
            created_at: unix_now(),
            event,
        };
        if self.tx.send(Message::Deliver(delivery)).is_err() {
            // Only when the delivery task is gone (runtime shutting down).
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.record_queue_full(event_type, "closed");
            return;
        }
        if self.shared.overflowing.load(Ordering::Relaxed) {
            self.shared.overflowing.store(false, Ordering::Relaxed);
        }
    }

    fn record_queue_full(&self, event_type: &'static str, reason: &'static str) {
        let dropped = self
            .shared
            .dropped_queue_full
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        metrics::counter!("sfu_webhooks_dropped_total", "reason" => reason).increment(1);
        let first = !self.shared.overflowing.swap(true, Ordering::Relaxed);
        if first || dropped.is_multiple_of(1000) {
            tracing::warn!(
                event_type,
                reason,
                dropped_total = dropped,
                capacity = self.shared.capacity,
                "webhook queue full; dropping events"
            );
        } else {
            tracing::debug!(
                event_type,
                reason,
                dropped_total = dropped,
                "webhook dropped"
            );
        }
    }

    /// Wait until every event queued before this call has been delivered or given up. `true`
    /// if that happened within `timeout` (for graceful shutdown).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Message::Flush(done_tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, done_rx).await, Ok(Ok(())))
    }

    /// Events lost before delivery: queue full plus given up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped_queue_full.load(Ordering::Relaxed)
            + self.shared.gave_up.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            queued: self.shared.queued.load(Ordering::Relaxed),
            delivered: self.shared.delivered.load(Ordering::Relaxed),
            dropped_queue_full: self.shared.dropped_queue_full.load(Ordering::Relaxed),
            gave_up: self.shared.gave_up.load(Ordering::Relaxed),
        }
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Message>,
    client: reqwest::Client,
    config: WebhookConfig,
    shared: Arc<Shared>,
) {
    while let Some(message) = rx.recv().await {
        match message {
            Message::Deliver(delivery) => {
                shared.queued.fetch_sub(1, Ordering::AcqRel);
                if deliver(&client, &config, delivery).await {
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.gave_up.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("sfu_webhooks_dropped_total", "reason" => "gave_up")
                        .increment(1);
                }
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
    tracing::debug!("webhook delivery task stopped");
}

enum Attempt {
    Delivered,
    /// Worth another try, after at least `retry_after` if the server said so.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    GiveUp(String),
}

/// Deliver one event, retrying as configured. `true` once acknowledged.
async fn deliver(client: &reqwest::Client, config: &WebhookConfig, delivery: Delivery) -> bool {
    let event_type = delivery.event.event_type();
    let id = delivery.id.to_string();
    let envelope = Envelope {
        id: &id,
        event: &delivery.event,
        created_at: delivery.created_at,
    };
    let body = match serde_json::to_vec(&envelope) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(
                event_type,
                delivery_id = %id,
                error = %e,
                "webhook not serialisable; dropped"
            );
            return false;
        }
    };
    let max_attempts = config.max_attempts.max(1);
    let mut backoff = config.initial_backoff.min(MAX_BACKOFF);
    for attempt in 1..=max_attempts {
        let reason = match attempt_once(client, config, event_type, &id, &body).await {
            Attempt::Delivered => {
                metrics::counter!("sfu_webhooks_delivered_total", "type" => event_type)
                    .increment(1);
                tracing::debug!(event_type, delivery_id = %id, attempt, "webhook delivered");
                return true;
            }
            Attempt::GiveUp(reason) => {
                metrics::counter!("sfu_webhook_attempts_failed_total", "type" => event_type)
                    .increment(1);
                tracing::warn!(
                    event_type,
                    delivery_id = %id,
                    attempt,
                    %reason,
                    "webhook rejected; not retrying"
                );
                return false;
            }
            Attempt::Retry {
                reason,
                retry_after,
            } => {
                metrics::counter!("sfu_webhook_attempts_failed_total", "type" => event_type)
                    .increment(1);
                if attempt == max_attempts {
                    reason
                } else {
                    let wait = retry_after
                        .map_or(backoff, |r| r.max(backoff))
                        .min(MAX_BACKOFF);
                    tracing::warn!(
                        event_type,
                        delivery_id = %id,
                        attempt,
                        max_attempts,
                        %reason,
                        retry_in_ms = wait.as_millis() as u64,
                        "webhook attempt failed; will retry"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        };
        tracing::warn!(
            event_type,
            delivery_id = %id,
            attempts = max_attempts,
            %reason,
            "webhook failed; giving up"
        );
    }
    false
}

async fn attempt_once(
    client: &reqwest::Client,
    config: &WebhookConfig,
    event_type: &'static str,
    id: &str,
    body: &[u8],
) -> Attempt {
    let signature = signature_header(&config.secret, unix_now(), body);
    let sent = client
        .post(&config.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, event_type)
        .header(DELIVERY_HEADER, id)
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_vec())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) if e.is_builder() => {
            return Attempt::GiveUp(format!("invalid request: {}", error_chain(&e)))
        }
        Err(e) => {
            return Attempt::Retry {
                reason: error_chain(&e),
                retry_after: None,
            }
        }
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let snippet = match read_limited(response, LOGGED_BODY).await {
        Ok((bytes, _)) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let reason = format!("HTTP {status}: {snippet}");
    let code = status.as_u16();
    if status.is_server_error() || code == 408 || code == 429 {
        Attempt::Retry {
            reason,
            retry_after,
        }
    } else {
        Attempt::GiveUp(reason)
    }
}

// ---------------------------------------------------------------------------------------------
// Room lookup
// ---------------------------------------------------------------------------------------------

/// What Django knows about a room. Accepts `max_participants` or `maxParticipants`; other
/// fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoomMetadata {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, alias = "maxParticipants")]
    pub max_participants: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Network error, timeout, 5xx, 408 or 429: transient, Django may answer later.
    #[error("room service unavailable: {0}")]
    Unavailable(String),
    /// 401 or 403: the token may not see this room.
    #[error("room service denied access")]
    Denied,
    /// Unexpected status or a body that is not room metadata.
    #[error("room service sent a bad response: {0}")]
    BadResponse(String),
}

/// Client for Django's room metadata endpoint.
#[derive(Debug, Clone)]
pub struct RoomLookup {
    client: reqwest::Client,
    base_url: String,
    path: String,
}

impl RoomLookup {
    /// `base_url` like `http://django:8000` (a trailing `/` is fine); `path` like
    /// [`DEFAULT_ROOM_LOOKUP_PATH`] (empty means the default; leading and trailing `/` are
    /// added when missing); `timeout` bounds each lookup end to end.
    pub fn new(base_url: &str, path: &str, timeout: Duration) -> Self {
        let base_url = base_url.trim().trim_end_matches('/').to_string();
        let path = path.trim();
        let path = if path.is_empty() {
            DEFAULT_ROOM_LOOKUP_PATH
        } else {
            path
        };
        let path = format!("/{}/", path.trim_matches('/')).replace("//", "/");
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(user_agent())
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(
                    error = %error_chain(&e),
                    "room lookup HTTP client setup failed; using defaults"
                );
                reqwest::Client::new()
            });
        RoomLookup {
            client,
            base_url,
            path,
        }
    }

    /// The URL looked up for `room_id`: `{base_url}{path}{percent-encoded room_id}/`.
    pub fn url_for(&self, room_id: &str) -> String {
        format!(
            "{}{}{}/",
            self.base_url,
            self.path,
            percent_encode_segment(room_id)
        )
    }

    /// GET the room's metadata, forwarding `bearer_token` (omitted when empty). 200 →
    /// `Some`, 404 → `None`.
    pub async fn lookup(
        &self,
        room_id: &str,
        bearer_token: &str,
    ) -> Result<Option<RoomMetadata>, LookupError> {
        if room_id.is_empty() || room_id == "." || room_id == ".." {
            // These would collapse the path (even percent-encoded); never a valid room id.
            return Err(LookupError::BadResponse(format!(
                "invalid room id {room_id:?}"
            )));
        }
        let url = self.url_for(room_id);
        let mut request = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json");
        if !bearer_token.is_empty() {
            request = request.bearer_auth(bearer_token);
        }
        let result = Self::fetch(request).await;
        match &result {
            Ok(Some(_)) => tracing::debug!(room_id, "room metadata found"),
            Ok(None) => tracing::debug!(room_id, "room unknown to Django"),
            Err(LookupError::Denied) => tracing::debug!(room_id, "room lookup denied"),
            Err(e) => tracing::warn!(room_id, %url, error = %e, "room lookup failed"),
        }
        result
    }

    async fn fetch(request: reqwest::RequestBuilder) -> Result<Option<RoomMetadata>, LookupError> {
        let response = request.send().await.map_err(|e| {
            if e.is_builder() {
                LookupError::Unavailable(format!("invalid lookup URL: {}", error_chain(&e)))
            } else {
                LookupError::Unavailable(error_chain(&e))
            }
        })?;
        let status = response.status();
        match status.as_u16() {
            200 => {}
            404 => return Ok(None),
            401 | 403 => return Err(LookupError::Denied),
            408 | 429 | 500..=599 => {
                return Err(LookupError::Unavailable(format!("HTTP {status}")))
            }
            _ => {
                return Err(LookupError::BadResponse(format!(
                    "unexpected HTTP {status}"
                )))
            }
        }
        let (body, truncated) = read_limited(response, MAX_LOOKUP_BODY)
            .await
            .map_err(|e| LookupError::Unavailable(error_chain(&e)))?;
        if truncated {
            return Err(LookupError::BadResponse(format!(
                "body larger than {MAX_LOOKUP_BODY} bytes"
            )));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| LookupError::BadResponse(format!("invalid room metadata: {e}")))
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters, so the id stays one segment.
fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip() {
        let body = br#"{"id":"x"}"#;
        let header = signature_header("s3cret", 1_700_000_000, body);
        // Known answer, from Python's hmac.new(b"s3cret", b'1700000000.{"id":"x"}', sha256).
        assert_eq!(
            header,
            "t=1700000000,v1=2382c1d0968a5e57238c68de957f44d87e83d3049a5588ec251442ca372b8aec"
        );
        assert!(verify_signature(
            "s3cret",
            &header,
            body,
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "other",
            &header,
            body,
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            &header,
            b"{}",
            1_700_000_010,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            &header,
            body,
            1_700_000_400,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            "garbage",
            body,
            1_700_000_000,
            300
        ));
        assert!(!verify_signature(
            "s3cret",
            &format!("{header},t=1700000000"),
            body,
            1_700_000_000,
            300
        ));
        let rotated = format!("t=1700000000,v1=00ff,{}", &header[13..]);
        assert!(verify_signature("s3cret", &rotated, body, 1_700_000_000, 0));
    }

    #[test]
    fn envelope_shape() {
        let event = WebhookEvent::ParticipantLeft {
            room_id: "r".into(),
            participant_id: "p".into(),
            user_id: "u".into(),
            duration_seconds: 7,
        };
        let body = serde_json::to_value(Envelope {
            id: "abc",
            event: &event,
            created_at: 5,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": "abc",
                "type": "participant.left",
                "createdAt": 5,
                "data": {"roomId": "r", "participantId": "p", "userId": "u", "durationSeconds": 7}
            })
        );
        assert_eq!(event.event_type(), "participant.left");
    }

    #[test]
    fn lookup_urls() {
        let lookup = RoomLookup::new("http://h:8000/", "api/rooms", Duration::from_secs(1));
        assert_eq!(lookup.url_for("a-b_C9"), "http://h:8000/api/rooms/a-b_C9/");
        assert_eq!(
            lookup.url_for("a b/../é"),
            "http://h:8000/api/rooms/a%20b%2F..%2F%C3%A9/"
        );
        let lookup = RoomLookup::new("http://h", "", Duration::from_secs(1));
        assert_eq!(lookup.url_for("x"), "http://h/api/rooms/x/");
        let lookup = RoomLookup::new("http://h", "/", Duration::from_secs(1));
        assert_eq!(lookup.url_for("x"), "http://h/x/");
    }
}
