//! Token claims and grants, and the strict reading of a verified token's payload.
//!
//! Rules (README "Tokens and grants"): top-level claims we do not know are ignored, the ones we
//! read must have their type; `grants`, when present, must be an object with only known names,
//! each correctly typed, and every name it leaves out denies.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{reject, AuthError, AuthErrorKind, User};

/// Longest `user_id` accepted (bytes); it ends up in logs, audit rows and the directory.
pub const MAX_USER_ID_LEN: usize = 256;

/// What a token allows. Absent from a token, [`Grants::default_for_role`] applies, so plain
/// simplejwt tokens keep working as they did with the Node backend.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    /// Room ids this token may join; `"*"` means any.
    pub rooms: Vec<String>,
    pub create_room: bool,
    /// Media kinds this token may publish (`"audio"`, `"video"`); empty = none.
    pub publish: Vec<String>,
    pub subscribe: bool,
    /// May kick participants and close rooms it can join.
    pub room_admin: bool,
}

/// Names a `grants` object may carry, with the snake_case spelling a Django issuer might use.
const GRANT_NAMES: [(&str, &str); 5] = [
    ("rooms", "rooms"),
    ("createRoom", "create_room"),
    ("publish", "publish"),
    ("subscribe", "subscribe"),
    ("roomAdmin", "room_admin"),
];

const MEDIA_KINDS: [&str; 2] = ["audio", "video"];

impl Grants {
    /// Full participant rights; room admin only for `role: "admin"`.
    pub fn default_for_role(role: Option<&str>) -> Self {
        Grants {
            rooms: vec!["*".to_string()],
            create_room: true,
            publish: MEDIA_KINDS.iter().map(|k| k.to_string()).collect(),
            subscribe: true,
            room_admin: role == Some("admin"),
        }
    }

    /// No rights at all: what a `grants` object grants for every name it leaves out.
    pub fn none() -> Self {
        Grants {
            rooms: Vec::new(),
            create_room: false,
            publish: Vec::new(),
            subscribe: false,
            room_admin: false,
        }
    }

    pub fn may_join(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|r| r == "*" || r == room_id)
    }

    /// Whether the token may join every room (`"*"`), not only the ones it names.
    pub fn may_join_any(&self) -> bool {
        self.rooms.iter().any(|r| r == "*")
    }

    pub fn may_publish(&self, kind: &str) -> bool {
        self.publish.iter().any(|k| k == kind)
    }

    /// A `grants` claim, strictly: an object, known names only, each of its type.
    pub fn from_claim(value: &Value) -> Result<Self, AuthError> {
        let Value::Object(map) = value else {
            return Err(invalid(format!(
                "token claim `grants` must be an object, not {} (omit it for default rights)",
                type_name(value)
            )));
        };
        let unknown: Vec<String> = map
            .keys()
            .filter(|k| !GRANT_NAMES.iter().any(|(name, _)| name == k))
            .map(|k| match GRANT_NAMES.iter().find(|(_, snake)| snake == k) {
                Some((name, _)) => format!("`{}` (did you mean `{name}`?)", shorten(k)),
                None => format!("`{}`", shorten(k)),
            })
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(format!(
                "token grants contain unknown names: {} (known: rooms, createRoom, publish, subscribe, roomAdmin)",
                list(&unknown)
            )));
        }
        let mut grants = Grants::none();
        let mut wrong = Vec::new();
        for (name, value) in map {
            let ok = match name.as_str() {
                "rooms" => string_list(value, |s| !s.is_empty()).map(|v| grants.rooms = v),
                "publish" => {
                    string_list(value, |s| MEDIA_KINDS.contains(&s)).map(|v| grants.publish = v)
                }
                "createRoom" => value.as_bool().map(|b| grants.create_room = b),
                "subscribe" => value.as_bool().map(|b| grants.subscribe = b),
                _ => value.as_bool().map(|b| grants.room_admin = b),
            };
            if ok.is_none() {
                wrong.push(format!("`{name}` ({})", expected(name)));
            }
        }
        if !wrong.is_empty() {
            return Err(invalid(format!(
                "token grants have wrongly typed values: {}",
                list(&wrong)
            )));
        }
        Ok(grants)
    }
}

/// At most a few items, so the message stays small whatever the token holds.
fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

fn expected(name: &str) -> &'static str {
    match name {
        "rooms" => "expected an array of non-empty room ids",
        "publish" => "expected an array of \"audio\" and/or \"video\"",
        _ => "expected true or false",
    }
}

fn string_list(value: &Value, valid: impl Fn(&str) -> bool) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().filter(|s| valid(s)).map(str::to_string))
        .collect()
}

/// simplejwt's claims plus the optional user details the seed returns in `connected`; what
/// [`super::Authenticator::issue`] signs. Verification reads the payload with `read_claims`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Claims {
    /// simplejwt's USER_ID_CLAIM; a number or a string depending on the user model.
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

/// What a verified payload says: the user, the rights, the expiry (unix seconds).
#[derive(Debug)]
pub(crate) struct Verified {
    pub user: User,
    pub grants: Grants,
    pub exp: u64,
}

/// Read a payload whose signature and `exp`/`nbf` were already checked.
pub(crate) fn read_claims(payload: &Value) -> Result<Verified, AuthError> {
    let Value::Object(claims) = payload else {
        return Err(invalid("token payload must be a JSON object"));
    };
    let id = user_id(claims.get("user_id"))?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("token claim `exp` must be a non-negative integer"))?;
    let email = optional_string(claims, "email")?;
    // Both spellings present: the snake_case one (simplejwt's) wins; the other is ignored.
    let full_name = match optional_string(claims, "full_name")? {
        Some(name) => Some(name),
        None => optional_string(claims, "fullName")?,
    };
    let role = optional_string(claims, "role")?;
    let grants = match claims.get("grants") {
        None => Grants::default_for_role(role.as_deref()),
        Some(value) => Grants::from_claim(value)?,
    };
    Ok(Verified {
        user: User {
            id,
            email,
            full_name,
            role,
        },
        grants,
        exp,
    })
}

/// A non-empty string, or a JSON integer written as its decimal digits: simplejwt puts an
/// integer primary key as a number and any other as a string, so `42` and `"42"` are one user.
fn user_id(value: Option<&Value>) -> Result<String, AuthError> {
    let id = match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        _ => String::new(),
    };
    if id.is_empty() || id.len() > MAX_USER_ID_LEN || id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "token claim `user_id` must be a non-empty string (at most {MAX_USER_ID_LEN} bytes, no control characters) or an integer"
        )));
    }
    Ok(id)
}

/// A claim we read: absent or `null` is `None`, a string is kept, anything else is refused.
fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "token claim `{name}` must be a string, not {}",
            type_name(other)
        ))),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A name from the token, cut so an error message stays small whatever the token holds.
fn shorten(name: &str) -> String {
    const MAX: usize = 40;
    match name.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_string(),
    }
}

fn invalid(message: impl Into<String>) -> AuthError {
    reject(AuthErrorKind::InvalidToken, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(payload: Value) -> Result<Verified, AuthError> {
        read_claims(&payload)
    }

    fn message(payload: Value) -> String {
        let e = read(payload).expect_err("refused");
        assert_eq!(e.kind, AuthErrorKind::InvalidToken);
        e.message
    }

    #[test]
    fn grants_are_strict_and_absent_names_deny() {
        let base = |grants: Value| json!({"user_id": "u", "exp": 1, "grants": grants});
        assert!(message(base(Value::Null)).contains("must be an object"));
        assert!(message(base(json!(["*"]))).contains("not an array"));
        let m = message(base(json!({"create_room": true, "canPublish": true})));
        assert!(
            m.contains("`create_room` (did you mean `createRoom`?)"),
            "{m}"
        );
        assert!(m.contains("`canPublish`"), "{m}");
        let m = message(base(
            json!({"subscribe": "yes", "rooms": "A", "publish": ["screen"]}),
        ));
        assert!(
            m.contains("`subscribe`") && m.contains("`rooms`") && m.contains("`publish`"),
            "{m}"
        );
        let g = read(base(json!({"subscribe": true}))).ok().unwrap().grants;
        assert_eq!(
            g,
            Grants {
                subscribe: true,
                ..Grants::none()
            }
        );
        assert!(!g.may_join("any"));
        let g = read(base(json!({}))).ok().unwrap().grants;
        assert_eq!(g, Grants::none());
    }

    #[test]
    fn no_grants_claim_keeps_default_rights() {
        let v = read(json!({"user_id": 7, "exp": 9, "role": "admin", "extra": [1]}))
            .ok()
            .unwrap();
        assert_eq!(v.grants, Grants::default_for_role(Some("admin")));
        assert_eq!((v.user.id.as_str(), v.exp), ("7", 9));
    }

    #[test]
    fn user_id_and_names() {
        assert_eq!(
            read(json!({"user_id": "42", "exp": 1}))
                .ok()
                .unwrap()
                .user
                .id,
            "42"
        );
        assert_eq!(
            read(json!({"user_id": 42, "exp": 1})).ok().unwrap().user.id,
            "42"
        );
        for bad in [
            json!(4.2),
            json!(42.0),
            json!(""),
            json!(true),
            json!(null),
            json!("a\nb"),
        ] {
            assert!(message(json!({"user_id": bad, "exp": 1})).contains("user_id"));
        }
        let both = read(json!({"user_id": "u", "exp": 1, "full_name": "A", "fullName": "B"}));
        assert_eq!(both.ok().unwrap().user.full_name.as_deref(), Some("A"));
        let camel = read(json!({"user_id": "u", "exp": 1, "fullName": "B"}));
        assert_eq!(camel.ok().unwrap().user.full_name.as_deref(), Some("B"));
        assert!(message(json!({"user_id": "u", "exp": 1, "email": 3})).contains("`email`"));
        assert!(message(json!([1])).contains("object"));
    }
}
