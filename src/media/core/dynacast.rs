//! Dynacast: a simulcast layer no subscriber needs is not worth the publisher's uplink. When
//! every consumer of a track is served from lower layers (by preference or bandwidth) for a
//! while, the publisher is told to stop the layer (`layersWanted`: the demo sets
//! `encodings[i].active = false`); as soon as some consumer wants it again, to resume it.
//! The lowest layer is always wanted, so a new subscriber gets a picture at once; a track
//! nobody consumes yet keeps every layer (the first subscriber gets its layer without
//! waiting for the publisher's encoder to restart one).
//!
//! A suspended layer goes idle like any stopped layer, but the allocator keeps counting it
//! at its last measured bitrate, so a subscriber's link can still ask for it back.

use std::time::{Duration, Instant};

use super::{Origin, ProducerKey, Relay, WorkerCore};
use crate::media::simulcast::MAX_LAYERS;
use crate::media::{Kind, MediaEvent};

/// A layer must have been unwanted this long before the publisher is told to stop it
/// (a subscriber flipping layers must not make the publisher's encoder flap).
const SUSPEND_AFTER: Duration = Duration::from_secs(3);

/// Dynacast state of one producer.
#[derive(Debug, Default)]
pub(super) struct Dynacast {
    /// Per layer: since when no consumer has wanted it (`None`: wanted).
    unwanted_since: [Option<Instant>; MAX_LAYERS],
}

impl WorkerCore {
    /// Housekeeping: re-decide every simulcast producer's wanted layers.
    pub(super) fn update_dynacast(&mut self, now: Instant) {
        let keys: Vec<ProducerKey> = self
            .producers
            .iter()
            .filter(|(_, p)| p.kind == Kind::Video && p.layers.len() > 1)
            .map(|(k, _)| k)
            .collect();
        for pk in keys {
            self.update_producer_dynacast(pk, now);
        }
    }

    /// Layers some consumer of `pk` would take if the publisher sent them.
    fn wanted_layers(&self, pk: ProducerKey) -> [bool; MAX_LAYERS] {
        let producer = &self.producers[pk];
        let n = producer.layers.len().min(MAX_LAYERS);
        let mut available = [false; MAX_LAYERS];
        for (i, layer) in producer.layers.iter().enumerate().take(n) {
            available[i] = layer.active || layer.suspended;
        }
        let mut wanted = [false; MAX_LAYERS];
        wanted[0] = true;
        // Mirrors on other workers say what their consumers want.
        let remote = producer.exports.wanted();
        if producer.consumers.is_empty() {
            return remote.unwrap_or([true; MAX_LAYERS]);
        }
        if let Some(remote) = remote {
            for (w, r) in wanted.iter_mut().zip(remote) {
                *w |= r;
            }
        }
        for ck in &producer.consumers {
            let consumer = &self.consumers[*ck];
            if consumer.paused || consumer.tx_ssrc.is_none() {
                continue;
            }
            if let Some(l) = consumer.selector.wanted_layer(&available[..n]) {
                wanted[l as usize] = true;
            }
        }
        wanted
    }

    fn update_producer_dynacast(&mut self, pk: ProducerKey, now: Instant) {
        let wanted = self.wanted_layers(pk);
        let producer = &mut self.producers[pk];
        let mut changed = false;
        for (i, layer) in producer.layers.iter_mut().enumerate().take(MAX_LAYERS) {
            let since = &mut producer.dynacast.unwanted_since[i];
            let suspend = if wanted[i] {
                *since = None;
                false
            } else {
                let at = *since.get_or_insert(now);
                layer.suspended || now.saturating_duration_since(at) >= SUSPEND_AFTER
            };
            if suspend != layer.suspended {
                layer.suspended = suspend;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let mut active = [false; MAX_LAYERS];
        for (a, layer) in active.iter_mut().zip(&producer.layers) {
            *a = !layer.suspended;
        }
        tracing::debug!(producer = %producer.id, ?active, "dynacast");
        match producer.origin {
            // The publisher is on another worker: its home decides, with its own consumers.
            Origin::Mirror { home, .. } => {
                let (producer, from) = (producer.id, self.index);
                self.relay_to(
                    home,
                    Relay::Wants {
                        producer,
                        from,
                        layers: active,
                    },
                );
            }
            Origin::Local(_) | Origin::Frames => {
                let layers = producer
                    .layers
                    .iter()
                    .filter_map(|l| Some((l.rid?.to_string(), !l.suspended)))
                    .collect();
                let _ = self.events.send(MediaEvent::LayersWanted {
                    transport: producer.publisher,
                    producer: producer.id,
                    layers,
                });
            }
        }
    }
}
