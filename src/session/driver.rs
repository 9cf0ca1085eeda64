//! Runs one signaling connection, whatever carries it: frames in → [`Session`], session
//! messages out → frames. Handles resume (a new connection taking over a dropped session) and
//! the grace period after a drop. WebSocket and WebTransport both call [`drive`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::time::Sleep;

use super::protocol::{ErrorCode, OutboundEnvelope};
use super::{Flow, Session, SharedSession};
use crate::auth::Identity;
use crate::media::frames::sink::FrameSession;
use crate::AppContext;

/// Outbound frames a connection may have queued before the client counts as stuck; also
/// bounds a replay after resume.
const OUTBOUND_QUEUE: usize = crate::session::REPLAY_BUFFER + 256;

/// One frame from the client, as the transport decoded it.
pub enum Inbound {
    Text(String),
    /// A media stream the client opened (WebTransport unidirectional stream).
    FrameStream(crate::media::frames::ingest::FrameStream),
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
    /// Where media frames can be sent to this client (WebTransport only).
    fn frame_session(&self) -> Option<Arc<dyn FrameSession>> {
        None
    }
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
    session.lock().await.set_carrier(conn.frame_session());
    metrics::counter!("sfu_signaling_connections_total", "transport" => transport).increment(1);
    // Until `authenticate` (or `resume`) succeeds the connection is on a deadline.
    let auth_timeout = Duration::from_secs(ctx.settings.config.auth_timeout_secs);
    let auth_deadline = tokio::time::sleep(auth_timeout);
    tokio::pin!(auth_deadline);
    let mut authenticated = false;
    // Once authenticated, the session ends when its token expires unless refreshed.
    let token_expiry = tokio::time::sleep(Duration::from_secs(365 * 86_400));
    tokio::pin!(token_expiry);
    let mut token_deadline: Option<u64> = None;
    loop {
        tokio::select! {
            biased;
            _ = kick.notified() => break,
            _ = &mut auth_deadline, if !authenticated => {
                tracing::info!(transport, ?auth_timeout, "connection did not authenticate in time; closing");
                metrics::counter!("sfu_auth_timeouts_total", "transport" => transport).increment(1);
                let message = format!("no `authenticate` within {} s; closing", auth_timeout.as_secs());
                end_with(&mut conn, ErrorCode::NotAuthenticated, &message, "authentication timeout").await;
                break;
            }
            _ = &mut token_expiry, if token_deadline.is_some() => {
                tracing::info!(transport, "token expired without a refresh; session ended");
                metrics::counter!("sfu_token_expiries_total", "transport" => transport).increment(1);
                session.lock().await.close().await;
                let message = "your token expired; authenticate and join again";
                end_with(&mut conn, ErrorCode::TokenExpired, message, "token expired").await;
                break;
            }
            Some(out) = rx.recv() => {
                if !conn.send(out).await {
                    break;
                }
            }
            inbound = conn.recv() => {
                let Some(inbound) = inbound else { break };
                match handle_inbound(&session, inbound).await {
                    Flow::Continue => {}
                    Flow::Close(reason) => {
                        conn.close(reason).await;
                        break;
                    }
                    Flow::Authenticated { resume_token } => {
                        authenticated = true;
                        ctx.sessions.register_resumable(resume_token, session.clone());
                    }
                    Flow::Resume { token, access_token, last_seq, request_id } => {
                        let resume = Resume { token, access_token, last_seq, request_id };
                        let taken = take_over(&ctx, &mut conn, &tx, &mut rx, &kick, &session, resume).await;
                        if let Some(TakenOver { session: existing, generation: new_generation, alive }) = taken {
                            authenticated = true;
                            session = existing;
                            session.lock().await.set_carrier(conn.frame_session());
                            generation = new_generation;
                            if !alive {
                                break;
                            }
                        }
                    }
                }
                follow_token_deadline(&session, &mut token_deadline, token_expiry.as_mut()).await;
            }
        }
    }
    disconnected(ctx, session, generation).await;
}

/// Hand one frame to the session; the lock is held only for it.
async fn handle_inbound(session: &SharedSession, inbound: Inbound) -> Flow {
    match inbound {
        Inbound::Text(text) => session.lock().await.on_text(&text).await,
        Inbound::Invalid(why) => {
            session.lock().await.on_invalid_frame(why);
            Flow::Continue
        }
        Inbound::FrameStream(stream) => session.lock().await.on_frame_stream(stream),
    }
}

/// A first authentication, a refresh or a resume moves the token deadline.
async fn follow_token_deadline(
    session: &SharedSession,
    current: &mut Option<u64>,
    expiry: Pin<&mut Sleep>,
) {
    let deadline = session.lock().await.token_deadline();
    if deadline != *current {
        *current = deadline;
        if let Some(at) = deadline {
            let left = at.saturating_sub(crate::auth::unix_now());
            expiry.reset(tokio::time::Instant::now() + Duration::from_secs(left));
        }
    }
}

/// Tell the client why (bounded wait) and close the connection on the server's initiative.
async fn end_with(
    conn: &mut impl SignalingConnection,
    code: ErrorCode,
    message: &str,
    close_reason: &'static str,
) {
    let reply = OutboundEnvelope::error(code, message, None, None);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.send(reply.to_json().into())).await;
    conn.close(close_reason).await;
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
    access_token: String,
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
        access_token,
        last_seq,
        request_id,
    } = resume;
    let transport = conn.kind();
    let attached = prove_and_attach(ctx, transport, tx, kick, &token, &access_token, last_seq);
    let Attached {
        session,
        proven,
        generation,
        replayed,
    } = match attached.await {
        Ok(attached) => attached,
        Err(why) => {
            send_direct(tx, resume_failed(&why, request_id));
            return None;
        }
    };
    // The fresh session of this connection was never used.
    fresh.lock().await.close().await;
    let resumed = Resumed {
        proven,
        access_token,
        replayed,
        request_id,
    };
    let reply = adopt(ctx, transport, &session, resumed).await;
    let alive = send_reply_then_replay(conn, rx, reply).await;
    Some(TakenOver {
        session,
        generation,
        alive,
    })
}

/// The dropped session, proven to be the caller's and now sending to this connection.
struct Attached {
    session: SharedSession,
    proven: Identity,
    generation: u64,
    replayed: usize,
}

/// Find the session the resume token names, check the JWT is its user's, and point its sink
/// at this connection (queueing the replay). `Err` is the reason told to the client.
async fn prove_and_attach(
    ctx: &AppContext,
    transport: &'static str,
    tx: &mpsc::Sender<Arc<str>>,
    kick: &Arc<Notify>,
    token: &str,
    access_token: &str,
    last_seq: u64,
) -> Result<Attached, String> {
    let Some(session) = ctx.sessions.resumable(token) else {
        return Err("unknown or expired resume token".into());
    };
    // The resume token is a bearer secret; the JWT proves the user again, before the live
    // connection (if any) is touched.
    let proven = match ctx.auth.verify(access_token) {
        Ok(identity) if session.lock().await.user_id() == Some(identity.user.id.as_str()) => {
            identity
        }
        Ok(_) => {
            tracing::warn!(
                transport,
                "resume refused: the access token names another user"
            );
            return Err("the access token is not for this session's user".into());
        }
        Err(e) => {
            tracing::warn!(transport, reason = %e.message, "resume refused: invalid access token");
            return Err(format!("the access token is not valid: {}", e.message));
        }
    };
    let resumed = session
        .lock()
        .await
        .sink()
        .resume(last_seq, tx.clone(), kick.clone());
    let Ok((generation, replayed)) = resumed else {
        return Err("missed messages are no longer buffered; join again".into());
    };
    Ok(Attached {
        session,
        proven,
        generation,
        replayed,
    })
}

/// What the session takes from the resuming connection.
struct Resumed {
    proven: Identity,
    access_token: String,
    replayed: usize,
    request_id: Option<serde_json::Value>,
}

/// Give the session its fresh identity and a new resume token, and build the `resumed` reply.
async fn adopt(
    ctx: &AppContext,
    transport: &'static str,
    session: &SharedSession,
    resumed: Resumed,
) -> OutboundEnvelope {
    let Resumed {
        proven,
        access_token,
        replayed,
        request_id,
    } = resumed;
    let mut guard = session.lock().await;
    guard.refresh_identity(proven, access_token);
    // Single use: whoever else holds the old token gets nothing.
    let fresh_token = guard.rotate_resume_token();
    ctx.sessions
        .register_resumable(fresh_token.clone(), session.clone());
    let (room_id, participant_id) = guard.room().unzip();
    tracing::info!(session = %guard.connection_id(), transport, replayed, "session resumed");
    metrics::counter!("sfu_session_resumes_total", "transport" => transport).increment(1);
    // Unsequenced: it belongs to this connection, not the session's stream, and must not hide
    // the replayed messages that follow.
    OutboundEnvelope::message(
        "resumed",
        json!({
            "connectionId": guard.connection_id(),
            "roomId": room_id,
            "participantId": participant_id,
            "resumeToken": fresh_token,
            "replayed": replayed,
        }),
        request_id,
    )
}

/// Write `reply`, then what was queued before it (the replay). False when the connection is
/// gone.
async fn send_reply_then_replay(
    conn: &mut impl SignalingConnection,
    rx: &mut mpsc::Receiver<Arc<str>>,
    reply: OutboundEnvelope,
) -> bool {
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
    alive
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
