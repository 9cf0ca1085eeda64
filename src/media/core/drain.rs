//! Draining str0m after every input: transmits go to the egress, events become forwarding,
//! producers, keyframe requests and stats; transports that died are removed afterwards.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::bwe::BweKind;
use str0m::media::Direction;
use str0m::net::{Protocol, Transmit};
use str0m::{Event, IceConnectionState, Output};

use super::{Deferred, Egress, Role, TransportKey, WorkerCore};
use crate::media::MediaEvent;

impl WorkerCore {
    pub(super) fn drain(&mut self, key: TransportKey, now: Instant, egress: &mut dyn Egress) {
        loop {
            let Some(transport) = self.transports.get_mut(key) else {
                return;
            };
            let output = match transport.rtc.poll_output() {
                Ok(output) => output,
                Err(e) => {
                    self.dead.push((key, format!("rtc error: {e}")));
                    return;
                }
            };
            match output {
                Output::Transmit(t) => transmit(egress, &t),
                Output::Timeout(at) => {
                    self.schedule(key, at);
                    return;
                }
                Output::Event(event) => self.on_event(key, event, now, egress),
            }
        }
    }

    pub(super) fn on_event(
        &mut self,
        key: TransportKey,
        event: Event,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        match event {
            Event::RtpPacket(packet) => self.forward(key, packet, now, egress),
            Event::MediaAdded(added) => {
                let receiving =
                    matches!(added.direction, Direction::RecvOnly | Direction::SendRecv);
                if self.transports[key].role == Role::Publisher && receiving {
                    self.add_producer(key, added.mid, added.kind);
                }
            }
            Event::KeyframeRequest(req) => {
                if let Some(ck) = self.consumer_by_mid(key, req.mid) {
                    self.deferred
                        .push(Deferred::KeyframeRequest { consumer: ck });
                }
            }
            Event::MediaEgressStats(stats) => {
                if let Some(ck) = self.consumer_by_mid(key, stats.mid) {
                    let consumer = &mut self.consumers[ck];
                    self.stats.nacks_received += stats.nacks.saturating_sub(consumer.nacks_seen);
                    consumer.nacks_seen = consumer.nacks_seen.max(stats.nacks);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc {
                estimate,
                can_probe,
            }) => self.on_estimate(key, estimate, can_probe),
            Event::PeerStats(stats) => {
                self.on_link_stats(key, &stats, now);
                let transport = &mut self.transports[key];
                transport.nominated = stats.selected_candidate_pair.map(|p| p.remote.addr);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.dead.push((key, "ice disconnected".into()));
            }
            Event::Closed => self.dead.push((key, "dtls closed".into())),
            Event::Connected => {
                tracing::debug!(transport = self.transports[key].id.0, "transport connected");
                if self.transports[key].role == Role::Subscriber {
                    self.subscriber_connected(key);
                }
            }
            _ => {}
        }
    }

    /// Work that must not run while a transport is mid-drain: keyframe requests coming from
    /// subscribers, and removal of transports that died.
    pub(super) fn after_drain(&mut self, now: Instant, egress: &mut dyn Egress) {
        while let Some(deferred) = self.deferred.pop() {
            match deferred {
                Deferred::KeyframeRequest { consumer } => {
                    if self.consumers.contains(consumer) {
                        self.request_keyframe_for(consumer, now);
                    }
                }
                Deferred::StartKeyframe { consumer } => {
                    if self.consumers.contains(consumer) {
                        self.request_start_keyframe(consumer, now);
                    }
                }
                Deferred::Allocate { transport } => {
                    if self.transports.contains(transport) {
                        self.allocate(transport, now);
                    }
                }
            }
        }
        while let Some((key, reason)) = self.dead.pop() {
            if let Some(transport) = self.transports.get(key) {
                let id = transport.id;
                tracing::info!(transport = id.0, %reason, "transport closed");
                self.remove_transport(key, now, egress);
                let _ = self.events.send(MediaEvent::TransportClosed {
                    transport: id,
                    reason,
                });
            }
        }
    }
}

/// Hand one of str0m's transmits to the egress of its protocol.
pub(super) fn transmit(egress: &mut dyn Egress, t: &Transmit) {
    send_datagram(egress, t.proto, t.destination, &t.contents);
}

pub(super) fn send_datagram(
    egress: &mut dyn Egress,
    proto: Protocol,
    destination: SocketAddr,
    datagram: &[u8],
) {
    match proto {
        Protocol::Udp => egress.send(destination, datagram),
        // Only passive TCP candidates are offered, so every TCP transmit answers a link the
        // client opened; TLS/SSL-TCP candidates are never created.
        _ => egress.send_tcp(destination, datagram),
    }
}
