//! Webhook events, their queue and the background task that delivers them with retries.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
