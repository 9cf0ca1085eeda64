//! The framing of media over WebTransport (README "Media over WebTransport"), sans I/O.
//!
//! Every media stream is a unidirectional WebTransport stream: a stream header naming the
//! track and layer, then frames, each a small header and the encoded chunk:
//!
//! ```text
//! stream header (18 bytes): version u8 = 1 | producerId 16 bytes (UUID) | layer u8
//! frame header  (13 bytes): flags u8 (bit 0: keyframe; others 0) | timestamp u64 (µs) | length u32
//! ```
//!
//! Integers are big-endian. A publisher opens one stream per group of pictures per layer
//! (a keyframe first) and one per audio track; frames of one stream are in decode order.

use uuid::Uuid;

pub const VERSION: u8 = 1;
pub const STREAM_HEADER_LEN: usize = 18;
pub const FRAME_HEADER_LEN: usize = 13;
/// Largest frame accepted: a 4K keyframe at high quality fits; past it the stream is refused
/// before any of its payload is buffered.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
const FLAG_KEYFRAME: u8 = 0x01;

/// Why a stream or frame was refused: the code the client reads in `frameError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameErrorCode {
    /// A header that does not follow the framing (version, reserved bits, layer, length 0).
    InvalidFrame,
    /// A frame longer than [`MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// The stream names a producer that is not one of this session's frame producers.
    TrackNotYours,
    /// A stream that did not deliver its header or a whole frame in time.
    FrameTimeout,
}

impl FrameErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameErrorCode::InvalidFrame => "INVALID_FRAME",
            FrameErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            FrameErrorCode::TrackNotYours => "TRACK_NOT_YOURS",
            FrameErrorCode::FrameTimeout => "FRAME_TIMEOUT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: FrameErrorCode,
    pub message: String,
}

impl FrameError {
    pub fn new(code: FrameErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub producer: Uuid,
    pub layer: u8,
}

impl StreamHeader {
    pub fn parse(bytes: &[u8; STREAM_HEADER_LEN]) -> Result<Self, FrameError> {
        if bytes[0] != VERSION {
            return Err(FrameError::new(
                FrameErrorCode::InvalidFrame,
                format!("stream header version {} (this server speaks 1)", bytes[0]),
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[1..17]);
        Ok(StreamHeader {
            producer: Uuid::from_bytes(id),
            layer: bytes[17],
        })
    }

    pub fn encode(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut out = [0u8; STREAM_HEADER_LEN];
        out[0] = VERSION;
        out[1..17].copy_from_slice(self.producer.as_bytes());
        out[17] = self.layer;
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub keyframe: bool,
    /// The encoder's timestamp of the chunk, in microseconds (WebCodecs' `timestamp`).
    pub timestamp_us: u64,
    pub length: usize,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<Self, FrameError> {
        let flags = bytes[0];
        if flags & !FLAG_KEYFRAME != 0 {
            return Err(FrameError::new(
                FrameErrorCode::InvalidFrame,
                format!("frame flags {flags:#04x} set reserved bits"),
            ));
        }
        let timestamp_us = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
        if length == 0 {
            return Err(FrameError::new(
                FrameErrorCode::InvalidFrame,
                "frame of length 0",
            ));
        }
        if length > MAX_FRAME_BYTES {
            return Err(FrameError::new(
                FrameErrorCode::FrameTooLarge,
                format!("frame of {length} bytes; the limit is {MAX_FRAME_BYTES}"),
            ));
        }
        Ok(FrameHeader {
            keyframe: flags & FLAG_KEYFRAME != 0,
            timestamp_us,
            length,
        })
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0] = if self.keyframe { FLAG_KEYFRAME } else { 0 };
        out[1..9].copy_from_slice(&self.timestamp_us.to_be_bytes());
        out[9..13].copy_from_slice(&(self.length as u32).to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let stream = StreamHeader {
            producer: Uuid::new_v4(),
            layer: 2,
        };
        assert_eq!(StreamHeader::parse(&stream.encode()), Ok(stream));
        let frame = FrameHeader {
            keyframe: true,
            timestamp_us: 1_234_567_890,
            length: 4321,
        };
        assert_eq!(FrameHeader::parse(&frame.encode()), Ok(frame));
    }

    #[test]
    fn bad_headers_get_their_codes() {
        let mut stream = StreamHeader {
            producer: Uuid::nil(),
            layer: 0,
        }
        .encode();
        stream[0] = 9;
        assert_eq!(
            StreamHeader::parse(&stream).unwrap_err().code,
            FrameErrorCode::InvalidFrame
        );
        let frame = |flags: u8, length: u32| {
            let mut h = [0u8; FRAME_HEADER_LEN];
            h[0] = flags;
            h[9..13].copy_from_slice(&length.to_be_bytes());
            FrameHeader::parse(&h).map_err(|e| e.code)
        };
        assert_eq!(frame(0x02, 10), Err(FrameErrorCode::InvalidFrame));
        assert_eq!(frame(0, 0), Err(FrameErrorCode::InvalidFrame));
        assert_eq!(frame(0, u32::MAX), Err(FrameErrorCode::FrameTooLarge));
        assert_eq!(
            frame(1, MAX_FRAME_BYTES as u32 + 1),
            Err(FrameErrorCode::FrameTooLarge)
        );
        assert!(frame(1, MAX_FRAME_BYTES as u32).is_ok());
    }
}
