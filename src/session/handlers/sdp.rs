//! The SDP flow: the client offers its publisher transport, answers the server's subscriber
//! offers, and picks simulcast layers.

use serde_json::{json, Value};

use super::super::protocol::wire::ProducerInfo;
use super::super::protocol::{
    LayerPreference, PublisherOffer, SetPreferredLayer, SubscriberAnswer,
};
use super::super::{Reply, Session};
use super::{publish_denied, subscribe_denied};
use crate::auth::Identity;
use crate::media::Preference;
use crate::room::sdp_sending_kinds;

impl Session {
    pub(super) async fn publisher_offer(
        &mut self,
        identity: &Identity,
        r: PublisherOffer,
    ) -> Reply {
        let m = self.membership_in(r.room_id.as_deref())?;
        if let Some(kind) = sdp_sending_kinds(&r.sdp)
            .into_iter()
            .find(|kind| !identity.grants.may_publish(kind))
        {
            return Err(publish_denied(kind));
        }
        let (answer, producers) = self
            .ctx
            .rooms
            .publish(&m.room_id, &m.participant_id, r.sdp)
            .await?;
        let producers: Vec<Value> = producers
            .iter()
            .map(|(view, mid)| {
                let mut v = json!(ProducerInfo::from(view));
                v["mid"] = json!(mid);
                v
            })
            .collect();
        Ok((
            "publisherAnswer",
            json!({ "sdp": answer, "producers": producers }),
        ))
    }

    pub(super) async fn subscriber_answer(
        &mut self,
        identity: &Identity,
        r: SubscriberAnswer,
    ) -> Reply {
        if !identity.grants.subscribe {
            return Err(subscribe_denied());
        }
        let m = self.membership_in(r.room_id.as_deref())?;
        self.ctx
            .rooms
            .subscriber_answer(&m.room_id, &m.participant_id, r.sdp)
            .await?;
        Ok(("subscriberAnswerResponse", json!({})))
    }

    pub(super) async fn set_preferred_layer(
        &mut self,
        identity: &Identity,
        r: SetPreferredLayer,
    ) -> Reply {
        if !identity.grants.subscribe {
            return Err(subscribe_denied());
        }
        let m = self.membership_in(r.room_id.as_deref())?;
        let preference = match r.layer {
            LayerPreference::Auto => Preference::Auto,
            LayerPreference::Low => Preference::Fixed(0),
            LayerPreference::Medium => Preference::Fixed(1),
            LayerPreference::High => Preference::Fixed(2),
        };
        self.ctx
            .rooms
            .set_preference(&m.room_id, &m.participant_id, &r.producer_id, preference)
            .await?;
        Ok((
            "setPreferredLayerResponse",
            json!({ "producerId": r.producer_id, "layer": r.layer }),
        ))
    }
}
