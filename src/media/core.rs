//! One worker's state, sans I/O: fed datagrams, commands and timeouts; writes datagrams to an
//! [`Egress`]. The worker loop (`worker.rs`) owns the socket; benches drive this directly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use slab::Slab;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::ice::StunMessage;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

use super::codec::{apply_codecs, inspect_video_payload, CodecName};
use super::ortc::{
    self, OrtcError, PublishedLine, RemoteIdentity, RtpCapabilities, RtpCodecParameters,
    RtpParameters, TransportParameters,
};
use super::simulcast::{Decision, LayerSelector, Munger, PacketIds, Preference, MAX_LAYERS};
use super::{
    Kind, MediaError, MediaEvent, NewProducer, OfferedTrack, ProducerId, TransportId, WorkerStats,
};

/// Where the core writes outgoing datagrams.
pub trait Egress {
    fn send(&mut self, destination: SocketAddr, payload: &[u8]);
}

/// A layer with no packet for this long counts as stopped (publisher dropped it).
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// At most one keyframe request per producer layer in this window (PLI storms hurt everyone).
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);
/// While a switch is pending and no keyframe came, ask again this often.
const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);
const FAR_FUTURE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

struct Transport {
    id: TransportId,
    role: Role,
    rtc: Rtc,
    ufrag: String,
    remote_addrs: Vec<SocketAddr>,
    /// Deadline we last scheduled in the timer heap for this transport.
    next_timeout: Instant,
    /// Publisher: producer by mid, and a cache from incoming SSRC to (producer, layer).
    producers_by_mid: HashMap<Mid, usize>,
    ssrc_routes: HashMap<Ssrc, (usize, u8)>,
    /// Subscriber: consumers on this transport, and SDP changes waiting for the next offer.
    consumers: Vec<usize>,
    queued_changes: Vec<SubscriberChange>,
    pending_offer: Option<SdpPendingOffer>,
    negotiation: Negotiation,
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
    Add(usize),
    Stop(Mid),
}

struct Layer {
    rid: Option<Rid>,
    active: bool,
    last_packet: Option<Instant>,
    last_keyframe_request: Option<Instant>,
}

struct Producer {
    id: ProducerId,
    transport: usize,
    mid: Mid,
    kind: Kind,
    layers: Vec<Layer>,
    /// Codec of the last packet seen (resolved from its payload type).
    codec: Option<Codec>,
    codec_pt: Option<Pt>,
    /// Mime type declared by an ORTC `publish` (SDP producers learn theirs from packets).
    mime_type: Option<String>,
    paused: bool,
    consumers: Vec<usize>,
}

struct Consumer {
    producer: usize,
    transport: usize,
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
}

/// Effects of subscriber events that touch publishers; applied after the current drain.
enum Deferred {
    KeyframeRequest { consumer: usize },
}

pub struct WorkerCore {
    rtc_template: RtcConfig,
    candidate_addr: SocketAddr,
    transports: Slab<Transport>,
    producers: Slab<Producer>,
    consumers: Slab<Consumer>,
    by_id: HashMap<TransportId, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    by_ufrag: HashMap<String, usize>,
    producer_by_id: HashMap<ProducerId, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    events: UnboundedSender<MediaEvent>,
    deferred: Vec<Deferred>,
    /// Producers created while draining a publisher after its offer; returned to the caller.
    new_producers: Vec<NewProducer>,
    dead: Vec<(usize, String)>,
    stats: WorkerStats,
}

impl WorkerCore {
    /// `candidate_addr` is the address clients send to (announced IP + this worker's port).
    pub fn new(
        candidate_addr: SocketAddr,
        codecs: &[CodecName],
        events: UnboundedSender<MediaEvent>,
    ) -> Self {
        // One DTLS certificate per worker: generating one per transport costs a keygen each.
        // Stats once a second give us NACK counts per consumer for metrics.
        let mut template = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_stats_interval(Some(Duration::from_secs(1)));
        if let Some(cert) = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
        {
            template = template.set_dtls_cert(cert);
        }
        WorkerCore {
            rtc_template: apply_codecs(template, codecs),
            candidate_addr,
            transports: Slab::new(),
            producers: Slab::new(),
            consumers: Slab::new(),
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
        }
    }

    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            transports: self.transports.len(),
            producers: self.producers.len(),
            consumers: self.consumers.len(),
            ..self.stats
        }
    }

    // ------------------------------------------------------------------------------------
    // Network input: the hot path starts here.

    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        data: &[u8],
        egress: &mut dyn Egress,
    ) {
        let Some(key) = self.route(source, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        // STUN's first two bits are zero; only ORTC transports need to look inside.
        if data.first().is_some_and(|b| *b < 2) {
            self.learn_remote_ufrag(key, data);
        }
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.candidate_addr, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let transport = &mut self.transports[key];
        if let Err(e) = transport.rtc.handle_input(Input::Receive(now, receive)) {
            tracing::debug!(transport = transport.id.0, error = %e, "rejected datagram");
            self.stats.datagrams_dropped += 1;
            return;
        }
        if !transport.remote_addrs.contains(&source) {
            transport.remote_addrs.push(source);
            self.by_addr.insert(source, key);
        }
        self.drain(key, now, egress);
        self.after_drain(now, egress);
    }

    /// ORTC clients never send their ICE ufrag; take it from their binding requests (again
    /// after an ICE restart) so str0m accepts them.
    fn learn_remote_ufrag(&mut self, key: usize, data: &[u8]) {
        let transport = &mut self.transports[key];
        let Negotiation::Ortc(state) = &mut transport.negotiation else {
            return;
        };
        let Ok(stun) = StunMessage::parse(data) else {
            return;
        };
        let Some((_, remote)) = stun.split_username().filter(|_| stun.is_binding_request()) else {
            return;
        };
        if remote != state.remote_ufrag && !remote.is_empty() && remote.len() <= 256 {
            state.remote_ufrag = remote.to_string();
            transport
                .rtc
                .direct_api()
                .set_remote_ice_credentials(IceCreds {
                    ufrag: state.remote_ufrag.clone(),
                    pass: state.remote_pwd.clone(),
                });
        }
    }

    /// O(1) demux: a known remote address, else the local ufrag in a STUN binding request.
    fn route(&self, source: SocketAddr, data: &[u8]) -> Option<usize> {
        if let Some(key) = self.by_addr.get(&source) {
            return Some(*key);
        }
        let stun = StunMessage::parse(data).ok()?;
        if !stun.is_binding_request() {
            return None;
        }
        let (local_ufrag, _remote) = stun.split_username()?;
        self.by_ufrag.get(local_ufrag).copied()
    }

    // ------------------------------------------------------------------------------------
    // Timers.

    /// When the worker loop must call [`WorkerCore::handle_timeouts`] next.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        self.timers
            .peek()
            .map(|Reverse((at, _))| *at)
            .unwrap_or(now + Duration::from_millis(100))
    }

    pub fn handle_timeouts(&mut self, now: Instant, egress: &mut dyn Egress) {
        while let Some(Reverse((at, key))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            // Entries are never removed from the heap; skip those superseded or orphaned.
            let Some(transport) = self.transports.get_mut(key) else {
                continue;
            };
            if transport.next_timeout != at {
                continue;
            }
            transport.next_timeout = now + FAR_FUTURE;
            if let Err(e) = transport.rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(transport = transport.id.0, error = %e, "timeout input failed");
            }
            self.drain(key, now, egress);
        }
        self.after_drain(now, egress);
    }

    fn schedule(&mut self, key: usize, at: Instant) {
        let transport = &mut self.transports[key];
        // Only an earlier deadline needs a heap entry; a later one is found when the earlier
        // entry fires and str0m reports the real next timeout.
        if at < transport.next_timeout {
            transport.next_timeout = at;
            self.timers.push(Reverse((at, key)));
        }
    }

    /// Slow housekeeping, called a few times a second: idle layers, keyframe retries.
    pub fn tick(&mut self, now: Instant, egress: &mut dyn Egress) {
        let mut changed = Vec::new();
        for (pk, producer) in self.producers.iter_mut() {
            let mut any = false;
            for layer in producer.layers.iter_mut() {
                let idle = layer
                    .last_packet
                    .is_none_or(|t| now.saturating_duration_since(t) > LAYER_IDLE);
                if layer.active && idle {
                    layer.active = false;
                    any = true;
                }
            }
            if any {
                changed.push(pk);
            }
        }
        for pk in changed {
            self.retarget_consumers(pk, now);
        }
        let retry: Vec<usize> = self
            .consumers
            .iter()
            .filter(|(_, c)| {
                c.tx_ssrc.is_some()
                    && c.selector.switch_pending()
                    && c.last_keyframe_ask
                        .is_none_or(|t| now.saturating_duration_since(t) >= KEYFRAME_RETRY)
            })
            .map(|(k, _)| k)
            .collect();
        for ck in retry {
            self.request_keyframe_for(ck, now);
        }
        self.after_drain(now, egress);
    }

    // ------------------------------------------------------------------------------------
    // Draining str0m output.

    fn drain(&mut self, key: usize, now: Instant, egress: &mut dyn Egress) {
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
                Output::Transmit(t) => egress.send(t.destination, &t.contents),
                Output::Timeout(at) => {
                    self.schedule(key, at);
                    return;
                }
                Output::Event(event) => self.on_event(key, event, now, egress),
            }
        }
    }

    fn on_event(&mut self, key: usize, event: Event, now: Instant, egress: &mut dyn Egress) {
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
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.dead.push((key, "ice disconnected".into()));
            }
            Event::Closed => self.dead.push((key, "dtls closed".into())),
            Event::Connected => {
                tracing::debug!(transport = self.transports[key].id.0, "transport connected");
            }
            _ => {}
        }
    }

    /// Work that must not run while a transport is mid-drain: keyframe requests coming from
    /// subscribers, and removal of transports that died.
    fn after_drain(&mut self, now: Instant, egress: &mut dyn Egress) {
        while let Some(deferred) = self.deferred.pop() {
            match deferred {
                Deferred::KeyframeRequest { consumer } => {
                    if self.consumers.contains(consumer) {
                        self.request_keyframe_for(consumer, now);
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

    // ------------------------------------------------------------------------------------
    // Forwarding.

    fn forward(&mut self, key: usize, packet: RtpPacket, now: Instant, egress: &mut dyn Egress) {
        self.stats.rtp_packets_in += 1;
        let Some((pk, layer)) = self.resolve_route(key, &packet) else {
            return;
        };
        let producer = &mut self.producers[pk];
        let Some(layer_state) = producer.layers.get_mut(layer as usize) else {
            return;
        };
        layer_state.last_packet = Some(now);
        let became_active = !layer_state.active;
        layer_state.active = true;
        if producer.codec_pt != Some(packet.header.payload_type) {
            let pt = packet.header.payload_type;
            producer.codec = self.transports[key]
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.pt() == pt)
                .map(|p| p.spec().codec);
            producer.codec_pt = Some(pt);
        }
        if became_active {
            self.retarget_consumers(pk, now);
        }

        let producer = &self.producers[pk];
        if producer.paused {
            return;
        }
        let video = producer.kind == Kind::Video;
        let info = if video {
            inspect_video_payload(producer.codec, &packet.payload)
        } else {
            inspect_video_payload(None, &[])
        };
        let ids = PacketIds {
            seq: *packet.seq_no,
            timestamp: packet.header.timestamp,
            picture_id: info.picture_id,
            tl0_pic_idx: info.tl0_pic_idx,
        };
        let ext_vals = forwardable_extensions(&packet.header.ext_vals);

        for i in 0..self.producers[pk].consumers.len() {
            let ck = self.producers[pk].consumers[i];
            let consumer = &mut self.consumers[ck];
            let Some(ssrc) = consumer.tx_ssrc else {
                continue;
            };
            if consumer.paused {
                continue;
            }
            match consumer.selector.on_packet(layer, info.starts_keyframe) {
                Decision::Drop => continue,
                Decision::Forward => {}
                Decision::SwitchAndForward => {
                    consumer.munger.switch_layer(ids, now);
                    self.stats.layer_switches += 1;
                    let _ = self.events.send(MediaEvent::LayerChanged {
                        transport: self.transports[consumer.transport].id,
                        producer: self.producers[pk].id,
                        layer,
                    });
                }
            }
            let Some(out) = consumer.munger.rewrite(ids, now) else {
                continue;
            };
            let sub_key = consumer.transport;
            let in_pt = packet.header.payload_type;
            let out_pt = match consumer.pt_map {
                Some((from, to)) if from == in_pt => to,
                _ => {
                    let Some(to) = map_payload_type(
                        &self.transports[key].rtc,
                        &self.transports[sub_key].rtc,
                        in_pt,
                    ) else {
                        continue;
                    };
                    self.consumers[ck].pt_map = Some((in_pt, to));
                    to
                }
            };
            let mut write = RtpWrite::new(
                out_pt,
                SeqNo::from(out.seq),
                out.timestamp,
                packet.timestamp,
                info.payload_for(&packet.payload, out.picture_id, out.tl0_pic_idx),
            )
            .marker(packet.header.marker)
            .ext_vals(ext_vals.clone())
            .nackable(video);
            if let (Some(descriptor), Some(pid)) = (info.vp8, out.picture_id) {
                let mut patch = descriptor.patch().picture_id(pid);
                if let Some(tl0) = out.tl0_pic_idx {
                    patch = patch.tl0_pic_idx(tl0);
                }
                if let Ok(patch) = patch.build() {
                    write = write.vp8_patch(patch);
                }
            }
            let subscriber = &mut self.transports[sub_key];
            if let Some(stream) = subscriber.rtc.direct_api().stream_tx(&ssrc) {
                stream.write_rtp(write);
                self.stats.rtp_packets_forwarded += 1;
                self.stats.rtp_bytes_forwarded += packet.payload.len() as u64;
            }
            self.drain(sub_key, now, egress);
        }
    }

    /// Find (producer, layer) of an incoming packet; cached per SSRC after the first lookup.
    fn resolve_route(&mut self, key: usize, packet: &RtpPacket) -> Option<(usize, u8)> {
        let ssrc = packet.header.ssrc;
        let transport = &mut self.transports[key];
        if let Some(route) = transport.ssrc_routes.get(&ssrc) {
            return Some(*route);
        }
        let (mid, rid) = {
            let mut api = transport.rtc.direct_api();
            let stream = api.stream_rx(&ssrc)?;
            (stream.mid(), stream.rid())
        };
        let pk = *transport.producers_by_mid.get(&mid)?;
        let producer = &self.producers[pk];
        let layer = match rid {
            None => 0,
            Some(rid) => producer.layers.iter().position(|l| l.rid == Some(rid))? as u8,
        };
        transport.ssrc_routes.insert(ssrc, (pk, layer));
        Some((pk, layer))
    }

    // ------------------------------------------------------------------------------------
    // Layer selection and keyframes.

    fn active_layers(&self, pk: usize) -> ([bool; MAX_LAYERS], usize) {
        let producer = &self.producers[pk];
        let mut active = [false; MAX_LAYERS];
        for (i, layer) in producer.layers.iter().enumerate().take(MAX_LAYERS) {
            active[i] = layer.active;
        }
        (active, producer.layers.len().min(MAX_LAYERS))
    }

    fn retarget_consumers(&mut self, pk: usize, now: Instant) {
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

    fn retarget_consumer(&mut self, ck: usize, now: Instant) {
        let (active, n) = self.active_layers(self.consumers[ck].producer);
        if self.consumers[ck]
            .selector
            .update_target(&active[..n])
            .is_some()
        {
            self.request_keyframe_for(ck, now);
        }
    }

    /// Ask the publisher for a keyframe on the layer this consumer needs (the switch target,
    /// else the current layer), at most once per `KEYFRAME_REQUEST_INTERVAL` per layer.
    fn request_keyframe_for(&mut self, ck: usize, now: Instant) {
        let consumer = &mut self.consumers[ck];
        let Some(layer) = consumer.selector.target.or(consumer.selector.current) else {
            return;
        };
        consumer.last_keyframe_ask = Some(now);
        let producer = &mut self.producers[consumer.producer];
        if producer.kind != Kind::Video {
            return;
        }
        let Some(layer_state) = producer.layers.get_mut(layer as usize) else {
            return;
        };
        if layer_state
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        layer_state.last_keyframe_request = Some(now);
        let (mid, rid) = (producer.mid, layer_state.rid);
        let publisher = &mut self.transports[producer.transport];
        if let Some(stream) = publisher.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
            self.stats.keyframe_requests += 1;
        }
        // The PLI leaves on the publisher's next poll; drain it now rather than at its timeout.
        self.timers.push(Reverse((now, producer.transport)));
        publisher.next_timeout = now;
    }

    // ------------------------------------------------------------------------------------
    // Commands from the signaling side.

    fn new_rtc(&mut self, id: TransportId, role: Role, now: Instant) -> usize {
        let mut rtc = self.rtc_template.clone().build(now);
        if let Ok(candidate) = Candidate::host(self.candidate_addr, "udp") {
            rtc.add_local_candidate(candidate);
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let key = self.transports.insert(Transport {
            id,
            role,
            rtc,
            ufrag: ufrag.clone(),
            remote_addrs: Vec::new(),
            next_timeout: now + FAR_FUTURE,
            producers_by_mid: HashMap::new(),
            ssrc_routes: HashMap::new(),
            consumers: Vec::new(),
            queued_changes: Vec::new(),
            pending_offer: None,
            negotiation: Negotiation::Sdp,
        });
        self.by_id.insert(id, key);
        self.by_ufrag.insert(ufrag, key);
        key
    }

    pub fn publisher_offer(
        &mut self,
        id: TransportId,
        sdp: &str,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(String, Vec<NewProducer>), MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
        let key = match self.by_id.get(&id) {
            Some(key)
                if self.transports[*key].role == Role::Publisher
                    && matches!(self.transports[*key].negotiation, Negotiation::Sdp) =>
            {
                *key
            }
            Some(_) => return Err(MediaError::TransportNotFound),
            None => self.new_rtc(id, Role::Publisher, now),
        };
        let offered_mids: Vec<Mid> = offer.media_lines.iter().map(|m| m.mid()).collect();
        let answer = self.accept_offer(key, offer, now, egress)?;
        self.new_producers.clear();
        // str0m emits MediaAdded only later (once polled past the handshake), but the reply
        // must list the producers: read the negotiated media directly. M-lines the answer
        // rejected (no codec in common) produce nothing.
        let rejected = rejected_mids(&answer);
        for mid in offered_mids.into_iter().filter(|m| !rejected.contains(m)) {
            let media = self.transports[key]
                .rtc
                .media(mid)
                .map(|m| (m.kind(), m.direction()));
            if let Some((kind, Direction::RecvOnly | Direction::SendRecv)) = media {
                self.add_producer(key, mid, kind);
            }
        }
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        Ok((
            answer.to_sdp_string(),
            std::mem::take(&mut self.new_producers),
        ))
    }

    /// str0m may panic on input it considers inconsistent; a bad offer must only fail the
    /// request, never take down the worker and every room on it.
    fn accept_offer(
        &mut self,
        key: usize,
        offer: SdpOffer,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<SdpAnswer, MediaError> {
        let rtc = &mut self.transports[key].rtc;
        match catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer))) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(MediaError::InvalidSdp(e.to_string())),
            Err(_) => {
                self.dead.push((key, "panic while applying offer".into()));
                self.after_drain(now, egress);
                Err(MediaError::InvalidSdp("offer could not be applied".into()))
            }
        }
    }

    fn add_producer(&mut self, key: usize, mid: Mid, kind: MediaKind) {
        let transport = &self.transports[key];
        if transport.producers_by_mid.contains_key(&mid) {
            return;
        }
        let rids: Vec<Rid> = match transport.rtc.media(mid).map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) => rids.iter().take(MAX_LAYERS).copied().collect(),
            _ => Vec::new(),
        };
        let layers: Vec<Layer> = if rids.is_empty() {
            vec![Layer::new(None)]
        } else {
            rids.iter().map(|r| Layer::new(Some(*r))).collect()
        };
        let kind = Kind::from_media_kind(kind);
        let id = Uuid::new_v4();
        let pk = self.producers.insert(Producer {
            id,
            transport: key,
            mid,
            kind,
            layers,
            codec: None,
            codec_pt: None,
            mime_type: None,
            paused: false,
            consumers: Vec::new(),
        });
        self.producer_by_id.insert(id, pk);
        self.transports[key].producers_by_mid.insert(mid, pk);
        self.new_producers.push(NewProducer {
            producer_id: id,
            mid: mid.to_string(),
            kind,
            rids: rids.iter().map(|r| r.to_string()).collect(),
        });
    }

    pub fn create_subscriber(&mut self, id: TransportId, now: Instant) {
        if !self.by_id.contains_key(&id) {
            self.new_rtc(id, Role::Subscriber, now);
        }
    }

    pub fn subscribe(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        stream_id: String,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let key = self.subscriber_key(id)?;
        let pk = *self
            .producer_by_id
            .get(&producer)
            .ok_or(MediaError::ProducerNotFound)?;
        let already = self.transports[key]
            .consumers
            .iter()
            .any(|ck| self.consumers[*ck].producer == pk);
        if already {
            return Ok(());
        }
        let ck = self.attach_consumer(pk, key, stream_id, None, None, false);
        self.transports[key]
            .queued_changes
            .push(SubscriberChange::Add(ck));
        self.retarget_consumer(ck, now);
        self.negotiate(key);
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        Ok(())
    }

    fn subscriber_key(&self, id: TransportId) -> Result<usize, MediaError> {
        match self.by_id.get(&id) {
            Some(key) if self.transports[*key].role == Role::Subscriber => Ok(*key),
            _ => Err(MediaError::TransportNotFound),
        }
    }

    /// If no offer is outstanding, turn queued changes into one offer and announce it.
    fn negotiate(&mut self, key: usize) {
        let transport = &mut self.transports[key];
        if !matches!(transport.negotiation, Negotiation::Sdp) {
            // ORTC and WHEP clients renegotiate on their own; a removed consumer simply
            // stops being fed.
            transport.queued_changes.clear();
            return;
        }
        if transport.pending_offer.is_some() || transport.queued_changes.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut transport.queued_changes);
        let mut api = transport.rtc.sdp_api();
        for change in changes {
            match change {
                SubscriberChange::Add(ck) => {
                    let Some(consumer) = self.consumers.get_mut(ck) else {
                        continue;
                    };
                    let producer = &self.producers[consumer.producer];
                    let mid = api.add_media(
                        producer.kind.media_kind(),
                        Direction::SendOnly,
                        Some(consumer.stream_id.clone()),
                        Some(producer.id.to_string()),
                        None,
                    );
                    consumer.mid = Some(mid);
                }
                // Inactive, not stopped: a stopped m-line leaves the BUNDLE group, and when it
                // was the last one the browser tears down the whole transport (DTLS close),
                // so the subscriber could never receive again.
                SubscriberChange::Stop(mid) => api.set_direction(mid, Direction::Inactive),
            }
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        transport.pending_offer = Some(pending);
        let tracks = transport
            .consumers
            .iter()
            .filter_map(|ck| {
                let c = &self.consumers[*ck];
                let p = &self.producers[c.producer];
                Some(OfferedTrack {
                    mid: c.mid?.to_string(),
                    producer_id: p.id,
                    kind: p.kind,
                })
            })
            .collect();
        let _ = self.events.send(MediaEvent::SubscriberOffer {
            transport: transport.id,
            sdp: offer.to_sdp_string(),
            tracks,
        });
    }

    pub fn subscriber_answer(
        &mut self,
        id: TransportId,
        sdp: &str,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let key = self.subscriber_key(id)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
        let transport = &mut self.transports[key];
        let pending = transport
            .pending_offer
            .take()
            .ok_or(MediaError::NoPendingOffer)?;
        let rtc = &mut transport.rtc;
        let result = catch_unwind(AssertUnwindSafe(|| {
            rtc.sdp_api().accept_answer(pending, answer)
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The offer is consumed; the transport cannot continue negotiating.
                self.dead
                    .push((key, format!("subscriber answer rejected: {e}")));
                self.after_drain(now, egress);
                return Err(MediaError::InvalidSdp(e.to_string()));
            }
            Err(_) => {
                self.dead.push((key, "panic while applying answer".into()));
                self.after_drain(now, egress);
                return Err(MediaError::InvalidSdp("answer could not be applied".into()));
            }
        }
        // Newly negotiated consumers learn their SSRC and start with a fresh keyframe.
        let consumers = self.transports[key].consumers.clone();
        for ck in consumers {
            let Some(mid) = self.consumers[ck].mid else {
                continue;
            };
            if self.consumers[ck].tx_ssrc.is_some() {
                continue;
            }
            let ssrc = self.transports[key]
                .rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc());
            self.consumers[ck].tx_ssrc = ssrc;
            if ssrc.is_some() {
                self.start_at_keyframe(ck, now);
            }
        }
        self.negotiate(key);
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        Ok(())
    }

    pub fn set_preference(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        preference: Preference,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let ck = self.consumer_of(id, producer)?;
        self.consumers[ck].selector.preference = preference;
        self.retarget_consumer(ck, now);
        self.after_drain(now, egress);
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // ORTC (mediasoup-client) and WHEP.

    /// A transport whose SDP we synthesize from ORTC parameters. Answers at once with the
    /// ICE and DTLS parameters the client needs; nothing is negotiated yet.
    pub fn create_ortc_transport(
        &mut self,
        id: TransportId,
        send: bool,
        now: Instant,
    ) -> Result<TransportParameters, MediaError> {
        if self.by_id.contains_key(&id) {
            return Err(MediaError::TransportNotFound);
        }
        let role = if send {
            Role::Publisher
        } else {
            Role::Subscriber
        };
        let key = self.new_rtc(id, role, now);
        // Placeholders keep str0m's SDP parser satisfied until the real values are known.
        let placeholder_fingerprint = format!("sha-256 {}", ["00"; 32].join(":"));
        self.transports[key].negotiation = Negotiation::Ortc(Box::new(OrtcState {
            remote_ufrag: "ortcpending".into(),
            remote_pwd: random_ice_password(),
            remote_fingerprint: placeholder_fingerprint,
            published: Vec::new(),
            consumer_codecs: HashMap::new(),
            sdp_version: 1,
        }));
        Ok(self.transport_parameters(key))
    }

    fn transport_parameters(&mut self, key: usize) -> TransportParameters {
        let addr = self.candidate_addr;
        let api = self.transports[key].rtc.direct_api();
        let creds = api.local_ice_credentials();
        let fingerprint = api.local_dtls_fingerprint().to_string();
        let (algorithm, value) = fingerprint.split_once(' ').unwrap_or(("sha-256", ""));
        TransportParameters {
            ice_parameters: ice_parameters(&creds),
            ice_candidates: vec![serde_json::json!({
                "foundation": "udpcandidate",
                "priority": 1_076_302_079u32,
                "ip": addr.ip().to_string(),
                "address": addr.ip().to_string(),
                "port": addr.port(),
                "type": "host",
                "protocol": "udp",
            })],
            dtls_parameters: serde_json::json!({
                "role": "auto",
                "fingerprints": [{ "algorithm": algorithm, "value": value }],
            }),
        }
    }

    fn ortc_key(&self, id: TransportId, role: Role) -> Result<usize, MediaError> {
        match self.by_id.get(&id) {
            Some(key)
                if self.transports[*key].role == role
                    && matches!(self.transports[*key].negotiation, Negotiation::Ortc(_)) =>
            {
                Ok(*key)
            }
            _ => Err(MediaError::TransportNotFound),
        }
    }

    /// `connectWebRtcTransport`: the client's DTLS fingerprint and role. Starts DTLS right
    /// away so the handshake does not wait for the first `publish`.
    pub fn connect_ortc(
        &mut self,
        id: TransportId,
        role: &str,
        algorithm: &str,
        value: &str,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let key = self
            .ortc_key(id, Role::Publisher)
            .or_else(|_| self.ortc_key(id, Role::Subscriber))?;
        let algorithm = algorithm.to_ascii_lowercase();
        if algorithm != "sha-256" && algorithm != "sha-1" {
            return Err(MediaError::InvalidParameters(format!(
                "dtlsParameters: fingerprint algorithm `{algorithm}` is not supported (sha-256, sha-1)"
            )));
        }
        let text = format!("{algorithm} {value}");
        let fingerprint: str0m::config::Fingerprint = text
            .parse()
            .map_err(|e| MediaError::InvalidParameters(format!("dtlsParameters: {e}")))?;
        let expected_len = if algorithm == "sha-256" { 32 } else { 20 };
        if fingerprint.bytes.len() != expected_len {
            return Err(MediaError::InvalidParameters(format!(
                "dtlsParameters: a {algorithm} fingerprint has {expected_len} bytes"
            )));
        }
        // The client's role decides ours; mediasoup-client is always the DTLS client.
        let we_are_client = match role {
            "client" | "auto" => false,
            "server" => true,
            other => {
                return Err(MediaError::InvalidParameters(format!(
                    "dtlsParameters.role `{other}` is not client, server or auto"
                )))
            }
        };
        let transport = &mut self.transports[key];
        if let Negotiation::Ortc(state) = &mut transport.negotiation {
            state.remote_fingerprint = fingerprint.to_string();
        }
        let mut api = transport.rtc.direct_api();
        api.set_remote_fingerprint(fingerprint);
        api.start_dtls(we_are_client)
            .map_err(|e| MediaError::InvalidParameters(format!("dtls: {e}")))?;
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        Ok(())
    }

    /// `publish`: the offer the browser would have sent, now including this track.
    pub fn ortc_publish(
        &mut self,
        id: TransportId,
        kind: Kind,
        mut params: RtpParameters,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<NewProducer, MediaError> {
        let key = self.ortc_key(id, Role::Publisher)?;
        ortc::validate_producer(kind, &params).map_err(MediaError::from)?;
        let Negotiation::Ortc(state) = &mut self.transports[key].negotiation else {
            return Err(MediaError::TransportNotFound);
        };
        let mid = params
            .mid
            .clone()
            .unwrap_or_else(|| state.published.len().to_string());
        if state.published.iter().any(|l| l.mid == mid) {
            return Err(MediaError::InvalidParameters(format!(
                "rtpParameters.mid `{mid}` is already published on this transport"
            )));
        }
        let new_ssrcs: Vec<u32> = params
            .encodings
            .iter()
            .flat_map(|e| e.ssrc.into_iter().chain(e.rtx.as_ref().map(|r| r.ssrc)))
            .collect();
        let taken = state.published.iter().any(|l| {
            l.params.encodings.iter().any(|e| {
                e.ssrc
                    .into_iter()
                    .chain(e.rtx.as_ref().map(|r| r.ssrc))
                    .any(|s| new_ssrcs.contains(&s))
            })
        });
        if taken {
            return Err(MediaError::InvalidParameters(
                "rtpParameters.encodings: an SSRC is already used by another producer".into(),
            ));
        }
        params.mid = Some(mid.clone());
        let mime = params.codecs[0].mime_type.clone();
        state.published.push(PublishedLine {
            mid: mid.clone(),
            kind,
            params,
        });
        state.sdp_version += 1;
        let sdp = ortc::publisher_offer_sdp(&state.remote(), &state.published, state.sdp_version);
        let offer = SdpOffer::from_sdp_string(&sdp);
        let mid_value: Mid = mid.as_str().into();
        let applied = match offer {
            Ok(offer) => self
                .accept_offer(key, offer, now, egress)
                .and_then(|answer| {
                    if rejected_mids(&answer).contains(&mid_value) {
                        Err(MediaError::UnsupportedCodec(format!(
                            "no codec of rtpParameters.codecs is enabled on this server ({mime})"
                        )))
                    } else {
                        Ok(())
                    }
                }),
            Err(e) => Err(MediaError::InvalidParameters(e.to_string())),
        };
        if let Err(e) = applied {
            // A rejected m-line stays negotiated (later offers must repeat it); one that never
            // applied is forgotten.
            if !matches!(e, MediaError::UnsupportedCodec(_)) {
                if let Some(Negotiation::Ortc(state)) =
                    self.transports.get_mut(key).map(|t| &mut t.negotiation)
                {
                    state.published.pop();
                }
            }
            return Err(e);
        }
        self.new_producers.clear();
        self.add_producer(key, mid_value, kind.media_kind());
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        let created = self
            .new_producers
            .pop()
            .ok_or_else(|| MediaError::InvalidParameters("the track was not accepted".into()))?;
        if let Some(pk) = self.producer_by_id.get(&created.producer_id) {
            self.producers[*pk].mime_type = Some(mime);
        }
        Ok(created)
    }

    /// `consume`: add a send m-line to our offer, answer it as the client would, and return
    /// the consumer's rtpParameters (which mediasoup-client turns into that same offer).
    #[allow(clippy::too_many_arguments)] // mirrors the `consume` request, plus the I/O edge
    pub fn ortc_consume(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        stream_id: String,
        caps: &RtpCapabilities,
        paused: bool,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(ConsumerCreated, RtpParameters), MediaError> {
        let key = self.ortc_key(id, Role::Subscriber)?;
        let pk = *self
            .producer_by_id
            .get(&producer)
            .ok_or(MediaError::ProducerNotFound)?;
        let producer_state = &self.producers[pk];
        let kind = producer_state.kind.media_kind();
        let decodable = match &producer_state.mime_type {
            Some(mime) => ortc::caps_support(caps, mime, producer_state.kind.clock_rate()),
            None => caps.codecs.iter().any(|c| {
                c.mime_type
                    .to_ascii_lowercase()
                    .starts_with(ortc::kind_str(producer_state.kind))
            }),
        };
        if !decodable {
            return Err(MediaError::UnsupportedCodec(
                "rtpCapabilities: the client cannot decode this producer's codec".into(),
            ));
        }
        if self.transports[key]
            .consumers
            .iter()
            .any(|ck| self.consumers[*ck].producer == pk)
        {
            return Err(MediaError::InvalidParameters(
                "this transport already consumes that producer".into(),
            ));
        }
        let producer_mime = producer_state.mime_type.clone();
        let producer_id = producer_state.id;
        let transport = &mut self.transports[key];
        let mut api = transport.rtc.sdp_api();
        let mid = api.add_media(
            kind,
            Direction::SendOnly,
            Some(stream_id.clone()),
            Some(producer_id.to_string()),
            None,
        );
        let Some((offer, pending)) = api.apply() else {
            return Err(MediaError::InvalidParameters("nothing to negotiate".into()));
        };
        let offer_sdp = offer.to_sdp_string();
        let Some(mut params) = ortc::consumer_parameters(&offer_sdp, &mid.to_string(), caps) else {
            return Err(MediaError::UnsupportedCodec(
                "rtpCapabilities: no codec in common with this server".into(),
            ));
        };
        // The producer's own codec first: that is what will arrive.
        if let Some(mime) = producer_mime {
            if let Some(pos) = params
                .codecs
                .iter()
                .position(|c| c.mime_type.eq_ignore_ascii_case(&mime))
            {
                let first = params.codecs.remove(pos);
                let rtx = params.codecs.iter().position(|c| {
                    c.mime_type.ends_with("/rtx")
                        && c.parameters.get("apt") == Some(&serde_json::json!(first.payload_type))
                });
                let rtx = rtx.map(|i| params.codecs.remove(i));
                params.codecs.insert(0, first);
                if let Some(rtx) = rtx {
                    params.codecs.insert(1, rtx);
                }
            }
        }
        let Negotiation::Ortc(state) = &mut transport.negotiation else {
            return Err(MediaError::TransportNotFound);
        };
        state
            .consumer_codecs
            .insert(mid.to_string(), params.codecs.clone());
        state.sdp_version += 1;
        let codecs = &state.consumer_codecs;
        let answer_sdp = ortc::subscriber_answer_sdp(
            &state.remote(),
            &offer_sdp,
            &|m| codecs.get(m).cloned(),
            state.sdp_version,
        );
        let answer = SdpAnswer::from_sdp_string(&answer_sdp)
            .map_err(|e| MediaError::InvalidParameters(e.to_string()))?;
        let rtc = &mut transport.rtc;
        let accepted = catch_unwind(AssertUnwindSafe(|| {
            rtc.sdp_api().accept_answer(pending, answer)
        }));
        if !matches!(accepted, Ok(Ok(()))) {
            self.dead.push((key, "synthesized answer rejected".into()));
            self.after_drain(now, egress);
            return Err(MediaError::InvalidParameters(
                "the consumer could not be negotiated".into(),
            ));
        }
        let tx_ssrc = self.transports[key]
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .map(|s| s.ssrc());
        let ck = self.attach_consumer(pk, key, stream_id, Some(mid), tx_ssrc, paused);
        self.start_at_keyframe(ck, now);
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        let layers = self.producers[pk].layers.len() as u8;
        Ok((ConsumerCreated { layers }, params))
    }

    /// WHEP: the client's offer has receive-only m-lines; each gets the next producer of its
    /// kind from `producers`. Returns the answer and the producers actually attached.
    pub fn whep_offer(
        &mut self,
        id: TransportId,
        sdp: &str,
        producers: &[(ProducerId, String)],
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(String, Vec<ProducerId>), MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
        if self.by_id.contains_key(&id) {
            return Err(MediaError::TransportNotFound);
        }
        let offered: Vec<Mid> = offer.media_lines.iter().map(|m| m.mid()).collect();
        let key = self.new_rtc(id, Role::Subscriber, now);
        self.transports[key].negotiation = Negotiation::ClientOffer;
        let answer = match self.accept_offer(key, offer, now, egress) {
            Ok(answer) => answer,
            Err(e) => {
                self.remove_transport(key, now, egress);
                return Err(e);
            }
        };
        let mut attached = Vec::new();
        let mut used = Vec::new();
        for mid in offered {
            let Some((media_kind, direction)) = self.transports[key]
                .rtc
                .media(mid)
                .map(|m| (m.kind(), m.direction()))
            else {
                continue;
            };
            if !matches!(direction, Direction::SendOnly | Direction::SendRecv) {
                continue;
            }
            let want = Kind::from_media_kind(media_kind);
            let pick = producers.iter().find(|(p, _)| {
                !used.contains(p)
                    && self
                        .producer_by_id
                        .get(p)
                        .is_some_and(|pk| self.producers[*pk].kind == want)
            });
            let Some((producer, stream_id)) = pick.cloned() else {
                continue;
            };
            used.push(producer);
            let pk = self.producer_by_id[&producer];
            let tx_ssrc = self.transports[key]
                .rtc
                .direct_api()
                .stream_tx_by_mid(mid, None)
                .map(|s| s.ssrc());
            let ck = self.attach_consumer(pk, key, stream_id, Some(mid), tx_ssrc, false);
            self.start_at_keyframe(ck, now);
            attached.push(producer);
        }
        if attached.is_empty() {
            self.remove_transport(key, now, egress);
            return Err(MediaError::InvalidSdp(
                "the offer has no receive-only audio/video m-line matching a producer in the room"
                    .into(),
            ));
        }
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        Ok((answer.to_sdp_string(), attached))
    }

    pub fn set_consumer_paused(
        &mut self,
        id: TransportId,
        producer: ProducerId,
        paused: bool,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let ck = self.consumer_of(id, producer)?;
        let was = std::mem::replace(&mut self.consumers[ck].paused, paused);
        if was && !paused {
            self.start_at_keyframe(ck, now);
        }
        self.after_drain(now, egress);
        Ok(())
    }

    pub fn set_producer_paused(
        &mut self,
        producer: ProducerId,
        paused: bool,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let pk = *self
            .producer_by_id
            .get(&producer)
            .ok_or(MediaError::ProducerNotFound)?;
        let was = std::mem::replace(&mut self.producers[pk].paused, paused);
        if was && !paused {
            for ck in self.producers[pk].consumers.clone() {
                self.start_at_keyframe(ck, now);
            }
        }
        self.after_drain(now, egress);
        Ok(())
    }

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
        if let Some(publisher) = self.transports.get_mut(removed.transport) {
            publisher.producers_by_mid.remove(&removed.mid);
            publisher.ssrc_routes.retain(|_, (p, _)| *p != pk);
        }
        let touched = self.drop_consumers(removed.consumers);
        for sub in touched {
            self.negotiate(sub);
            self.drain(sub, now, egress);
        }
        self.after_drain(now, egress);
        Ok(())
    }

    /// `restartIce`: fresh local ICE credentials; the client restarts with them.
    pub fn restart_ice(&mut self, id: TransportId) -> Result<serde_json::Value, MediaError> {
        let key = self
            .ortc_key(id, Role::Publisher)
            .or_else(|_| self.ortc_key(id, Role::Subscriber))?;
        let creds = IceCreds::new();
        let transport = &mut self.transports[key];
        transport
            .rtc
            .direct_api()
            .set_local_ice_credentials(creds.clone());
        self.by_ufrag.remove(&transport.ufrag);
        transport.ufrag = creds.ufrag.clone();
        self.by_ufrag.insert(creds.ufrag.clone(), key);
        Ok(ice_parameters(&creds))
    }

    /// A new consumer of producer `pk` on subscriber transport `key`, in both fan-out lists.
    fn attach_consumer(
        &mut self,
        pk: usize,
        key: usize,
        stream_id: String,
        mid: Option<Mid>,
        tx_ssrc: Option<Ssrc>,
        paused: bool,
    ) -> usize {
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
        });
        self.producers[pk].consumers.push(ck);
        self.transports[key].consumers.push(ck);
        ck
    }

    /// (Re)start forwarding to a consumer from a fresh keyframe of its target layer: new
    /// consumers, and resumed ones (their decoder state is stale).
    fn start_at_keyframe(&mut self, ck: usize, now: Instant) {
        self.consumers[ck].selector.current = None;
        self.retarget_consumer(ck, now);
        self.request_keyframe_for(ck, now);
    }

    fn consumer_of(&self, id: TransportId, producer: ProducerId) -> Result<usize, MediaError> {
        let key = self.subscriber_key(id)?;
        let pk = *self
            .producer_by_id
            .get(&producer)
            .ok_or(MediaError::ProducerNotFound)?;
        self.transports[key]
            .consumers
            .iter()
            .copied()
            .find(|ck| self.consumers[*ck].producer == pk)
            .ok_or(MediaError::ProducerNotFound)
    }

    pub fn close_transport(&mut self, id: TransportId, now: Instant, egress: &mut dyn Egress) {
        if let Some(key) = self.by_id.get(&id).copied() {
            self.remove_transport(key, now, egress);
        }
    }

    fn remove_transport(&mut self, key: usize, now: Instant, egress: &mut dyn Egress) {
        let mut transport = self.transports.remove(key);
        // Say goodbye (RTCP BYE, DTLS close_notify) so the peer learns at once rather than at
        // its ICE consent timeout; what str0m queued is bounded, the loop only caps it.
        if transport.rtc.is_connected() && transport.rtc.close().is_ok() {
            for _ in 0..32 {
                match transport.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => egress.send(t.destination, &t.contents),
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
    fn drop_consumers(&mut self, consumers: Vec<usize>) -> Vec<usize> {
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

    fn consumer_by_mid(&self, key: usize, mid: Mid) -> Option<usize> {
        self.transports[key]
            .consumers
            .iter()
            .copied()
            .find(|ck| self.consumers[*ck].mid == Some(mid))
    }
}

impl Layer {
    fn new(rid: Option<Rid>) -> Self {
        Layer {
            rid,
            active: false,
            last_packet: None,
            last_keyframe_request: None,
        }
    }
}

/// Header extensions worth passing on. RID/MID are per-transport and set by str0m itself.
fn forwardable_extensions(incoming: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: incoming.audio_level,
        voice_activity: incoming.voice_activity,
        video_orientation: incoming.video_orientation,
        video_content_type: incoming.video_content_type,
        ..Default::default()
    }
}

/// The subscriber's payload type for the codec the publisher used with `pt`.
fn map_payload_type(publisher: &Rtc, subscriber: &Rtc, pt: Pt) -> Option<Pt> {
    let params = publisher
        .codec_config()
        .params()
        .iter()
        .find(|p| p.pt() == pt)?;
    subscriber
        .codec_config()
        .match_params(*params)
        .or_else(|| {
            subscriber
                .codec_config()
                .find(|p| p.spec().codec == params.spec().codec)
        })
        .map(|p| p.pt())
}

/// What the room layer needs to know about a new ORTC consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerCreated {
    /// Simulcast layers of the producer (1 without simulcast).
    pub layers: u8,
}

fn ice_parameters(creds: &IceCreds) -> serde_json::Value {
    serde_json::json!({
        "usernameFragment": creds.ufrag,
        "password": creds.pass,
        "iceLite": true,
    })
}

/// 24 random characters: never checked (ICE-lite sends no requests), but must look real.
fn random_ice_password() -> String {
    IceCreds::new().pass
}

impl From<OrtcError> for MediaError {
    fn from(e: OrtcError) -> Self {
        match e {
            OrtcError::Invalid(m) => MediaError::InvalidParameters(m),
            OrtcError::UnsupportedCodec(m) => MediaError::UnsupportedCodec(m),
        }
    }
}

/// `routerRtpCapabilities`: what a transport built from `codecs` offers, read from a real
/// str0m offer so payload types and extension ids are exactly those consumers will see.
pub fn router_capabilities(codecs: &[CodecName]) -> RtpCapabilities {
    let config = apply_codecs(RtcConfig::new().set_rtp_mode(true), codecs);
    let mut rtc = config.build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    match api.apply() {
        Some((offer, _)) => ortc::capabilities_from_offer(&offer.to_sdp_string()),
        None => RtpCapabilities::default(),
    }
}

/// Mids of m-lines an answer rejected (port 0): str0m found no codec in common.
fn rejected_mids(answer: &SdpAnswer) -> Vec<Mid> {
    answer
        .media_lines
        .iter()
        .filter(|m| m.disabled)
        .map(|m| m.mid())
        .collect()
}
