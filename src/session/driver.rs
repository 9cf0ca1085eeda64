//! Runs one signaling connection, whatever carries it: frames in → [`Session`], session
//! messages out → frames. Handles resume (a new connection taking over a dropped session) and
//! the grace period after a drop. WebSocket and WebTransport both call [`drive`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Notify};

use super::protocol::{ErrorCode, OutboundEnvelope};
use super::{Flow, Session, SharedSession};
use crate::AppContext;

/// Outbound frames a connection may have queued before the client counts as stuck; also
/// bounds a replay after resume.
const OUTBOUND_QUEUE: usize = crate::session::REPLAY_BUFFER + 256;

/// One frame from the client, as the transport decoded it.
pub enum Inbound {
    Text(String),
    /// Binary or otherwise undecodable (e.g. invalid UTF-8) payload.
    Invalid(&'static str),
}

/// A bidirectional message pipe: a WebSocket or a framed WebTransport stream.
pub trait SignalingConnection: Send {
    /// The next frame; `None` when the connection is gone (or must be dropped).
    fn recv(&mut self) -> impl Future<Output = Option<Inbound>> + Send;
    /// Write one message; false when the connection is gone.
    fn send(&mut self, text: Arc<str>) -> impl Future<Output = bool> + Send;
    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;
    /// End the connection on the server's initiative, after what was sent reached the client
    /// (bounded wait); `reason` is a short text for the close frame.
    fn close(&mut self, reason: &'static str) -> impl Future<Output = ()> + Send;
}

pub async fn drive(ctx: Arc<AppContext>, mut conn: impl SignalingConnection) {
    let (tx, mut rx) = mpsc::channel::<Arc<str>>(OUTBOUND_QUEUE);
    let kick = Arc::new(Notify::new());
    let mut session: SharedSession = Arc::new(tokio::sync::Mutex::new(Session::new(ctx.clone())));
    let mut generation = session.lock().await.sink().attach(tx.clone(), kick.clone());
    let transport = conn.kind();
    metrics::counter!("sfu_signaling_connections_total", "transport" => transport).increment(1);
    // Until `authenticate` (or `resume`) succeeds the connection is on a deadline.
    let auth_timeout = Duration::from_secs(ctx.settings.config.auth_timeout_secs);
    let auth_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(auth_deadline);
    let mut authenticated = false;
    loop {
        tokio::select! {
            biased;
            _ = kick.notified() => break,
            _ = &mut auth_deadline, if !authenticated => {
                tracing::info!(transport, ?auth_timeout, "connection did not authenticate in time; closing");
                metrics::counter!("sfu_auth_timeouts_total", "transport" => transport).increment(1);
                let message = format!("no `authenticate` within {} s; closing", auth_timeout.as_secs());
                let reply = OutboundEnvelope::error(ErrorCode::NotAuthenticated, &message, None, None);
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(reply.to_json().into())).await;
                conn.close("authentication timeout").await;
                break;
            }
            Some(out) = rx.recv() => {
                if !conn.send(out).await {
                    break;
                }
            }
            inbound = conn.recv() => {
                let Some(inbound) = inbound else { break };
                let flow = match inbound {
                    Inbound::Text(text) => session.lock().await.on_text(&text).await,
                    Inbound::Invalid(why) => {
                        session.lock().await.on_invalid_frame(why);
                        Flow::Continue
                    }
                };
                match flow {
                    Flow::Continue => {}
                    Flow::Authenticated { resume_token } => {
                        authenticated = true;
                        ctx.sessions.register_resumable(resume_token, session.clone());
                    }
                    Flow::Resume { token, last_seq, request_id } => {
                        let resume = Resume { token, last_seq, request_id };
                        let taken = take_over(&ctx, &mut conn, &tx, &mut rx, &kick, &session, resume).await;
                        if let Some(TakenOver { session: existing, generation: new_generation, alive }) = taken {
                            authenticated = true;
                            session = existing;
                            generation = new_generation;
                            if !alive {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    disconnected(ctx, session, generation).await;
}

/// A dropped session now driven by this connection.
struct TakenOver {
    session: SharedSession,
    generation: u64,
    /// False when writing the reply or the replay failed: the connection is gone.
    alive: bool,
}

struct Resume {
    token: String,
    last_seq: u64,
    request_id: Option<serde_json::Value>,
}

/// `resume`: move the dropped session the token names onto this connection, answer `resumed`
/// and replay what it missed. `None` when the resume failed (the client was told).
async fn take_over(
    ctx: &AppContext,
    conn: &mut impl SignalingConnection,
    tx: &mpsc::Sender<Arc<str>>,
    rx: &mut mpsc::Receiver<Arc<str>>,
    kick: &Arc<Notify>,
    fresh: &SharedSession,
    resume: Resume,
) -> Option<TakenOver> {
    let Resume {
        token,
        last_seq,
        request_id,
    } = resume;
    let transport = conn.kind();
    let Some(existing) = ctx.sessions.resumable(&token) else {
        send_direct(
            tx,
            resume_failed("unknown or expired resume token", request_id),
        );
        return None;
    };
    let resumed = existing
        .lock()
        .await
        .sink()
        .resume(last_seq, tx.clone(), kick.clone());
    let Ok((generation, replayed)) = resumed else {
        let why = "missed messages are no longer buffered; join again";
        send_direct(tx, resume_failed(why, request_id));
        return None;
    };
    // The fresh session of this connection was never used.
    fresh.lock().await.close().await;
    let mut guard = existing.lock().await;
    // Single use: whoever else holds the old token gets nothing.
    let fresh_token = guard.rotate_resume_token();
    ctx.sessions
        .register_resumable(fresh_token.clone(), existing.clone());
    let (room_id, participant_id) = guard.room().unzip();
    tracing::info!(session = %guard.connection_id(), transport, replayed, "session resumed");
    metrics::counter!("sfu_session_resumes_total", "transport" => transport).increment(1);
    // Unsequenced: it belongs to this connection, not the session's stream, and must not hide
    // the replayed messages that follow.
    let reply = OutboundEnvelope::message(
        "resumed",
        json!({
            "connectionId": guard.connection_id(),
            "roomId": room_id,
            "participantId": participant_id,
            "resumeToken": fresh_token,
            "replayed": replayed,
        }),
        request_id,
    );
    drop(guard);
    // The reply goes first: put it ahead of the replay in the queue.
    let mut replay = Vec::new();
    while let Ok(m) = rx.try_recv() {
        replay.push(m);
    }
    let mut alive = conn.send(reply.to_json().into()).await;
    for m in replay {
        if !alive {
            break;
        }
        alive = conn.send(m).await;
    }
    Some(TakenOver {
        session: existing,
        generation,
        alive,
    })
}

fn send_direct(tx: &mpsc::Sender<Arc<str>>, message: OutboundEnvelope) {
    let _ = tx.try_send(message.to_json().into());
}

fn resume_failed(why: &str, request_id: Option<serde_json::Value>) -> OutboundEnvelope {
    OutboundEnvelope::error(ErrorCode::ResumeFailed, why, Some("resume"), request_id)
}

/// The connection ended. A resumable session waits out the grace period for its client to
/// come back (over either transport); anything else ends now.
async fn disconnected(ctx: Arc<AppContext>, session: SharedSession, generation: u64) {
    let (resumable, detached) = {
        let guard = session.lock().await;
        (guard.is_resumable(), guard.sink().detach(generation))
    };
    if !detached {
        // A resume on another connection already took this session over.
        return;
    }
    if !resumable {
        session.lock().await.close().await;
        return;
    }
    let grace = Duration::from_secs(ctx.settings.config.resume_grace_secs);
    tracing::debug!(?grace, "signaling dropped; session kept for resume");
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let mut guard = session.lock().await;
        if guard.sink().still_detached_since(generation) {
            tracing::info!(session = %guard.connection_id(), "resume grace period over; session closed");
            guard.close().await;
        }
    });
}
