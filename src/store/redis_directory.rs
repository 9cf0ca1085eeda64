//! Cross-node room state in Redis (enabled by REDIS_URL; without it every room is local).
//!
//! Modelled on LiveKit's redis router: a node registry of hashes with a TTL refreshed by
//! heartbeats, and a room → owning node map. A room lives on exactly one node; a client whose
//! signaling reaches another node is *redirected* to the owner (joinRoom answers
//! `ROOM_ON_OTHER_NODE` with the owner's URL). We redirect rather than forward signaling
//! because media must reach the owner's UDP ports anyway, so the client has to know the owner;
//! forwarding would add a hop to every message and a second failure point for nothing.
//!
//! Keys:
//! - `sfu:nodes` (set of node ids), `sfu:node:<id>` (hash url, load, updatedMs; TTL NODE_TTL)
//! - `sfu:room:<id>` (hash node, name, description, maxParticipants, createdMs)
//! - `sfu:room:<id>:participants` (set of participant ids)
//! - `sfu:room:<id>:relays` (set of node ids relaying the room, `cluster`)
//! - the node hash also holds `linkUrl` and `linkCertHash`: where it accepts node links
//!
//! Ownership is valid while the owner's node key lives. When a node dies its key expires and
//! the next join through any node takes the room over (atomically, by Lua compare-and-set).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::Mutex;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::room::ports::{
    Claim, Directory, DirectoryError, DirectoryHealth, Placement, RoomDefinition,
};
use crate::room::DEFAULT_MAX_PARTICIPANTS;

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A node key lives this long without a heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// How often a node refreshes its registry entry (and reconnects after an outage).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

impl From<redis::RedisError> for DirectoryError {
    fn from(e: redis::RedisError) -> Self {
        DirectoryError(e.to_string())
    }
}

/// Where a node accepts node links (`cluster`), as its registry entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEndpoint {
    /// `https://host:port/relay`.
    pub url: String,
    /// SHA-256 of its self-signed certificate; `None` for a CA-verified one.
    pub cert_hash: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    pub url: String,
    pub load: u64,
}

pub struct RedisDirectory {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    pub node_id: String,
    pub public_url: String,
}

/// 64 hex digits into a SHA-256.
fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn node_key(id: &str) -> String {
    format!("sfu:node:{id}")
}

fn room_key(id: &str) -> String {
    format!("sfu:room:{id}")
}

/// Set the owner to `me` only if it is still `expected` (takeover of a dead node's room).
const TAKE_OVER: &str = r#"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'node', ARGV[2])
  return 1
end
return 0
"#;

/// Delete the room record only if we still own it.
const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return 1
end
return 0
"#;

impl RedisDirectory {
    pub fn new(url: &str, node_id: String, public_url: String) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL: {e}"))?;
        Ok(RedisDirectory {
            client,
            conn: Mutex::new(None),
            node_id,
            public_url,
        })
    }

    /// A connection, (re)established on demand. Short timeouts: callers are signaling requests.
    async fn conn(&self) -> Result<ConnectionManager, DirectoryError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Refresh this node's registry entry with its current load (participants) and where it
    /// accepts node links (`cluster`), if it does.
    pub async fn heartbeat(
        &self,
        load: u64,
        link: Option<&LinkEndpoint>,
    ) -> Result<(), DirectoryError> {
        let mut conn = self.conn().await?;
        let key = node_key(&self.node_id);
        let now = unix_millis();
        let hash = link
            .and_then(|l| l.cert_hash)
            .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .unwrap_or_default();
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("url", self.public_url.clone()),
                    ("load", load.to_string()),
                    ("updatedMs", now.to_string()),
                    ("linkUrl", link.map(|l| l.url.clone()).unwrap_or_default()),
                    ("linkCertHash", hash),
                ],
            )
            .expire(&key, NODE_TTL.as_secs() as i64)
            .sadd("sfu:nodes", &self.node_id)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Where live node `node` accepts node links (None: it does not, or it is gone).
    pub async fn link_endpoint(&self, node: &str) -> Result<Option<LinkEndpoint>, DirectoryError> {
        let mut conn = self.conn().await?;
        let fields: HashMap<String, String> = conn.hgetall(node_key(node)).await?;
        let Some(url) = fields.get("linkUrl").filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let cert_hash = fields.get("linkCertHash").and_then(|h| parse_hash(h));
        Ok(Some(LinkEndpoint {
            url: url.clone(),
            cert_hash,
        }))
    }

    /// Record (or forget) that this node relays `room_id` (`sfu:room:<id>:relays`), in the
    /// background like participant bookkeeping.
    pub fn set_relaying(self: &Arc<Self>, room_id: &str, relaying: bool) {
        let (me, key) = (self.clone(), format!("{}:relays", room_key(room_id)));
        tokio::spawn(async move {
            let Ok(mut conn) = me.conn().await else {
                return;
            };
            let _: Result<i64, _> = if relaying {
                conn.sadd(&key, &me.node_id).await
            } else {
                conn.srem(&key, &me.node_id).await
            };
        });
    }

    /// Remove this node from the registry (graceful shutdown).
    pub async fn deregister(&self) -> Result<(), DirectoryError> {
        let mut conn = self.conn().await?;
        redis::pipe()
            .del(node_key(&self.node_id))
            .srem("sfu:nodes", &self.node_id)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, DirectoryError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = conn.smembers("sfu:nodes").await?;
        let mut nodes = Vec::new();
        for id in ids {
            let fields: HashMap<String, String> = conn.hgetall(node_key(&id)).await?;
            match fields.get("url") {
                Some(url) => nodes.push(NodeInfo {
                    id,
                    url: url.clone(),
                    load: fields.get("load").and_then(|l| l.parse().ok()).unwrap_or(0),
                }),
                // Expired: forget it.
                None => {
                    let _: i64 = conn.srem("sfu:nodes", &id).await?;
                }
            }
        }
        Ok(nodes)
    }

    /// Register a new room on the least-loaded live node (this one on a tie). `Ok(Err(()))`
    /// means the id is taken by a live owner.
    pub async fn create_room(
        &self,
        record: RoomDefinition,
    ) -> Result<Result<NodeInfo, ()>, DirectoryError> {
        let nodes = self.live_nodes().await?;
        let me = NodeInfo {
            id: self.node_id.clone(),
            url: self.public_url.clone(),
            load: nodes
                .iter()
                .find(|n| n.id == self.node_id)
                .map(|n| n.load)
                .unwrap_or(0),
        };
        let target = nodes
            .into_iter()
            .filter(|n| n.load < me.load)
            .min_by_key(|n| n.load)
            .unwrap_or(me);
        let mut conn = self.conn().await?;
        let key = room_key(&record.room_id);
        let created: bool = conn.hset_nx(&key, "node", &target.id).await?;
        if !created {
            // Taken — unless its owner died, in which case the id is free again.
            let owner: Option<String> = conn.hget(&key, "node").await?;
            let alive = match &owner {
                Some(owner) => conn.exists(node_key(owner)).await?,
                None => false,
            };
            if alive {
                return Ok(Err(()));
            }
            let _: () = conn.hset(&key, "node", &target.id).await?;
        }
        let _: () = conn
            .hset_multiple(
                &key,
                &[
                    ("name", record.name.clone()),
                    (
                        "description",
                        record.description.clone().unwrap_or_default(),
                    ),
                    ("maxParticipants", record.max_participants.to_string()),
                    ("createdMs", unix_millis().to_string()),
                ],
            )
            .await?;
        Ok(Ok(target))
    }

    /// Where `room_id` lives; takes it over when its owner is dead.
    pub async fn locate(&self, room_id: &str) -> Result<Placement, DirectoryError> {
        let mut conn = self.conn().await?;
        let key = room_key(room_id);
        let fields: HashMap<String, String> = conn.hgetall(&key).await?;
        let Some(owner) = fields.get("node").cloned() else {
            return Ok(Placement::Unknown);
        };
        let record = || RoomDefinition {
            room_id: room_id.to_string(),
            name: fields
                .get("name")
                .cloned()
                .unwrap_or_else(|| room_id.to_string()),
            description: fields.get("description").filter(|d| !d.is_empty()).cloned(),
            max_participants: fields
                .get("maxParticipants")
                .and_then(|m| m.parse().ok())
                .unwrap_or(DEFAULT_MAX_PARTICIPANTS),
        };
        if owner == self.node_id {
            return Ok(Placement::Here(record()));
        }
        let url: Option<String> = conn.hget(node_key(&owner), "url").await?;
        if let Some(url) = url {
            return Ok(Placement::Elsewhere { node: owner, url });
        }
        let taken: i64 = redis::Script::new(TAKE_OVER)
            .key(&key)
            .arg(&owner)
            .arg(&self.node_id)
            .invoke_async(&mut conn)
            .await?;
        if taken == 1 {
            tracing::warn!(room = room_id, dead_owner = %owner, "took over a room from a dead node");
            let _: i64 = conn.del(format!("{key}:participants")).await?;
            return Ok(Placement::Here(record()));
        }
        // Someone else took it over first: ask again.
        Box::pin(self.locate(room_id)).await
    }

    /// The room ended here: drop its record if we still own it.
    async fn release_room(&self, room_id: &str) -> Result<(), DirectoryError> {
        let mut conn = self.conn().await?;
        let key = room_key(room_id);
        let _: i64 = redis::Script::new(RELEASE)
            .key(&key)
            .key(format!("{key}:participants"))
            .key(format!("{key}:relays"))
            .arg(&self.node_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Add (`joined`) or remove a participant in the room's participant set.
    async fn track_participant(
        &self,
        room_id: &str,
        participant_id: &str,
        joined: bool,
    ) -> Result<(), DirectoryError> {
        let mut conn = self.conn().await?;
        let key = format!("{}:participants", room_key(room_id));
        let _: i64 = if joined {
            conn.sadd(key, participant_id).await?
        } else {
            conn.srem(key, participant_id).await?
        };
        Ok(())
    }

    /// Reachability and round-trip time, for `/health`.
    pub async fn ping(&self) -> Result<Duration, DirectoryError> {
        let started = std::time::Instant::now();
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(started.elapsed())
    }
}

/// The directory port: claims and lookups are awaited; bookkeeping runs in the background so
/// a Redis outage never slows signaling.
impl Directory for Arc<RedisDirectory> {
    fn claim(&self, room: RoomDefinition) -> BoxFuture<'_, Result<Claim, DirectoryError>> {
        Box::pin(async move {
            Ok(match self.create_room(room).await? {
                Err(()) => Claim::Taken,
                Ok(node) if node.id == self.node_id => Claim::Here {
                    url: Some(node.url),
                },
                Ok(node) => Claim::Elsewhere { url: node.url },
            })
        })
    }

    fn locate<'a>(&'a self, room_id: &'a str) -> BoxFuture<'a, Result<Placement, DirectoryError>> {
        Box::pin(RedisDirectory::locate(self, room_id))
    }

    fn participant_joined(&self, room_id: &str, participant_id: &str) {
        let (me, room, participant) = (
            self.clone(),
            room_id.to_string(),
            participant_id.to_string(),
        );
        background(async move { me.track_participant(&room, &participant, true).await });
    }

    fn participant_left(&self, room_id: &str, participant_id: &str) {
        let (me, room, participant) = (
            self.clone(),
            room_id.to_string(),
            participant_id.to_string(),
        );
        background(async move { me.track_participant(&room, &participant, false).await });
    }

    fn release(&self, room_id: &str) {
        let (me, room) = (self.clone(), room_id.to_string());
        background(async move { me.release_room(&room).await });
    }

    fn health(&self) -> BoxFuture<'_, DirectoryHealth> {
        Box::pin(async move {
            DirectoryHealth {
                kind: "redis",
                node_id: Some(self.node_id.clone()),
                latency: self.ping().await.map_err(|e| e.to_string()),
            }
        })
    }
}

fn background(
    update: impl std::future::Future<Output = Result<(), DirectoryError>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = update.await {
            tracing::warn!(error = %e, "room directory update failed");
        }
    });
}
