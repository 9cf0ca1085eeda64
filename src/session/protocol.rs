//! Signaling protocol: the seed's envelope `{type, data, requestId, error}` and every message type.
//!
//! Parsing happens in two steps so that each kind of bad input gets its own error code:
//! the envelope first (malformed JSON, missing `type`), then `data` against the type's schema
//! (missing or mistyped fields). The same types serve WebSocket and, later, WebTransport.

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
    /// The server could not complete the request (worker gone, internal failure).
    InternalError,
}

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
    /// Per-session sequence number of server → client messages (for resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl OutboundEnvelope {
    pub fn message(kind: &str, data: impl Serialize, request_id: Option<Value>) -> Self {
        OutboundEnvelope {
            kind: kind.to_string(),
            data: Some(serde_json::to_value(data).unwrap_or(Value::Null)),
            request_id,
            error: None,
            seq: None,
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
        let message = message.into();
        OutboundEnvelope {
            kind: "error".to_string(),
            data: Some(serde_json::json!({
                "code": code,
                "message": message,
                "requestType": request_type,
            })),
            request_id,
            error: Some(message),
            seq: None,
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

// ---------------------------------------------------------------------------------------------
// Requests (client → server). Field names are camelCase on the wire, as in the seed.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authenticate {
    pub token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRoom {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub max_participants: Option<u32>,
    /// Optional client-chosen id (`[A-Za-z0-9_-]{1,64}`); a UUID is generated otherwise.
    #[serde(default)]
    pub room_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRoom {
    pub room_id: String,
    pub display_name: String,
}

/// The client's offer for its publisher PeerConnection (it sends, we receive).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherOffer {
    pub sdp: String,
}

/// The client's answer to our `subscriberOffer` (we send, it receives).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberAnswer {
    pub sdp: String,
}

/// First message on a new connection to continue a session after a drop.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resume {
    pub token: String,
    /// Highest `seq` the client received; everything after it is replayed.
    pub last_seq: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KickParticipant {
    pub participant_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetPreferredLayer {
    pub producer_id: String,
    pub layer: LayerPreference,
}

// ---- The ORTC dialect (the seed's mediasoup-style messages, for mediasoup-client). ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportDirection {
    Send,
    Recv,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebRtcTransport {
    #[serde(default)]
    pub room_id: Option<String>,
    pub direction: TransportDirection,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectWebRtcTransport {
    pub transport_id: String,
    pub dtls_parameters: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Publish {
    #[serde(default)]
    pub room_id: Option<String>,
    pub kind: MediaKindName,
    pub rtp_parameters: crate::media::ortc::RtpParameters,
    #[serde(default)]
    pub transport_id: Option<String>,
    /// Opaque to us, as in mediasoup.
    #[serde(default)]
    pub app_data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Consume {
    pub producer_id: String,
    pub rtp_capabilities: crate::media::ortc::RtpCapabilities,
    #[serde(default)]
    pub transport_id: Option<String>,
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerRef {
    pub consumer_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProducerRef {
    pub producer_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetConsumerPreferredLayers {
    pub consumer_id: String,
    pub spatial_layer: u8,
    #[serde(default)]
    pub temporal_layer: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportRef {
    pub transport_id: String,
}

/// Which simulcast layer a subscriber wants. `auto` follows what the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerPreference {
    Auto,
    Low,
    Medium,
    High,
}

/// Every request type, parsed from `{type, data}`.
#[derive(Debug)]
pub enum Request {
    Authenticate(Authenticate),
    Resume(Resume),
    CreateRoom(CreateRoom),
    JoinRoom(JoinRoom),
    LeaveRoom,
    PublisherOffer(PublisherOffer),
    CreateWebRtcTransport(CreateWebRtcTransport),
    ConnectWebRtcTransport(ConnectWebRtcTransport),
    Publish(Box<Publish>),
    Consume(Box<Consume>),
    PauseConsumer(ConsumerRef),
    ResumeConsumer(ConsumerRef),
    PauseProducer(ProducerRef),
    ResumeProducer(ProducerRef),
    CloseProducer(ProducerRef),
    SetConsumerPreferredLayers(SetConsumerPreferredLayers),
    RestartIce(TransportRef),
    SubscriberAnswer(SubscriberAnswer),
    SetPreferredLayer(SetPreferredLayer),
    KickParticipant(KickParticipant),
    CloseRoom,
    Ping,
}

/// A request that could not be parsed, with the code and message to send back.
#[derive(Debug)]
pub struct ParseFailure {
    pub code: ErrorCode,
    pub message: String,
    pub request_type: Option<String>,
    pub request_id: Option<Value>,
}

/// A parsed request together with what is needed to answer it.
#[derive(Debug)]
pub struct ParsedRequest {
    pub request: Request,
    pub request_type: String,
    pub request_id: Option<Value>,
}

/// Parse one text frame. `max_size` is checked first so an oversized frame is never parsed.
pub fn parse_request(text: &str, max_size: usize) -> Result<ParsedRequest, ParseFailure> {
    let fail = |code, message: String, request_type: Option<String>, request_id| ParseFailure {
        code,
        message,
        request_type,
        request_id,
    };
    if text.len() > max_size {
        return Err(fail(
            ErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes exceeds the limit of {max_size} bytes",
                text.len()
            ),
            None,
            None,
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        fail(
            ErrorCode::ParseError,
            format!("malformed JSON: {e}"),
            None,
            None,
        )
    })?;
    if !value.is_object() {
        return Err(fail(
            ErrorCode::InvalidMessage,
            "a message must be a JSON object with a string `type`".into(),
            None,
            None,
        ));
    }
    let envelope: InboundEnvelope = serde_json::from_value(value).map_err(|e| {
        fail(
            ErrorCode::InvalidMessage,
            format!("invalid envelope: {e}"),
            None,
            None,
        )
    })?;
    let InboundEnvelope {
        kind,
        data,
        request_id,
    } = envelope;

    fn payload<T: serde::de::DeserializeOwned>(
        kind: &str,
        data: Option<Value>,
    ) -> Result<T, String> {
        let data = data.unwrap_or(Value::Object(Default::default()));
        serde_json::from_value(data).map_err(|e| format!("invalid data for `{kind}`: {e}"))
    }

    let request = match kind.as_str() {
        "authenticate" => payload(&kind, data).map(Request::Authenticate),
        "resume" => payload(&kind, data).map(Request::Resume),
        "createRoom" => payload(&kind, data).map(Request::CreateRoom),
        "joinRoom" => payload(&kind, data).map(Request::JoinRoom),
        "leaveRoom" => Ok(Request::LeaveRoom),
        "publisherOffer" => payload(&kind, data).map(Request::PublisherOffer),
        "createWebRtcTransport" => payload(&kind, data).map(Request::CreateWebRtcTransport),
        "connectWebRtcTransport" => payload(&kind, data).map(Request::ConnectWebRtcTransport),
        "publish" => payload(&kind, data).map(|p| Request::Publish(Box::new(p))),
        "consume" => payload(&kind, data).map(|c| Request::Consume(Box::new(c))),
        "pauseConsumer" => payload(&kind, data).map(Request::PauseConsumer),
        "resumeConsumer" => payload(&kind, data).map(Request::ResumeConsumer),
        "pauseProducer" => payload(&kind, data).map(Request::PauseProducer),
        "resumeProducer" => payload(&kind, data).map(Request::ResumeProducer),
        "closeProducer" => payload(&kind, data).map(Request::CloseProducer),
        "setConsumerPreferredLayers" => {
            payload(&kind, data).map(Request::SetConsumerPreferredLayers)
        }
        "restartIce" => payload(&kind, data).map(Request::RestartIce),
        "subscriberAnswer" => payload(&kind, data).map(Request::SubscriberAnswer),
        "setPreferredLayer" => payload(&kind, data).map(Request::SetPreferredLayer),
        "kickParticipant" => payload(&kind, data).map(Request::KickParticipant),
        "closeRoom" => Ok(Request::CloseRoom),
        "ping" => Ok(Request::Ping),
        other => {
            return Err(fail(
                ErrorCode::UnknownType,
                format!("unknown message type `{other}`"),
                Some(kind.clone()),
                request_id,
            ))
        }
    };
    match request {
        Ok(request) => Ok(ParsedRequest {
            request,
            request_type: kind,
            request_id,
        }),
        Err(message) => Err(fail(
            ErrorCode::InvalidPayload,
            message,
            Some(kind),
            request_id,
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads of responses and notifications (server → client).

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantInfo {
    pub participant_id: String,
    pub user_id: String,
    pub display_name: String,
    pub producers: Vec<ProducerInfo>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerInfo {
    pub producer_id: String,
    pub participant_id: String,
    pub kind: MediaKindName,
    /// Simulcast layers the publisher announced (empty for audio and single-layer video).
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKindName {
    Audio,
    Video,
}

/// One m-line of a `subscriberOffer`: which producer the transceiver with `mid` carries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberTrack {
    pub mid: String,
    pub producer_id: String,
    pub participant_id: String,
    pub kind: MediaKindName,
}

/// Token failures on the wire: one code per [`crate::auth::AuthErrorKind`].
impl From<crate::auth::AuthErrorKind> for ErrorCode {
    fn from(kind: crate::auth::AuthErrorKind) -> Self {
        use crate::auth::AuthErrorKind as K;
        match kind {
            K::InvalidToken => ErrorCode::InvalidToken,
            K::TokenSignatureInvalid => ErrorCode::TokenSignatureInvalid,
            K::TokenUnsigned => ErrorCode::TokenUnsigned,
            K::TokenAlgorithmNotAllowed => ErrorCode::TokenAlgorithmNotAllowed,
            K::TokenExpired => ErrorCode::TokenExpired,
            K::TokenNotYetValid => ErrorCode::TokenNotYetValid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bad_input_has_its_own_code() {
        let code = |t: &str| parse_request(t, 1024).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::ParseError);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"data":{}}"#), ErrorCode::InvalidMessage);
        assert_eq!(code(r#"{"type":"launchRocket"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"joinRoom","data":{"roomId":1}}"#),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(r#"{"type":"joinRoom","data":{}}"#),
            ErrorCode::InvalidPayload
        );
        assert_eq!(code(&"x".repeat(2000)), ErrorCode::MessageTooLarge);
    }

    #[test]
    fn request_id_is_kept_on_failure_and_success() {
        let err =
            parse_request(r#"{"type":"joinRoom","data":{},"requestId":"7"}"#, 1024).unwrap_err();
        assert_eq!(err.request_id, Some(Value::String("7".into())));
        let ok = parse_request(
            r#"{"type":"setPreferredLayer","data":{"producerId":"p","layer":"low"},"requestId":3}"#,
            1024,
        )
        .unwrap();
        assert_eq!(ok.request_id, Some(Value::from(3)));
        assert!(matches!(
            ok.request,
            Request::SetPreferredLayer(SetPreferredLayer {
                layer: LayerPreference::Low,
                ..
            })
        ));
    }
}
