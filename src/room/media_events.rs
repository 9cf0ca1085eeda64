//! What media workers report without being asked, routed to the participant it concerns.

use super::events::{Notice, OfferedTrackView, RoomEvent};
use super::model::{Dialect, Room};
use super::Rooms;
use crate::media::{MediaEvent, TransportId};

impl Rooms {
    /// Route a worker's event. Returns the (room, participant) sessions that ended with it
    /// (WHIP/WHEP sessions whose transport died or whose producer went): the caller makes
    /// them leave.
    pub fn on_media_event(&self, event: MediaEvent) -> Vec<(String, String)> {
        let transport = match &event {
            MediaEvent::SubscriberOffer { transport, .. }
            | MediaEvent::LayerChanged { transport, .. }
            | MediaEvent::LayersWanted { transport, .. }
            | MediaEvent::BandwidthEstimate { transport, .. }
            | MediaEvent::KeyframeWanted { transport, .. }
            | MediaEvent::FrameRefused { transport, .. }
            | MediaEvent::TransportClosed { transport, .. } => *transport,
        };
        let mut state = self.lock();
        let Some((room_id, participant_id)) = state.transports.get(&transport).cloned() else {
            return Vec::new();
        };
        let Some(room) = state.rooms.get_mut(&room_id) else {
            return Vec::new();
        };
        let ended = |ids: Vec<String>| {
            ids.into_iter()
                .map(|p| (room_id.clone(), p))
                .collect::<Vec<_>>()
        };
        match event {
            MediaEvent::TransportClosed { reason, .. } => {
                ended(self.transport_closed(room, &room_id, &participant_id, transport, &reason))
            }
            MediaEvent::SubscriberOffer { sdp, tracks, .. } => {
                let tracks = tracks
                    .into_iter()
                    .map(|t| OfferedTrackView {
                        mid: t.mid,
                        producer_id: t.producer_id,
                        participant_id: room.owner_of(t.producer_id).unwrap_or_default().into(),
                        kind: t.kind,
                    })
                    .collect();
                if let Some(p) = room.participants.get(&participant_id) {
                    p.notifier.notify(Notice::SubscriberOffer { sdp, tracks });
                }
                Vec::new()
            }
            MediaEvent::LayersWanted {
                producer, layers, ..
            } => {
                if let Some(p) = room.participants.get(&participant_id) {
                    p.notifier.notify(Notice::LayersWanted {
                        producer_id: producer,
                        layers,
                    });
                }
                Vec::new()
            }
            MediaEvent::KeyframeWanted {
                producer, layer, ..
            } => {
                if let Some(p) = room.participants.get(&participant_id) {
                    let rid = p
                        .producers
                        .iter()
                        .find(|v| v.producer_id == producer)
                        .and_then(|v| v.layers.get(usize::from(layer)).cloned());
                    p.notifier.notify(Notice::KeyframeRequested {
                        producer_id: producer,
                        layer,
                        rid,
                    });
                }
                Vec::new()
            }
            MediaEvent::FrameRefused {
                producer,
                code,
                message,
                ..
            } => {
                if let Some(p) = room.participants.get(&participant_id) {
                    p.notifier.notify(Notice::FrameError {
                        producer_id: producer,
                        code,
                        message,
                    });
                }
                Vec::new()
            }
            MediaEvent::BandwidthEstimate { estimate_bps, .. } => {
                if let Some(p) = room.participants.get_mut(&participant_id) {
                    p.downlink.estimate_bps = Some(estimate_bps);
                    p.notifier
                        .notify(Notice::BandwidthEstimate { estimate_bps });
                }
                Vec::new()
            }
            MediaEvent::LayerChanged {
                producer,
                layer,
                temporal,
                ..
            } => {
                let Some(p) = room.participants.get_mut(&participant_id) else {
                    return Vec::new();
                };
                p.downlink.paused.retain(|paused| *paused != producer);
                if layer.is_none() {
                    p.downlink.paused.push(producer);
                }
                if p.dialect == Dialect::Ortc {
                    let consumer = p.ortc.consumers.iter().find(|(_, pr)| **pr == producer);
                    if let Some((consumer_id, _)) = consumer {
                        p.notifier.notify(Notice::ConsumerLayersChanged {
                            consumer_id: consumer_id.clone(),
                            spatial_layer: layer,
                            temporal_layer: temporal,
                        });
                    }
                } else {
                    p.notifier.notify(Notice::LayerChanged {
                        producer_id: producer,
                        layer,
                        temporal_layer: temporal,
                    });
                }
                Vec::new()
            }
        }
    }

    /// ICE or DTLS ended on `transport`. Returns the participants whose session ended.
    fn transport_closed(
        &self,
        room: &mut Room,
        room_id: &str,
        participant_id: &str,
        transport: TransportId,
        reason: &str,
    ) -> Vec<String> {
        tracing::info!(room = %room_id, participant = %participant_id, %reason, "media transport closed");
        let Some(p) = room.participants.get_mut(participant_id) else {
            return Vec::new();
        };
        // A WHIP/WHEP session is its one transport: when that dies, the session ends.
        if p.dialect.is_http() {
            return vec![participant_id.to_string()];
        }
        // A dead publisher transport took its producers with it on the worker.
        if p.publisher != transport {
            return Vec::new();
        }
        let closed = std::mem::take(&mut p.producers);
        let mut ended = Vec::new();
        for producer in closed {
            self.emit(RoomEvent::ProducerClosed {
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                producer_id: producer.producer_id,
                reason: Some(reason.to_string()),
            });
            ended.extend(room.announce_producer_closed(
                producer.producer_id,
                participant_id,
                Some(participant_id),
            ));
        }
        ended
    }
}
