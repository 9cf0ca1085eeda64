//! Graceful shutdown of every kind of session. Signaling clients (WebSocket, WebTransport) are
//! told `serverShuttingDown`; WHIP/WHEP sessions have no channel to be told on, but they hold
//! the drain like the others, so their media keeps flowing until they DELETE or the deadline
//! passes — then they are ended cleanly (DTLS close, `participantLeft`, webhooks, audit).

use std::time::Duration;

use crate::session::protocol::OutboundEnvelope;
use crate::AppContext;

/// Sessions holding the drain: (connected signaling sessions, WHIP/WHEP sessions). A
/// signaling session waiting to resume is not counted: its client reconnects elsewhere.
fn held(ctx: &AppContext) -> (usize, usize) {
    (
        ctx.sessions.attached_count(),
        ctx.rooms.counts().http_sessions,
    )
}

/// Run the drain (the caller has set the draining flag): notify, wait up to `timeout` for
/// sessions to leave, end the HTTP ones still there, flush webhooks and audit. Returns how
/// many sessions were still there at the deadline.
pub async fn drain(ctx: &AppContext, timeout: Duration) -> usize {
    ctx.sessions.broadcast(&OutboundEnvelope::notification(
        "serverShuttingDown",
        serde_json::json!({
            "reason": "server is shutting down",
            "deadlineMs": timeout.as_millis() as u64,
            // Clients should reconnect (to another node behind the load balancer) after
            // a short, jittered pause rather than all at once.
            "reconnectAfterMs": 1000,
        }),
    ));
    let (signaling, http) = held(ctx);
    tracing::info!(
        sessions = signaling + http,
        http_sessions = http,
        ?timeout,
        "draining"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    while held(ctx) != (0, 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (signaling, http) = held(ctx);
    for session in ctx.rooms.http_sessions() {
        tracing::info!(room = %session.room_id, session = %session.participant_id, "drain deadline: ending WHIP/WHEP session");
        ctx.rooms
            .leave(&session.room_id, &session.participant_id)
            .await;
    }
    // Participants who left produced webhooks; deliver them before exiting (bounded).
    let delivered = match &ctx.webhooks {
        Some(webhooks) => webhooks.flush(Duration::from_secs(5)).await,
        None => true,
    };
    if !delivered {
        tracing::warn!("webhook queue not fully delivered before exit");
    }
    // Whatever the database did not take is spilled to disk and replayed at next start.
    if !ctx.audit.flush(Duration::from_secs(5)).await {
        tracing::warn!("audit log not fully written before exit; the rest is in the spill file");
    }
    let remaining = signaling + http;
    tracing::info!(remaining, http_sessions = http, "drain finished");
    remaining
}
