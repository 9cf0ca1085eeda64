//! One handler per request type; `dispatch` only checks authentication and routes.

mod account;
mod frames;
mod ortc;
mod rooms;
mod sdp;

use serde_json::json;

use super::protocol::{ErrorCode, Request};
use super::{deny, Failure, Reply, Session};

impl Session {
    pub(super) async fn dispatch(&mut self, request: Request) -> Reply {
        let identity = match (&request, &self.identity) {
            // First authentication, or a refresh with a fresh token of the same user.
            (Request::Authenticate(auth), _) => {
                let token = auth.token.clone();
                return self.authenticate(token);
            }
            (Request::Ping { last_seq }, _) => {
                if let Some(seq) = last_seq {
                    self.sink.acknowledge(*seq);
                }
                return Ok(("pong", json!({})));
            }
            (Request::Resume(_), _) => {
                return Err(deny(
                    ErrorCode::AlreadyAuthenticated,
                    "resume must be the first message of a new connection",
                ))
            }
            (_, None) => {
                return Err(deny(
                    ErrorCode::NotAuthenticated,
                    "send `authenticate` with a valid token first",
                ))
            }
            (_, Some(_)) if self.token_expired() => {
                return Err(deny(
                    ErrorCode::TokenExpired,
                    "your token expired: send `authenticate` with a fresh token",
                ))
            }
            (_, Some(identity)) => identity.clone(),
        };
        match request {
            Request::Authenticate(_) | Request::Ping { .. } | Request::Resume(_) => {
                unreachable!("answered above")
            }
            Request::CreateRoom(r) => self.create_room(&identity, r).await,
            Request::JoinRoom(r) => self.join_room(&identity, r).await,
            Request::LeaveRoom(r) => self.leave_room(r).await,
            Request::KickParticipant(r) => self.kick_participant(&identity, r).await,
            Request::CloseRoom(r) => self.close_room(&identity, r).await,
            Request::PublisherOffer(r) => self.publisher_offer(&identity, r).await,
            Request::SubscriberAnswer(r) => self.subscriber_answer(&identity, r).await,
            Request::SetPreferredLayer(r) => self.set_preferred_layer(&identity, r).await,
            Request::CreateWebRtcTransport(r) => self.create_transport(&identity, r).await,
            Request::ConnectWebRtcTransport(r) => self.connect_transport(r).await,
            Request::Publish(r) => self.publish(&identity, *r).await,
            Request::Consume(r) => self.consume(&identity, *r).await,
            Request::PauseConsumer(r) => self.set_consumer_paused(r, true).await,
            Request::ResumeConsumer(r) => self.set_consumer_paused(r, false).await,
            Request::PauseProducer(r) => self.set_producer_paused(r, true).await,
            Request::ResumeProducer(r) => self.set_producer_paused(r, false).await,
            Request::CloseProducer(r) => self.close_producer(r).await,
            Request::SetConsumerPreferredLayers(r) => self.set_consumer_layers(r).await,
            Request::SetConsumerPriority(r) => self.set_consumer_priority(r).await,
            Request::PublishFrames(r) => self.publish_frames(&identity, r).await,
            Request::ConsumeFrames(r) => self.consume_frames(&identity, r).await,
            Request::RestartIce(r) => self.restart_ice(r).await,
        }
    }
}

fn subscribe_denied() -> Failure {
    deny(ErrorCode::SubscribeDenied, "this token may not subscribe")
}

fn publish_denied(kind: &str) -> Failure {
    Failure::new(
        ErrorCode::PublishDenied,
        format!("this token may not publish {kind}"),
    )
}
