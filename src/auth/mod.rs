//! JWT verification for tokens issued by Django (djangorestframework-simplejwt): HS256 with
//! DJANGO_JWT_SECRET and/or RS256 with a configured public key, plus per-token grants.
//!
//! The algorithm is read from the token header and checked against what is configured *before*
//! any key is chosen, so `alg: none` and algorithm-confusion tokens never reach verification.

mod claims;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;

pub use claims::{Claims, Grants, MAX_USER_ID_LEN};

/// The authenticated user, as the `connected` reply shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub role: Option<String>,
}

/// An authenticated user: what `connected` returns plus what the token allows.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: User,
    pub grants: Grants,
    /// The token's `exp` (unix seconds): the session should end (or be re-authenticated)
    /// by then. `None` for an identity that does not come from a token.
    pub expires_at: Option<u64>,
}

/// Why a token was refused; the session layer maps each kind to its wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthErrorKind {
    /// Malformed, lacks required claims, or claims/grants of the wrong shape.
    InvalidToken,
    /// Forged or signed with another key.
    TokenSignatureInvalid,
    /// `alg: none`.
    TokenUnsigned,
    /// An algorithm this server does not accept.
    TokenAlgorithmNotAllowed,
    /// `exp` is in the past.
    TokenExpired,
    /// `nbf` is in the future.
    TokenNotYetValid,
}

#[derive(Debug, Clone)]
pub struct AuthError {
    pub kind: AuthErrorKind,
    /// For the client: says what is wrong, never echoes the token.
    pub message: String,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for AuthError {}

fn reject(kind: AuthErrorKind, message: impl Into<String>) -> AuthError {
    AuthError {
        kind,
        message: message.into(),
    }
}

#[derive(Clone)]
pub struct Authenticator {
    hs256: Option<(DecodingKey, EncodingKey)>,
    rs256: Option<DecodingKey>,
}

impl Authenticator {
    /// HS256 with `secret`; RS256 too when `rsa_public_pem` is given.
    pub fn new(secret: Option<&str>, rsa_public_pem: Option<&str>) -> Result<Self, String> {
        let rs256 = rsa_public_pem
            .map(|pem| {
                DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| format!("JWT public key is not a valid RSA PEM: {e}"))
            })
            .transpose()?;
        let hs256 = secret.map(|s| {
            (
                DecodingKey::from_secret(s.as_bytes()),
                EncodingKey::from_secret(s.as_bytes()),
            )
        });
        Ok(Authenticator { hs256, rs256 })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let algorithm = header_algorithm(token)?;
        let (key, alg) = match algorithm.as_str() {
            a if a.eq_ignore_ascii_case("none") => {
                return Err(reject(
                    AuthErrorKind::TokenUnsigned,
                    "unsigned tokens (alg: none) are not accepted",
                ))
            }
            "HS256" if self.hs256.is_some() => (&self.hs256.as_ref().unwrap().0, Algorithm::HS256),
            "RS256" if self.rs256.is_some() => (self.rs256.as_ref().unwrap(), Algorithm::RS256),
            other => {
                return Err(reject(
                    AuthErrorKind::TokenAlgorithmNotAllowed,
                    format!(
                        "token algorithm `{other}` is not accepted (allowed: {})",
                        self.allowed()
                    ),
                ))
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let data =
            decode::<serde_json::Value>(token, key, &validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    reject(AuthErrorKind::TokenExpired, "token has expired")
                }
                ErrorKind::ImmatureSignature => reject(
                    AuthErrorKind::TokenNotYetValid,
                    "token is not valid yet (nbf)",
                ),
                ErrorKind::InvalidSignature => reject(
                    AuthErrorKind::TokenSignatureInvalid,
                    "token signature is invalid",
                ),
                _ => reject(
                    AuthErrorKind::InvalidToken,
                    format!("token is invalid: {e}"),
                ),
            })?;
        let verified = claims::read_claims(&data.claims)?;
        Ok(Identity {
            user: verified.user,
            grants: verified.grants,
            expires_at: Some(verified.exp),
        })
    }

    fn allowed(&self) -> String {
        let mut algs = Vec::new();
        if self.hs256.is_some() {
            algs.push("HS256");
        }
        if self.rs256.is_some() {
            algs.push("RS256");
        }
        algs.join(", ")
    }

    /// Sign an HS256 token (dev token endpoint, CLI, tests). `None` without a secret.
    pub fn issue(&self, claims: &Claims) -> Option<String> {
        let (_, encoding) = self.hs256.as_ref()?;
        Some(encode(&Header::new(Algorithm::HS256), claims, encoding).expect("HS256 signing"))
    }

    /// An HS256 token for `user_id` valid for `ttl_secs`, with default grants.
    pub fn issue_for(
        &self,
        user_id: &str,
        full_name: Option<&str>,
        ttl_secs: u64,
    ) -> Option<String> {
        let now = unix_now();
        self.issue(&Claims {
            user_id: serde_json::Value::String(user_id.to_string()),
            exp: now + ttl_secs,
            iat: Some(now),
            jti: Some(uuid::Uuid::new_v4().simple().to_string()),
            full_name: full_name.map(str::to_string),
            role: Some("participant".into()),
            ..Default::default()
        })
    }
}

/// The `alg` of a compact JWS header, read without trusting anything else in the token.
fn header_algorithm(token: &str) -> Result<String, AuthError> {
    let malformed = || {
        reject(
            AuthErrorKind::InvalidToken,
            "token is not a well-formed JWT",
        )
    };
    let header = token.split('.').next().ok_or_else(malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    if token.split('.').count() != 3 {
        return Err(malformed());
    }
    value["alg"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(malformed)
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
    fn plain_simplejwt_token_gets_default_grants_and_numeric_id() {
        let auth = Authenticator::new(Some("test-secret-0123456789"), None).unwrap();
        let token = auth
            .issue(&Claims {
                user_id: serde_json::json!(42),
                exp: unix_now() + 60,
                role: Some("admin".into()),
                ..Default::default()
            })
            .unwrap();
        let identity = auth.verify(&token).unwrap();
        assert_eq!(identity.user.id, "42");
        assert!(identity.grants.room_admin && identity.grants.may_publish("video"));
    }

    #[test]
    fn header_tricks_are_rejected_before_verification() {
        let auth = Authenticator::new(Some("test-secret-0123456789"), None).unwrap();
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let body = b64(serde_json::json!({"user_id": "u", "exp": unix_now() + 60}));
        let none = format!("{}.{body}.", b64(serde_json::json!({"alg": "none"})));
        assert_eq!(
            auth.verify(&none).unwrap_err().kind,
            AuthErrorKind::TokenUnsigned
        );
        let rs = format!("{}.{body}.sig", b64(serde_json::json!({"alg": "RS256"})));
        assert_eq!(
            auth.verify(&rs).unwrap_err().kind,
            AuthErrorKind::TokenAlgorithmNotAllowed
        );
        assert_eq!(
            auth.verify("garbage").unwrap_err().kind,
            AuthErrorKind::InvalidToken
        );
    }
}
