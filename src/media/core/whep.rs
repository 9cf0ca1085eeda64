//! WHEP: a player's one offer, answered once; each receive-only m-line gets a producer.

use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::media::{Direction, Mid};

use super::{sdp_error, Egress, Negotiation, Role, WorkerCore};
use crate::media::{Kind, MediaError, ProducerId, TransportId};

impl WorkerCore {
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
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| sdp_error::unparsable(sdp, &e))?;
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
            let tx_ssrc = self.tx_ssrc(key, mid);
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
}
