//! Room lookup: `GET {base}{path}{room_id}/` with the participant's bearer token.

use super::*;

/// What Django knows about a room. Accepts `max_participants` or `maxParticipants`; other
/// fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoomMetadata {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, alias = "maxParticipants")]
    pub max_participants: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Network error, timeout, 5xx, 408 or 429: transient, Django may answer later.
    #[error("room service unavailable: {0}")]
    Unavailable(String),
    /// 401 or 403: the token may not see this room.
    #[error("room service denied access")]
    Denied,
    /// Unexpected status or a body that is not room metadata.
    #[error("room service sent a bad response: {0}")]
    BadResponse(String),
}

/// Client for Django's room metadata endpoint.
#[derive(Debug, Clone)]
pub struct RoomLookup {
    client: reqwest::Client,
    base_url: String,
    path: String,
}

impl RoomLookup {
    /// `base_url` like `http://django:8000` (a trailing `/` is fine); `path` like
    /// [`DEFAULT_ROOM_LOOKUP_PATH`] (empty means the default; leading and trailing `/` are
    /// added when missing); `timeout` bounds each lookup end to end.
    pub fn new(base_url: &str, path: &str, timeout: Duration) -> Self {
        let base_url = base_url.trim().trim_end_matches('/').to_string();
        let path = path.trim();
        let path = if path.is_empty() {
            DEFAULT_ROOM_LOOKUP_PATH
        } else {
            path
        };
        let path = format!("/{}/", path.trim_matches('/')).replace("//", "/");
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(user_agent())
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(
                    error = %error_chain(&e),
                    "room lookup HTTP client setup failed; using defaults"
                );
                reqwest::Client::new()
            });
        RoomLookup {
            client,
            base_url,
            path,
        }
    }

    /// The URL looked up for `room_id`: `{base_url}{path}{percent-encoded room_id}/`.
    pub fn url_for(&self, room_id: &str) -> String {
        format!(
            "{}{}{}/",
            self.base_url,
            self.path,
            percent_encode_segment(room_id)
        )
    }

    /// GET the room's metadata, forwarding `bearer_token` (omitted when empty). 200 →
    /// `Some`, 404 → `None`.
    pub async fn lookup(
        &self,
        room_id: &str,
        bearer_token: &str,
    ) -> Result<Option<RoomMetadata>, LookupError> {
        if room_id.is_empty() || room_id == "." || room_id == ".." {
            // These would collapse the path (even percent-encoded); never a valid room id.
            return Err(LookupError::BadResponse(format!(
                "invalid room id {room_id:?}"
            )));
        }
        let url = self.url_for(room_id);
        let mut request = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json");
        if !bearer_token.is_empty() {
            request = request.bearer_auth(bearer_token);
        }
        let result = Self::fetch(request).await;
        match &result {
            Ok(Some(_)) => tracing::debug!(room_id, "room metadata found"),
            Ok(None) => tracing::debug!(room_id, "room unknown to Django"),
            Err(LookupError::Denied) => tracing::debug!(room_id, "room lookup denied"),
            Err(e) => tracing::warn!(room_id, %url, error = %e, "room lookup failed"),
        }
        result
    }

    async fn fetch(request: reqwest::RequestBuilder) -> Result<Option<RoomMetadata>, LookupError> {
        let response = request.send().await.map_err(|e| {
            if e.is_builder() {
                LookupError::Unavailable(format!("invalid lookup URL: {}", error_chain(&e)))
            } else {
                LookupError::Unavailable(error_chain(&e))
            }
        })?;
        let status = response.status();
        match status.as_u16() {
            200 => {}
            404 => return Ok(None),
            401 | 403 => return Err(LookupError::Denied),
            408 | 429 | 500..=599 => {
                return Err(LookupError::Unavailable(format!("HTTP {status}")))
            }
            _ => {
                return Err(LookupError::BadResponse(format!(
                    "unexpected HTTP {status}"
                )))
            }
        }
        let (body, truncated) = read_limited(response, MAX_LOOKUP_BODY)
            .await
            .map_err(|e| LookupError::Unavailable(error_chain(&e)))?;
        if truncated {
            return Err(LookupError::BadResponse(format!(
                "body larger than {MAX_LOOKUP_BODY} bytes"
            )));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| LookupError::BadResponse(format!("invalid room metadata: {e}")))
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters, so the id stays one segment.
fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_urls() {
        let lookup = RoomLookup::new("http://h:8000/", "api/rooms", Duration::from_secs(1));
        assert_eq!(lookup.url_for("a-b_C9"), "http://h:8000/api/rooms/a-b_C9/");
        assert_eq!(
            lookup.url_for("a b/../é"),
            "http://h:8000/api/rooms/a%20b%2F..%2F%C3%A9/"
        );
        let lookup = RoomLookup::new("http://h", "", Duration::from_secs(1));
        assert_eq!(lookup.url_for("x"), "http://h/api/rooms/x/");
        let lookup = RoomLookup::new("http://h", "/", Duration::from_secs(1));
        assert_eq!(lookup.url_for("x"), "http://h/x/");
    }
}
