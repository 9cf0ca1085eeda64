//! mediasoup-style ORTC parameters, and their translation to and from SDP.
//!
//! str0m negotiates through SDP (that is how it learns the browser's payload types and header
//! extension ids). An ORTC client never sends SDP, so each `publish` is turned into the SDP
//! offer the browser *would* have sent, and each `consume` into the answer it *would* give to
//! our offer. One negotiation path inside `media/` then serves the plain-SDP flow, WHIP/WHEP
//! and mediasoup-client alike.
//!
//! Everything a client sends is validated here before it can reach str0m (whose direct and SDP
//! APIs can panic or silently misbehave on inconsistent input) or be written into an SDP line.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Kind;

mod from_sdp;
mod to_sdp;
mod validate;

pub use self::from_sdp::{capabilities_from_offer, caps_support, consumer_parameters};
pub use self::to_sdp::{publisher_offer_sdp, subscriber_answer_sdp, PublishedLine, RemoteIdentity};
pub use self::validate::validate_producer;

/// Most simulcast encodings a producer may declare (our selector handles three layers).
pub const MAX_ENCODINGS: usize = 3;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RtcpFeedback {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parameter: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RtpCodecParameters {
    pub mime_type: String,
    pub payload_type: u8,
    pub clock_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub rtcp_feedback: Vec<RtcpFeedback>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderExtensionParameters {
    pub uri: String,
    pub id: u8,
    #[serde(default)]
    pub encrypt: bool,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RtxSsrc {
    pub ssrc: u32,
}

/// One encoding (simulcast layer). Fields we don't act on (maxBitrate, scaleResolutionDownBy,
/// dtx, ...) are accepted and ignored, as mediasoup does.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RtpEncodingParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssrc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtx: Option<RtxSsrc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalability_mode: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RtcpParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduced_size: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mux: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RtpParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    pub codecs: Vec<RtpCodecParameters>,
    #[serde(default)]
    pub header_extensions: Vec<HeaderExtensionParameters>,
    #[serde(default)]
    pub encodings: Vec<RtpEncodingParameters>,
    #[serde(default)]
    pub rtcp: RtcpParameters,
}

/// A codec as advertised in `routerRtpCapabilities`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RtpCodecCapability {
    pub kind: String,
    pub mime_type: String,
    pub preferred_payload_type: u8,
    pub clock_rate: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u8>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub rtcp_feedback: Vec<RtcpFeedback>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderExtensionCapability {
    #[serde(default)]
    pub kind: String,
    pub uri: String,
    pub preferred_id: u8,
    #[serde(default)]
    pub preferred_encrypt: bool,
    #[serde(default = "sendrecv")]
    pub direction: String,
}

pub(super) fn sendrecv() -> String {
    "sendrecv".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RtpCapabilities {
    #[serde(default)]
    pub codecs: Vec<RtpCodecCapability>,
    #[serde(default)]
    pub header_extensions: Vec<HeaderExtensionCapability>,
}

/// ICE and DTLS parameters of one ORTC transport, as `createWebRtcTransport` returns them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportParameters {
    pub ice_parameters: Value,
    pub ice_candidates: Vec<Value>,
    pub dtls_parameters: Value,
}

/// A client's mistake in ORTC parameters; the message says which field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrtcError {
    /// Structurally wrong parameters (duplicates, bad ids, wrong kinds, unsafe characters).
    Invalid(String),
    /// Well-formed, but no codec we can forward.
    UnsupportedCodec(String),
}

impl std::fmt::Display for OrtcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrtcError::Invalid(m) | OrtcError::UnsupportedCodec(m) => f.write_str(m),
        }
    }
}

pub(super) fn invalid(message: impl Into<String>) -> OrtcError {
    OrtcError::Invalid(message.into())
}

/// `audio/opus` → ("audio", "opus").
pub(super) fn split_mime(mime: &str) -> Option<(&str, &str)> {
    mime.split_once('/')
}

pub fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Audio => "audio",
        Kind::Video => "video",
    }
}
