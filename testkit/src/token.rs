//! HS256 tokens with the claims the server reads (djangorestframework-simplejwt's plus the
//! optional user details and grants), signed here with `jsonwebtoken` directly so that clients
//! need nothing from the server crate.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;

/// The HS256 secret every test server uses.
pub const SECRET: &str = "integration-test-secret";

/// What a token allows (absent: the server's defaults for the role).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    /// Room ids this token may join; `"*"` means any.
    pub rooms: Vec<String>,
    pub create_room: bool,
    /// Media kinds this token may publish (`"audio"`, `"video"`).
    pub publish: Vec<String>,
    pub subscribe: bool,
    pub room_admin: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Claims {
    /// A number or a string, depending on the Django user model.
    pub user_id: Value,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Claims {
    /// A participant `user` (also its full name) valid for `ttl_secs` from now, with a fresh
    /// `jti` and no explicit grants.
    pub fn participant(user: &str, ttl_secs: u64) -> Self {
        let now = unix_now();
        Claims {
            user_id: Value::String(user.to_string()),
            exp: now + ttl_secs,
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().simple().to_string()),
            full_name: Some(user.to_string()),
            role: Some("participant".into()),
            ..Default::default()
        }
    }
}

/// Sign `claims` with HS256.
pub fn mint(secret: &str, claims: &Claims) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing")
}

/// A 10-minute participant token for `user`, signed with [`SECRET`].
pub fn token_for(user: &str) -> String {
    mint(SECRET, &Claims::participant(user, 600))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn claims_are_what_the_server_reads() {
        let mut claims = Claims::participant("u1", 60);
        claims.grants = Some(Grants {
            rooms: vec!["*".into()],
            create_room: true,
            publish: vec!["audio".into()],
            subscribe: false,
            room_admin: false,
        });
        let token = mint("s", &claims);
        let payload = token.split('.').nth(1).unwrap();
        let json: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["user_id"], "u1");
        assert_eq!(json["full_name"], "u1");
        assert_eq!(json["grants"]["createRoom"], true);
        assert_eq!(json["grants"]["roomAdmin"], false);
        assert!(json.get("nbf").is_none());
        assert!(json["exp"].as_u64().unwrap() > json["iat"].as_u64().unwrap());
    }
}
