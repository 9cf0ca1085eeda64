//! One admission policy for every way in — WebSocket, WebTransport, WHIP, WHEP: draining,
//! origin, the new-session rate and the per-client connection cap, and (for the HTTP entries,
//! whose one request is the whole session) the token's grants. Each entry calls [`admit`]
//! before it starts a session and maps a [`Refusal`] to its own wire form.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::StatusCode;

use crate::auth::Grants;
use crate::session::protocol::ErrorCode;
use crate::AppContext;

/// How a session arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    WebSocket,
    WebTransport,
    Whip,
    Whep,
}

impl Entry {
    pub fn name(self) -> &'static str {
        match self {
            Entry::WebSocket => "websocket",
            Entry::WebTransport => "webtransport",
            Entry::Whip => "whip",
            Entry::Whep => "whep",
        }
    }
}

/// Why a session was not admitted: the status and code every entry answers with.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    /// The wire code (an [`ErrorCode`], or `ORIGIN_NOT_ALLOWED` for a refused origin).
    pub code: serde_json::Value,
    pub message: String,
    /// Set for rate limits (`Retry-After`, `retryAfterMs`).
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// The JSON body HTTP entries answer with: `{error, code, retryAfterMs?}`.
    pub fn into_response(self) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut body = serde_json::json!({ "error": self.message, "code": self.code });
        match self.retry_after {
            Some(wait) => {
                body["retryAfterMs"] = (wait.as_millis() as u64).into();
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let retry = [(axum::http::header::RETRY_AFTER, secs.to_string())];
                (self.status, retry, axum::Json(body)).into_response()
            }
            None => (self.status, axum::Json(body)).into_response(),
        }
    }

    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code: serde_json::json!(code),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn shutting_down() -> Self {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServerShuttingDown,
            "the server is shutting down",
        )
    }

    pub fn rate_limited(retry_after: Duration, what: &str) -> Self {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        Refusal {
            retry_after: Some(retry_after),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("too many {what}; retry in {secs} s"),
            )
        }
    }
}

/// Where a session request comes from.
pub struct Caller<'a> {
    pub ip: IpAddr,
    /// The `Origin` header, if any (non-browser clients send none).
    pub origin: Option<&'a str>,
    /// The `Host` header or `:authority` the request reached us as.
    pub host: Option<&'a str>,
}

impl<'a> Caller<'a> {
    /// The caller of an HTTP request (WebSocket upgrade, WHIP, WHEP).
    pub fn from_http(peer: std::net::SocketAddr, headers: &'a axum::http::HeaderMap) -> Self {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        Caller {
            ip: peer.ip(),
            origin: header(axum::http::header::ORIGIN),
            host: header(axum::http::header::HOST),
        }
    }
}

/// May a new session start? Checked in this order by every entry: draining, origin, the
/// per-client rate of new sessions.
pub fn admit(ctx: &AppContext, entry: Entry, caller: &Caller) -> Result<(), Refusal> {
    if ctx.is_draining() {
        return Err(Refusal::shutting_down());
    }
    // WebTransport lives on another port of the page's host: compare hosts without ports.
    let ports_matter = entry != Entry::WebTransport;
    if !origin_allowed(&ctx.settings.allowed_origins, caller, ports_matter) {
        tracing::warn!(peer = %caller.ip, origin = ?caller.origin, entry = entry.name(), "origin refused");
        metrics::counter!("sfu_admission_refused_total", "reason" => "origin").increment(1);
        return Err(Refusal {
            code: "ORIGIN_NOT_ALLOWED".into(),
            ..Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::RoomAccessDenied,
                "origin not allowed",
            )
        });
    }
    ctx.limits
        .check_connection(caller.ip)
        .map_err(|retry_after| Refusal::rate_limited(retry_after, "new sessions"))
}

/// Grants an HTTP session needs beyond admission: the room, and publishing every kind the
/// WHIP offer sends or subscribing for WHEP.
pub fn authorize_http(
    entry: Entry,
    grants: &Grants,
    room: &str,
    sending_kinds: &[&str],
) -> Result<(), Refusal> {
    if entry == Entry::Whep && !grants.subscribe {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::SubscribeDenied,
            "this token may not subscribe",
        ));
    }
    if entry == Entry::Whip {
        if let Some(kind) = sending_kinds.iter().find(|k| !grants.may_publish(k)) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                ErrorCode::PublishDenied,
                format!("this token may not publish {kind}"),
            ));
        }
    }
    if !grants.may_join(room) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::RoomAccessDenied,
            format!("this token may not join room `{room}`"),
        ));
    }
    Ok(())
}

/// Room-admin rights reach only the rooms the token may join (all of them for `"*"`).
pub fn is_room_admin(grants: &Grants, room: &str) -> bool {
    grants.room_admin && grants.may_join(room)
}

/// Browsers always send `Origin` and it must be allowed (cross-site WebSocket hijacking);
/// clients without one are allowed. Same origin means the Origin's host (and port, when
/// `ports_matter`) equals the Host we were reached as, compared exactly after parsing.
pub fn origin_allowed(allowed: &[String], caller: &Caller, ports_matter: bool) -> bool {
    let Some(origin) = caller.origin else {
        return true;
    };
    if allowed.iter().any(|a| a == "*" || a == origin) {
        return true;
    }
    caller
        .host
        .is_some_and(|host| same_origin(origin, host, ports_matter))
}

/// `origin` (a serialized origin: scheme://host[:port]) names `host` (a Host header value).
pub fn same_origin(origin: &str, host: &str, ports_matter: bool) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https")
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || !url.username().is_empty()
    {
        return false;
    }
    let Some(origin_host) = url.host_str() else {
        return false;
    };
    // Parse the Host header the same way, with the Origin's scheme for its default port.
    let Ok(host_url) = url::Url::parse(&format!("{}://{host}", url.scheme())) else {
        return false;
    };
    if !matches!(host_url.path(), "" | "/") || !host_url.username().is_empty() {
        return false;
    }
    let hosts_match = host_url
        .host_str()
        .is_some_and(|h| h.eq_ignore_ascii_case(origin_host));
    hosts_match
        && (!ports_matter || host_url.port_or_known_default() == url.port_or_known_default())
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn same_origin_compares_host_and_port_exactly() {
        assert!(same_origin("http://127.0.0.1:3000", "127.0.0.1:3000", true));
        assert!(same_origin(
            "https://sfu.example.com",
            "sfu.example.com",
            true
        ));
        assert!(same_origin(
            "https://SFU.example.com",
            "sfu.example.com:443",
            true
        ));
        assert!(same_origin("http://[::1]:3000", "[::1]:3000", true));
        assert!(!same_origin(
            "http://127.0.0.1:3001",
            "127.0.0.1:3000",
            true
        ));
        assert!(!same_origin(
            "https://sfu.example.com",
            "sfu.example.com:80",
            true
        ));
    }

    #[test]
    fn suffix_and_path_tricks_do_not_pass() {
        let host = "sfu.example.com";
        assert!(!same_origin(
            "http://evil.example//sfu.example.com",
            host,
            true
        ));
        assert!(!same_origin(
            "http://evil.example//sfu.example.com",
            host,
            false
        ));
        assert!(!same_origin("https://evilsfu.example.com", host, true));
        assert!(!same_origin(
            "https://sfu.example.com.evil.example",
            host,
            true
        ));
        assert!(!same_origin(
            "https://sfu.example.com@evil.example",
            host,
            true
        ));
        assert!(!same_origin("null", host, true));
        assert!(!same_origin("file:///sfu.example.com", host, true));
        assert!(!same_origin(
            "https://sfu.example.com",
            "sfu.example.com/x",
            true
        ));
    }

    #[test]
    fn webtransport_ignores_ports_only() {
        assert!(same_origin(
            "http://127.0.0.1:3000",
            "127.0.0.1:3001",
            false
        ));
        assert!(same_origin(
            "https://sfu.example.com",
            "sfu.example.com:3001",
            false
        ));
        assert!(!same_origin(
            "https://evil.example",
            "sfu.example.com:3001",
            false
        ));
    }
}
