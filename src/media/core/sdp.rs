//! The SDP flow: publishers offer, we answer; subscribers get our offers and answer. Also the
//! shared step every negotiation path (SDP, ORTC, WHEP) ends in: applying an offer to str0m.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid, Rid, Rids};
use str0m::net::TcpType;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, RtcConfig};
use uuid::Uuid;

use super::keyframes::KeyframeRequests;
use super::link_estimate::SubscriberBwe;
use super::sdp_error;
use super::{
    Egress, Layer, Negotiation, Origin, Producer, Role, SubscriberChange, Transport, TransportKey,
    WorkerCore, FAR_FUTURE,
};
use crate::media::simulcast::MAX_LAYERS;
use crate::media::{
    Kind, MediaError, MediaEvent, NewProducer, OfferedTrack, ProducerId, TransportId,
};

impl WorkerCore {
    pub(super) fn new_rtc(&mut self, id: TransportId, role: Role, now: Instant) -> TransportKey {
        // Only subscriber links carry our media, so only they run the send-side estimator.
        let estimate = role == Role::Subscriber && self.bwe.enabled;
        let mut config = self.rtc_template.clone();
        if estimate {
            config = config.enable_bwe(Some(Bitrate::bps(self.bwe.initial_bps)));
            config = without_extensions(config, &[Extension::AbsoluteSendTime]);
        } else if role == Role::Subscriber {
            // Without an estimator nobody reads TWCC feedback, yet str0m would keep 1,000 send
            // records per transport for it (≈ 90 KB of a subscriber's memory).
            config = without_extensions(
                config,
                &[
                    Extension::TransportSequenceNumber,
                    Extension::AbsoluteSendTime,
                ],
            );
        }
        let bwe = estimate.then(|| SubscriberBwe::new(self.bwe.initial_bps));
        let mut rtc = config.build(now);
        if let Ok(candidate) = Candidate::host(self.candidate_addr, "udp") {
            rtc.add_local_candidate(candidate);
        }
        // RFC 6544 passive: clients whose networks drop UDP connect to us. Its type preference
        // (90 against UDP host's 126) makes every client prefer UDP when both work.
        if let Some(candidate) = self.tcp_candidate() {
            rtc.add_local_candidate(candidate);
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let key = self.transports.insert(Transport {
            id,
            role,
            rtc: Box::new(rtc),
            ufrag: ufrag.clone(),
            remote_addrs: Vec::new(),
            nominated: None,
            next_timeout: now + FAR_FUTURE,
            producers_by_mid: HashMap::new(),
            ssrc_routes: HashMap::new(),
            consumers: Vec::new(),
            queued_changes: Vec::new(),
            pending_offer: None,
            negotiation: Negotiation::Sdp,
            bwe,
        });
        self.by_id.insert(id, key);
        self.by_ufrag.insert(ufrag, key);
        key
    }

    /// The passive ICE-TCP host candidate, when ICE-TCP is on.
    pub(super) fn tcp_candidate(&self) -> Option<Candidate> {
        let addr = self.tcp_candidate_addr?;
        Candidate::builder()
            .tcp()
            .host(addr)
            .tcptype(TcpType::Passive)
            .build()
            .ok()
    }

    pub fn publisher_offer(
        &mut self,
        id: TransportId,
        sdp: &str,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(String, Vec<NewProducer>), MediaError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| sdp_error::unparsable(sdp, &e))?;
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
    pub(super) fn accept_offer(
        &mut self,
        key: TransportKey,
        offer: SdpOffer,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<SdpAnswer, MediaError> {
        let rtc = &mut self.transports[key].rtc;
        match catch_unwind(AssertUnwindSafe(|| rtc.sdp_api().accept_offer(offer))) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(sdp_error::refused("offer", &e)),
            Err(_) => {
                self.dead.push((key, "panic while applying offer".into()));
                self.after_drain(now, egress);
                Err(MediaError::InvalidSdp(
                    "the offer could not be applied".into(),
                ))
            }
        }
    }

    pub(super) fn add_producer(&mut self, key: TransportKey, mid: Mid, kind: MediaKind) {
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
        let publisher = self.transports[key].id;
        let pk = self.producers.insert(Producer {
            id,
            origin: Origin::Local(key),
            publisher,
            mid,
            kind,
            layers,
            keyframes: KeyframeRequests::default(),
            codec: None,
            codec_pt: None,
            codec_params: None,
            mime_type: None,
            paused: false,
            consumers: Vec::new(),
            dynacast: Default::default(),
            voice: Default::default(),
            exports: Default::default(),
            idle_since: None,
            frame_consumers: Vec::new(),
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
        let pk = self.producer_key(producer)?;
        if self.find_consumer(key, pk).is_some() {
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

    /// If no offer is outstanding, turn queued changes into one offer and announce it.
    pub(super) fn negotiate(&mut self, key: TransportKey) {
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
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| sdp_error::unparsable(sdp, &e))?;
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
                return Err(sdp_error::refused("answer", &e));
            }
            Err(_) => {
                self.dead.push((key, "panic while applying answer".into()));
                self.after_drain(now, egress);
                return Err(MediaError::InvalidSdp(
                    "the answer could not be applied".into(),
                ));
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
            let ssrc = self.tx_ssrc(key, mid);
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
}

/// `config` without the header extensions in `dropped`, the others keeping their ids.
///
/// No subscriber transport carries abs-send-time: it feeds only a receiver's own (REMB)
/// estimate, which the SFU never reads (ours is send-side, on TWCC), and str0m stamps it on
/// every packet from the wall clock (≈ 1.7 % of the server's CPU at 1 × 200), 4 bytes each.
pub(super) fn without_extensions(mut config: RtcConfig, dropped: &[Extension]) -> RtcConfig {
    let mut map = ExtensionMap::empty();
    for (id, ext) in config.extension_map().iter() {
        if !dropped.contains(ext) {
            map.set(id, ext.clone());
        }
    }
    config.set_extension_map(map)
}

/// Mids of m-lines an answer rejected (port 0): str0m found no codec in common.
pub(super) fn rejected_mids(answer: &SdpAnswer) -> Vec<Mid> {
    answer
        .media_lines
        .iter()
        .filter(|m| m.disabled)
        .map(|m| m.mid())
        .collect()
}
