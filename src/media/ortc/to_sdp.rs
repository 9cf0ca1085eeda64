//! SDP synthesis: the offer a browser would send for its published tracks, and the answer it
//! would give to our offer for consumers. Inputs were validated (`validate`) beforehand.

use std::fmt::Write as _;

use super::from_sdp::parse_media;
use super::validate::param_value_text;
use super::{kind_str, split_mime, RtpCodecParameters, RtpParameters};
use crate::media::Kind;

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

pub(super) fn write_codec_lines(out: &mut String, codec: &RtpCodecParameters) {
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
    use serde_json::json;

    use super::*;
    use crate::media::ortc::validate_producer;

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
}
