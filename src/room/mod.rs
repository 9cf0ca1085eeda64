//! Rooms, participants and producers: the model the session layer operates on.
//!
//! State lives in memory behind one mutex that is never held across an await; media work is
//! delegated to the room's worker through [`MediaRouter`]. The room knows nothing of the wire:
//! it tells participants through their [`Notifier`], reports [`RoomEvent`]s to its
//! [`EventSink`]s, refuses with [`RoomError`]s, and reaches the directory and the room
//! catalog through the traits in [`ports`].

mod error;
mod events;
mod http;
mod lifecycle;
mod media_events;
mod model;
mod ortc;
pub mod ports;
mod publish;
mod relayed;
mod validate;

pub use error::{RoomError, RoomErrorKind};
pub use events::{
    ConsumerOrigin, Notice, OfferedTrackView, ParticipantView, ProducerView, RoomEvent,
};
pub use http::{HttpMediaSession, HttpSessionRef, Requester};
pub use lifecycle::{Joined, RoomSpec};
pub use model::{Dialect, Member, RoomSummary};
pub use ortc::{ConsumerCreated, ConsumerTarget, ProducerPublished, RemoteDtls, TransportCreated};
pub use ports::{Broadcast, Directory, EventSink, Notifier, OwnerLinks, RelayFeed, RoomCatalog};
pub use relayed::Watch;
pub use validate::{sdp_sending_kinds, DEFAULT_MAX_PARTICIPANTS, MAX_PARTICIPANTS_LIMIT};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::media::MediaRouter;
use model::{Participant, Room, State};

/// Bounds on how many rooms exist and how long an unused one lives.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Rooms this node holds at most (MAX_ROOMS).
    pub max_rooms: usize,
    /// Rooms one user may have created that still exist (MAX_ROOMS_PER_USER).
    pub max_rooms_per_user: usize,
    /// A room nobody is in is closed after this long (EMPTY_ROOM_TIMEOUT_SECS).
    pub empty_timeout: Duration,
}

/// The outside world as the room sees it, chosen once at start-up.
pub struct RoomPorts {
    pub directory: Arc<dyn Directory>,
    /// Rooms defined in an external catalog (Django), created on first join.
    pub catalog: Option<Arc<dyn RoomCatalog>>,
    /// Audit log, webhooks: every one hears every event.
    pub observers: Vec<Arc<dyn EventSink>>,
    /// Relay rooms of other nodes rather than redirect to them (RELAY_ROOMS), set once the
    /// cluster layer is up (it needs the rooms first).
    pub owner_links: std::sync::OnceLock<Arc<dyn OwnerLinks>>,
}

pub struct Rooms {
    /// Itself, for tasks a room starts (a relayed room's notice pump).
    me: std::sync::Weak<Rooms>,
    state: Mutex<State>,
    /// Per room being relayed: links open one at a time, so two joins cannot open two links
    /// for one room (a slow owner holds up only its own rooms' joins).
    relay_opening: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    media: MediaRouter,
    limits: RoomLimits,
    ports: RoomPorts,
}

/// A room's subscriber links as their estimators see them (`/status` `bandwidth`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomBandwidth {
    pub subscribers_estimated: usize,
    pub estimate_bps_min: u64,
    pub estimate_bps_median: u64,
    pub estimate_bps_max: u64,
    /// Video tracks paused because a subscriber's link cannot carry their lowest layer.
    pub paused_tracks: usize,
}

/// Counts for `/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RoomCounts {
    pub rooms: usize,
    pub participants: usize,
    pub producers: usize,
    /// WHIP publishers and WHEP players (participants without signaling).
    pub http_sessions: usize,
}

impl Rooms {
    pub fn new(media: MediaRouter, limits: RoomLimits, ports: RoomPorts) -> Arc<Self> {
        Arc::new_cyclic(|me| Rooms {
            me: me.clone(),
            state: Mutex::new(State::default()),
            relay_opening: Mutex::default(),
            media,
            limits,
            ports,
        })
    }

    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.ports.directory
    }

    /// Relay rooms of other nodes through `links` from now on (RELAY_ROOMS).
    pub fn relay_through(&self, links: Arc<dyn OwnerLinks>) {
        let _ = self.ports.owner_links.set(links);
    }

    /// Tell every observer. Observers never block.
    fn emit(&self, event: RoomEvent) {
        for observer in &self.ports.observers {
            observer.record(&event);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere must not wedge every room: the state itself stays consistent
        // because no method leaves it half-updated across a panic point.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counts(&self) -> RoomCounts {
        let state = self.lock();
        let participants = || {
            state
                .rooms
                .values()
                .flat_map(|r| r.participants.values())
                .filter(|p| !p.remote)
        };
        RoomCounts {
            rooms: state.rooms.len(),
            participants: participants().count(),
            producers: participants().map(|p| p.producers.len()).sum(),
            http_sessions: participants().filter(|p| p.dialect.is_http()).count(),
        }
    }

    /// Per room, what the estimators say of its subscribers' links (`/status`): rooms with at
    /// least one estimate only.
    pub fn bandwidth(&self) -> BTreeMap<String, RoomBandwidth> {
        let state = self.lock();
        let mut out = BTreeMap::new();
        for (room_id, room) in &state.rooms {
            let mut estimates: Vec<u64> = room
                .participants
                .values()
                .filter_map(|p| p.downlink.estimate_bps)
                .collect();
            if estimates.is_empty() {
                continue;
            }
            estimates.sort_unstable();
            let paused_tracks = room
                .participants
                .values()
                .flat_map(|p| &p.downlink.paused)
                .filter(|producer| room.owner_of(**producer).is_some())
                .count();
            out.insert(
                room_id.clone(),
                RoomBandwidth {
                    subscribers_estimated: estimates.len(),
                    estimate_bps_min: estimates[0],
                    estimate_bps_median: estimates[estimates.len() / 2],
                    estimate_bps_max: estimates[estimates.len() - 1],
                    paused_tracks,
                },
            );
        }
        out
    }

    pub fn room_exists(&self, room_id: &str) -> bool {
        self.lock().rooms.contains_key(room_id)
    }

    pub fn is_participant(&self, room_id: &str, participant_id: &str) -> bool {
        self.lock()
            .rooms
            .get(room_id)
            .is_some_and(|r| r.participants.contains_key(participant_id))
    }

    /// Run `f` on a participant of a room, or fail with the right error.
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
            .ok_or_else(|| RoomError::room_not_found(room_id))?;
        if !room.participants.contains_key(participant_id) {
            return Err(RoomError::not_in_room());
        }
        f(room, participant_id)
    }

    fn participant<'a>(room: &'a mut Room, participant_id: &str) -> &'a mut Participant {
        room.participants
            .get_mut(participant_id)
            .expect("checked by with_participant")
    }

    /// The room's worker and the participant's two transports.
    fn participant_transports(
        &self,
        room_id: &str,
        participant_id: &str,
    ) -> Result<(usize, crate::media::TransportId, crate::media::TransportId), RoomError> {
        self.with_participant(room_id, participant_id, |room, pid| {
            let worker = room.worker;
            let p = Self::participant(room, pid);
            Ok((worker, p.publisher, p.subscriber))
        })
    }
}
