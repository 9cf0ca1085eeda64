//! Property tests over the token parser: whatever a (correctly signed) token's claims hold, and
//! whatever bytes arrive as a token, `verify` never panics and answers either a coded error
//! with a short message or an identity that follows the documented rules (README "Tokens and
//! grants").
//!
//! CI runs proptest's default 256 cases per property (a few seconds). Long run:
//! `PROPTEST_CASES=200000 cargo test --release --test fuzz_tokens`.

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use sfu::auth::{unix_now, AuthErrorKind, Authenticator, Grants, MAX_USER_ID_LEN};

const SECRET: &str = "fuzz-secret-0123456789";
/// Longest error message a client may get (it names offending claims, cut short).
const MAX_MESSAGE: usize = 600;

/// Names the parser knows, their near misses, and the usual claims.
const NAMES: [&str; 19] = [
    "user_id",
    "exp",
    "nbf",
    "iat",
    "jti",
    "email",
    "full_name",
    "fullName",
    "role",
    "grants",
    "rooms",
    "createRoom",
    "create_room",
    "publish",
    "subscribe",
    "roomAdmin",
    "room_admin",
    "canPublish",
    "*",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(&NAMES[..]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (unix_now()..unix_now() + 1000).prop_map(Value::from),
        proptest::sample::select(&["audio", "video", "*", "", "A", "42", "admin"][..])
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims that often pass signature and expiry checks, so the claim rules get exercised.
fn claims() -> impl Strategy<Value = Value> {
    let user = prop_oneof![
        Just(json!("ada")),
        Just(json!(42)),
        Just(json!("42")),
        leaf()
    ];
    let exp = prop_oneof![4 => Just(json!(unix_now() + 600)), 1 => leaf()];
    (
        user,
        exp,
        proptest::option::of(json_value()),
        proptest::collection::btree_map(name(), json_value(), 0..4),
    )
        .prop_map(|(user, exp, grants, extra)| {
            let mut map: Map<String, Value> = extra.into_iter().collect();
            map.insert("user_id".into(), user);
            map.insert("exp".into(), exp);
            if let Some(g) = grants {
                map.insert("grants".into(), g);
            }
            Value::Object(map)
        })
}

fn sign(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn authenticator() -> Authenticator {
    Authenticator::new(Some(SECRET), None).unwrap()
}

/// A well-typed grants object: any subset of the known names.
fn valid_grants() -> impl Strategy<Value = (Value, Grants)> {
    let room = proptest::sample::select(&["*", "a", "room-b", "é"][..]).prop_map(str::to_string);
    let rooms = proptest::collection::vec(room, 0..3);
    (
        proptest::option::of(rooms),
        proptest::option::of(any::<bool>()),
        proptest::option::of(proptest::sample::subsequence(vec!["audio", "video"], 0..=2)),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(rooms, create, publish, subscribe, admin)| {
            let mut object = Map::new();
            let mut want = Grants::none();
            if let Some(r) = rooms {
                object.insert("rooms".into(), json!(r));
                want.rooms = r;
            }
            if let Some(b) = create {
                object.insert("createRoom".into(), json!(b));
                want.create_room = b;
            }
            if let Some(p) = publish {
                object.insert("publish".into(), json!(p));
                want.publish = p.iter().map(|k| k.to_string()).collect();
            }
            if let Some(b) = subscribe {
                object.insert("subscribe".into(), json!(b));
                want.subscribe = b;
            }
            if let Some(b) = admin {
                object.insert("roomAdmin".into(), json!(b));
                want.room_admin = b;
            }
            (Value::Object(object), want)
        })
}

proptest! {
    #[test]
    fn arbitrary_claims_give_a_coded_error_or_a_valid_identity(claims in claims()) {
        let token = sign(&claims);
        match authenticator().verify(&token) {
            Ok(identity) => {
                let id = &identity.user.id;
                prop_assert!(!id.is_empty() && id.len() <= MAX_USER_ID_LEN);
                prop_assert!(!id.chars().any(char::is_control));
                match &claims["user_id"] {
                    Value::String(s) => prop_assert_eq!(s, id),
                    Value::Number(n) => {
                        prop_assert!(n.is_i64() || n.is_u64(), "only integers: {}", n);
                        prop_assert_eq!(&n.to_string(), id);
                    }
                    other => prop_assert!(false, "user_id {} accepted", other),
                }
                prop_assert_eq!(identity.expires_at, claims["exp"].as_u64());
                match claims.get("grants") {
                    None => prop_assert_eq!(
                        identity.grants,
                        Grants::default_for_role(claims["role"].as_str())
                    ),
                    Some(Value::Object(g)) => {
                        let known = ["rooms", "createRoom", "publish", "subscribe", "roomAdmin"];
                        prop_assert!(g.keys().all(|k| known.contains(&k.as_str())), "{:?}", g);
                        prop_assert_eq!(identity.grants.room_admin, g.get("roomAdmin") == Some(&json!(true)));
                        prop_assert_eq!(identity.grants.rooms.is_empty(), !g.contains_key("rooms") || g["rooms"] == json!([]));
                    }
                    Some(other) => prop_assert!(false, "grants {} accepted", other),
                }
            }
            Err(e) => {
                prop_assert!(!e.message.is_empty());
                prop_assert!(e.message.len() <= MAX_MESSAGE, "{} bytes: {}", e.message.len(), e.message);
                prop_assert!(matches!(
                    e.kind,
                    AuthErrorKind::InvalidToken | AuthErrorKind::TokenExpired | AuthErrorKind::TokenNotYetValid
                ), "{:?}", e);
            }
        }
    }

    #[test]
    fn well_typed_grants_mean_exactly_what_they_say((grants, want) in valid_grants()) {
        let token = sign(&json!({"user_id": "u", "exp": unix_now() + 600, "grants": grants}));
        let identity = authenticator().verify(&token).map_err(|e| TestCaseError::fail(e.message))?;
        prop_assert_eq!(identity.grants, want);
    }

    #[test]
    fn arbitrary_token_text_never_panics(text in any::<String>()) {
        let e = authenticator().verify(&text).expect_err("no random text is a valid token");
        prop_assert!(e.message.len() <= MAX_MESSAGE);
    }

    #[test]
    fn arbitrary_header_and_payload_never_panic(header in json_value(), payload in json_value(), sig in any::<Vec<u8>>()) {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let token = format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes()),
            b64(&sig)
        );
        let e = authenticator().verify(&token).expect_err("unsigned garbage is refused");
        prop_assert!(e.message.len() <= MAX_MESSAGE);
        prop_assert!(e.kind != AuthErrorKind::TokenExpired, "expiry is only read after the signature: {:?}", e);
    }
}
