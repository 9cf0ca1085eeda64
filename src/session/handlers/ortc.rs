//! The seed's mediasoup-style ORTC requests: transports, publish, consume, pause/resume,
//! close, preferred layers, ICE restart.

use serde_json::{json, Value};

use super::super::protocol::wire::MediaKindName;
use super::super::protocol::{
    ConnectWebRtcTransport, Consume, ConsumerRef, CreateWebRtcTransport, ErrorCode, ProducerRef,
    Publish, SetConsumerPreferredLayers, SetConsumerPriority, TransportDirection, TransportRef,
};
use super::super::{Failure, Reply, Session};
use super::{publish_denied, subscribe_denied};
use crate::auth::Identity;
use crate::media::ortc::kind_str;
use crate::room::{ConsumerTarget, RemoteDtls};
use crate::turn::ice_servers_json;

/// `dtlsParameters` of `connectWebRtcTransport`: the role and one fingerprint str0m can
/// verify (sha-256 preferred, as browsers do; str0m verifies only sha-256/sha-1).
fn remote_dtls(dtls: &Value) -> Result<RemoteDtls, Failure> {
    let bad = |m: &str| Failure::new(ErrorCode::InvalidRtpParameters, m);
    let role = match dtls.get("role") {
        None | Some(Value::Null) => "auto".to_string(),
        Some(Value::String(r)) => r.clone(),
        Some(_) => return Err(bad("dtlsParameters.role must be a string")),
    };
    let fingerprints = dtls
        .get("fingerprints")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("dtlsParameters.fingerprints must be a non-empty array"))?;
    let pick = fingerprints
        .iter()
        .find(|f| f.get("algorithm").and_then(Value::as_str) == Some("sha-256"))
        .or_else(|| fingerprints.first())
        .ok_or_else(|| bad("dtlsParameters.fingerprints must be a non-empty array"))?;
    let (Some(algorithm), Some(value)) = (
        pick.get("algorithm").and_then(Value::as_str),
        pick.get("value").and_then(Value::as_str),
    ) else {
        return Err(bad(
            "dtlsParameters.fingerprints[] needs string `algorithm` and `value`",
        ));
    };
    Ok(RemoteDtls {
        role,
        algorithm: algorithm.to_string(),
        fingerprint: value.to_string(),
    })
}

impl Session {
    pub(super) async fn create_transport(
        &mut self,
        identity: &Identity,
        r: CreateWebRtcTransport,
    ) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        let send = r.direction == TransportDirection::Send;
        if !send && !identity.grants.subscribe {
            return Err(subscribe_denied());
        }
        let created = self
            .ctx
            .rooms
            .create_webrtc_transport(&m.room_id, &m.participant_id, send)
            .await?;
        let p = created.parameters;
        let mut response = json!({
            "transportId": created.transport_id,
            "iceParameters": p.ice_parameters,
            "iceCandidates": p.ice_candidates,
            "dtlsParameters": p.dtls_parameters,
            "sctpParameters": null,
        });
        // What mediasoup-client's createSendTransport/createRecvTransport take as `iceServers`.
        let turn = self.ctx.settings.turn.as_ref();
        if let Some(servers) = ice_servers_json(turn, &identity.user.id) {
            response["iceServers"] = servers;
        }
        Ok(("createWebRtcTransportResponse", response))
    }

    pub(super) async fn connect_transport(&mut self, r: ConnectWebRtcTransport) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        let dtls = remote_dtls(&r.dtls_parameters)?;
        self.ctx
            .rooms
            .connect_webrtc_transport(&m.room_id, &m.participant_id, &r.transport_id, dtls)
            .await?;
        Ok((
            "connectWebRtcTransportResponse",
            json!({ "transportId": r.transport_id }),
        ))
    }

    pub(super) async fn publish(&mut self, identity: &Identity, r: Publish) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        let kind = kind_str(r.kind.into());
        if !identity.grants.may_publish(kind) {
            return Err(publish_denied(kind));
        }
        let published = self
            .ctx
            .rooms
            .publish_ortc(
                &m.room_id,
                &m.participant_id,
                r.transport_id.as_deref(),
                r.kind.into(),
                r.rtp_parameters,
            )
            .await?;
        Ok((
            "publishResponse",
            json!({
                "producerId": published.producer_id.to_string(),
                "kind": MediaKindName::from(published.kind),
                "rtpParameters": published.rtp_parameters,
            }),
        ))
    }

    pub(super) async fn consume(&mut self, identity: &Identity, r: Consume) -> Reply {
        if !identity.grants.subscribe {
            return Err(subscribe_denied());
        }
        let m = self.membership_in(r.room_id.as_deref())?;
        let consumer = self
            .ctx
            .rooms
            .consume(
                &m.room_id,
                &m.participant_id,
                &r.producer_id,
                r.rtp_capabilities,
                r.transport_id.as_deref(),
                r.paused,
            )
            .await?;
        Ok((
            "consumeResponse",
            json!({
                "consumerId": consumer.consumer_id,
                "producerId": consumer.producer_id.to_string(),
                "kind": MediaKindName::from(consumer.kind),
                "rtpParameters": consumer.rtp_parameters,
                "type": if consumer.simulcast { "simulcast" } else { "simple" },
                "paused": consumer.paused,
            }),
        ))
    }

    pub(super) async fn set_consumer_paused(&mut self, r: ConsumerRef, paused: bool) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        self.ctx
            .rooms
            .set_consumer_paused(&m.room_id, &m.participant_id, &r.consumer_id, paused)
            .await?;
        let reply = if paused {
            "pauseConsumerResponse"
        } else {
            "resumeConsumerResponse"
        };
        Ok((reply, json!({ "consumerId": r.consumer_id })))
    }

    pub(super) async fn set_producer_paused(&mut self, r: ProducerRef, paused: bool) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        self.ctx
            .rooms
            .set_producer_paused(&m.room_id, &m.participant_id, &r.producer_id, paused)
            .await?;
        let reply = if paused {
            "pauseProducerResponse"
        } else {
            "resumeProducerResponse"
        };
        Ok((reply, json!({ "producerId": r.producer_id })))
    }

    pub(super) async fn close_producer(&mut self, r: ProducerRef) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        self.ctx
            .rooms
            .close_producer(&m.room_id, &m.participant_id, &r.producer_id)
            .await?;
        Ok((
            "closeProducerResponse",
            json!({ "producerId": r.producer_id }),
        ))
    }

    pub(super) async fn set_consumer_layers(&mut self, r: SetConsumerPreferredLayers) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        self.ctx
            .rooms
            .set_consumer_preferred_layers(
                &m.room_id,
                &m.participant_id,
                &r.consumer_id,
                r.spatial_layer,
            )
            .await?;
        Ok((
            "setConsumerPreferredLayersResponse",
            json!({ "consumerId": r.consumer_id, "spatialLayer": r.spatial_layer, "temporalLayer": r.temporal_layer }),
        ))
    }

    /// Both dialects: the ORTC one names the consumer, the demo's the producer it shows.
    pub(super) async fn set_consumer_priority(&mut self, r: SetConsumerPriority) -> Reply {
        let invalid = |m: &str| Failure::new(ErrorCode::InvalidPayload, m);
        if r.priority == 0 {
            return Err(invalid("priority must be 1 to 255"));
        }
        let m = self.membership_in(r.room_id.as_deref())?;
        let (target, mut echo) = match (r.consumer_id, r.producer_id) {
            (Some(id), None) => (
                ConsumerTarget::Consumer(id.clone()),
                json!({ "consumerId": id }),
            ),
            (None, Some(id)) => (
                ConsumerTarget::Producer(id.clone()),
                json!({ "producerId": id }),
            ),
            _ => return Err(invalid("give exactly one of consumerId and producerId")),
        };
        self.ctx
            .rooms
            .set_consumer_priority(&m.room_id, &m.participant_id, &target, r.priority)
            .await?;
        echo["priority"] = json!(r.priority);
        Ok(("setConsumerPriorityResponse", echo))
    }

    pub(super) async fn restart_ice(&mut self, r: TransportRef) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        let ice = self
            .ctx
            .rooms
            .restart_ice(&m.room_id, &m.participant_id, &r.transport_id)
            .await?;
        Ok((
            "restartIceResponse",
            json!({ "transportId": r.transport_id, "iceParameters": ice }),
        ))
    }
}
