//! `authenticate`: a token becomes this connection's identity; sent again with a fresh token
//! of the same user, it refreshes the session before its token expires.

use serde_json::json;

use super::super::protocol::ErrorCode;
use super::super::{random_token, Failure, Reply, Session};
use crate::audit::{AuditEvent, AuditKind};
use crate::auth::{unix_now, Identity};

/// Seconds a token is honoured past its `exp`, as the verifier's leeway.
pub(in crate::session) const EXPIRY_LEEWAY_SECS: u64 = 5;

impl Session {
    pub(in crate::session) fn authenticate(&mut self, token: String) -> Reply {
        let identity = self.verify_token(&token)?;
        if let Some(current) = &self.identity {
            if current.user.id != identity.user.id {
                return Err(Failure::new(
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is authenticated as another user",
                ));
            }
            tracing::info!(connection = %self.connection_id(), user = %identity.user.id, "token refreshed");
        } else {
            tracing::info!(connection = %self.connection_id(), user = %identity.user.id, "authenticated");
            self.ctx.audit.record(
                AuditEvent::new(AuditKind::AuthSucceeded)
                    .user(&identity.user.id)
                    .detail(json!({ "connectionId": self.connection_id() })),
            );
        }
        let resume_token = self.resume_token.clone().unwrap_or_else(random_token);
        let data = json!({
            "connectionId": self.connection_id(),
            "user": identity.user,
            "resumeToken": resume_token,
            "resumeGraceMs": self.ctx.settings.config.resume_grace_secs * 1000,
            "expiresAt": identity.expires_at,
        });
        self.identity = Some(identity);
        self.token = Some(token);
        self.resume_token = Some(resume_token);
        self.sink.enable_replay();
        Ok(("connected", data))
    }

    /// Verify a token; a refusal is audited (coalesced per connection: a client retrying
    /// in a loop writes one row and one warn line per window).
    pub(in crate::session) fn verify_token(&mut self, token: &str) -> Result<Identity, Failure> {
        let verified = self.ctx.auth.verify(token);
        if verified.is_err() {
            self.auth_failures += 1;
        }
        let first_failure = self.auth_failures == 1;
        verified.map_err(|e| {
            let code = ErrorCode::from(e.kind);
            let key = format!("auth:{}", self.connection_id());
            if first_failure {
                // Security event: at warn, never with the token itself.
                tracing::warn!(connection = %self.connection_id(), ?code, reason = %e.message, "authentication failed");
            }
            self.ctx.audit.record_coalesced(
                AuditEvent::new(AuditKind::AuthFailed).detail(json!({
                    "connectionId": self.connection_id(),
                    "code": code,
                    "reason": e.message,
                })),
                &key,
            );
            Failure::new(code, e.message)
        })
    }

    /// Unix second after which this session's token no longer counts.
    pub fn token_deadline(&self) -> Option<u64> {
        self.identity
            .as_ref()
            .and_then(|i| i.expires_at)
            .map(|exp| exp + EXPIRY_LEEWAY_SECS)
    }

    /// Whether the token expired without being refreshed.
    pub(in crate::session) fn token_expired(&self) -> bool {
        self.token_deadline().is_some_and(|d| unix_now() > d)
    }
}
