//! JWT verification for tokens issued by Django (djangorestframework-simplejwt, HS256).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::session::protocol::{ErrorCode, UserInfo};

/// simplejwt's claims plus the optional user details the seed returns in `connected`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// simplejwt's USER_ID_CLAIM; a number or a string depending on the user model.
    pub user_id: serde_json::Value,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, alias = "fullName", skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 5;
        Authenticator {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<UserInfo, AuthError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            let (code, message) = match e.kind() {
                ErrorKind::ExpiredSignature => {
                    (ErrorCode::TokenExpired, "token has expired".into())
                }
                ErrorKind::InvalidSignature => {
                    (ErrorCode::InvalidToken, "token signature is invalid".into())
                }
                ErrorKind::InvalidAlgorithm => (
                    ErrorCode::InvalidToken,
                    "token algorithm is not accepted (HS256 required)".into(),
                ),
                _ => (ErrorCode::InvalidToken, format!("token is invalid: {e}")),
            };
            AuthError { code, message }
        })?;
        let claims = data.claims;
        let id = match &claims.user_id {
            serde_json::Value::String(s) if !s.is_empty() => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => {
                return Err(AuthError {
                    code: ErrorCode::InvalidToken,
                    message: "token claim `user_id` must be a non-empty string or a number".into(),
                })
            }
        };
        Ok(UserInfo {
            id,
            email: claims.email,
            full_name: claims.full_name,
            role: claims.role,
        })
    }

    /// Sign a token (dev token endpoint, CLI, tests).
    pub fn issue(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 signing")
    }

    /// A token for `user_id` valid for `ttl_secs`.
    pub fn issue_for(&self, user_id: &str, full_name: Option<&str>, ttl_secs: u64) -> String {
        let now = unix_now();
        self.issue(&Claims {
            user_id: serde_json::Value::String(user_id.to_string()),
            exp: now + ttl_secs,
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().simple().to_string()),
            email: None,
            full_name: full_name.map(str::to_string),
            role: Some("participant".into()),
        })
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simplejwt_numeric_user_id_and_rejects_forgery_and_expiry() {
        let auth = Authenticator::new("test-secret-0123456789");
        let token = auth.issue(&Claims {
            user_id: serde_json::json!(42),
            exp: unix_now() + 60,
            iat: None,
            jti: Some("j".into()),
            email: Some("a@b.c".into()),
            full_name: Some("Ada".into()),
            role: Some("admin".into()),
        });
        let user = auth.verify(&token).unwrap();
        assert_eq!(
            (user.id.as_str(), user.role.as_deref()),
            ("42", Some("admin"))
        );

        let other = Authenticator::new("another-secret-0123456789");
        assert_eq!(
            other.verify(&token).unwrap_err().code,
            ErrorCode::InvalidToken
        );

        // exp far in the past (leeway is 5 s).
        let expired = auth.issue(&Claims {
            user_id: serde_json::json!("u"),
            exp: 1,
            iat: None,
            jti: None,
            email: None,
            full_name: None,
            role: None,
        });
        assert_eq!(
            auth.verify(&expired).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        assert_eq!(
            auth.verify("not.a.jwt").unwrap_err().code,
            ErrorCode::InvalidToken
        );
    }
}
