//! Reading SDP we produced (str0m's offers) back into ORTC terms: router capabilities and
//! consumer parameters.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{
    HeaderExtensionCapability, HeaderExtensionParameters, RtcpFeedback, RtcpParameters,
    RtpCapabilities, RtpCodecCapability, RtpCodecParameters, RtpEncodingParameters, RtpParameters,
    RtxSsrc,
};

/// One m-line of an SDP, as far as ORTC needs it.
#[derive(Debug, Clone, Default)]
pub(super) struct SdpMedia {
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
pub(super) fn parse_media(sdp: &str) -> Vec<SdpMedia> {
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
        read_attribute(m, name, value);
    }
    media
}

/// One `a=` line of an m-line section, if it is one ORTC needs.
fn read_attribute(m: &mut SdpMedia, name: &str, value: &str) {
    match name {
        "mid" => m.mid = value.to_string(),
        "sendonly" | "recvonly" | "sendrecv" | "inactive" => m.direction = name.to_string(),
        "rtpmap" => {
            let Some((pt, spec)) = value.split_once(' ') else {
                return;
            };
            let mut spec = spec.split('/');
            let (Ok(pt), Some(name), Some(Ok(clock))) =
                (pt.parse(), spec.next(), spec.next().map(str::parse))
            else {
                return;
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
            let (Some(Ok(pt)), Some(kind)) = (parts.next().map(str::parse), parts.next()) else {
                return;
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
            let (Some(Ok(ssrc)), Some(rest)) = (parts.next().map(str::parse), parts.next()) else {
                return;
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
                direction: super::sendrecv(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::media::ortc::{subscriber_answer_sdp, RemoteIdentity};

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
