//! The audit log as an observer of rooms: one row per room event.

use serde_json::{json, Value};

use super::{AuditEvent, AuditKind, AuditLog};
use crate::media::ortc::kind_str;
use crate::media::ProducerId;
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
        } => member_row(AuditKind::ParticipantJoined, room_id, participant_id)
            .user(user_id)
            .detail(json!({ "displayName": display_name })),
        RoomEvent::ParticipantLeft {
            room_id,
            participant_id,
            user_id,
            stayed,
        } => member_row(AuditKind::ParticipantLeft, room_id, participant_id)
            .user(user_id)
            .detail(json!({ "duration_ms": stayed.as_millis() as u64 })),
        RoomEvent::ProducerCreated {
            room_id,
            participant_id,
            producer_id,
            kind,
            layers,
        } => member_row(AuditKind::ProducerCreated, room_id, participant_id).detail(json!({
            "producerId": producer_id.to_string(),
            "kind": kind_str(*kind),
            "layers": layers,
        })),
        RoomEvent::ProducerClosed {
            room_id,
            participant_id,
            producer_id,
            reason,
        } => member_row(AuditKind::ProducerClosed, room_id, participant_id)
            .detail(producer_closed_detail(producer_id, reason.as_deref())),
        RoomEvent::ConsumerCreated {
            room_id,
            participant_id,
            producer_id,
            origin,
        } => member_row(AuditKind::ConsumerCreated, room_id, participant_id)
            .detail(consumer_created_detail(producer_id, origin)),
        RoomEvent::ConsumerClosed {
            room_id,
            participant_id,
            producer_id,
        } => member_row(AuditKind::ConsumerClosed, room_id, participant_id)
            .detail(producer_detail(producer_id)),
    }
}

/// A row about one participant of one room.
fn member_row(kind: AuditKind, room_id: &str, participant_id: &str) -> AuditEvent {
    AuditEvent::new(kind)
        .room(room_id)
        .participant(participant_id)
}

fn producer_detail(producer_id: &ProducerId) -> Value {
    json!({ "producerId": producer_id.to_string() })
}

fn producer_closed_detail(producer_id: &ProducerId, reason: Option<&str>) -> Value {
    let mut detail = producer_detail(producer_id);
    if let Some(reason) = reason {
        detail["reason"] = json!(reason);
    }
    detail
}

fn consumer_created_detail(producer_id: &ProducerId, origin: &ConsumerOrigin) -> Value {
    let mut detail = producer_detail(producer_id);
    match origin {
        ConsumerOrigin::Automatic => {}
        ConsumerOrigin::Consume { consumer_id } => detail["consumerId"] = json!(consumer_id),
        ConsumerOrigin::Whep => detail["via"] = json!("whep"),
    }
    detail
}
