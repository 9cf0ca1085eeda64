//! Payloads of replies and notifications (server → client), converted from the room's
//! views. Field names are camelCase, as in the seed.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::OutboundEnvelope;
use crate::media::Kind;
use crate::room::{Notice, ParticipantView, ProducerView, RoomSummary};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantInfo {
    pub participant_id: String,
    pub user_id: String,
    pub display_name: String,
    pub producers: Vec<ProducerInfo>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducerInfo {
    pub producer_id: String,
    pub participant_id: String,
    pub kind: MediaKindName,
    /// Simulcast layers the publisher announced (empty for audio and single-layer video).
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKindName {
    Audio,
    Video,
}

/// One m-line of a `subscriberOffer`: which producer the transceiver with `mid` carries.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberTrack {
    pub mid: String,
    pub producer_id: String,
    pub participant_id: String,
    pub kind: MediaKindName,
}

/// `createRoomResponse`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    pub room_id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_participants: u32,
    /// With several nodes: where the room lives (join there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_url: Option<String>,
}

impl From<RoomSummary> for RoomInfo {
    fn from(r: RoomSummary) -> Self {
        RoomInfo {
            room_id: r.room_id,
            name: r.name,
            description: r.description,
            max_participants: r.max_participants,
            node_url: r.node_url,
        }
    }
}

impl From<&ProducerView> for ProducerInfo {
    fn from(p: &ProducerView) -> Self {
        ProducerInfo {
            producer_id: p.producer_id.to_string(),
            participant_id: p.participant_id.clone(),
            kind: p.kind.into(),
            layers: p.layers.clone(),
        }
    }
}

impl From<&ParticipantView> for ParticipantInfo {
    fn from(p: &ParticipantView) -> Self {
        ParticipantInfo {
            participant_id: p.participant_id.clone(),
            user_id: p.user_id.clone(),
            display_name: p.display_name.clone(),
            producers: p.producers.iter().map(ProducerInfo::from).collect(),
        }
    }
}

impl From<Kind> for MediaKindName {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Audio => MediaKindName::Audio,
            Kind::Video => MediaKindName::Video,
        }
    }
}

impl From<MediaKindName> for Kind {
    fn from(kind: MediaKindName) -> Self {
        match kind {
            MediaKindName::Audio => Kind::Audio,
            MediaKindName::Video => Kind::Video,
        }
    }
}

/// Wire name of a layer index (publishers announce layers lowest first).
pub fn layer_name(layer: u8) -> &'static str {
    match layer {
        0 => "low",
        1 => "medium",
        _ => "high",
    }
}

/// The notification a room notice becomes: its wire name and payload.
pub fn notification(notice: Notice) -> OutboundEnvelope {
    let (name, data) = match notice {
        Notice::ParticipantJoined(p) => (
            "participantJoined",
            json!({ "participant": ParticipantInfo::from(&p) }),
        ),
        Notice::ParticipantLeft { participant_id } => (
            "participantLeft",
            json!({ "participantId": participant_id }),
        ),
        Notice::NewProducer(p) => {
            let info = ProducerInfo::from(&p);
            // Top-level fields for mediasoup-style clients, `producer` for ours.
            (
                "newProducer",
                json!({
                    "producerId": info.producer_id,
                    "participantId": info.participant_id,
                    "kind": info.kind,
                    "producer": info,
                }),
            )
        }
        Notice::ProducerClosed {
            producer_id,
            participant_id,
        } => (
            "producerClosed",
            json!({ "producerId": producer_id.to_string(), "participantId": participant_id }),
        ),
        Notice::ProducerPaused {
            producer_id,
            participant_id,
            paused,
        } => (
            if paused {
                "producerPaused"
            } else {
                "producerResumed"
            },
            json!({ "producerId": producer_id.to_string(), "participantId": participant_id }),
        ),
        Notice::ConsumerClosed {
            consumer_id,
            producer_id,
        } => (
            "consumerClosed",
            json!({ "consumerId": consumer_id, "producerId": producer_id.to_string() }),
        ),
        Notice::SubscriberOffer { sdp, tracks } => {
            let tracks: Vec<SubscriberTrack> = tracks
                .into_iter()
                .map(|t| SubscriberTrack {
                    mid: t.mid,
                    producer_id: t.producer_id.to_string(),
                    participant_id: t.participant_id,
                    kind: t.kind.into(),
                })
                .collect();
            ("subscriberOffer", json!({ "sdp": sdp, "tracks": tracks }))
        }
        Notice::LayerChanged {
            producer_id,
            layer,
            temporal_layer,
        } => (
            "layerChanged",
            match layer {
                Some(layer) => json!({
                    "producerId": producer_id.to_string(),
                    "layer": layer_name(layer),
                    "temporalLayer": temporal_layer,
                    "paused": false,
                }),
                None => json!({
                    "producerId": producer_id.to_string(),
                    "layer": null,
                    "paused": true,
                    "reason": "bandwidth",
                }),
            },
        ),
        // mediasoup's `layerschange`: null layers while nothing is forwarded.
        Notice::ConsumerLayersChanged {
            consumer_id,
            spatial_layer,
            temporal_layer,
        } => (
            "consumerLayersChanged",
            match spatial_layer {
                Some(spatial) => json!({
                    "consumerId": consumer_id,
                    "spatialLayer": spatial,
                    "temporalLayer": temporal_layer,
                }),
                None => json!({
                    "consumerId": consumer_id,
                    "spatialLayer": null,
                    "temporalLayer": null,
                    "paused": true,
                    "reason": "bandwidth",
                }),
            },
        ),
        Notice::BandwidthEstimate { estimate_bps } => {
            ("bandwidthEstimate", json!({ "estimateBps": estimate_bps }))
        }
        Notice::LayersWanted {
            producer_id,
            layers,
        } => {
            let layers: Vec<serde_json::Value> = layers
                .into_iter()
                .map(|(rid, active)| json!({ "rid": rid, "active": active }))
                .collect();
            (
                "layersWanted",
                json!({ "producerId": producer_id.to_string(), "layers": layers }),
            )
        }
        Notice::KeyframeRequested {
            producer_id,
            layer,
            rid,
        } => (
            "keyFrameRequest",
            json!({ "producerId": producer_id.to_string(), "layer": layer, "rid": rid }),
        ),
        Notice::FrameError {
            producer_id,
            code,
            message,
        } => (
            "frameError",
            json!({
                "producerId": producer_id.map(|p| p.to_string()),
                "code": code,
                "message": message,
            }),
        ),
        Notice::Kicked { room_id, reason } => {
            ("kicked", json!({ "roomId": room_id, "reason": reason }))
        }
        Notice::RoomClosed { room_id } => ("roomClosed", json!({ "roomId": room_id })),
    };
    OutboundEnvelope::notification(name, data)
}
