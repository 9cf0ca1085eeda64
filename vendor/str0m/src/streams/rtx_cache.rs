use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::io::DATAGRAM_MAX_PACKET_SIZE;
use crate::packet::Vp8Patch;
use crate::rtp_::{ExtensionValues, MediaTime, Mid, Pt, Rid, RtpHeader, SenderInfo, SeqNo, Ssrc};
use crate::rtp_::VideoOrientation;

use super::RtpPacket;
use super::rtx_cache_buf::EvictingBuffer;

const RTX_CACHE_SIZE_QUANTIZER: usize = 25;
const RTX_CACHE_QUANTIZE_SLOTS: usize = DATAGRAM_MAX_PACKET_SIZE / RTX_CACHE_SIZE_QUANTIZER;

#[derive(Debug)]
pub(crate) struct RtxCache {
    // Data, new additions here probably need to be cleared in [`clear`].
    packet_by_seq_no: EvictingBuffer<CachedPacket>,

    // Technically we want [Option<SeqNo>; X] to indicate the absence of
    // a SeqNo. However We can half the storage space by using the sentinel
    // values SeqNo::MAX to indicate None
    seq_no_by_quantized_size: [SeqNo; RTX_CACHE_QUANTIZE_SLOTS],

    /// The cached packet last asked for, rebuilt from its compact form.
    scratch: RtpPacket,

    /// The MID/RID combinations the cached packets carry, which [`CachedPacket::ids`] points
    /// into: constant per stream except that str0m stops sending MID/RID once the receiver
    /// acknowledged the SSRC, so one or two entries.
    ids: Vec<StreamIds>,
}

/// At most this many [`StreamIds`] are shared; a packet with yet another combination keeps
/// its extensions in [`Rare`].
const MAX_SHARED_IDS: usize = 4;

/// A sent packet as the cache keeps it (patched, see vendor/README.md): an `RtpPacket` is
/// ~400 bytes, most of them header extensions and CSRCs a forwarded packet never has, and an
/// SFU keeps a cache per subscriber. This keeps the fields in use inline (~150 bytes) and the
/// rest boxed, only when set; [`CachedPacket::to_packet`] gives back the same `RtpPacket`.
/// Its sequence number is the buffer position, and MID/RID are shared per cache.
#[derive(Debug)]
struct CachedPacket {
    time: MediaTime,
    payload: Arc<[u8]>,
    timestamp: Instant,
    vp8_patch: Option<Vp8Patch>,
    pt: Pt,
    marker: bool,
    has_padding: bool,
    has_extension: bool,
    version: u8,
    sequence_number: u16,
    rtp_time: u32,
    ssrc: Ssrc,
    header_len: usize,
    exts: CommonExts,
    /// Index into [`RtxCache::ids`] (unused when `rare` is set).
    ids: u8,
    /// Everything else of the header, when any of it is set.
    rare: Option<Box<Rare>>,
}

/// The header extensions an SFU forwards; MID/RID (set by str0m itself) are in
/// [`StreamIds`], the others go to [`Rare`].
#[derive(Debug, Clone, Copy)]
struct CommonExts {
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    video_orientation: Option<VideoOrientation>,
    video_content_type: Option<u8>,
}

/// The stream identification extensions of a sent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamIds {
    mid: Option<Mid>,
    rid: Option<Rid>,
    rid_repair: Option<Rid>,
}

impl StreamIds {
    fn of(e: &ExtensionValues) -> Self {
        StreamIds {
            mid: e.mid,
            rid: e.rid,
            rid_repair: e.rid_repair,
        }
    }
}

impl CommonExts {
    fn of(e: &ExtensionValues) -> Self {
        CommonExts {
            audio_level: e.audio_level,
            voice_activity: e.voice_activity,
            video_orientation: e.video_orientation,
            video_content_type: e.video_content_type,
        }
    }

    fn to_ext_vals(self, ids: StreamIds) -> ExtensionValues {
        ExtensionValues {
            audio_level: self.audio_level,
            voice_activity: self.voice_activity,
            video_orientation: self.video_orientation,
            video_content_type: self.video_content_type,
            mid: ids.mid,
            rid: ids.rid,
            rid_repair: ids.rid_repair,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
struct Rare {
    csrc_count: usize,
    csrc: [u32; 15],
    ext_vals: ExtensionValues,
    last_sender_info: Option<SenderInfo>,
}

impl CachedPacket {
    /// `shared` is where the packet's [`StreamIds`] sit in the cache's list, if they do.
    fn new(packet: RtpPacket, shared: Option<u8>) -> Self {
        let RtpPacket {
            seq_no: _,
            time,
            header,
            payload,
            vp8_patch,
            timestamp,
            last_sender_info,
            nackable: _,
        } = packet;
        let exts = CommonExts::of(&header.ext_vals);
        // Inline only when the common extensions and the shared ids are all it carries.
        let inline = shared.is_some()
            && header.ext_vals == exts.to_ext_vals(StreamIds::of(&header.ext_vals));
        let rare = (header.csrc_count > 0 || !inline || last_sender_info.is_some())
        .then(|| {
            Box::new(Rare {
                csrc_count: header.csrc_count,
                csrc: header.csrc,
                ext_vals: header.ext_vals,
                last_sender_info,
            })
        });
        CachedPacket {
            time,
            payload,
            timestamp,
            vp8_patch,
            pt: header.payload_type,
            marker: header.marker,
            has_padding: header.has_padding,
            has_extension: header.has_extension,
            version: header.version,
            sequence_number: header.sequence_number,
            rtp_time: header.timestamp,
            ssrc: header.ssrc,
            header_len: header.header_len,
            exts,
            ids: shared.unwrap_or(0),
            rare,
        }
    }

    fn to_packet(&self, seq_no: SeqNo, ids: &[StreamIds]) -> RtpPacket {
        let (csrc_count, csrc, ext_vals, last_sender_info) = match &self.rare {
            Some(rare) => (
                rare.csrc_count,
                rare.csrc,
                rare.ext_vals.clone(),
                rare.last_sender_info,
            ),
            None => (
                0,
                [0; 15],
                self.exts.to_ext_vals(ids[self.ids as usize]),
                None,
            ),
        };
        RtpPacket {
            seq_no,
            time: self.time,
            header: RtpHeader {
                version: self.version,
                has_padding: self.has_padding,
                has_extension: self.has_extension,
                csrc_count,
                marker: self.marker,
                payload_type: self.pt,
                sequence_number: self.sequence_number,
                timestamp: self.rtp_time,
                ssrc: self.ssrc,
                csrc,
                ext_vals,
                header_len: self.header_len,
            },
            payload: self.payload.clone(),
            vp8_patch: self.vp8_patch,
            timestamp: self.timestamp,
            last_sender_info,
            // Only nackable packets are cached.
            nackable: true,
        }
    }
}

impl RtxCache {
    pub fn new(max_packet_count: usize, max_packet_age: Duration) -> Self {
        Self {
            packet_by_seq_no: EvictingBuffer::new(10, max_packet_age, max_packet_count),
            seq_no_by_quantized_size: [SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS],
            scratch: RtpPacket::blank(),
            ids: Vec::new(),
        }
    }

    /// Where `ids` sit in the shared list, added if there is room.
    fn shared_ids(&mut self, ids: StreamIds) -> Option<u8> {
        let index = match self.ids.iter().position(|known| *known == ids) {
            Some(index) => index,
            None if self.ids.len() < MAX_SHARED_IDS => {
                self.ids.push(ids);
                self.ids.len() - 1
            }
            None => return None,
        };
        Some(index as u8)
    }

    pub fn cache_sent_packet(&mut self, packet: RtpPacket, now: Instant) {
        assert!(packet.nackable);
        let seq_no = packet.seq_no;
        let quantized_size = packet.payload.len() / RTX_CACHE_SIZE_QUANTIZER;
        let shared = self.shared_ids(StreamIds::of(&packet.header.ext_vals));
        self.packet_by_seq_no
            .push(*seq_no, now, CachedPacket::new(packet, shared));
        self.seq_no_by_quantized_size[quantized_size] = seq_no;
        self.remove_old_packets(now);
    }

    pub fn last_cached_seq_no(&self) -> Option<SeqNo> {
        Some(self.packet_by_seq_no.last_position()?.into())
    }

    /// The payload size of a cached packet, without rebuilding it.
    pub fn cached_payload_len(&self, seq_no: SeqNo) -> Option<usize> {
        self.packet_by_seq_no
            .get(*seq_no)
            .map(|p| p.payload.len())
    }

    pub fn get_cached_packet_by_seq_no(&mut self, seq_no: SeqNo) -> Option<&mut RtpPacket> {
        let cached = self.packet_by_seq_no.get(*seq_no)?;
        self.scratch = cached.to_packet(seq_no, &self.ids);
        Some(&mut self.scratch)
    }

    pub fn get_cached_packet_smaller_than(&mut self, max_size: usize) -> Option<&mut RtpPacket> {
        let quantized_size = max_size / RTX_CACHE_SIZE_QUANTIZER;

        let seq_no = self.seq_no_by_quantized_size[..quantized_size]
            .iter()
            .rev()
            .filter(|seq_no| !seq_no.is_max())
            .find(|seq_no| self.packet_by_seq_no.contains(***seq_no))?;

        self.get_cached_packet_by_seq_no(*seq_no)
    }

    fn remove_old_packets(&mut self, now: Instant) {
        self.packet_by_seq_no.maybe_evict(now);
    }

    pub(crate) fn last_packet(&self) -> Option<&[u8]> {
        let packet = self.packet_by_seq_no.last()?;
        Some(packet.payload.as_ref())
    }

    pub(crate) fn clear(&mut self) {
        self.packet_by_seq_no.clear();
        self.seq_no_by_quantized_size = [SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS];
        self.ids.clear();
    }
}

#[cfg(test)]
mod test {
    use crate::rtp_::MediaTime;
    use crate::rtp_::RtpHeader;

    use super::*;

    fn after(now: Instant, millis: u64) -> Instant {
        now + Duration::from_millis(millis)
    }

    fn packet(now: Instant, seq_no: u64, millis: u64) -> RtpPacket {
        RtpPacket {
            header: RtpHeader::default(),
            seq_no: seq_no.into(),
            time: MediaTime::from_90khz(0),
            payload: millis.to_be_bytes().into(),
            vp8_patch: None,
            timestamp: after(now, millis),
            last_sender_info: None,
            nackable: true,
        }
    }

    #[test]
    fn rtx_cache_0_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(0, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(1000)
        );
    }

    #[test]
    fn rtx_cache_0_duration() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(0));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(1.into()));
        assert_eq!(None, rtx_cache.get_cached_packet_smaller_than(1000));
    }

    #[test]
    fn rtx_cache_1_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(1, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(1000)
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(25)
        );
        assert_eq!(None, rtx_cache.get_cached_packet_smaller_than(24));
        rtx_cache.cache_sent_packet(packet(now, 2, 20), after(now, 20));
        assert_eq!(
            Some(&mut packet(now, 2, 20)),
            rtx_cache.get_cached_packet_by_seq_no(2.into())
        );
    }

    #[test]
    fn rtx_cache_100_sized_backwards() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(100, Duration::from_secs(3));

        for i in 1..=200 {
            let seq_no = 201 - i;
            let pkt = packet(now, seq_no, (201 - i) * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(
            Some(&mut packet(now, 200, 2000)),
            rtx_cache.get_cached_packet_by_seq_no(200.into())
        );
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(100.into()));
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(101.into()));
    }

    #[test]
    fn rtx_cache_eviction() {
        let now = Instant::now();
        // Cache can take all entries
        let mut rtx_cache = RtxCache::new(400, Duration::from_secs(1));
        for i in 1..=200 {
            let seq_no = i;
            let pkt = packet(now, seq_no, i * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(99.into()));

        assert_eq!(
            Some(&mut packet(now, 100, 1000)),
            rtx_cache.get_cached_packet_by_seq_no(100.into())
        );
        assert_eq!(
            Some(&mut packet(now, 200, 2000)),
            rtx_cache.get_cached_packet_by_seq_no(200.into())
        );
    }
}
