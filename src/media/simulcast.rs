//! Per-consumer simulcast logic: which layer to forward, and how to rewrite a packet so the
//! subscriber sees one continuous stream across layer switches.
//!
//! Both parts are plain state machines with no I/O, unit-tested below. The approach follows
//! LiveKit's `rtpmunger.go` and mediasoup's `SeqManager`: switch only at a keyframe of the target
//! layer, and rebase sequence number, RTP timestamp and VP8 picture id so they continue from the
//! last forwarded packet.

use std::time::Instant;

/// Most layers a producer can announce. Browsers send at most three.
pub const MAX_LAYERS: usize = 3;
/// Temporal layers we tell apart (L1T3: TID 0, 1, 2 = 7.5, 15, 30 fps); this value as a cap
/// means "all of them".
pub const MAX_TEMPORAL: u8 = 2;

/// What a subscriber asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preference {
    /// Highest layer the publisher currently sends.
    Auto,
    /// A fixed spatial layer (0 = lowest); falls back to the nearest active one.
    Fixed(u8),
}

/// What to do with one incoming packet for one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop,
    Forward,
    /// Forward, and this packet starts the new layer (the munger must rebase first).
    SwitchAndForward,
}

/// What the subscriber's bandwidth allows (from [`crate::media::allocator`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthLimit {
    /// No estimate governs this consumer (no TWCC, or BWE off).
    None,
    /// Forward at most this layer.
    UpTo(u8),
    /// Not even the lowest layer fits: forward nothing.
    Paused,
}

/// Chooses the forwarded layer. `current` changes only at a keyframe of `target`.
#[derive(Debug, Clone)]
pub struct LayerSelector {
    pub preference: Preference,
    pub bandwidth: BandwidthLimit,
    pub current: Option<u8>,
    pub target: Option<u8>,
    /// Highest temporal layer forwarded, and the cap waiting for the next frame start (a
    /// frame is never cut in half).
    pub temporal: u8,
    pending_temporal: Option<u8>,
    /// Audio and single-layer video need no keyframe to start.
    needs_keyframe: bool,
}

impl LayerSelector {
    pub fn new(preference: Preference, needs_keyframe: bool) -> Self {
        LayerSelector {
            preference,
            bandwidth: BandwidthLimit::None,
            current: None,
            target: None,
            temporal: MAX_TEMPORAL,
            pending_temporal: None,
            needs_keyframe,
        }
    }

    /// The layer this consumer would take if every layer in `available` were sent (dynacast:
    /// which layers the publisher must keep sending). `None` while paused for bandwidth.
    pub fn wanted_layer(&self, available: &[bool]) -> Option<u8> {
        if self.bandwidth == BandwidthLimit::Paused {
            return None;
        }
        cap_layer(
            pick_layer(self.preference, available),
            self.bandwidth,
            available,
        )
    }

    /// Recompute the target from the active layers. Returns the new target if it changed,
    /// so the caller can ask the publisher for a keyframe on it.
    pub fn update_target(&mut self, active: &[bool]) -> Option<u8> {
        if self.bandwidth == BandwidthLimit::Paused {
            // Stop at once; resuming restarts at a keyframe (`current` is cleared).
            self.target = None;
            self.current = None;
            return None;
        }
        let wanted = self.wanted_layer(active);
        if wanted.is_some() && wanted != self.target {
            self.target = wanted;
            if self.target != self.current {
                return self.target;
            }
        }
        None
    }

    /// Forward temporal layers up to `cap` from the next frame on. Going up needs no keyframe:
    /// higher temporal layers only reference lower ones, which were forwarded all along.
    pub fn set_temporal_cap(&mut self, cap: u8) {
        self.pending_temporal = (cap != self.temporal).then_some(cap.min(MAX_TEMPORAL));
    }

    /// Whether a packet of temporal layer `tid` passes the cap (a pending cap applies at the
    /// first packet of a frame). Packets without a temporal id always pass.
    pub fn admits_temporal(&mut self, tid: Option<u8>, starts_frame: bool) -> bool {
        if starts_frame {
            if let Some(cap) = self.pending_temporal.take() {
                self.temporal = cap;
            }
        }
        tid.is_none_or(|t| t <= self.temporal)
    }

    /// Whether we are waiting for a keyframe to complete a switch.
    pub fn switch_pending(&self) -> bool {
        self.target.is_some() && self.target != self.current
    }

    pub fn on_packet(&mut self, layer: u8, starts_keyframe: bool) -> Decision {
        // Fast start: a consumer with nothing yet takes the first keyframe of any layer up to
        // its target (a small low-layer keyframe comes sooner) and climbs at the target's.
        if self.current.is_none()
            && self.needs_keyframe
            && starts_keyframe
            && self.target.is_some_and(|t| layer < t)
        {
            self.current = Some(layer);
            return Decision::SwitchAndForward;
        }
        if Some(layer) == self.target
            && self.target != self.current
            && (starts_keyframe || !self.needs_keyframe)
        {
            self.current = self.target;
            return Decision::SwitchAndForward;
        }
        if Some(layer) == self.current {
            Decision::Forward
        } else {
            Decision::Drop
        }
    }
}

/// The layer a preference maps to, given which layers are active (index = layer).
fn pick_layer(preference: Preference, active: &[bool]) -> Option<u8> {
    let highest_active = active.iter().rposition(|a| *a);
    match preference {
        Preference::Auto => highest_active.map(|l| l as u8),
        Preference::Fixed(wanted) => {
            if active.is_empty() {
                return None;
            }
            let wanted = (wanted as usize).min(active.len() - 1);
            if active[wanted] {
                return Some(wanted as u8);
            }
            // Prefer degrading to a lower layer over exceeding what was asked for.
            (0..wanted)
                .rev()
                .chain(wanted + 1..active.len())
                .find(|l| active[*l])
                .map(|l| l as u8)
        }
    }
}

/// `wanted`, lowered to the highest active layer the bandwidth limit allows (the lowest
/// active one if none is below the limit).
fn cap_layer(wanted: Option<u8>, limit: BandwidthLimit, active: &[bool]) -> Option<u8> {
    let (Some(wanted), BandwidthLimit::UpTo(cap)) = (wanted, limit) else {
        return wanted;
    };
    if wanted <= cap {
        return Some(wanted);
    }
    let is_active = |l: &u8| active.get(*l as usize).copied().unwrap_or(false);
    (0..=cap)
        .rev()
        .find(is_active)
        .or_else(|| (0..active.len() as u8).find(is_active))
}

/// Fields of an incoming packet that the munger rewrites.
#[derive(Debug, Clone, Copy)]
pub struct PacketIds {
    /// Extended (no wrap) sequence number of the incoming stream.
    pub seq: u64,
    pub timestamp: u32,
    /// VP8 picture id (15 bit) and TL0PICIDX when the payload carries them.
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

/// Rewritten identifiers for the outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MungedIds {
    pub seq: u64,
    pub timestamp: u32,
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

const PICTURE_ID_MOD: u16 = 0x8000;
/// First outgoing sequence number. Below 2^16 so str0m needs no out-of-band ROC (see RtpWrite).
const FIRST_SEQ: u64 = 1000;

/// Rewrites ids so that the outgoing stream continues seamlessly across layer switches.
#[derive(Debug, Clone)]
pub struct Munger {
    clock_rate: u32,
    started: bool,
    seq_offset: i64,
    ts_offset: u32,
    picture_id_offset: u16,
    tl0_offset: u8,
    /// Packets of the current layer older than this were sent before the switch: drop them.
    layer_first_seq: u64,
    last_seq: u64,
    /// Newest incoming sequence number seen on the current layer.
    last_in_seq: u64,
    last_timestamp: u32,
    last_picture_id: Option<u16>,
    last_tl0: Option<u8>,
    last_sent_at: Option<Instant>,
}

impl Munger {
    pub fn new(clock_rate: u32) -> Self {
        Munger {
            clock_rate,
            started: false,
            seq_offset: 0,
            ts_offset: 0,
            picture_id_offset: 0,
            tl0_offset: 0,
            layer_first_seq: 0,
            last_seq: FIRST_SEQ - 1,
            last_in_seq: 0,
            last_timestamp: 0,
            last_picture_id: None,
            last_tl0: None,
            last_sent_at: None,
        }
    }

    /// Rebase all offsets so that `ids` (the first packet of a new layer) directly follows
    /// the last forwarded packet.
    pub fn switch_layer(&mut self, ids: PacketIds, now: Instant) {
        self.seq_offset = (self.last_seq + 1) as i64 - ids.seq as i64;
        self.layer_first_seq = ids.seq;
        self.last_in_seq = ids.seq.saturating_sub(1);
        if self.started {
            // Advance the clock by the wall time since the last packet (at least one tick) so
            // the receiver's jitter buffer sees time moving forward, never backwards.
            let elapsed = self
                .last_sent_at
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            let ticks = (elapsed.as_micros() as u64 * self.clock_rate as u64 / 1_000_000).max(1);
            let next_ts = self.last_timestamp.wrapping_add(ticks as u32);
            self.ts_offset = next_ts.wrapping_sub(ids.timestamp);
        } else {
            self.ts_offset = 0;
        }
        if let (Some(pid), Some(last)) = (ids.picture_id, self.last_picture_id) {
            let next = (last + 1) % PICTURE_ID_MOD;
            self.picture_id_offset = (next + PICTURE_ID_MOD - pid) % PICTURE_ID_MOD;
        } else {
            self.picture_id_offset = 0;
        }
        if let (Some(tl0), Some(last)) = (ids.tl0_pic_idx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
        } else {
            self.tl0_offset = 0;
        }
        self.started = true;
    }

    /// Leave out a packet of the current layer (a temporal layer not forwarded) without a
    /// gap: later packets move down one sequence number, and when it starts a frame, later
    /// frames one picture id. A late packet (older than the newest seen) changes nothing.
    pub fn skip(&mut self, ids: PacketIds, starts_frame: bool) {
        if !self.started || ids.seq <= self.last_in_seq || ids.seq < self.layer_first_seq {
            return;
        }
        self.last_in_seq = ids.seq;
        self.seq_offset -= 1;
        if starts_frame && ids.picture_id.is_some() {
            self.picture_id_offset = (self.picture_id_offset + PICTURE_ID_MOD - 1) % PICTURE_ID_MOD;
        }
    }

    /// Rewrite one packet of the current layer. `None` means it predates the switch: drop it.
    pub fn rewrite(&mut self, ids: PacketIds, now: Instant) -> Option<MungedIds> {
        if !self.started || ids.seq < self.layer_first_seq {
            return None;
        }
        self.last_in_seq = self.last_in_seq.max(ids.seq);
        let seq = (ids.seq as i64 + self.seq_offset) as u64;
        let out = MungedIds {
            seq,
            timestamp: ids.timestamp.wrapping_add(self.ts_offset),
            picture_id: ids
                .picture_id
                .map(|p| (p + self.picture_id_offset) % PICTURE_ID_MOD),
            tl0_pic_idx: ids.tl0_pic_idx.map(|t| t.wrapping_add(self.tl0_offset)),
        };
        // Only in-order packets move the reference point; a late packet keeps its slot.
        if seq > self.last_seq {
            self.last_seq = seq;
            self.last_timestamp = out.timestamp;
            self.last_sent_at = Some(now);
            if out.picture_id.is_some() {
                self.last_picture_id = out.picture_id;
            }
            if out.tl0_pic_idx.is_some() {
                self.last_tl0 = out.tl0_pic_idx;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ids(seq: u64, timestamp: u32, pid: u16) -> PacketIds {
        PacketIds {
            seq,
            timestamp,
            picture_id: Some(pid),
            tl0_pic_idx: Some((pid % 256) as u8),
        }
    }

    #[test]
    fn fixed_preference_falls_back_to_nearest_lower_active_layer() {
        assert_eq!(
            pick_layer(Preference::Fixed(2), &[true, true, false]),
            Some(1)
        );
        assert_eq!(
            pick_layer(Preference::Fixed(0), &[false, true, true]),
            Some(1)
        );
        assert_eq!(pick_layer(Preference::Fixed(2), &[true]), Some(0));
        assert_eq!(pick_layer(Preference::Auto, &[true, true, false]), Some(1));
        assert_eq!(pick_layer(Preference::Auto, &[false, false, false]), None);
    }

    #[test]
    fn switch_waits_for_keyframe_of_target_layer() {
        let mut sel = LayerSelector::new(Preference::Fixed(2), true);
        assert_eq!(sel.update_target(&[true, true, true]), Some(2));
        assert_eq!(sel.on_packet(2, false), Decision::Drop);
        assert_eq!(sel.on_packet(1, false), Decision::Drop);
        // Fast start on the first keyframe below the target, then up at the target's.
        assert_eq!(sel.on_packet(0, true), Decision::SwitchAndForward);
        assert_eq!(sel.current, Some(0));
        assert_eq!(sel.on_packet(1, true), Decision::Drop);
        assert_eq!(sel.on_packet(2, false), Decision::Drop);
        assert_eq!(sel.on_packet(0, false), Decision::Forward);
        assert_eq!(sel.on_packet(2, true), Decision::SwitchAndForward);
        assert_eq!(sel.on_packet(2, false), Decision::Forward);
        assert_eq!(sel.on_packet(0, false), Decision::Drop);
        sel.preference = Preference::Fixed(0);
        assert_eq!(sel.update_target(&[true, true, true]), Some(0));
        // Until the low layer's keyframe arrives, the high layer keeps flowing.
        assert_eq!(sel.on_packet(2, false), Decision::Forward);
        assert_eq!(sel.on_packet(0, false), Decision::Drop);
        assert_eq!(sel.on_packet(0, true), Decision::SwitchAndForward);
        assert_eq!(sel.on_packet(2, false), Decision::Drop);
    }

    #[test]
    fn bandwidth_caps_the_preference_and_pauses() {
        let mut sel = LayerSelector::new(Preference::Auto, true);
        sel.bandwidth = BandwidthLimit::UpTo(1);
        assert_eq!(sel.update_target(&[true, true, true]), Some(1));
        // A cap on a layer the publisher does not send falls to the next lower one.
        assert_eq!(
            cap_layer(Some(2), BandwidthLimit::UpTo(1), &[true, false, true]),
            Some(0)
        );
        assert_eq!(
            cap_layer(Some(0), BandwidthLimit::UpTo(2), &[true, true, true]),
            Some(0)
        );
        assert_eq!(sel.on_packet(1, true), Decision::SwitchAndForward);
        sel.bandwidth = BandwidthLimit::Paused;
        assert_eq!(sel.update_target(&[true, true, true]), None);
        assert_eq!(sel.on_packet(1, true), Decision::Drop);
        assert_eq!(sel.on_packet(0, true), Decision::Drop);
    }

    #[test]
    fn audio_starts_without_keyframe() {
        let mut sel = LayerSelector::new(Preference::Auto, false);
        sel.update_target(&[true]);
        assert_eq!(sel.on_packet(0, false), Decision::SwitchAndForward);
        assert_eq!(sel.on_packet(0, false), Decision::Forward);
    }

    #[test]
    fn munger_keeps_sequence_continuous_across_switch() {
        let t0 = Instant::now();
        let mut m = Munger::new(90_000);
        m.switch_layer(ids(50_000, 1_000, 7), t0);
        let a = m.rewrite(ids(50_000, 1_000, 7), t0).unwrap();
        let b = m.rewrite(ids(50_001, 4_000, 8), t0).unwrap();
        assert_eq!((a.seq, b.seq), (FIRST_SEQ, FIRST_SEQ + 1));
        assert_eq!(b.timestamp.wrapping_sub(a.timestamp), 3_000);

        // New layer with unrelated ids, 33 ms later.
        let t1 = t0 + Duration::from_millis(33);
        let first = ids(9, 777_777, 30_000);
        m.switch_layer(first, t1);
        let c = m.rewrite(first, t1).unwrap();
        assert_eq!(c.seq, b.seq + 1);
        assert_eq!(c.timestamp.wrapping_sub(b.timestamp), 33 * 90);
        assert_eq!(c.picture_id, Some(b.picture_id.unwrap() + 1));
        assert_eq!(c.tl0_pic_idx, Some(b.tl0_pic_idx.unwrap().wrapping_add(1)));
        // A straggler from before the switch point on the new layer is dropped.
        assert!(m.rewrite(ids(8, 777_000, 29_999), t1).is_none());
        let d = m.rewrite(ids(10, 777_777, 30_000), t1).unwrap();
        assert_eq!(d.seq, c.seq + 1);
    }

    #[test]
    fn dropped_temporal_frames_leave_no_gap() {
        let t0 = Instant::now();
        let mut m = Munger::new(90_000);
        let mut sel = LayerSelector::new(Preference::Auto, true);
        m.switch_layer(ids(100, 0, 10), t0);
        // Frames of one packet each, TIDs 0 2 1 2 0; TL2 is capped from the first frame on.
        sel.set_temporal_cap(1);
        let mut out = Vec::new();
        for (i, tid) in [0u8, 2, 1, 2, 0].into_iter().enumerate() {
            let p = ids(100 + i as u64, 3000 * i as u32, 10 + i as u16);
            if sel.admits_temporal(Some(tid), true) {
                out.push(m.rewrite(p, t0).unwrap());
            } else {
                m.skip(p, true);
            }
        }
        let seqs: Vec<u64> = out.iter().map(|o| o.seq).collect();
        let pids: Vec<u16> = out.iter().filter_map(|o| o.picture_id).collect();
        assert_eq!(seqs, vec![FIRST_SEQ, FIRST_SEQ + 1, FIRST_SEQ + 2]);
        assert_eq!(pids, vec![10, 11, 12]);
        // A late duplicate of a skipped packet moves nothing.
        m.skip(ids(101, 3000, 11), true);
        assert_eq!(
            m.rewrite(ids(105, 15_000, 15), t0).unwrap().seq,
            FIRST_SEQ + 3
        );
        // The cap changes only at a frame start.
        sel.set_temporal_cap(MAX_TEMPORAL);
        assert!(!sel.admits_temporal(Some(2), false));
        assert!(sel.admits_temporal(Some(2), true));
    }

    #[test]
    fn picture_id_wraps_at_15_bits() {
        let t0 = Instant::now();
        let mut m = Munger::new(90_000);
        m.switch_layer(ids(1, 0, 0x7FFF), t0);
        m.rewrite(ids(1, 0, 0x7FFF), t0).unwrap();
        m.switch_layer(ids(500, 0, 12), t0);
        assert_eq!(m.rewrite(ids(500, 0, 12), t0).unwrap().picture_id, Some(0));
    }
}
