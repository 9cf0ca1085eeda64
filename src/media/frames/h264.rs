//! H264 access units (Annex B, as WebCodecs' `avc: {format: "annexb"}` gives them) to and
//! from RTP (RFC 6184, packetization-mode 1): a NAL unit that fits one packet goes as is, a
//! larger one as FU-A fragments; STAP-A aggregates are read on the way back.

/// NAL units of an Annex B byte stream (start codes 00 00 01 or 00 00 00 01 stripped).
pub fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(stream.len(), |next| next - 3);
        // A four-byte start code leaves its leading zero on the previous unit.
        while end > start && n + 1 < starts.len() && stream[end - 1] == 0 {
            end -= 1;
        }
        if end > start {
            units.push(&stream[start..end]);
        }
    }
    units
}

const FU_A: u8 = 28;
const STAP_A: u8 = 24;

/// RTP payloads of one access unit, each at most `max` bytes.
pub fn packetize(access_unit: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for nal in nal_units(access_unit) {
        if nal.len() <= max {
            out.push(nal.to_vec());
            continue;
        }
        let (header, body) = (nal[0], &nal[1..]);
        let indicator = (header & 0xe0) | FU_A;
        let chunks: Vec<&[u8]> = body.chunks(max - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut fu = (header & 0x1f) & 0x1f;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == chunks.len() {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(2 + chunk.len());
            p.extend_from_slice(&[indicator, fu]);
            p.extend_from_slice(chunk);
            out.push(p);
        }
    }
    out
}

/// Rebuilds Annex B access units from RTP payloads.
#[derive(Debug, Default)]
pub struct Reassembly {
    buf: Vec<u8>,
    /// A fragmented NAL unit is open (a lost start drops its fragments).
    in_fragment: bool,
    pub keyframe: bool,
}

impl Reassembly {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.in_fragment = false;
        self.keyframe = false;
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn nal(&mut self, nal: &[u8]) {
        if let Some(first) = nal.first() {
            // IDR slice or sequence parameter set: the unit starts a decodable picture.
            if matches!(first & 0x1f, 5 | 7) {
                self.keyframe = true;
            }
            self.buf.extend_from_slice(&[0, 0, 0, 1]);
            self.buf.extend_from_slice(nal);
        }
    }

    /// One packet's payload; false when it cannot be read (the access unit is broken).
    pub fn push(&mut self, payload: &[u8]) -> bool {
        let Some(&first) = payload.first() else {
            return false;
        };
        match first & 0x1f {
            1..=23 => self.nal(payload),
            STAP_A => {
                let mut at = 1;
                while at + 2 <= payload.len() {
                    let size = usize::from(u16::from_be_bytes([payload[at], payload[at + 1]]));
                    let Some(nal) = payload.get(at + 2..at + 2 + size) else {
                        return false;
                    };
                    self.nal(nal);
                    at += 2 + size;
                }
            }
            FU_A => {
                let Some(&fu) = payload.get(1) else {
                    return false;
                };
                let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
                if start {
                    let header = (first & 0xe0) | (fu & 0x1f);
                    self.nal(&[header]);
                    self.in_fragment = true;
                } else if !self.in_fragment {
                    return false;
                }
                self.buf.extend_from_slice(&payload[2..]);
                if end {
                    self.in_fragment = false;
                }
            }
            _ => return false,
        }
        true
    }

    /// The access unit, and whether it is a keyframe; the buffer is left empty.
    pub fn take(&mut self) -> (Vec<u8>, bool) {
        let keyframe = self.keyframe;
        let unit = std::mem::take(&mut self.buf);
        self.clear();
        (unit, keyframe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::h264_starts_keyframe;

    fn access_unit(idr_len: usize) -> Vec<u8> {
        let mut au = vec![
            0, 0, 0, 1, 0x67, 0x42, 0x00, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
        ];
        au.extend_from_slice(&[0, 0, 1, 0x65]);
        au.extend((0..idr_len).map(|i| (i % 251) as u8 + 1));
        au
    }

    #[test]
    fn a_keyframe_goes_out_as_nal_units_and_fu_a_and_comes_back_the_same() {
        let au = access_unit(3000);
        let packets = packetize(&au, 1100);
        // SPS, PPS, then the IDR slice in three FU-A fragments.
        assert_eq!(packets.len(), 5);
        assert!(
            h264_starts_keyframe(&packets[0]),
            "the forwarder switches at the SPS"
        );
        assert_eq!(packets[2][0] & 0x1f, FU_A);
        assert_eq!(packets[2][1], 0x80 | 5);
        assert_eq!(packets[4][1], 0x40 | 5);
        assert!(packets.iter().all(|p| p.len() <= 1100));
        let mut back = Reassembly::default();
        for p in &packets {
            assert!(back.push(p));
        }
        let (unit, keyframe) = back.take();
        assert!(keyframe);
        assert_eq!(nal_units(&unit), nal_units(&au));
    }

    #[test]
    fn stap_a_is_read_and_a_lost_fragment_start_breaks_the_unit() {
        let mut back = Reassembly::default();
        let stap = [STAP_A, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(back.push(&stap));
        let (unit, keyframe) = back.take();
        assert_eq!(unit, [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce]);
        assert!(keyframe);
        let packets = packetize(&access_unit(3000), 1100);
        assert!(
            !back.push(&packets[3]),
            "a middle fragment without its start"
        );
        // A delta frame (non-IDR slice) is no keyframe.
        assert!(back.push(&[0x41, 0x9a, 1]));
        assert!(!back.take().1);
    }
}
