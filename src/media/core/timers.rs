//! Timers: one heap of str0m deadlines for all transports of the worker, and the slow
//! housekeeping tick.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use str0m::Input;

use super::{Egress, TransportKey, WorkerCore, FAR_FUTURE, LAYER_IDLE};

/// How long one [`WorkerCore::handle_timeouts`] call keeps serving deadlines that come due
/// while it runs.
const TIMEOUT_BURST: Duration = Duration::from_millis(2);

impl WorkerCore {
    /// When the worker loop must call [`WorkerCore::handle_timeouts`] next.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        self.timers
            .peek()
            .map(|Reverse((at, _))| *at)
            .unwrap_or(now + Duration::from_millis(100))
    }

    pub fn handle_timeouts(&mut self, mut now: Instant, egress: &mut dyn Egress) {
        let started = now;
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                // str0m's pacer releases one packet per timeout and asks to be woken again
                // a microsecond later; the runtime's timer would round that up to its next
                // millisecond tick, stretching a probe cluster (and paced media) to a packet
                // per tick. Deadlines that came due while we drained are served here, within
                // a budget that keeps the socket and the commands served.
                let fresh = Instant::now();
                if at > fresh || fresh.saturating_duration_since(started) >= TIMEOUT_BURST {
                    break;
                }
                now = fresh;
            }
            self.timers.pop();
            // Entries are never removed from the heap; skip those superseded or orphaned.
            let Some(transport) = self.transports.get_mut(key) else {
                continue;
            };
            if transport.next_timeout != at {
                continue;
            }
            transport.next_timeout = now + FAR_FUTURE;
            if let Err(e) = transport.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(transport = transport.id.0, error = %e, "timeout input failed");
            }
            if !transport.producers_by_mid.is_empty() {
                self.send_due_keyframe_requests(key, now);
            }
            self.drain(key, now, egress);
        }
        self.after_drain(now, egress);
    }

    pub(super) fn schedule(&mut self, key: TransportKey, at: Instant) {
        let transport = &mut self.transports[key];
        // Only an earlier deadline needs a heap entry; a later one is found when the earlier
        // entry fires and str0m reports the real next timeout.
        if at < transport.next_timeout {
            transport.next_timeout = at;
            self.timers.push(Reverse((at, key)));
        }
    }

    /// Slow housekeeping, called a few times a second: idle layers, keyframe retries.
    pub fn tick(&mut self, now: Instant, egress: &mut dyn Egress) {
        let mut changed = Vec::new();
        for (pk, producer) in self.producers.iter_mut() {
            let mut any = false;
            for layer in producer.layers.iter_mut() {
                let idle = layer
                    .last_packet
                    .is_none_or(|t| now.saturating_duration_since(t) > LAYER_IDLE);
                if layer.active && idle {
                    layer.active = false;
                    any = true;
                }
                layer.meter.roll(now, layer.active);
            }
            if any {
                changed.push(pk);
            }
        }
        for pk in changed {
            self.retarget_consumers(pk, now);
        }
        self.allocate_all(now);
        self.allocate_frames(now);
        self.update_dynacast(now);
        self.retire_idle_mirrors(now, egress);
        self.retry_pending_switches(now);
        self.after_drain(now, egress);
    }
}
