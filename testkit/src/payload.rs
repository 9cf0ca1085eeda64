//! Synthetic RTP payloads: codec-shaped one-packet frames for tests (the SFU's keyframe
//! detection and id rewriting see what a browser would send), and stamped, realistically sized
//! Opus/VP8 packets for load runs.
//!
//! A stamp is 13 bytes right after the codec header (the VP8 payload descriptor, plus the VP8
//! frame header on a frame's first packet; the Opus TOC byte): layer ([`AUDIO_LAYER`] = audio),
//! a per-stream packet counter (u32 BE) and the send time in µs since the run's epoch (u64 BE).

use str0m::format::Codec;

/// Simulcast rids, lowest layer first.
pub const LAYERS: [&str; 3] = ["q", "h", "f"];
/// Target bitrates of the three stamped layers (bits/s) and their nominal sizes.
pub const LAYER_BITRATES: [u64; 3] = [150_000, 500_000, 1_500_000];
const LAYER_SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
/// Frame rate of stamped video.
pub const FPS: u64 = 30;
/// Stamped keyframes are this many times a delta frame's size.
const KEYFRAME_FACTOR: usize = 4;
/// Largest RTP payload written (≤ 1200 bytes, as browsers packetize).
pub const MAX_PAYLOAD: usize = 1150;
/// Stamped Opus at ~32 kbit/s: 80 bytes every 20 ms.
const OPUS_PAYLOAD: usize = 80;
pub const STAMP_LEN: usize = 13;
pub const AUDIO_LAYER: u8 = 255;

/// Per-layer picture id (VP8/VP9) of a synthetic frame: each layer has its own sequence, as a
/// real simulcast encoder's layers do, so the SFU must rewrite it on a switch.
pub fn synthetic_picture_id(frame: u64, layer: u8) -> u16 {
    ((frame + 1000 * layer as u64) % 0x8000) as u16
}

/// Per-layer TL0PICIDX (VP9) of a synthetic frame.
pub fn synthetic_tl0(frame: u64, layer: u8) -> u8 {
    (frame + 50 * layer as u64) as u8
}

/// A VP8 payload descriptor (X=1, S=1 when `start`, I=1 with a 15-bit picture id).
pub fn vp8_descriptor(pid: u16, start: bool) -> [u8; 4] {
    [
        if start { 0x90 } else { 0x80 },
        0x80,
        0x80 | (pid >> 8) as u8,
        pid as u8,
    ]
}

/// One VP8 packet that is a whole frame: descriptor, then the frame tag byte (lowest bit 0 for
/// a keyframe), padded with `fill` to `size` bytes.
pub fn vp8_frame(pid: u16, keyframe: bool, size: usize, fill: u8) -> Vec<u8> {
    let mut payload = vp8_descriptor(pid, true).to_vec();
    payload.push(if keyframe { 0x00 } else { 0x01 });
    payload.resize(size.max(payload.len()), fill);
    payload
}

/// One packet that is a whole frame, shaped like `codec`'s RTP payload format. The last byte
/// is always the layer index.
///
/// - Opus: a TOC byte and a few bytes.
/// - VP8: descriptor X=1 S=1 with a 15-bit picture id, then the keyframe bit (0 = key).
/// - VP9: descriptor I|L|B|E (+P for a delta frame), 15-bit picture id, layer byte (TID/SID 0),
///   TL0PICIDX, then an uncompressed-header byte (frame_type 0 = key).
/// - H264: key = STAP-A holding SPS, PPS and an IDR slice; delta = a single non-IDR slice.
/// - AV1: aggregation header W=1 with N=1 and a sequence-header OBU for a key, N=0 and an
///   OBU_FRAME for a delta frame.
pub fn synthetic_payload(codec: Codec, frame: u64, layer: u8, keyframe: bool) -> Vec<u8> {
    let pid = synthetic_picture_id(frame, layer);
    match codec {
        Codec::Vp8 => {
            let mut payload = vp8_frame(pid, keyframe, 7, 0x00);
            payload.push(layer);
            payload
        }
        Codec::Vp9 => vec![
            if keyframe { 0xac } else { 0xec },
            0x80 | (pid >> 8) as u8,
            pid as u8,
            0x00,
            synthetic_tl0(frame, layer),
            if keyframe { 0x80 } else { 0x84 },
            layer,
        ],
        Codec::H264 if keyframe => vec![
            0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce, 0x00, 0x03, 0x65, 0x88, layer,
        ],
        Codec::H264 => vec![0x41, 0x9a, layer],
        Codec::Av1 if keyframe => vec![0x18, 0x08, 0x00, layer],
        Codec::Av1 => vec![0x10, 0x30, 0x00, layer],
        _ => vec![0xfc, 0xff, 0xfe, layer],
    }
}

/// Whether a payload made by [`synthetic_payload`] is a keyframe, read the way a receiver of
/// that codec would (independently of the SFU's detectors).
pub fn synthetic_is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => payload.len() > 4 && payload[4] & 0x01 == 0,
        Codec::Vp9 => payload.first().is_some_and(|b| b & 0x40 == 0),
        Codec::H264 => payload.first().is_some_and(|b| b & 0x1f == 24),
        Codec::Av1 => payload.first().is_some_and(|b| b & 0x08 != 0),
        _ => false,
    }
}

pub fn stamp(layer: u8, counter: u32, sent_us: u64) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    out[0] = layer;
    out[1..5].copy_from_slice(&counter.to_be_bytes());
    out[5..13].copy_from_slice(&sent_us.to_be_bytes());
    out
}

/// A stamped Opus packet.
pub fn stamped_opus(counter: u32, sent_us: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(OPUS_PAYLOAD);
    payload.push(0xfc);
    payload.extend_from_slice(&stamp(AUDIO_LAYER, counter, sent_us));
    payload.resize(OPUS_PAYLOAD, 0);
    payload
}

/// The packets of one stamped VP8 frame of simulcast `layer`, sized for its bitrate;
/// `counter` numbers the layer's packets and advances by as many as are returned.
pub fn stamped_vp8_frame(
    layer: usize,
    keyframe: bool,
    pid: u16,
    counter: &mut u32,
    sent_us: u64,
) -> Vec<Vec<u8>> {
    let base = (LAYER_BITRATES[layer] / 8 / FPS) as usize;
    let size = if keyframe {
        base * KEYFRAME_FACTOR
    } else {
        base
    };
    let count = size.div_ceil(MAX_PAYLOAD - 30).max(1);
    let per_packet = size / count;
    (0..count)
        .map(|i| {
            let mut payload = Vec::with_capacity(per_packet.max(40));
            payload.extend_from_slice(&vp8_descriptor(pid, i == 0));
            if i == 0 {
                if keyframe {
                    let (w, h) = LAYER_SIZES[layer];
                    // Frame tag (key, shown) + start code + dimensions.
                    payload.extend_from_slice(&[0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
                    payload.extend_from_slice(&w.to_le_bytes());
                    payload.extend_from_slice(&h.to_le_bytes());
                } else {
                    payload.extend_from_slice(&[0x11, 0x00, 0x00]);
                }
            }
            let n = *counter;
            *counter = n.wrapping_add(1);
            payload.extend_from_slice(&stamp(layer as u8, n, sent_us));
            payload.resize(per_packet.max(payload.len()).min(MAX_PAYLOAD), 0);
            payload
        })
        .collect()
}

/// Find the stamp: after the Opus TOC byte, or after the VP8 descriptor (and frame header).
pub fn read_stamp(payload: &[u8], audio: bool) -> Option<(u8, u32, u64)> {
    let offset = if audio { 1 } else { vp8_stamp_offset(payload)? };
    let s = payload.get(offset..offset + STAMP_LEN)?;
    Some((
        s[0],
        u32::from_be_bytes([s[1], s[2], s[3], s[4]]),
        u64::from_be_bytes([s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12]]),
    ))
}

fn vp8_stamp_offset(payload: &[u8]) -> Option<usize> {
    // Our descriptor: X=1, I=1 with a 15-bit picture id → 4 bytes. Parse generally anyway.
    let first = *payload.first()?;
    let mut offset = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(1)?;
        offset += 1;
        if ext & 0x80 != 0 {
            offset += if payload.get(offset)? & 0x80 != 0 {
                2
            } else {
                1
            };
        }
        if ext & 0x40 != 0 {
            offset += 1;
        }
        if ext & 0x30 != 0 {
            offset += 1;
        }
    }
    let start_of_partition = first & 0x10 != 0 && first & 0x07 == 0;
    if start_of_partition {
        let keyframe = payload.get(offset)? & 0x01 == 0;
        offset += if keyframe { 10 } else { 3 };
    }
    Some(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_from_every_packet_shape() {
        assert_eq!(read_stamp(&stamped_opus(7, 99), true), Some((255, 7, 99)));
        for keyframe in [true, false] {
            let mut counter = 5;
            let packets = stamped_vp8_frame(2, keyframe, 300, &mut counter, 1234);
            assert!(packets.len() > 1 && packets.iter().all(|p| p.len() <= MAX_PAYLOAD));
            for (i, p) in packets.iter().enumerate() {
                assert_eq!(read_stamp(p, false), Some((2, 5 + i as u32, 1234)));
            }
            assert_eq!(counter, 5 + packets.len() as u32);
        }
    }

    #[test]
    fn synthetic_keyframes_are_recognised() {
        for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
            assert!(synthetic_is_keyframe(
                codec,
                &synthetic_payload(codec, 3, 1, true)
            ));
            assert!(!synthetic_is_keyframe(
                codec,
                &synthetic_payload(codec, 3, 1, false)
            ));
        }
        assert_eq!(
            synthetic_payload(Codec::Vp8, 0, 2, true),
            [0x90, 0x80, 0x87, 0xd0, 0x00, 0x00, 0x00, 2]
        );
    }
}
