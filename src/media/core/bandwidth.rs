//! Bandwidth: what each subscriber's link carries decides what it is sent.
//!
//! Every subscriber transport runs str0m's send-side estimator (GCC on TWCC feedback). Its
//! estimate, corrected by what the link itself shows ([`link_estimate`](super::link_estimate):
//! loss, clean throughput), and the bitrate measured on each publisher layer go into the sans-IO
//! [`allocator`](crate::media::allocator); its decisions become each consumer's
//! [`BandwidthLimit`]. A transport whose client gives no TWCC feedback never gets an estimate
//! and is forwarded as before (preference only).

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::rtp::Extension;

use super::link_estimate::LinkReading;
use super::{ConsumerKey, Deferred, Producer, TransportKey, WorkerCore};
use crate::media::allocator::{self, Allocation, Pausing, Reason, TrackDemand, TrackState};
use crate::media::simulcast::{BandwidthLimit, Preference, MAX_LAYERS, MAX_TEMPORAL};
use crate::media::Kind;
use crate::media::MediaEvent;

/// How the workers estimate and allocate (`BWE_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct BweSettings {
    pub enabled: bool,
    /// What a new subscriber's first allocation assumes, before any feedback.
    pub initial_bps: u64,
}

impl Default for BweSettings {
    /// On, as the benches and core tests exercise it (the server's default is BWE_ENABLED).
    fn default() -> Self {
        BweSettings {
            enabled: true,
            initial_bps: 1_000_000,
        }
    }
}

/// A drop of this share or more re-allocates at once instead of at the next tick.
pub(super) const SUDDEN_DROP: f64 = 0.85;
/// While a track is held below what it wants, ask str0m for a probe this often.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(1500);
/// The subscriber hears of its estimate at most this often.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Layer bitrates are re-measured over windows of this length.
const METER_WINDOW: Duration = Duration::from_millis(500);

/// Bitrate of one publisher layer, measured on what arrives (payload plus RTP overhead),
/// in total and per temporal layer.
#[derive(Debug, Default)]
pub(super) struct LayerMeter {
    bytes: u64,
    bytes_by_tid: [u64; TEMPORAL_SLOTS],
    window_start: Option<Instant>,
    /// Smoothed bits/s; 0 until the first window closed.
    pub(super) bps: u64,
    /// The same per TID; all zero for a layer without temporal ids.
    pub(super) bps_by_tid: [u64; TEMPORAL_SLOTS],
    /// The last rate measured while the layer was active (what a suspended layer costs).
    pub(super) last_bps: u64,
}

const TEMPORAL_SLOTS: usize = MAX_TEMPORAL as usize + 1;

/// This window's rate averaged with the previous one (keyframes make single windows spiky).
fn smoothed(previous: u64, bytes: u64, elapsed: Duration, active: bool) -> u64 {
    let rate = (bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
    match (active, previous) {
        (false, _) => 0,
        (true, 0) => rate,
        (true, previous) => (previous + rate) / 2,
    }
}

/// What a layer is assumed to cost before it has been measured: browsers' 720p simulcast
/// ladder, top layer last (a single-layer track counts as the top one).
const TYPICAL_LAYER_BPS: [u64; MAX_LAYERS] = [150_000, 500_000, 1_700_000];

/// Bytes of IP, UDP, SRTP and RTP header around each payload.
const PACKET_OVERHEAD: u64 = 28 + 12 + 10 + 12;

impl LayerMeter {
    pub(super) fn add(&mut self, payload_len: usize, temporal_id: Option<u8>) {
        let bytes = payload_len as u64 + PACKET_OVERHEAD;
        self.bytes += bytes;
        if let Some(tid) = temporal_id {
            self.bytes_by_tid[usize::from(tid.min(MAX_TEMPORAL))] += bytes;
        }
    }

    /// Close the window if it is long enough.
    pub(super) fn roll(&mut self, now: Instant, active: bool) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            self.bytes = 0;
            self.bytes_by_tid = [0; TEMPORAL_SLOTS];
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < METER_WINDOW {
            return;
        }
        self.bps = smoothed(self.bps, self.bytes, elapsed, active);
        if self.bps > 0 {
            self.last_bps = self.bps;
        }
        for (bps, bytes) in self.bps_by_tid.iter_mut().zip(self.bytes_by_tid) {
            *bps = smoothed(*bps, bytes, elapsed, active);
        }
        self.bytes = 0;
        self.bytes_by_tid = [0; TEMPORAL_SLOTS];
        self.window_start = Some(now);
    }
}

impl WorkerCore {
    /// str0m's periodic stats for subscriber `key` (mid-drain: allocation is deferred).
    pub(super) fn on_link_stats(
        &mut self,
        key: TransportKey,
        stats: &str0m::stats::PeerStats,
        now: Instant,
    ) {
        let transport = &mut self.transports[key];
        let Some(bwe) = transport.bwe.as_mut() else {
            return;
        };
        let reading = LinkReading {
            peer_bytes_tx: stats.peer_bytes_tx,
            loss: stats.egress_loss_fraction,
            rtt: stats.rtt,
            raw_bps: stats.bwe_tx.map(|b| b.as_u64()),
            over_tcp: stats
                .selected_candidate_pair
                .as_ref()
                .is_some_and(|pair| pair.protocol == str0m::net::Protocol::Tcp),
        };
        let dropped = bwe.on_link_reading(reading, now);
        tracing::trace!(
            transport = transport.id.0,
            raw = reading.raw_bps,
            loss = reading.loss,
            tcp = reading.over_tcp,
            effective = bwe.effective_bps(now),
            "link reading"
        );
        if bwe.active && dropped {
            self.deferred.push(Deferred::Allocate { transport: key });
        }
    }

    /// str0m reported a new estimate for subscriber `key` (mid-drain: allocation is deferred).
    pub(super) fn on_estimate(&mut self, key: TransportKey, estimate: Bitrate, can_probe: bool) {
        let transport = &mut self.transports[key];
        let Some(bwe) = transport.bwe.as_mut() else {
            return;
        };
        let bps = estimate.as_u64();
        tracing::trace!(transport = transport.id.0, bps, can_probe, "estimate");
        bwe.estimate_bps = bps;
        self.stats.bwe_estimates += 1;
        let newly_active = can_probe && !bwe.active;
        bwe.active |= can_probe;
        let sudden_drop = (bps as f64) < bwe.allocated_at_bps as f64 * SUDDEN_DROP;
        if bwe.active && (newly_active || sudden_drop) {
            self.deferred.push(Deferred::Allocate { transport: key });
        }
    }

    /// Whether a consumer's m-line carries transport-wide sequence numbers, so the estimate
    /// will hear about it.
    fn consumer_has_twcc(&self, ck: ConsumerKey) -> bool {
        let consumer = &self.consumers[ck];
        let Some(mid) = consumer.mid else {
            return false;
        };
        self.transports[consumer.transport]
            .rtc
            .media(mid)
            .is_some_and(|m| {
                m.remote_extmap()
                    .id_of(Extension::TransportSequenceNumber)
                    .is_some()
            })
    }

    /// A consumer is about to start: on a transport with an estimator, let the first
    /// allocation choose its layer (the initial estimate until feedback arrives).
    pub(super) fn allocate_for_new_consumer(&mut self, ck: ConsumerKey, now: Instant) {
        let key = self.consumers[ck].transport;
        if !self.consumer_has_twcc(ck) {
            return;
        }
        let Some(bwe) = self.transports[key].bwe.as_mut() else {
            return;
        };
        bwe.active = true;
        self.allocate(key, now);
    }

    /// Housekeeping (after the layer meters rolled): re-allocate every governed subscriber
    /// (climbs wait for a hold, so they need a clock even when the estimate is steady).
    pub(super) fn allocate_all(&mut self, now: Instant) {
        self.update_speakers(now);
        let governed: Vec<TransportKey> = self
            .transports
            .iter()
            .filter(|(_, t)| t.bwe.as_ref().is_some_and(|b| b.active))
            .map(|(k, _)| k)
            .collect();
        for key in governed {
            if let Some(bwe) = &self.transports[key].bwe {
                // Sampled here, a few times a second per subscriber, not on every estimate.
                metrics::histogram!("sfu_bwe_estimate_bps").record(bwe.effective_bps(now) as f64);
            }
            self.allocate(key, now);
            self.report_estimate(key, now);
        }
    }

    /// Tell the subscriber its estimate when it moved by a tenth or more, at most once per
    /// [`REPORT_INTERVAL`] (the demo shows it beside each tile's layer).
    fn report_estimate(&mut self, key: TransportKey, now: Instant) {
        let transport = &mut self.transports[key];
        let Some(bwe) = transport.bwe.as_mut() else {
            return;
        };
        let estimate_bps = bwe.effective_bps(now);
        let moved = estimate_bps.abs_diff(bwe.reported_bps) * 10 >= bwe.reported_bps;
        let due = bwe
            .reported_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_INTERVAL);
        if !(moved && due) {
            return;
        }
        bwe.reported_bps = estimate_bps;
        bwe.reported_at = Some(now);
        let _ = self.events.send(MediaEvent::BandwidthEstimate {
            transport: transport.id,
            estimate_bps,
        });
    }

    /// Run the allocator for one subscriber and apply its decisions.
    pub(super) fn allocate(&mut self, key: TransportKey, now: Instant) {
        let Some((estimate, pausing)) = self.transports[key].bwe.as_ref().map(|b| {
            let pausing = if b.loss_capped(now) {
                Pausing::Allowed
            } else {
                Pausing::KeepLowest
            };
            (b.effective_bps(now), pausing)
        }) else {
            return;
        };
        let consumers: Vec<ConsumerKey> = self.transports[key]
            .consumers
            .iter()
            .copied()
            .filter(|ck| self.consumers[*ck].tx_ssrc.is_some())
            .collect();
        let demands: Vec<TrackDemand> = consumers.iter().map(|ck| self.demand(*ck)).collect();
        let mut states: Vec<TrackState> = consumers
            .iter()
            .map(|ck| self.consumers[*ck].allocation)
            .collect();
        let changes = allocator::allocate(estimate, pausing, &demands, &mut states, now);
        for (ck, state) in consumers.iter().zip(&states) {
            self.consumers[*ck].allocation = *state;
        }
        for change in changes {
            self.apply_allocation(
                consumers[change.track],
                change.allocation,
                change.reason,
                now,
            );
        }
        // A link too thin for some video is left to str0m's own (rarer) probes: ours would
        // push bursts through a queue the audio needs.
        let paused = states
            .iter()
            .any(|s| s.allocation == Some(Allocation::Paused));
        let targets = allocator::targets(&demands, &states);
        // The way back for the cheapest paused video: its lowest layer.
        let resume_bps = paused.then(|| {
            demands
                .iter()
                .zip(&states)
                .filter(|(d, s)| !d.audio && s.allocation == Some(Allocation::Paused))
                .filter_map(|(d, _)| d.layer_bps.iter().copied().find(|bps| *bps > 0))
                .min()
                .unwrap_or(0)
        });
        let (quiet_after_pause, loss_capped) = self.transports[key]
            .bwe
            .as_ref()
            .map_or((false, false), |bwe| {
                (bwe.quiet_after_pause(now), bwe.loss_capped(now))
            });
        let (targets, may_probe) =
            probing_targets(targets, resume_bps, quiet_after_pause, loss_capped);
        let has_video = demands.iter().any(|d| !d.audio);
        self.update_estimator(key, targets, estimate, may_probe, has_video, now);
    }

    /// Tell str0m what this subscriber wants (see [`allocator::Targets`]).
    fn update_estimator(
        &mut self,
        key: TransportKey,
        targets: allocator::Targets,
        estimate: u64,
        may_probe: bool,
        has_video: bool,
        now: Instant,
    ) {
        let transport = &mut self.transports[key];
        let Some(bwe) = transport.bwe.as_mut() else {
            return;
        };
        bwe.allocated_at_bps = estimate;
        // str0m's one-time initial probes (3x and 6x its estimate) are capped at twice the
        // first desired rate it is told. A subscriber's audio consumer starts before its
        // video one: an audio-only desired rate made them ~100 kbit/s clusters, whose result
        // str0m then adopts as the link's estimate (1 Mbit/s -> ~80 kbit/s on loopback). Tell
        // it nothing until there is video to probe for (until then str0m does not probe).
        if !has_video && bwe.targets == allocator::Targets::default() {
            return;
        }
        // str0m probes when the desired rate rises above its estimate, so a track held
        // below its layer gets a probe by nudging the desired rate up every PROBE_INTERVAL
        // (each probe may double the estimate: a recovered link is found in seconds, not
        // at AIMD's few percent a second).
        let probe = may_probe
            && targets.wants_more(estimate)
            && bwe
                .last_probe
                .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_INTERVAL);
        if let Some(raw) = bwe.estimator_stalled(now).filter(|_| probe) {
            // A fresh estimator starts from GCC's last estimate and probes at once (its
            // initial probes, at most twice the desired rate).
            tracing::debug!(transport = transport.id.0, raw, "estimator stalled: reset");
            transport.rtc.bwe().reset(Bitrate::bps(raw));
            bwe.last_reset = Some(now);
            bwe.raw_estimate = None;
            self.stats.bwe_resets += 1;
        }
        if bwe.targets != targets || probe {
            let mut desired = targets.desired_bps;
            if probe {
                bwe.last_probe = Some(now);
                if bwe.targets.desired_bps >= desired {
                    // Step below, then back up next time: an increase is what asks.
                    desired = desired.saturating_sub(desired / 100);
                }
            }
            bwe.targets = allocator::Targets {
                desired_bps: desired,
                ..targets
            };
            transport.rtc.bwe().set_bitrate(
                Bitrate::bps(targets.minimum_bps),
                Bitrate::bps(desired.max(targets.minimum_bps)),
            );
        }
    }

    /// Housekeeping: the publishers (by transport, wherever they are) whose audio speaks now.
    fn update_speakers(&mut self, now: Instant) {
        self.speakers.clear();
        for (_, p) in self.producers.iter() {
            if p.kind == Kind::Audio && p.voice.is_speaking(now) {
                self.speakers.push(p.publisher);
            }
        }
    }

    /// What the subscriber asked for, then whether the publisher speaks: an explicit priority
    /// (a pinned tile) outranks speech, speech breaks ties.
    fn priority(&self, ck: ConsumerKey) -> u16 {
        let consumer = &self.consumers[ck];
        let producer = &self.producers[consumer.producer];
        let speaking = producer.kind == Kind::Video && self.speakers.contains(&producer.publisher);
        u16::from(consumer.priority) * 2 + u16::from(speaking)
    }

    fn demand(&self, ck: ConsumerKey) -> TrackDemand {
        let consumer = &self.consumers[ck];
        let producer = &self.producers[consumer.producer];
        let (layer_bps, temporal_bps, measured) = layer_rates(producer);
        TrackDemand {
            audio: producer.kind == Kind::Audio,
            priority: self.priority(ck),
            max_layer: match consumer.selector.preference {
                Preference::Auto => MAX_LAYERS as u8 - 1,
                Preference::Fixed(l) => l,
            },
            layer_bps,
            temporal_bps,
            measured,
        }
    }

    fn apply_allocation(
        &mut self,
        ck: ConsumerKey,
        allocation: Allocation,
        reason: Reason,
        now: Instant,
    ) {
        match reason {
            Reason::Initial => self.stats.allocations_initial += 1,
            Reason::Congestion => self.stats.allocations_congestion += 1,
            Reason::Recovered => self.stats.allocations_recovered += 1,
            Reason::Preference => self.stats.allocations_preference += 1,
        }
        let (limit, temporal) = match allocation {
            Allocation::Paused => (BandwidthLimit::Paused, MAX_TEMPORAL),
            Allocation::Layer(l, t) => (BandwidthLimit::UpTo(l), t),
        };
        let consumer = &mut self.consumers[ck];
        let (transport, producer) = (
            self.transports[consumer.transport].id,
            self.producers[consumer.producer].id,
        );
        let temporal_changed = consumer.selector.temporal != temporal;
        consumer.selector.set_temporal_cap(temporal);
        let was = std::mem::replace(&mut consumer.selector.bandwidth, limit);
        if was == limit {
            // Same spatial layer, another frame rate: no switch will announce it.
            if temporal_changed && consumer.selector.current.is_some() {
                let _ = self.events.send(MediaEvent::LayerChanged {
                    transport,
                    producer,
                    layer: consumer.selector.current,
                    temporal: Some(temporal),
                });
            }
            return;
        }
        tracing::debug!(
            transport = transport.0,
            ?allocation,
            reason = reason.as_str(),
            "bandwidth allocation"
        );
        match (was, limit) {
            (_, BandwidthLimit::Paused) => {
                let subscriber = self.consumers[ck].transport;
                if let Some(bwe) = self.transports[subscriber].bwe.as_mut() {
                    bwe.on_video_paused(reason == Reason::Congestion, now);
                }
                self.retarget_consumer(ck, now);
                self.forget_resends(ck);
                let _ = self.events.send(MediaEvent::LayerChanged {
                    transport,
                    producer,
                    layer: None,
                    temporal: None,
                });
            }
            (BandwidthLimit::Paused, _) => self.start_at_keyframe(ck, now),
            _ => self.retarget_consumer(ck, now),
        }
    }

    /// Drop what str0m keeps to answer NACKs for a consumer just paused for bandwidth: on a
    /// link too thin for its lowest layer, resending its old frames would only take the
    /// audio's room (the picture restarts at a keyframe anyway).
    fn forget_resends(&mut self, ck: ConsumerKey) {
        let consumer = &self.consumers[ck];
        let Some(ssrc) = consumer.tx_ssrc else {
            return;
        };
        let transport = &mut self.transports[consumer.transport];
        if let Some(stream) = transport.rtc.direct_api().stream_tx(&ssrc) {
            super::keep_resends(stream);
        }
    }

    /// Video consumers currently paused because their link is too thin (a gauge).
    pub(super) fn paused_for_bandwidth(&self) -> usize {
        self.consumers
            .iter()
            .filter(|(_, c)| c.selector.bandwidth == BandwidthLimit::Paused)
            .count()
    }
}

/// What str0m is told to desire for one subscriber, and whether our own probes may run.
/// `resume_bps` is the way back to the cheapest paused video, when one is paused.
///
/// - While loss caps the estimate, no probing at all, ours or str0m's (its periodic ones run
///   at twice the desired rate): a probe could not lift the estimate past the cap, and its
///   padding and the resends it provokes land in the queue that is already dropping.
/// - Just after a pause on congestion the same (see `SubscriberBwe::quiet_after_pause`).
/// - Otherwise, with a video paused, str0m still probes on its own (in ALR, and after a large
///   drop); towards the top layer those are multi-Mbit/s bursts into a queue sized for the
///   audio, so it desires only the way back to the lowest video layer, and our probes wait
///   until that resumes.
fn probing_targets(
    mut targets: allocator::Targets,
    resume_bps: Option<u64>,
    quiet_after_pause: bool,
    loss_capped: bool,
) -> (allocator::Targets, bool) {
    if loss_capped || (resume_bps.is_some() && quiet_after_pause) {
        targets.desired_bps = targets.minimum_bps;
    } else if let Some(resume) = resume_bps {
        targets.desired_bps = targets
            .desired_bps
            .min(targets.minimum_bps + resume)
            .max(targets.minimum_bps);
    }
    (targets, resume_bps.is_none() && !loss_capped)
}

/// What each layer of `producer` costs (bits/s, measured, or a typical figure for a layer
/// that just started; 0 = not sent), per temporal layer, and whether all are measurements.
pub(super) fn layer_rates(producer: &Producer) -> LayerRates {
    let mut layer_bps = [0; MAX_LAYERS];
    let mut temporal_bps = [[0; TEMPORAL_SLOTS]; MAX_LAYERS];
    let layers = producer.layers.len().min(MAX_LAYERS);
    let mut measured = true;
    for (i, layer) in producer.layers.iter().enumerate().take(MAX_LAYERS) {
        // A layer that just started has no full window yet: assume a typical ladder.
        layer_bps[i] = match (layer.active, layer.meter.bps) {
            // Stopped by dynacast, not by the publisher: still on offer at its old rate.
            (false, _) if layer.suspended => layer.meter.last_bps,
            (false, _) => 0,
            (true, 0) if producer.kind == Kind::Audio => 0,
            (true, 0) => {
                measured = false;
                TYPICAL_LAYER_BPS[MAX_LAYERS - layers + i]
            }
            (true, bps) => bps,
        };
        if layer.active {
            temporal_bps[i] = layer.meter.bps_by_tid;
        }
    }
    (layer_bps, temporal_bps, measured)
}

/// Bits/s per spatial layer, per temporal layer within it, and "all measured".
pub(super) type LayerRates = ([u64; MAX_LAYERS], [[u64; TEMPORAL_SLOTS]; MAX_LAYERS], bool);

#[cfg(test)]
mod tests {
    use super::*;

    const WANTS: allocator::Targets = allocator::Targets {
        minimum_bps: 60_000,
        desired_bps: 1_800_000,
    };

    #[test]
    fn nothing_probes_under_a_loss_cap() {
        let (targets, may_probe) = probing_targets(WANTS, None, false, true);
        assert_eq!(targets.desired_bps, WANTS.minimum_bps);
        assert!(!may_probe);
        let (targets, _) = probing_targets(WANTS, Some(150_000), false, true);
        assert_eq!(targets.desired_bps, WANTS.minimum_bps);
    }

    #[test]
    fn a_paused_video_desires_its_way_back_unless_just_paused() {
        let (targets, may_probe) = probing_targets(WANTS, Some(150_000), false, false);
        assert_eq!(targets.desired_bps, 210_000);
        assert!(!may_probe, "our probes wait for the resume");
        let (targets, may_probe) = probing_targets(WANTS, Some(150_000), true, false);
        assert_eq!(targets.desired_bps, WANTS.minimum_bps);
        assert!(!may_probe);
    }

    #[test]
    fn a_clean_link_desires_the_top_and_probes() {
        // The quiet only concerns paused video.
        for quiet in [false, true] {
            let (targets, may_probe) = probing_targets(WANTS, None, quiet, false);
            assert_eq!(targets, WANTS);
            assert!(may_probe);
        }
    }
}
