//! Media as whole encoded frames, the way WebTransport clients send and receive it
//! (WebCodecs): the framing (`wire`), reading publishers' streams on the worker (`ingest`),
//! frames into RTP for WebRTC subscribers (`packetize`), RTP into frames for WebTransport
//! subscribers (`depacketize`), and writing to those subscribers without waiting (`sink`).

pub mod depacketize;
pub mod h264;
pub mod ingest;
pub mod packetize;
pub mod sink;
pub mod wire;

use super::Kind;

/// Codecs a WebTransport publisher may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCodec {
    Vp8,
    /// Annex B access units; RTP packetization-mode 1 (`h264.rs`).
    H264,
    Opus,
}

impl FrameCodec {
    /// From a WebCodecs/mediasoup-style name: `vp8`, `video/VP8`, `opus`, `audio/opus`.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.rsplit('/').next().unwrap_or(name);
        match name.to_ascii_lowercase().as_str() {
            "vp8" => Some(FrameCodec::Vp8),
            "h264" | "avc" => Some(FrameCodec::H264),
            "opus" => Some(FrameCodec::Opus),
            _ => None,
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            FrameCodec::Vp8 | FrameCodec::H264 => Kind::Video,
            FrameCodec::Opus => Kind::Audio,
        }
    }

    pub fn clock_rate(self) -> u32 {
        self.kind().clock_rate()
    }

    pub fn mime_type(self) -> &'static str {
        match self {
            FrameCodec::Vp8 => "video/VP8",
            FrameCodec::H264 => "video/H264",
            FrameCodec::Opus => "audio/opus",
        }
    }

    pub(crate) fn str0m_codec(self) -> str0m::format::Codec {
        match self {
            FrameCodec::Vp8 => str0m::format::Codec::Vp8,
            FrameCodec::H264 => str0m::format::Codec::H264,
            FrameCodec::Opus => str0m::format::Codec::Opus,
        }
    }
}

impl FrameCodec {
    /// The frame codec of a str0m codec, when frames of it can be sent.
    pub(crate) fn from_str0m(codec: str0m::format::Codec) -> Option<Self> {
        match codec {
            str0m::format::Codec::Vp8 => Some(FrameCodec::Vp8),
            str0m::format::Codec::H264 => Some(FrameCodec::H264),
            str0m::format::Codec::Opus => Some(FrameCodec::Opus),
            _ => None,
        }
    }
}
