//! One room over several nodes. The owner node holds the room; another node (with
//! RELAY_ROOMS) can *relay* it: its clients join there, the owner's participants and
//! producers are shown to them as remote participants, and media reaches them over a node
//! link (`cluster`). The room layer on each side:
//!
//! - owner: a link *watches* the room, hearing what its participants hear ([`Rooms::watch`]);
//!   a watched room stays open while a relay needs it, even with nobody here;
//! - relay: the room is created from the owner's snapshot, then kept in step with the
//!   owner's notices ([`Rooms::open_relay`]); it closes when its last local participant
//!   leaves (which ends the link), and when the link ends (the owner died) its participants
//!   are told `roomClosed` — their next join finds the room taken over, as on one node.
//!
//! Publishing happens on the owner: in a relayed room it is refused with `ROOM_ON_OTHER_NODE`
//! and the owner's URL.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::events::{Notice, ParticipantView};
use super::model::{Dialect, Participant, RelayedFrom, Room, RoomSummary};
use super::ports::{Broadcast, Notifier, RelayFeed, RoomDefinition, Unheard};
use super::validate::{check_capacity, check_display_name};
use super::{RoomError, RoomErrorKind, Rooms};
use crate::media::NewProducer;

/// Tells one relayed room from a later one of the same id.
static NEXT_RELAY: AtomicU64 = AtomicU64::new(1);
/// Tells one link watching a room from any other, ever (a late message of a closed link
/// cannot touch a newer one's participants).
static NEXT_WATCH: AtomicU64 = AtomicU64::new(1);

/// What a node link watching a room starts from.
pub struct Watch {
    pub watch_id: u64,
    /// The room's worker (where its producers live).
    pub worker: usize,
    pub definition: RoomDefinition,
    pub participants: Vec<ParticipantView>,
}

impl Rooms {
    /// Owner side: `notifier` hears what the room's participants hear, from now on.
    pub async fn watch(
        &self,
        room_id: &str,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Watch, RoomError> {
        self.locate_owned(room_id).await?;
        let mut state = self.lock();
        let room = state
            .rooms
            .get_mut(room_id)
            .ok_or_else(|| RoomError::room_not_found(room_id))?;
        if room.relay.is_some() {
            // Relays of relays would hide a dead owner behind a live relay.
            return Err(RoomError::new(
                RoomErrorKind::OnOtherNode,
                "this node relays the room itself; link to its owner",
            ));
        }
        let watch_id = NEXT_WATCH.fetch_add(1, Ordering::Relaxed);
        room.watchers.push((watch_id, notifier));
        room.empty_since = None;
        Ok(Watch {
            watch_id,
            worker: room.worker,
            definition: definition(&room.summary),
            participants: room.participants.iter().map(|(id, p)| p.view(id)).collect(),
        })
    }

    /// Owner side: the link is gone, and the participants it brought with it; a room nobody
    /// else uses closes now.
    pub async fn unwatch(&self, room_id: &str, watch_id: u64) {
        let brought: Vec<String> = self
            .lock()
            .rooms
            .get(room_id)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|(_, p)| p.via_watch == Some(watch_id))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for participant_id in brought {
            self.leave(room_id, &participant_id).await;
        }
        let mut state = self.lock();
        let Some(room) = state.rooms.get_mut(room_id) else {
            return;
        };
        room.watchers.retain(|(id, _)| *id != watch_id);
        if room.unused() {
            if let Some(room) = state.rooms.remove(room_id) {
                drop(state);
                tracing::info!(room = room_id, "last relay left an empty room; closed");
                self.room_removed(room_id, &room);
            }
        }
    }

    /// The room is here, or can be created here from the directory; never relayed.
    async fn locate_owned(&self, room_id: &str) -> Result<(), RoomError> {
        self.locate_in_directory(room_id, false).await?;
        if self.room_exists(room_id) {
            Ok(())
        } else {
            Err(RoomError::room_not_found(room_id))
        }
    }

    /// Relay side: link to `node` (at `url`), the owner of `room_id`, and hold the room here.
    pub(super) async fn open_relay(
        &self,
        room_id: &str,
        node: &str,
        url: &str,
    ) -> Result<(), RoomError> {
        let gate = self
            .relay_opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(room_id.to_string())
            .or_default()
            .clone();
        let opened = {
            let _one_at_a_time = gate.lock().await;
            self.open_relay_now(room_id, node, url).await
        };
        let mut gates = self.relay_opening.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and ours: nobody else waits for this room.
        if Arc::strong_count(&gate) <= 2 {
            gates.remove(room_id);
        }
        opened
    }

    async fn open_relay_now(&self, room_id: &str, node: &str, url: &str) -> Result<(), RoomError> {
        if self.room_exists(room_id) {
            return Ok(());
        }
        let links = self
            .ports
            .owner_links
            .get()
            .ok_or_else(|| RoomError::new(RoomErrorKind::Internal, "relaying is off"))?
            .clone();
        let RelayFeed {
            definition,
            participants,
            notices,
            to_owner,
            link,
        } = links.open(room_id, node).await?;
        let summary = RoomSummary {
            room_id: definition.room_id,
            name: definition.name,
            description: definition.description,
            max_participants: definition.max_participants,
            node_url: None,
        };
        let now = Instant::now();
        let worker = self.media.worker_for_room(room_id);
        let generation = NEXT_RELAY.fetch_add(1, Ordering::Relaxed);
        let mut ghosts = BTreeMap::new();
        for view in participants {
            ghosts.insert(view.participant_id.clone(), self.ghost(&view, now));
        }
        {
            let mut state = self.lock();
            if state.rooms.contains_key(room_id) {
                // Created here meanwhile (this node took the room over); the link ends.
                return Ok(());
            }
            self.check_room_quota(&state, room_id, None)?;
            state.rooms.insert(
                room_id.to_string(),
                Room {
                    summary,
                    created_at: now,
                    created_by: None,
                    empty_since: Some(now),
                    worker,
                    participants: ghosts,
                    watchers: Vec::new(),
                    relay: Some(RelayedFrom {
                        owner_url: url.to_string(),
                        generation,
                        to_owner,
                        _link: link,
                    }),
                    closing: false,
                },
            );
        }
        tracing::info!(room = room_id, owner = node, "relaying room");
        if let Some(rooms) = self.me.upgrade() {
            tokio::spawn(follow_owner(
                rooms,
                room_id.to_string(),
                generation,
                notices,
            ));
        }
        Ok(())
    }

    /// Whether `room_id` is still the relayed room `generation` (not closed, not a newer one).
    fn relays(&self, room_id: &str, generation: u64) -> bool {
        self.lock()
            .rooms
            .get(room_id)
            .and_then(|r| r.relay.as_ref())
            .is_some_and(|r| r.generation == generation)
    }

    fn is_remote_participant(&self, room_id: &str, participant_id: &str) -> bool {
        self.lock()
            .rooms
            .get(room_id)
            .and_then(|r| r.participants.get(participant_id))
            .is_some_and(|p| p.remote)
    }

    /// Owner side: a participant of the relay node behind link `watch_id` joined there; the
    /// room shows it (and counts it against `maxParticipants`) until it leaves or the link
    /// ends.
    pub fn relay_participant_joined(&self, room_id: &str, watch_id: u64, view: ParticipantView) {
        let mut ghost = self.ghost(&view, Instant::now());
        ghost.via_watch = Some(watch_id);
        ghost.producers.clear();
        let mut state = self.lock();
        let Some(room) = state.rooms.get_mut(room_id) else {
            return;
        };
        // Only for a link that still watches; within the room's size, like any join; a
        // display name within the usual bounds.
        let watching = room.watchers.iter().any(|(id, _)| *id == watch_id);
        if !watching
            || room.participants.contains_key(&view.participant_id)
            || check_capacity(room).is_err()
            || check_display_name(&view.display_name).is_err()
            || view.participant_id.len() > 64
        {
            tracing::debug!(room = room_id, "relay participant not shown here");
            return;
        }
        // Everyone here and every other relay hears of it; its own relay knows already (an
        // echo could arrive after it left there, and show it for a moment).
        let joined = Broadcast::new(Notice::ParticipantJoined(ghost.view(&view.participant_id)));
        for p in room.participants.values() {
            p.notifier.notify_broadcast(&joined);
        }
        for (_, watcher) in room.watchers.iter().filter(|(id, _)| *id != watch_id) {
            watcher.notify(joined.notice.clone());
        }
        room.participants.insert(view.participant_id, ghost);
    }

    /// Owner side: a relay node's participant left there.
    pub async fn relay_participant_left(&self, room_id: &str, watch_id: u64, participant_id: &str) {
        let brought_by_link = self
            .lock()
            .rooms
            .get(room_id)
            .and_then(|r| r.participants.get(participant_id))
            .is_some_and(|p| p.via_watch == Some(watch_id));
        if brought_by_link {
            self.leave(room_id, participant_id).await;
        }
    }

    /// A participant of the owner, as this node shows it.
    fn ghost(&self, view: &ParticipantView, now: Instant) -> Participant {
        Participant {
            user_id: view.user_id.clone(),
            joined_at: now,
            can_subscribe: false,
            display_name: view.display_name.clone(),
            notifier: Arc::new(Unheard),
            publisher: self.media.new_transport_id(),
            subscriber: self.media.new_transport_id(),
            producers: view.producers.clone(),
            dialect: Dialect::Whip,
            ortc: Default::default(),
            downlink: Default::default(),
            remote: true,
            via_watch: None,
        }
    }

    /// Refuse to publish into a room another node owns: publish there.
    pub(super) fn refuse_if_relayed(&self, room_id: &str) -> Result<(), RoomError> {
        let state = self.lock();
        let Some(relay) = state.rooms.get(room_id).and_then(|r| r.relay.as_ref()) else {
            return Ok(());
        };
        Err(RoomError {
            kind: RoomErrorKind::OnOtherNode,
            message: format!(
                "this node relays room `{room_id}`; publish on its owner at {}",
                relay.owner_url
            ),
            detail: Some((
                "nodeUrl",
                serde_json::Value::String(relay.owner_url.clone()),
            )),
        })
    }

    /// Relay side: what the owner said happened.
    async fn on_owner_notice(&self, room_id: &str, notice: Notice) {
        match notice {
            Notice::ParticipantJoined(view) => {
                let ghost = self.ghost(&view, Instant::now());
                let mut state = self.lock();
                let Some(room) = state.rooms.get_mut(room_id) else {
                    return;
                };
                // The owner echoes this node's own participants back: they are here already.
                if room.participants.contains_key(&view.participant_id) {
                    return;
                }
                room.broadcast(&Notice::ParticipantJoined(view.clone()), None);
                room.participants.insert(view.participant_id, ghost);
            }
            Notice::ParticipantLeft { participant_id }
                if self.is_remote_participant(room_id, &participant_id) =>
            {
                self.leave(room_id, &participant_id).await;
            }
            Notice::NewProducer(view) => {
                let worker = self.lock().rooms.get(room_id).map(|r| r.worker);
                let Some(worker) = worker else { return };
                let created = vec![NewProducer {
                    producer_id: view.producer_id,
                    mid: String::new(),
                    kind: view.kind,
                    rids: view.layers.clone(),
                }];
                let owner = view.participant_id.clone();
                if let Err(e) = self
                    .announce_producers(room_id, &owner, worker, created)
                    .await
                {
                    tracing::debug!(room = room_id, error = %e.message, "relayed producer not shown");
                }
            }
            Notice::ProducerClosed {
                producer_id,
                participant_id,
            } => {
                let orphans = {
                    let mut state = self.lock();
                    let Some(room) = state.rooms.get_mut(room_id) else {
                        return;
                    };
                    let Some(owner) = room.participants.get_mut(&participant_id) else {
                        return;
                    };
                    owner.producers.retain(|p| p.producer_id != producer_id);
                    room.announce_producer_closed(producer_id, &participant_id, None)
                };
                for orphan in orphans {
                    self.leave(room_id, &orphan).await;
                }
            }
            notice @ Notice::ProducerPaused { .. } => {
                if let Some(room) = self.lock().rooms.get(room_id) {
                    room.broadcast(&notice, None);
                }
            }
            Notice::RoomClosed { .. } => self.close_room(room_id).await,
            _ => {}
        }
    }
}

/// The room's definition as a link hands it over.
fn definition(summary: &RoomSummary) -> RoomDefinition {
    RoomDefinition {
        room_id: summary.room_id.clone(),
        name: summary.name.clone(),
        description: summary.description.clone(),
        max_participants: summary.max_participants,
    }
}

/// Relay side: apply the owner's notices until the link ends; then the room closes and its
/// participants are told (`roomClosed`), so they join again and find the room's new home.
async fn follow_owner(
    rooms: Arc<Rooms>,
    room_id: String,
    generation: u64,
    mut notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
) {
    while let Some(notice) = notices.recv().await {
        if !rooms.relays(&room_id, generation) {
            return;
        }
        rooms.on_owner_notice(&room_id, notice).await;
    }
    if rooms.relays(&room_id, generation) {
        tracing::warn!(room = %room_id, "link to the room's owner lost; relayed room closed");
        rooms.close_room(&room_id).await;
    }
}
