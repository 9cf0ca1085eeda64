//! Room operations of the two other media dialects: mediasoup-style ORTC (explicit transports,
//! `publish` and `consume`) and WHIP/WHEP (one HTTP exchange per publisher or player).
//!
//! Both share the room model with the SDP flow: their producers are announced and forwarded
//! to everyone, and they consume anyone's producers.

use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    kind_name, room_not_found, Dialect, Participant, ProducerInfo, Room, RoomError, Rooms,
};
use crate::audit::AuditKind;
use crate::auth::Identity;
use crate::media::ortc::{RtpCapabilities, RtpParameters};
use crate::media::{Kind, Preference, ProducerId, TransportId};
use crate::room::SessionSink;
use crate::session::protocol::{ErrorCode, OutboundEnvelope};

fn transport_not_found() -> RoomError {
    RoomError::new(
        ErrorCode::TransportNotFound,
        "no such transport for this participant (create it with createWebRtcTransport)",
    )
}

fn consumer_not_found() -> RoomError {
    RoomError::new(ErrorCode::ConsumerNotFound, "no such consumer")
}

fn not_in_room() -> RoomError {
    RoomError::new(ErrorCode::NotInRoom, "not a participant of this room")
}

/// A WHIP/WHEP session as the HTTP layer keeps it.
#[derive(Debug, Clone)]
pub struct HttpMediaSession {
    pub participant_id: String,
    pub answer: String,
}

impl Rooms {
    pub fn router_capabilities(&self) -> &RtpCapabilities {
        self.media.capabilities()
    }

    fn with_participant<T>(
        &self,
        room_id: &str,
        participant_id: &str,
        f: impl FnOnce(&mut Room, &str) -> Result<T, RoomError>,
    ) -> Result<T, RoomError> {
        let mut state = self.lock();
        let room = state
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| room_not_found(room_id))?;
        if !room.participants.contains_key(participant_id) {
            return Err(not_in_room());
        }
        f(room, participant_id)
    }

    fn participant<'a>(room: &'a mut Room, participant_id: &str) -> &'a mut Participant {
        room.participants
            .get_mut(participant_id)
            .expect("checked by with_participant")
    }

    /// `createWebRtcTransport`: one send and one receive transport per participant. The first
    /// one switches the participant to ORTC: its server-driven SDP subscriber is closed and it
    /// consumes explicitly from then on.
    pub async fn create_webrtc_transport(
        &self,
        room_id: &str,
        participant_id: &str,
        send: bool,
    ) -> Result<Value, RoomError> {
        let (worker, id, replaced) =
            self.with_participant(room_id, participant_id, |room, pid| {
                let worker = room.worker;
                let p = Self::participant(room, pid);
                if send {
                    if p.ortc.send_transport.is_some() {
                        return Err(RoomError::new(
                            ErrorCode::InvalidPayload,
                            "this participant already has a send transport",
                        ));
                    }
                    if !p.producers.is_empty() && p.dialect == Dialect::Sdp {
                        return Err(RoomError::new(
                            ErrorCode::InvalidPayload,
                            "this participant already publishes over publisherOffer",
                        ));
                    }
                    Ok((worker, p.publisher, None))
                } else {
                    if p.ortc.recv_transport.is_some() {
                        return Err(RoomError::new(
                            ErrorCode::InvalidPayload,
                            "this participant already has a receive transport",
                        ));
                    }
                    Ok((worker, self.media.new_transport_id(), Some(p.subscriber)))
                }
            })?;
        let params = self.media.create_ortc_transport(worker, id, send).await?;
        let transport_id = Uuid::new_v4().to_string();
        let registered = {
            let mut state = self.lock();
            let registered = match state
                .rooms
                .get_mut(room_id)
                .and_then(|r| r.participants.get_mut(participant_id))
            {
                Some(p) => {
                    p.dialect = Dialect::Ortc;
                    if send {
                        p.ortc.send_transport = Some(transport_id.clone());
                    } else {
                        p.ortc.recv_transport = Some(transport_id.clone());
                        p.subscriber = id;
                    }
                    true
                }
                None => false,
            };
            if registered {
                let ids = (room_id.to_string(), participant_id.to_string());
                state.transports.insert(id, ids);
                if let Some(old) = replaced {
                    state.transports.remove(&old);
                }
            }
            registered
        };
        if !registered {
            let _ = self.media.close_transport(worker, id).await;
            return Err(not_in_room());
        }
        if let Some(old) = replaced {
            let _ = self.media.close_transport(worker, old).await;
        }
        Ok(json!({
            "transportId": transport_id,
            "iceParameters": params.ice_parameters,
            "iceCandidates": params.ice_candidates,
            "dtlsParameters": params.dtls_parameters,
            "sctpParameters": null,
        }))
    }

    /// Resolve an ORTC transport id; `send` = Some(direction) when the operation needs one.
    fn ortc_transport(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: Option<&str>,
        send: Option<bool>,
    ) -> Result<(usize, TransportId), RoomError> {
        self.with_participant(room_id, participant_id, |room, pid| {
            let worker = room.worker;
            let p = Self::participant(room, pid);
            let send_match = p.ortc.send_transport.as_deref();
            let recv_match = p.ortc.recv_transport.as_deref();
            let is_send = match (transport_id, send) {
                (Some(t), dir) => {
                    let is_send = if Some(t) == send_match {
                        true
                    } else if Some(t) == recv_match {
                        false
                    } else {
                        return Err(transport_not_found());
                    };
                    if dir.is_some_and(|d| d != is_send) {
                        return Err(RoomError::new(
                            ErrorCode::TransportNotFound,
                            if is_send {
                                "this is a send transport; use a receive transport"
                            } else {
                                "this is a receive transport; use a send transport"
                            },
                        ));
                    }
                    is_send
                }
                (None, Some(d)) => {
                    let exists = if d { send_match } else { recv_match };
                    if exists.is_none() {
                        return Err(transport_not_found());
                    }
                    d
                }
                (None, None) => return Err(transport_not_found()),
            };
            Ok((worker, if is_send { p.publisher } else { p.subscriber }))
        })
    }

    pub async fn connect_webrtc_transport(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: &str,
        dtls: &Value,
    ) -> Result<(), RoomError> {
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, Some(transport_id), None)?;
        let bad = |m: &str| RoomError::new(ErrorCode::InvalidRtpParameters, m.to_string());
        let role = match dtls.get("role") {
            None | Some(Value::Null) => "auto".to_string(),
            Some(Value::String(r)) => r.clone(),
            Some(_) => return Err(bad("dtlsParameters.role must be a string")),
        };
        let fingerprints = dtls
            .get("fingerprints")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("dtlsParameters.fingerprints must be a non-empty array"))?;
        // Prefer sha-256, as browsers do; str0m verifies only sha-256/sha-1.
        let pick = fingerprints
            .iter()
            .find(|f| f.get("algorithm").and_then(Value::as_str) == Some("sha-256"))
            .or_else(|| fingerprints.first())
            .ok_or_else(|| bad("dtlsParameters.fingerprints must be a non-empty array"))?;
        let (Some(algorithm), Some(value)) = (
            pick.get("algorithm").and_then(Value::as_str),
            pick.get("value").and_then(Value::as_str),
        ) else {
            return Err(bad(
                "dtlsParameters.fingerprints[] needs string `algorithm` and `value`",
            ));
        };
        self.media
            .connect_ortc(worker, id, role, algorithm.to_string(), value.to_string())
            .await?;
        Ok(())
    }

    /// `publish`: a new producer from rtpParameters, announced like any other.
    pub async fn publish_ortc(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: Option<&str>,
        kind: Kind,
        params: RtpParameters,
    ) -> Result<Value, RoomError> {
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, transport_id, Some(true))?;
        let created = self
            .media
            .ortc_publish(worker, id, kind, params.clone())
            .await?;
        let producer_id = created.producer_id.to_string();
        self.announce_producers(room_id, participant_id, worker, vec![created])
            .await?;
        Ok(json!({
            "producerId": producer_id,
            "kind": kind_name(kind),
            "rtpParameters": params,
        }))
    }

    /// The producer `producer_id` if it belongs to this room: (id, owner, kind, layers).
    fn room_producer(
        &self,
        room_id: &str,
        producer_id: &str,
    ) -> Result<(ProducerId, String, ProducerInfo), RoomError> {
        let state = self.lock();
        let room = state
            .rooms
            .get(room_id)
            .ok_or_else(|| room_not_found(room_id))?;
        room.participants
            .iter()
            .find_map(|(pid, p)| {
                let info = p
                    .producers
                    .iter()
                    .find(|pr| pr.producer_id == producer_id)?;
                Some((info.producer_id.parse().ok()?, pid.clone(), info.clone()))
            })
            .ok_or_else(|| {
                RoomError::new(
                    ErrorCode::ProducerNotFound,
                    format!("no producer `{producer_id}` in this room"),
                )
            })
    }

    pub async fn consume(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
        caps: RtpCapabilities,
        transport_id: Option<&str>,
        paused: bool,
    ) -> Result<Value, RoomError> {
        let (producer, owner, info) = self.room_producer(room_id, producer_id)?;
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, transport_id, Some(false))?;
        let (created, rtp_parameters) = self
            .media
            .ortc_consume(worker, id, producer, owner, caps, paused)
            .await?;
        let consumer_id = Uuid::new_v4().to_string();
        self.with_participant(room_id, participant_id, |room, pid| {
            Self::participant(room, pid)
                .ortc
                .consumers
                .insert(consumer_id.clone(), producer);
            Ok(())
        })?;
        self.audit(
            AuditKind::ConsumerCreated,
            room_id,
            Some(participant_id),
            json!({ "producerId": producer_id, "consumerId": consumer_id }),
        );
        Ok(json!({
            "consumerId": consumer_id,
            "producerId": producer_id,
            "kind": info.kind,
            "rtpParameters": rtp_parameters,
            "type": if created.layers > 1 { "simulcast" } else { "simple" },
            "paused": paused,
        }))
    }

    fn consumer_producer(
        &self,
        room_id: &str,
        participant_id: &str,
        consumer_id: &str,
    ) -> Result<(usize, TransportId, ProducerId), RoomError> {
        self.with_participant(room_id, participant_id, |room, pid| {
            let worker = room.worker;
            let p = Self::participant(room, pid);
            let producer = *p
                .ortc
                .consumers
                .get(consumer_id)
                .ok_or_else(consumer_not_found)?;
            Ok((worker, p.subscriber, producer))
        })
    }

    pub async fn set_consumer_paused(
        &self,
        room_id: &str,
        participant_id: &str,
        consumer_id: &str,
        paused: bool,
    ) -> Result<(), RoomError> {
        let (worker, subscriber, producer) =
            self.consumer_producer(room_id, participant_id, consumer_id)?;
        self.media
            .set_consumer_paused(worker, subscriber, producer, paused)
            .await
            .map_err(|_| consumer_not_found())
    }

    pub async fn set_consumer_preferred_layers(
        &self,
        room_id: &str,
        participant_id: &str,
        consumer_id: &str,
        spatial_layer: u8,
    ) -> Result<(), RoomError> {
        let (worker, subscriber, producer) =
            self.consumer_producer(room_id, participant_id, consumer_id)?;
        let layer = spatial_layer.min(crate::media::simulcast::MAX_LAYERS as u8 - 1);
        self.media
            .set_preference(worker, subscriber, producer, Preference::Fixed(layer))
            .await
            .map_err(|_| consumer_not_found())
    }

    /// One of the participant's own producers.
    fn own_producer(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
    ) -> Result<(usize, ProducerId), RoomError> {
        self.with_participant(room_id, participant_id, |room, pid| {
            let worker = room.worker;
            let p = Self::participant(room, pid);
            p.producers
                .iter()
                .find(|pr| pr.producer_id == producer_id)
                .and_then(|pr| pr.producer_id.parse().ok())
                .map(|id| (worker, id))
                .ok_or_else(|| {
                    RoomError::new(
                        ErrorCode::ProducerNotFound,
                        "no such producer of this participant",
                    )
                })
        })
    }

    pub async fn set_producer_paused(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
        paused: bool,
    ) -> Result<(), RoomError> {
        let (worker, producer) = self.own_producer(room_id, participant_id, producer_id)?;
        self.media
            .set_producer_paused(worker, producer, paused)
            .await?;
        let kind = if paused {
            "producerPaused"
        } else {
            "producerResumed"
        };
        self.with_participant(room_id, participant_id, |room, pid| {
            room.broadcast(
                &OutboundEnvelope::notification(
                    kind,
                    json!({ "producerId": producer_id, "participantId": pid }),
                ),
                Some(pid),
            );
            Ok(())
        })
    }

    pub async fn close_producer(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
    ) -> Result<(), RoomError> {
        let (worker, producer) = self.own_producer(room_id, participant_id, producer_id)?;
        self.media.close_producer(worker, producer).await?;
        let orphans = self.with_participant(room_id, participant_id, |room, pid| {
            Self::participant(room, pid)
                .producers
                .retain(|p| p.producer_id != producer_id);
            Ok(room.announce_producer_closed(producer_id, pid, Some(pid)))
        })?;
        self.audit(
            AuditKind::ProducerClosed,
            room_id,
            Some(participant_id),
            json!({ "producerId": producer_id, "reason": "closeProducer" }),
        );
        for orphan in orphans {
            self.leave(room_id, &orphan).await;
        }
        Ok(())
    }

    pub async fn restart_ice(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: &str,
    ) -> Result<Value, RoomError> {
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, Some(transport_id), None)?;
        Ok(self.media.restart_ice(worker, id).await?)
    }

    // ------------------------------------------------------------------------------------
    // WHIP / WHEP.

    /// A WHIP/WHEP session: a participant without signaling, whose one offer `negotiate`
    /// applies; if that fails, the participant leaves again and nothing remains.
    async fn http_session(
        &self,
        room_id: &str,
        identity: &Identity,
        token: &str,
        label: &str,
        negotiate: impl AsyncFnOnce(&str) -> Result<String, RoomError>,
    ) -> Result<HttpMediaSession, RoomError> {
        let sink = SessionSink::new(Uuid::new_v4());
        let name = format!("{label} {}", identity.user.id);
        let joined = self
            .join_as(room_id, identity, token, &name, sink, Dialect::Http)
            .await?;
        let participant_id = joined.participant_id;
        match negotiate(&participant_id).await {
            Ok(answer) => Ok(HttpMediaSession {
                participant_id,
                answer,
            }),
            Err(e) => {
                self.leave(room_id, &participant_id).await;
                Err(e)
            }
        }
    }

    /// WHIP: a participant that only publishes the offer's tracks.
    pub async fn whip_publish(
        &self,
        room_id: &str,
        identity: &Identity,
        token: &str,
        sdp: String,
    ) -> Result<HttpMediaSession, RoomError> {
        self.http_session(room_id, identity, token, "WHIP", async |pid| {
            let (answer, announced) = self.publish(room_id, pid, sdp).await?;
            if announced.is_empty() {
                return Err(RoomError::new(
                    ErrorCode::UnsupportedCodec,
                    "the offer has no audio or video track with a codec this server forwards",
                ));
            }
            Ok(answer)
        })
        .await
    }

    /// WHEP: a participant that plays the room's current producers (one per offered m-line).
    pub async fn whep_play(
        &self,
        room_id: &str,
        identity: &Identity,
        token: &str,
        sdp: String,
    ) -> Result<HttpMediaSession, RoomError> {
        self.http_session(room_id, identity, token, "WHEP", async |pid| {
            self.whep_attach(room_id, pid, sdp).await
        })
        .await
    }

    async fn whep_attach(
        &self,
        room_id: &str,
        participant_id: &str,
        sdp: String,
    ) -> Result<String, RoomError> {
        let (worker, subscriber, producers) =
            self.with_participant(room_id, participant_id, |room, pid| {
                let producers: Vec<(ProducerId, String)> = room
                    .participants
                    .iter()
                    .filter(|(id, _)| id.as_str() != pid)
                    .flat_map(|(id, p)| {
                        p.producers
                            .iter()
                            .filter_map(move |pr| Some((pr.producer_id.parse().ok()?, id.clone())))
                    })
                    .collect();
                let worker = room.worker;
                Ok((worker, Self::participant(room, pid).subscriber, producers))
            })?;
        if producers.is_empty() {
            return Err(RoomError::new(
                ErrorCode::ProducerNotFound,
                "nothing is published in this room yet",
            ));
        }
        let (answer, attached) = self
            .media
            .whep_offer(worker, subscriber, sdp, producers)
            .await?;
        self.with_participant(room_id, participant_id, |room, pid| {
            let p = Self::participant(room, pid);
            for producer in &attached {
                p.ortc
                    .consumers
                    .insert(Uuid::new_v4().to_string(), *producer);
            }
            Ok(())
        })?;
        for producer in attached {
            self.audit(
                AuditKind::ConsumerCreated,
                room_id,
                Some(participant_id),
                json!({ "producerId": producer.to_string(), "via": "whep" }),
            );
        }
        Ok(answer)
    }

    pub fn room_exists(&self, room_id: &str) -> bool {
        self.lock().rooms.contains_key(room_id)
    }

    /// DELETE of a WHIP/WHEP session: only its own user or a room admin may end it.
    pub async fn end_http_session(
        &self,
        room_id: &str,
        participant_id: &str,
        identity: &Identity,
    ) -> Result<(), RoomError> {
        let not_found = || {
            RoomError::new(
                ErrorCode::ParticipantNotFound,
                "no such WHIP/WHEP session in this room",
            )
        };
        {
            let state = self.lock();
            let room = state.rooms.get(room_id).ok_or_else(not_found)?;
            let p = room
                .participants
                .get(participant_id)
                .ok_or_else(not_found)?;
            if p.dialect != Dialect::Http {
                return Err(not_found());
            }
            if p.user_id != identity.user.id && !identity.grants.room_admin {
                tracing::warn!(room = room_id, session = participant_id, user = %identity.user.id, "refused to end another user's WHIP/WHEP session");
                return Err(RoomError::new(
                    ErrorCode::AdminRequired,
                    "only the user who started this session or a room admin may end it",
                ));
            }
        }
        self.leave(room_id, participant_id).await;
        Ok(())
    }
}
