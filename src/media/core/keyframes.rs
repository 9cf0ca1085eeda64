//! Layer targets and keyframe requests. A consumer switches layers only at a keyframe of its
//! target, so retargeting asks the publisher for one (a PLI); [`KeyframeRequests`] coalesces
//! the asks of every consumer of a track into at most one PLI per layer per interval
//! (mediasoup's `KeyFrameRequestManager` plays this part).

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use str0m::media::KeyframeRequestKind;

use super::{ConsumerKey, ProducerKey, WorkerCore};
use crate::media::simulcast::MAX_LAYERS;
use crate::media::Kind;

/// At most one keyframe request per producer layer in this window (PLI storms hurt everyone).
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);
/// While a switch is pending and no keyframe came, ask again this often.
const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);

/// Debounces PLIs to one publisher track, per simulcast layer.
#[derive(Debug, Default)]
pub(super) struct KeyframeRequests {
    last_sent: [Option<Instant>; MAX_LAYERS],
}

impl KeyframeRequests {
    /// Whether a PLI for `layer` may leave now; if so it counts as sent.
    pub(super) fn admit(&mut self, layer: u8, now: Instant) -> bool {
        let Some(last) = self.last_sent.get_mut(layer as usize) else {
            return false;
        };
        if last.is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl WorkerCore {
    fn active_layers(&self, pk: ProducerKey) -> ([bool; MAX_LAYERS], usize) {
        let producer = &self.producers[pk];
        let mut active = [false; MAX_LAYERS];
        for (i, layer) in producer.layers.iter().enumerate().take(MAX_LAYERS) {
            active[i] = layer.active;
        }
        (active, producer.layers.len().min(MAX_LAYERS))
    }

    pub(super) fn retarget_consumers(&mut self, pk: ProducerKey, now: Instant) {
        let (active, n) = self.active_layers(pk);
        let consumers = self.producers[pk].consumers.clone();
        for ck in consumers {
            if self.consumers[ck]
                .selector
                .update_target(&active[..n])
                .is_some()
            {
                self.request_keyframe_for(ck, now);
            }
        }
    }

    pub(super) fn retarget_consumer(&mut self, ck: ConsumerKey, now: Instant) {
        let (active, n) = self.active_layers(self.consumers[ck].producer);
        if self.consumers[ck]
            .selector
            .update_target(&active[..n])
            .is_some()
        {
            self.request_keyframe_for(ck, now);
        }
    }

    /// (Re)start forwarding to a consumer from a fresh keyframe of its target layer: new
    /// consumers, and resumed ones (their decoder state is stale).
    pub(super) fn start_at_keyframe(&mut self, ck: ConsumerKey, now: Instant) {
        if self.consumers[ck].allocation.allocation.is_none() {
            self.allocate_for_new_consumer(ck, now);
        }
        self.consumers[ck].selector.current = None;
        self.retarget_consumer(ck, now);
        self.request_keyframe_for(ck, now);
    }

    /// Housekeeping: consumers still waiting for a keyframe to switch ask again.
    pub(super) fn retry_pending_switches(&mut self, now: Instant) {
        let retry: Vec<ConsumerKey> = self
            .consumers
            .iter()
            .filter(|(_, c)| {
                c.tx_ssrc.is_some()
                    && c.selector.switch_pending()
                    && c.last_keyframe_ask
                        .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_RETRY)
            })
            .map(|(k, _)| k)
            .collect();
        for ck in retry {
            self.request_keyframe_for(ck, now);
        }
    }

    /// Ask the publisher for a keyframe on the layer this consumer needs (the switch target,
    /// else the current layer), as far as [`KeyframeRequests`] lets it through.
    pub(super) fn request_keyframe_for(&mut self, ck: ConsumerKey, now: Instant) {
        let consumer = &mut self.consumers[ck];
        let Some(layer) = consumer.selector.target.or(consumer.selector.current) else {
            return;
        };
        consumer.last_keyframe_ask = Some(now);
        let producer = &mut self.producers[consumer.producer];
        if producer.kind != Kind::Video {
            return;
        }
        let Some(rid) = producer.layers.get(layer as usize).map(|l| l.rid) else {
            return;
        };
        if !producer.keyframes.admit(layer, now) {
            return;
        }
        let mid = producer.mid;
        let publisher = &mut self.transports[producer.transport];
        if let Some(stream) = publisher.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
            self.stats.keyframe_requests += 1;
        }
        // The PLI leaves on the publisher's next poll; drain it now rather than at its timeout.
        self.timers.push(Reverse((now, producer.transport)));
        publisher.next_timeout = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_layer_per_interval() {
        let mut gate = KeyframeRequests::default();
        let t0 = Instant::now();
        assert!(gate.admit(0, t0));
        assert!(!gate.admit(0, t0 + Duration::from_millis(100)));
        // Another layer has its own window.
        assert!(gate.admit(2, t0 + Duration::from_millis(100)));
        assert!(gate.admit(0, t0 + KEYFRAME_REQUEST_INTERVAL));
        assert!(!gate.admit(MAX_LAYERS as u8, t0));
    }
}
