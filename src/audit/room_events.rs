//! The audit log as an observer of rooms: one row per room event.

use serde_json::json;

use super::{AuditEvent, AuditKind, AuditLog};
use crate::media::ortc::kind_str;
use crate::room::{ConsumerOrigin, EventSink, RoomEvent};

impl EventSink for AuditLog {
    fn record(&self, event: &RoomEvent) {
        AuditLog::record(self, audit_row(event));
    }
}

fn audit_row(event: &RoomEvent) -> AuditEvent {
    match event {
        RoomEvent::RoomCreated {
            room_id,
            name,
            max_participants,
        } => AuditEvent::new(AuditKind::RoomCreated)
            .room(room_id)
            .detail(json!({ "name": name, "maxParticipants": max_participants })),
        RoomEvent::RoomClosed { room_id, lifetime } => AuditEvent::new(AuditKind::RoomClosed)
            .room(room_id)
            .detail(json!({ "duration_ms": lifetime.as_millis() as u64 })),
        RoomEvent::ParticipantJoined {
            room_id,
            participant_id,
            user_id,
            display_name,
        } => AuditEvent::new(AuditKind::ParticipantJoined)
            .room(room_id)
            .participant(participant_id)
            .user(user_id)
            .detail(json!({ "displayName": display_name })),
        RoomEvent::ParticipantLeft {
            room_id,
            participant_id,
            user_id,
            stayed,
        } => AuditEvent::new(AuditKind::ParticipantLeft)
            .room(room_id)
            .participant(participant_id)
            .user(user_id)
            .detail(json!({ "duration_ms": stayed.as_millis() as u64 })),
        RoomEvent::ProducerCreated {
            room_id,
            participant_id,
            producer_id,
            kind,
            layers,
        } => AuditEvent::new(AuditKind::ProducerCreated)
            .room(room_id)
            .participant(participant_id)
            .detail(json!({
                "producerId": producer_id.to_string(),
                "kind": kind_str(*kind),
                "layers": layers,
            })),
        RoomEvent::ProducerClosed {
            room_id,
            participant_id,
            producer_id,
            reason,
        } => {
            let mut detail = json!({ "producerId": producer_id.to_string() });
            if let Some(reason) = reason {
                detail["reason"] = json!(reason);
            }
            AuditEvent::new(AuditKind::ProducerClosed)
                .room(room_id)
                .participant(participant_id)
                .detail(detail)
        }
        RoomEvent::ConsumerCreated {
            room_id,
            participant_id,
            producer_id,
            origin,
        } => {
            let mut detail = json!({ "producerId": producer_id.to_string() });
            match origin {
                ConsumerOrigin::Automatic => {}
                ConsumerOrigin::Consume { consumer_id } => {
                    detail["consumerId"] = json!(consumer_id)
                }
                ConsumerOrigin::Whep => detail["via"] = json!("whep"),
            }
            AuditEvent::new(AuditKind::ConsumerCreated)
                .room(room_id)
                .participant(participant_id)
                .detail(detail)
        }
        RoomEvent::ConsumerClosed {
            room_id,
            participant_id,
            producer_id,
        } => AuditEvent::new(AuditKind::ConsumerClosed)
            .room(room_id)
            .participant(participant_id)
            .detail(json!({ "producerId": producer_id.to_string() })),
    }
}
