//! ICE servers handed to clients (a leaf: config resolves the settings, the session and
//! WHIP/WHEP hand them out): the configured TURN URIs with time-limited credentials by
//! the TURN REST API scheme (coturn `use-auth-secret`): username `<expiry unix>:<userId>`,
//! credential base64(HMAC-SHA1(secret, username)). coturn recomputes the credential from
//! its `static-auth-secret` and refuses it once the expiry has passed, so nothing is shared
//! but the secret.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

/// TURN settings resolved from TURN_URLS, TURN_SECRET and TURN_CREDENTIAL_TTL_SECS.
#[derive(Clone)]
pub struct TurnSettings {
    pub urls: Vec<String>,
    pub secret: String,
    pub ttl_secs: u64,
}

// The secret stays out of logs and panics that print the settings.
impl std::fmt::Debug for TurnSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnSettings")
            .field("urls", &self.urls)
            .field("secret", &"<redacted>")
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// One user's TURN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub username: String,
    pub credential: String,
}

/// Credentials valid until `expiry_unix` (seconds) for `user_id`. The user id is reduced to
/// `[A-Za-z0-9._@-]` (other characters become `_`, at most 64) so the username is a plain
/// token in JSON and in a `Link` header's quoted-string alike.
pub fn credentials(secret: &str, user_id: &str, expiry_unix: u64) -> TurnCredentials {
    let user: String = user_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let username = format!("{expiry_unix}:{user}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials {
        username,
        credential,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TurnSettings {
    /// TURN_URLS split and checked (`turn:`/`turns:` only), with a secret of 16+ characters
    /// and a TTL of 60 s to 7 days. None when no URI is given. The error is for an operator.
    pub fn resolve(
        urls: Option<&str>,
        secret: Option<&str>,
        ttl_secs: u64,
    ) -> Result<Option<TurnSettings>, String> {
        let urls: Vec<String> = urls
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        if urls.is_empty() {
            return Ok(None);
        }
        // Characters that would break out of a Link header's <URI-Reference> are refused too.
        let bad = |u: &&String| {
            !(u.starts_with("turn:") || u.starts_with("turns:"))
                || u.contains(['"', '<', '>', ' ', ','])
                || u.chars().any(|c| c.is_control() || !c.is_ascii())
        };
        if let Some(url) = urls.iter().find(bad) {
            return Err(format!(
                "TURN_URLS: `{url}` is not a TURN URI (turn:host[:port][?transport=udp|tcp] or turns:...)"
            ));
        }
        let secret = match secret {
            None => return Err("TURN_URLS is set but TURN_SECRET is missing".into()),
            Some(s) if s.len() < 16 => {
                return Err("TURN_SECRET must be at least 16 characters".into())
            }
            Some(s) => s.to_string(),
        };
        if !(60..=7 * 24 * 3600).contains(&ttl_secs) {
            return Err(format!(
                "TURN_CREDENTIAL_TTL_SECS must be between 60 and 604800 (7 days), got {ttl_secs}"
            ));
        }
        Ok(Some(TurnSettings {
            urls,
            secret,
            ttl_secs,
        }))
    }

    /// Credentials for `user_id`, valid for the configured TTL from now.
    pub fn credentials_for(&self, user_id: &str) -> TurnCredentials {
        credentials(&self.secret, user_id, unix_now() + self.ttl_secs)
    }
}

/// `iceServers` for `RTCPeerConnection` (joinRoomResponse, createWebRtcTransportResponse):
/// one entry with every URI; None when no TURN server is configured.
pub fn ice_servers_json(turn: Option<&TurnSettings>, user_id: &str) -> Option<Value> {
    let turn = turn?;
    let c = turn.credentials_for(user_id);
    Some(json!([{
        "urls": turn.urls,
        "username": c.username,
        "credential": c.credential,
    }]))
}

/// WHIP/WHEP `Link` header values (RFC 9725 §4.6), one per URI; empty without TURN.
pub fn link_headers(turn: Option<&TurnSettings>, user_id: &str) -> Vec<String> {
    let Some(turn) = turn else {
        return Vec::new();
    };
    let c = turn.credentials_for(user_id);
    turn.urls
        .iter()
        .map(|url| {
            format!(
                "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                c.username, c.credential
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_an_independent_hmac_sha1() {
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(
        //   b"0123456789abcdef",b"1700000000:alice",hashlib.sha1).digest()).decode())'
        let c = credentials("0123456789abcdef", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.credential, "QmpguVhgm8LJZp0MkvqhyKEkXps=");
    }

    #[test]
    fn user_ids_are_reduced_to_a_header_safe_token() {
        let c = credentials("0123456789abcdef", "a\"b c:é\r\n", 1);
        assert_eq!(c.username, "1:a_b_c____");
        let long = "x".repeat(200);
        assert_eq!(credentials("s", &long, 1).username.len(), 2 + 64);
    }

    #[test]
    fn resolve_refuses_what_would_break_a_header_and_odd_lifetimes() {
        let secret = Some("0123456789abcdef");
        for url in [
            "turn:a b",
            "turn:a\"b",
            "turn:<x>",
            "turn:é.example",
            "http://x",
        ] {
            let err = TurnSettings::resolve(Some(url), secret, 3600).unwrap_err();
            assert!(err.contains("not a TURN URI"), "{url}: {err}");
        }
        let err = TurnSettings::resolve(Some("turn:a"), secret, 5).unwrap_err();
        assert!(err.contains("TURN_CREDENTIAL_TTL_SECS"), "{err}");
        assert!(TurnSettings::resolve(Some("turns:a:443"), secret, 60)
            .unwrap()
            .is_some());
    }

    #[test]
    fn nothing_is_announced_without_turn() {
        assert!(ice_servers_json(None, "alice").is_none());
        assert!(link_headers(None, "alice").is_empty());
    }

    #[test]
    fn links_carry_each_uri_and_the_credentials() {
        let turn = TurnSettings {
            urls: vec![
                "turn:127.0.0.1:3478?transport=udp".into(),
                "turns:t.example:443?transport=tcp".into(),
            ],
            secret: "0123456789abcdef".into(),
            ttl_secs: 600,
        };
        let links = link_headers(Some(&turn), "bob");
        assert_eq!(links.len(), 2);
        assert!(links[0]
            .starts_with("<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\"; username=\""));
        assert!(
            links[1].ends_with("; credential-type=\"password\""),
            "{}",
            links[1]
        );
        let json = ice_servers_json(Some(&turn), "bob").unwrap();
        let user = json[0]["username"].as_str().unwrap();
        let (expiry, id) = user.split_once(':').unwrap();
        assert_eq!(id, "bob");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry >= unix_now() + 590 && expiry <= unix_now() + 600);
        assert_eq!(
            json[0]["credential"],
            credentials(&turn.secret, "bob", expiry).credential
        );
        assert_eq!(json[0]["urls"][1], "turns:t.example:443?transport=tcp");
    }
}
