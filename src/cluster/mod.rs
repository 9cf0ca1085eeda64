//! One room over several nodes (README "One room over several nodes"). With REDIS_URL a room
//! is owned by one node; with RELAY_ROOMS, another node that a client joins through *relays*
//! the room instead of redirecting the client: it opens a **node link** to the owner and
//! serves its own clients from there.
//!
//! The link is one WebTransport session (QUIC) from the relay node to the owner's
//! WebTransport endpoint, path [`LINK_PATH`]:
//! - one bidirectional stream of control messages (`wire.rs`): the relay's hello with a node
//!   token, the owner's snapshot of the room and then its notices (participants, producers),
//!   and back the relay's exports, keyframe requests and layer wants;
//! - RTP packets as QUIC datagrams, one per packet and *per link*, whatever the number of
//!   subscribers behind it (a packet too large for a datagram goes on a unidirectional
//!   stream). Unreliable like RTP itself, so a loss costs one packet, never a stall, and the
//!   relay node's subscribers NACK it from the relay as from any SFU.
//!
//! Why QUIC rather than a str0m peer between the SFUs: the link carries every simulcast layer
//! of every producer with the publisher's own sequence numbers, so the relay's fan-out is the
//! same code as a mirror between two workers of one node (`media/core/relay.rs`); a WebRTC
//! peer would make the owner a simulcast *sender* and renegotiate per producer. QUIC gives
//! encryption, congestion control and a control stream in one connection we already serve.
//!
//! On the media plane a link is one more relay destination (`media/links.rs`): the owner's
//! worker feeds it like a mirroring worker; on the relay node, mirrors of the owner's
//! producers send their keyframe requests and wants to it. Trust: the relay signs its hello
//! with the secret all nodes share (DJANGO_JWT_SECRET, audience [`TOKEN_AUDIENCE`]); it
//! pins the owner's self-signed certificate by the hash the owner publishes in Redis.

mod owner;
mod relay;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::media::MediaRouter;
use crate::room::Rooms;
pub use crate::store::LinkEndpoint;
use crate::store::RedisDirectory;

/// WebTransport path of node links on every node's endpoint.
pub const LINK_PATH: &str = "/relay";
/// Audience of node tokens: a user token is never a node token, nor the other way round.
pub const TOKEN_AUDIENCE: &str = "sfu-node-link";
const TOKEN_TTL_SECS: u64 = 60;

/// Counters of node links (`/status` `cluster`).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Links this node serves as a room's owner.
    pub owner_links: AtomicU64,
    /// Links this node opened to relay a room.
    pub relay_links: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub datagrams_in: AtomicU64,
    /// Packets too large for a datagram, sent on the link's packet stream instead.
    pub oversize_out: AtomicU64,
    /// Packets dropped: unreadable, of an unknown producer, or before their codec was known.
    pub dropped_in: AtomicU64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStats {
    pub owner_links: u64,
    pub relay_links: u64,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    pub oversize_out: u64,
    pub dropped_in: u64,
}

/// What a relay node proves in its hello.
#[derive(Debug, Serialize, Deserialize)]
struct NodeClaims {
    aud: String,
    /// The relay node's id.
    sub: String,
    /// The one room the link is for.
    room: String,
    exp: u64,
}

/// The shared secret, as node tokens use it.
struct NodeKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl NodeKeys {
    fn new(secret: &str) -> Self {
        NodeKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token naming node `node`, for a link to `room_id`.
    fn issue(&self, node: &str, room_id: &str) -> String {
        let claims = NodeClaims {
            aud: TOKEN_AUDIENCE.to_string(),
            sub: node.to_string(),
            room: room_id.to_string(),
            exp: crate::auth::unix_now() + TOKEN_TTL_SECS,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signing")
    }

    /// The node a hello's token names, if it is a valid node token for `room_id`.
    fn verify(&self, token: &str, room_id: &str) -> Result<String, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = 5;
        let data = decode::<NodeClaims>(token, &self.decoding, &validation)
            .map_err(|e| format!("node token refused: {e}"))?;
        if data.claims.room != room_id {
            return Err("node token is for another room".into());
        }
        Ok(data.claims.sub)
    }
}

/// Node links of this node, both ways.
pub struct Cluster {
    rooms: Arc<Rooms>,
    media: MediaRouter,
    directory: Arc<RedisDirectory>,
    keys: NodeKeys,
    counters: LinkCounters,
}

impl Cluster {
    /// Links need the secret every node shares; without one (RS256-only) there are none.
    pub(crate) fn new(
        rooms: Arc<Rooms>,
        media: MediaRouter,
        directory: Arc<RedisDirectory>,
        secret: &str,
    ) -> Arc<Self> {
        Arc::new(Cluster {
            rooms,
            media,
            directory,
            keys: NodeKeys::new(secret),
            counters: LinkCounters::default(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.directory.node_id
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.counters;
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        LinkStats {
            owner_links: get(&c.owner_links),
            relay_links: get(&c.relay_links),
            datagrams_out: get(&c.datagrams_out),
            datagrams_in: get(&c.datagrams_in),
            oversize_out: get(&c.oversize_out),
            dropped_in: get(&c.dropped_in),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_name_their_room_and_are_not_user_tokens() {
        let keys = NodeKeys::new("shared-secret-0123456789");
        let token = keys.issue("node-b", "r1");
        assert_eq!(keys.verify(&token, "r1").unwrap(), "node-b");
        assert!(keys
            .verify(&token, "r2")
            .unwrap_err()
            .contains("another room"));
        let other = NodeKeys::new("another-secret-0123456789");
        assert!(
            other.verify(&token, "r1").is_err(),
            "signed with another secret"
        );
        // A user token (no audience) is no node token, and a node token names no user.
        let auth = crate::auth::Authenticator::new(Some("shared-secret-0123456789"), None).unwrap();
        let user = auth.issue_for("alice", None, 60).unwrap();
        assert!(keys.verify(&user, "r1").is_err());
        assert!(auth.verify(&token).is_err());
        assert!(keys.verify("not a jwt", "r1").is_err());
    }
}
