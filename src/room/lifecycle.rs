//! Rooms and participants coming and going: create, join, leave, kick, close, and closing
//! rooms nobody uses.

use std::collections::BTreeMap;
use std::time::Instant;

use uuid::Uuid;

use super::events::{ConsumerOrigin, Notice, ParticipantView, RoomEvent};
use super::model::{Dialect, Member, OrtcParticipant, Participant, Room, RoomSummary, State};
use super::ports::{Claim, Placement, RoomDefinition};
use super::validate::{check_capacity, check_display_name, validate_room};
use super::{RoomError, RoomErrorKind, Rooms};
use crate::media::ProducerId;

/// What `createRoom` asks for.
#[derive(Debug, Clone, Default)]
pub struct RoomSpec {
    pub name: String,
    pub description: Option<String>,
    pub max_participants: Option<u32>,
    /// A UUID is generated when absent.
    pub room_id: Option<String>,
}

/// The result of a successful join.
pub struct Joined {
    pub participant_id: String,
    pub others: Vec<ParticipantView>,
    /// The room is relayed from its owner, reached at this URL (publish there).
    pub relayed_from: Option<String>,
}

impl Rooms {
    /// `createRoom` on behalf of `user_id`.
    pub async fn create_room(
        &self,
        spec: RoomSpec,
        user_id: &str,
    ) -> Result<RoomSummary, RoomError> {
        let summary = validate_room(spec)?;
        // Refused before claiming anything in the directory; checked again at the insert.
        self.check_room_quota(&self.lock(), &summary.room_id, Some(user_id))?;
        let definition = RoomDefinition {
            room_id: summary.room_id.clone(),
            name: summary.name.clone(),
            description: summary.description.clone(),
            max_participants: summary.max_participants,
        };
        match self.ports.directory.claim(definition).await? {
            Claim::Taken => Err(RoomError::room_exists(&summary.room_id)),
            Claim::Here { url } => {
                let mut summary = self.insert_room(summary, Some(user_id))?;
                summary.node_url = url;
                Ok(summary)
            }
            // Placed on a less loaded node; clients join there.
            Claim::Elsewhere { url } => Ok(RoomSummary {
                node_url: Some(url),
                ..summary
            }),
        }
    }

    /// Whether `room_id` may be created now: not taken here, and no cap reached.
    pub(super) fn check_room_quota(
        &self,
        state: &State,
        room_id: &str,
        user_id: Option<&str>,
    ) -> Result<(), RoomError> {
        if state.rooms.contains_key(room_id) {
            return Err(RoomError::room_exists(room_id));
        }
        if state.rooms.len() >= self.limits.max_rooms {
            return Err(RoomError::new(
                RoomErrorKind::TooManyRooms,
                format!(
                    "this server holds its maximum of {} rooms",
                    self.limits.max_rooms
                ),
            ));
        }
        if let Some(user) = user_id {
            let owned = state
                .rooms
                .values()
                .filter(|r| r.created_by.as_deref() == Some(user))
                .count();
            if owned >= self.limits.max_rooms_per_user {
                return Err(RoomError::new(
                    RoomErrorKind::TooManyRoomsForUser,
                    format!(
                        "you have created {owned} rooms that still exist, the maximum per user"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Create the room on this node.
    fn insert_room(
        &self,
        summary: RoomSummary,
        created_by: Option<&str>,
    ) -> Result<RoomSummary, RoomError> {
        let room_id = summary.room_id.clone();
        let worker = self.media.worker_for_room(&room_id);
        let now = Instant::now();
        let mut state = self.lock();
        // Under the same lock as the insert, so concurrent creates cannot pass a cap together.
        self.check_room_quota(&state, &room_id, created_by)?;
        state.rooms.insert(
            room_id.clone(),
            Room {
                summary: summary.clone(),
                created_at: now,
                created_by: created_by.map(str::to_string),
                empty_since: Some(now),
                worker,
                participants: BTreeMap::new(),
                watchers: Vec::new(),
                relay: None,
                closing: false,
            },
        );
        drop(state);
        self.emit(RoomEvent::RoomCreated {
            room_id: room_id.clone(),
            name: summary.name.clone(),
            max_participants: summary.max_participants,
        });
        tracing::info!(room = %room_id, worker, "room created");
        Ok(summary)
    }

    /// Create a room that was defined elsewhere (directory or catalog); losing a race with
    /// another join that created it meanwhile is fine.
    fn adopt_room(&self, summary: RoomSummary) -> Result<(), RoomError> {
        match self.insert_room(summary, None) {
            Err(e) if e.kind == RoomErrorKind::RoomExists => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// A room unknown locally may live in the directory: here (create it from its record),
    /// or on another node: relay it from there when `may_relay` and relaying is on, else
    /// redirect the client there.
    pub(super) async fn locate_in_directory(
        &self,
        room_id: &str,
        may_relay: bool,
    ) -> Result<(), RoomError> {
        if self.room_exists(room_id) {
            return Ok(());
        }
        match self.ports.directory.locate(room_id).await? {
            Placement::Unknown => Ok(()),
            Placement::Here(record) => self.adopt_room(RoomSummary {
                room_id: record.room_id,
                name: record.name,
                description: record.description,
                max_participants: record.max_participants,
                node_url: None,
            }),
            Placement::Elsewhere { node, url }
                if may_relay && self.ports.owner_links.get().is_some() =>
            {
                self.open_relay(room_id, &node, &url).await
            }
            Placement::Elsewhere { node, url } => Err(RoomError {
                kind: RoomErrorKind::OnOtherNode,
                message: format!("room `{room_id}` lives on node {node}; join it at {url}"),
                detail: Some(("nodeUrl", serde_json::Value::String(url))),
            }),
        }
    }

    /// A room unknown here may be defined in the catalog (Django): create it from there.
    async fn materialize_from_catalog(&self, room_id: &str, token: &str) -> Result<(), RoomError> {
        let Some(catalog) = &self.ports.catalog else {
            return Ok(());
        };
        if self.room_exists(room_id) {
            return Ok(());
        }
        let Some(meta) = catalog.lookup(room_id, token).await? else {
            return Ok(());
        };
        let summary = validate_room(RoomSpec {
            name: meta.name,
            description: meta.description,
            max_participants: meta.max_participants,
            room_id: Some(room_id.to_string()),
        })?;
        self.adopt_room(summary)
    }

    /// Join `room_id`. `token` is forwarded to the room catalog, which may define the room.
    pub async fn join(
        &self,
        room_id: &str,
        member: Member,
        token: &str,
        dialect: Dialect,
    ) -> Result<Joined, RoomError> {
        let display_name = check_display_name(&member.display_name)?;
        self.locate_in_directory(room_id, true).await?;
        self.materialize_from_catalog(room_id, token).await?;
        let worker = {
            let state = self.lock();
            let room = state
                .rooms
                .get(room_id)
                .ok_or_else(|| RoomError::room_not_found(room_id))?;
            check_capacity(room)?;
            room.worker
        };
        // The subscriber transport exists before the participant becomes visible, so a
        // concurrent publish can always subscribe it (worker commands are FIFO).
        let publisher = self.media.new_transport_id();
        let subscriber = self.media.new_transport_id();
        // WHIP/WHEP create their one transport themselves.
        if !dialect.is_http() {
            self.media.create_subscriber(worker, subscriber).await?;
        }
        let participant_id = Uuid::new_v4().to_string();
        let participant = Participant {
            user_id: member.user_id.clone(),
            joined_at: Instant::now(),
            can_subscribe: member.can_subscribe,
            display_name: display_name.clone(),
            notifier: member.notifier,
            publisher,
            subscriber,
            producers: Vec::new(),
            dialect,
            ortc: OrtcParticipant::default(),
            downlink: Default::default(),
            remote: false,
            via_watch: None,
        };
        let (others, existing) =
            match self.insert_participant(room_id, &participant_id, participant) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.media.close_transport(worker, subscriber).await;
                    return Err(e);
                }
            };
        self.ports
            .directory
            .participant_joined(room_id, &participant_id);
        self.emit(RoomEvent::ParticipantJoined {
            room_id: room_id.to_string(),
            participant_id: participant_id.clone(),
            user_id: member.user_id.clone(),
            display_name,
        });
        if member.can_subscribe && dialect == Dialect::Sdp {
            for (producer, owner) in existing {
                self.subscribe_automatically(
                    room_id,
                    worker,
                    subscriber,
                    &participant_id,
                    producer,
                    owner,
                )
                .await;
            }
        }
        tracing::info!(room = room_id, participant = %participant_id, user = %member.user_id, "participant joined");
        let relayed_from = self
            .lock()
            .rooms
            .get(room_id)
            .and_then(|r| r.relay.as_ref())
            .map(|r| r.owner_url.clone());
        Ok(Joined {
            participant_id,
            others,
            relayed_from,
        })
    }

    /// Subscribe an SDP participant to one producer; a producer closed meanwhile is not an
    /// error for the subscriber.
    pub(super) async fn subscribe_automatically(
        &self,
        room_id: &str,
        worker: usize,
        subscriber: crate::media::TransportId,
        subscriber_participant: &str,
        producer: ProducerId,
        owner: String,
    ) {
        if self
            .media
            .subscribe(worker, subscriber, producer, owner)
            .await
            .is_ok()
        {
            self.emit(RoomEvent::ConsumerCreated {
                room_id: room_id.to_string(),
                participant_id: subscriber_participant.to_string(),
                producer_id: producer,
                origin: ConsumerOrigin::Automatic,
            });
        }
    }

    /// Make a participant visible to the room; returns the others and their producers.
    #[allow(clippy::type_complexity)]
    fn insert_participant(
        &self,
        room_id: &str,
        participant_id: &str,
        participant: Participant,
    ) -> Result<(Vec<ParticipantView>, Vec<(ProducerId, String)>), RoomError> {
        let mut state = self.lock();
        let room = state
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| RoomError::room_not_found(room_id))?;
        check_capacity(room)?;
        let others: Vec<ParticipantView> =
            room.participants.iter().map(|(id, p)| p.view(id)).collect();
        let existing = room.producers(None);
        let joined = Notice::ParticipantJoined(participant.view(participant_id));
        room.broadcast(&joined, None);
        if let Some(relay) = &room.relay {
            let _ = relay.to_owner.send(joined);
        }
        let (publisher, subscriber) = (participant.publisher, participant.subscriber);
        room.participants
            .insert(participant_id.to_string(), participant);
        room.empty_since = None;
        let ids = (room_id.to_string(), participant_id.to_string());
        state.transports.insert(publisher, ids.clone());
        state.transports.insert(subscriber, ids);
        Ok((others, existing))
    }

    pub async fn leave(&self, room_id: &str, participant_id: &str) {
        let mut orphans = Vec::new();
        let removed = {
            let mut state = self.lock();
            let Some(room) = state.rooms.get_mut(room_id) else {
                return;
            };
            let Some(participant) = room.participants.remove(participant_id) else {
                return;
            };
            // A relayed room's owner-side participants are the owner's to report.
            if !participant.remote {
                self.report_departure(room_id, participant_id, &participant, room);
            }
            // The leaver is already out of `participants`: everyone left hears it.
            for producer in &participant.producers {
                orphans.extend(room.announce_producer_closed(
                    producer.producer_id,
                    participant_id,
                    None,
                ));
            }
            let left = Notice::ParticipantLeft {
                participant_id: participant_id.to_string(),
            };
            room.broadcast(&left, None);
            if let (Some(relay), false) = (&room.relay, participant.remote) {
                let _ = relay.to_owner.send(left);
            }
            let worker = room.worker;
            if !participant.remote {
                self.ports
                    .directory
                    .participant_left(room_id, participant_id);
            }
            // A remote participant leaving never closes the room: on a relay node the first
            // local participant may be joining right now.
            if room.unused() && !participant.remote {
                tracing::info!(room = room_id, "last participant left; room closed");
                if let Some(room) = state.rooms.remove(room_id) {
                    self.room_removed(room_id, &room);
                }
            }
            state.transports.remove(&participant.publisher);
            state.transports.remove(&participant.subscriber);
            (worker, participant.publisher, participant.subscriber)
        };
        let (worker, publisher, subscriber) = removed;
        let _ = self.media.close_transport(worker, publisher).await;
        let _ = self.media.close_transport(worker, subscriber).await;
        // WHEP players of what the leaver published have nothing left to play.
        for orphan in orphans {
            Box::pin(self.leave(room_id, &orphan)).await;
        }
        tracing::info!(
            room = room_id,
            participant = participant_id,
            "participant left"
        );
    }

    /// Report what a departure ends: the participant, its producers (and everyone's
    /// consumers of them) and its own consumers.
    fn report_departure(
        &self,
        room_id: &str,
        participant_id: &str,
        leaver: &Participant,
        room: &Room,
    ) {
        for producer in &leaver.producers {
            self.emit(RoomEvent::ProducerClosed {
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                producer_id: producer.producer_id,
                reason: None,
            });
            for (other_id, other) in &room.participants {
                if other.can_subscribe {
                    self.emit(RoomEvent::ConsumerClosed {
                        room_id: room_id.to_string(),
                        participant_id: other_id.clone(),
                        producer_id: producer.producer_id,
                    });
                }
            }
        }
        if leaver.can_subscribe {
            for (producer, _) in room.producers(None) {
                self.emit(RoomEvent::ConsumerClosed {
                    room_id: room_id.to_string(),
                    participant_id: participant_id.to_string(),
                    producer_id: producer,
                });
            }
        }
        self.emit(RoomEvent::ParticipantLeft {
            room_id: room_id.to_string(),
            participant_id: participant_id.to_string(),
            user_id: leaver.user_id.clone(),
            stayed: leaver.joined_at.elapsed(),
        });
    }

    /// A room left the map: release it in the directory and report it; relaying nodes hear
    /// it is gone.
    pub(super) fn room_removed(&self, room_id: &str, room: &Room) {
        room.tell_watchers(&Notice::RoomClosed {
            room_id: room_id.to_string(),
        });
        if room.relay.is_some() {
            // Not ours to release: the owner holds the directory record.
            tracing::info!(room = room_id, "relayed room closed");
            return;
        }
        self.ports.directory.release(room_id);
        self.emit(RoomEvent::RoomClosed {
            room_id: room_id.to_string(),
            lifetime: room.created_at.elapsed(),
        });
    }

    /// Remove `participant_id` on an admin's behalf; it is told why before the others.
    pub async fn kick(
        &self,
        room_id: &str,
        participant_id: &str,
        reason: &str,
    ) -> Result<(), RoomError> {
        {
            let state = self.lock();
            let room = state
                .rooms
                .get(room_id)
                .ok_or_else(|| RoomError::room_not_found(room_id))?;
            let target = room.participants.get(participant_id).ok_or_else(|| {
                RoomError::new(
                    RoomErrorKind::ParticipantNotFound,
                    "no such participant in this room",
                )
            })?;
            if target.remote {
                // Removing the shown copy would leave the real one connected on its node.
                return Err(RoomError::new(
                    RoomErrorKind::OnOtherNode,
                    "this participant is connected to another node; kick it there",
                ));
            }
            target.notifier.notify(Notice::Kicked {
                room_id: room_id.to_string(),
                reason: reason.to_string(),
            });
        }
        self.leave(room_id, participant_id).await;
        Ok(())
    }

    /// Close a room for everyone: each participant is told, all media stops.
    pub async fn close_room(&self, room_id: &str) {
        let participants: Vec<String> = {
            let mut state = self.lock();
            let Some(room) = state.rooms.get_mut(room_id) else {
                return;
            };
            room.closing = true;
            room.broadcast(
                &Notice::RoomClosed {
                    room_id: room_id.to_string(),
                },
                None,
            );
            room.participants.keys().cloned().collect()
        };
        for participant_id in participants {
            self.leave(room_id, &participant_id).await;
        }
        // The last leave normally removed it; a room emptied meanwhile is removed here.
        let removed = self.lock().rooms.remove(room_id);
        if let Some(room) = removed {
            self.room_removed(room_id, &room);
        }
    }

    /// Close every room that has been empty for longer than the empty timeout (rooms created
    /// and never joined). Returns how many were closed. Called periodically.
    pub fn close_idle_rooms(&self, now: Instant) -> usize {
        let timeout = self.limits.empty_timeout;
        let idle: Vec<(String, Room)> = {
            let mut state = self.lock();
            let ids: Vec<String> = state
                .rooms
                .iter()
                .filter(|(_, r)| {
                    r.unused()
                        && r.empty_since
                            .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| state.rooms.remove(&id).map(|r| (id, r)))
                .collect()
        };
        for (room_id, room) in &idle {
            tracing::info!(room = %room_id, "room unused for the empty timeout; closed");
            self.room_removed(room_id, room);
        }
        idle.len()
    }
}
