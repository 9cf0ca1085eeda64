//! The audit event record and its kinds.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What happened. Stored as snake_case text (`"room_created"`), see [`AuditKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    AuthSucceeded,
    AuthFailed,
    RoomCreated,
    RoomClosed,
    ParticipantJoined,
    /// Put the time in the room in `detail` (`{"duration_ms": …}`).
    ParticipantLeft,
    ProducerCreated,
    ProducerClosed,
    ConsumerCreated,
    ConsumerClosed,
    /// A rate or size limit refused something (`detail`: which limit, the peer).
    LimitTripped,
    /// A kick, a room closed by an admin, … (`detail`: the action and its target).
    AdminAction,
}

impl AuditKind {
    pub const ALL: [AuditKind; 12] = [
        AuditKind::AuthSucceeded,
        AuditKind::AuthFailed,
        AuditKind::RoomCreated,
        AuditKind::RoomClosed,
        AuditKind::ParticipantJoined,
        AuditKind::ParticipantLeft,
        AuditKind::ProducerCreated,
        AuditKind::ProducerClosed,
        AuditKind::ConsumerCreated,
        AuditKind::ConsumerClosed,
        AuditKind::LimitTripped,
        AuditKind::AdminAction,
    ];

    /// Kinds anyone can cause in bulk without authenticating (limit trips, failed logins).
    /// They are coalesced ([`super::AuditLog::record_coalesced`]), may take only a share of
    /// the intake and of the spill file, and are dropped first, so a flood of them never
    /// evicts the events that record what users did.
    pub fn is_noise(self) -> bool {
        matches!(self, AuditKind::LimitTripped | AuditKind::AuthFailed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::AuthSucceeded => "auth_succeeded",
            AuditKind::AuthFailed => "auth_failed",
            AuditKind::RoomCreated => "room_created",
            AuditKind::RoomClosed => "room_closed",
            AuditKind::ParticipantJoined => "participant_joined",
            AuditKind::ParticipantLeft => "participant_left",
            AuditKind::ProducerCreated => "producer_created",
            AuditKind::ProducerClosed => "producer_closed",
            AuditKind::ConsumerCreated => "consumer_created",
            AuditKind::ConsumerClosed => "consumer_closed",
            AuditKind::LimitTripped => "limit_tripped",
            AuditKind::AdminAction => "admin_action",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuditKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown audit event kind {s:?}"))
    }
}

/// One audit record. `id` is generated when the event is created and is the deduplication key
/// in the database, so a batch written twice (retry, spill replay) is stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: Uuid,
    /// When it happened (Unix time, milliseconds), not when it was written.
    pub at_unix_ms: i64,
    pub kind: AuditKind,
    pub room_id: Option<String>,
    pub participant_id: Option<String>,
    pub user_id: Option<String>,
    /// Free-form details (an object by default).
    pub detail: serde_json::Value,
}

impl AuditEvent {
    /// A new event stamped now, with a fresh id and an empty `detail` object.
    pub fn new(kind: AuditKind) -> Self {
        AuditEvent {
            id: Uuid::new_v4(),
            at_unix_ms: now_unix_ms(),
            kind,
            room_id: None,
            participant_id: None,
            user_id: None,
            detail: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn room(mut self, room_id: impl Into<String>) -> Self {
        self.room_id = Some(room_id.into());
        self
    }

    pub fn participant(mut self, participant_id: impl Into<String>) -> Self {
        self.participant_id = Some(participant_id.into());
        self
    }

    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Override the timestamp (imports, tests).
    pub fn at(mut self, at_unix_ms: i64) -> Self {
        self.at_unix_ms = at_unix_ms;
        self
    }

    /// PostgreSQL text and JSONB cannot hold NUL characters; an identifier or detail carrying
    /// one (client-supplied ids can) would make its whole batch fail forever. Replace them.
    pub(crate) fn sanitize(&mut self) {
        for field in [
            &mut self.room_id,
            &mut self.participant_id,
            &mut self.user_id,
        ]
        .into_iter()
        .flatten()
        {
            strip_nul(field);
        }
        sanitize_json(&mut self.detail);
    }
}

fn strip_nul(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
    }
}

fn sanitize_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => strip_nul(s),
        serde_json::Value::Array(items) => items.iter_mut().for_each(sanitize_json),
        serde_json::Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, v) in old {
                    strip_nul(&mut k);
                    map.insert(k, v);
                }
            }
            map.values_mut().for_each(sanitize_json);
        }
        _ => {}
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_as_snake_case() {
        for kind in AuditKind::ALL {
            assert_eq!(kind.as_str().parse::<AuditKind>().unwrap(), kind);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert!("nope".parse::<AuditKind>().is_err());
    }

    #[test]
    fn sanitize_replaces_nul_everywhere() {
        let mut e = AuditEvent::new(AuditKind::AuthFailed)
            .room("r\0")
            .detail(serde_json::json!({"k\0": ["a\0b", {"x": "\0"}]}));
        e.sanitize();
        assert_eq!(e.room_id.as_deref(), Some("r\u{FFFD}"));
        assert_eq!(
            e.detail,
            serde_json::json!({"k\u{FFFD}": ["a\u{FFFD}b", {"x": "\u{FFFD}"}]})
        );
    }
}
