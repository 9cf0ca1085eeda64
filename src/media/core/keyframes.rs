//! Layer targets and keyframe requests. A consumer switches layers only at a keyframe of its
//! target, so retargeting asks the publisher for one (a PLI); [`KeyframeRequests`] coalesces
//! the asks of every consumer of a track into at most one PLI per layer per interval
//! (mediasoup's `KeyFrameRequestManager` plays this part).

use std::time::{Duration, Instant};

use str0m::media::KeyframeRequestKind;

use super::{ConsumerKey, Deferred, Origin, ProducerKey, Relay, TransportKey, WorkerCore};
use crate::media::simulcast::MAX_LAYERS;
use crate::media::{Kind, MediaEvent};

/// At most one keyframe request per producer layer in this window. Chromium's encoder ignores
/// PLIs closer together than 300 ms (libwebrtc's `EncoderRtcpFeedback`), so asking sooner only
/// loses the request; and PLI storms hurt everyone.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);
/// While a switch is pending and no keyframe came, ask again this often.
const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);

/// Debounces PLIs to one publisher track, per simulcast layer. A request inside the window is
/// not dropped but deferred: it leaves the moment the window opens (a subscriber whose DTLS
/// came up just after another's keyframe must not wait for the next retry).
#[derive(Debug, Default)]
pub(super) struct KeyframeRequests {
    last_sent: [Option<Instant>; MAX_LAYERS],
    deferred: [bool; MAX_LAYERS],
}

impl KeyframeRequests {
    /// Whether a PLI for `layer` may leave now; if so it counts as sent. If not, it is
    /// deferred and `Err` says when it may leave.
    pub(super) fn admit(&mut self, layer: u8, now: Instant) -> Result<(), Option<Instant>> {
        let i = layer as usize;
        let Some(last) = self.last_sent.get(i).copied() else {
            return Err(None);
        };
        if let Some(sent) = last {
            if now.saturating_duration_since(sent) < KEYFRAME_REQUEST_INTERVAL {
                self.deferred[i] = true;
                return Err(Some(sent + KEYFRAME_REQUEST_INTERVAL));
            }
        }
        self.last_sent[i] = Some(now);
        self.deferred[i] = false;
        Ok(())
    }

    /// Deferred layers whose window has opened, marked as no longer deferred.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u8> {
        let mut due = Vec::new();
        for i in 0..MAX_LAYERS {
            let open = self.last_sent[i]
                .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_REQUEST_INTERVAL);
            if self.deferred[i] && open {
                self.deferred[i] = false;
                due.push(i as u8);
            }
        }
        due
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
    ///
    /// Until the subscriber's DTLS is up nothing can be forwarded, so a keyframe asked for now
    /// would arrive to nobody and hold the PLI debounce: the request waits for
    /// [`WorkerCore::subscriber_connected`] instead.
    pub(super) fn start_at_keyframe(&mut self, ck: ConsumerKey, now: Instant) {
        if self.consumers[ck].allocation.allocation.is_none() {
            self.allocate_for_new_consumer(ck, now);
        }
        self.consumers[ck].selector.current = None;
        if self.transports[self.consumers[ck].transport]
            .rtc
            .is_connected()
        {
            self.retarget_consumer(ck, now);
            self.request_keyframe_for(ck, now);
        } else {
            let (active, n) = self.active_layers(self.consumers[ck].producer);
            let _ = self.consumers[ck].selector.update_target(&active[..n]);
        }
    }

    /// A subscriber's DTLS just completed: every consumer still waiting for its first
    /// keyframe asks now (deferred: this runs mid-drain). The ask at subscribe time was held
    /// back for this moment, which saves a join the second a retry would otherwise wait.
    ///
    /// Simulcast consumers also ask the lowest active layer: its keyframe is a fraction of the
    /// top layer's, arrives first, and the selector starts there and climbs at the target's.
    pub(super) fn subscriber_connected(&mut self, key: TransportKey) {
        for &ck in &self.transports[key].consumers {
            if self.consumers[ck].selector.current.is_none() {
                self.deferred
                    .push(Deferred::KeyframeRequest { consumer: ck });
                self.deferred.push(Deferred::StartKeyframe { consumer: ck });
            }
        }
    }

    /// The fast-start half of [`WorkerCore::subscriber_connected`]: a keyframe of the
    /// producer's lowest active layer, when that is below the consumer's target.
    pub(super) fn request_start_keyframe(&mut self, ck: ConsumerKey, now: Instant) {
        let consumer = &self.consumers[ck];
        let pk = consumer.producer;
        let Some(target) = consumer.selector.target else {
            return;
        };
        let Some(lowest) = self.producers[pk].layers.iter().position(|l| l.active) else {
            return;
        };
        if (lowest as u8) < target {
            self.request_layer_keyframe(pk, lowest as u8, now);
        }
    }

    /// Housekeeping: consumers still waiting for a keyframe to switch ask again.
    pub(super) fn retry_pending_switches(&mut self, now: Instant) {
        let retry: Vec<ConsumerKey> = self
            .consumers
            .iter()
            .filter(|(_, c)| {
                // A consumer that never started (its first ask may have lost the debounce
                // to another subscriber's) retries at every tick the gate may allow.
                let retry = if c.selector.current.is_none() {
                    KEYFRAME_REQUEST_INTERVAL
                } else {
                    KEYFRAME_RETRY
                };
                c.tx_ssrc.is_some()
                    && c.selector.switch_pending()
                    && c.last_keyframe_ask
                        .is_none_or(|t| now.saturating_duration_since(t) >= retry)
            })
            .map(|(k, _)| k)
            .collect();
        for ck in retry {
            self.request_keyframe_for(ck, now);
        }
    }

    /// Ask the publisher for a keyframe on the layer this consumer needs (the switch target,
    /// else the current layer), as far as [`KeyframeRequests`] lets it through.
    ///
    /// Not before the subscriber's DTLS is up: the keyframe would reach nobody and hold the
    /// layer's debounce window, so the ask at connection (`subscriber_connected`) would wait
    /// for it to open. (Subscribing, allocating and retargeting all land here early.)
    pub(super) fn request_keyframe_for(&mut self, ck: ConsumerKey, now: Instant) {
        let consumer = &mut self.consumers[ck];
        if !self.transports[consumer.transport].rtc.is_connected() {
            return;
        }
        let Some(layer) = consumer.selector.target.or(consumer.selector.current) else {
            return;
        };
        consumer.last_keyframe_ask = Some(now);
        let pk = consumer.producer;
        self.request_layer_keyframe(pk, layer, now);
    }

    /// Ask video producer `pk`'s publisher for a keyframe of `layer`: now, or when the
    /// debounce window opens (the publisher's timer fires then, `send_due_keyframe_requests`).
    pub(super) fn request_layer_keyframe(&mut self, pk: ProducerKey, layer: u8, now: Instant) {
        let producer = &mut self.producers[pk];
        if producer.kind != Kind::Video {
            return;
        }
        let Some(rid) = producer.layers.get(layer as usize).map(|l| l.rid) else {
            return;
        };
        let publisher = match producer.origin {
            Origin::Local(key) => key,
            // The publisher is on the producer's home worker, which debounces.
            Origin::Mirror { home, .. } => {
                let producer = producer.id;
                self.relay_to(home, Relay::Keyframe { producer, layer });
                return;
            }
            // Asked over signaling; a deferred ask is dropped (the consumer asks again).
            Origin::Frames => {
                if producer.keyframes.admit(layer, now).is_ok() {
                    self.stats.keyframe_requests += 1;
                    let _ = self.events.send(MediaEvent::KeyframeWanted {
                        transport: producer.publisher,
                        producer: producer.id,
                        layer,
                    });
                }
                return;
            }
        };
        match producer.keyframes.admit(layer, now) {
            Ok(()) => {
                self.send_pli(pk, layer, rid);
                // The PLI leaves on the publisher's next poll: drain it now, not at its timeout.
                self.schedule(publisher, now);
            }
            Err(Some(due)) => {
                tracing::trace!(producer = %producer.id, layer, "keyframe request deferred");
                self.schedule(publisher, due);
            }
            Err(None) => {}
        }
    }

    fn send_pli(&mut self, pk: ProducerKey, layer: u8, rid: Option<str0m::media::Rid>) {
        let producer = &self.producers[pk];
        tracing::trace!(producer = %producer.id, layer, "keyframe requested");
        let mid = producer.mid;
        let Origin::Local(publisher) = producer.origin else {
            return;
        };
        let publisher = &mut self.transports[publisher];
        if let Some(stream) = publisher.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
            self.stats.keyframe_requests += 1;
        }
    }

    /// A publisher's timer fired: send the keyframe requests that were deferred until now.
    pub(super) fn send_due_keyframe_requests(&mut self, key: TransportKey, now: Instant) {
        let producers: Vec<ProducerKey> = self.transports[key]
            .producers_by_mid
            .values()
            .copied()
            .collect();
        for pk in producers {
            for layer in self.producers[pk].keyframes.take_due(now) {
                let Some(rid) = self.producers[pk].layers.get(layer as usize).map(|l| l.rid) else {
                    continue;
                };
                if self.producers[pk].keyframes.admit(layer, now).is_ok() {
                    self.send_pli(pk, layer, rid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_layer_per_interval() {
        let mut gate = KeyframeRequests::default();
        let t0 = Instant::now();
        assert_eq!(gate.admit(0, t0), Ok(()));
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(
            gate.admit(0, soon),
            Err(Some(t0 + KEYFRAME_REQUEST_INTERVAL))
        );
        // Another layer has its own window.
        assert_eq!(gate.admit(2, soon), Ok(()));
        assert_eq!(gate.admit(0, t0 + KEYFRAME_REQUEST_INTERVAL), Ok(()));
        assert_eq!(gate.admit(MAX_LAYERS as u8, t0), Err(None));
    }

    #[test]
    fn a_deferred_request_is_due_when_the_window_opens() {
        let mut gate = KeyframeRequests::default();
        let t0 = Instant::now();
        assert_eq!(gate.admit(1, t0), Ok(()));
        assert!(gate.admit(1, t0 + Duration::from_millis(50)).is_err());
        assert!(gate.take_due(t0 + Duration::from_millis(299)).is_empty());
        assert_eq!(gate.take_due(t0 + KEYFRAME_REQUEST_INTERVAL), vec![1]);
        // Taken once.
        assert!(gate.take_due(t0 + KEYFRAME_REQUEST_INTERVAL).is_empty());
    }
}
