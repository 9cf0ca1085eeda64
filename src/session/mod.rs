//! The session layer: one state machine per client connection, fed text frames and producing
//! outbound envelopes. It never sees a socket, so WebSocket and WebTransport share it. It owns
//! the wire: message names, error codes, and the mapping of room notices and errors to them.

pub mod driver;
mod errors;
mod handlers;
pub mod protocol;
mod registry;
mod sink;

pub use errors::{room_error_code, Failure};
pub use registry::{SessionRegistry, SharedSession};
pub use sink::{ReplayGap, SessionSink, REPLAY_BUFFER};

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::Identity;
use crate::media::frames::sink::FrameSession;
use crate::AppContext;
use protocol::{parse_request, ErrorCode, OutboundEnvelope, ParseFailure, ParsedRequest, Request};

struct Membership {
    room_id: String,
    participant_id: String,
}

pub struct Session {
    ctx: Arc<AppContext>,
    sink: SessionSink,
    identity: Option<Identity>,
    /// The raw token, forwarded to Django on room lookups.
    token: Option<String>,
    /// Secret that lets a new connection take this session over after a drop.
    resume_token: Option<String>,
    membership: Option<Membership>,
    /// Failed `authenticate`s on this connection (only the first is logged at warn).
    auth_failures: u32,
    /// The WebTransport session carrying this one, to send it frames (`None` on WebSocket).
    frame_session: Option<Arc<dyn FrameSession>>,
    /// Media streams refused because the session could not take them (not in a room).
    refused_streams: u32,
}

/// What the connection driver must do after a frame was handled.
pub enum Flow {
    Continue,
    /// Authentication succeeded: the session can now be resumed with this token.
    Authenticated {
        resume_token: String,
    },
    /// The connection must be closed (`reason` for the close frame).
    Close(&'static str),
    /// The client asks to continue another session on this connection.
    Resume {
        token: String,
        access_token: String,
        last_seq: u64,
        request_id: Option<Value>,
    },
}

/// Outcome of one request: a reply, or an error with its code.
type Reply = Result<(&'static str, Value), Failure>;

fn deny(code: ErrorCode, message: &str) -> Failure {
    Failure::new(code, message)
}

impl Session {
    pub fn new(ctx: Arc<AppContext>) -> Self {
        let sink = SessionSink::new(Uuid::new_v4());
        ctx.sessions.register(sink.clone());
        Session {
            ctx,
            sink,
            identity: None,
            token: None,
            resume_token: None,
            membership: None,
            auth_failures: 0,
            frame_session: None,
            refused_streams: 0,
        }
    }

    /// The connection now carrying this session (set at connect and on resume): frames can
    /// be sent only over a WebTransport one.
    pub fn set_carrier(&mut self, frame_session: Option<Arc<dyn FrameSession>>) {
        self.frame_session = frame_session;
    }

    pub fn connection_id(&self) -> Uuid {
        self.sink.connection_id
    }

    pub fn sink(&self) -> &SessionSink {
        &self.sink
    }

    /// Worth keeping through a drop: an authenticated session (with or without a room).
    pub fn is_resumable(&self) -> bool {
        self.identity.is_some()
    }

    /// Replace the resume token (after a successful resume, so a token works once).
    pub fn rotate_resume_token(&mut self) -> String {
        let token = random_token();
        if let Some(old) = self.resume_token.replace(token.clone()) {
            self.ctx.sessions.forget_resumable(&old);
        }
        token
    }

    /// The authenticated user's id.
    pub fn user_id(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.user.id.as_str())
    }

    /// Take a verified identity of the same user (resume with a fresh token).
    pub fn refresh_identity(&mut self, identity: crate::auth::Identity, token: String) {
        self.identity = Some(identity);
        self.token = Some(token);
    }

    pub fn room(&self) -> Option<(String, String)> {
        self.membership
            .as_ref()
            .map(|m| (m.room_id.clone(), m.participant_id.clone()))
    }

    /// Handle one text frame. Every outcome, good or bad, is answered through the sink.
    pub async fn on_text(&mut self, text: &str) -> Flow {
        // Parsing is bounded by MAX_MESSAGE_SIZE; doing it first lets every reply, including
        // a rate-limit refusal, carry the request's id and type.
        let parsed = parse_request(text, self.ctx.settings.config.max_message_size);
        if let Err(retry_after) = self.ctx.limits.check_message(&self.rate_key()) {
            self.refuse_rate_limited(&parsed, retry_after);
            return Flow::Continue;
        }
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(failure) => {
                self.reply_parse_failure(failure);
                return Flow::Continue;
            }
        };
        let ParsedRequest {
            request,
            request_type,
            request_id,
        } = parsed;
        if let Request::Resume(resume) = &request {
            return self.intercept_resume(resume, &request_type, request_id);
        }
        self.dispatch_and_reply(request, request_type, request_id)
            .await
    }

    /// Messages are counted per user once authenticated, per connection before.
    fn rate_key(&self) -> String {
        match &self.identity {
            Some(identity) => format!("user:{}", identity.user.id),
            None => format!("conn:{}", self.connection_id()),
        }
    }

    fn refuse_rate_limited(
        &self,
        parsed: &Result<ParsedRequest, ParseFailure>,
        retry_after: Duration,
    ) {
        let (request_type, request_id) = match parsed {
            Ok(p) => (Some(p.request_type.clone()), p.request_id.clone()),
            Err(f) => (f.request_type.clone(), f.request_id.clone()),
        };
        self.reply_error(
            OutboundEnvelope::error(
                ErrorCode::RateLimited,
                format!("too many messages; retry in {} ms", retry_after.as_millis()),
                request_type.as_deref(),
                request_id,
            )
            .with_error_detail("retryAfterMs", json!(retry_after.as_millis() as u64)),
            ErrorCode::RateLimited,
        );
    }

    fn reply_parse_failure(&self, f: ParseFailure) {
        tracing::debug!(connection = %self.connection_id(), code = ?f.code, message = %f.message, "bad request");
        let code = f.code;
        self.reply_error(
            OutboundEnvelope::error(code, f.message, f.request_type.as_deref(), f.request_id),
            code,
        );
    }

    /// `resume` is for the connection driver, and only as a connection's first message.
    fn intercept_resume(
        &self,
        resume: &protocol::Resume,
        request_type: &str,
        request_id: Option<Value>,
    ) -> Flow {
        if self.identity.is_some() {
            self.reply_error(
                OutboundEnvelope::error(
                    ErrorCode::AlreadyAuthenticated,
                    "resume must be the first message of a new connection",
                    Some(request_type),
                    request_id,
                ),
                ErrorCode::AlreadyAuthenticated,
            );
            return Flow::Continue;
        }
        Flow::Resume {
            token: resume.token.clone(),
            access_token: resume.access_token.clone(),
            last_seq: resume.last_seq,
            request_id,
        }
    }

    /// Run the request under its own span, time it, and answer it.
    async fn dispatch_and_reply(
        &mut self,
        request: Request,
        request_type: String,
        request_id: Option<Value>,
    ) -> Flow {
        let span = tracing::info_span!(
            "request",
            request_id = %Uuid::new_v4().simple(),
            client_request_id = %request_id.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            r#type = %request_type,
            connection = %self.connection_id(),
        );
        let started = Instant::now();
        let reply = self.dispatch(request).instrument(span.clone()).await;
        metrics::histogram!("sfu_signaling_request_duration_seconds", "type" => request_type.clone())
            .record(started.elapsed().as_secs_f64());
        self.answer(reply, &span, &request_type, request_id)
    }

    fn answer(
        &self,
        reply: Reply,
        span: &tracing::Span,
        request_type: &str,
        request_id: Option<Value>,
    ) -> Flow {
        match reply {
            Ok((kind, data)) => {
                self.sink
                    .send(OutboundEnvelope::message(kind, data, request_id));
                if kind == "connected" {
                    if let Some(token) = &self.resume_token {
                        return Flow::Authenticated {
                            resume_token: token.clone(),
                        };
                    }
                }
            }
            Err(Failure {
                code,
                message,
                detail,
            }) => {
                span.in_scope(|| tracing::debug!(code = ?code, %message, "request failed"));
                let mut error =
                    OutboundEnvelope::error(code, message, Some(request_type), request_id);
                if let Some((key, value)) = detail {
                    error = error.with_error_detail(key, value);
                }
                self.reply_error(error, code);
            }
        }
        Flow::Continue
    }

    fn reply_error(&self, message: OutboundEnvelope, code: ErrorCode) {
        let code_name = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        metrics::counter!("sfu_errors_total", "component" => "signaling", "code" => code_name)
            .increment(1);
        self.sink.send(message);
    }

    /// A frame that is not JSON text (binary, invalid UTF-8): answered, connection kept.
    pub fn on_invalid_frame(&mut self, why: &str) {
        self.reply_error(
            OutboundEnvelope::error(ErrorCode::InvalidMessage, why, None, None),
            ErrorCode::InvalidMessage,
        );
    }

    /// The session ends for good (not resumed in time, or never resumable): leave the room
    /// so others are told, and forget it.
    pub async fn close(&mut self) {
        self.ctx.sessions.unregister(self.connection_id());
        if let Some(token) = self.resume_token.take() {
            self.ctx.sessions.forget_resumable(&token);
        }
        if let Some(m) = self.membership.take() {
            self.ctx.rooms.leave(&m.room_id, &m.participant_id).await;
        }
    }

    /// The membership, checking the optional `roomId` the seed's clients put in every room
    /// request. Owned, so a handler can go on to borrow the session mutably.
    fn membership_in(&self, room_id: Option<&str>) -> Result<Membership, Failure> {
        let m = self.membership()?;
        match room_id {
            Some(id) if id != m.room_id => Err(deny(
                ErrorCode::NotInRoom,
                "`roomId` is not the room this session joined",
            )),
            _ => Ok(Membership {
                room_id: m.room_id.clone(),
                participant_id: m.participant_id.clone(),
            }),
        }
    }

    fn membership(&self) -> Result<&Membership, Failure> {
        self.membership
            .as_ref()
            .ok_or_else(|| deny(ErrorCode::NotInRoom, "join a room first"))
    }
}

/// 256 random bits, hex: unguessable, so holding it proves the session is yours.
fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
