//! Requests (client → server) and their parsing.
//!
//! Parsing happens in two steps so that each kind of bad input gets its own error code:
//! the envelope first (malformed JSON, missing `type`), then `data` against the type's schema
//! (missing or mistyped fields).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::wire::MediaKindName;
use super::{ErrorCode, InboundEnvelope};

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
    /// How this client receives media: `webrtc` (default: the server pushes subscriber
    /// offers) or `webtransport` (it asks for each track with `consumeFrames`).
    #[serde(default)]
    pub media: MediaPath,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaPath {
    #[default]
    Webrtc,
    Webtransport,
}

/// The client's offer for its publisher PeerConnection (it sends, we receive).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublisherOffer {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub sdp: String,
}

/// The client's answer to our `subscriberOffer` (we send, it receives).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriberAnswer {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub sdp: String,
}

/// First message on a new connection to continue a session after a drop.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resume {
    pub token: String,
    /// Highest `seq` the client received; everything after it is replayed.
    pub last_seq: u64,
    /// A valid JWT of the session's user: the resume token alone does not prove who asks.
    pub access_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KickParticipant {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub participant_id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetPreferredLayer {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
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
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
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
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
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
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub consumer_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProducerRef {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub producer_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetConsumerPreferredLayers {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub consumer_id: String,
    pub spatial_layer: u8,
    #[serde(default)]
    pub temporal_layer: Option<u8>,
}

/// `setConsumerPriority`: rank one of my consumers, named by `consumerId` (ORTC, as
/// mediasoup's `consumer.setPriority`) or by `producerId` (the demo's flow), 1–255.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetConsumerPriority {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    #[serde(default)]
    pub consumer_id: Option<String>,
    #[serde(default)]
    pub producer_id: Option<String>,
    pub priority: u8,
}

/// `publishFrames` (WebTransport sessions only): a track this client sends as encoded frames
/// on the session's own streams (README "Media over WebTransport").
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishFrames {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    /// `vp8` or `opus` (a mime type such as `video/VP8` works too).
    pub codec: String,
    /// Simulcast layer names, lowest first; none for one layer (and for audio).
    #[serde(default)]
    pub layers: Vec<String>,
}

/// `consumeFrames` (WebTransport sessions only): receive a track as frames on the session's
/// streams.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumeFrames {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
    pub producer_id: String,
}

/// `leaveRoom`, `closeRoom`: nothing but the optional room id.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomRef {
    #[serde(default)]
    pub room_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransportRef {
    /// The joined room, as the seed's clients send it on every room request (checked).
    #[serde(default)]
    pub room_id: Option<String>,
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
    LeaveRoom(RoomRef),
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
    SetConsumerPriority(SetConsumerPriority),
    PublishFrames(PublishFrames),
    ConsumeFrames(ConsumeFrames),
    RestartIce(TransportRef),
    SubscriberAnswer(SubscriberAnswer),
    SetPreferredLayer(SetPreferredLayer),
    KickParticipant(KickParticipant),
    CloseRoom(RoomRef),
    /// `lastSeq`, when sent: the client has every message up to it, which need not be kept
    /// for a resume any more. Anything else in `data` is ignored, as it always was.
    Ping {
        last_seq: Option<u64>,
    },
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

/// Longest `requestId` string echoed back; a longer one is refused (never echoed).
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Longest `type` echoed back in an error.
const MAX_ECHOED_TYPE_CHARS: usize = 64;

/// `s`, cut to `max` characters (with an ellipsis) so errors never echo unbounded input.
pub fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// A `requestId` is a number or a short string; `null` is kept (echoed as `null`).
fn checked_request_id(id: Option<&Value>) -> Result<Option<Value>, String> {
    match id {
        None => Ok(None),
        Some(v @ (Value::Null | Value::Number(_))) => Ok(Some(v.clone())),
        Some(Value::String(s)) if s.chars().count() <= MAX_REQUEST_ID_CHARS => {
            Ok(Some(Value::String(s.clone())))
        }
        Some(_) => Err(format!(
            "`requestId` must be a number or a string of at most {MAX_REQUEST_ID_CHARS} characters"
        )),
    }
}

/// The `requestId` of a frame too large to parse in full: read without building the rest
/// (serde skips every other field), so the refusal can still be matched to its request.
fn request_id_of_oversized(text: &str) -> Option<Value> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(rename = "requestId", default)]
        request_id: Option<Value>,
    }
    let id = serde_json::from_str::<IdOnly>(text).ok()?.request_id;
    checked_request_id(id.as_ref()).ok().flatten()
}

/// Parse one text frame. `max_size` is checked first so an oversized frame is never parsed
/// into a tree.
pub fn parse_request(text: &str, max_size: usize) -> Result<ParsedRequest, ParseFailure> {
    if text.len() > max_size {
        return Err(fail(
            ErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes exceeds the limit of {max_size} bytes",
                text.len()
            ),
            None,
            request_id_of_oversized(text),
        ));
    }
    let (InboundEnvelope { kind, data, .. }, request_id) = decode_envelope(text)?;
    match request_of_type(&kind, data) {
        Some(Ok(request)) => Ok(ParsedRequest {
            request,
            request_type: kind,
            request_id,
        }),
        Some(Err(message)) => Err(fail(
            ErrorCode::InvalidPayload,
            message,
            Some(kind),
            request_id,
        )),
        None => {
            let echoed = bounded(&kind, MAX_ECHOED_TYPE_CHARS);
            Err(fail(
                ErrorCode::UnknownType,
                format!("unknown message type `{echoed}`"),
                Some(echoed),
                request_id,
            ))
        }
    }
}

fn fail(
    code: ErrorCode,
    message: String,
    request_type: Option<String>,
    request_id: Option<Value>,
) -> ParseFailure {
    ParseFailure {
        code,
        message,
        request_type,
        request_id,
    }
}

/// Step one: the frame as a JSON object with a checked `requestId` and a string `type`
/// (`data` is not looked at yet). The id is returned apart, so later refusals can carry it.
fn decode_envelope(text: &str) -> Result<(InboundEnvelope, Option<Value>), ParseFailure> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        fail(
            ErrorCode::ParseError,
            format!("malformed JSON: {e}"),
            None,
            None,
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err(fail(
            ErrorCode::InvalidMessage,
            "a message must be a JSON object with a string `type`".into(),
            None,
            None,
        ));
    };
    let request_id = checked_request_id(object.get("requestId"))
        .map_err(|why| fail(ErrorCode::InvalidMessage, why, None, None))?;
    object.remove("requestId");
    let envelope: InboundEnvelope = serde_json::from_value(Value::Object(object)).map_err(|e| {
        fail(
            ErrorCode::InvalidMessage,
            format!("invalid envelope: {e}"),
            None,
            request_id.clone(),
        )
    })?;
    Ok((envelope, request_id))
}

/// `data` (absent means `{}`) read as the payload of a `kind` request.
fn payload<T: serde::de::DeserializeOwned>(kind: &str, data: Option<Value>) -> Result<T, String> {
    let data = data.unwrap_or(Value::Object(Default::default()));
    serde_json::from_value(data).map_err(|e| format!("invalid data for `{kind}`: {e}"))
}

/// Step two: `data` against the schema of the named type. `None` for an unknown type;
/// `Some(Err)` carries the message for a payload that does not fit.
fn request_of_type(kind: &str, data: Option<Value>) -> Option<Result<Request, String>> {
    let request = match kind {
        "authenticate" => payload(kind, data).map(Request::Authenticate),
        "resume" => payload(kind, data).map(Request::Resume),
        "createRoom" => payload(kind, data).map(Request::CreateRoom),
        "joinRoom" => payload(kind, data).map(Request::JoinRoom),
        "leaveRoom" => payload(kind, data).map(Request::LeaveRoom),
        "publisherOffer" => payload(kind, data).map(Request::PublisherOffer),
        "createWebRtcTransport" => payload(kind, data).map(Request::CreateWebRtcTransport),
        "connectWebRtcTransport" => payload(kind, data).map(Request::ConnectWebRtcTransport),
        "publish" => payload(kind, data).map(|p| Request::Publish(Box::new(p))),
        "consume" => payload(kind, data).map(|c| Request::Consume(Box::new(c))),
        "pauseConsumer" => payload(kind, data).map(Request::PauseConsumer),
        "resumeConsumer" => payload(kind, data).map(Request::ResumeConsumer),
        "pauseProducer" => payload(kind, data).map(Request::PauseProducer),
        "resumeProducer" => payload(kind, data).map(Request::ResumeProducer),
        "closeProducer" => payload(kind, data).map(Request::CloseProducer),
        "setConsumerPreferredLayers" => {
            payload(kind, data).map(Request::SetConsumerPreferredLayers)
        }
        "setConsumerPriority" => payload(kind, data).map(Request::SetConsumerPriority),
        "publishFrames" => payload(kind, data).map(Request::PublishFrames),
        "consumeFrames" => payload(kind, data).map(Request::ConsumeFrames),
        "restartIce" => payload(kind, data).map(Request::RestartIce),
        "subscriberAnswer" => payload(kind, data).map(Request::SubscriberAnswer),
        "setPreferredLayer" => payload(kind, data).map(Request::SetPreferredLayer),
        "kickParticipant" => payload(kind, data).map(Request::KickParticipant),
        "closeRoom" => payload(kind, data).map(Request::CloseRoom),
        "ping" => Ok(Request::Ping {
            last_seq: data
                .as_ref()
                .and_then(|d| d.get("lastSeq"))
                .and_then(Value::as_u64),
        }),
        _ => return None,
    };
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::protocol::ErrorCode;

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

    #[test]
    fn errors_never_echo_unbounded_input() {
        let long_type = "x".repeat(65_500);
        let frame = format!(r#"{{"type":"{long_type}","requestId":1}}"#);
        let failure = parse_request(&frame, 1 << 20).unwrap_err();
        assert_eq!(failure.code, ErrorCode::UnknownType);
        let reply = crate::session::protocol::OutboundEnvelope::error(
            failure.code,
            failure.message,
            failure.request_type.as_deref(),
            failure.request_id,
        )
        .to_json();
        assert!(reply.len() < 1024, "reply of {} bytes", reply.len());
        // serde quotes offending values in its messages; they are bounded too.
        let frame =
            format!(r#"{{"type":"joinRoom","data":{{"roomId":1,"displayName":"{long_type}"}}}}"#);
        let failure = parse_request(&frame, 1 << 20).unwrap_err();
        let reply = crate::session::protocol::OutboundEnvelope::error(
            failure.code,
            failure.message,
            None,
            None,
        );
        assert!(reply.to_json().len() < 1024);
        let huge_id = format!(r#"{{"type":"ping","requestId":"{long_type}"}}"#);
        let failure = parse_request(&huge_id, 1 << 20).unwrap_err();
        assert_eq!(failure.code, ErrorCode::InvalidMessage);
        assert_eq!(failure.request_id, None);
    }

    #[test]
    fn every_refusal_carries_the_request_id() {
        let id = |t: &str| parse_request(t, 64).unwrap_err().request_id;
        assert_eq!(id(r#"{"type":7,"requestId":5}"#), Some(Value::from(5)));
        assert_eq!(id(r#"{"type":"nope","requestId":null}"#), Some(Value::Null));
        let oversized = format!(
            r#"{{"requestId":"r1","type":"ping","data":{{"pad":"{}"}}}}"#,
            "y".repeat(100)
        );
        let failure = parse_request(&oversized, 64).unwrap_err();
        assert_eq!(failure.code, ErrorCode::MessageTooLarge);
        assert_eq!(failure.request_id, Some(Value::from("r1")));
        let ok = parse_request(r#"{"type":"ping","requestId":null}"#, 64).unwrap();
        assert_eq!(ok.request_id, Some(Value::Null));
    }
}
