//! Everything a client sends in `rtpParameters` is checked here before it can reach str0m
//! (whose APIs can panic or misbehave on inconsistent input) or be written into an SDP line.

use std::collections::HashSet;

use serde_json::Value;

use super::{
    invalid, kind_str, split_mime, OrtcError, RtpCodecParameters, RtpParameters, MAX_ENCODINGS,
};
use crate::media::Kind;

/// Codec names we forward, with their media kind and clock rate.
const KNOWN_CODECS: &[(&str, Kind, u32)] = &[
    ("opus", Kind::Audio, 48_000),
    ("vp8", Kind::Video, 90_000),
    ("vp9", Kind::Video, 90_000),
    ("h264", Kind::Video, 90_000),
    ("av1", Kind::Video, 90_000),
    ("rtx", Kind::Video, 90_000),
];

/// Characters allowed in anything we copy into an SDP line: no spaces, no line breaks, no
/// attribute separators an attacker could use to inject lines or parameters.
fn is_token(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(&c))
}

pub(super) fn param_value_text(key: &str, value: &Value) -> Result<String, OrtcError> {
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
    if params.codecs.is_empty() {
        return Err(invalid("rtpParameters.codecs must not be empty"));
    }
    if params.codecs.len() > 16 {
        return Err(invalid("rtpParameters.codecs: at most 16 codecs"));
    }
    let mut pts = HashSet::new();
    let mut media_pts = HashSet::new();
    for (i, codec) in params.codecs.iter().enumerate() {
        validate_codec(kind, i, codec, &mut pts, &mut media_pts)?;
    }
    validate_rtx(params, &media_pts)?;
    validate_header_extensions(params)?;
    validate_encodings(kind, params)?;
    validate_mid_and_cname(params)
}

/// One codec: a known codec of `kind`, its clock rate, a free payload type, safe parameters.
fn validate_codec(
    kind: Kind,
    i: usize,
    codec: &RtpCodecParameters,
    pts: &mut HashSet<u8>,
    media_pts: &mut HashSet<u8>,
) -> Result<(), OrtcError> {
    let kind_name = kind_str(kind);
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
        if !is_token(&fb.kind, &[]) || !(fb.parameter.is_empty() || is_token(&fb.parameter, &[])) {
            return Err(invalid(format!(
                "codecs[{i}].rtcpFeedback has an invalid entry"
            )));
        }
    }
    Ok(())
}

/// Every rtx codec names a media codec's payload type in `apt`.
fn validate_rtx(params: &RtpParameters, media_pts: &HashSet<u8>) -> Result<(), OrtcError> {
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
    Ok(())
}

fn validate_header_extensions(params: &RtpParameters) -> Result<(), OrtcError> {
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
    Ok(())
}

/// One to three encodings, all with a `rid` or none, with unique non-zero SSRCs.
fn validate_encodings(kind: Kind, params: &RtpParameters) -> Result<(), OrtcError> {
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
    Ok(())
}

fn validate_mid_and_cname(params: &RtpParameters) -> Result<(), OrtcError> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
}
