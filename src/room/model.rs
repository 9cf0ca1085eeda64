//! The room model's state: rooms, their participants and what each publishes and consumes.
//! Plain data behind the `Rooms` mutex; nothing here awaits or touches media.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::media::{ProducerId, TransportId};

use super::events::{Notice, ParticipantView, ProducerView};
use super::ports::{Broadcast, Notifier};

/// A room as clients see it (the answer to `createRoom`).
#[derive(Debug, Clone, PartialEq)]
pub struct RoomSummary {
    pub room_id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_participants: u32,
    /// With several nodes: where the room lives (join there).
    pub node_url: Option<String>,
}

/// Who joins: what the room needs to know of an authenticated user.
#[derive(Clone)]
pub struct Member {
    pub user_id: String,
    pub display_name: String,
    /// False when the token lacks the subscribe grant: nothing is forwarded to it.
    pub can_subscribe: bool,
    /// How the participant is told about the room.
    pub notifier: Arc<dyn Notifier>,
}

/// How a participant negotiates media, which decides whether it is auto-subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The SDP flow: subscribed to every producer, offers pushed by the server.
    Sdp,
    /// mediasoup-style ORTC: consumes explicitly (`consume`); switched to on the first
    /// `createWebRtcTransport`.
    Ortc,
    /// A WHIP publisher: one HTTP exchange, nothing pushed, consumes nothing.
    Whip,
    /// A WHEP player: one HTTP exchange, consumes what was published when it started.
    Whep,
    /// Media over WebTransport (`joinRoom` with `media: "webtransport"`): consumes explicitly
    /// with `consumeFrames`; never sent subscriber offers.
    Frames,
}

impl Dialect {
    /// WHIP or WHEP: a participant without signaling, whose session is its one transport.
    pub fn is_http(self) -> bool {
        matches!(self, Dialect::Whip | Dialect::Whep)
    }
}

pub(super) struct Room {
    pub summary: RoomSummary,
    pub created_at: Instant,
    /// The user whose `createRoom` made it (None for rooms from the directory or catalog).
    pub created_by: Option<String>,
    /// Set while nobody is in the room; an idle room is closed after the empty timeout.
    pub empty_since: Option<Instant>,
    pub worker: usize,
    pub participants: BTreeMap<String, Participant>,
    /// Owner side: node links relaying this room, told what happens in it (`watch`).
    pub watchers: Vec<(u64, Arc<dyn Notifier>)>,
    /// Relay side: the room lives on another node and reaches this one through a link.
    pub relay: Option<RelayedFrom>,
    /// `close_room` is removing everyone: nobody may join meanwhile.
    pub closing: bool,
}

/// A room this node relays from its owner (`relayed.rs`).
pub(super) struct RelayedFrom {
    /// Where the owner is reached (publishing goes there).
    pub owner_url: String,
    /// Tells this relayed room from a later one of the same id.
    pub generation: u64,
    /// This node's participants joining and leaving, for the owner's room.
    pub to_owner: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// Dropping it ends the link.
    pub _link: Box<dyn std::any::Any + Send + Sync>,
}

pub(super) struct Participant {
    pub user_id: String,
    pub joined_at: Instant,
    pub can_subscribe: bool,
    pub display_name: String,
    pub notifier: Arc<dyn Notifier>,
    pub publisher: TransportId,
    pub subscriber: TransportId,
    pub producers: Vec<ProducerView>,
    pub dialect: Dialect,
    pub ortc: OrtcParticipant,
    pub downlink: Downlink,
    /// A participant of another node: on a relay, one of the owner's; on the owner, a relay
    /// node's (`via_watch` says which link brought it).
    pub remote: bool,
    pub via_watch: Option<u64>,
}

/// What the media worker last said about this participant's subscriber link.
#[derive(Default)]
pub(super) struct Downlink {
    /// The send-side estimate (None until the estimator reported one).
    pub estimate_bps: Option<u64>,
    /// Producers whose video is paused for bandwidth.
    pub paused: Vec<ProducerId>,
}

/// ORTC ids this participant handed out: opaque strings, mapped to ours.
#[derive(Default)]
pub(super) struct OrtcParticipant {
    pub send_transport: Option<String>,
    pub recv_transport: Option<String>,
    /// consumerId → producer.
    pub consumers: HashMap<String, ProducerId>,
}

#[derive(Default)]
pub(super) struct State {
    pub rooms: HashMap<String, Room>,
    /// Which participant a transport belongs to, for routing media events.
    pub transports: HashMap<TransportId, (String, String)>,
}

impl Participant {
    pub fn view(&self, participant_id: &str) -> ParticipantView {
        ParticipantView {
            participant_id: participant_id.to_string(),
            user_id: self.user_id.clone(),
            display_name: self.display_name.clone(),
            producers: self.producers.clone(),
        }
    }

    pub fn owns(&self, producer: ProducerId) -> bool {
        self.producers.iter().any(|p| p.producer_id == producer)
    }
}

impl Room {
    /// Tell everyone but `except` that `producer` ended; ORTC consumers of it also get
    /// `ConsumerClosed`. Returns the WHEP players left with nothing to play: their sessions
    /// should end.
    pub fn announce_producer_closed(
        &mut self,
        producer: ProducerId,
        owner: &str,
        except: Option<&str>,
    ) -> Vec<String> {
        let mut orphans = Vec::new();
        self.tell_watchers(&Notice::ProducerClosed {
            producer_id: producer,
            participant_id: owner.to_string(),
        });
        for (id, p) in self.participants.iter_mut() {
            if except == Some(id.as_str()) {
                continue;
            }
            p.notifier.notify(Notice::ProducerClosed {
                producer_id: producer,
                participant_id: owner.to_string(),
            });
            let closed: Vec<String> = p
                .ortc
                .consumers
                .iter()
                .filter(|(_, pr)| **pr == producer)
                .map(|(c, _)| c.clone())
                .collect();
            for consumer_id in closed {
                p.ortc.consumers.remove(&consumer_id);
                p.notifier.notify(Notice::ConsumerClosed {
                    consumer_id,
                    producer_id: producer,
                });
                if p.dialect.is_http() && p.ortc.consumers.is_empty() {
                    orphans.push(id.clone());
                }
            }
        }
        orphans
    }

    /// Tell every participant but `except`, and the node links relaying the room.
    pub fn broadcast(&self, notice: &Notice, except: Option<&str>) {
        let broadcast = Broadcast::new(notice.clone());
        for (id, p) in &self.participants {
            if except != Some(id.as_str()) {
                p.notifier.notify_broadcast(&broadcast);
            }
        }
        self.tell_watchers(notice);
    }

    pub fn tell_watchers(&self, notice: &Notice) {
        for (_, watcher) in &self.watchers {
            watcher.notify(notice.clone());
        }
    }

    /// Participants connected to this node (a relayed room's owner-side ones excluded).
    pub fn local_participants(&self) -> usize {
        self.participants.values().filter(|p| !p.remote).count()
    }

    /// Nobody here needs the room any more: no local participant, no relaying node.
    pub fn unused(&self) -> bool {
        self.local_participants() == 0 && self.watchers.is_empty()
    }

    /// Every producer in the room with its owner, except those of `except`.
    pub fn producers(&self, except: Option<&str>) -> Vec<(ProducerId, String)> {
        self.participants
            .iter()
            .filter(|(id, _)| except != Some(id.as_str()))
            .flat_map(|(id, p)| p.producers.iter().map(|pr| (pr.producer_id, id.clone())))
            .collect()
    }

    /// The participant owning `producer`, if any.
    pub fn owner_of(&self, producer: ProducerId) -> Option<&str> {
        self.participants
            .iter()
            .find(|(_, p)| p.owns(producer))
            .map(|(id, _)| id.as_str())
    }
}
