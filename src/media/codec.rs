//! Codec facts the forwarding path needs: which codecs a transport negotiates and how to spot
//! the first packet of a keyframe without depacketizing.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;
use str0m::RtcConfig;

/// Codecs a deployment enables. Issue #2 ships Opus and VP8; the rest plug in here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecName {
    Opus,
    Vp8,
}

impl CodecName {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "opus" => Some(CodecName::Opus),
            "vp8" => Some(CodecName::Vp8),
            _ => None,
        }
    }
}

/// Enable exactly the configured codecs on a transport's `RtcConfig`.
pub fn apply_codecs(mut config: RtcConfig, codecs: &[CodecName]) -> RtcConfig {
    config = config.clear_codecs();
    for codec in codecs {
        config = match codec {
            CodecName::Opus => config.enable_opus(true, false),
            CodecName::Vp8 => config.enable_vp8(true),
        };
    }
    config
}

/// VP8 payload descriptor fields that the munger rewrites, parsed once per packet.
#[derive(Debug, Clone, Copy)]
pub struct VideoPayloadInfo {
    pub starts_keyframe: bool,
    pub vp8: Option<Vp8Descriptor>,
}

/// Inspect a video payload. Unknown codecs are forwarded but never count as keyframes, so a
/// layer switch on them waits (documented limitation until their detectors land).
pub fn inspect_video_payload(codec: Option<Codec>, payload: &[u8]) -> VideoPayloadInfo {
    match codec {
        Some(Codec::Vp8) => match Vp8Descriptor::parse(payload) {
            Ok(descriptor) => VideoPayloadInfo {
                starts_keyframe: descriptor.starts_keyframe(payload),
                vp8: Some(descriptor),
            },
            Err(_) => VideoPayloadInfo {
                starts_keyframe: false,
                vp8: None,
            },
        },
        _ => VideoPayloadInfo {
            starts_keyframe: false,
            vp8: None,
        },
    }
}
