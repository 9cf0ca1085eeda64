//! Per-subscriber bandwidth allocation, sans I/O: the subscriber transport's send-side
//! estimate (str0m's GCC on TWCC feedback) in, one decision per track out.
//!
//! The shape follows LiveKit's `StreamAllocator` and mediasoup's
//! `DistributeAvailableOutgoingBitrate`: audio is served first; video tracks in priority order
//! first each get their lowest layer (so many small pictures beat one big one), then climb
//! one by one to the highest layer whose *measured* bitrate fits. With temporal layers (L1T3)
//! each spatial layer offers cheaper steps at 15 and 7.5 fps, tried before dropping to a
//! smaller picture. A track whose lowest step does not fit is paused, but only while the link
//! loses packets ([`Pausing`]). Drops apply at once (congestion hurts everyone on the link); climbs
//! only after the estimate has carried the higher layer for [`CLIMB_HOLD`], so a noisy
//! estimate cannot make a picture flap.

use std::time::{Duration, Instant};

use super::simulcast::{MAX_LAYERS, MAX_TEMPORAL};

/// The estimate has to carry a higher layer this long before we switch up.
pub const CLIMB_HOLD: Duration = Duration::from_millis(1000);
/// ...and a paused video this long before it resumes: a resume the link cannot carry sends a
/// keyframe burst into the queue the audio needs, and GCC's estimate on a link that thin
/// overshoots for a moment after every probe.
pub const RESUME_HOLD: Duration = Duration::from_millis(3000);
/// A layer above the current one must fit with this margin on its extra cost (headroom for
/// keyframes and estimate noise). Keeping the current layer needs only the estimate itself:
/// GCC's estimate wobbles by 10–20 % on a healthy link, and a drop must mean congestion.
const CLIMB_MARGIN: f64 = 1.25;
/// What a track already receives is kept while it costs up to this much more than its share:
/// str0m paces at 1.1× the estimate, so that still leaves without queueing, and a dip of a few
/// percent (GCC wobbles on a healthy link) does not cost a picture a layer.
const KEEP_TOLERANCE: f64 = 1.1;
/// The budget is never taken as less than this. On overuse GCC sets its estimate to 0.85×
/// what it saw carried, so a subscriber receiving only a few tens of kbit/s would spiral down
/// to a pause on one noisy reading; a real thin link is still caught, as a 720p simulcast's
/// lowest layer alone costs more than this.
const BUDGET_FLOOR_BPS: u64 = 100_000;
/// What an audio track costs before it has been measured.
const AUDIO_DEFAULT_BPS: u64 = 48_000;

/// One track of the subscriber, as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackDemand {
    pub audio: bool,
    /// Served first when bandwidth is short (pinned or speaking tracks rank higher).
    pub priority: u16,
    /// Highest spatial layer the subscriber wants: its preferred layer is a cap.
    pub max_layer: u8,
    /// Measured bitrate of each layer the publisher sends, bits/s; 0 = not received.
    pub layer_bps: [u64; MAX_LAYERS],
    /// Of that, the bitrate of each temporal layer (TID 0, 1, 2); all zero when the layer
    /// has no temporal scalability (or it is not measured yet).
    pub temporal_bps: [[u64; MAX_TEMPORAL as usize + 1]; MAX_LAYERS],
    /// False while some layer's bitrate is still a guess (it started less than a window
    /// ago): the first allocation may use the guess, later ones keep what they have.
    pub measured: bool,
}

impl TrackDemand {
    fn lowest_layer(&self) -> Option<u8> {
        (0..MAX_LAYERS as u8).find(|l| self.layer_bps[*l as usize] > 0)
    }

    /// The highest received layer within the subscriber's cap (the lowest one above the
    /// cap when nothing below it is received).
    fn top_layer(&self) -> Option<u8> {
        (0..=self.max_layer.min(MAX_LAYERS as u8 - 1))
            .rev()
            .find(|l| self.layer_bps[*l as usize] > 0)
            .or_else(|| self.lowest_layer())
    }

    fn cost(&self, allocation: Allocation) -> u64 {
        match allocation {
            Allocation::Paused => 0,
            Allocation::Layer(l, t) => self.step_cost(l, t),
        }
    }

    /// What spatial layer `l` costs with temporal layers up to `t`.
    fn step_cost(&self, l: u8, t: u8) -> u64 {
        let full = self.layer_bps[l as usize];
        let by_tid = &self.temporal_bps[l as usize];
        if t >= MAX_TEMPORAL || by_tid.iter().all(|b| *b == 0) {
            return full;
        }
        by_tid[..=t as usize].iter().sum::<u64>().min(full)
    }

    /// Every step this track can be sent at, cheapest first: per spatial layer within the
    /// cap, its reduced frame rates (those that save at least a tenth) and then all of it.
    /// The base frame rate alone (7.5 fps of 30) is offered only on the lowest layer, as the
    /// last step before a pause: a bigger picture that jerks is worse than a smaller one
    /// that moves.
    fn steps(&self) -> Vec<(Allocation, u64)> {
        let (Some(low), Some(top)) = (self.lowest_layer(), self.top_layer()) else {
            return Vec::new();
        };
        let mut steps = Vec::new();
        for l in (low..=top).filter(|l| self.layer_bps[*l as usize] > 0) {
            let full = self.layer_bps[l as usize];
            let slowest = if l == low { 0 } else { 1 };
            for t in slowest..MAX_TEMPORAL {
                let cost = self.step_cost(l, t);
                if cost > 0 && (cost as f64) < full as f64 * 0.9 {
                    steps.push((Allocation::Layer(l, t), cost));
                }
            }
            steps.push((Allocation::full(l), full));
        }
        steps
    }
}

/// What one track is sent. Ordered from least to most: paused, then by spatial layer and,
/// within it, by temporal layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Allocation {
    /// Nothing fits: the track is paused until its lowest layer does.
    Paused,
    /// This spatial layer (0 = lowest) with temporal layers up to the second value
    /// ([`MAX_TEMPORAL`]: all, full frame rate); audio is always `full(0)`.
    Layer(u8, u8),
}

impl Allocation {
    /// Spatial layer `l` at its full frame rate.
    pub const fn full(l: u8) -> Self {
        Allocation::Layer(l, MAX_TEMPORAL)
    }
}

/// Why an allocation changed (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first decision for a new track.
    Initial,
    /// The estimate dropped (or a layer got dearer): down at once.
    Congestion,
    /// The estimate has carried more for [`CLIMB_HOLD`].
    Recovered,
    /// The subscriber raised its preferred layer while the estimate had room: at once.
    Preference,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::Congestion => "congestion",
            Reason::Recovered => "recovered",
            Reason::Preference => "preference",
        }
    }
}

/// The allocator's memory of one track between runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackState {
    /// `None` until the first run.
    pub allocation: Option<Allocation>,
    /// Since when the estimate has carried more than `allocation`.
    climb_since: Option<Instant>,
    /// `allocation` was the track's top step: the subscriber's cap held it, not the estimate.
    at_top: bool,
}

/// A change the caller has to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Index into the `tracks` slice.
    pub track: usize,
    pub allocation: Allocation,
    pub reason: Reason,
}

/// What the whole subscriber wants, for the estimator: `desired` is what every track at its
/// top layer costs (str0m probes towards it), `minimum` what the current allocation costs.
/// The minimum is media only on purpose: padding towards the next layer would keep a thin
/// link full and take the media's headroom, and a sender that pads is never application-
/// limited, which silences str0m's periodic probes. Climbing relies on probes instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Targets {
    pub minimum_bps: u64,
    pub desired_bps: u64,
}

impl Targets {
    /// Whether some track is held below what it wants.
    pub fn wants_more(&self, estimate_bps: u64) -> bool {
        self.desired_bps > self.minimum_bps && self.desired_bps > estimate_bps
    }
}

/// Whether a video that gets a picture may lose it to the estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pausing {
    /// The link drops packets: a video whose lowest step does not fit is paused.
    Allowed,
    /// Nothing says the link is short but the estimate: a video keeps (or, new, starts on) its
    /// lowest step. GCC's delay-based estimate on a loss-free link follows what is sent (0.85x
    /// of it on every delay spike), so each step down lowers it again; taken as far as a pause
    /// it spirals a picture away on a link that carried it (seen under CPU contention, and
    /// over ICE-TCP, where GCC sinks to ~70 kbit/s on loopback). A link really thinner than the
    /// lowest layer overflows its queue within a second, and loss allows the pause.
    KeepLowest,
}

/// Divide `estimate_bps` among `tracks`; `states` (same length) carries hysteresis between
/// runs and is updated. Returns the changes, in track order.
pub fn allocate(
    estimate_bps: u64,
    pausing: Pausing,
    tracks: &[TrackDemand],
    states: &mut [TrackState],
    now: Instant,
) -> Vec<Change> {
    debug_assert_eq!(tracks.len(), states.len());
    let steps: Vec<Vec<(Allocation, u64)>> = tracks.iter().map(TrackDemand::steps).collect();
    let ideal = ideal_allocations(estimate_bps, pausing, tracks, &steps, states);
    let tops: Vec<Option<Allocation>> = steps
        .iter()
        .map(|s| s.last().map(|(step, _)| *step))
        .collect();
    let mut changes = Vec::new();
    for (i, (track, state)) in tracks.iter().zip(states.iter_mut()).enumerate() {
        let proposed = ideal[i];
        let decided = match state.allocation {
            // Nothing of the video received yet: no layer to choose, and no reason to pause
            // it either (a pause would then hold for the resume's hold once it arrives).
            None if !track.audio && steps[i].is_empty() => None,
            None => Some((proposed, Reason::Initial)),
            Some(_) if !track.measured => None,
            Some(current) if proposed < current || !fits_layer(track, current) => {
                // The subscriber lowered its cap below what it gets: its choice, not the link's.
                let capped = matches!(current, Allocation::Layer(l, _) if l > track.max_layer);
                let reason = if capped {
                    Reason::Preference
                } else {
                    Reason::Congestion
                };
                Some((proposed, reason))
            }
            // Held by the cap, not by the estimate: a raised cap needs no proof of bandwidth.
            Some(current) if proposed > current && state.at_top => {
                Some((proposed, Reason::Preference))
            }
            Some(current) if proposed > current => {
                let since = *state.climb_since.get_or_insert(now);
                let hold = if current == Allocation::Paused {
                    RESUME_HOLD
                } else {
                    CLIMB_HOLD
                };
                (now.saturating_duration_since(since) >= hold)
                    .then_some((proposed, Reason::Recovered))
            }
            Some(_) => {
                state.climb_since = None;
                None
            }
        };
        if let Some((allocation, reason)) = decided {
            state.climb_since = None;
            state.at_top = !track.audio && tops[i] == Some(allocation);
            if state.allocation != Some(allocation) {
                state.allocation = Some(allocation);
                changes.push(Change {
                    track: i,
                    allocation,
                    reason,
                });
            }
        }
    }
    changes
}

/// Whether `allocation` still names a layer the publisher sends.
fn fits_layer(track: &TrackDemand, allocation: Allocation) -> bool {
    match allocation {
        Allocation::Paused => true,
        Allocation::Layer(l, _) => track.audio || track.layer_bps[l as usize] > 0,
    }
}

/// The allocation the estimate allows right now, ignoring hysteresis.
fn ideal_allocations(
    estimate_bps: u64,
    pausing: Pausing,
    tracks: &[TrackDemand],
    steps: &[Vec<(Allocation, u64)>],
    states: &[TrackState],
) -> Vec<Allocation> {
    let mut budget = estimate_bps.max(BUDGET_FLOOR_BPS) as i64;
    let mut out = vec![Allocation::Paused; tracks.len()];
    for (i, track) in tracks.iter().enumerate().filter(|(_, t)| t.audio) {
        // Audio is never paused: it is cheap and a frozen voice is worse than a frozen face.
        out[i] = Allocation::full(0);
        budget -= audio_cost(track) as i64;
    }
    let order = video_order(tracks);
    let current = |i: usize| states[i].allocation.unwrap_or(Allocation::Paused);
    // Everyone's cheapest step first.
    for &i in &order {
        if let Some(&(first, cost)) = steps[i].first() {
            let cost = weighted(cost, first, current(i));
            // A new track counts as one with a picture: nothing has shown the link short yet.
            let kept =
                pausing == Pausing::KeepLowest && states[i].allocation != Some(Allocation::Paused);
            if cost <= budget || kept {
                out[i] = first;
                budget -= cost;
            }
        }
    }
    // Then climb, highest priority first, as far as the rest of the budget goes.
    for &i in &order {
        let Some(&(first, first_cost)) = steps[i].first() else {
            continue;
        };
        if out[i] != first {
            continue;
        }
        for &(step, cost) in steps[i][1..].iter().rev() {
            let extra = weighted(cost.saturating_sub(first_cost), step, current(i));
            if extra <= budget {
                out[i] = step;
                budget -= extra;
                break;
            }
        }
    }
    out
}

/// What `bps` counts against the budget for a move to `step`: more above the current
/// allocation (headroom to climb), less at or below it (tolerance to keep).
fn weighted(bps: u64, step: Allocation, current: Allocation) -> i64 {
    let factor = if step > current {
        CLIMB_MARGIN
    } else {
        1.0 / KEEP_TOLERANCE
    };
    (bps as f64 * factor) as i64
}

fn audio_cost(track: &TrackDemand) -> u64 {
    match track.layer_bps[0] {
        0 => AUDIO_DEFAULT_BPS,
        bps => bps,
    }
}

/// Video track indices, highest priority first, then in the order given.
fn video_order(tracks: &[TrackDemand]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tracks.len()).filter(|i| !tracks[*i].audio).collect();
    order.sort_by_key(|i| std::cmp::Reverse(tracks[*i].priority));
    order
}

/// The estimator's targets for this subscriber (see [`Targets`]).
pub fn targets(tracks: &[TrackDemand], states: &[TrackState]) -> Targets {
    let mut current = 0;
    let mut desired = 0;
    for (track, state) in tracks.iter().zip(states) {
        if track.audio {
            current += audio_cost(track);
            desired += audio_cost(track);
            continue;
        }
        current += track.cost(state.allocation.unwrap_or(Allocation::Paused));
        if let Some(&(_, top)) = track.steps().last() {
            desired += top;
        }
    }
    Targets {
        minimum_bps: current.min(desired),
        desired_bps: desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMULCAST: [u64; 3] = [150_000, 500_000, 1_500_000];

    fn video(priority: u16) -> TrackDemand {
        TrackDemand {
            audio: false,
            priority,
            max_layer: 2,
            layer_bps: SIMULCAST,
            temporal_bps: [[0; 3]; MAX_LAYERS],
            measured: true,
        }
    }

    fn audio() -> TrackDemand {
        TrackDemand {
            audio: true,
            priority: 0,
            max_layer: 0,
            layer_bps: [40_000, 0, 0],
            temporal_bps: [[0; 3]; MAX_LAYERS],
            measured: true,
        }
    }

    /// One allocation on a lossy link (pausing allowed), as most tests want.
    fn run(
        estimate: u64,
        tracks: &[TrackDemand],
        states: &mut [TrackState],
        at: Instant,
    ) -> Vec<Change> {
        allocate(estimate, Pausing::Allowed, tracks, states, at)
    }

    fn allocation(states: &[TrackState], i: usize) -> Allocation {
        states[i].allocation.expect("allocated")
    }

    #[test]
    fn a_new_track_starts_on_the_layer_the_first_estimate_allows() {
        let t0 = Instant::now();
        let tracks = [audio(), video(0)];
        let mut states = [TrackState::default(); 2];
        let changes = run(700_000, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 1), Allocation::full(1));
        assert_eq!(allocation(&states, 0), Allocation::full(0));
        assert!(changes.iter().all(|c| c.reason == Reason::Initial));
        let mut fresh = [TrackState::default(); 2];
        run(5_000_000, &tracks, &mut fresh, t0);
        assert_eq!(allocation(&fresh, 1), Allocation::full(2));
    }

    #[test]
    fn drops_at_once_and_climbs_only_after_the_hold() {
        let t0 = Instant::now();
        let tracks = [video(0)];
        let mut states = [TrackState::default()];
        run(3_000_000, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(2));

        let changes = run(
            600_000,
            &tracks,
            &mut states,
            t0 + Duration::from_millis(10),
        );
        assert_eq!(changes[0].reason, Reason::Congestion);
        assert_eq!(allocation(&states, 0), Allocation::full(1));

        // Recovered: nothing changes until the estimate has held for CLIMB_HOLD.
        let t1 = t0 + Duration::from_secs(1);
        assert!(run(3_000_000, &tracks, &mut states, t1).is_empty());
        assert!(run(3_000_000, &tracks, &mut states, t1 + CLIMB_HOLD / 2).is_empty());
        // A dip resets the hold.
        assert!(run(600_000, &tracks, &mut states, t1 + CLIMB_HOLD * 3 / 4).is_empty());
        let t2 = t1 + CLIMB_HOLD;
        assert!(run(3_000_000, &tracks, &mut states, t2).is_empty());
        let changes = run(3_000_000, &tracks, &mut states, t2 + CLIMB_HOLD);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].reason, Reason::Recovered);
        assert_eq!(allocation(&states, 0), Allocation::full(2));
    }

    #[test]
    fn pauses_video_when_its_lowest_layer_does_not_fit_and_keeps_audio() {
        let t0 = Instant::now();
        let tracks = [audio(), video(0)];
        let mut states = [TrackState::default(); 2];
        run(2_000_000, &tracks, &mut states, t0);
        let changes = run(150_000, &tracks, &mut states, t0 + Duration::from_millis(1));
        assert_eq!(allocation(&states, 1), Allocation::Paused);
        assert_eq!(allocation(&states, 0), Allocation::full(0));
        assert_eq!(
            changes,
            vec![Change {
                track: 1,
                allocation: Allocation::Paused,
                reason: Reason::Congestion
            }]
        );
        // Resumes once the lowest layer fits, after the longer resume hold.
        let t1 = t0 + Duration::from_secs(1);
        run(400_000, &tracks, &mut states, t1);
        assert_eq!(allocation(&states, 1), Allocation::Paused);
        run(400_000, &tracks, &mut states, t1 + CLIMB_HOLD);
        assert_eq!(
            allocation(&states, 1),
            Allocation::Paused,
            "a climb's hold is not enough"
        );
        run(400_000, &tracks, &mut states, t1 + RESUME_HOLD);
        assert_eq!(allocation(&states, 1), Allocation::full(0));
    }

    #[test]
    fn without_loss_a_video_keeps_its_lowest_layer_but_a_paused_one_waits() {
        let t0 = Instant::now();
        let tracks = [audio(), video(0)];
        // A new video starts on its lowest step whatever the estimate...
        let mut states = [TrackState::default(); 2];
        allocate(50_000, Pausing::KeepLowest, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 1), Allocation::full(0));
        // ...unless the link already loses packets.
        let mut lossy = [TrackState::default(); 2];
        run(50_000, &tracks, &mut lossy, t0);
        assert_eq!(allocation(&lossy, 1), Allocation::Paused);

        let mut states = [TrackState::default(); 2];
        run(2_000_000, &tracks, &mut states, t0);
        // An estimate below the lowest layer on a loss-free link: down to the lowest step.
        let changes = allocate(
            150_000,
            Pausing::KeepLowest,
            &tracks,
            &mut states,
            t0 + Duration::from_millis(1),
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].reason, Reason::Congestion);
        assert_eq!(allocation(&states, 1), Allocation::full(0));
        // With loss it is paused...
        run(150_000, &tracks, &mut states, t0 + Duration::from_millis(2));
        assert_eq!(allocation(&states, 1), Allocation::Paused);
        // ...and the loss ending resumes nothing the estimate does not carry.
        let later = t0 + RESUME_HOLD * 2;
        for at in [later, later + RESUME_HOLD] {
            allocate(150_000, Pausing::KeepLowest, &tracks, &mut states, at);
        }
        assert_eq!(allocation(&states, 1), Allocation::Paused);
    }

    #[test]
    fn a_video_not_received_yet_is_left_undecided() {
        let t0 = Instant::now();
        let mut tracks = [audio(), video(0)];
        tracks[1].layer_bps = [0; MAX_LAYERS];
        let mut states = [TrackState::default(); 2];
        run(2_000_000, &tracks, &mut states, t0);
        assert_eq!(states[1].allocation, None);
        // Its first layer arrives: the first allocation is made then.
        tracks[1] = video(0);
        let changes = run(
            2_000_000,
            &tracks,
            &mut states,
            t0 + Duration::from_millis(5),
        );
        assert_eq!(changes[0].reason, Reason::Initial);
        assert_eq!(allocation(&states, 1), Allocation::full(2));
    }

    #[test]
    fn higher_priority_climbs_first_and_everyone_gets_a_picture() {
        let t0 = Instant::now();
        let tracks = [video(0), video(5), video(0)];
        let mut states = [TrackState::default(); 3];
        // 1.2 Mbit/s: three low layers (450 k), then the pinned one climbs to 500 k.
        run(1_200_000, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 1), Allocation::full(1));
        assert_eq!(allocation(&states, 0), Allocation::full(0));
        assert_eq!(allocation(&states, 2), Allocation::full(0));
        // Equal priorities share in order: with room for one more step, the first one gets it.
        let mut states = [TrackState::default(); 3];
        run(1_700_000, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 1), Allocation::full(1));
        assert_eq!(allocation(&states, 0), Allocation::full(1));
        assert_eq!(allocation(&states, 2), Allocation::full(0));
    }

    #[test]
    fn the_preferred_layer_is_a_cap_not_a_force() {
        let t0 = Instant::now();
        let mut capped = video(0);
        capped.max_layer = 1;
        let mut states = [TrackState::default()];
        run(10_000_000, &[capped], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(1));
        // Asking for the top layer on a thin link still gets what fits.
        let mut states = [TrackState::default()];
        run(300_000, &[video(0)], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(0));
    }

    #[test]
    fn guessed_bitrates_choose_the_first_layer_but_never_a_change() {
        let t0 = Instant::now();
        let mut track = video(0);
        track.measured = false;
        let mut states = [TrackState::default()];
        run(700_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(1));
        // A low estimate against guessed rates must not pause a picture that may be tiny.
        assert!(run(50_000, &[track], &mut states, t0 + CLIMB_HOLD).is_empty());
        track.measured = true;
        track.layer_bps = [3_000, 3_000, 3_000];
        run(50_000, &[track], &mut states, t0 + CLIMB_HOLD);
        run(50_000, &[track], &mut states, t0 + CLIMB_HOLD * 2);
        assert_eq!(allocation(&states, 0), Allocation::full(2));
    }

    #[test]
    fn a_small_dip_keeps_the_layer_a_real_drop_does_not() {
        let t0 = Instant::now();
        let tracks = [audio(), video(0)];
        let mut states = [TrackState::default(); 2];
        run(3_000_000, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 1), Allocation::full(2));
        // 1.54 Mbit/s of media against a 1.45 Mbit/s estimate: within the tolerance.
        assert!(run(1_450_000, &tracks, &mut states, t0).is_empty());
        run(1_300_000, &tracks, &mut states, t0);
        assert_eq!(allocation(&states, 1), Allocation::full(1));
    }

    #[test]
    fn frame_rate_drops_before_the_picture_gets_smaller() {
        let t0 = Instant::now();
        let mut track = video(0);
        // L1T3: half of each layer's bits in TL0, a quarter each in TL1 and TL2.
        for l in 0..MAX_LAYERS {
            let b = track.layer_bps[l];
            track.temporal_bps[l] = [b / 2, b / 4, b / 4];
        }
        let mut states = [TrackState::default()];
        run(3_000_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(2));
        // 1.3 Mbit/s: all of layer 2 no longer fits, 15 fps of it (1.125 M) does.
        run(1_300_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::Layer(2, 1));
        // 800 k: 7.5 fps of layer 2 (750 k) would fit, but only the lowest layer goes that
        // slow: 30 fps of layer 1.
        run(800_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(1));
        run(400_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::Layer(1, 1));
        // Below every step of layer 1, the lowest layer's base rate is the last step.
        run(80_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::Layer(0, 0));
        // Climbing back needs the margin: at 1.3 M, 15 fps of layer 2 (1.125 M × 1.25) does
        // not fit yet, all of layer 1 does; at 1.5 M the same step as on the way down.
        run(1_300_000, &[track], &mut states, t0 + CLIMB_HOLD);
        run(1_300_000, &[track], &mut states, t0 + CLIMB_HOLD * 2);
        assert_eq!(allocation(&states, 0), Allocation::full(1));
        run(1_500_000, &[track], &mut states, t0 + CLIMB_HOLD * 3);
        run(1_500_000, &[track], &mut states, t0 + CLIMB_HOLD * 4);
        assert_eq!(allocation(&states, 0), Allocation::Layer(2, 1));
    }

    #[test]
    fn raising_the_preferred_layer_climbs_at_once_when_it_fits() {
        let t0 = Instant::now();
        let mut track = video(0);
        track.max_layer = 0;
        let mut states = [TrackState::default()];
        run(5_000_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(0));
        track.max_layer = 2;
        let changes = run(5_000_000, &[track], &mut states, t0);
        assert_eq!(changes[0].reason, Reason::Preference);
        assert_eq!(allocation(&states, 0), Allocation::full(2));
        // Held by the estimate instead: the hold applies.
        let mut states = [TrackState::default()];
        run(300_000, &[track], &mut states, t0);
        assert!(run(5_000_000, &[track], &mut states, t0).is_empty());
    }

    #[test]
    fn a_layer_the_publisher_stopped_is_left_at_once() {
        let t0 = Instant::now();
        let mut track = video(0);
        let mut states = [TrackState::default()];
        run(5_000_000, &[track], &mut states, t0);
        assert_eq!(allocation(&states, 0), Allocation::full(2));
        track.layer_bps[2] = 0;
        let changes = run(
            5_000_000,
            &[track],
            &mut states,
            t0 + Duration::from_millis(5),
        );
        assert_eq!(changes[0].reason, Reason::Congestion);
        assert_eq!(allocation(&states, 0), Allocation::full(1));
    }

    #[test]
    fn targets_ask_for_the_top_and_keep_the_current_allocation() {
        let t0 = Instant::now();
        let tracks = [audio(), video(0)];
        let mut states = [TrackState::default(); 2];
        run(700_000, &tracks, &mut states, t0);
        let t = targets(&tracks, &states);
        assert_eq!(t.desired_bps, 40_000 + 1_500_000);
        assert_eq!(t.minimum_bps, 40_000 + 500_000);
        assert!(t.wants_more(700_000));
        run(150_000, &tracks, &mut states, t0 + Duration::from_millis(1));
        assert_eq!(targets(&tracks, &states).minimum_bps, 40_000);
        // At the top nothing more is wanted.
        let mut top = [TrackState::default(); 2];
        run(5_000_000, &tracks, &mut top, t0);
        let t = targets(&tracks, &top);
        assert_eq!(t.minimum_bps, t.desired_bps);
        assert!(!t.wants_more(1_000_000));
    }
}
