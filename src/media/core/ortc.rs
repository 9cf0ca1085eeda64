//! mediasoup-style ORTC transports: parameters instead of SDP. Each `publish` becomes the
//! offer the browser would have sent and each `consume` the answer it would give, so str0m
//! negotiates exactly as in the SDP flow (see `media::ortc` for the translation).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::{IceCreds, RtcConfig};

use super::sdp::rejected_mids;
use super::{Egress, Negotiation, OrtcState, ProducerKey, Role, TransportKey, WorkerCore};
use crate::media::codec::{apply_codecs, CodecName};
use crate::media::ortc::{
    self, OrtcError, PublishedLine, RtpCapabilities, RtpParameters, TransportParameters,
};
use crate::media::{Kind, MediaError, NewProducer, ProducerId, TransportId};

impl WorkerCore {
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

    pub(super) fn transport_parameters(&mut self, key: TransportKey) -> TransportParameters {
        let addr = self.candidate_addr;
        let tcp = self.tcp_candidate();
        let api = self.transports[key].rtc.direct_api();
        let creds = api.local_ice_credentials();
        let fingerprint = api.local_dtls_fingerprint().to_string();
        let (algorithm, value) = fingerprint.split_once(' ').unwrap_or(("sha-256", ""));
        let mut ice_candidates = vec![serde_json::json!({
            "foundation": "udpcandidate",
            "priority": 1_076_302_079u32,
            "ip": addr.ip().to_string(),
            "address": addr.ip().to_string(),
            "port": addr.port(),
            "type": "host",
            "protocol": "udp",
        })];
        // mediasoup's IceCandidate shape and priorities for ICE-TCP: `tcpType` beside
        // `protocol: "tcp"`, ranked just below the UDP candidate so clients try UDP first.
        if let Some(tcp) = tcp {
            ice_candidates.push(serde_json::json!({
                "foundation": "tcpcandidate",
                "priority": 1_076_276_479u32,
                "ip": tcp.addr().ip().to_string(),
                "address": tcp.addr().ip().to_string(),
                "port": tcp.addr().port(),
                "type": "host",
                "protocol": "tcp",
                "tcpType": "passive",
            }));
        }
        TransportParameters {
            ice_parameters: ice_parameters(&creds),
            ice_candidates,
            dtls_parameters: serde_json::json!({
                "role": "auto",
                "fingerprints": [{ "algorithm": algorithm, "value": value }],
            }),
        }
    }

    pub(super) fn ortc_key(&self, id: TransportId, role: Role) -> Result<TransportKey, MediaError> {
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
        params: RtpParameters,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<NewProducer, MediaError> {
        let key = self.ortc_key(id, Role::Publisher)?;
        ortc::validate_producer(kind, &params).map_err(MediaError::from)?;
        let (mid, mime) = self.record_published(key, kind, params)?;
        let mid: Mid = mid.as_str().into();
        self.apply_published(key, mid, &mime, now, egress)?;
        self.new_producers.clear();
        self.add_producer(key, mid, kind.media_kind());
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

    /// Add a validated track to the transport's published lines; returns its mid and mime.
    fn record_published(
        &mut self,
        key: TransportKey,
        kind: Kind,
        mut params: RtpParameters,
    ) -> Result<(String, String), MediaError> {
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
        let ssrcs_of = |p: &RtpParameters| -> Vec<u32> {
            p.encodings
                .iter()
                .flat_map(|e| e.ssrc.into_iter().chain(e.rtx.as_ref().map(|r| r.ssrc)))
                .collect()
        };
        let new_ssrcs = ssrcs_of(&params);
        let taken = state
            .published
            .iter()
            .any(|l| ssrcs_of(&l.params).iter().any(|s| new_ssrcs.contains(s)));
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
        Ok((mid, mime))
    }

    /// Offer every published line to str0m as the browser would have; the new one (`mid`)
    /// must be accepted with a codec in common.
    fn apply_published(
        &mut self,
        key: TransportKey,
        mid: Mid,
        mime: &str,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let Negotiation::Ortc(state) = &self.transports[key].negotiation else {
            return Err(MediaError::TransportNotFound);
        };
        let sdp = ortc::publisher_offer_sdp(&state.remote(), &state.published, state.sdp_version);
        let applied = match SdpOffer::from_sdp_string(&sdp) {
            Ok(offer) => self
                .accept_offer(key, offer, now, egress)
                .and_then(|answer| {
                    if rejected_mids(&answer).contains(&mid) {
                        Err(MediaError::UnsupportedCodec(format!(
                            "no codec of rtpParameters.codecs is enabled on this server ({mime})"
                        )))
                    } else {
                        Ok(())
                    }
                }),
            Err(_) => Err(MediaError::InvalidParameters(
                "rtpParameters could not be expressed as SDP".into(),
            )),
        };
        if let Err(e) = &applied {
            // A rejected m-line stays negotiated (later offers must repeat it); one that never
            // applied is forgotten.
            if !matches!(e, MediaError::UnsupportedCodec(_)) {
                if let Some(Negotiation::Ortc(state)) =
                    self.transports.get_mut(key).map(|t| &mut t.negotiation)
                {
                    state.published.pop();
                }
            }
        }
        applied
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
        let pk = self.producer_key(producer)?;
        self.check_consumable(key, pk, caps)?;
        let (mid, pending, offer_sdp, params) = self.offer_consumer(key, pk, &stream_id, caps)?;
        self.answer_consumer(key, mid, pending, &offer_sdp, &params, now, egress)?;
        let tx_ssrc = self.tx_ssrc(key, mid);
        let ck = self.attach_consumer(pk, key, stream_id, Some(mid), tx_ssrc, paused);
        self.start_at_keyframe(ck, now);
        self.drain(key, now, egress);
        self.after_drain(now, egress);
        let layers = self.producers[pk].layers.len() as u8;
        Ok((ConsumerCreated { layers }, params))
    }

    /// The client can decode the producer, and does not consume it on this transport yet.
    fn check_consumable(
        &self,
        key: TransportKey,
        pk: ProducerKey,
        caps: &RtpCapabilities,
    ) -> Result<(), MediaError> {
        let producer = &self.producers[pk];
        let decodable = match &producer.mime_type {
            Some(mime) => ortc::caps_support(caps, mime, producer.kind.clock_rate()),
            None => caps.codecs.iter().any(|c| {
                c.mime_type
                    .to_ascii_lowercase()
                    .starts_with(ortc::kind_str(producer.kind))
            }),
        };
        if !decodable {
            return Err(MediaError::UnsupportedCodec(
                "rtpCapabilities: the client cannot decode this producer's codec".into(),
            ));
        }
        if self.find_consumer(key, pk).is_some() {
            return Err(MediaError::InvalidParameters(
                "this transport already consumes that producer".into(),
            ));
        }
        Ok(())
    }

    /// Our offer with a new send m-line for producer `pk`, and the consumer's rtpParameters
    /// read from it (the producer's own codec first: that is what will arrive).
    fn offer_consumer(
        &mut self,
        key: TransportKey,
        pk: ProducerKey,
        stream_id: &str,
        caps: &RtpCapabilities,
    ) -> Result<(Mid, SdpPendingOffer, String, RtpParameters), MediaError> {
        let producer = &self.producers[pk];
        let (kind, producer_id) = (producer.kind.media_kind(), producer.id);
        let producer_mime = producer.mime_type.clone();
        let mut api = self.transports[key].rtc.sdp_api();
        let mid = api.add_media(
            kind,
            Direction::SendOnly,
            Some(stream_id.to_string()),
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
        if let Some(mime) = producer_mime {
            put_codec_first(&mut params, &mime);
        }
        Ok((mid, pending, offer_sdp, params))
    }

    /// Answer our own offer as the client will (keeping the codecs in `params`) and apply it.
    #[allow(clippy::too_many_arguments)] // one negotiation step: its inputs plus the I/O edge
    fn answer_consumer(
        &mut self,
        key: TransportKey,
        mid: Mid,
        pending: SdpPendingOffer,
        offer_sdp: &str,
        params: &RtpParameters,
        now: Instant,
        egress: &mut dyn Egress,
    ) -> Result<(), MediaError> {
        let transport = &mut self.transports[key];
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
            offer_sdp,
            &|m| codecs.get(m).cloned(),
            state.sdp_version,
        );
        let answer = SdpAnswer::from_sdp_string(&answer_sdp).map_err(|_| {
            MediaError::InvalidParameters("the consumer could not be expressed as SDP".into())
        })?;
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
}

/// Reorder `params.codecs` so `mime` (and its rtx) come first.
fn put_codec_first(params: &mut RtpParameters, mime: &str) {
    let Some(pos) = params
        .codecs
        .iter()
        .position(|c| c.mime_type.eq_ignore_ascii_case(mime))
    else {
        return;
    };
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
