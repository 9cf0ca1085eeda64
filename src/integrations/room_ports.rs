//! Django as the room layer sees it: a webhook observer of room events, and a catalog of
//! rooms defined there.

use futures_util::future::BoxFuture;

use super::django::{LookupError as DjangoLookupError, RoomLookup, WebhookEvent, Webhooks};
use crate::media::ortc::kind_str;
use crate::room::ports::{CatalogRoom, LookupError, RoomCatalog};
use crate::room::{EventSink, RoomEvent};

impl EventSink for Webhooks {
    fn record(&self, event: &RoomEvent) {
        if let Some(webhook) = webhook_for(event) {
            self.notify(webhook);
        }
    }
}

/// The webhook a room event triggers; Django hears about rooms, participants and producers
/// coming, and rooms and participants going.
fn webhook_for(event: &RoomEvent) -> Option<WebhookEvent> {
    Some(match event {
        RoomEvent::RoomCreated { room_id, name, .. } => WebhookEvent::RoomStarted {
            room_id: room_id.clone(),
            name: name.clone(),
        },
        RoomEvent::RoomClosed { room_id, lifetime } => WebhookEvent::RoomFinished {
            room_id: room_id.clone(),
            duration_seconds: lifetime.as_secs(),
        },
        RoomEvent::ParticipantJoined {
            room_id,
            participant_id,
            user_id,
            display_name,
        } => WebhookEvent::ParticipantJoined {
            room_id: room_id.clone(),
            participant_id: participant_id.clone(),
            user_id: user_id.clone(),
            display_name: display_name.clone(),
        },
        RoomEvent::ParticipantLeft {
            room_id,
            participant_id,
            user_id,
            stayed,
        } => WebhookEvent::ParticipantLeft {
            room_id: room_id.clone(),
            participant_id: participant_id.clone(),
            user_id: user_id.clone(),
            duration_seconds: stayed.as_secs(),
        },
        RoomEvent::ProducerCreated {
            room_id,
            participant_id,
            producer_id,
            kind,
            ..
        } => WebhookEvent::ProducerPublished {
            room_id: room_id.clone(),
            participant_id: participant_id.clone(),
            producer_id: producer_id.to_string(),
            kind: kind_str(*kind).to_string(),
        },
        RoomEvent::ProducerClosed { .. }
        | RoomEvent::ConsumerCreated { .. }
        | RoomEvent::ConsumerClosed { .. } => return None,
    })
}

impl RoomCatalog for RoomLookup {
    fn lookup<'a>(
        &'a self,
        room_id: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<CatalogRoom>, LookupError>> {
        Box::pin(async move {
            match RoomLookup::lookup(self, room_id, token).await {
                Ok(Some(meta)) => Ok(Some(CatalogRoom {
                    name: meta.name,
                    description: meta.description,
                    max_participants: meta.max_participants,
                })),
                Ok(None) => Ok(None),
                Err(DjangoLookupError::Denied) => Err(LookupError::Denied),
                Err(e) => Err(LookupError::Failed(e.to_string())),
            }
        })
    }
}
