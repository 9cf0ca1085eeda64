//! Teardown: closing producers and transports, and everything that hangs off them. Removed
//! consumers are renegotiated away on SDP subscribers.

use std::time::Instant;

use str0m::Output;

use super::{ConsumerKey, Egress, Origin, SubscriberChange, TransportKey, WorkerCore};
use crate::media::{MediaError, ProducerId, TransportId};

impl WorkerCore {
    /// Close one producer and every consumer of it; its transport lives on.
    pub fn close_producer(
        &mut self,
        producer: ProducerId,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let pk = self
            .producer_by_id
            .remove(&producer)
            .ok_or(MediaError::ProducerNotFound)?;
        let removed = self.producers.remove(pk);
        if let Origin::Local(key) = removed.origin {
            if let Some(publisher) = self.transports.get_mut(key) {
                publisher.producers_by_mid.remove(&removed.mid);
                publisher.ssrc_routes.retain(|_, (p, _)| *p != pk);
            }
        }
        self.producer_removed(&removed);
        let touched = self.drop_consumers(removed.consumers);
        for sub in touched {
            self.negotiate(sub);
            self.drain(sub, now, egress);
        }
        self.after_drain(now, egress);
        Ok(())
    }

    pub fn close_transport(&mut self, id: TransportId, now: Instant, egress: &mut dyn Egress) {
        if let Some(key) = self.by_id.get(&id).copied() {
            self.remove_transport(key, now, egress);
        }
        // A WebTransport publisher's producers hang off its id, not off an `Rtc`.
        self.close_frame_producers(id, now, egress);
        self.close_frame_consumers(id);
    }

    pub(super) fn remove_transport(
        &mut self,
        key: TransportKey,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        let mut transport = self.transports.remove(key);
        // Say goodbye (RTCP BYE, DTLS close_notify) so the peer learns at once rather than at
        // its ICE consent timeout; what str0m queued is bounded, the loop only caps it.
        if transport.rtc.is_connected() && transport.rtc.close().is_ok() {
            for _ in 0..32 {
                match transport.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => super::drain::transmit(egress, &t),
                    Ok(Output::Event(_)) => {}
                    _ => break,
                }
            }
        }
        transport.rtc.disconnect();
        self.by_id.remove(&transport.id);
        self.by_ufrag.remove(&transport.ufrag);
        for addr in &transport.remote_addrs {
            if self.by_addr.get(addr) == Some(&key) {
                self.by_addr.remove(addr);
            }
        }
        // A publisher takes its producers along, and with them every consumer of them.
        let mut touched = Vec::new();
        for (_, pk) in transport.producers_by_mid.drain() {
            let producer = self.producers.remove(pk);
            self.producer_by_id.remove(&producer.id);
            self.producer_removed(&producer);
            touched.extend(self.drop_consumers(producer.consumers));
        }
        // A subscriber's consumers leave their producers' fan-out lists.
        for ck in transport.consumers {
            if let Some(consumer) = self.consumers.try_remove(ck) {
                if let Some(producer) = self.producers.get_mut(consumer.producer) {
                    producer.consumers.retain(|c| *c != ck);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for sub in touched {
            self.negotiate(sub);
            self.drain(sub, now, egress);
        }
    }

    /// Remove consumers of a closed producer; returns the subscriber transports to renegotiate.
    pub(super) fn drop_consumers(&mut self, consumers: Vec<ConsumerKey>) -> Vec<TransportKey> {
        let mut touched = Vec::new();
        for ck in consumers {
            let consumer = self.consumers.remove(ck);
            if let Some(sub) = self.transports.get_mut(consumer.transport) {
                sub.consumers.retain(|c| *c != ck);
                if let Some(mid) = consumer.mid {
                    sub.queued_changes.push(SubscriberChange::Stop(mid));
                } else {
                    sub.queued_changes
                        .retain(|c| !matches!(c, SubscriberChange::Add(a) if *a == ck));
                }
                touched.push(consumer.transport);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }
}
