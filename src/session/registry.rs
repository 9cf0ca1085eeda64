//! Every live session, so the server can address all clients (shutdown notice), and the
//! sessions a client may resume, by resume token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::protocol::OutboundEnvelope;
use super::sink::SessionSink;
use super::Session;

/// A session shared by the connections that carry it over its life (resume swaps them).
pub type SharedSession = Arc<tokio::sync::Mutex<Session>>;

#[derive(Default)]
pub struct SessionRegistry {
    sinks: Mutex<HashMap<Uuid, SessionSink>>,
    resumable: Mutex<HashMap<String, SharedSession>>,
}

impl SessionRegistry {
    pub fn register_resumable(&self, token: String, session: SharedSession) {
        self.resumable_lock().insert(token, session);
    }

    pub fn resumable(&self, token: &str) -> Option<SharedSession> {
        self.resumable_lock().get(token).cloned()
    }

    pub fn forget_resumable(&self, token: &str) {
        self.resumable_lock().remove(token);
    }

    fn resumable_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SharedSession>> {
        self.resumable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, sink: SessionSink) {
        self.lock().insert(sink.connection_id, sink);
    }

    pub fn unregister(&self, connection_id: Uuid) {
        self.lock().remove(&connection_id);
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Sessions with a live connection (excludes those waiting for a resume).
    pub fn attached_count(&self) -> usize {
        self.lock().values().filter(|s| s.is_attached()).count()
    }

    /// Bytes all sessions keep for a resume (`/status` `replayBytes`).
    pub fn replay_bytes(&self) -> usize {
        self.lock().values().map(SessionSink::replay_bytes).sum()
    }

    pub fn broadcast(&self, message: &OutboundEnvelope) {
        for sink in self.lock().values() {
            sink.send(message.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SessionSink>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }
}
