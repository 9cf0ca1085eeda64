//! `GET /audit?room=…&limit=…`: the read side for admins. Mount it behind the admin check,
//! e.g. `get(|q: Query<AuditQuery>| async move { if !is_admin { 403 } else { list(&log, q.0).await } })`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::AuditLog;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest `limit` accepted over HTTP.
pub const MAX_LIMIT: u32 = 1000;

/// Query string of `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditQuery {
    /// Only this room's events (all rooms when absent).
    pub room: Option<String>,
    /// How many, newest first (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// `200 {"events": [...], "room": ..., "limit": n}` newest first, or `503` with
/// `{"error", "code": "AUDIT_UNAVAILABLE"}` when the database cannot be read.
pub async fn list(log: &AuditLog, query: AuditQuery) -> Response {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let room = query.room.as_deref().filter(|r| !r.is_empty());
    match log.query(room, limit).await {
        Ok(events) => {
            Json(json!({ "events": events, "room": room, "limit": limit })).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "audit query failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": "the audit database is unavailable",
                    "code": "AUDIT_UNAVAILABLE",
                })),
            )
                .into_response()
        }
    }
}
