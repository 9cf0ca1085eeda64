//! Domain errors at the edge: every refusal of the layers below becomes a wire `ErrorCode`
//! here, and nowhere else (LiveKit's `pkg/service/errors.go`).

use serde_json::Value;

use super::protocol::ErrorCode;
use crate::auth::AuthErrorKind;
use crate::room::{RoomError, RoomErrorKind};

/// The wire code of a room refusal.
pub fn room_error_code(kind: RoomErrorKind) -> ErrorCode {
    match kind {
        RoomErrorKind::InvalidArgument => ErrorCode::InvalidPayload,
        RoomErrorKind::RoomNotFound => ErrorCode::RoomNotFound,
        RoomErrorKind::RoomExists => ErrorCode::RoomExists,
        RoomErrorKind::RoomFull => ErrorCode::RoomFull,
        RoomErrorKind::TooManyRooms | RoomErrorKind::TooManyRoomsForUser => ErrorCode::TooManyRooms,
        RoomErrorKind::NotInRoom => ErrorCode::NotInRoom,
        RoomErrorKind::ParticipantNotFound => ErrorCode::ParticipantNotFound,
        RoomErrorKind::AccessDenied => ErrorCode::RoomAccessDenied,
        RoomErrorKind::LookupFailed => ErrorCode::RoomLookupFailed,
        RoomErrorKind::OnOtherNode => ErrorCode::RoomOnOtherNode,
        RoomErrorKind::DirectoryUnavailable => ErrorCode::DirectoryUnavailable,
        RoomErrorKind::OwnerUnreachable => ErrorCode::OwnerUnreachable,
        RoomErrorKind::InvalidSdp => ErrorCode::InvalidSdp,
        RoomErrorKind::NoPendingOffer => ErrorCode::NoPendingOffer,
        RoomErrorKind::ProducerNotFound => ErrorCode::ProducerNotFound,
        RoomErrorKind::ConsumerNotFound => ErrorCode::ConsumerNotFound,
        RoomErrorKind::TransportNotFound => ErrorCode::TransportNotFound,
        RoomErrorKind::InvalidRtpParameters => ErrorCode::InvalidRtpParameters,
        RoomErrorKind::UnsupportedCodec => ErrorCode::UnsupportedCodec,
        RoomErrorKind::NotOwner => ErrorCode::AdminRequired,
        RoomErrorKind::Internal => ErrorCode::InternalError,
    }
}

/// The wire code of a token refusal.
impl From<AuthErrorKind> for ErrorCode {
    fn from(kind: AuthErrorKind) -> Self {
        match kind {
            AuthErrorKind::InvalidToken => ErrorCode::InvalidToken,
            AuthErrorKind::TokenSignatureInvalid => ErrorCode::TokenSignatureInvalid,
            AuthErrorKind::TokenUnsigned => ErrorCode::TokenUnsigned,
            AuthErrorKind::TokenAlgorithmNotAllowed => ErrorCode::TokenAlgorithmNotAllowed,
            AuthErrorKind::TokenExpired => ErrorCode::TokenExpired,
            AuthErrorKind::TokenNotYetValid => ErrorCode::TokenNotYetValid,
        }
    }
}

/// A refused request: code, human message, and optionally one extra `data` field.
#[derive(Debug)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<(&'static str, Value)>,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            detail: None,
        }
    }
}

impl From<RoomError> for Failure {
    fn from(e: RoomError) -> Self {
        Failure {
            code: room_error_code(e.kind),
            message: e.message,
            detail: e.detail,
        }
    }
}

impl From<(ErrorCode, String)> for Failure {
    fn from((code, message): (ErrorCode, String)) -> Self {
        Failure::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MediaError;

    #[test]
    fn a_missing_transport_is_the_clients_error_not_an_internal_one() {
        // `setPreferredLayer` after the subscriber transport timed out used to answer
        // INTERNAL_ERROR.
        let failure = Failure::from(RoomError::from(MediaError::TransportNotFound));
        assert_eq!(failure.code, ErrorCode::TransportNotFound);
        assert!(failure.message.contains("rejoin"), "{}", failure.message);
        let failure = Failure::from(RoomError::from(MediaError::WorkerGone));
        assert_eq!(failure.code, ErrorCode::InternalError);
    }
}
