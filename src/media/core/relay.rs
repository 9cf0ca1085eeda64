//! One room across the node's workers. A room's publishers live on its home worker; when a
//! subscriber is placed on another worker (the least loaded, see `MediaRouter`), that worker
//! holds a *mirror* of each producer it consumes. The home worker copies every packet of an
//! exported producer (a reference to its buffer) once per mirroring worker — never per
//! subscriber — into a batch that
//! leaves at the end of its wake-up through an in-process channel; the mirror fans it out to
//! its own subscribers exactly as a local producer would (same layer selection, munging,
//! allocator and pacing). What the mirror's consumers need flows back the same way: keyframe
//! requests, and the layers they want (dynacast). A mirror nobody consumes for
//! [`MIRROR_LINGER`] is removed and its export ends.
//!
//! Exports are keyed by the mirror's nonce, so an `Unexport` from a mirror that was already
//! replaced (a subscriber joined just as the last one left) cannot end the new one's feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::PayloadParams;
use str0m::media::{Mid, Pt, Rid};
use str0m::rtp::ExtensionValues;

use super::{Egress, KeyframeRequests, Layer, Origin, Producer, ProducerKey, WorkerCore};
use crate::media::simulcast::MAX_LAYERS;
use crate::media::{Kind, MediaError, ProducerId, TransportId};

/// Batches that may wait in a worker's relay channel; past this, new ones are dropped and
/// counted (the receiving worker is behind; the sender never waits for it).
pub const RELAY_QUEUE: usize = 4096;
/// A mirror without consumers is kept this long (a subscriber re-joining keeps its feed).
pub const MIRROR_LINGER: Duration = Duration::from_secs(5);

/// One RTP packet of a producer as its home worker received it: what the fan-out reads, on
/// the home worker and (cloned into a batch, the payload shared) on every mirroring one.
#[derive(Debug, Clone)]
pub struct ProducerPacket {
    pub producer: ProducerId,
    pub layer: u8,
    /// Extended sequence number on the publisher's stream.
    pub seq: u64,
    pub rtp_timestamp: u32,
    pub received: Instant,
    pub marker: bool,
    /// The publisher's payload type and what it means.
    pub pt: Pt,
    pub params: Option<PayloadParams>,
    /// Header extensions worth passing on (audio level, orientation…).
    pub ext_vals: ExtensionValues,
    /// str0m's own buffer, shared: relaying copies no payload.
    pub payload: Arc<[u8]>,
}

/// What one worker tells another.
#[derive(Debug)]
pub enum Relay {
    /// Home → mirror: packets of one wake-up.
    Packets(Vec<ProducerPacket>),
    /// Home → mirror: the producer is gone (closed, or its publisher left).
    ProducerGone { producer: ProducerId },
    /// Mirror → home: a consumer needs a keyframe of `layer`.
    Keyframe { producer: ProducerId, layer: u8 },
    /// Mirror → home: the layers the mirror's consumers want (dynacast).
    Wants {
        producer: ProducerId,
        from: usize,
        layers: [bool; MAX_LAYERS],
    },
    /// Mirror → home: nobody consumes the mirror any more.
    Unexport {
        producer: ProducerId,
        from: usize,
        nonce: u64,
    },
    /// To a producer's home: feed the mirror `nonce` that worker `to` holds. The router does
    /// this itself for local homes; a node link (`cluster`) is told with this message, and
    /// passes it on to the owner node.
    Export {
        producer: ProducerId,
        to: usize,
        nonce: u64,
    },
}

/// What a worker needs to mirror a producer of another worker.
#[derive(Debug, Clone)]
pub struct MirrorSpec {
    pub producer: ProducerId,
    pub home: usize,
    pub publisher: TransportId,
    pub kind: Kind,
    pub mid: Mid,
    pub rids: Vec<Option<Rid>>,
    pub mime_type: Option<String>,
}

/// On the home worker (or a node link): who mirrors a producer, and what they want of it.
#[derive(Debug, Default)]
pub struct Exports {
    /// (worker, nonce of its mirror).
    pub to: Vec<(usize, u64)>,
    /// Layers each mirroring worker's consumers want.
    pub wants: Vec<(usize, [bool; MAX_LAYERS])>,
}

impl Exports {
    /// Feed `worker`'s mirror `nonce` (a newer nonce replaces the old one).
    pub fn add(&mut self, worker: usize, nonce: u64) {
        match self.to.iter_mut().find(|(w, _)| *w == worker) {
            Some(entry) => entry.1 = nonce,
            None => self.to.push((worker, nonce)),
        }
    }

    /// `worker` says what its mirror's consumers want.
    pub fn set_wants(&mut self, worker: usize, layers: [bool; MAX_LAYERS]) {
        self.wants.retain(|(w, _)| *w != worker);
        self.wants.push((worker, layers));
    }

    /// `worker`'s mirror `nonce` is gone; a late message of an older mirror changes nothing.
    pub fn remove(&mut self, worker: usize, nonce: u64) {
        if self.to.contains(&(worker, nonce)) {
            self.to.retain(|(w, _)| *w != worker);
            self.wants.retain(|(w, _)| *w != worker);
        }
    }

    /// The layers some mirror wants (`None`: no mirror). A mirror that has not said yet
    /// wants every layer, as a track nobody consumes yet keeps all of them.
    pub fn wanted(&self) -> Option<[bool; MAX_LAYERS]> {
        let mut any = None;
        for (worker, _) in &self.to {
            let layers = self
                .wants
                .iter()
                .find(|(w, _)| w == worker)
                .map_or([true; MAX_LAYERS], |(_, l)| *l);
            let w = any.get_or_insert([false; MAX_LAYERS]);
            for (w, l) in w.iter_mut().zip(layers) {
                *w |= l;
            }
        }
        any
    }
}

impl WorkerCore {
    /// Home side: what another worker needs to mirror `producer`.
    pub fn export_spec(&self, producer: ProducerId) -> Result<MirrorSpec, MediaError> {
        let pk = self.producer_key(producer)?;
        let p = &self.producers[pk];
        if let Origin::Mirror { .. } = p.origin {
            return Err(MediaError::ProducerNotFound);
        }
        Ok(MirrorSpec {
            producer,
            home: self.index,
            publisher: p.publisher,
            kind: p.kind,
            mid: p.mid,
            rids: p.layers.iter().map(|l| l.rid).collect(),
            mime_type: p.mime_type.clone(),
        })
    }

    /// Home side: start (or keep) copying `producer`'s packets to `worker`'s mirror `nonce`.
    pub fn export_to(
        &mut self,
        producer: ProducerId,
        worker: usize,
        nonce: u64,
    ) -> Result<(), MediaError> {
        let pk = self.producer_key(producer)?;
        self.producers[pk].exports.add(worker, nonce);
        Ok(())
    }

    /// Mirror side: make (or keep) the mirror of `spec`'s producer; returns its nonce.
    pub fn create_mirror(&mut self, spec: MirrorSpec, now: Instant) -> u64 {
        if let Some(&pk) = self.producer_by_id.get(&spec.producer) {
            let p = &mut self.producers[pk];
            if let Origin::Mirror { nonce, .. } = p.origin {
                p.idle_since = Some(now).filter(|_| p.consumers.is_empty());
                return nonce;
            }
            // The producer is this worker's own: the router never mirrors a producer on its
            // home (`ensure_mirror`), and relayed packets only ever feed mirrors.
            return 0;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        let pk = self.producers.insert(Producer {
            id: spec.producer,
            origin: Origin::Mirror {
                home: spec.home,
                nonce,
            },
            publisher: spec.publisher,
            mid: spec.mid,
            kind: spec.kind,
            layers: spec.rids.into_iter().map(Layer::new).collect(),
            keyframes: KeyframeRequests::default(),
            codec: None,
            codec_pt: None,
            codec_params: None,
            mime_type: spec.mime_type,
            paused: false,
            consumers: Vec::new(),
            dynacast: Default::default(),
            voice: Default::default(),
            exports: Exports::default(),
            idle_since: Some(now),
            frame_consumers: Vec::new(),
        });
        self.producer_by_id.insert(spec.producer, pk);
        nonce
    }

    /// Something another worker sent.
    pub fn on_relay(&mut self, relay: Relay, now: Instant, egress: &mut dyn Egress) {
        match relay {
            Relay::Packets(packets) => {
                for packet in &packets {
                    self.forward_relayed(packet, now, egress);
                }
            }
            Relay::ProducerGone { producer } => {
                let _ = self.close_producer(producer, now, egress);
            }
            Relay::Keyframe { producer, layer } => {
                if let Ok(pk) = self.producer_key(producer) {
                    self.request_layer_keyframe(pk, layer, now);
                }
            }
            Relay::Wants {
                producer,
                from,
                layers,
            } => {
                if let Ok(pk) = self.producer_key(producer) {
                    self.producers[pk].exports.set_wants(from, layers);
                }
            }
            Relay::Unexport {
                producer,
                from,
                nonce,
            } => {
                if let Ok(pk) = self.producer_key(producer) {
                    self.producers[pk].exports.remove(from, nonce);
                }
            }
            Relay::Export {
                producer,
                to,
                nonce,
            } => {
                let _ = self.export_to(producer, to, nonce);
            }
        }
        self.after_drain(now, egress);
    }

    /// Queue a message for worker `to`; it leaves when the wake-up ends ([`Self::take_relay`]).
    pub(super) fn relay_to(&mut self, to: usize, relay: Relay) {
        self.relay_out.push((to, relay));
    }

    /// Home side: copy one packet of `pk` for every worker that mirrors it.
    pub(super) fn export_packet(&mut self, pk: ProducerKey, packet: &ProducerPacket) {
        let exports = &self.producers[pk].exports.to;
        for (worker, _) in exports {
            // A handful of destinations (workers, node links): a linear search is cheapest.
            let batches = &mut self.relay_batches;
            let i = match batches.iter().position(|(w, _)| w == worker) {
                Some(i) => i,
                None => {
                    batches.push((*worker, Vec::new()));
                    batches.len() - 1
                }
            };
            batches[i].1.push(packet.clone());
            self.stats.relay_packets_out += 1;
        }
    }

    /// Everything this wake-up has for other workers, packets batched per worker.
    pub fn take_relay(&mut self) -> Vec<(usize, Relay)> {
        let mut out = std::mem::take(&mut self.relay_out);
        for (worker, batch) in self.relay_batches.iter_mut() {
            if !batch.is_empty() {
                out.push((*worker, Relay::Packets(std::mem::take(batch))));
            }
        }
        // Node links come and go: their slots are made again when they next get packets.
        self.relay_batches
            .retain(|(to, _)| *to < crate::media::links::LINK_BASE);
        out
    }

    /// A batch could not be handed over (the other worker is far behind).
    pub fn relay_dropped(&mut self, relay: &Relay) {
        self.stats.relay_dropped += match relay {
            Relay::Packets(p) => p.len() as u64,
            _ => 1,
        };
    }

    /// Home side: a producer went away; its mirrors must follow.
    pub(super) fn producer_removed(&mut self, removed: &Producer) {
        for key in &removed.frame_consumers {
            self.frame_consumers.try_remove(*key);
        }
        for (worker, _) in &removed.exports.to {
            let producer = removed.id;
            self.relay_to(*worker, Relay::ProducerGone { producer });
        }
    }

    /// Housekeeping: mirrors nobody consumed for a while are removed, and their home told.
    pub(super) fn retire_idle_mirrors(&mut self, now: Instant, egress: &mut dyn Egress) {
        let mut retired = Vec::new();
        for (_, p) in self.producers.iter_mut() {
            let Origin::Mirror { home, nonce } = p.origin else {
                continue;
            };
            if !p.consumers.is_empty() {
                p.idle_since = None;
                continue;
            }
            let since = *p.idle_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= MIRROR_LINGER {
                retired.push((p.id, home, nonce));
            }
        }
        for (producer, home, nonce) in retired {
            let _ = self.close_producer(producer, now, egress);
            let from = self.index;
            self.relay_to(
                home,
                Relay::Unexport {
                    producer,
                    from,
                    nonce,
                },
            );
        }
    }

    /// Mirrors held on this worker (`/status`).
    pub(super) fn mirror_count(&self) -> usize {
        self.producers
            .iter()
            .filter(|(_, p)| matches!(p.origin, Origin::Mirror { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_wants_are_merged_and_a_silent_mirror_wants_everything() {
        let mut exports = Exports::default();
        assert_eq!(exports.wanted(), None, "no mirror");
        exports.to = vec![(1, 7), (2, 9)];
        exports.wants.push((1, [true, false, false]));
        assert_eq!(
            exports.wanted(),
            Some([true; MAX_LAYERS]),
            "worker 2 said nothing"
        );
        exports.wants.push((2, [true, true, false]));
        assert_eq!(exports.wanted(), Some([true, true, false]));
    }
}
