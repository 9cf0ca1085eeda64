//! The claim and grant rules of README "Tokens and grants", over the wire (issue 12, item 9):
//! every loose reading the adversarial pass found is now a coded `INVALID_TOKEN` naming the
//! problem, or a denial, while seed-style tokens without `grants` keep working.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sfu::auth::unix_now;

fn sign(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn with(extra: Value) -> String {
    let mut claims = json!({ "user_id": "ada", "exp": unix_now() + 600 });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    sign(claims)
}

async fn authenticate(server: &sfu::ServerHandle, token: &str) -> (WsClient, Value) {
    let mut ws = WsClient::connect(server.http_addr).await;
    let reply = ws.request("authenticate", json!({ "token": token })).await;
    (ws, reply)
}

async fn refused(server: &sfu::ServerHandle, token: &str) -> String {
    let (_, reply) = authenticate(server, token).await;
    assert_eq!(error_code(&reply), "INVALID_TOKEN", "{reply}");
    reply["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_grants_are_read_strictly() {
    let server = start_server().await;

    // `grants: null` and an array are refused, not read as full rights.
    let m = refused(&server, &with(json!({ "grants": null }))).await;
    assert!(m.contains("grants"), "{m}");
    refused(&server, &with(json!({ "grants": ["*"] }))).await;
    // Unknown or wrongly typed names are named.
    let m = refused(
        &server,
        &with(json!({ "grants": { "rooms": ["*"], "create_room": true, "canPublish": true } })),
    )
    .await;
    assert!(m.contains("create_room") && m.contains("canPublish"), "{m}");
    let m = refused(&server, &with(json!({ "grants": { "subscribe": "yes" } }))).await;
    assert!(m.contains("subscribe"), "{m}");
    // A user id must be a string or an integer.
    refused(&server, &with(json!({ "user_id": 4.5 }))).await;
    refused(&server, &with(json!({ "user_id": "" }))).await;

    // Both name spellings and unknown top-level claims are harmless.
    let (_, reply) = authenticate(
        &server,
        &with(
            json!({ "full_name": "Ada L", "fullName": "Other", "token_type": "access", "x": [1] }),
        ),
    )
    .await;
    assert_eq!(ok(&reply, "connected")["user"]["fullName"], "Ada L");
    // simplejwt's integer ids: 42 is the user "42".
    let (_, reply) = authenticate(&server, &with(json!({ "user_id": 42 }))).await;
    assert_eq!(ok(&reply, "connected")["user"]["id"], "42");

    // A grants object without `rooms` allows no room; without `createRoom` no creation.
    let mut owner = WsClient::connect(server.http_addr).await;
    owner.authenticate(&token(&server, "owner")).await;
    ok(
        &owner
            .request("createRoom", json!({ "name": "r", "roomId": "strict" }))
            .await,
        "createRoomResponse",
    );
    let (mut limited, reply) =
        authenticate(&server, &with(json!({ "grants": { "subscribe": true } }))).await;
    ok(&reply, "connected");
    let reply = limited
        .request(
            "joinRoom",
            json!({ "roomId": "strict", "displayName": "L" }),
        )
        .await;
    assert_eq!(error_code(&reply), "ROOM_ACCESS_DENIED");
    let reply = limited.request("createRoom", json!({ "name": "n" })).await;
    assert_eq!(error_code(&reply), "CREATE_ROOM_DENIED");

    // A seed-style token (no grants at all) keeps full participant rights.
    let (mut plain, reply) = authenticate(&server, &with(json!({ "role": "participant" }))).await;
    ok(&reply, "connected");
    ok(
        &plain
            .request(
                "joinRoom",
                json!({ "roomId": "strict", "displayName": "P" }),
            )
            .await,
        "joinRoomResponse",
    );
    server.stop().await;
}
