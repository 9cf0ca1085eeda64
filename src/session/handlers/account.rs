//! `authenticate`: a token becomes this connection's identity.

use serde_json::json;

use super::super::{random_token, Failure, Reply, Session};
use crate::audit::{AuditEvent, AuditKind};

impl Session {
    pub(in crate::session) fn authenticate(&mut self, token: String) -> Reply {
        match self.ctx.auth.verify(&token) {
            Ok(identity) => {
                tracing::info!(connection = %self.connection_id(), user = %identity.user.id, "authenticated");
                self.ctx.audit.record(
                    AuditEvent::new(AuditKind::AuthSucceeded)
                        .user(&identity.user.id)
                        .detail(json!({ "connectionId": self.connection_id() })),
                );
                let resume_token = random_token();
                let data = json!({
                    "connectionId": self.connection_id(),
                    "user": identity.user,
                    "resumeToken": resume_token,
                    "resumeGraceMs": self.ctx.settings.config.resume_grace_secs * 1000,
                });
                self.identity = Some(identity);
                self.sink.enable_replay();
                self.token = Some(token);
                self.resume_token = Some(resume_token);
                Ok(("connected", data))
            }
            Err(e) => {
                // Security event: always at warn, never with the token itself.
                tracing::warn!(connection = %self.connection_id(), code = ?e.code, reason = %e.message, "authentication failed");
                self.ctx
                    .audit
                    .record(AuditEvent::new(AuditKind::AuthFailed).detail(json!({
                        "connectionId": self.connection_id(),
                        "code": e.code,
                        "reason": e.message,
                    })));
                Err(Failure::new(e.code, e.message))
            }
        }
    }
}
