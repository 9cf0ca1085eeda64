//! The mediasoup-style ORTC dialect: explicit transports, `publish` and `consume`, pause,
//! close, preferred layers and ICE restarts. Its producers are announced and forwarded like
//! any other, and its consumers take anyone's producers.

use uuid::Uuid;

use super::events::{ConsumerOrigin, Notice, RoomEvent};
use super::model::Dialect;
use super::{RoomError, RoomErrorKind, Rooms};
use crate::media::ortc::{RtpCapabilities, RtpParameters, TransportParameters};
use crate::media::{Kind, Preference, ProducerId, TransportId};

/// A new ORTC transport: its opaque id and the ICE/DTLS parameters the client needs.
pub struct TransportCreated {
    pub transport_id: String,
    pub parameters: TransportParameters,
}

/// A new ORTC producer.
pub struct ProducerPublished {
    pub producer_id: ProducerId,
    pub kind: Kind,
    pub rtp_parameters: RtpParameters,
}

/// A new ORTC consumer.
pub struct ConsumerCreated {
    pub consumer_id: String,
    pub producer_id: ProducerId,
    pub kind: Kind,
    pub rtp_parameters: RtpParameters,
    pub simulcast: bool,
    pub paused: bool,
}

/// The remote DTLS parameters of `connectWebRtcTransport`, already picked and checked.
pub struct RemoteDtls {
    /// `auto`, `client` or `server`.
    pub role: String,
    pub algorithm: String,
    pub fingerprint: String,
}

fn invalid(message: &str) -> RoomError {
    RoomError::new(RoomErrorKind::InvalidArgument, message)
}

fn producer_not_in_room(producer_id: &str) -> RoomError {
    RoomError::new(
        RoomErrorKind::ProducerNotFound,
        format!("no producer `{producer_id}` in this room"),
    )
}

impl Rooms {
    pub fn router_capabilities(&self) -> &RtpCapabilities {
        self.media.capabilities()
    }

    /// `createWebRtcTransport`: one send and one receive transport per participant. The first
    /// one switches the participant to ORTC: its server-driven SDP subscriber is closed and it
    /// consumes explicitly from then on.
    pub async fn create_webrtc_transport(
        &self,
        room_id: &str,
        participant_id: &str,
        send: bool,
    ) -> Result<TransportCreated, RoomError> {
        if send {
            self.refuse_if_relayed(room_id)?;
        }
        let (worker, id, replaced) =
            self.with_participant(room_id, participant_id, |room, pid| {
                let worker = room.worker;
                let p = Self::participant(room, pid);
                if send {
                    if p.ortc.send_transport.is_some() {
                        return Err(invalid("this participant already has a send transport"));
                    }
                    if !p.producers.is_empty() && p.dialect == Dialect::Sdp {
                        return Err(invalid(
                            "this participant already publishes over publisherOffer",
                        ));
                    }
                    Ok((worker, p.publisher, None))
                } else {
                    if p.ortc.recv_transport.is_some() {
                        return Err(invalid("this participant already has a receive transport"));
                    }
                    Ok((worker, self.media.new_transport_id(), Some(p.subscriber)))
                }
            })?;
        let parameters = self.media.create_ortc_transport(worker, id, send).await?;
        let transport_id = Uuid::new_v4().to_string();
        if !self.register_ortc_transport(room_id, participant_id, &transport_id, id, send, replaced)
        {
            let _ = self.media.close_transport(worker, id).await;
            return Err(RoomError::not_in_room());
        }
        if let Some(old) = replaced {
            let _ = self.media.close_transport(worker, old).await;
        }
        Ok(TransportCreated {
            transport_id,
            parameters,
        })
    }

    /// Record a new ORTC transport; false when the participant left meanwhile.
    fn register_ortc_transport(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: &str,
        id: TransportId,
        send: bool,
        replaced: Option<TransportId>,
    ) -> bool {
        let mut state = self.lock();
        let Some(p) = state
            .rooms
            .get_mut(room_id)
            .and_then(|r| r.participants.get_mut(participant_id))
        else {
            return false;
        };
        p.dialect = Dialect::Ortc;
        if send {
            p.ortc.send_transport = Some(transport_id.to_string());
        } else {
            p.ortc.recv_transport = Some(transport_id.to_string());
            p.subscriber = id;
        }
        let ids = (room_id.to_string(), participant_id.to_string());
        state.transports.insert(id, ids);
        if let Some(old) = replaced {
            state.transports.remove(&old);
        }
        true
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
                        return Err(RoomError::transport_not_found());
                    };
                    if dir.is_some_and(|d| d != is_send) {
                        return Err(RoomError::new(
                            RoomErrorKind::TransportNotFound,
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
                        return Err(RoomError::transport_not_found());
                    }
                    d
                }
                (None, None) => return Err(RoomError::transport_not_found()),
            };
            Ok((worker, if is_send { p.publisher } else { p.subscriber }))
        })
    }

    pub async fn connect_webrtc_transport(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: &str,
        dtls: RemoteDtls,
    ) -> Result<(), RoomError> {
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, Some(transport_id), None)?;
        self.media
            .connect_ortc(worker, id, dtls.role, dtls.algorithm, dtls.fingerprint)
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
        rtp_parameters: RtpParameters,
    ) -> Result<ProducerPublished, RoomError> {
        self.refuse_if_relayed(room_id)?;
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, transport_id, Some(true))?;
        let created = self
            .media
            .ortc_publish(worker, id, kind, rtp_parameters.clone())
            .await?;
        let producer_id = created.producer_id;
        self.announce_producers(room_id, participant_id, worker, vec![created])
            .await?;
        Ok(ProducerPublished {
            producer_id,
            kind,
            rtp_parameters,
        })
    }

    /// The producer `producer_id` if it belongs to this room: (id, owner, kind).
    fn room_producer(
        &self,
        room_id: &str,
        producer_id: &str,
    ) -> Result<(ProducerId, String, Kind), RoomError> {
        let producer: ProducerId = producer_id
            .parse()
            .map_err(|_| producer_not_in_room(producer_id))?;
        let state = self.lock();
        let room = state
            .rooms
            .get(room_id)
            .ok_or_else(|| RoomError::room_not_found(room_id))?;
        room.participants
            .iter()
            .find_map(|(pid, p)| {
                let view = p.producers.iter().find(|pr| pr.producer_id == producer)?;
                Some((producer, pid.clone(), view.kind))
            })
            .ok_or_else(|| producer_not_in_room(producer_id))
    }

    pub async fn consume(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
        caps: RtpCapabilities,
        transport_id: Option<&str>,
        paused: bool,
    ) -> Result<ConsumerCreated, RoomError> {
        let (producer, owner, kind) = self.room_producer(room_id, producer_id)?;
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
        self.emit(RoomEvent::ConsumerCreated {
            room_id: room_id.to_string(),
            participant_id: participant_id.to_string(),
            producer_id: producer,
            origin: ConsumerOrigin::Consume {
                consumer_id: consumer_id.clone(),
            },
        });
        Ok(ConsumerCreated {
            consumer_id,
            producer_id: producer,
            kind,
            rtp_parameters,
            simulcast: created.layers > 1,
            paused,
        })
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
                .ok_or_else(RoomError::consumer_not_found)?;
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
            .map_err(|_| RoomError::consumer_not_found())
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
            .map_err(|_| RoomError::consumer_not_found())
    }

    /// Rank one of the participant's consumers (1–255) for the bandwidth allocator.
    pub async fn set_consumer_priority(
        &self,
        room_id: &str,
        participant_id: &str,
        target: &ConsumerTarget,
        priority: u8,
    ) -> Result<(), RoomError> {
        let (worker, subscriber, producer) = match target {
            ConsumerTarget::Consumer(id) => self.consumer_producer(room_id, participant_id, id)?,
            ConsumerTarget::Producer(id) => {
                let (worker, _, subscriber) =
                    self.participant_transports(room_id, participant_id)?;
                let producer = id.parse().map_err(|_| RoomError::consumer_not_found())?;
                (worker, subscriber, producer)
            }
        };
        self.media
            .set_priority(worker, subscriber, producer, priority)
            .await
            .map_err(|_| RoomError::consumer_not_found())
    }

    /// One of the participant's own producers.
    fn own_producer(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
    ) -> Result<(usize, ProducerId), RoomError> {
        let not_found = || {
            RoomError::new(
                RoomErrorKind::ProducerNotFound,
                "no such producer of this participant",
            )
        };
        let producer: ProducerId = producer_id.parse().map_err(|_| not_found())?;
        self.with_participant(room_id, participant_id, |room, pid| {
            let worker = room.worker;
            Self::participant(room, pid)
                .owns(producer)
                .then_some((worker, producer))
                .ok_or_else(not_found)
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
        self.with_participant(room_id, participant_id, |room, pid| {
            room.broadcast(
                &Notice::ProducerPaused {
                    producer_id: producer,
                    participant_id: pid.to_string(),
                    paused,
                },
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
                .retain(|p| p.producer_id != producer);
            Ok(room.announce_producer_closed(producer, pid, Some(pid)))
        })?;
        self.emit(RoomEvent::ProducerClosed {
            room_id: room_id.to_string(),
            participant_id: participant_id.to_string(),
            producer_id: producer,
            reason: Some("closeProducer".into()),
        });
        for orphan in orphans {
            self.leave(room_id, &orphan).await;
        }
        Ok(())
    }

    /// New ICE credentials for a transport; returns the new `iceParameters`.
    pub async fn restart_ice(
        &self,
        room_id: &str,
        participant_id: &str,
        transport_id: &str,
    ) -> Result<serde_json::Value, RoomError> {
        let (worker, id) =
            self.ortc_transport(room_id, participant_id, Some(transport_id), None)?;
        Ok(self.media.restart_ice(worker, id).await?)
    }
}

/// Which consumer a request means: by the id `consume` handed out (ORTC), or by the producer
/// it shows (the demo's flow, one consumer per producer).
#[derive(Debug, Clone)]
pub enum ConsumerTarget {
    Consumer(String),
    Producer(String),
}
