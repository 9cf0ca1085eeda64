//! Codec facts the forwarding path needs: which codecs a transport negotiates, how to spot the
//! first packet of a keyframe without depacketizing, and which payload-descriptor ids the
//! munger must keep continuous across a simulcast layer switch.
//!
//! | codec | keyframe start detected by                         | ids rewritten on a switch      |
//! |-------|-----------------------------------------------------|--------------------------------|
//! | VP8   | str0m `Vp8Descriptor::starts_keyframe`              | picture id, TL0PICIDX (str0m patch) |
//! | VP9   | own parser: B=1, P=0, spatial layer 0               | picture id, TL0PICIDX (in place, below) |
//! | H264  | str0m `detect_h264_nalu`: SPS (7) or IDR (5), incl. STAP-A and FU-A start | — (none in the payload) |
//! | AV1   | str0m `detect_av1_keyframe`: aggregation header N bit | — (no dependency descriptor support) |
//!
//! Sequence numbers and RTP timestamps are rewritten for every codec by the munger.

use std::sync::Arc;

use str0m::format::{detect_av1_keyframe, detect_h264_nalu, Codec};
use str0m::rtp::Vp8Descriptor;
use str0m::RtcConfig;

/// Codecs a deployment enables (`SFU_CODECS`). All of them are on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecName {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl CodecName {
    /// Every supported codec, in the default preference order of `SFU_CODECS`.
    pub const ALL: [CodecName; 5] = [
        CodecName::Opus,
        CodecName::Vp8,
        CodecName::Vp9,
        CodecName::H264,
        CodecName::Av1,
    ];

    /// Comma-separated names of [`CodecName::ALL`], for messages and defaults.
    pub const KNOWN: &'static str = "opus, vp8, vp9, h264, av1";

    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "opus" => Some(CodecName::Opus),
            "vp8" => Some(CodecName::Vp8),
            "vp9" => Some(CodecName::Vp9),
            "h264" | "avc" => Some(CodecName::H264),
            "av1" => Some(CodecName::Av1),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CodecName::Opus => "opus",
            CodecName::Vp8 => "vp8",
            CodecName::Vp9 => "vp9",
            CodecName::H264 => "h264",
            CodecName::Av1 => "av1",
        }
    }
}

/// Enable exactly the configured codecs on a transport's `RtcConfig`, in the configured order
/// (the order of the payload types in the SFU's offers).
///
/// str0m's defaults match what Chromium offers: VP9 profile 0 and 2; H264 42001f, 42e01f,
/// 4d001f and 64001f, each with packetization-mode 1 and 0 (Chromium 156 encodes the first
/// three; mode 1 is what it prefers); AV1 profile 0. The payload types differ from Chromium's,
/// which is fine: the publisher's offer fixes its payload types, the SFU maps them per subscriber
/// by codec and format parameters (`map_payload_type` in core/forward.rs).
pub fn apply_codecs(mut config: RtcConfig, codecs: &[CodecName]) -> RtcConfig {
    config = config.clear_codecs();
    for codec in codecs {
        config = match codec {
            CodecName::Opus => config.enable_opus(true, false),
            CodecName::Vp8 => config.enable_vp8(true),
            CodecName::Vp9 => config.enable_vp9(true),
            CodecName::H264 => config.enable_h264(true),
            CodecName::Av1 => config.enable_av1(true),
        };
    }
    config
}

/// What the forwarding path learns from one video payload, parsed once per packet.
#[derive(Debug, Clone, Copy, Default)]
pub struct VideoPayloadInfo {
    /// The packet is the first one of a keyframe: a layer switch may start here.
    pub starts_keyframe: bool,
    /// 15-bit picture id (VP8, VP9), kept continuous by the munger.
    pub picture_id: Option<u16>,
    /// TL0PICIDX (VP8, VP9 non-flexible mode), kept continuous by the munger.
    pub tl0_pic_idx: Option<u8>,
    /// VP8: str0m patches the descriptor while serializing (`RtpWrite::vp8_patch`).
    pub vp8: Option<Vp8Descriptor>,
    /// VP9: where the ids sit in the payload, for [`VideoPayloadInfo::payload_for`].
    pub vp9: Option<Vp9Layout>,
    /// Temporal layer of the frame (VP8 TID, VP9 TID); `None` without temporal scalability.
    pub temporal_id: Option<u8>,
    /// The packet is the first one of a frame (VP8 S=1 in partition 0, VP9 B=1).
    pub starts_frame: bool,
}

/// Inspect a video payload. Audio, unknown codecs and malformed payloads are forwarded but
/// never count as keyframes (a layer switch on them waits for a parseable keyframe).
pub fn inspect_video_payload(codec: Option<Codec>, payload: &[u8]) -> VideoPayloadInfo {
    match codec {
        Some(Codec::Vp8) => match Vp8Descriptor::parse(payload) {
            Ok(descriptor) => VideoPayloadInfo {
                starts_keyframe: descriptor.starts_keyframe(payload),
                picture_id: descriptor.picture_id(),
                tl0_pic_idx: descriptor.tl0_pic_idx(),
                vp8: Some(descriptor),
                vp9: None,
                temporal_id: vp8_temporal_id(payload),
                starts_frame: payload[0] & 0x17 == 0x10,
            },
            Err(_) => VideoPayloadInfo::default(),
        },
        Some(Codec::Vp9) => match Vp9Layout::parse(payload) {
            Some(layout) => VideoPayloadInfo {
                starts_keyframe: layout.starts_keyframe,
                picture_id: layout.picture_id(payload),
                tl0_pic_idx: layout.tl0_pic_idx_at.map(|at| payload[at]),
                vp8: None,
                vp9: Some(layout),
                temporal_id: layout.temporal_id,
                starts_frame: layout.starts_frame,
            },
            None => VideoPayloadInfo::default(),
        },
        Some(Codec::H264) => VideoPayloadInfo {
            starts_keyframe: h264_starts_keyframe(payload),
            ..Default::default()
        },
        Some(Codec::Av1) => VideoPayloadInfo {
            starts_keyframe: detect_av1_keyframe(payload),
            ..Default::default()
        },
        _ => VideoPayloadInfo::default(),
    }
}

impl VideoPayloadInfo {
    /// The payload to send with the munged ids. VP8 is patched by str0m during serialization
    /// and every other codec carries no ids, so the shared buffer is reused; a VP9 payload is
    /// copied only when its picture id or TL0PICIDX actually changes.
    pub fn payload_for(
        &self,
        payload: &Arc<[u8]>,
        picture_id: Option<u16>,
        tl0_pic_idx: Option<u8>,
    ) -> Arc<[u8]> {
        let Some(layout) = self.vp9 else {
            return payload.clone();
        };
        let pid_changed = picture_id.is_some() && picture_id != self.picture_id;
        let tl0_changed = tl0_pic_idx.is_some() && tl0_pic_idx != self.tl0_pic_idx;
        if !pid_changed && !tl0_changed {
            return payload.clone();
        }
        let mut bytes = payload.to_vec();
        layout.write_ids(&mut bytes, picture_id, tl0_pic_idx);
        bytes.into()
    }
}

/// TID of a VP8 payload descriptor (RFC 7741 §4.2), when the T bit says it is there:
///
/// ```text
///   byte 0:  X|R|N|S|R|PID     X: extension byte follows
///   X:       I|L|T|K|RSV       I: picture id, L: TL0PICIDX, T: TID, K: KEYIDX
///   I:       M|PictureID (7 bits), and a second byte when M=1
///   L:       TL0PICIDX
///   T/K:     TID (2 bits)|Y|KEYIDX (5 bits)
/// ```
pub fn vp8_temporal_id(payload: &[u8]) -> Option<u8> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let extension = *payload.get(1)?;
    if extension & 0x20 == 0 {
        return None;
    }
    let mut at = 2;
    if extension & 0x80 != 0 {
        at += if *payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
    }
    if extension & 0x40 != 0 {
        at += 1;
    }
    payload.get(at).map(|b| b >> 6)
}

/// H264 (RFC 6184): a keyframe starts with the SPS (NAL type 7) that Chromium's encoders send,
/// with the PPS, in a STAP-A right before each IDR slice (type 5). Switching at the SPS matters
/// for simulcast: each layer has its own resolution, so the decoder needs the new layer's SPS.
/// An IDR packet (single NAL, STAP-A or FU-A start fragment) also counts, for the case where
/// the SPS packet was lost or the encoder sends parameter sets out of band.
pub fn h264_starts_keyframe(payload: &[u8]) -> bool {
    const NAL_SPS: u8 = 7;
    const NAL_IDR: u8 = 5;
    detect_h264_nalu(payload, NAL_SPS) || detect_h264_nalu(payload, NAL_IDR)
}

/// Where the rewritable fields of a VP9 payload descriptor are (draft-ietf-payload-vp9 / RFC
/// 9628 §4.2), plus whether the packet starts a keyframe.
///
/// ```text
///   byte 0:  I|P|L|F|B|E|V|Z     I: picture id present, P: inter-picture predicted,
///                                L: layer indices present, F: flexible mode, B: start of frame
///   I:       M|PID (7 bits), and when M=1 the low 8 bits of a 15-bit PID
///   L:       TID|U|SID|D, then TL0PICIDX when F=0 (non-flexible mode)
/// ```
///
/// A keyframe starts at a packet with B=1 (first packet of the frame), P=0 (no reference to an
/// earlier picture) and, when layer indices are present, spatial layer 0. Chromium sends 15-bit
/// picture ids; a 7-bit one is reported as `None` (it cannot hold the munger's 15-bit value),
/// so such a stream is forwarded with its ids untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Layout {
    pub starts_keyframe: bool,
    /// B=1: the first packet of a frame.
    pub starts_frame: bool,
    /// TID from the layer indices, when present.
    pub temporal_id: Option<u8>,
    /// Offset of the two picture-id bytes (15-bit form only).
    pub picture_id_at: Option<usize>,
    /// Offset of the TL0PICIDX byte.
    pub tl0_pic_idx_at: Option<usize>,
}

impl Vp9Layout {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let first = *payload.first()?;
        let has_pid = first & 0x80 != 0;
        let inter_predicted = first & 0x40 != 0;
        let has_layers = first & 0x20 != 0;
        let flexible = first & 0x10 != 0;
        let start_of_frame = first & 0x08 != 0;
        let mut at = 1;
        let mut picture_id_at = None;
        if has_pid {
            let m = *payload.get(at)? & 0x80 != 0;
            if m {
                payload.get(at + 1)?;
                picture_id_at = Some(at);
                at += 2;
            } else {
                at += 1;
            }
        }
        let mut spatial_id = 0;
        let mut tl0_pic_idx_at = None;
        let mut temporal_id = None;
        if has_layers {
            spatial_id = (*payload.get(at)? >> 1) & 0x07;
            temporal_id = Some(*payload.get(at)? >> 5);
            at += 1;
            if !flexible {
                payload.get(at)?;
                tl0_pic_idx_at = Some(at);
            }
        }
        Some(Vp9Layout {
            starts_keyframe: start_of_frame && !inter_predicted && spatial_id == 0,
            starts_frame: start_of_frame,
            temporal_id,
            picture_id_at,
            tl0_pic_idx_at,
        })
    }

    fn picture_id(&self, payload: &[u8]) -> Option<u16> {
        let at = self.picture_id_at?;
        Some(u16::from_be_bytes([payload[at] & 0x7f, payload[at + 1]]))
    }

    /// Overwrite the ids in place (the M bit stays set; the layout was parsed from `payload`).
    fn write_ids(&self, payload: &mut [u8], picture_id: Option<u16>, tl0_pic_idx: Option<u8>) {
        if let (Some(at), Some(pid)) = (self.picture_id_at, picture_id) {
            payload[at] = 0x80 | ((pid >> 8) as u8 & 0x7f);
            payload[at + 1] = pid as u8;
        }
        if let (Some(at), Some(tl0)) = (self.tl0_pic_idx_at, tl0_pic_idx) {
            payload[at] = tl0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_name_parses_and_round_trips() {
        for codec in CodecName::ALL {
            assert_eq!(CodecName::parse(codec.as_str()), Some(codec));
            assert!(CodecName::KNOWN.contains(codec.as_str()));
        }
        assert_eq!(CodecName::parse(" H264 "), Some(CodecName::H264));
        assert_eq!(CodecName::parse("theora"), None);
    }

    #[test]
    fn all_codecs_are_enabled_on_the_rtc_config() {
        let mut config = apply_codecs(RtcConfig::new(), &CodecName::ALL);
        let codecs: Vec<Codec> = config
            .codec_config()
            .params()
            .iter()
            .map(|p| p.spec().codec)
            .collect();
        for codec in [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
            assert!(codecs.contains(&codec), "{codec:?} missing from {codecs:?}");
        }
        // Chromium's preferred H264 flavour must be among them.
        assert!(config.codec_config().params().iter().any(|p| {
            let f = p.spec().format;
            p.spec().codec == Codec::H264
                && f.profile_level_id == Some(0x42e01f)
                && f.packetization_mode == Some(1)
        }));
    }

    // VP9 descriptors: I=1 with a 15-bit picture id, L=1 (non-flexible, so TL0PICIDX follows).
    fn vp9(first: u8, pid: u16, layer_byte: u8, tl0: u8) -> Vec<u8> {
        vec![
            first,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            layer_byte,
            tl0,
            0xaa,
        ]
    }

    #[test]
    fn vp9_keyframe_start_needs_b_set_p_clear_and_spatial_layer_zero() {
        // I|L|B|E = keyframe, single packet, SID 0.
        let key = vp9(0xac, 0x1234, 0x00, 7);
        let info = inspect_video_payload(Some(Codec::Vp9), &key);
        assert!(info.starts_keyframe);
        assert_eq!(info.picture_id, Some(0x1234));
        assert_eq!(info.tl0_pic_idx, Some(7));
        // P=1: a delta frame.
        assert!(!inspect_video_payload(Some(Codec::Vp9), &vp9(0xec, 1, 0, 7)).starts_keyframe);
        // B=0: a middle packet of a keyframe.
        assert!(!inspect_video_payload(Some(Codec::Vp9), &vp9(0xa4, 1, 0, 7)).starts_keyframe);
        // SID 1 of an SVC key picture.
        assert!(!inspect_video_payload(Some(Codec::Vp9), &vp9(0xac, 1, 0x02, 7)).starts_keyframe);
        // Flexible mode: no TL0PICIDX.
        let flex = inspect_video_payload(Some(Codec::Vp9), &[0xbc, 0x80, 0x05, 0x00, 0x9a]);
        assert!(flex.starts_keyframe);
        assert_eq!((flex.picture_id, flex.tl0_pic_idx), (Some(5), None));
        // 7-bit picture id: parsed, but not rewritable.
        let short = inspect_video_payload(Some(Codec::Vp9), &[0x8c, 0x05, 0x9a]);
        assert!(short.starts_keyframe);
        assert_eq!(short.picture_id, None);
        // Truncated descriptors never panic and never count as keyframes.
        for len in 0..5 {
            let info = inspect_video_payload(Some(Codec::Vp9), &key[..len]);
            assert!(!info.starts_keyframe && info.picture_id.is_none() && info.vp9.is_none());
        }
    }

    #[test]
    fn vp9_ids_are_rewritten_in_a_copy_only_when_they_change() {
        let key: Arc<[u8]> = vp9(0xac, 0x1234, 0x00, 7).into();
        let info = inspect_video_payload(Some(Codec::Vp9), &key);
        let same = info.payload_for(&key, Some(0x1234), Some(7));
        assert!(Arc::ptr_eq(&same, &key));
        let moved = info.payload_for(&key, Some(0x7ffe), Some(200));
        assert_eq!(&moved[..], &[0xac, 0xff, 0xfe, 0x00, 200, 0xaa]);
        let reparsed = inspect_video_payload(Some(Codec::Vp9), &moved);
        assert_eq!(
            (reparsed.picture_id, reparsed.tl0_pic_idx),
            (Some(0x7ffe), Some(200))
        );
        // Other codecs never copy.
        let h264: Arc<[u8]> = vec![0x65, 0x88].into();
        let info = inspect_video_payload(Some(Codec::H264), &h264);
        assert!(Arc::ptr_eq(&info.payload_for(&h264, Some(3), None), &h264));
    }

    #[test]
    fn h264_keyframe_starts_at_sps_or_idr_in_any_packetization() {
        let h264 = |p: &[u8]| inspect_video_payload(Some(Codec::H264), p).starts_keyframe;
        // STAP-A with SPS and PPS (what Chromium sends before an IDR).
        assert!(h264(&[
            0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce
        ]));
        // Single IDR NAL, and the start fragment of an FU-A IDR.
        assert!(h264(&[0x65, 0x88, 0x84]));
        assert!(h264(&[0x7c, 0x85, 0x88]));
        // Middle FU-A fragment of an IDR, a non-IDR slice, a PPS alone: no.
        assert!(!h264(&[0x7c, 0x05, 0x88]));
        assert!(!h264(&[0x41, 0x9a]));
        assert!(!h264(&[0x68, 0xce]));
        assert!(!h264(&[]));
    }

    #[test]
    fn av1_keyframe_starts_at_the_new_coded_video_sequence_bit() {
        let av1 = |p: &[u8]| inspect_video_payload(Some(Codec::Av1), p).starts_keyframe;
        // N=1, W=1: one OBU, a sequence header.
        assert!(av1(&[0x18, 0x08, 0x00]));
        // N=0: a delta frame's OBU_FRAME.
        assert!(!av1(&[0x10, 0x30, 0x00]));
        assert!(!av1(&[]));
    }

    #[test]
    fn vp8_keeps_using_the_str0m_descriptor() {
        // X=1 S=1; I=1 with a 15-bit picture id; keyframe bit 0.
        let key = [0x90, 0x80, 0x81, 0x02, 0x00, 0x00, 0x00];
        let info = inspect_video_payload(Some(Codec::Vp8), &key);
        assert!(info.starts_keyframe);
        assert_eq!(info.picture_id, Some(0x0102));
        assert!(info.vp8.is_some() && info.vp9.is_none());
        assert!(!inspect_video_payload(None, &key).starts_keyframe);
        assert!(info.starts_frame);
        assert_eq!(info.temporal_id, None);
    }

    #[test]
    fn vp8_and_vp9_temporal_ids_are_read() {
        // VP8 X=1 S=1 PID=0; I,L,T set; 15-bit picture id; TL0PICIDX; TID=2 Y=1.
        let vp8 = [0x90, 0xE0, 0x81, 0x02, 0x07, 0xA0, 0x00];
        let info = inspect_video_payload(Some(Codec::Vp8), &vp8);
        assert_eq!(info.temporal_id, Some(2));
        assert_eq!(info.tl0_pic_idx, Some(0x07));
        // A later packet of the same frame (S=0) keeps its TID; a 7-bit picture id shifts T.
        let continued = [0x80, 0xA0, 0x05, 0x40, 0x00];
        let info = inspect_video_payload(Some(Codec::Vp8), &continued);
        assert_eq!((info.temporal_id, info.starts_frame), (Some(1), false));
        // VP9: I=1 (15-bit), L=1, B=1; TID=1 in the layer byte, then TL0PICIDX.
        let vp9 = [0xA8, 0x80, 0x05, 0x20, 0x09, 0x00];
        let info = inspect_video_payload(Some(Codec::Vp9), &vp9);
        assert_eq!((info.temporal_id, info.starts_frame), (Some(1), true));
        assert_eq!(info.tl0_pic_idx, Some(0x09));
    }
}
