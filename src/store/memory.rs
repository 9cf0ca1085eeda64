//! The single-node directory: every room lives here, nothing to remember elsewhere.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::room::ports::{
    Claim, Directory, DirectoryError, DirectoryHealth, Placement, RoomDefinition,
};

/// Used without REDIS_URL. The room map itself is the truth; this only says "here".
pub struct LocalDirectory;

impl Directory for LocalDirectory {
    fn claim(&self, _room: RoomDefinition) -> BoxFuture<'_, Result<Claim, DirectoryError>> {
        Box::pin(async { Ok(Claim::Here { url: None }) })
    }

    fn locate<'a>(&'a self, _room_id: &'a str) -> BoxFuture<'a, Result<Placement, DirectoryError>> {
        Box::pin(async { Ok(Placement::Unknown) })
    }

    fn participant_joined(&self, _room_id: &str, _participant_id: &str) {}

    fn participant_left(&self, _room_id: &str, _participant_id: &str) {}

    fn release(&self, _room_id: &str) {}

    fn health(&self) -> BoxFuture<'_, DirectoryHealth> {
        Box::pin(async {
            DirectoryHealth {
                kind: "memory",
                node_id: None,
                latency: Ok(Duration::ZERO),
            }
        })
    }
}
