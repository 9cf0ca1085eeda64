//! The media plane: per-core workers that own UDP sockets and str0m `Rtc`s and forward RTP.
//!
//! This module knows nothing of rooms, users or signaling transports. The layer above talks to
//! it through [`MediaRouter`] (commands with replies) and receives [`MediaEvent`]s.
//!
//! Data path inside a worker (see `core/`): UDP datagram → transport found by remote address
//! (or, on first contact, a STUN request naming its ufrag and signed with its password) →
//! `Rtc::handle_input` → `Event::RtpPacket` → for each consumer of that producer on the same
//! worker: layer decision → id rewrite → `write_rtp` → `poll_output` → `send_to`. No thread hop and no per-packet allocation of our own.

pub mod allocator;
pub mod codec;
pub mod core;
mod egress;
pub mod frames;
pub mod links;
pub mod ortc;
mod router;
pub mod simulcast;
mod speaking;
mod tcp;
pub mod worker;

use std::net::SocketAddr;

use uuid::Uuid;

pub use self::codec::CodecName;
pub use self::core::BweSettings;
pub use self::router::MediaRouter;
pub use self::simulcast::Preference;

/// Identifies a WebRTC transport (one PeerConnection) across the whole server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportId(pub u64);

/// Identifies a producer (one incoming track, all its simulcast layers).
pub type ProducerId = Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    /// RTP clock rate of every codec we forward of this kind (Opus 48 kHz, video 90 kHz).
    pub fn clock_rate(self) -> u32 {
        match self {
            Kind::Audio => 48_000,
            Kind::Video => 90_000,
        }
    }

    pub(crate) fn media_kind(self) -> str0m::media::MediaKind {
        match self {
            Kind::Audio => str0m::media::MediaKind::Audio,
            Kind::Video => str0m::media::MediaKind::Video,
        }
    }

    pub(crate) fn from_media_kind(kind: str0m::media::MediaKind) -> Self {
        if kind == str0m::media::MediaKind::Audio {
            Kind::Audio
        } else {
            Kind::Video
        }
    }
}

/// Settings every worker shares.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub workers: usize,
    /// Address each worker binds; worker `i` binds `listen_ip:(port_min + i)`.
    pub listen_ip: std::net::IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    /// IP announced in ICE candidates (what clients can reach).
    pub announced_ip: std::net::IpAddr,
    pub codecs: Vec<CodecName>,
    pub bwe: BweSettings,
    /// The node's one ICE-TCP port (bound on `listen_ip`, 0 picks a free one); `None` is off.
    pub ice_tcp_port: Option<u16>,
    /// Place subscribers on the least-loaded worker, relaying their room's producers.
    pub spread_rooms: bool,
}

/// A producer created from a publisher offer.
#[derive(Debug, Clone)]
pub struct NewProducer {
    pub producer_id: ProducerId,
    pub mid: String,
    pub kind: Kind,
    /// RIDs in the order announced, lowest layer first. Empty without simulcast.
    pub rids: Vec<String>,
}

/// One m-line of a subscriber offer.
#[derive(Debug, Clone)]
pub struct OfferedTrack {
    pub mid: String,
    pub producer_id: ProducerId,
    pub kind: Kind,
}

/// What workers report without being asked.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// The subscriber transport needs a (re)negotiation: send this offer to its client.
    SubscriberOffer {
        transport: TransportId,
        sdp: String,
        tracks: Vec<OfferedTrack>,
    },
    /// The layer forwarded to a consumer changed (0 = lowest); `None`: paused because its
    /// subscriber's link cannot carry even the lowest layer.
    LayerChanged {
        transport: TransportId,
        producer: ProducerId,
        layer: Option<u8>,
        /// Highest temporal layer forwarded, for streams with temporal layers.
        temporal: Option<u8>,
    },
    /// Dynacast: which simulcast layers (by rid) of a producer some subscriber needs; the
    /// publisher (on `transport`) may stop the others.
    LayersWanted {
        transport: TransportId,
        producer: ProducerId,
        layers: Vec<(String, bool)>,
    },
    /// The send-side estimate of a subscriber transport moved (by a tenth or more; at most
    /// once a second).
    BandwidthEstimate {
        transport: TransportId,
        estimate_bps: u64,
    },
    /// A consumer needs a keyframe of a WebTransport publisher's track (`layer`, 0 = lowest);
    /// the publisher is asked over signaling (debounced per layer).
    KeyframeWanted {
        transport: TransportId,
        producer: ProducerId,
        layer: u8,
    },
    /// A WebTransport publisher's media stream was refused or broke the framing; the stream
    /// was dropped, the session lives on.
    FrameRefused {
        transport: TransportId,
        producer: Option<ProducerId>,
        code: &'static str,
        message: String,
    },
    /// ICE or DTLS ended; the transport was removed from its worker.
    TransportClosed {
        transport: TransportId,
        reason: String,
    },
}

/// Errors a media command can return. `InvalidSdp` is the client's fault, the rest ours.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    /// A short, bounded reason ("SDP could not be parsed: line 2: …"); never parser internals.
    #[error("{0}")]
    InvalidSdp(String),
    #[error("no offer is pending on this transport")]
    NoPendingOffer,
    #[error("transport not found")]
    TransportNotFound,
    #[error("producer not found")]
    ProducerNotFound,
    #[error("media worker unavailable")]
    WorkerGone,
    /// ORTC parameters that are inconsistent or unsafe (the message names the field).
    #[error("{0}")]
    InvalidParameters(String),
    #[error("{0}")]
    UnsupportedCodec(String),
}

/// Counters of one worker, for tests, `/status` and metrics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    pub transports: usize,
    pub producers: usize,
    pub consumers: usize,
    pub rtp_packets_in: u64,
    pub rtp_packets_forwarded: u64,
    pub rtp_bytes_forwarded: u64,
    /// NACKs subscribers sent us (str0m answers them from its send buffer).
    pub nacks_received: u64,
    /// PLIs we sent to publishers.
    pub keyframe_requests: u64,
    pub layer_switches: u64,
    pub datagrams_dropped: u64,
    /// Estimates str0m reported on subscriber transports.
    pub bwe_estimates: u64,
    /// Subscriber estimators restarted because their probing had stalled.
    pub bwe_resets: u64,
    /// Allocation changes by reason (see `allocator::Reason`).
    pub allocations_initial: u64,
    pub allocations_congestion: u64,
    pub allocations_recovered: u64,
    pub allocations_preference: u64,
    /// Video consumers paused now because their link is too thin (a gauge).
    pub paused_for_bandwidth: usize,
    /// Producers of other workers mirrored here for this worker's subscribers (a gauge).
    pub mirrors: usize,
    /// Packets copied to other workers' mirrors, received from them, and dropped because the
    /// receiving worker's relay queue was full.
    pub relay_packets_out: u64,
    pub relay_packets_in: u64,
    pub relay_dropped: u64,
    /// Frames WebTransport publishers sent, and their media streams refused.
    pub frames_in: u64,
    pub frame_streams_refused: u64,
    /// Frames queued for WebTransport subscribers, and dropped because one was behind.
    pub frames_out: u64,
    pub frames_dropped: u64,
}

impl std::iter::Sum for WorkerStats {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(WorkerStats::default(), |mut total, s| {
            total += s;
            total
        })
    }
}

impl std::ops::AddAssign for WorkerStats {
    fn add_assign(&mut self, o: Self) {
        self.transports += o.transports;
        self.producers += o.producers;
        self.consumers += o.consumers;
        self.rtp_packets_in += o.rtp_packets_in;
        self.rtp_packets_forwarded += o.rtp_packets_forwarded;
        self.rtp_bytes_forwarded += o.rtp_bytes_forwarded;
        self.nacks_received += o.nacks_received;
        self.keyframe_requests += o.keyframe_requests;
        self.layer_switches += o.layer_switches;
        self.datagrams_dropped += o.datagrams_dropped;
        self.bwe_estimates += o.bwe_estimates;
        self.bwe_resets += o.bwe_resets;
        self.allocations_initial += o.allocations_initial;
        self.allocations_congestion += o.allocations_congestion;
        self.allocations_recovered += o.allocations_recovered;
        self.allocations_preference += o.allocations_preference;
        self.paused_for_bandwidth += o.paused_for_bandwidth;
        self.mirrors += o.mirrors;
        self.relay_packets_out += o.relay_packets_out;
        self.relay_packets_in += o.relay_packets_in;
        self.relay_dropped += o.relay_dropped;
        self.frames_in += o.frames_in;
        self.frame_streams_refused += o.frame_streams_refused;
        self.frames_out += o.frames_out;
        self.frames_dropped += o.frames_dropped;
    }
}

/// ICE-TCP at a glance: where it listens, links open and opened, connections ended by reason.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IceTcpStats {
    pub addr: Option<SocketAddr>,
    pub links: u64,
    /// Connections tied to a transport since start.
    pub opened: u64,
    pub closed: std::collections::BTreeMap<&'static str, u64>,
}
