//! The session layer: one state machine per client connection, fed text frames and producing
//! outbound envelopes. It never sees a socket, so WebSocket and WebTransport share it.

pub mod driver;
pub mod protocol;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use crate::audit::{AuditEvent, AuditKind};
use crate::auth::Identity;
use crate::media::Preference;
use crate::room::{RoomError, SessionSink};
use crate::AppContext;
use protocol::{
    parse_request, ErrorCode, LayerPreference, OutboundEnvelope, ParsedRequest, Request,
};

struct Membership {
    room_id: String,
    participant_id: String,
}

/// A session shared by the connections that carry it over its life (resume swaps them).
pub type SharedSession = Arc<tokio::sync::Mutex<Session>>;

/// Every session's sink, so the server can address all clients (shutdown notice), and the
/// sessions a client may resume, by resume token.
#[derive(Default)]
pub struct SessionRegistry {
    sinks: Mutex<HashMap<Uuid, SessionSink>>,
    resumable: Mutex<HashMap<String, SharedSession>>,
}

impl SessionRegistry {
    pub fn register_resumable(&self, token: String, session: SharedSession) {
        self.resumable_lock().insert(token, session);
    }

    pub fn resumable(&self, token: &str) -> Option<SharedSession> {
        self.resumable_lock().get(token).cloned()
    }

    pub fn forget_resumable(&self, token: &str) {
        self.resumable_lock().remove(token);
    }

    fn resumable_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SharedSession>> {
        self.resumable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, sink: SessionSink) {
        self.lock().insert(sink.connection_id, sink);
    }

    pub fn unregister(&self, connection_id: Uuid) {
        self.lock().remove(&connection_id);
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Sessions with a live connection (excludes those waiting for a resume).
    pub fn attached_count(&self) -> usize {
        self.lock().values().filter(|s| s.is_attached()).count()
    }

    pub fn broadcast(&self, message: &OutboundEnvelope) {
        for sink in self.lock().values() {
            sink.send(message.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SessionSink>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }
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
}

/// What the connection driver must do after a frame was handled.
pub enum Flow {
    Continue,
    /// Authentication succeeded: the session can now be resumed with this token.
    Authenticated {
        resume_token: String,
    },
    /// The client asks to continue another session on this connection.
    Resume {
        token: String,
        last_seq: u64,
        request_id: Option<Value>,
    },
}

/// Outcome of one request: a reply, or an error with its code.
type Reply = Result<(&'static str, Value), Failure>;

/// A refused request: code, human message, and optionally one extra `data` field.
pub struct Failure {
    code: ErrorCode,
    message: String,
    detail: Option<(&'static str, Value)>,
}

impl From<(ErrorCode, String)> for Failure {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Failure {
            code,
            message,
            detail: None,
        }
    }
}

impl From<RoomError> for Failure {
    fn from(e: RoomError) -> Self {
        Failure {
            code: e.code,
            message: e.message,
            detail: e.detail,
        }
    }
}

fn deny(code: ErrorCode, message: &str) -> Failure {
    (code, message.to_string()).into()
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
        }
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
        let rate_key = match &self.identity {
            Some(identity) => format!("user:{}", identity.user.id),
            None => format!("conn:{}", self.connection_id()),
        };
        if let Err(retry_after) = self.ctx.limits.check_message(&rate_key) {
            let (request_type, request_id) = match &parsed {
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
            return Flow::Continue;
        }
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(f) => {
                tracing::debug!(connection = %self.connection_id(), code = ?f.code, message = %f.message, "bad request");
                let code = f.code;
                self.reply_error(
                    OutboundEnvelope::error(
                        code,
                        f.message,
                        f.request_type.as_deref(),
                        f.request_id,
                    ),
                    code,
                );
                return Flow::Continue;
            }
        };
        let ParsedRequest {
            request,
            request_type,
            request_id,
        } = parsed;
        if let Request::Resume(resume) = &request {
            if self.identity.is_some() {
                self.reply_error(
                    OutboundEnvelope::error(
                        ErrorCode::AlreadyAuthenticated,
                        "resume must be the first message of a new connection",
                        Some(&request_type),
                        request_id,
                    ),
                    ErrorCode::AlreadyAuthenticated,
                );
                return Flow::Continue;
            }
            return Flow::Resume {
                token: resume.token.clone(),
                last_seq: resume.last_seq,
                request_id,
            };
        }
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
                    OutboundEnvelope::error(code, message, Some(&request_type), request_id);
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

    async fn dispatch(&mut self, request: Request) -> Reply {
        let identity = match (&request, &self.identity) {
            (Request::Authenticate(auth), None) => {
                let token = auth.token.clone();
                return self.authenticate(token);
            }
            (Request::Authenticate(_), Some(_)) => {
                return Err(deny(
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already authenticated",
                ))
            }
            (Request::Ping, _) => return Ok(("pong", json!({}))),
            (Request::Resume(_), _) => unreachable!("handled by the connection driver"),
            (_, None) => {
                return Err(deny(
                    ErrorCode::NotAuthenticated,
                    "send `authenticate` with a valid token first",
                ))
            }
            (_, Some(identity)) => identity.clone(),
        };
        let grants = &identity.grants;
        let rooms = self.ctx.rooms.clone();
        let draining = self.ctx.is_draining();
        let pausing = matches!(
            request,
            Request::PauseConsumer(_) | Request::PauseProducer(_)
        );
        match request {
            Request::Authenticate(_) | Request::Ping | Request::Resume(_) => {
                unreachable!("handled above")
            }
            Request::CreateRoom(r) => {
                if draining {
                    return Err(shutting_down());
                }
                if !grants.create_room {
                    return Err(deny(
                        ErrorCode::CreateRoomDenied,
                        "this token may not create rooms",
                    ));
                }
                let room = rooms
                    .create_room(r.name, r.description, r.max_participants, r.room_id)
                    .await?;
                Ok(("createRoomResponse", json!(room)))
            }
            Request::JoinRoom(r) => {
                if draining {
                    return Err(shutting_down());
                }
                if !grants.may_join(&r.room_id) {
                    return Err((
                        ErrorCode::RoomAccessDenied,
                        format!("this token may not join room `{}`", r.room_id),
                    )
                        .into());
                }
                if let Some(m) = &self.membership {
                    // A kick or a closed room ends membership without this session acting.
                    if rooms.is_participant(&m.room_id, &m.participant_id) {
                        return Err(deny(
                            ErrorCode::AlreadyInRoom,
                            "leave the current room before joining another",
                        ));
                    }
                    self.membership = None;
                }
                let token = self.token.clone().unwrap_or_default();
                let joined = rooms
                    .join(
                        &r.room_id,
                        &identity,
                        &token,
                        &r.display_name,
                        self.sink.clone(),
                    )
                    .await?;
                self.membership = Some(Membership {
                    room_id: r.room_id.clone(),
                    participant_id: joined.participant_id.clone(),
                });
                Ok((
                    "joinRoomResponse",
                    json!({
                        "roomId": r.room_id,
                        "participantId": joined.participant_id,
                        "participants": joined.others,
                        "routerRtpCapabilities": rooms.router_capabilities(),
                    }),
                ))
            }
            Request::LeaveRoom => {
                let m = self.membership()?;
                let (room_id, participant_id) = (m.room_id.clone(), m.participant_id.clone());
                self.membership = None;
                rooms.leave(&room_id, &participant_id).await;
                Ok(("leaveRoomResponse", json!({ "roomId": room_id })))
            }
            Request::PublisherOffer(r) => {
                let m = self.membership()?;
                for kind in crate::room::sdp_sending_kinds(&r.sdp) {
                    if !grants.may_publish(kind) {
                        return Err((
                            ErrorCode::PublishDenied,
                            format!("this token may not publish {kind}"),
                        )
                            .into());
                    }
                }
                let (answer, producers) =
                    rooms.publish(&m.room_id, &m.participant_id, r.sdp).await?;
                let producers: Vec<Value> = producers
                    .into_iter()
                    .map(|(info, mid)| {
                        let mut v = json!(info);
                        v["mid"] = json!(mid);
                        v
                    })
                    .collect();
                Ok((
                    "publisherAnswer",
                    json!({ "sdp": answer, "producers": producers }),
                ))
            }
            Request::CreateWebRtcTransport(r) => {
                let m = self.ortc_membership(r.room_id.as_deref())?;
                let send = r.direction == protocol::TransportDirection::Send;
                if !send && !grants.subscribe {
                    return Err(deny(
                        ErrorCode::SubscribeDenied,
                        "this token may not subscribe",
                    ));
                }
                let created = rooms
                    .create_webrtc_transport(&m.room_id, &m.participant_id, send)
                    .await?;
                Ok(("createWebRtcTransportResponse", created))
            }
            Request::ConnectWebRtcTransport(r) => {
                let m = self.membership()?;
                rooms
                    .connect_webrtc_transport(
                        &m.room_id,
                        &m.participant_id,
                        &r.transport_id,
                        &r.dtls_parameters,
                    )
                    .await?;
                Ok((
                    "connectWebRtcTransportResponse",
                    json!({ "transportId": r.transport_id }),
                ))
            }
            Request::Publish(r) => {
                let m = self.ortc_membership(r.room_id.as_deref())?;
                let (kind, name) = match r.kind {
                    protocol::MediaKindName::Audio => (crate::media::Kind::Audio, "audio"),
                    protocol::MediaKindName::Video => (crate::media::Kind::Video, "video"),
                };
                if !grants.may_publish(name) {
                    return Err((
                        ErrorCode::PublishDenied,
                        format!("this token may not publish {name}"),
                    )
                        .into());
                }
                let published = rooms
                    .publish_ortc(
                        &m.room_id,
                        &m.participant_id,
                        r.transport_id.as_deref(),
                        kind,
                        r.rtp_parameters,
                    )
                    .await?;
                Ok(("publishResponse", published))
            }
            Request::Consume(r) => {
                if !grants.subscribe {
                    return Err(deny(
                        ErrorCode::SubscribeDenied,
                        "this token may not subscribe",
                    ));
                }
                let m = self.membership()?;
                let consumed = rooms
                    .consume(
                        &m.room_id,
                        &m.participant_id,
                        &r.producer_id,
                        r.rtp_capabilities,
                        r.transport_id.as_deref(),
                        r.paused,
                    )
                    .await?;
                Ok(("consumeResponse", consumed))
            }
            Request::PauseConsumer(r) | Request::ResumeConsumer(r) => {
                let paused = pausing;
                let m = self.membership()?;
                rooms
                    .set_consumer_paused(&m.room_id, &m.participant_id, &r.consumer_id, paused)
                    .await?;
                Ok((
                    if paused {
                        "pauseConsumerResponse"
                    } else {
                        "resumeConsumerResponse"
                    },
                    json!({ "consumerId": r.consumer_id }),
                ))
            }
            Request::PauseProducer(r) | Request::ResumeProducer(r) => {
                let paused = pausing;
                let m = self.membership()?;
                rooms
                    .set_producer_paused(&m.room_id, &m.participant_id, &r.producer_id, paused)
                    .await?;
                Ok((
                    if paused {
                        "pauseProducerResponse"
                    } else {
                        "resumeProducerResponse"
                    },
                    json!({ "producerId": r.producer_id }),
                ))
            }
            Request::CloseProducer(r) => {
                let m = self.membership()?;
                rooms
                    .close_producer(&m.room_id, &m.participant_id, &r.producer_id)
                    .await?;
                Ok((
                    "closeProducerResponse",
                    json!({ "producerId": r.producer_id }),
                ))
            }
            Request::SetConsumerPreferredLayers(r) => {
                let m = self.membership()?;
                rooms
                    .set_consumer_preferred_layers(
                        &m.room_id,
                        &m.participant_id,
                        &r.consumer_id,
                        r.spatial_layer,
                    )
                    .await?;
                Ok((
                    "setConsumerPreferredLayersResponse",
                    json!({ "consumerId": r.consumer_id, "spatialLayer": r.spatial_layer, "temporalLayer": r.temporal_layer }),
                ))
            }
            Request::RestartIce(r) => {
                let m = self.membership()?;
                let ice = rooms
                    .restart_ice(&m.room_id, &m.participant_id, &r.transport_id)
                    .await?;
                Ok((
                    "restartIceResponse",
                    json!({ "transportId": r.transport_id, "iceParameters": ice }),
                ))
            }
            Request::SubscriberAnswer(r) => {
                if !grants.subscribe {
                    return Err(deny(
                        ErrorCode::SubscribeDenied,
                        "this token may not subscribe",
                    ));
                }
                let m = self.membership()?;
                rooms
                    .subscriber_answer(&m.room_id, &m.participant_id, r.sdp)
                    .await?;
                Ok(("subscriberAnswerResponse", json!({})))
            }
            Request::SetPreferredLayer(r) => {
                if !grants.subscribe {
                    return Err(deny(
                        ErrorCode::SubscribeDenied,
                        "this token may not subscribe",
                    ));
                }
                let m = self.membership()?;
                let preference = match r.layer {
                    LayerPreference::Auto => Preference::Auto,
                    LayerPreference::Low => Preference::Fixed(0),
                    LayerPreference::Medium => Preference::Fixed(1),
                    LayerPreference::High => Preference::Fixed(2),
                };
                rooms
                    .set_preference(&m.room_id, &m.participant_id, &r.producer_id, preference)
                    .await?;
                Ok((
                    "setPreferredLayerResponse",
                    json!({ "producerId": r.producer_id, "layer": r.layer }),
                ))
            }
            Request::KickParticipant(r) => {
                let m = self.membership()?;
                if !grants.room_admin {
                    return Err(deny(
                        ErrorCode::AdminRequired,
                        "kicking needs the room-admin grant",
                    ));
                }
                let reason = r.reason.unwrap_or_else(|| "removed by an admin".into());
                rooms.kick(&m.room_id, &r.participant_id, &reason).await?;
                tracing::warn!(room = %m.room_id, admin = %identity.user.id, target = %r.participant_id, "participant kicked");
                self.ctx.audit.record(
                    AuditEvent::new(AuditKind::AdminAction)
                        .room(&m.room_id)
                        .participant(&m.participant_id)
                        .user(&identity.user.id)
                        .detail(json!({ "action": "kickParticipant", "target": r.participant_id, "reason": reason })),
                );
                Ok((
                    "kickParticipantResponse",
                    json!({ "participantId": r.participant_id }),
                ))
            }
            Request::CloseRoom => {
                let m = self.membership()?;
                if !grants.room_admin {
                    return Err(deny(
                        ErrorCode::AdminRequired,
                        "closing a room needs the room-admin grant",
                    ));
                }
                let room_id = m.room_id.clone();
                self.membership = None;
                rooms.close_room(&room_id).await;
                tracing::warn!(room = %room_id, admin = %identity.user.id, "room closed by admin");
                self.ctx.audit.record(
                    AuditEvent::new(AuditKind::AdminAction)
                        .room(&room_id)
                        .user(&identity.user.id)
                        .detail(json!({ "action": "closeRoom" })),
                );
                Ok(("closeRoomResponse", json!({ "roomId": room_id })))
            }
        }
    }

    fn authenticate(&mut self, token: String) -> Reply {
        match self.ctx.auth.verify(&token) {
            Ok(identity) => {
                tracing::info!(connection = %self.connection_id(), user = %identity.user.id, "authenticated");
                self.ctx.audit.record(
                    AuditEvent::new(AuditKind::AuthSucceeded)
                        .user(&identity.user.id)
                        .detail(json!({ "connectionId": self.connection_id() })),
                );
                let resume_token = random_token();
                let data = json!({
                    "connectionId": self.connection_id(),
                    "user": identity.user,
                    "resumeToken": resume_token,
                    "resumeGraceMs": self.ctx.settings.config.resume_grace_secs * 1000,
                });
                self.identity = Some(identity);
                self.token = Some(token);
                self.resume_token = Some(resume_token);
                Ok(("connected", data))
            }
            Err(e) => {
                let code = ErrorCode::from(e.kind);
                // Security event: always at warn, never with the token itself.
                tracing::warn!(connection = %self.connection_id(), code = ?code, reason = %e.message, "authentication failed");
                self.ctx
                    .audit
                    .record(AuditEvent::new(AuditKind::AuthFailed).detail(json!({
                        "connectionId": self.connection_id(),
                        "code": code,
                        "reason": e.message,
                    })));
                Err((code, e.message).into())
            }
        }
    }

    /// The membership, checking the optional `roomId` the seed's ORTC messages carry.
    fn ortc_membership(&self, room_id: Option<&str>) -> Result<&Membership, Failure> {
        let m = self.membership()?;
        match room_id {
            Some(id) if id != m.room_id => Err(deny(
                ErrorCode::NotInRoom,
                "`roomId` is not the room this session joined",
            )),
            _ => Ok(m),
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

fn shutting_down() -> Failure {
    deny(
        ErrorCode::ServerShuttingDown,
        "this server is shutting down; reconnect to join",
    )
}
