//! One worker's state, sans I/O: fed datagrams, commands and timeouts; writes datagrams to an
//! [`Egress`]. The worker loop (`worker.rs`) owns the socket; benches drive this directly.
//!
//! One type, [`WorkerCore`], spread over files in the order a packet meets them:
//! `demux` (datagram → transport) → `drain` (str0m output and events) → `forward` (RTP to
//! consumers) → `keyframes` (layer targets and PLIs); `timers` drive str0m's clocks. The
//! signaling side changes the state through `sdp` (offer/answer flow), `ortc`
//! (mediasoup-style), `whep`, `control` (pause, preference) and `teardown`.

mod arena;
mod bandwidth;
mod control;
mod demux;
mod drain;
mod dynacast;
mod forward;
mod frames;
mod frames_out;
mod keyframes;
mod link_estimate;
mod ortc;
mod relay;
mod sdp;
mod sdp_error;
mod teardown;
mod timers;
mod whep;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpPendingOffer;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Mid, Pt, Rid};
use str0m::net::Protocol;
use str0m::rtp::Ssrc;
use str0m::{Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedSender;

use self::arena::Arena;
use self::arena::{ConsumerKey, ProducerKey, TransportKey};
pub use self::bandwidth::BweSettings;
use self::bandwidth::LayerMeter;
use self::dynacast::Dynacast;
use self::frames_out::FrameConsumer;
pub use self::frames_out::FrameConsumerInfo;
use self::keyframes::KeyframeRequests;
use self::link_estimate::SubscriberBwe;
pub use self::ortc::{router_capabilities, ConsumerCreated};
pub use self::relay::{Exports, MirrorSpec, ProducerPacket, Relay, RELAY_QUEUE};
use super::allocator::TrackState;
use super::codec::{apply_codecs, CodecName};
use super::frames::depacketize::Depacketizer;
use super::frames::packetize::Packetizer;
use super::ortc::{PublishedLine, RemoteIdentity, RtpCodecParameters};
use super::simulcast::{LayerSelector, Munger, Preference};
use super::{Kind, MediaError, MediaEvent, NewProducer, ProducerId, TransportId, WorkerStats};
use crate::media::speaking::VoiceActivity;

/// Where the core writes what str0m transmits.
pub trait Egress {
    /// A UDP datagram from this worker's socket.
    fn send(&mut self, destination: SocketAddr, payload: &[u8]);
    /// One RFC 4571 frame on the ICE-TCP connection whose remote end is `destination`.
    fn send_tcp(&mut self, destination: SocketAddr, payload: &[u8]);
    /// Room for the next datagram, for the forwarding path to protect a packet straight into
    /// (no copy afterwards); [`Egress::commit`] sends it. `None` (the default): the core
    /// writes into a buffer of its own and calls `send`/`send_tcp`.
    fn slot(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// Send the first `len` bytes of the room [`Egress::slot`] gave, over `proto`.
    fn commit(&mut self, _proto: Protocol, _destination: SocketAddr, _len: usize) {}
}

/// Room for one forwarded SRTP datagram (a WebRTC packet stays under ~1200 bytes).
const DATAGRAM_ROOM: usize = 1500;

/// A layer with no packet for this long counts as stopped (publisher dropped it).
const LAYER_IDLE: Duration = Duration::from_millis(1500);
const FAR_FUTURE: Duration = Duration::from_secs(3600);
/// A consumer's priority until its subscriber sets one (mediasoup's default).
pub const DEFAULT_PRIORITY: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

struct Transport {
    id: TransportId,
    role: Role,
    /// Boxed: an `Rtc` is ≈ 11 KB and the arena grows by doubling, so inline it kept up to
    /// half as many empty 11 KB slots again and copied every `Rtc` on each growth.
    rtc: Box<Rtc>,
    ufrag: String,
    /// Remote addresses that proved the ICE password, oldest first (bounded, see `demux`).
    remote_addrs: Vec<SocketAddr>,
    /// The remote address of str0m's nominated pair, from its periodic stats; never evicted.
    nominated: Option<SocketAddr>,
    /// Deadline we last scheduled in the timer heap for this transport.
    next_timeout: Instant,
    /// Publisher: producer by mid, and a cache from incoming SSRC to (producer, layer).
    producers_by_mid: HashMap<Mid, ProducerKey>,
    ssrc_routes: HashMap<Ssrc, (ProducerKey, u8)>,
    /// Subscriber: consumers on this transport, and SDP changes waiting for the next offer.
    consumers: Vec<ConsumerKey>,
    queued_changes: Vec<SubscriberChange>,
    pending_offer: Option<SdpPendingOffer>,
    negotiation: Negotiation,
    /// Subscriber with the estimator on: its estimate and allocation targets.
    bwe: Option<SubscriberBwe>,
}

/// Who drives SDP on a transport.
enum Negotiation {
    /// The web demo's flow: the client offers to publish; we push offers to subscribers.
    Sdp,
    /// The client offered once and cannot take a re-offer (WHEP): never renegotiate.
    ClientOffer,
    /// mediasoup-style ORTC: we synthesize the client's side of every SDP exchange.
    Ortc(Box<OrtcState>),
}

struct OrtcState {
    /// The browser's ICE ufrag is never sent in ORTC; learned from its first STUN request.
    remote_ufrag: String,
    /// Never learned either; ICE-lite only needs it for requests it never sends.
    remote_pwd: String,
    /// `sha-256 AB:..` from `connectWebRtcTransport` (a placeholder until then).
    remote_fingerprint: String,
    published: Vec<PublishedLine>,
    /// Codecs promised to the client per consumer mid: what its own answer keeps.
    consumer_codecs: HashMap<String, Vec<RtpCodecParameters>>,
    sdp_version: u64,
}

impl OrtcState {
    fn remote(&self) -> RemoteIdentity<'_> {
        RemoteIdentity {
            ice_ufrag: &self.remote_ufrag,
            ice_pwd: &self.remote_pwd,
            fingerprint: &self.remote_fingerprint,
        }
    }
}

enum SubscriberChange {
    Add(ConsumerKey),
    Stop(Mid),
}

struct Layer {
    rid: Option<Rid>,
    active: bool,
    last_packet: Option<Instant>,
    meter: LayerMeter,
    /// Dynacast told the publisher to stop it (see `dynacast`).
    suspended: bool,
    /// Frame producers (WebTransport publishers): turns the layer's frames into RTP.
    packetizer: Option<Packetizer>,
    /// WebRTC producers with WebTransport subscribers: rebuilds the layer's frames from RTP.
    depacketizer: Option<Depacketizer>,
}

impl Layer {
    fn new(rid: Option<Rid>) -> Self {
        Layer {
            rid,
            active: false,
            last_packet: None,
            meter: LayerMeter::default(),
            suspended: false,
            packetizer: None,
            depacketizer: None,
        }
    }
}

/// Where a producer's packets come from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// A publisher transport on this worker.
    Local(TransportKey),
    /// A producer of worker `home`, relayed here (`relay.rs`).
    Mirror { home: usize, nonce: u64 },
    /// Frames a WebTransport publisher sends on its own streams (`frames.rs`).
    Frames,
}

struct Producer {
    id: ProducerId,
    origin: Origin,
    /// The publisher's transport (maybe on another worker): groups one participant's tracks.
    publisher: TransportId,
    mid: Mid,
    kind: Kind,
    layers: Vec<Layer>,
    /// PLIs sent to the publisher for this track, debounced per layer.
    keyframes: KeyframeRequests,
    /// Codec of the last packet seen (resolved from its payload type).
    codec: Option<Codec>,
    codec_pt: Option<Pt>,
    /// What `codec_pt` means on the publisher's side (subscribers map it to theirs).
    codec_params: Option<PayloadParams>,
    /// Mime type declared by an ORTC `publish` (SDP producers learn theirs from packets).
    mime_type: Option<String>,
    paused: bool,
    consumers: Vec<ConsumerKey>,
    dynacast: Dynacast,
    /// Audio: whether its publisher is speaking (the allocator serves speakers' video first).
    voice: VoiceActivity,
    /// Home side: the workers that mirror this producer.
    exports: Exports,
    /// Mirror side: since when nobody consumes it.
    idle_since: Option<Instant>,
    /// WebTransport subscribers of it (`frames_out.rs`), by key.
    frame_consumers: Vec<usize>,
}

struct Consumer {
    producer: ProducerKey,
    transport: TransportKey,
    stream_id: String,
    /// Assigned when the add is applied to an SDP offer.
    mid: Option<Mid>,
    /// Known once the subscriber's answer is applied; forwarding starts then.
    tx_ssrc: Option<Ssrc>,
    /// Payload type mapping (publisher's PT → subscriber's PT), resolved lazily per codec.
    pt_map: Option<(Pt, Pt)>,
    selector: LayerSelector,
    munger: Munger,
    last_keyframe_ask: Option<Instant>,
    /// Cumulative NACK count str0m last reported for this consumer's stream.
    nacks_seen: u64,
    paused: bool,
    /// The bandwidth allocator's memory of this track.
    allocation: TrackState,
    /// Set by the subscriber (`setConsumerPriority`, mediasoup's 1–255, default 1): when its
    /// link is short, higher ones are served first.
    priority: u8,
}

/// Effects of subscriber events that touch publishers; applied after the current drain.
enum Deferred {
    KeyframeRequest {
        consumer: ConsumerKey,
    },
    /// A new consumer's fast-start keyframe on the lowest layer (`keyframes.rs`).
    StartKeyframe {
        consumer: ConsumerKey,
    },
    /// The subscriber's estimate changed enough to re-allocate now.
    Allocate {
        transport: TransportKey,
    },
}

pub struct WorkerCore {
    rtc_template: RtcConfig,
    bwe: BweSettings,
    candidate_addr: SocketAddr,
    /// The node's passive ICE-TCP candidate (announced IP + ICE_TCP_PORT), when enabled.
    tcp_candidate_addr: Option<SocketAddr>,
    transports: Arena<TransportKey, Transport>,
    producers: Arena<ProducerKey, Producer>,
    consumers: Arena<ConsumerKey, Consumer>,
    by_id: HashMap<TransportId, TransportKey>,
    by_addr: HashMap<SocketAddr, TransportKey>,
    by_ufrag: HashMap<String, TransportKey>,
    producer_by_id: HashMap<ProducerId, ProducerKey>,
    timers: BinaryHeap<Reverse<(Instant, TransportKey)>>,
    events: UnboundedSender<MediaEvent>,
    deferred: Vec<Deferred>,
    /// Producers created while draining a publisher after its offer; returned to the caller.
    new_producers: Vec<NewProducer>,
    dead: Vec<(TransportKey, String)>,
    stats: WorkerStats,
    /// This worker's index; other workers' messages name it.
    index: usize,
    next_nonce: u64,
    /// Messages for other workers, and packet batches per worker, sent when a wake-up ends.
    relay_out: Vec<(usize, Relay)>,
    /// Packets of this wake-up, per destination (worker or node link).
    relay_batches: Vec<(usize, Vec<ProducerPacket>)>,
    /// Publishers speaking at the last housekeeping tick (`bandwidth.rs`).
    speakers: Vec<TransportId>,
    /// Open media streams of WebTransport publishers: (producer, layer) and the publisher.
    frame_streams: HashMap<u64, ((ProducerId, u8), TransportId)>,
    /// WebTransport subscribers' consumers.
    frame_consumers: slab::Slab<FrameConsumer>,
    /// Where a forwarded packet is protected when the egress offers no slot of its own.
    datagram_buf: Box<[u8; DATAGRAM_ROOM]>,
}

impl WorkerCore {
    /// `candidate_addr` is the address clients send to (announced IP + this worker's port).
    pub fn new(
        candidate_addr: SocketAddr,
        codecs: &[CodecName],
        bwe: BweSettings,
        events: UnboundedSender<MediaEvent>,
    ) -> Self {
        // One DTLS certificate per worker: generating one per transport costs a keygen each.
        // Stats twice a second give us NACK counts per consumer for metrics, and each
        // subscriber's loss, bytes sent, round trip and GCC estimate (link_estimate.rs).
        let mut template = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_stats_interval(Some(link_estimate::STATS_INTERVAL));
        if let Some(cert) = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
        {
            template = template.set_dtls_cert(cert);
        }
        WorkerCore {
            rtc_template: apply_codecs(template, codecs),
            bwe,
            candidate_addr,
            tcp_candidate_addr: None,
            transports: Arena::new(),
            producers: Arena::new(),
            consumers: Arena::new(),
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            producer_by_id: HashMap::new(),
            timers: BinaryHeap::new(),
            events,
            deferred: Vec::new(),
            new_producers: Vec::new(),
            dead: Vec::new(),
            stats: WorkerStats::default(),
            index: 0,
            next_nonce: 0,
            relay_out: Vec::new(),
            relay_batches: Vec::new(),
            speakers: Vec::new(),
            frame_streams: HashMap::new(),
            frame_consumers: slab::Slab::new(),
            datagram_buf: Box::new([0; DATAGRAM_ROOM]),
        }
    }

    /// This worker's index among the node's workers (for relaying between them).
    pub fn with_index(mut self, index: usize) -> Self {
        self.index = index;
        self
    }

    /// Also offer a passive ICE-TCP candidate at `addr` on every transport made from now on.
    pub fn with_tcp_candidate(mut self, addr: SocketAddr) -> Self {
        self.tcp_candidate_addr = Some(addr);
        self
    }

    /// Consumers on this worker: its share of the node's fan-out (placement reads it).
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// Whether transport `id` still exists (ICE-TCP links of a closed transport are dropped).
    pub fn has_transport(&self, id: TransportId) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn stats(&self) -> WorkerStats {
        let mirrors = self.mirror_count();
        WorkerStats {
            transports: self.transports.len(),
            producers: self.producers.len() - mirrors,
            mirrors,
            consumers: self.consumers.len(),
            paused_for_bandwidth: self.paused_for_bandwidth(),
            ..self.stats
        }
    }

    /// A new consumer of producer `pk` on subscriber transport `key`, in both fan-out lists.
    fn attach_consumer(
        &mut self,
        pk: ProducerKey,
        key: TransportKey,
        stream_id: String,
        mid: Option<Mid>,
        tx_ssrc: Option<Ssrc>,
        paused: bool,
    ) -> ConsumerKey {
        let kind = self.producers[pk].kind;
        let ck = self.consumers.insert(Consumer {
            producer: pk,
            transport: key,
            stream_id,
            mid,
            tx_ssrc,
            pt_map: None,
            selector: LayerSelector::new(Preference::Auto, kind == Kind::Video),
            munger: Munger::new(kind.clock_rate()),
            last_keyframe_ask: None,
            nacks_seen: 0,
            paused,
            allocation: TrackState::default(),
            priority: DEFAULT_PRIORITY,
        });
        self.producers[pk].consumers.push(ck);
        self.transports[key].consumers.push(ck);
        ck
    }

    fn producer_key(&self, producer: ProducerId) -> Result<ProducerKey, MediaError> {
        self.producer_by_id
            .get(&producer)
            .copied()
            .ok_or(MediaError::ProducerNotFound)
    }

    fn subscriber_key(&self, id: TransportId) -> Result<TransportKey, MediaError> {
        match self.by_id.get(&id) {
            Some(key) if self.transports[*key].role == Role::Subscriber => Ok(*key),
            _ => Err(MediaError::TransportNotFound),
        }
    }

    /// The consumer of `pk` on subscriber transport `key`, if any.
    fn find_consumer(&self, key: TransportKey, pk: ProducerKey) -> Option<ConsumerKey> {
        self.transports[key]
            .consumers
            .iter()
            .copied()
            .find(|ck| self.consumers[*ck].producer == pk)
    }

    fn consumer_of(
        &self,
        id: TransportId,
        producer: ProducerId,
    ) -> Result<ConsumerKey, MediaError> {
        let key = self.subscriber_key(id)?;
        let pk = self.producer_key(producer)?;
        self.find_consumer(key, pk)
            .ok_or(MediaError::ProducerNotFound)
    }

    fn consumer_by_mid(&self, key: TransportKey, mid: Mid) -> Option<ConsumerKey> {
        self.transports[key]
            .consumers
            .iter()
            .copied()
            .find(|ck| self.consumers[*ck].mid == Some(mid))
    }

    /// The consumer's SSRC on its subscriber's `Rtc`, once the m-line is negotiated; its
    /// resend cache is set to [`RESEND_WINDOW`] on the way.
    fn tx_ssrc(&mut self, key: TransportKey, mid: Mid) -> Option<Ssrc> {
        let mut api = self.transports[key].rtc.direct_api();
        let stream = api.stream_tx_by_mid(mid, None)?;
        keep_resends(stream);
        Some(stream.ssrc())
    }
}

/// How long str0m keeps a forwarded packet to answer NACKs. str0m's default is 3 s (up to
/// 1,000 video packets), which is most of a subscriber's memory: each cached packet costs
/// ≈ 430 bytes of bookkeeping (the payload itself is shared with the publisher's). A NACK
/// comes one round trip after the loss: 750 ms serves RTTs up to ~600 ms (a retry up to
/// ~350 ms).
pub(super) const RESEND_WINDOW: Duration = Duration::from_millis(750);
/// The packet cap of that cache. str0m grows it by a third whenever a packet would overwrite
/// one younger than the window, and never shrinks it: a 1.5 Mbit/s layer (≈ 170 packets/s,
/// 128 in the window) went 152 → 202 → 268 slots (115 KB) on its keyframe bursts. At 160
/// such a burst overwrites the oldest packets instead (≈ 650 ms old, past most NACKs), the
/// cache stays at 69 KB, and a 4 Mbit/s screen share still keeps ≈ 430 ms.
const RESEND_MAX_PACKETS: usize = 160;

/// Apply [`RESEND_WINDOW`] to a consumer's stream (setting it empties the cache).
pub(super) fn keep_resends(stream: &mut str0m::rtp::StreamTx) {
    stream.set_rtx_cache(RESEND_MAX_PACKETS, RESEND_WINDOW, Some(0.15));
}

#[cfg(test)]
mod tests;
