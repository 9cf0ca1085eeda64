//! What the room needs from the world, as small traits it owns. Adapters live with the
//! technology they wrap: `store` (directory: memory | Redis), `audit` and `integrations`
//! (event sinks, the Django room catalog), `session` (notifiers that speak the wire).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::events::{Notice, RoomEvent};

/// How the room reaches one participant, whatever carries its signaling (WebSocket,
/// WebTransport, or nothing for WHIP/WHEP). Must not block.
pub trait Notifier: Send + Sync {
    fn notify(&self, notice: Notice);

    /// The same notice told to many participants (see [`Broadcast`]).
    fn notify_broadcast(&self, broadcast: &Broadcast) {
        self.notify(broadcast.notice.clone());
    }
}

/// One notice on its way to many participants. A notifier may render it once for all of them
/// and keep the rendering here: a room of N that sees N joins then holds N renderings of each
/// in the sessions' replay rings, not N², and serializes each once.
pub struct Broadcast {
    pub notice: Notice,
    pub rendered: OnceLock<Arc<str>>,
}

impl Broadcast {
    pub fn new(notice: Notice) -> Self {
        Broadcast {
            notice,
            rendered: OnceLock::new(),
        }
    }
}

/// A notifier for participants nobody listens to (WHIP/WHEP sessions have no signaling).
pub struct Unheard;

impl Notifier for Unheard {
    fn notify(&self, _notice: Notice) {}
}

/// Where audit rows, webhooks and other observers learn what happened. Must not block.
pub trait EventSink: Send + Sync {
    fn record(&self, event: &RoomEvent);
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("room directory unavailable: {0}")]
pub struct DirectoryError(pub String);

/// A room's definition as the directory stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomDefinition {
    pub room_id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_participants: u32,
}

/// Outcome of claiming a new room id in the directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The id is taken already.
    Taken,
    /// This node hosts it; `url` is this node's public URL when there are several nodes.
    Here { url: Option<String> },
    /// A less loaded node hosts it: clients join at `url`.
    Elsewhere { url: String },
}

/// Outcome of asking where a room lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Unknown to the directory.
    Unknown,
    /// Ours (possibly just taken over from a dead node): create it here from the definition.
    Here(RoomDefinition),
    /// Owned by a live node elsewhere, reachable at `url`.
    Elsewhere { node: String, url: String },
}

/// How the directory is doing, for `/health` and `/readyz`.
#[derive(Debug, Clone)]
pub struct DirectoryHealth {
    /// `memory` or `redis`.
    pub kind: &'static str,
    pub node_id: Option<String>,
    /// Round trip, or why it failed.
    pub latency: Result<Duration, String>,
}

/// Which node hosts which room. One implementation is chosen at start-up.
pub trait Directory: Send + Sync {
    fn claim(&self, room: RoomDefinition) -> BoxFuture<'_, Result<Claim, DirectoryError>>;
    fn locate<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Placement, DirectoryError>>;
    /// Bookkeeping the room does not wait for: implementations do it in the background, so
    /// a directory outage never slows signaling.
    fn participant_joined(&self, room_id: &str, participant_id: &str);
    fn participant_left(&self, room_id: &str, participant_id: &str);
    fn release(&self, room_id: &str);
    fn health(&self) -> BoxFuture<'_, DirectoryHealth>;
}

/// Room metadata an external catalog (Django) holds for rooms it defines.
#[derive(Debug, Clone)]
pub struct CatalogRoom {
    pub name: String,
    pub description: Option<String>,
    pub max_participants: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum LookupError {
    /// The catalog says this token may not see the room.
    Denied,
    /// The catalog could not be asked or answered nonsense.
    Failed(String),
}

/// Rooms defined elsewhere, created here on first join.
pub trait RoomCatalog: Send + Sync {
    fn lookup<'a>(
        &'a self,
        room_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<CatalogRoom>, LookupError>>;
}

/// On a node that relays rooms of other nodes (RELAY_ROOMS): how the room layer reaches the
/// owner of a room (`cluster` implements it over a node link).
pub trait OwnerLinks: Send + Sync {
    /// Link to `node`, the owner of `room_id`: the room as it stands, then what happens in it.
    fn open<'a>(
        &'a self,
        room_id: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<RelayFeed, super::RoomError>>;
}

/// An owner's room as a node link delivers it.
pub struct RelayFeed {
    pub definition: RoomDefinition,
    pub participants: Vec<super::ParticipantView>,
    /// What happens next: participants joining and leaving, producers added, closed and
    /// paused, the room closing. Ends when the link does (the owner is gone).
    pub notices: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    /// Where the room tells the owner who joins and leaves here (`ParticipantJoined`,
    /// `ParticipantLeft` of this node's participants), so the owner's room shows them too.
    pub to_owner: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// Dropping it ends the link.
    pub link: Box<dyn std::any::Any + Send + Sync>,
}
