//! What one subscriber's link carries: str0m's estimate, corrected by what str0m reports of
//! the link twice a second (loss, bytes sent, round trip; see README "Bandwidth estimation").
//!
//! str0m's estimate is a 3 s mean of GCC's, so it trails a sudden drop by seconds; and GCC's
//! own, on a link with room, follows what is sent. Loss caps it; a clean second floors it; an
//! estimate that never moves while probes are asked for restarts it.

use std::time::{Duration, Instant};

use super::bandwidth::{PROBE_INTERVAL, SUDDEN_DROP};
use crate::media::allocator;

/// Egress loss (TWCC, over str0m's last second) above this share means the link is full
/// (GCC's own loss-based rule uses the same threshold).
const CONGESTED_LOSS: f32 = 0.10;
/// The span str0m measures egress loss over (`PeerStats::egress_loss_fraction`), and how
/// often it reports (`set_stats_interval` in core/mod.rs).
const LOSS_WINDOW: Duration = Duration::from_secs(1);
pub(super) const STATS_INTERVAL: Duration = Duration::from_millis(500);
/// Loss at or below this share, with round trips near the link's best, means the link
/// carried what was sent; a proof lasts this long.
const CLEAN_LOSS: f32 = 0.02;
const QUEUE_DELAY_TOLERANCE: Duration = Duration::from_millis(30);
const CARRIED_PROOF_TTL: Duration = Duration::from_millis(1000);
/// GCC's estimate unchanged to the bit this long, while we keep asking for probes on a
/// clean link, means its probing is stuck; the estimator is restarted at most this often.
const STALL: Duration = Duration::from_secs(4);
const STALL_RESET_INTERVAL: Duration = Duration::from_secs(10);
/// A loss cap governs this long after the last lossy reading (a link that just dropped
/// packets is not trusted again at once: resuming into it would only lose them again).
const LOSS_CAP_HOLD: Duration = Duration::from_secs(3);
/// After a video is paused on congestion, nothing asks for the way back this long: the link
/// just proved thinner than the lowest layer, and a probe cluster (str0m sends them at twice
/// the desired rate) overflows a queue sized for the audio that is all it still carries.
const PAUSE_QUIET: Duration = Duration::from_secs(5);

/// What one of str0m's periodic `PeerStats` says about a subscriber's link.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinkReading {
    /// Every byte sent so far.
    pub(super) peer_bytes_tx: u64,
    /// TWCC loss over the last second.
    pub(super) loss: Option<f32>,
    /// The round trip of the packet most recently reported on.
    pub(super) rtt: Option<Duration>,
    /// GCC's own estimate (not str0m's 3 s mean of it).
    pub(super) raw_bps: Option<u64>,
    /// The selected pair runs over ICE-TCP (RFC 6544).
    pub(super) over_tcp: bool,
}

/// Estimator state of one subscriber transport.
#[derive(Debug)]
pub(super) struct SubscriberBwe {
    /// str0m's reported estimate: a 3 s mean of GCC's, so it lags a sudden drop by seconds.
    pub(super) estimate_bps: u64,
    /// What the link carried while it lost packets, and when (see
    /// [`SubscriberBwe::effective_bps`]).
    pub(super) loss_cap: Option<(u64, Instant)>,
    /// When the current run of lossy readings began or last stepped the cap down: loss that
    /// outlasts a whole loss window since steps it down (see `on_congested_reading`).
    pub(super) lossy_run_stepped_at: Option<Instant>,
    /// The level of the last step of the current lossy run: until the run ends, later readings
    /// (what got through, of a second that still mixes the sending before the step) do not
    /// lift the cap above it.
    pub(super) lossy_run_ceiling: Option<u64>,
    /// What the link carried without loss or queueing, and when: a floor under the estimate.
    pub(super) carried_clean: Option<(u64, Instant)>,
    /// GCC's unsmoothed estimate and since when it has had that value (see [`STALL`]).
    pub(super) raw_estimate: Option<(u64, Instant)>,
    pub(super) last_reset: Option<Instant>,
    /// The shortest round trip seen (TWCC), the link's round trip with empty queues.
    pub(super) base_rtt: Option<Duration>,
    /// `peer_bytes_tx` at the last two `PeerStats`, newest first, and when: what was sent
    /// over the loss's window.
    pub(super) sent: [Option<(u64, Instant)>; 2],
    /// The estimate the last allocation used.
    pub(super) allocated_at_bps: u64,
    /// Whether estimates govern this transport (TWCC negotiated and feedback possible).
    pub(super) active: bool,
    pub(super) targets: allocator::Targets,
    pub(super) last_probe: Option<Instant>,
    /// When a video of this subscriber was last paused because its link got thinner.
    last_pause: Option<Instant>,
    /// The last reading's selected pair ran over ICE-TCP.
    over_tcp: bool,
    /// The estimate last told to the subscriber (`MediaEvent::BandwidthEstimate`), and when.
    pub(super) reported_bps: u64,
    pub(super) reported_at: Option<Instant>,
}

impl SubscriberBwe {
    pub(super) fn new(initial_bps: u64) -> Self {
        SubscriberBwe {
            estimate_bps: initial_bps,
            loss_cap: None,
            lossy_run_stepped_at: None,
            lossy_run_ceiling: None,
            carried_clean: None,
            raw_estimate: None,
            last_reset: None,
            base_rtt: None,
            sent: [None; 2],
            allocated_at_bps: initial_bps,
            active: false,
            targets: allocator::Targets::default(),
            last_probe: None,
            last_pause: None,
            over_tcp: false,
            reported_bps: 0,
            reported_at: None,
        }
    }

    /// What the allocator divides: the reported estimate, capped at what the link carried
    /// while it lost packets, and otherwise not below what it just carried cleanly.
    ///
    /// The floor is there because GCC's estimate, on a link with room, tracks what is sent:
    /// a delay spike (a keyframe in a short queue) sets it to 0.85x the acknowledged rate,
    /// below the layer being sent, and str0m's 3 s mean follows a few seconds later. Taken
    /// at its word that pauses video on a link that carries it without a loss. GCC's
    /// unsmoothed estimate is no faster signal of a real drop, for the same reason; loss is.
    pub(super) fn effective_bps(&self, now: Instant) -> u64 {
        match fresh(self.loss_cap, LOSS_CAP_HOLD, now) {
            Some(cap) => self.estimate_bps.min(cap),
            None => self
                .estimate_bps
                .max(fresh(self.carried_clean, CARRIED_PROOF_TTL, now).unwrap_or(0)),
        }
    }

    /// Whether a loss cap governs: the link dropped packets within [`LOSS_CAP_HOLD`]. Probing
    /// then only pushes more into a full queue, and could not lift the estimate past the cap.
    pub(super) fn loss_capped(&self, now: Instant) -> bool {
        fresh(self.loss_cap, LOSS_CAP_HOLD, now).is_some()
    }

    /// A video of this subscriber was paused for bandwidth. Only a link that got thinner
    /// earns the quiet after it: a first allocation has seen nothing of the link, and over
    /// ICE-TCP a probe fills TCP's buffers, not a drop-tail queue the audio shares (there
    /// GCC's estimate sinks to ~70 kbit/s, and waiting kept such a subscriber paused).
    pub(super) fn on_video_paused(&mut self, on_congestion: bool, now: Instant) {
        if on_congestion && !self.over_tcp {
            self.last_pause = Some(now);
        }
    }

    /// Whether a pause on congestion is younger than [`PAUSE_QUIET`].
    pub(super) fn quiet_after_pause(&self, now: Instant) -> bool {
        self.last_pause
            .is_some_and(|at| now.saturating_duration_since(at) < PAUSE_QUIET)
    }

    /// GCC's estimate if its probing is stuck: the estimate has not moved for [`STALL`] although we
    /// have been asking for probes all along (so str0m would have sent some, and any result
    /// moves it), on a link that loses nothing. Seen on 2 of 14 tracking runs: after loss,
    /// str0m's loss controller stays "loss limited" on an application-limited link, which
    /// blocks every probe, and the estimate cannot rise without one.
    pub(super) fn estimator_stalled(&self, now: Instant) -> Option<u64> {
        let (raw, since) = self.raw_estimate?;
        let asking = self
            .last_probe
            .is_some_and(|t| now.saturating_duration_since(t) <= PROBE_INTERVAL * 2);
        let lossy = self.loss_capped(now);
        let recently_reset = self
            .last_reset
            .is_some_and(|t| now.saturating_duration_since(t) < STALL_RESET_INTERVAL);
        let stuck = now.saturating_duration_since(since) >= STALL;
        (stuck && asking && !lossy && !recently_reset).then_some(raw)
    }

    /// One `PeerStats` reading. Returns whether the effective estimate fell suddenly.
    pub(super) fn on_link_reading(&mut self, reading: LinkReading, now: Instant) -> bool {
        let LinkReading {
            peer_bytes_tx,
            loss,
            rtt,
            raw_bps,
            over_tcp,
        } = reading;
        let before = self.effective_bps(now);
        self.over_tcp = over_tcp;
        if let Some(raw) = raw_bps {
            if self.raw_estimate.is_none_or(|(bps, _)| bps != raw) {
                self.raw_estimate = Some((raw, now));
            }
        }
        if let Some(rtt) = rtt {
            self.base_rtt = Some(self.base_rtt.map_or(rtt, |base| base.min(rtt)));
        }
        let queueing = match (rtt, self.base_rtt) {
            (Some(rtt), Some(base)) => rtt > base + QUEUE_DELAY_TOLERANCE,
            _ => true,
        };
        // Sent over the same last second the loss is measured over (readings come every
        // 500 ms): after a layer switch both still mix the old layer and the new one.
        let since =
            self.sent.iter().flatten().find(|(_, at)| {
                now.saturating_duration_since(*at) >= LOSS_WINDOW - STATS_INTERVAL / 2
            });
        let sent_bps = since.and_then(|(bytes, at)| {
            let elapsed = now.saturating_duration_since(*at).as_secs_f64();
            (elapsed > 0.0).then(|| peer_bytes_tx.saturating_sub(*bytes) as f64 * 8.0 / elapsed)
        });
        self.sent = [Some((peer_bytes_tx, now)), self.sent[0]];
        if let (Some(loss), Some(sent_bps)) = (loss, sent_bps) {
            // Over ICE-TCP nothing is lost on the wire (TCP resends below us, and congestion
            // shows as delay, which GCC reads); what TWCC counts as lost there was never
            // carried short, so it caps nothing.
            if loss > CONGESTED_LOSS && !over_tcp {
                self.on_congested_reading(sent_bps, loss, now);
            } else {
                // The lossy run is over: the next one starts from what gets through.
                self.lossy_run_stepped_at = None;
                self.lossy_run_ceiling = None;
                if loss <= CLEAN_LOSS && !queueing {
                    self.carried_clean = Some((sent_bps as u64, now));
                }
            }
        }
        (self.effective_bps(now) as f64) < before as f64 * SUDDEN_DROP
    }

    /// A reading that lost more than [`CONGESTED_LOSS`] of what was sent over the last second.
    ///
    /// What got through (sent x (1 - loss)) caps the estimate. That is an upper bound only:
    /// the loss is counted in packets, and a full queue drops big video packets rather than
    /// small audio ones, so the bytes lost are a larger share. So loss that lasts a whole loss
    /// window past the run's start or its last step (the allocation has had time to fit the
    /// cap and the link still drops) steps the cap down by the loss again, as GCC's loss rule
    /// does, instead of settling above a thin link until the smoothed estimate comes down.
    fn on_congested_reading(&mut self, sent_bps: f64, loss: f32, now: Instant) {
        let delivered = f64::from(1.0 - loss.min(1.0));
        let carried = (sent_bps * delivered) as u64;
        let standing = fresh(self.loss_cap, LOSS_CAP_HOLD, now);
        let run_age = self
            .lossy_run_stepped_at
            .map(|since| now.saturating_duration_since(since));
        let cap = match run_age {
            // Still losing a whole loss window after the run began or last stepped down: the
            // allocation has had time to fit the cap, and the link still drops. Step down.
            Some(age) if standing.is_some() && age >= LOSS_WINDOW => {
                let stepped = (carried.min(self.lossy_run_ceiling.unwrap_or(u64::MAX)) as f64
                    * delivered) as u64;
                self.lossy_run_stepped_at = Some(now);
                self.lossy_run_ceiling = Some(stepped);
                stepped
            }
            Some(_) => carried.min(self.lossy_run_ceiling.unwrap_or(u64::MAX)),
            None => {
                self.lossy_run_stepped_at = Some(now);
                carried
            }
        };
        self.loss_cap = Some((cap, now));
    }
}

/// A reading's value while it is younger than `ttl`.
fn fresh(reading: Option<(u64, Instant)>, ttl: Duration, now: Instant) -> Option<u64> {
    reading
        .filter(|(_, at)| now.saturating_duration_since(*at) < ttl)
        .map(|(bps, _)| bps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One reading: bytes sent so far, loss, round trip in ms.
    fn read(
        bwe: &mut SubscriberBwe,
        peer_bytes_tx: u64,
        loss: Option<f32>,
        rtt_ms: Option<u64>,
        now: Instant,
    ) -> bool {
        let reading = LinkReading {
            peer_bytes_tx,
            loss,
            rtt: rtt_ms.map(Duration::from_millis),
            raw_bps: None,
            over_tcp: false,
        };
        bwe.on_link_reading(reading, now)
    }

    /// A subscriber whose reported estimate is 1 Mbit/s, with a first reading at `t0`.
    fn subscriber(t0: Instant) -> SubscriberBwe {
        let mut bwe = SubscriberBwe::new(1_000_000);
        read(&mut bwe, 0, Some(0.0), None, t0);
        bwe
    }

    #[test]
    fn loss_caps_the_estimate_at_what_got_through_and_holds() {
        let t0 = Instant::now();
        let mut bwe = subscriber(t0);
        assert!(!read(&mut bwe, 50_000, Some(0.0), None, t0 + 500 * MS));
        // The last second: 800 kbit/s sent, 75 % lost; the link carried 200 kbit/s.
        assert!(read(&mut bwe, 100_000, Some(0.75), None, t0 + 1000 * MS));
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 200_000);
        // Loss-free readings do not lift the cap before its hold ends...
        read(&mut bwe, 103_000, Some(0.0), None, t0 + 1500 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1500 * MS), 200_000);
        // ...a lossy one replaces it with what the link carried this time (104 kbit/s sent
        // over the last second, half of it lost), and restarts the hold...
        read(&mut bwe, 113_000, Some(0.5), None, t0 + 2000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 2000 * MS), 52_000);
        // ...after which the reported estimate governs again.
        assert_eq!(bwe.effective_bps(t0 + 2000 * MS + LOSS_CAP_HOLD), 1_000_000);
    }

    #[test]
    fn the_loss_cap_follows_the_link_up_as_well() {
        let t0 = Instant::now();
        let mut bwe = subscriber(t0);
        read(&mut bwe, 50_000, Some(0.0), None, t0 + 500 * MS);
        read(&mut bwe, 100_000, Some(0.5), None, t0 + 1000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 400_000);
        // Still lossy, but more got through: not a ratchet down.
        read(&mut bwe, 150_000, Some(0.2), None, t0 + 1500 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1500 * MS), 640_000);
    }

    #[test]
    fn loss_that_outlasts_a_window_under_one_cap_steps_it_down() {
        let t0 = Instant::now();
        let mut bwe = subscriber(t0);
        read(&mut bwe, 25_000, Some(0.0), None, t0 + 500 * MS);
        // 400 kbit/s sent, 50 % lost: capped at 200 kbit/s.
        read(&mut bwe, 50_000, Some(0.5), None, t0 + 1000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 200_000);
        // 200 kbit/s from now on. Half a window later the reading still mixes what was sent
        // before the cap (300 kbit/s, 20 % lost): what got through, no step yet.
        read(&mut bwe, 62_500, Some(0.2), None, t0 + 1500 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1500 * MS), 240_000);
        // A whole window into the run and still 20 % lost: what got through, less the loss
        // again (packet counts understate the bytes a full queue drops).
        read(&mut bwe, 75_000, Some(0.2), None, t0 + 2000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 2000 * MS), 128_000);
        // Until the run ends, what got through does not lift the cap above the step...
        read(&mut bwe, 87_500, Some(0.2), None, t0 + 2500 * MS);
        assert_eq!(bwe.effective_bps(t0 + 2500 * MS), 128_000);
        // ...and the next step comes a window after the last: 160 k got through, but no more
        // than the last step's level, less the loss.
        read(&mut bwe, 100_000, Some(0.2), None, t0 + 3000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 3000 * MS), 102_400);
        assert!(bwe.loss_capped(t0 + 3000 * MS));
        // ...and a clean reading ends the run: the next loss starts a new level.
        read(&mut bwe, 112_500, Some(0.0), None, t0 + 3500 * MS);
        read(&mut bwe, 125_000, Some(0.2), None, t0 + 4000 * MS);
        read(&mut bwe, 137_500, Some(0.2), None, t0 + 4500 * MS);
        assert_eq!(bwe.effective_bps(t0 + 4500 * MS), 160_000);
    }

    #[test]
    fn only_a_pause_on_congestion_off_ice_tcp_is_followed_by_quiet() {
        let t0 = Instant::now();
        let mut bwe = subscriber(t0);
        bwe.on_video_paused(false, t0);
        assert!(!bwe.quiet_after_pause(t0), "a first allocation's pause");
        bwe.on_video_paused(true, t0);
        assert!(bwe.quiet_after_pause(t0 + PAUSE_QUIET - MS));
        assert!(!bwe.quiet_after_pause(t0 + PAUSE_QUIET));
        let mut over_tcp = subscriber(t0);
        over_tcp.on_link_reading(
            LinkReading {
                peer_bytes_tx: 1_000,
                loss: Some(0.0),
                rtt: None,
                raw_bps: None,
                over_tcp: true,
            },
            t0,
        );
        over_tcp.on_video_paused(true, t0);
        assert!(!over_tcp.quiet_after_pause(t0));
    }

    #[test]
    fn loss_counted_over_ice_tcp_caps_nothing() {
        let t0 = Instant::now();
        let mut bwe = subscriber(t0);
        let over_tcp = |peer_bytes_tx, loss| LinkReading {
            peer_bytes_tx,
            loss: Some(loss),
            rtt: None,
            raw_bps: None,
            over_tcp: true,
        };
        bwe.on_link_reading(over_tcp(50_000, 0.0), t0 + 500 * MS);
        assert!(!bwe.on_link_reading(over_tcp(100_000, 0.5), t0 + 1000 * MS));
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 1_000_000);
    }

    #[test]
    fn loss_below_the_threshold_is_not_congestion() {
        let t0 = Instant::now();
        let mut bwe = subscriber(t0);
        read(&mut bwe, 50_000, Some(0.05), None, t0 + 500 * MS);
        assert!(!read(&mut bwe, 100_000, Some(0.05), None, t0 + 1000 * MS));
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 1_000_000);
    }

    #[test]
    fn what_the_link_carried_cleanly_is_a_floor_under_the_estimate() {
        let t0 = Instant::now();
        // GCC came down to 150 kbit/s after a delay spike...
        let mut bwe = SubscriberBwe::new(150_000);
        read(&mut bwe, 0, Some(0.0), Some(20), t0);
        read(&mut bwe, 12_500, Some(0.0), Some(22), t0 + 500 * MS);
        // ...but the last second carried 200 kbit/s without loss or queueing.
        read(&mut bwe, 25_000, Some(0.01), Some(25), t0 + 1000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 200_000);
        // The proof lapses unless renewed.
        assert_eq!(
            bwe.effective_bps(t0 + 1000 * MS + CARRIED_PROOF_TTL),
            150_000
        );
    }

    #[test]
    fn no_floor_while_the_queue_builds() {
        let t0 = Instant::now();
        let mut bwe = SubscriberBwe::new(150_000);
        read(&mut bwe, 0, Some(0.0), Some(20), t0);
        read(&mut bwe, 12_500, Some(0.0), Some(20), t0 + 500 * MS);
        // No loss yet, but the round trip grew by 60 ms: a deep queue filling up, and what
        // was sent is not what arrived.
        read(&mut bwe, 25_000, Some(0.0), Some(80), t0 + 1000 * MS);
        assert_eq!(bwe.effective_bps(t0 + 1000 * MS), 150_000);
    }

    #[test]
    fn an_estimate_that_never_moves_while_we_ask_for_probes_is_a_stall() {
        let t0 = Instant::now();
        let mut bwe = SubscriberBwe::new(450_000);
        let clean = |bytes, raw| LinkReading {
            peer_bytes_tx: bytes,
            loss: Some(0.0),
            rtt: Some(Duration::from_millis(20)),
            raw_bps: Some(raw),
            over_tcp: false,
        };
        bwe.on_link_reading(clean(0, 450_000), t0);
        bwe.last_probe = Some(t0 + 3500 * MS);
        bwe.on_link_reading(clean(100_000, 450_000), t0 + 3500 * MS);
        assert_eq!(
            bwe.estimator_stalled(t0 + 3500 * MS),
            None,
            "not yet {STALL:?}"
        );
        assert_eq!(bwe.estimator_stalled(t0 + STALL), Some(450_000));
        // Any movement restarts the clock.
        bwe.on_link_reading(clean(120_000, 450_001), t0 + STALL);
        assert_eq!(bwe.estimator_stalled(t0 + STALL), None);
        // Not while we stopped asking (nothing above the estimate is wanted).
        bwe.last_probe = None;
        assert_eq!(bwe.estimator_stalled(t0 + STALL * 3), None);
    }
}
