//! Whole encoded frames (WebTransport publishers) into RTP payloads, so WebRTC subscribers
//! are served by the same fan-out, layer selection and allocator as RTP publishers.
//!
//! VP8 (RFC 7741): each packet starts with a 4-byte payload descriptor (X=1, S on the first
//! packet of a frame, I=1 with a 15-bit picture id that counts frames); the marker bit ends
//! the frame. H264 (RFC 6184): NAL units, FU-A for large ones (`h264.rs`). Opus (RFC 7587):
//! one frame, one packet. The RTP timestamp is the frame's
//! microsecond timestamp on the codec's clock, from a random base.

use std::sync::Arc;

use super::FrameCodec;

/// RTP payload per packet, descriptor included: with the RTP header, the extensions str0m
/// adds, SRTP's tag and the UDP/IP headers this stays under a 1280-byte path MTU.
const MAX_RTP_PAYLOAD: usize = 1100;
const VP8_DESCRIPTOR_LEN: usize = 4;

/// One RTP packet's worth of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPiece {
    /// Extended sequence number (never wraps in practice).
    pub seq: u64,
    pub rtp_timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

/// Packetizer state of one layer of one producer.
#[derive(Debug)]
pub struct Packetizer {
    codec: FrameCodec,
    next_seq: u64,
    picture_id: u16,
    timestamp_base: u32,
    first_us: Option<u64>,
}

impl Packetizer {
    pub fn new(codec: FrameCodec) -> Self {
        Packetizer {
            codec,
            next_seq: u64::from(rand::random::<u16>()),
            picture_id: rand::random::<u16>() & 0x7fff,
            timestamp_base: rand::random(),
            first_us: None,
        }
    }

    fn rtp_timestamp(&mut self, timestamp_us: u64) -> u32 {
        let first = *self.first_us.get_or_insert(timestamp_us);
        // Timestamps before the first frame's (a reordered stream) count back from the base.
        let delta = timestamp_us as i128 - first as i128;
        let ticks = delta * i128::from(self.codec.clock_rate()) / 1_000_000;
        self.timestamp_base.wrapping_add(ticks as u32)
    }

    /// The packets of one frame, in order; the last carries the marker bit.
    pub fn packetize(&mut self, frame: &[u8], timestamp_us: u64, mut out: impl FnMut(RtpPiece)) {
        let rtp_timestamp = self.rtp_timestamp(timestamp_us);
        match self.codec {
            FrameCodec::Opus => {
                out(RtpPiece {
                    seq: self.take_seq(),
                    rtp_timestamp,
                    marker: false,
                    payload: Arc::from(frame),
                });
            }
            FrameCodec::H264 => {
                let payloads = super::h264::packetize(frame, MAX_RTP_PAYLOAD);
                let count = payloads.len();
                for (i, payload) in payloads.into_iter().enumerate() {
                    out(RtpPiece {
                        seq: self.take_seq(),
                        rtp_timestamp,
                        marker: i + 1 == count,
                        payload: payload.into(),
                    });
                }
            }
            FrameCodec::Vp8 => {
                let pid = self.picture_id;
                self.picture_id = (self.picture_id + 1) & 0x7fff;
                let chunk = MAX_RTP_PAYLOAD - VP8_DESCRIPTOR_LEN;
                let count = frame.len().div_ceil(chunk).max(1);
                for (i, part) in frame.chunks(chunk).enumerate() {
                    let mut payload = Vec::with_capacity(VP8_DESCRIPTOR_LEN + part.len());
                    // X=1, S on the first packet, PID=0; I=1; M=1 and the 15-bit picture id.
                    payload.push(if i == 0 { 0x90 } else { 0x80 });
                    payload.push(0x80);
                    payload.push(0x80 | (pid >> 8) as u8);
                    payload.push(pid as u8);
                    payload.extend_from_slice(part);
                    out(RtpPiece {
                        seq: self.take_seq(),
                        rtp_timestamp,
                        marker: i + 1 == count,
                        payload: payload.into(),
                    });
                }
            }
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::inspect_video_payload;
    use str0m::format::Codec;

    fn collect(p: &mut Packetizer, frame: &[u8], ts: u64) -> Vec<RtpPiece> {
        let mut out = Vec::new();
        p.packetize(frame, ts, |piece| out.push(piece));
        out
    }

    #[test]
    fn a_vp8_keyframe_is_split_with_descriptors_the_forwarder_reads() {
        let mut p = Packetizer::new(FrameCodec::Vp8);
        // A VP8 keyframe starts with P=0 in its first byte and the start code 9d 01 2a.
        let mut frame = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        frame.resize(2500, 0x55);
        let pieces = collect(&mut p, &frame, 1_000_000);
        assert_eq!(pieces.len(), 3);
        assert_eq!(
            pieces.iter().map(|x| x.marker).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(pieces.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let first = inspect_video_payload(Some(Codec::Vp8), &pieces[0].payload);
        assert!(first.starts_keyframe && first.starts_frame);
        let second = inspect_video_payload(Some(Codec::Vp8), &pieces[1].payload);
        assert!(!second.starts_frame && !second.starts_keyframe);
        assert_eq!(first.picture_id, second.picture_id);
        // The payload is the frame again once the descriptors are stripped.
        let joined: Vec<u8> = pieces
            .iter()
            .flat_map(|x| x.payload[4..].to_vec())
            .collect();
        assert_eq!(joined, frame);
        assert!(pieces.iter().all(|x| x.payload.len() <= MAX_RTP_PAYLOAD));

        // The next frame, 33 ms later: next picture id, 2970 ticks of 90 kHz on.
        let delta = collect(&mut p, &[0x31, 0, 0], 1_033_000);
        let info = inspect_video_payload(Some(Codec::Vp8), &delta[0].payload);
        assert!(!info.starts_keyframe && delta[0].marker);
        assert_eq!(
            info.picture_id,
            Some((first.picture_id.unwrap() + 1) & 0x7fff)
        );
        assert_eq!(
            delta[0].rtp_timestamp.wrapping_sub(pieces[0].rtp_timestamp),
            2970
        );
    }

    #[test]
    fn opus_is_one_packet_per_frame_on_a_48_khz_clock() {
        let mut p = Packetizer::new(FrameCodec::Opus);
        let a = collect(&mut p, &[1, 2, 3], 5_000_000);
        let b = collect(&mut p, &[4, 5], 5_020_000);
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(&*b[0].payload, &[4, 5]);
        assert_eq!(b[0].seq, a[0].seq + 1);
        assert_eq!(b[0].rtp_timestamp.wrapping_sub(a[0].rtp_timestamp), 960);
    }
}
