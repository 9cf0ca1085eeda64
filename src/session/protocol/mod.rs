//! Signaling protocol, every wire name in one place: the seed's envelope
//! `{type, data, requestId, error}`, the error codes, the requests ([`requests`]) and the
//! payloads of replies and notifications ([`wire`]). The same types serve WebSocket and
//! WebTransport.

pub mod requests;
pub mod wire;

pub use requests::*;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stable, machine-readable error codes. Clients switch on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    ParseError,
    /// Valid JSON, but not an object with a string `type`.
    InvalidMessage,
    /// `type` names no message this server knows.
    UnknownType,
    /// `data` is missing fields, has mistyped fields or values out of range.
    InvalidPayload,
    /// The frame is larger than MAX_MESSAGE_SIZE.
    MessageTooLarge,
    /// A request other than `authenticate` arrived before authentication.
    NotAuthenticated,
    /// `authenticate` on an already authenticated connection.
    AlreadyAuthenticated,
    /// The JWT is malformed or lacks required claims.
    InvalidToken,
    /// The JWT's signature does not verify (forged or signed with another key).
    TokenSignatureInvalid,
    /// The JWT says `alg: none`.
    TokenUnsigned,
    /// The JWT's algorithm is not one this server accepts (HS256/RS256 as configured).
    TokenAlgorithmNotAllowed,
    /// The JWT's `exp` is in the past.
    TokenExpired,
    /// The JWT's `nbf` is in the future.
    TokenNotYetValid,
    /// The token's grants do not include this room.
    RoomAccessDenied,
    /// The token may not create rooms.
    CreateRoomDenied,
    /// The token may not publish (this kind of) media.
    PublishDenied,
    /// The token may not subscribe to media.
    SubscribeDenied,
    /// The operation needs the room-admin grant.
    AdminRequired,
    ParticipantNotFound,
    /// Too many requests; `data.retryAfterMs` says when to try again.
    RateLimited,
    /// The server holds MAX_ROOMS rooms already.
    TooManyRooms,
    /// The server is draining for shutdown; reconnect elsewhere.
    ServerShuttingDown,
    /// The Django room lookup failed (Django unreachable or erroring).
    RoomLookupFailed,
    /// The room lives on another node: reconnect to `data.nodeUrl` and join there.
    RoomOnOtherNode,
    /// The cross-node room directory (Redis) is unreachable; local rooms keep working.
    DirectoryUnavailable,
    /// This node relays the room but its owner node did not answer; join again shortly (a
    /// dead owner's rooms are taken over within seconds).
    OwnerUnreachable,
    /// The resume token is unknown or expired, or missed messages are no longer buffered:
    /// authenticate and join again.
    ResumeFailed,
    RoomNotFound,
    RoomExists,
    RoomFull,
    NotInRoom,
    AlreadyInRoom,
    /// An SDP offer or answer that could not be parsed or applied.
    InvalidSdp,
    /// A subscriber answer arrived while no offer was outstanding.
    NoPendingOffer,
    ProducerNotFound,
    /// ORTC parameters (rtpParameters, dtlsParameters, rtpCapabilities) that are malformed or
    /// inconsistent; the message names the field.
    InvalidRtpParameters,
    /// No codec both sides support (unknown codec published, or the consumer cannot decode).
    UnsupportedCodec,
    /// `transportId` names no transport of this participant (or of the wrong direction).
    TransportNotFound,
    /// `consumerId` names no consumer of this participant.
    ConsumerNotFound,
    /// The request needs a WebTransport session (`publishFrames`: frames travel on its streams).
    #[serde(rename = "WEBTRANSPORT_REQUIRED")]
    WebTransportRequired,
    /// The server could not complete the request (worker gone, internal failure).
    InternalError,
}

/// Longest human message in an error reply.
const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// What arrives from a client, before `data` is interpreted.
#[derive(Debug, Deserialize)]
pub struct InboundEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(rename = "requestId", default)]
    pub request_id: Option<Value>,
}

/// What the server sends. `requestId` echoes the request's so clients can match replies.
#[derive(Debug, Clone, Serialize)]
pub struct OutboundEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    // No `seq` here: the session's sink numbers what it sends (session/sink.rs) and adds
    // `"seq"` as the last member, so one rendering serves every session of a broadcast.
}

impl OutboundEnvelope {
    pub fn message(kind: &str, data: impl Serialize, request_id: Option<Value>) -> Self {
        OutboundEnvelope {
            kind: kind.to_string(),
            data: Some(serde_json::to_value(data).unwrap_or(Value::Null)),
            request_id,
            error: None,
        }
    }

    pub fn notification(kind: &str, data: impl Serialize) -> Self {
        Self::message(kind, data, None)
    }

    /// `{type: "error", error: <human message>, data: {code, requestType}}`.
    pub fn error(
        code: ErrorCode,
        message: impl Into<String>,
        request_type: Option<&str>,
        request_id: Option<Value>,
    ) -> Self {
        // Messages may quote client input (serde names the offending value): bound them.
        let message = requests::bounded(&message.into(), MAX_ERROR_MESSAGE_CHARS);
        OutboundEnvelope {
            kind: "error".to_string(),
            data: Some(serde_json::json!({
                "code": code,
                "message": message,
                "requestType": request_type,
            })),
            request_id,
            error: Some(message),
        }
    }

    /// Attach extra machine-readable fields to an error's `data` (e.g. `retryAfterMs`).
    pub fn with_error_detail(mut self, key: &str, value: Value) -> Self {
        if let Some(Value::Object(map)) = self.data.as_mut() {
            map.insert(key.to_string(), value);
        }
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelope serializes")
    }
}
