//! What the room reports: notices to participants (the session layer turns them into wire
//! notifications) and events for observers (audit log, webhooks).

use std::time::Duration;

use crate::media::{Kind, ProducerId};

/// A producer as others see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerView {
    pub producer_id: ProducerId,
    pub participant_id: String,
    pub kind: Kind,
    /// Simulcast layers the publisher announced (empty for audio and single-layer video).
    pub layers: Vec<String>,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantView {
    pub participant_id: String,
    pub user_id: String,
    pub display_name: String,
    pub producers: Vec<ProducerView>,
}

/// One m-line of a server-pushed subscriber offer: which producer it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedTrackView {
    pub mid: String,
    pub producer_id: ProducerId,
    pub participant_id: String,
    pub kind: Kind,
}

/// Something one participant must be told.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    ParticipantJoined(ParticipantView),
    ParticipantLeft {
        participant_id: String,
    },
    NewProducer(ProducerView),
    ProducerClosed {
        producer_id: ProducerId,
        participant_id: String,
    },
    ProducerPaused {
        producer_id: ProducerId,
        participant_id: String,
        paused: bool,
    },
    /// An ORTC consumer of this participant ended (its producer went away).
    ConsumerClosed {
        consumer_id: String,
        producer_id: ProducerId,
    },
    /// The server renegotiated this participant's subscriber transport (SDP flow).
    SubscriberOffer {
        sdp: String,
        tracks: Vec<OfferedTrackView>,
    },
    /// The simulcast layer forwarded to this participant changed (SDP flow); `None`: the
    /// track is paused because the participant's link cannot carry its lowest layer.
    LayerChanged {
        producer_id: ProducerId,
        layer: Option<u8>,
        /// Highest temporal layer forwarded (streams with temporal layers only).
        temporal_layer: Option<u8>,
    },
    /// The same for an ORTC consumer (`None` as mediasoup's `layerschange` with null).
    ConsumerLayersChanged {
        consumer_id: String,
        spatial_layer: Option<u8>,
        temporal_layer: Option<u8>,
    },
    /// The server's estimate of what this participant's downlink carries moved.
    BandwidthEstimate {
        estimate_bps: u64,
    },
    /// Dynacast, to a publisher: which of its simulcast layers (rid, wanted) some subscriber
    /// needs; it may stop sending the others.
    LayersWanted {
        producer_id: ProducerId,
        layers: Vec<(String, bool)>,
    },
    /// To a WebTransport publisher: send a keyframe on this track's layer.
    KeyframeRequested {
        producer_id: ProducerId,
        layer: u8,
        rid: Option<String>,
    },
    /// To a WebTransport publisher: one of its media streams was refused (`code` is one of
    /// the framing's codes, e.g. `INVALID_FRAME`).
    FrameError {
        producer_id: Option<ProducerId>,
        code: &'static str,
        message: String,
    },
    Kicked {
        room_id: String,
        reason: String,
    },
    RoomClosed {
        room_id: String,
    },
}

/// How a consumer came to be, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumerOrigin {
    /// Subscribed by the server (SDP flow).
    Automatic,
    /// An ORTC `consume`, with the consumer id handed out.
    Consume { consumer_id: String },
    /// A WHEP player.
    Whep,
}

/// Something that happened in a room, for the audit log and webhooks.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    RoomCreated {
        room_id: String,
        name: String,
        max_participants: u32,
    },
    RoomClosed {
        room_id: String,
        lifetime: Duration,
    },
    ParticipantJoined {
        room_id: String,
        participant_id: String,
        user_id: String,
        display_name: String,
    },
    ParticipantLeft {
        room_id: String,
        participant_id: String,
        user_id: String,
        stayed: Duration,
    },
    ProducerCreated {
        room_id: String,
        participant_id: String,
        producer_id: ProducerId,
        kind: Kind,
        layers: Vec<String>,
    },
    ProducerClosed {
        room_id: String,
        participant_id: String,
        producer_id: ProducerId,
        /// Why, when it did not end with its participant.
        reason: Option<String>,
    },
    ConsumerCreated {
        room_id: String,
        participant_id: String,
        producer_id: ProducerId,
        origin: ConsumerOrigin,
    },
    ConsumerClosed {
        room_id: String,
        participant_id: String,
        producer_id: ProducerId,
    },
}
