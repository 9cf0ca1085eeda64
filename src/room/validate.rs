//! Checks of what clients ask the room for: names, ids, sizes, capacity.

use uuid::Uuid;

use super::lifecycle::RoomSpec;
use super::model::{Room, RoomSummary};
use super::{RoomError, RoomErrorKind};

/// Default and upper bound for `maxParticipants`.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 50;
pub const MAX_PARTICIPANTS_LIMIT: u32 = 1000;

fn invalid(message: impl Into<String>) -> RoomError {
    RoomError::new(RoomErrorKind::InvalidArgument, message)
}

/// Check a room's parameters and fill in defaults (a UUID when no id is given).
pub(super) fn validate_room(spec: RoomSpec) -> Result<RoomSummary, RoomError> {
    let name = spec.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(invalid("`name` must be 1 to 128 characters"));
    }
    if spec
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 1024)
    {
        return Err(invalid("`description` must be at most 1024 characters"));
    }
    let max_participants = spec.max_participants.unwrap_or(DEFAULT_MAX_PARTICIPANTS);
    if !(1..=MAX_PARTICIPANTS_LIMIT).contains(&max_participants) {
        return Err(invalid(format!(
            "`maxParticipants` must be between 1 and {MAX_PARTICIPANTS_LIMIT}"
        )));
    }
    let room_id = match spec.room_id {
        Some(id) if valid_room_id(&id) => id,
        Some(_) => return Err(invalid("`roomId` must match [A-Za-z0-9_-]{1,64}")),
        None => Uuid::new_v4().to_string(),
    };
    Ok(RoomSummary {
        room_id,
        name,
        description: spec.description,
        max_participants,
        node_url: None,
    })
}

/// The display name, trimmed, if it is 1 to 64 characters.
pub(super) fn check_display_name(name: &str) -> Result<String, RoomError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(invalid("`displayName` must be 1 to 64 characters"));
    }
    Ok(name.to_string())
}

pub(super) fn check_capacity(room: &Room) -> Result<(), RoomError> {
    if room.closing {
        // A relayed room closes when its owner is lost; joining again finds its new home.
        let (kind, message) = match room.relay {
            Some(_) => (
                RoomErrorKind::OwnerUnreachable,
                "the room's owner node was lost; join again shortly",
            ),
            None => (RoomErrorKind::RoomNotFound, "the room is closing"),
        };
        return Err(RoomError::new(kind, message));
    }
    if room.participants.len() >= room.summary.max_participants as usize {
        return Err(RoomError::new(
            RoomErrorKind::RoomFull,
            format!(
                "room is full ({} participants)",
                room.summary.max_participants
            ),
        ));
    }
    Ok(())
}

pub fn valid_room_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Media kinds an SDP offer wants to send (m-sections that are sendonly or sendrecv).
pub fn sdp_sending_kinds(sdp: &str) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut current: Option<(&'static str, bool)> = None;
    let flush = |section: Option<(&'static str, bool)>, kinds: &mut Vec<&'static str>| {
        if let Some((kind, true)) = section {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    };
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            flush(current.take(), &mut kinds);
            let kind = if media.starts_with("audio") {
                Some("audio")
            } else if media.starts_with("video") {
                Some("video")
            } else {
                None
            };
            // Direction defaults to sendrecv when the section has no attribute.
            current = kind.map(|k| (k, true));
        } else if let Some((kind, _)) = current {
            match line {
                "a=recvonly" | "a=inactive" => current = Some((kind, false)),
                "a=sendonly" | "a=sendrecv" => current = Some((kind, true)),
                _ => {}
            }
        }
    }
    flush(current, &mut kinds);
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_kinds_follow_direction_attributes() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(sdp_sending_kinds(sdp), vec!["audio"]);
        assert_eq!(sdp_sending_kinds("m=video 9 X 96\r\n"), vec!["video"]);
    }

    #[test]
    fn room_ids_are_bounded_and_plain() {
        assert!(valid_room_id("room-1_A"));
        assert!(!valid_room_id(""));
        assert!(!valid_room_id(&"a".repeat(65)));
        assert!(!valid_room_id("a b"));
    }
}
