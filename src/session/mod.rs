//! The session layer: one state machine per client connection, fed text frames and producing
//! outbound envelopes. It never sees a socket, so WebSocket and WebTransport share it.

pub mod protocol;

use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::media::Preference;
use crate::room::{RoomError, SessionSink};
use crate::AppContext;
use protocol::{
    parse_request, ErrorCode, LayerPreference, OutboundEnvelope, ParsedRequest, Request, UserInfo,
};

struct Membership {
    room_id: String,
    participant_id: String,
}

pub struct Session {
    ctx: Arc<AppContext>,
    sink: SessionSink,
    user: Option<UserInfo>,
    membership: Option<Membership>,
}

/// Outcome of one request: a reply, or an error with its code.
type Reply = Result<(&'static str, Value), (ErrorCode, String)>;

impl From<RoomError> for (ErrorCode, String) {
    fn from(e: RoomError) -> Self {
        (e.code, e.message)
    }
}

impl Session {
    pub fn new(ctx: Arc<AppContext>, sink: SessionSink) -> Self {
        Session {
            ctx,
            sink,
            user: None,
            membership: None,
        }
    }

    pub fn connection_id(&self) -> Uuid {
        self.sink.connection_id
    }

    /// Handle one text frame. Every outcome, good or bad, is answered through the sink.
    pub async fn on_text(&mut self, text: &str) {
        let parsed = match parse_request(text, self.ctx.settings.config.max_message_size) {
            Ok(parsed) => parsed,
            Err(f) => {
                tracing::debug!(connection = %self.connection_id(), code = ?f.code, message = %f.message, "bad request");
                self.sink.send(OutboundEnvelope::error(
                    f.code,
                    f.message,
                    f.request_type.as_deref(),
                    f.request_id,
                ));
                return;
            }
        };
        let ParsedRequest {
            request,
            request_type,
            request_id,
        } = parsed;
        let reply = self.dispatch(request).await;
        let message = match reply {
            Ok((kind, data)) => OutboundEnvelope::message(kind, data, request_id),
            Err((code, message)) => {
                OutboundEnvelope::error(code, message, Some(&request_type), request_id)
            }
        };
        self.sink.send(message);
    }

    /// A binary frame is never valid signaling.
    pub fn on_binary(&mut self) {
        self.sink.send(OutboundEnvelope::error(
            ErrorCode::InvalidMessage,
            "binary frames are not supported; send JSON text",
            None,
            None,
        ));
    }

    /// The connection is gone: leave the room so others are told.
    pub async fn on_close(&mut self) {
        if let Some(m) = self.membership.take() {
            self.ctx.rooms.leave(&m.room_id, &m.participant_id).await;
        }
    }

    async fn dispatch(&mut self, request: Request) -> Reply {
        let user = match (&request, &self.user) {
            (Request::Authenticate(auth), None) => return self.authenticate(&auth.token),
            (Request::Authenticate(_), Some(_)) => {
                return Err((
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already authenticated".into(),
                ))
            }
            (Request::Ping, _) => return Ok(("pong", json!({}))),
            (_, None) => {
                return Err((
                    ErrorCode::NotAuthenticated,
                    "send `authenticate` with a valid token first".into(),
                ))
            }
            (_, Some(user)) => user.clone(),
        };
        let rooms = self.ctx.rooms.clone();
        match request {
            Request::Authenticate(_) | Request::Ping => unreachable!("handled above"),
            Request::CreateRoom(r) => {
                let room =
                    rooms.create_room(r.name, r.description, r.max_participants, r.room_id)?;
                Ok(("createRoomResponse", json!(room)))
            }
            Request::JoinRoom(r) => {
                if self.membership.is_some() {
                    return Err((
                        ErrorCode::AlreadyInRoom,
                        "leave the current room before joining another".into(),
                    ));
                }
                let joined = rooms
                    .join(&r.room_id, &user, &r.display_name, self.sink.clone())
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
            Request::SubscriberAnswer(r) => {
                let m = self.membership()?;
                rooms
                    .subscriber_answer(&m.room_id, &m.participant_id, r.sdp)
                    .await?;
                Ok(("subscriberAnswerResponse", json!({})))
            }
            Request::SetPreferredLayer(r) => {
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
        }
    }

    fn authenticate(&mut self, token: &str) -> Reply {
        match self.ctx.auth.verify(token) {
            Ok(user) => {
                tracing::info!(connection = %self.connection_id(), user = %user.id, "authenticated");
                let data = json!({ "connectionId": self.connection_id(), "user": user });
                self.user = Some(user);
                Ok(("connected", data))
            }
            Err(e) => {
                tracing::warn!(connection = %self.connection_id(), code = ?e.code, reason = %e.message, "authentication failed");
                Err((e.code, e.message))
            }
        }
    }

    fn membership(&self) -> Result<&Membership, (ErrorCode, String)> {
        self.membership
            .as_ref()
            .ok_or((ErrorCode::NotInRoom, "join a room first".into()))
    }
}
