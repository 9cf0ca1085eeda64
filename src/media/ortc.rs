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

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Kind;

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

fn sendrecv() -> String {
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

fn invalid(message: impl Into<String>) -> OrtcError {
    OrtcError::Invalid(message.into())
}

/// Codec names we forward, with their media kind and clock rate.
const KNOWN_CODECS: &[(&str, Kind, u32)] = &[
    ("opus", Kind::Audio, 48_000),
    ("vp8", Kind::Video, 90_000),
    ("vp9", Kind::Video, 90_000),
    ("h264", Kind::Video, 90_000),
    ("av1", Kind::Video, 90_000),
    ("rtx", Kind::Video, 90_000),
];

/// `audio/opus` → ("audio", "opus").
fn split_mime(mime: &str) -> Option<(&str, &str)> {
    mime.split_once('/')
}

/// Characters allowed in anything we copy into an SDP line: no spaces, no line breaks, no
/// attribute separators an attacker could use to inject lines or parameters.
fn is_token(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(&c))
}

fn param_value_text(key: &str, value: &Value) -> Result<String, OrtcError> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => u8::from(*b).to_string(),
        _ => {
            return Err(invalid(format!(
                "codec parameter `{key}` must be a number or a string"
            )))
        }
    };
    if !is_token(key, &[]) || !is_token(&text, &['/', ',', ':']) {
        return Err(invalid(format!(
            "codec parameter `{key}` has characters that are not allowed"
        )));
    }
    Ok(text)
}

/// Check every field of a producer's `rtpParameters` for `kind` before anything touches str0m.
pub fn validate_producer(kind: Kind, params: &RtpParameters) -> Result<(), OrtcError> {
    let kind_name = kind_str(kind);
    if params.codecs.is_empty() {
        return Err(invalid("rtpParameters.codecs must not be empty"));
    }
    if params.codecs.len() > 16 {
        return Err(invalid("rtpParameters.codecs: at most 16 codecs"));
    }
    let mut pts = HashSet::new();
    let mut media_pts = HashSet::new();
    for (i, codec) in params.codecs.iter().enumerate() {
        let Some((mime_kind, name)) = split_mime(&codec.mime_type) else {
            return Err(invalid(format!(
                "codecs[{i}].mimeType `{}` is not `kind/name`",
                codec.mime_type
            )));
        };
        if mime_kind.to_ascii_lowercase() != kind_name {
            return Err(invalid(format!(
                "codecs[{i}].mimeType `{}` is not a {kind_name} codec",
                codec.mime_type
            )));
        }
        let lower = name.to_ascii_lowercase();
        let Some((_, codec_kind, clock)) = KNOWN_CODECS.iter().find(|(n, _, _)| *n == lower) else {
            return Err(OrtcError::UnsupportedCodec(format!(
                "codecs[{i}]: unsupported codec `{}` (supported: audio/opus, video/VP8, VP9, H264, AV1, rtx)",
                codec.mime_type
            )));
        };
        if *codec_kind != kind {
            return Err(invalid(format!(
                "codecs[{i}]: `{}` is not a {kind_name} codec",
                codec.mime_type
            )));
        }
        if codec.clock_rate != *clock {
            return Err(invalid(format!(
                "codecs[{i}].clockRate must be {clock} for {}",
                codec.mime_type
            )));
        }
        if codec.payload_type > 127 || (64..=95).contains(&codec.payload_type) {
            return Err(invalid(format!(
                "codecs[{i}].payloadType {} is outside 0-63/96-127",
                codec.payload_type
            )));
        }
        if !pts.insert(codec.payload_type) {
            return Err(invalid(format!(
                "codecs[{i}].payloadType {} is used twice",
                codec.payload_type
            )));
        }
        if i == 0 && lower == "rtx" {
            return Err(invalid("codecs[0] must be a media codec, not rtx"));
        }
        if lower != "rtx" {
            media_pts.insert(codec.payload_type);
        }
        for (key, value) in &codec.parameters {
            param_value_text(key, value)?;
        }
        for fb in &codec.rtcp_feedback {
            if !is_token(&fb.kind, &[])
                || !(fb.parameter.is_empty() || is_token(&fb.parameter, &[]))
            {
                return Err(invalid(format!(
                    "codecs[{i}].rtcpFeedback has an invalid entry"
                )));
            }
        }
    }
    for (i, codec) in params.codecs.iter().enumerate() {
        if codec.mime_type.to_ascii_lowercase().ends_with("/rtx") {
            let apt = codec.parameters.get("apt").and_then(|v| match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            });
            match apt {
                Some(apt) if apt <= 127 && media_pts.contains(&(apt as u8)) => {}
                _ => {
                    return Err(invalid(format!(
                        "codecs[{i}]: rtx needs `apt` naming a media codec's payloadType"
                    )))
                }
            }
        }
    }
    let mut ids = HashSet::new();
    for (i, ext) in params.header_extensions.iter().enumerate() {
        if ext.id == 0 || ext.id > 14 {
            return Err(invalid(format!(
                "headerExtensions[{i}].id {} is outside 1-14",
                ext.id
            )));
        }
        if !ids.insert(ext.id) {
            return Err(invalid(format!(
                "headerExtensions[{i}].id {} is used twice",
                ext.id
            )));
        }
        if !is_token(&ext.uri, &[':', '/', '#', '=']) {
            return Err(invalid(format!(
                "headerExtensions[{i}].uri is not a valid URI"
            )));
        }
    }
    if params.encodings.is_empty() {
        return Err(invalid("rtpParameters.encodings must not be empty"));
    }
    if params.encodings.len() > MAX_ENCODINGS {
        return Err(invalid(format!(
            "rtpParameters.encodings: at most {MAX_ENCODINGS} (simulcast layers)"
        )));
    }
    let mut ssrcs = HashSet::new();
    let mut rids = HashSet::new();
    let with_rid = params.encodings.iter().filter(|e| e.rid.is_some()).count();
    if with_rid != 0 && with_rid != params.encodings.len() {
        return Err(invalid(
            "rtpParameters.encodings: either every encoding has a `rid` or none does",
        ));
    }
    for (i, e) in params.encodings.iter().enumerate() {
        match (&e.rid, e.ssrc) {
            (None, None) => {
                return Err(invalid(format!(
                    "encodings[{i}] needs an `ssrc` or a `rid`"
                )))
            }
            (Some(rid), _) => {
                if rid.len() > 16 || !rid.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(invalid(format!(
                        "encodings[{i}].rid must be 1-16 letters or digits"
                    )));
                }
                if !rids.insert(rid.clone()) {
                    return Err(invalid(format!("encodings[{i}].rid `{rid}` is used twice")));
                }
            }
            _ => {}
        }
        for ssrc in e.ssrc.iter().chain(e.rtx.as_ref().map(|r| &r.ssrc)) {
            if *ssrc == 0 || !ssrcs.insert(*ssrc) {
                return Err(invalid(format!(
                    "encodings[{i}]: SSRC {ssrc} is zero or used twice"
                )));
            }
        }
    }
    if params.encodings.len() > 1 && with_rid == 0 && kind == Kind::Audio {
        return Err(invalid("audio producers have one encoding"));
    }
    if let Some(mid) = &params.mid {
        if mid.len() > 32 || !is_token(mid, &[]) {
            return Err(invalid(
                "rtpParameters.mid must be 1-32 letters, digits, `-_.`",
            ));
        }
    }
    // mediasoup-client sends an empty cname when the browser's SDP had no a=ssrc line.
    if let Some(cname) = params.rtcp.cname.as_deref().filter(|c| !c.is_empty()) {
        // Only line breaks and spaces could escape the `a=ssrc:` line it is written into.
        if cname.is_empty() || cname.len() > 255 || !cname.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(
                "rtpParameters.rtcp.cname has characters that are not allowed",
            ));
        }
    }
    Ok(())
}

pub fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Audio => "audio",
        Kind::Video => "video",
    }
}

/// The session-wide part of a synthesized SDP: who the remote (the browser) is.
pub struct RemoteIdentity<'a> {
    pub ice_ufrag: &'a str,
    pub ice_pwd: &'a str,
    /// `sha-256 AB:CD:...`, as in `a=fingerprint`.
    pub fingerprint: &'a str,
}

fn session_header(out: &mut String, mids: &[String], version: u64) {
    let _ = write!(
        out,
        "v=0\r\no=- 4611731400430051336 {version} IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\na=msid-semantic: WMS\r\n",
        mids.join(" ")
    );
}

fn media_transport_lines(out: &mut String, remote: &RemoteIdentity<'_>, setup: &str) {
    let _ = write!(
        out,
        "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=fingerprint:{}\r\na=setup:{setup}\r\n",
        remote.ice_ufrag, remote.ice_pwd, remote.fingerprint
    );
}

/// A published m-line as the browser would have offered it.
#[derive(Debug, Clone)]
pub struct PublishedLine {
    pub mid: String,
    pub kind: Kind,
    pub params: RtpParameters,
}

fn write_codec_lines(out: &mut String, codec: &RtpCodecParameters) {
    let name = split_mime(&codec.mime_type).map(|(_, n)| n).unwrap_or("");
    let pt = codec.payload_type;
    match codec.channels {
        Some(ch) if ch > 1 => {
            let _ = write!(out, "a=rtpmap:{pt} {name}/{}/{ch}\r\n", codec.clock_rate);
        }
        _ => {
            let _ = write!(out, "a=rtpmap:{pt} {name}/{}\r\n", codec.clock_rate);
        }
    }
    for fb in &codec.rtcp_feedback {
        if fb.parameter.is_empty() {
            let _ = write!(out, "a=rtcp-fb:{pt} {}\r\n", fb.kind);
        } else {
            let _ = write!(out, "a=rtcp-fb:{pt} {} {}\r\n", fb.kind, fb.parameter);
        }
    }
    if !codec.parameters.is_empty() {
        let fmtp: Vec<String> = codec
            .parameters
            .iter()
            .filter_map(|(k, v)| Some(format!("{k}={}", param_value_text(k, v).ok()?)))
            .collect();
        let _ = write!(out, "a=fmtp:{pt} {}\r\n", fmtp.join(";"));
    }
}

/// The offer a browser would send for these published tracks (validated beforehand).
pub fn publisher_offer_sdp(
    remote: &RemoteIdentity<'_>,
    lines: &[PublishedLine],
    version: u64,
) -> String {
    let mut out = String::with_capacity(2048);
    let mids: Vec<String> = lines.iter().map(|l| l.mid.clone()).collect();
    session_header(&mut out, &mids, version);
    for line in lines {
        let p = &line.params;
        let pts: Vec<String> = p
            .codecs
            .iter()
            .map(|c| c.payload_type.to_string())
            .collect();
        let _ = write!(
            out,
            "m={} 9 UDP/TLS/RTP/SAVPF {}\r\n",
            kind_str(line.kind),
            pts.join(" ")
        );
        media_transport_lines(&mut out, remote, "active");
        let _ = write!(out, "a=mid:{}\r\n", line.mid);
        for ext in &p.header_extensions {
            let _ = write!(out, "a=extmap:{} {}\r\n", ext.id, ext.uri);
        }
        out.push_str("a=sendonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n");
        for codec in &p.codecs {
            write_codec_lines(&mut out, codec);
        }
        let cname = p
            .rtcp
            .cname
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "sfu".into());
        let rids: Vec<&str> = p
            .encodings
            .iter()
            .filter_map(|e| e.rid.as_deref())
            .collect();
        if rids.is_empty() {
            for e in &p.encodings {
                let Some(ssrc) = e.ssrc else { continue };
                if let Some(rtx) = &e.rtx {
                    let _ = write!(out, "a=ssrc-group:FID {ssrc} {}\r\n", rtx.ssrc);
                }
                let _ = write!(out, "a=ssrc:{ssrc} cname:{cname}\r\n");
                if let Some(rtx) = &e.rtx {
                    let _ = write!(out, "a=ssrc:{} cname:{cname}\r\n", rtx.ssrc);
                }
            }
        } else {
            for rid in &rids {
                let _ = write!(out, "a=rid:{rid} send\r\n");
            }
            let _ = write!(out, "a=simulcast:send {}\r\n", rids.join(";"));
        }
    }
    out
}

// ----------------------------------------------------------------------------------------
// Reading SDP we produced (str0m's offers) back into ORTC terms.

/// One m-line of an SDP, as far as ORTC needs it.
#[derive(Debug, Clone, Default)]
pub struct SdpMedia {
    pub kind: String,
    pub mid: String,
    pub direction: String,
    pub pts: Vec<u8>,
    pub rtpmap: BTreeMap<u8, (String, u32, Option<u8>)>,
    pub fmtp: BTreeMap<u8, String>,
    pub rtcp_fb: BTreeMap<u8, Vec<RtcpFeedback>>,
    pub extmap: Vec<(u8, String)>,
    /// (ssrc, cname) in order of appearance.
    pub ssrcs: Vec<(u32, String)>,
    /// FID groups: (primary, rtx).
    pub fid: Vec<(u32, u32)>,
}

/// Split an SDP into its m-lines. Only attributes ORTC cares about are kept.
pub fn parse_media(sdp: &str) -> Vec<SdpMedia> {
    let mut media: Vec<SdpMedia> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or("").to_string();
            let pts = parts.skip(2).filter_map(|p| p.parse().ok()).collect();
            media.push(SdpMedia {
                kind,
                pts,
                direction: "sendrecv".into(),
                ..Default::default()
            });
            continue;
        }
        let Some(m) = media.last_mut() else { continue };
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        let (name, value) = attr.split_once(':').unwrap_or((attr, ""));
        match name {
            "mid" => m.mid = value.to_string(),
            "sendonly" | "recvonly" | "sendrecv" | "inactive" => m.direction = name.to_string(),
            "rtpmap" => {
                let Some((pt, spec)) = value.split_once(' ') else {
                    continue;
                };
                let mut spec = spec.split('/');
                let (Ok(pt), Some(name), Some(Ok(clock))) =
                    (pt.parse(), spec.next(), spec.next().map(str::parse))
                else {
                    continue;
                };
                let channels = spec.next().and_then(|c| c.parse().ok());
                m.rtpmap.insert(pt, (name.to_string(), clock, channels));
            }
            "fmtp" => {
                if let Some((pt, params)) = value.split_once(' ') {
                    if let Ok(pt) = pt.parse() {
                        m.fmtp.insert(pt, params.to_string());
                    }
                }
            }
            "rtcp-fb" => {
                let mut parts = value.split_whitespace();
                let (Some(Ok(pt)), Some(kind)) = (parts.next().map(str::parse), parts.next())
                else {
                    continue;
                };
                m.rtcp_fb.entry(pt).or_default().push(RtcpFeedback {
                    kind: kind.to_string(),
                    parameter: parts.next().unwrap_or("").to_string(),
                });
            }
            "extmap" => {
                let mut parts = value.split_whitespace();
                if let (Some(id), Some(uri)) = (parts.next(), parts.next()) {
                    if let Ok(id) = id.split('/').next().unwrap_or("").parse() {
                        m.extmap.push((id, uri.to_string()));
                    }
                }
            }
            "ssrc" => {
                let mut parts = value.splitn(2, ' ');
                let (Some(Ok(ssrc)), Some(rest)) = (parts.next().map(str::parse), parts.next())
                else {
                    continue;
                };
                if let Some(cname) = rest.strip_prefix("cname:") {
                    m.ssrcs.push((ssrc, cname.to_string()));
                }
            }
            "ssrc-group" => {
                let mut parts = value.split_whitespace();
                if parts.next() == Some("FID") {
                    if let (Some(Ok(a)), Some(Ok(b))) =
                        (parts.next().map(str::parse), parts.next().map(str::parse))
                    {
                        m.fid.push((a, b));
                    }
                }
            }
            _ => {}
        }
    }
    media
}

fn fmtp_to_parameters(fmtp: Option<&String>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(fmtp) = fmtp else { return out };
    for pair in fmtp.split(';') {
        let Some((k, v)) = pair.trim().split_once('=') else {
            continue;
        };
        let value = match v.parse::<u64>() {
            // Leading zeros (profile-level-id 42e01f is not numeric anyway) stay strings.
            Ok(n) if !(v.len() > 1 && v.starts_with('0')) => Value::from(n),
            _ => Value::from(v),
        };
        out.insert(k.to_string(), value);
    }
    out
}

/// Codecs of an m-line, each media codec followed by its rtx, optionally limited by `allow`.
fn media_codecs(m: &SdpMedia, allow: &dyn Fn(&str, u32) -> bool) -> Vec<RtpCodecParameters> {
    let mut out = Vec::new();
    for pt in &m.pts {
        let Some((name, clock, channels)) = m.rtpmap.get(pt) else {
            continue;
        };
        if name.eq_ignore_ascii_case("rtx") {
            continue;
        }
        if !allow(&format!("{}/{name}", m.kind), *clock) {
            continue;
        }
        out.push(RtpCodecParameters {
            mime_type: format!("{}/{name}", m.kind),
            payload_type: *pt,
            clock_rate: *clock,
            channels: *channels,
            parameters: fmtp_to_parameters(m.fmtp.get(pt)),
            rtcp_feedback: m.rtcp_fb.get(pt).cloned().unwrap_or_default(),
        });
        let rtx = m.pts.iter().find(|rtx_pt| {
            m.rtpmap
                .get(rtx_pt)
                .is_some_and(|(n, _, _)| n.eq_ignore_ascii_case("rtx"))
                && fmtp_to_parameters(m.fmtp.get(rtx_pt)).get("apt") == Some(&Value::from(*pt))
        });
        if let Some(rtx_pt) = rtx {
            out.push(RtpCodecParameters {
                mime_type: format!("{}/rtx", m.kind),
                payload_type: *rtx_pt,
                clock_rate: *clock,
                channels: None,
                parameters: fmtp_to_parameters(m.fmtp.get(rtx_pt)),
                rtcp_feedback: Vec::new(),
            });
        }
    }
    out
}

/// Router capabilities: every codec and header extension str0m offers, with str0m's own
/// payload types and ids (the ones it uses when sending to consumers).
pub fn capabilities_from_offer(sdp: &str) -> RtpCapabilities {
    let mut caps = RtpCapabilities::default();
    for m in parse_media(sdp) {
        for c in media_codecs(&m, &|_, _| true) {
            caps.codecs.push(RtpCodecCapability {
                kind: m.kind.clone(),
                mime_type: c.mime_type,
                preferred_payload_type: c.payload_type,
                clock_rate: c.clock_rate,
                channels: c.channels.or((m.kind == "audio").then_some(1)),
                parameters: c.parameters,
                rtcp_feedback: c.rtcp_feedback,
            });
        }
        for (id, uri) in &m.extmap {
            caps.header_extensions.push(HeaderExtensionCapability {
                kind: m.kind.clone(),
                uri: uri.clone(),
                preferred_id: *id,
                preferred_encrypt: false,
                direction: sendrecv(),
            });
        }
    }
    caps
}

/// Does a client with `caps` support codec `mime` at `clock`? (mediasoup matches by mime type
/// and clock rate; fmtp details are left to the browser.)
pub fn caps_support(caps: &RtpCapabilities, mime: &str, clock: u32) -> bool {
    caps.codecs
        .iter()
        .any(|c| c.mime_type.eq_ignore_ascii_case(mime) && c.clock_rate == clock)
}

/// The consumer's `rtpParameters` for m-line `mid` of our offer, keeping the codecs the
/// client can decode. `None` if the m-line is missing or no codec is left.
pub fn consumer_parameters(
    offer: &str,
    mid: &str,
    caps: &RtpCapabilities,
) -> Option<RtpParameters> {
    let media = parse_media(offer);
    let m = media.iter().find(|m| m.mid == mid)?;
    let codecs = media_codecs(m, &|mime, clock| caps_support(caps, mime, clock));
    if codecs.is_empty() {
        return None;
    }
    let (ssrc, cname) = m.ssrcs.first().cloned()?;
    let rtx = m
        .fid
        .iter()
        .find(|(primary, _)| *primary == ssrc)
        .map(|(_, rtx)| RtxSsrc { ssrc: *rtx });
    let has_rtx = codecs.iter().any(|c| c.mime_type.ends_with("/rtx"));
    Some(RtpParameters {
        mid: Some(mid.to_string()),
        codecs,
        header_extensions: m
            .extmap
            .iter()
            .map(|(id, uri)| HeaderExtensionParameters {
                uri: uri.clone(),
                id: *id,
                encrypt: false,
                parameters: Map::new(),
            })
            .collect(),
        encodings: vec![RtpEncodingParameters {
            ssrc: Some(ssrc),
            rtx: if has_rtx { rtx } else { None },
            ..Default::default()
        }],
        rtcp: RtcpParameters {
            cname: Some(cname),
            reduced_size: Some(true),
            mux: Some(true),
        },
    })
}

/// The answer the browser gives to our offer, per m-line keeping only the codecs that
/// `codecs_for(mid)` returns (what the client was told to expect). M-lines without a codec
/// left are rejected (port 0), as a browser would.
pub fn subscriber_answer_sdp(
    remote: &RemoteIdentity<'_>,
    offer: &str,
    codecs_for: &dyn Fn(&str) -> Option<Vec<RtpCodecParameters>>,
    version: u64,
) -> String {
    let media = parse_media(offer);
    let mut out = String::with_capacity(2048);
    let mids: Vec<String> = media.iter().map(|m| m.mid.clone()).collect();
    session_header(&mut out, &mids, version);
    for m in &media {
        let codecs = codecs_for(&m.mid).unwrap_or_default();
        let pts: Vec<String> = codecs.iter().map(|c| c.payload_type.to_string()).collect();
        if codecs.is_empty() {
            // Keep the line (an answer mirrors every offered m-line) but receive nothing.
            let first = m.pts.first().copied().unwrap_or(0);
            let _ = write!(out, "m={} 9 UDP/TLS/RTP/SAVPF {first}\r\n", m.kind);
            media_transport_lines(&mut out, remote, "active");
            let _ = write!(out, "a=mid:{}\r\na=inactive\r\na=rtcp-mux\r\n", m.mid);
            if let Some((name, clock, ch)) = m.rtpmap.get(&first) {
                let _ = match ch {
                    Some(ch) => write!(out, "a=rtpmap:{first} {name}/{clock}/{ch}\r\n"),
                    None => write!(out, "a=rtpmap:{first} {name}/{clock}\r\n"),
                };
            }
            continue;
        }
        let _ = write!(
            out,
            "m={} 9 UDP/TLS/RTP/SAVPF {}\r\n",
            m.kind,
            pts.join(" ")
        );
        media_transport_lines(&mut out, remote, "active");
        let _ = write!(out, "a=mid:{}\r\n", m.mid);
        for (id, uri) in &m.extmap {
            let _ = write!(out, "a=extmap:{id} {uri}\r\n");
        }
        let direction = match m.direction.as_str() {
            "sendonly" => "recvonly",
            "recvonly" => "sendonly",
            "inactive" => "inactive",
            _ => "sendrecv",
        };
        let _ = write!(out, "a={direction}\r\na=rtcp-mux\r\na=rtcp-rsize\r\n");
        for codec in &codecs {
            write_codec_lines(&mut out, codec);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vp8_simulcast() -> RtpParameters {
        serde_json::from_value(json!({
            "mid": "0",
            "codecs": [
                {"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000,
                 "rtcpFeedback": [{"type": "nack"}, {"type": "nack", "parameter": "pli"}]},
                {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 96}}
            ],
            "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 4},
                                 {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": 10}],
            "encodings": [{"rid": "r0", "scaleResolutionDownBy": 4, "maxBitrate": 150000},
                          {"rid": "r1"}, {"rid": "r2"}],
            "rtcp": {"cname": "abc", "reducedSize": true}
        }))
        .unwrap()
    }

    #[test]
    fn valid_simulcast_parameters_pass_and_render_as_an_offer() {
        let p = vp8_simulcast();
        validate_producer(Kind::Video, &p).unwrap();
        let remote = RemoteIdentity {
            ice_ufrag: "abcd",
            ice_pwd: "0123456789012345678901",
            fingerprint: "sha-256 00:11",
        };
        let sdp = publisher_offer_sdp(
            &remote,
            &[PublishedLine {
                mid: "0".into(),
                kind: Kind::Video,
                params: p,
            }],
            2,
        );
        assert!(sdp.contains("a=simulcast:send r0;r1;r2\r\n"), "{sdp}");
        assert!(sdp.contains("a=fmtp:97 apt=96\r\n"), "{sdp}");
        assert!(sdp.contains("a=setup:active\r\n"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                json!({"codecs": [], "encodings": [{"ssrc": 1}]}),
                "codecs must not be empty",
            ),
            (
                json!({"codecs": [{"mimeType": "video/H265", "payloadType": 96, "clockRate": 90000}], "encodings": [{"ssrc": 1}]}),
                "unsupported codec",
            ),
            (
                json!({"codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000}], "encodings": [{"ssrc": 1}]}),
                "not a video codec",
            ),
            (
                json!({"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}], "encodings": [{"ssrc": 5}, {"ssrc": 5}]}),
                "used twice",
            ),
            (
                json!({"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}], "encodings": []}),
                "encodings must not be empty",
            ),
            (
                json!({"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "parameters": {"x": "a\r\na=evil"}}], "encodings": [{"ssrc": 1}]}),
                "not allowed",
            ),
            (
                json!({"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}, {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 100}}], "encodings": [{"ssrc": 1}]}),
                "apt",
            ),
            (
                json!({"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}], "headerExtensions": [{"uri": "urn:x", "id": 15}], "encodings": [{"ssrc": 1}]}),
                "outside 1-14",
            ),
            (
                json!({"codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 8000}], "encodings": [{"ssrc": 1}]}),
                "clockRate",
            ),
        ];
        for (value, expected) in cases {
            let p: RtpParameters = serde_json::from_value(value.clone()).unwrap();
            let err = validate_producer(Kind::Video, &p).expect_err(&value.to_string());
            assert!(err.to_string().contains(expected), "{err} vs {expected}");
        }
    }

    #[test]
    fn consumer_parameters_come_from_our_offer_and_filter_by_client_caps() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\na=mid:3\r\na=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\na=ssrc-group:FID 11 12\r\na=ssrc:11 cname:x\r\na=ssrc:12 cname:x\r\n";
        let caps: RtpCapabilities = serde_json::from_value(json!({"codecs": [
            {"kind": "video", "mimeType": "video/VP8", "preferredPayloadType": 96, "clockRate": 90000},
            {"kind": "video", "mimeType": "video/rtx", "preferredPayloadType": 97, "clockRate": 90000}
        ]})).unwrap();
        let p = consumer_parameters(offer, "3", &caps).unwrap();
        let mimes: Vec<&str> = p.codecs.iter().map(|c| c.mime_type.as_str()).collect();
        assert_eq!(mimes, ["video/VP8", "video/rtx"]);
        assert_eq!(p.encodings[0].ssrc, Some(11));
        assert_eq!(p.encodings[0].rtx, Some(RtxSsrc { ssrc: 12 }));
        assert_eq!(p.codecs[1].parameters.get("apt"), Some(&json!(96)));
        let remote = RemoteIdentity {
            ice_ufrag: "u",
            ice_pwd: "p",
            fingerprint: "sha-256 00",
        };
        let answer = subscriber_answer_sdp(&remote, offer, &|_| Some(p.codecs.clone()), 1);
        assert!(
            answer.contains("a=recvonly\r\n")
                && answer.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n"),
            "{answer}"
        );
    }
}
