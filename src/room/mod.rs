//! Rooms, participants and producers: the model the session layer operates on.
//!
//! State lives in memory behind one mutex that is never held across an await; media work is
//! delegated to the room's worker through [`MediaRouter`]. Notifications go to each
//! participant's [`SessionSink`], whichever transport that session uses.

mod ortc;
mod sink;

pub use sink::{ReplayGap, SessionSink, REPLAY_BUFFER};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use uuid::Uuid;

use crate::audit::{AuditEvent, AuditKind, AuditLog};
use crate::auth::Identity;
use crate::integrations::django::{LookupError, RoomLookup, WebhookEvent, Webhooks};
use crate::media::{
    Kind, MediaError, MediaEvent, MediaRouter, Preference, ProducerId, TransportId,
};
use crate::session::protocol::{
    ErrorCode, MediaKindName, OutboundEnvelope, ParticipantInfo, ProducerInfo, SubscriberTrack,
};
use crate::store::{DirectoryError, Placement, RedisDirectory, RoomRecord};

/// Default and upper bound for `maxParticipants`.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 50;
pub const MAX_PARTICIPANTS_LIMIT: u32 = 1000;

/// A request the room layer refused, with the code the client sees.
#[derive(Debug, Clone)]
pub struct RoomError {
    pub code: ErrorCode,
    pub message: String,
    /// An extra machine-readable field for the error's `data` (e.g. `nodeUrl`).
    pub detail: Option<(&'static str, serde_json::Value)>,
}

impl RoomError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RoomError {
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<DirectoryError> for RoomError {
    fn from(e: DirectoryError) -> Self {
        tracing::warn!(error = %e, "room directory unavailable");
        RoomError::new(
            ErrorCode::DirectoryUnavailable,
            "the room directory is unavailable; try again shortly",
        )
    }
}

impl From<MediaError> for RoomError {
    fn from(e: MediaError) -> Self {
        let code = match e {
            MediaError::InvalidSdp(_) => ErrorCode::InvalidSdp,
            MediaError::NoPendingOffer => ErrorCode::NoPendingOffer,
            MediaError::ProducerNotFound => ErrorCode::ProducerNotFound,
            MediaError::InvalidParameters(_) => ErrorCode::InvalidRtpParameters,
            MediaError::UnsupportedCodec(_) => ErrorCode::UnsupportedCodec,
            MediaError::TransportNotFound | MediaError::WorkerGone => ErrorCode::InternalError,
        };
        RoomError::new(code, e.to_string())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    pub room_id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_participants: u32,
    /// With several nodes: where the room lives (join there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_url: Option<String>,
}

struct Room {
    summary: RoomSummary,
    created_at: Instant,
    worker: usize,
    participants: BTreeMap<String, Participant>,
}

struct Participant {
    user_id: String,
    joined_at: Instant,
    /// False when the token lacks the subscribe grant: nothing is forwarded to it.
    can_subscribe: bool,
    display_name: String,
    sink: SessionSink,
    publisher: TransportId,
    subscriber: TransportId,
    producers: Vec<ProducerInfo>,
    dialect: Dialect,
    ortc: OrtcParticipant,
}

/// How a participant negotiates media, which decides whether it is auto-subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The SDP flow: subscribed to every producer, offers pushed by the server.
    Sdp,
    /// mediasoup-style ORTC: consumes explicitly (`consume`); switched to on the first
    /// `createWebRtcTransport`.
    Ortc,
    /// WHIP publisher or WHEP player: one HTTP exchange, nothing pushed.
    Http,
}

/// ORTC ids this participant handed out: opaque strings, mapped to ours.
#[derive(Default)]
struct OrtcParticipant {
    send_transport: Option<String>,
    recv_transport: Option<String>,
    /// consumerId → producer.
    consumers: HashMap<String, ProducerId>,
}

impl Room {
    /// Tell everyone `producer_id` ended; ORTC consumers of it also get `consumerClosed`.
    /// Returns the WHEP players left with nothing to play: their sessions should end.
    fn announce_producer_closed(
        &mut self,
        producer_id: &str,
        owner: &str,
        except: Option<&str>,
    ) -> Vec<String> {
        let mut orphans = Vec::new();
        let message = producer_closed(producer_id, owner);
        for (id, p) in self.participants.iter_mut() {
            if except == Some(id.as_str()) {
                continue;
            }
            p.sink.send(message.clone());
            let closed: Vec<String> = p
                .ortc
                .consumers
                .iter()
                .filter(|(_, pr)| pr.to_string() == producer_id)
                .map(|(c, _)| c.clone())
                .collect();
            for consumer_id in closed {
                p.ortc.consumers.remove(&consumer_id);
                p.sink.send(OutboundEnvelope::notification(
                    "consumerClosed",
                    json!({ "consumerId": consumer_id, "producerId": producer_id }),
                ));
                if p.dialect == Dialect::Http && p.ortc.consumers.is_empty() {
                    orphans.push(id.clone());
                }
            }
        }
        orphans
    }

    /// Send `message` to every participant but `except`.
    fn broadcast(&self, message: &OutboundEnvelope, except: Option<&str>) {
        for (id, p) in &self.participants {
            if except != Some(id.as_str()) {
                p.sink.send(message.clone());
            }
        }
    }
}

/// The notification others get when `participant_id`'s producer ends.
fn producer_closed(producer_id: &str, participant_id: &str) -> OutboundEnvelope {
    OutboundEnvelope::notification(
        "producerClosed",
        json!({ "producerId": producer_id, "participantId": participant_id }),
    )
}

impl Participant {
    fn info(&self, participant_id: &str) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: participant_id.to_string(),
            user_id: self.user_id.clone(),
            display_name: self.display_name.clone(),
            producers: self.producers.clone(),
        }
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    /// Which participant a transport belongs to, for routing media events.
    transports: HashMap<TransportId, (String, String)>,
}

/// The result of a successful join.
pub struct Joined {
    pub participant_id: String,
    pub others: Vec<ParticipantInfo>,
}

pub struct Rooms {
    state: Mutex<State>,
    media: MediaRouter,
    max_rooms: usize,
    webhooks: Option<Webhooks>,
    lookup: Option<RoomLookup>,
    directory: Option<Arc<RedisDirectory>>,
    audit: AuditLog,
}

/// Counts for `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RoomCounts {
    pub rooms: usize,
    pub participants: usize,
    pub producers: usize,
}

impl Rooms {
    pub fn new(
        media: MediaRouter,
        max_rooms: usize,
        webhooks: Option<Webhooks>,
        lookup: Option<RoomLookup>,
        directory: Option<Arc<RedisDirectory>>,
        audit: AuditLog,
    ) -> Arc<Self> {
        Arc::new(Rooms {
            state: Mutex::new(State::default()),
            media,
            max_rooms,
            webhooks,
            lookup,
            directory,
            audit,
        })
    }

    /// Record an audit event about `room_id` (never blocks).
    fn audit(
        &self,
        kind: AuditKind,
        room_id: &str,
        participant: Option<&str>,
        detail: serde_json::Value,
    ) {
        let mut event = AuditEvent::new(kind).room(room_id).detail(detail);
        if let Some(p) = participant {
            event = event.participant(p);
        }
        self.audit.record(event);
    }

    pub fn directory(&self) -> Option<&Arc<RedisDirectory>> {
        self.directory.as_ref()
    }

    /// Tell the directory in the background; a Redis outage must not slow signaling.
    fn directory_update<F, Fut>(&self, update: F)
    where
        F: FnOnce(Arc<RedisDirectory>) -> Fut,
        Fut: std::future::Future<Output = Result<(), DirectoryError>> + Send + 'static,
    {
        if let Some(directory) = self.directory.clone() {
            let fut = update(directory);
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::warn!(error = %e, "room directory update failed");
                }
            });
        }
    }

    /// Tell Django, if a webhook URL is configured. Never blocks.
    fn emit(&self, event: WebhookEvent) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.notify(event);
        }
    }

    /// Wait (bounded) until queued webhooks are delivered; for graceful shutdown.
    pub async fn flush_webhooks(&self, timeout: std::time::Duration) -> bool {
        match &self.webhooks {
            Some(webhooks) => webhooks.flush(timeout).await,
            None => true,
        }
    }

    /// A room unknown here may be defined in Django: create it from its metadata.
    async fn materialize_from_django(&self, room_id: &str, token: &str) -> Result<(), RoomError> {
        let Some(lookup) = &self.lookup else {
            return Ok(());
        };
        if self.lock().rooms.contains_key(room_id) {
            return Ok(());
        }
        match lookup.lookup(room_id, token).await {
            Ok(Some(meta)) => {
                let summary = validate_room(
                    meta.name,
                    meta.description,
                    meta.max_participants,
                    Some(room_id.to_string()),
                )?;
                match self.insert_room(summary) {
                    Ok(_) => Ok(()),
                    // Another join materialized it meanwhile.
                    Err(e) if e.code == ErrorCode::RoomExists => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Ok(None) => Ok(()),
            Err(LookupError::Denied) => Err(RoomError::new(
                ErrorCode::RoomAccessDenied,
                format!("Django denied access to room `{room_id}`"),
            )),
            Err(e) => Err(RoomError::new(
                ErrorCode::RoomLookupFailed,
                format!("room lookup failed: {e}"),
            )),
        }
    }

    pub fn is_participant(&self, room_id: &str, participant_id: &str) -> bool {
        self.lock()
            .rooms
            .get(room_id)
            .is_some_and(|r| r.participants.contains_key(participant_id))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not wedge every room: the state itself stays consistent
        // because no method leaves it half-updated across a panic point.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counts(&self) -> RoomCounts {
        let state = self.lock();
        RoomCounts {
            rooms: state.rooms.len(),
            participants: state.rooms.values().map(|r| r.participants.len()).sum(),
            producers: state
                .rooms
                .values()
                .flat_map(|r| r.participants.values())
                .map(|p| p.producers.len())
                .sum(),
        }
    }

    pub async fn create_room(
        &self,
        name: String,
        description: Option<String>,
        max_participants: Option<u32>,
        room_id: Option<String>,
    ) -> Result<RoomSummary, RoomError> {
        let summary = validate_room(name, description, max_participants, room_id)?;
        if self.lock().rooms.contains_key(&summary.room_id) {
            return Err(room_exists(&summary.room_id));
        }
        let Some(directory) = &self.directory else {
            return self.insert_room(summary);
        };
        let record = RoomRecord {
            room_id: summary.room_id.clone(),
            node: directory.node_id.clone(),
            name: summary.name.clone(),
            description: summary.description.clone(),
            max_participants: summary.max_participants,
        };
        match directory.create_room(record).await? {
            Err(()) => Err(room_exists(&summary.room_id)),
            Ok(node) if node.id == directory.node_id => {
                let mut summary = self.insert_room(summary)?;
                summary.node_url = Some(node.url);
                Ok(summary)
            }
            // Placed on a less loaded node; clients join there.
            Ok(node) => Ok(RoomSummary {
                node_url: Some(node.url),
                ..summary
            }),
        }
    }

    /// Create the room on this node.
    fn insert_room(&self, summary: RoomSummary) -> Result<RoomSummary, RoomError> {
        let room_id = summary.room_id.clone();
        let mut state = self.lock();
        if state.rooms.contains_key(&room_id) {
            return Err(room_exists(&room_id));
        }
        if state.rooms.len() >= self.max_rooms {
            return Err(RoomError::new(
                ErrorCode::TooManyRooms,
                format!("this server holds its maximum of {} rooms", self.max_rooms),
            ));
        }
        let worker = self.media.worker_for_room(&room_id);
        state.rooms.insert(
            room_id,
            Room {
                summary: summary.clone(),
                created_at: Instant::now(),
                worker,
                participants: BTreeMap::new(),
            },
        );
        self.emit(WebhookEvent::RoomStarted {
            room_id: summary.room_id.clone(),
            name: summary.name.clone(),
        });
        self.audit(
            AuditKind::RoomCreated,
            &summary.room_id,
            None,
            json!({ "name": summary.name, "maxParticipants": summary.max_participants }),
        );
        tracing::info!(room = %summary.room_id, worker, "room created");
        Ok(summary)
    }

    /// A room unknown locally may live in the directory: here (create it from its record),
    /// or on another node (redirect the client there).
    async fn locate_in_directory(&self, room_id: &str) -> Result<(), RoomError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        if self.lock().rooms.contains_key(room_id) {
            return Ok(());
        }
        match directory.locate(room_id).await? {
            Placement::Unknown => Ok(()),
            Placement::Here(record) => {
                let summary = RoomSummary {
                    room_id: record.room_id,
                    name: record.name,
                    description: record.description,
                    max_participants: record.max_participants,
                    node_url: None,
                };
                match self.insert_room(summary) {
                    Ok(_) => Ok(()),
                    Err(e) if e.code == ErrorCode::RoomExists => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Placement::Elsewhere { node, url } => Err(RoomError {
                code: ErrorCode::RoomOnOtherNode,
                message: format!("room `{room_id}` lives on node {node}; join it at {url}"),
                detail: Some(("nodeUrl", serde_json::Value::String(url))),
            }),
        }
    }

    pub async fn join(
        &self,
        room_id: &str,
        identity: &Identity,
        token: &str,
        display_name: &str,
        sink: SessionSink,
    ) -> Result<Joined, RoomError> {
        self.join_as(room_id, identity, token, display_name, sink, Dialect::Sdp)
            .await
    }

    pub async fn join_as(
        &self,
        room_id: &str,
        identity: &Identity,
        token: &str,
        display_name: &str,
        sink: SessionSink,
        dialect: Dialect,
    ) -> Result<Joined, RoomError> {
        let user = &identity.user;
        let display_name = display_name.trim();
        if display_name.is_empty() || display_name.chars().count() > 64 {
            return Err(RoomError::new(
                ErrorCode::InvalidPayload,
                "`displayName` must be 1 to 64 characters",
            ));
        }
        self.locate_in_directory(room_id).await?;
        self.materialize_from_django(room_id, token).await?;
        let worker = {
            let state = self.lock();
            let room = state
                .rooms
                .get(room_id)
                .ok_or_else(|| room_not_found(room_id))?;
            check_capacity(room)?;
            room.worker
        };
        // The subscriber transport exists before the participant becomes visible, so a
        // concurrent publish can always subscribe it (worker commands are FIFO).
        let publisher = self.media.new_transport_id();
        let subscriber = self.media.new_transport_id();
        // WHIP/WHEP create their one transport themselves.
        if dialect != Dialect::Http {
            self.media.create_subscriber(worker, subscriber).await?;
        }

        let participant_id = Uuid::new_v4().to_string();
        let inserted = self.insert_participant(
            room_id,
            &participant_id,
            Participant {
                user_id: user.id.clone(),
                joined_at: Instant::now(),
                can_subscribe: identity.grants.subscribe,
                display_name: display_name.to_string(),
                sink,
                publisher,
                subscriber,
                producers: Vec::new(),
                dialect,
                ortc: OrtcParticipant::default(),
            },
        );
        let (others, existing) = match inserted {
            Ok(v) => v,
            Err(e) => {
                let _ = self.media.close_transport(worker, subscriber).await;
                return Err(e);
            }
        };
        let (room, participant) = (room_id.to_string(), participant_id.clone());
        self.directory_update(|d| async move { d.participant_joined(&room, &participant).await });
        self.emit(WebhookEvent::ParticipantJoined {
            room_id: room_id.to_string(),
            participant_id: participant_id.clone(),
            user_id: user.id.clone(),
            display_name: display_name.to_string(),
        });
        self.audit.record(
            AuditEvent::new(AuditKind::ParticipantJoined)
                .room(room_id)
                .participant(&participant_id)
                .user(&user.id)
                .detail(json!({ "displayName": display_name })),
        );
        let existing = if identity.grants.subscribe && dialect == Dialect::Sdp {
            existing
        } else {
            Vec::new()
        };
        for (producer, owner) in existing {
            // A producer closed meanwhile is not an error for the joiner.
            let subscribed = self
                .media
                .subscribe(worker, subscriber, producer, owner)
                .await;
            if subscribed.is_ok() {
                self.audit(
                    AuditKind::ConsumerCreated,
                    room_id,
                    Some(&participant_id),
                    json!({ "producerId": producer.to_string() }),
                );
            }
        }
        tracing::info!(room = room_id, participant = %participant_id, user = %user.id, "participant joined");
        Ok(Joined {
            participant_id,
            others,
        })
    }

    /// Make a participant visible to the room; returns the others and their producers.
    #[allow(clippy::type_complexity)]
    fn insert_participant(
        &self,
        room_id: &str,
        participant_id: &str,
        participant: Participant,
    ) -> Result<(Vec<ParticipantInfo>, Vec<(ProducerId, String)>), RoomError> {
        let mut state = self.lock();
        let room = state
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| room_not_found(room_id))?;
        check_capacity(room)?;
        let info = participant.info(participant_id);
        let others: Vec<ParticipantInfo> =
            room.participants.iter().map(|(id, p)| p.info(id)).collect();
        let existing: Vec<(ProducerId, String)> = room
            .participants
            .iter()
            .flat_map(|(pid, p)| {
                p.producers
                    .iter()
                    .filter_map(move |pr| Some((pr.producer_id.parse().ok()?, pid.clone())))
            })
            .collect();
        room.broadcast(
            &OutboundEnvelope::notification("participantJoined", json!({ "participant": info })),
            None,
        );
        let (publisher, subscriber) = (participant.publisher, participant.subscriber);
        room.participants
            .insert(participant_id.to_string(), participant);
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
            self.audit_departure(room_id, participant_id, &participant, room);
            // The leaver is already out of `participants`: everyone left hears it.
            for producer in &participant.producers {
                orphans.extend(room.announce_producer_closed(
                    &producer.producer_id,
                    participant_id,
                    None,
                ));
            }
            room.broadcast(
                &OutboundEnvelope::notification(
                    "participantLeft",
                    json!({ "participantId": participant_id }),
                ),
                None,
            );
            let worker = room.worker;
            self.emit(WebhookEvent::ParticipantLeft {
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                user_id: participant.user_id.clone(),
                duration_seconds: participant.joined_at.elapsed().as_secs(),
            });
            self.audit.record(
                AuditEvent::new(AuditKind::ParticipantLeft)
                    .room(room_id)
                    .participant(participant_id)
                    .user(&participant.user_id)
                    .detail(json!({ "duration_ms": participant.joined_at.elapsed().as_millis() as u64 })),
            );
            let (room_key, participant_key) = (room_id.to_string(), participant_id.to_string());
            self.directory_update(|d| async move {
                d.participant_left(&room_key, &participant_key).await
            });
            if room.participants.is_empty() {
                tracing::info!(room = room_id, "last participant left; room closed");
                let released = room_id.to_string();
                self.directory_update(|d| async move { d.release_room(&released).await });
                let duration_seconds = room.created_at.elapsed().as_secs();
                state.rooms.remove(room_id);
                self.audit(
                    AuditKind::RoomClosed,
                    room_id,
                    None,
                    json!({ "duration_ms": duration_seconds * 1000 }),
                );
                self.emit(WebhookEvent::RoomFinished {
                    room_id: room_id.to_string(),
                    duration_seconds,
                });
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

    /// Audit what a departure ends: the leaver's producers (and everyone's consumers of them)
    /// and the leaver's own consumers.
    fn audit_departure(
        &self,
        room_id: &str,
        participant_id: &str,
        leaver: &Participant,
        room: &Room,
    ) {
        for producer in &leaver.producers {
            self.audit(
                AuditKind::ProducerClosed,
                room_id,
                Some(participant_id),
                json!({ "producerId": producer.producer_id }),
            );
            for (other_id, other) in &room.participants {
                if other.can_subscribe {
                    self.audit(
                        AuditKind::ConsumerClosed,
                        room_id,
                        Some(other_id),
                        json!({ "producerId": producer.producer_id }),
                    );
                }
            }
        }
        if leaver.can_subscribe {
            for other in room.participants.values() {
                for producer in &other.producers {
                    self.audit(
                        AuditKind::ConsumerClosed,
                        room_id,
                        Some(participant_id),
                        json!({ "producerId": producer.producer_id }),
                    );
                }
            }
        }
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
                .ok_or_else(|| room_not_found(room_id))?;
            let target = room.participants.get(participant_id).ok_or_else(|| {
                RoomError::new(
                    ErrorCode::ParticipantNotFound,
                    "no such participant in this room",
                )
            })?;
            target.sink.send(OutboundEnvelope::notification(
                "kicked",
                json!({ "roomId": room_id, "reason": reason }),
            ));
        }
        self.leave(room_id, participant_id).await;
        Ok(())
    }

    /// Close a room for everyone: each participant gets `roomClosed`, all media stops.
    pub async fn close_room(&self, room_id: &str) {
        let participants: Vec<String> = {
            let state = self.lock();
            let Some(room) = state.rooms.get(room_id) else {
                return;
            };
            room.broadcast(
                &OutboundEnvelope::notification("roomClosed", json!({ "roomId": room_id })),
                None,
            );
            room.participants.keys().cloned().collect()
        };
        for participant_id in participants {
            self.leave(room_id, &participant_id).await;
        }
        // The last leave normally removed it; a room emptied meanwhile is removed here.
        if let Some(room) = self.lock().rooms.remove(room_id) {
            self.audit(
                AuditKind::RoomClosed,
                room_id,
                None,
                json!({ "duration_ms": room.created_at.elapsed().as_millis() as u64 }),
            );
            let released = room_id.to_string();
            self.directory_update(|d| async move { d.release_room(&released).await });
            self.emit(WebhookEvent::RoomFinished {
                room_id: room_id.to_string(),
                duration_seconds: room.created_at.elapsed().as_secs(),
            });
        }
    }

    fn participant_transports(
        &self,
        room_id: &str,
        participant_id: &str,
    ) -> Result<(usize, TransportId, TransportId), RoomError> {
        let state = self.lock();
        let room = state
            .rooms
            .get(room_id)
            .ok_or_else(|| room_not_found(room_id))?;
        let p = room.participants.get(participant_id).ok_or_else(|| {
            RoomError::new(ErrorCode::NotInRoom, "not a participant of this room")
        })?;
        Ok((room.worker, p.publisher, p.subscriber))
    }

    /// Apply the participant's publisher offer; new producers are announced and subscribed
    /// by everyone else in the room. Returns the answer and the producers with their mids.
    pub async fn publish(
        &self,
        room_id: &str,
        participant_id: &str,
        sdp: String,
    ) -> Result<(String, Vec<(ProducerInfo, String)>), RoomError> {
        let (worker, publisher, _) = self.participant_transports(room_id, participant_id)?;
        let (answer, created) = self.media.publisher_offer(worker, publisher, sdp).await?;
        let announced = self
            .announce_producers(room_id, participant_id, worker, created)
            .await?;
        Ok((answer, announced))
    }

    /// Record new producers, tell the room, and subscribe every SDP participant to them.
    async fn announce_producers(
        &self,
        room_id: &str,
        participant_id: &str,
        worker: usize,
        created: Vec<crate::media::NewProducer>,
    ) -> Result<Vec<(ProducerInfo, String)>, RoomError> {
        let mut announced = Vec::new();
        let mut subscribers = Vec::new();
        {
            let mut state = self.lock();
            let room = state
                .rooms
                .get_mut(room_id)
                .ok_or_else(|| room_not_found(room_id))?;
            let Some(me) = room.participants.get_mut(participant_id) else {
                return Err(RoomError::new(
                    ErrorCode::NotInRoom,
                    "left the room meanwhile",
                ));
            };
            for p in &created {
                let info = ProducerInfo {
                    producer_id: p.producer_id.to_string(),
                    participant_id: participant_id.to_string(),
                    kind: kind_name(p.kind),
                    layers: p.rids.clone(),
                };
                me.producers.push(info.clone());
                self.audit(
                    AuditKind::ProducerCreated,
                    room_id,
                    Some(participant_id),
                    json!({ "producerId": info.producer_id, "kind": info.kind, "layers": info.layers }),
                );
                self.emit(WebhookEvent::ProducerPublished {
                    room_id: room_id.to_string(),
                    participant_id: participant_id.to_string(),
                    producer_id: info.producer_id.clone(),
                    kind: match p.kind {
                        Kind::Audio => "audio".into(),
                        Kind::Video => "video".into(),
                    },
                });
                announced.push((info, p.mid.clone()));
            }
            for (id, p) in room.participants.iter() {
                if id == participant_id {
                    continue;
                }
                for (info, _) in &announced {
                    // Top-level fields for mediasoup-style clients, `producer` for ours.
                    p.sink.send(OutboundEnvelope::notification(
                        "newProducer",
                        json!({
                            "producerId": info.producer_id,
                            "participantId": info.participant_id,
                            "kind": info.kind,
                            "producer": info,
                        }),
                    ));
                }
                if p.can_subscribe && p.dialect == Dialect::Sdp {
                    subscribers.push((p.subscriber, id.clone()));
                }
            }
        }
        for (subscriber, subscriber_participant) in subscribers {
            for p in &created {
                let subscribed = self
                    .media
                    .subscribe(
                        worker,
                        subscriber,
                        p.producer_id,
                        participant_id.to_string(),
                    )
                    .await;
                if subscribed.is_ok() {
                    self.audit(
                        AuditKind::ConsumerCreated,
                        room_id,
                        Some(&subscriber_participant),
                        json!({ "producerId": p.producer_id.to_string() }),
                    );
                }
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
            .map_err(|_| RoomError::new(ErrorCode::ProducerNotFound, "no such producer"))?;
        Ok(self
            .media
            .set_preference(worker, subscriber, producer, preference)
            .await?)
    }

    /// Route a worker's event to the session it concerns.
    pub fn on_media_event(&self, event: MediaEvent) -> Vec<(String, String)> {
        let mut ended = Vec::new();
        let mut state = self.lock();
        let transport = match &event {
            MediaEvent::SubscriberOffer { transport, .. }
            | MediaEvent::LayerChanged { transport, .. }
            | MediaEvent::TransportClosed { transport, .. } => *transport,
        };
        let Some((room_id, participant_id)) = state.transports.get(&transport).cloned() else {
            return ended;
        };
        let Some(room) = state.rooms.get_mut(&room_id) else {
            return ended;
        };
        if let MediaEvent::TransportClosed { reason, .. } = &event {
            tracing::info!(room = %room_id, participant = %participant_id, %reason, "media transport closed");
            // A WHIP/WHEP session is its one transport: when that dies, the session ends.
            if room
                .participants
                .get(&participant_id)
                .is_some_and(|p| p.dialect == Dialect::Http)
            {
                ended.push((room_id.clone(), participant_id.clone()));
                return ended;
            }
            // A dead publisher transport took its producers with it on the worker.
            let Some(p) = room.participants.get_mut(&participant_id) else {
                return ended;
            };
            if p.publisher != transport {
                return ended;
            }
            let closed = std::mem::take(&mut p.producers);
            for producer in closed {
                self.audit(
                    AuditKind::ProducerClosed,
                    &room_id,
                    Some(&participant_id),
                    json!({ "producerId": producer.producer_id, "reason": reason }),
                );
                for orphan in room.announce_producer_closed(
                    &producer.producer_id,
                    &participant_id,
                    Some(&participant_id),
                ) {
                    ended.push((room_id.clone(), orphan));
                }
            }
            return ended;
        }
        let room = &*room;
        let Some(participant) = room.participants.get(&participant_id) else {
            return ended;
        };
        match event {
            MediaEvent::SubscriberOffer { sdp, tracks, .. } => {
                let owner_of = |producer: ProducerId| {
                    let id = producer.to_string();
                    room.participants
                        .iter()
                        .find(|(_, p)| p.producers.iter().any(|pr| pr.producer_id == id))
                        .map(|(pid, _)| pid.clone())
                        .unwrap_or_default()
                };
                let tracks: Vec<SubscriberTrack> = tracks
                    .into_iter()
                    .map(|t| SubscriberTrack {
                        mid: t.mid,
                        producer_id: t.producer_id.to_string(),
                        participant_id: owner_of(t.producer_id),
                        kind: kind_name(t.kind),
                    })
                    .collect();
                participant.sink.send(OutboundEnvelope::notification(
                    "subscriberOffer",
                    json!({ "sdp": sdp, "tracks": tracks }),
                ));
            }
            MediaEvent::LayerChanged {
                producer, layer, ..
            } if participant.dialect == Dialect::Ortc => {
                let consumer = participant
                    .ortc
                    .consumers
                    .iter()
                    .find(|(_, p)| **p == producer);
                if let Some((consumer_id, _)) = consumer {
                    participant.sink.send(OutboundEnvelope::notification(
                        "consumerLayersChanged",
                        json!({ "consumerId": consumer_id, "spatialLayer": layer, "temporalLayer": null }),
                    ));
                }
            }
            MediaEvent::LayerChanged {
                producer, layer, ..
            } => {
                participant.sink.send(OutboundEnvelope::notification(
                    "layerChanged",
                    json!({ "producerId": producer.to_string(), "layer": layer_name(layer) }),
                ));
            }
            MediaEvent::TransportClosed { .. } => {}
        }
        ended
    }
}

fn room_exists(room_id: &str) -> RoomError {
    RoomError::new(
        ErrorCode::RoomExists,
        format!("room `{room_id}` already exists"),
    )
}

/// Check a room's parameters and fill in defaults (a UUID when no id is given).
fn validate_room(
    name: String,
    description: Option<String>,
    max_participants: Option<u32>,
    room_id: Option<String>,
) -> Result<RoomSummary, RoomError> {
    let name = name.trim().to_string();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(RoomError::new(
            ErrorCode::InvalidPayload,
            "`name` must be 1 to 128 characters",
        ));
    }
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1024)
    {
        return Err(RoomError::new(
            ErrorCode::InvalidPayload,
            "`description` must be at most 1024 characters",
        ));
    }
    let max_participants = max_participants.unwrap_or(DEFAULT_MAX_PARTICIPANTS);
    if !(1..=MAX_PARTICIPANTS_LIMIT).contains(&max_participants) {
        return Err(RoomError::new(
            ErrorCode::InvalidPayload,
            format!("`maxParticipants` must be between 1 and {MAX_PARTICIPANTS_LIMIT}"),
        ));
    }
    let room_id = match room_id {
        Some(id) if valid_room_id(&id) => id,
        Some(_) => {
            return Err(RoomError::new(
                ErrorCode::InvalidPayload,
                "`roomId` must match [A-Za-z0-9_-]{1,64}",
            ))
        }
        None => Uuid::new_v4().to_string(),
    };
    Ok(RoomSummary {
        room_id,
        name,
        description,
        max_participants,
        node_url: None,
    })
}

/// Media kinds an SDP offer wants to send (m-sections that are sendonly or sendrecv).
pub fn sdp_sending_kinds(sdp: &str) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut current: Option<(&'static str, bool)> = None;
    let flush = |section: Option<(&'static str, bool)>, kinds: &mut Vec<&'static str>| {
        if let Some((kind, true)) = section {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            flush(current.take(), &mut kinds);
            let kind = if media.starts_with("audio") {
                Some("audio")
            } else if media.starts_with("video") {
                Some("video")
            } else {
                None
            };
            // Direction defaults to sendrecv when the section has no attribute.
            current = kind.map(|k| (k, true));
        } else if let Some((kind, _)) = current {
            match line {
                "a=recvonly" | "a=inactive" => current = Some((kind, false)),
                "a=sendonly" | "a=sendrecv" => current = Some((kind, true)),
                _ => {}
            }
        }
    }
    flush(current, &mut kinds);
    kinds
}

fn check_capacity(room: &Room) -> Result<(), RoomError> {
    if room.participants.len() >= room.summary.max_participants as usize {
        return Err(RoomError::new(
            ErrorCode::RoomFull,
            format!(
                "room is full ({} participants)",
                room.summary.max_participants
            ),
        ));
    }
    Ok(())
}

fn room_not_found(room_id: &str) -> RoomError {
    RoomError::new(
        ErrorCode::RoomNotFound,
        format!("room `{room_id}` does not exist"),
    )
}

fn valid_room_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn kind_name(kind: Kind) -> MediaKindName {
    match kind {
        Kind::Audio => MediaKindName::Audio,
        Kind::Video => MediaKindName::Video,
    }
}

/// Wire name of a layer index (publishers announce layers lowest first).
pub fn layer_name(layer: u8) -> &'static str {
    match layer {
        0 => "low",
        1 => "medium",
        _ => "high",
    }
}

/// A live WHIP or WHEP session (an HTTP-dialect participant).
#[derive(Debug, Clone)]
pub struct HttpSessionRef {
    pub room_id: String,
    pub participant_id: String,
    /// True for WHIP (it publishes), false for WHEP (it only plays).
    pub publishes: bool,
}

impl Rooms {
    /// Every live WHIP/WHEP session: the drain waits for them, and DELETE checks a session is
    /// addressed under its own path (`/whip` for publishers, `/whep` for players).
    pub fn http_sessions(&self) -> Vec<HttpSessionRef> {
        let state = self.lock();
        state
            .rooms
            .iter()
            .flat_map(|(room_id, room)| {
                room.participants
                    .iter()
                    .filter(|(_, p)| p.dialect == Dialect::Http)
                    .map(move |(participant_id, p)| HttpSessionRef {
                        room_id: room_id.clone(),
                        participant_id: participant_id.clone(),
                        publishes: !p.producers.is_empty(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::sdp_sending_kinds;

    #[test]
    fn sending_kinds_follow_direction_attributes() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(sdp_sending_kinds(sdp), vec!["audio"]);
        assert_eq!(sdp_sending_kinds("m=video 9 X 96\r\n"), vec!["video"]);
    }
}
