//! The SDP flow's media operations: publish from an offer, answer the server's subscriber
//! offers, pick simulcast layers. New producers are announced to the room and every
//! auto-subscribing participant gets them.

use super::events::{Notice, ProducerView, RoomEvent};
use super::model::Dialect;
use super::ports::Broadcast;
use super::{RoomError, RoomErrorKind, Rooms};
use std::sync::Arc;

use crate::media::core::FrameConsumerInfo;
use crate::media::frames::ingest::FrameStream;
use crate::media::frames::sink::FrameSession;
use crate::media::frames::FrameCodec;
use crate::media::{NewProducer, Preference, ProducerId};

/// A producer just published, with the mid of its m-line in the offer.
pub type AnnouncedProducer = (ProducerView, String);

impl Rooms {
    /// Apply the participant's publisher offer; new producers are announced and subscribed
    /// by everyone else in the room. Returns the answer and the producers with their mids.
    pub async fn publish(
        &self,
        room_id: &str,
        participant_id: &str,
        sdp: String,
    ) -> Result<(String, Vec<AnnouncedProducer>), RoomError> {
        self.refuse_if_relayed(room_id)?;
        let (worker, publisher, _) = self.participant_transports(room_id, participant_id)?;
        let (answer, created) = self.media.publisher_offer(worker, publisher, sdp).await?;
        let announced = self
            .announce_producers(room_id, participant_id, worker, created)
            .await?;
        Ok((answer, announced))
    }

    /// A track the participant sends as frames over its WebTransport session
    /// (`publishFrames`); announced and subscribed like any other producer.
    pub async fn publish_frames(
        &self,
        room_id: &str,
        participant_id: &str,
        codec: FrameCodec,
        rids: Vec<String>,
    ) -> Result<AnnouncedProducer, RoomError> {
        self.refuse_if_relayed(room_id)?;
        let (worker, publisher, _) = self.participant_transports(room_id, participant_id)?;
        let created = self
            .media
            .create_frame_producer(worker, publisher, codec, rids)
            .await?;
        let mut announced = self
            .announce_producers(room_id, participant_id, worker, vec![created])
            .await?;
        announced
            .pop()
            .ok_or_else(|| RoomError::new(RoomErrorKind::Internal, "producer not announced"))
    }

    /// Send `producer_id`'s frames to the participant's WebTransport session.
    pub async fn consume_frames(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
        session: Arc<dyn FrameSession>,
    ) -> Result<(ProducerView, FrameConsumerInfo), RoomError> {
        let no_such = || {
            RoomError::new(
                RoomErrorKind::ProducerNotFound,
                "no such producer in this room",
            )
        };
        let producer: ProducerId = producer_id.parse().map_err(|_| no_such())?;
        let (worker, view, subscriber) =
            self.with_participant(room_id, participant_id, |room, pid| {
                let view = room
                    .participants
                    .values()
                    .flat_map(|p| p.producers.iter())
                    .find(|v| v.producer_id == producer)
                    .cloned();
                Ok((room.worker, view, Self::participant(room, pid).subscriber))
            })?;
        let view = view.ok_or_else(no_such)?;
        let info = self
            .media
            .create_frame_consumer(worker, subscriber, producer, session)
            .await?;
        Ok((view, info))
    }

    /// One of the participant's media streams; its room's worker reads it from now on.
    pub fn ingest_frames(
        &self,
        room_id: &str,
        participant_id: &str,
        stream: FrameStream,
    ) -> Result<(), RoomError> {
        let (worker, publisher, _) = self.participant_transports(room_id, participant_id)?;
        Ok(self.media.ingest_frames(worker, publisher, stream)?)
    }

    /// Record new producers, tell the room, and subscribe every SDP participant to them.
    pub(super) async fn announce_producers(
        &self,
        room_id: &str,
        participant_id: &str,
        worker: usize,
        created: Vec<NewProducer>,
    ) -> Result<Vec<AnnouncedProducer>, RoomError> {
        let announced: Vec<AnnouncedProducer> = created
            .into_iter()
            .map(|p| {
                let view = ProducerView {
                    producer_id: p.producer_id,
                    participant_id: participant_id.to_string(),
                    kind: p.kind,
                    layers: p.rids,
                };
                (view, p.mid)
            })
            .collect();
        let subscribers = self
            .with_participant(room_id, participant_id, |room, pid| {
                Self::participant(room, pid)
                    .producers
                    .extend(announced.iter().map(|(view, _)| view.clone()));
                let mut subscribers = Vec::new();
                for (view, _) in &announced {
                    room.tell_watchers(&Notice::NewProducer(view.clone()));
                }
                let news: Vec<Broadcast> = announced
                    .iter()
                    .map(|(view, _)| Broadcast::new(Notice::NewProducer(view.clone())))
                    .collect();
                for (id, p) in room.participants.iter().filter(|(id, _)| *id != pid) {
                    for new_producer in &news {
                        p.notifier.notify_broadcast(new_producer);
                    }
                    if p.can_subscribe && p.dialect == Dialect::Sdp {
                        subscribers.push((p.subscriber, id.clone()));
                    }
                }
                Ok(subscribers)
            })
            .map_err(|e| match e.kind {
                RoomErrorKind::NotInRoom => RoomError::new(e.kind, "left the room meanwhile"),
                _ => e,
            })?;
        for (view, _) in &announced {
            self.emit(RoomEvent::ProducerCreated {
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                producer_id: view.producer_id,
                kind: view.kind,
                layers: view.layers.clone(),
            });
        }
        for (subscriber, subscriber_participant) in subscribers {
            for (view, _) in &announced {
                self.subscribe_automatically(
                    room_id,
                    worker,
                    subscriber,
                    &subscriber_participant,
                    view.producer_id,
                    participant_id.to_string(),
                )
                .await;
            }
        }
        Ok(announced)
    }

    pub async fn subscriber_answer(
        &self,
        room_id: &str,
        participant_id: &str,
        sdp: String,
    ) -> Result<(), RoomError> {
        let (worker, _, subscriber) = self.participant_transports(room_id, participant_id)?;
        Ok(self
            .media
            .subscriber_answer(worker, subscriber, sdp)
            .await?)
    }

    pub async fn set_preference(
        &self,
        room_id: &str,
        participant_id: &str,
        producer_id: &str,
        preference: Preference,
    ) -> Result<(), RoomError> {
        let (worker, _, subscriber) = self.participant_transports(room_id, participant_id)?;
        let producer: ProducerId = producer_id
            .parse()
            .map_err(|_| RoomError::new(RoomErrorKind::ProducerNotFound, "no such producer"))?;
        Ok(self
            .media
            .set_preference(worker, subscriber, producer, preference)
            .await?)
    }
}
