//! The Django backend, reached two optional ways (both off unless configured):
//!
//! * [`Webhooks`]: signed, fire-and-forget event notifications (`room.started`,
//!   `participant.joined`, ...) POSTed to one URL, in order, from a background task with
//!   retries. The caller never waits on the network.
//! * [`RoomLookup`]: `GET {base}{path}{room_id}/` with the participant's bearer token, returning
//!   the room's metadata (or `None` when Django does not know the room).
//!
//! # Webhook wire format
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! X-SFU-Event: participant.joined
//! X-SFU-Delivery: 0b5c...   (the body's "id"; the same on every retry: deduplicate on it)
//! X-SFU-Signature: t=1700000000,v1=<hex HMAC-SHA256(secret, "1700000000." + raw body)>
//!
//! {"id":"0b5c...","type":"participant.joined","createdAt":1699999999,
//!  "data":{"roomId":"r1","participantId":"p1","userId":"42","displayName":"Ada"}}
//! ```
//!
//! Any 2xx acknowledges. Network errors, timeouts, 5xx, 408 and 429 are retried with exponential
//! backoff; any other status gives up at once. `t` is the time of the attempt (not of the event),
//! so a receiver can reject replays with a small tolerance, as [`verify_signature`] does. A
//! receiver in Django checks it the same way:
//!
//! ```python
//! import hashlib, hmac, time
//!
//! def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
//!     parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
//!     ts = [v for k, v in parts if k.strip() == "t"]
//!     sigs = [v for k, v in parts if k.strip() == "v1"]
//!     if len(ts) != 1 or not ts[0].isdigit() or abs(time.time() - int(ts[0])) > tolerance:
//!         return False
//!     signed = ts[0].encode() + b"." + body
//!     expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
//!     return any(hmac.compare_digest(expected, s) for s in sigs)
//! ```
//!
//! (use `request.body`, the raw bytes, never re-serialised JSON).

use std::error::Error as _;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::Hmac;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the event type, e.g. `room.started`.
pub const EVENT_HEADER: &str = "X-SFU-Event";
/// Header carrying the delivery id (equal to the body's `id`, stable across retries).
pub const DELIVERY_HEADER: &str = "X-SFU-Delivery";
/// Header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "X-SFU-Signature";
/// Default path for room lookups, appended to the Django base URL.
pub const DEFAULT_ROOM_LOOKUP_PATH: &str = "/api/rooms/";

/// Backoff between webhook attempts never exceeds this (including `Retry-After`).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Room lookup bodies larger than this are rejected.
const MAX_LOOKUP_BODY: usize = 1024 * 1024;
/// How much of a failed webhook response body goes into the log.
const LOGGED_BODY: usize = 256;

fn user_agent() -> String {
    format!("sfu/{}", env!("CARGO_PKG_VERSION"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `err` and its sources, joined (reqwest's `Display` hides the interesting part).
fn error_chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Read at most `limit` bytes of the body; the flag says whether more was cut off.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

mod lookup;
mod signature;
mod webhooks;

pub use lookup::{LookupError, RoomLookup, RoomMetadata};
pub use signature::{signature_header, verify_signature};
pub use webhooks::{WebhookConfig, WebhookEvent, WebhookStats, Webhooks};
