//! Domain errors of the room layer. They say what went wrong in the model's terms; the
//! session layer maps each kind to a wire `ErrorCode` (and transports to an HTTP status).

use crate::media::MediaError;

use super::ports::{DirectoryError, LookupError};

/// Why the room layer refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomErrorKind {
    /// A field of the request is out of range (names, lengths, duplicate transports).
    InvalidArgument,
    RoomNotFound,
    RoomExists,
    RoomFull,
    /// This node holds its maximum number of rooms.
    TooManyRooms,
    /// This user holds its maximum number of rooms.
    TooManyRoomsForUser,
    NotInRoom,
    ParticipantNotFound,
    /// The room catalog (Django) denied the room to this token.
    AccessDenied,
    /// The room catalog (Django) could not be asked.
    LookupFailed,
    /// The room lives on another node (`detail` carries its URL).
    OnOtherNode,
    /// The cross-node directory could not be reached.
    DirectoryUnavailable,
    /// The node owning a room this node would relay did not answer (it may have just died:
    /// joining again shortly finds the room taken over).
    OwnerUnreachable,
    InvalidSdp,
    NoPendingOffer,
    ProducerNotFound,
    ConsumerNotFound,
    TransportNotFound,
    InvalidRtpParameters,
    UnsupportedCodec,
    /// Only the session's owner or a room admin may do this.
    NotOwner,
    /// A media worker did not answer: not the client's fault.
    Internal,
}

/// A refused request: its kind, a human message, and optionally one machine-readable extra.
#[derive(Debug, Clone)]
pub struct RoomError {
    pub kind: RoomErrorKind,
    pub message: String,
    /// An extra field for the error's `data` (e.g. `nodeUrl`).
    pub detail: Option<(&'static str, serde_json::Value)>,
}

impl RoomError {
    pub fn new(kind: RoomErrorKind, message: impl Into<String>) -> Self {
        RoomError {
            kind,
            message: message.into(),
            detail: None,
        }
    }

    pub(crate) fn room_not_found(room_id: &str) -> Self {
        Self::new(
            RoomErrorKind::RoomNotFound,
            format!("room `{room_id}` does not exist"),
        )
    }

    pub(crate) fn room_exists(room_id: &str) -> Self {
        Self::new(
            RoomErrorKind::RoomExists,
            format!("room `{room_id}` already exists"),
        )
    }

    pub(crate) fn not_in_room() -> Self {
        Self::new(RoomErrorKind::NotInRoom, "not a participant of this room")
    }

    pub(crate) fn transport_not_found() -> Self {
        Self::new(
            RoomErrorKind::TransportNotFound,
            "no such transport for this participant (create it with createWebRtcTransport)",
        )
    }

    pub(crate) fn consumer_not_found() -> Self {
        Self::new(RoomErrorKind::ConsumerNotFound, "no such consumer")
    }
}

impl std::fmt::Display for RoomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RoomError {}

impl From<DirectoryError> for RoomError {
    fn from(e: DirectoryError) -> Self {
        tracing::warn!(error = %e, "room directory unavailable");
        RoomError::new(
            RoomErrorKind::DirectoryUnavailable,
            "the room directory is unavailable; try again shortly",
        )
    }
}

impl From<LookupError> for RoomError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::Denied => RoomError::new(
                RoomErrorKind::AccessDenied,
                "the room service denied access to this room",
            ),
            LookupError::Failed(why) => RoomError::new(
                RoomErrorKind::LookupFailed,
                format!("room lookup failed: {why}"),
            ),
        }
    }
}

impl From<MediaError> for RoomError {
    fn from(e: MediaError) -> Self {
        let kind =
            match e {
                MediaError::InvalidSdp(_) => RoomErrorKind::InvalidSdp,
                MediaError::NoPendingOffer => RoomErrorKind::NoPendingOffer,
                MediaError::ProducerNotFound => RoomErrorKind::ProducerNotFound,
                MediaError::InvalidParameters(_) => RoomErrorKind::InvalidRtpParameters,
                MediaError::UnsupportedCodec(_) => RoomErrorKind::UnsupportedCodec,
                // The participant's transport is gone (closed by ICE timeout, or never made): the
                // client's state is stale, not the server's fault.
                MediaError::TransportNotFound => return RoomError::new(
                    RoomErrorKind::TransportNotFound,
                    "this participant's media transport is gone (it closed or never connected); \
                     rejoin the room",
                ),
                MediaError::WorkerGone => RoomErrorKind::Internal,
            };
        RoomError::new(kind, e.to_string())
    }
}
