//! RTP back into whole frames, for WebTransport subscribers of WebRTC publishers. One
//! [`Depacketizer`] per layer of a producer that has such subscribers (run once per packet,
//! not per subscriber).
//!
//! VP8 (RFC 7741): a frame starts at a packet with S=1 and partition index 0 and ends at the
//! marker bit; descriptors are stripped and the partitions joined. A sequence gap drops the
//! frame in progress (its subscribers wait for the next keyframe). Opus: one packet, one frame.

use std::sync::Arc;

use super::FrameCodec;

/// A frame rebuilt from RTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub keyframe: bool,
    pub timestamp_us: u64,
    pub data: Arc<[u8]>,
}

/// Largest frame assembled; a stream of packets without a marker cannot grow memory past it.
const MAX_ASSEMBLED: usize = 1 << 20;

#[derive(Debug)]
pub struct Depacketizer {
    codec: FrameCodec,
    buf: Vec<u8>,
    assembling: bool,
    keyframe: bool,
    next_seq: Option<u64>,
    /// Last RTP timestamp seen and the microseconds it stands for: layers of one publisher
    /// start from their arrival time, so a switch keeps timestamps close.
    clock: Option<(u32, u64)>,
    /// Frames lost to gaps (for stats and tests).
    pub broken_frames: u64,
    h264: super::h264::Reassembly,
    /// RTP timestamp of the H264 access unit being assembled (H264 has no start bit).
    unit_timestamp: Option<u32>,
}

/// Length of a VP8 payload descriptor, or `None` when malformed.
fn vp8_descriptor_len(p: &[u8]) -> Option<usize> {
    let first = *p.first()?;
    if first & 0x80 == 0 {
        return Some(1);
    }
    let ext = *p.get(1)?;
    let mut len = 2;
    if ext & 0x80 != 0 {
        len += if *p.get(len)? & 0x80 != 0 { 2 } else { 1 };
    }
    if ext & 0x40 != 0 {
        len += 1;
    }
    if ext & 0x30 != 0 {
        len += 1;
    }
    (len < p.len()).then_some(len)
}

impl Depacketizer {
    pub fn new(codec: FrameCodec) -> Self {
        Depacketizer {
            codec,
            buf: Vec::new(),
            assembling: false,
            keyframe: false,
            next_seq: None,
            clock: None,
            broken_frames: 0,
            h264: Default::default(),
            unit_timestamp: None,
        }
    }

    fn timestamp_us(&mut self, rtp_timestamp: u32, arrival_us: u64) -> u64 {
        let rate = i64::from(self.codec.clock_rate());
        let us = match self.clock {
            None => arrival_us,
            Some((last_rtp, last_us)) => {
                let ticks = i64::from(rtp_timestamp.wrapping_sub(last_rtp) as i32);
                (last_us as i64 + ticks * 1_000_000 / rate).max(0) as u64
            }
        };
        self.clock = Some((rtp_timestamp, us));
        us
    }

    /// One packet in; a whole frame out when it completes one.
    pub fn push(
        &mut self,
        seq: u64,
        rtp_timestamp: u32,
        marker: bool,
        payload: &[u8],
        arrival_us: u64,
    ) -> Option<Frame> {
        let in_order = self.next_seq.is_none_or(|n| n == seq);
        self.next_seq = Some(seq + 1);
        match self.codec {
            FrameCodec::Opus => Some(Frame {
                keyframe: true,
                timestamp_us: self.timestamp_us(rtp_timestamp, arrival_us),
                data: Arc::from(payload),
            }),
            FrameCodec::H264 => {
                if self.unit_timestamp != Some(rtp_timestamp) {
                    if self.assembling && !self.h264.is_empty() {
                        self.broken_frames += 1;
                    }
                    self.h264.clear();
                    self.assembling = true;
                    self.unit_timestamp = Some(rtp_timestamp);
                } else if !in_order && self.assembling {
                    self.assembling = false;
                    self.broken_frames += 1;
                }
                if !self.assembling {
                    return None;
                }
                if !self.h264.push(payload) || self.h264.len() > MAX_ASSEMBLED {
                    self.assembling = false;
                    self.broken_frames += 1;
                    return None;
                }
                if !marker {
                    return None;
                }
                self.assembling = false;
                self.unit_timestamp = None;
                let (unit, keyframe) = self.h264.take();
                Some(Frame {
                    keyframe,
                    timestamp_us: self.timestamp_us(rtp_timestamp, arrival_us),
                    data: unit.into(),
                })
            }
            FrameCodec::Vp8 => {
                let len = vp8_descriptor_len(payload)?;
                let starts = payload[0] & 0x10 != 0 && payload[0] & 0x0f == 0;
                if starts {
                    if self.assembling {
                        self.broken_frames += 1;
                    }
                    self.buf.clear();
                    self.assembling = true;
                    self.keyframe = payload[len] & 0x01 == 0;
                } else if !in_order && self.assembling {
                    // A packet of this frame is missing: it cannot be decoded.
                    self.assembling = false;
                    self.broken_frames += 1;
                }
                if !self.assembling {
                    return None;
                }
                if self.buf.len() + payload.len() - len > MAX_ASSEMBLED {
                    self.assembling = false;
                    self.broken_frames += 1;
                    return None;
                }
                self.buf.extend_from_slice(&payload[len..]);
                if !marker {
                    return None;
                }
                self.assembling = false;
                Some(Frame {
                    keyframe: self.keyframe,
                    timestamp_us: self.timestamp_us(rtp_timestamp, arrival_us),
                    data: Arc::from(&self.buf[..]),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frames::packetize::Packetizer;

    #[test]
    fn packetized_frames_come_back_whole() {
        let mut out = Packetizer::new(FrameCodec::Vp8);
        let mut back = Depacketizer::new(FrameCodec::Vp8);
        let mut key = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        key.resize(3000, 7);
        let delta = vec![0x31u8; 500];
        let mut frames = Vec::new();
        for (i, f) in [&key, &delta].into_iter().enumerate() {
            out.packetize(f, i as u64 * 33_000, |p| {
                frames.extend(back.push(p.seq, p.rtp_timestamp, p.marker, &p.payload, 1_000));
            });
        }
        assert_eq!(frames.len(), 2);
        assert!(frames[0].keyframe && !frames[1].keyframe);
        assert_eq!(&*frames[0].data, &key[..]);
        assert_eq!(&*frames[1].data, &delta[..]);
        assert_eq!(frames[0].timestamp_us, 1_000);
        // 2970 ticks of 90 kHz later.
        assert_eq!(frames[1].timestamp_us, 1_000 + 33_000);
    }

    #[test]
    fn h264_access_units_survive_the_round_trip_through_rtp() {
        let mut out = Packetizer::new(FrameCodec::H264);
        let mut back = Depacketizer::new(FrameCodec::H264);
        let mut key = vec![
            0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65,
        ];
        key.extend(std::iter::repeat_n(9u8, 4000));
        let delta = [0, 0, 0, 1, 0x41, 0x9a, 7, 7];
        let mut frames = Vec::new();
        for (i, f) in [&key[..], &delta[..]].into_iter().enumerate() {
            out.packetize(f, i as u64 * 33_000, |p| {
                frames.extend(back.push(p.seq, p.rtp_timestamp, p.marker, &p.payload, 0));
            });
        }
        assert_eq!(frames.len(), 2);
        assert!(frames[0].keyframe && !frames[1].keyframe);
        // Start codes are normalised to four bytes; the NAL units are the same.
        assert_eq!(
            crate::media::frames::h264::nal_units(&frames[0].data),
            crate::media::frames::h264::nal_units(&key)
        );
        assert_eq!(&*frames[1].data, &delta[..]);
    }

    #[test]
    fn a_gap_drops_the_frame_and_the_next_start_recovers() {
        let mut out = Packetizer::new(FrameCodec::Vp8);
        let mut back = Depacketizer::new(FrameCodec::Vp8);
        let mut pieces = Vec::new();
        out.packetize(&[0x10u8; 2500], 0, |p| pieces.push(p));
        out.packetize(&[0x11u8; 100], 33_000, |p| pieces.push(p));
        pieces.remove(1);
        let frames: Vec<Frame> = pieces
            .iter()
            .filter_map(|p| back.push(p.seq, p.rtp_timestamp, p.marker, &p.payload, 0))
            .collect();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data.len(), 100);
        assert_eq!(back.broken_frames, 1);
        // Opus packets are frames of their own.
        let mut opus = Depacketizer::new(FrameCodec::Opus);
        let f = opus.push(1, 960, false, &[1, 2], 5).unwrap();
        assert_eq!((&*f.data, f.timestamp_us), (&[1u8, 2][..], 5));
        let f = opus.push(2, 1920, false, &[3], 99).unwrap();
        assert_eq!(f.timestamp_us, 5 + 20_000);
    }
}
