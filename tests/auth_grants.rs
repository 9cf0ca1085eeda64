//! The JWT matrix: HS256 and RS256 accepted; every kind of bad token and every missing grant
//! rejected with its own error code.

mod common;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sfu::auth::{unix_now, Claims, Grants};

/// A fresh RSA key pair as (private PKCS#8 PEM, public SPKI PEM).
fn rsa_pair() -> (String, String) {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let private = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
    let public = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(
        aws_lc_rs::signature::KeyPair::public_key(&pair),
    )
    .unwrap();
    (
        pem::encode(&pem::Pem::new("PRIVATE KEY", private.as_ref().to_vec())),
        pem::encode(&pem::Pem::new("PUBLIC KEY", public.as_ref().to_vec())),
    )
}

fn claims(user: &str, grants: Option<Grants>) -> Claims {
    Claims {
        user_id: json!(user),
        exp: unix_now() + 600,
        email: Some(format!("{user}@example.com")),
        full_name: Some(user.to_uppercase()),
        role: Some("participant".into()),
        grants,
        ..Default::default()
    }
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    encode(&Header::new(algorithm), claims, key).unwrap()
}

fn hs256(claims: &Claims) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn rs256(private_pem: &str, claims: &Claims) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    sign(Algorithm::RS256, &key, claims)
}

async fn server_with_rsa(public_pem: &str) -> sfu::ServerHandle {
    // `=` form: a PEM starts with dashes and would otherwise read as a flag.
    start_server_with(&[&format!("--jwt-public-key={public_pem}")]).await
}

async fn auth_reply(server: &sfu::ServerHandle, token: &str) -> Value {
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.request("authenticate", json!({ "token": token })).await
}

/// The error code `authenticate` with `token` gets.
async fn auth_error(server: &sfu::ServerHandle, token: &str) -> String {
    error_code(&auth_reply(server, token).await).to_string()
}

/// `joinRoom` of the test's room as `name`: the reply.
async fn join_granted(ws: &mut WsClient, name: &str) -> Value {
    ws.request(
        "joinRoom",
        json!({ "roomId": "granted", "displayName": name }),
    )
    .await
}

async fn connected(server: &sfu::ServerHandle, token: &str) -> WsClient {
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.authenticate(token).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_matrix() {
    let (private_pem, public_pem) = rsa_pair();
    let (other_private, _) = rsa_pair();
    let server = server_with_rsa(&public_pem).await;

    // Valid HS256 and RS256; `connected` carries the user details from the claims.
    let reply = auth_reply(&server, &hs256(&claims("ada", None))).await;
    let user = &ok(&reply, "connected")["user"];
    assert_eq!(user["id"], "ada");
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["fullName"], "ADA");
    assert_eq!(user["role"], "participant");
    let reply = auth_reply(&server, &rs256(&private_pem, &claims("bob", None))).await;
    assert_eq!(ok(&reply, "connected")["user"]["id"], "bob");

    // Forged: HS256 with another secret, RS256 with another key.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret-at-all-000"),
        &claims("eve", None),
    );
    assert_eq!(
        auth_error(&server, &forged).await,
        "TOKEN_SIGNATURE_INVALID"
    );
    let forged_rs = rs256(&other_private, &claims("eve", None));
    assert_eq!(
        auth_error(&server, &forged_rs).await,
        "TOKEN_SIGNATURE_INVALID"
    );

    // alg: none, and an algorithm the server does not accept.
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let body = b64(&serde_json::to_value(claims("eve", None)).unwrap());
    let none = format!("{}.{body}.", b64(&json!({ "alg": "none", "typ": "JWT" })));
    assert_eq!(auth_error(&server, &none).await, "TOKEN_UNSIGNED");
    let hs512 = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims("eve", None),
    );
    assert_eq!(
        auth_error(&server, &hs512).await,
        "TOKEN_ALGORITHM_NOT_ALLOWED"
    );

    // Expired and not yet valid.
    let mut expired = claims("old", None);
    expired.exp = unix_now() - 3600;
    assert_eq!(auth_error(&server, &hs256(&expired)).await, "TOKEN_EXPIRED");
    let mut early = claims("early", None);
    early.nbf = Some(unix_now() + 3600);
    assert_eq!(
        auth_error(&server, &hs256(&early)).await,
        "TOKEN_NOT_YET_VALID"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_room_operation_checks_its_grant() {
    let server = start_server().await;
    let issue = |user: &str, grants: Grants| hs256_for(&server, &claims(user, Some(grants)));
    let full = Grants::default_for_role(None);

    // Owner creates a room; a token limited to another room may not join it.
    let mut owner = connected(&server, &issue("owner", full.clone())).await;
    ok(
        &owner
            .request("createRoom", json!({ "name": "g", "roomId": "granted" }))
            .await,
        "createRoomResponse",
    );
    ok(&join_granted(&mut owner, "O").await, "joinRoomResponse");
    let elsewhere = Grants {
        rooms: vec!["other-room".into()],
        ..full.clone()
    };
    let mut outsider = connected(&server, &issue("outsider", elsewhere)).await;
    let reply = join_granted(&mut outsider, "X").await;
    assert_eq!(error_code(&reply), "ROOM_ACCESS_DENIED");

    // No createRoom grant.
    let no_create = Grants {
        create_room: false,
        ..full.clone()
    };
    let mut c = connected(&server, &issue("nocreate", no_create)).await;
    let reply = c.request("createRoom", json!({ "name": "n" })).await;
    assert_eq!(error_code(&reply), "CREATE_ROOM_DENIED");

    // Audio-only publisher offering video; a viewer with no publish grant at all.
    let audio_only = Grants {
        publish: vec!["audio".into()],
        ..full.clone()
    };
    let mut speaker = connected(&server, &issue("speaker", audio_only)).await;
    ok(&join_granted(&mut speaker, "S").await, "joinRoomResponse");
    let video_offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n";
    let reply = speaker
        .request("publisherOffer", json!({ "sdp": video_offer }))
        .await;
    assert_eq!(error_code(&reply), "PUBLISH_DENIED");

    // No subscribe grant: no media is ever offered, and subscribing requests are refused.
    let viewer_grants = Grants {
        subscribe: false,
        publish: vec![],
        ..full.clone()
    };
    let mut deaf = connected(&server, &issue("deaf", viewer_grants)).await;
    ok(&join_granted(&mut deaf, "D").await, "joinRoomResponse");
    let reply = deaf
        .request("publisherOffer", json!({ "sdp": video_offer }))
        .await;
    assert_eq!(error_code(&reply), "PUBLISH_DENIED");
    let reply = deaf
        .request("subscriberAnswer", json!({ "sdp": "v=0\r\n" }))
        .await;
    assert_eq!(error_code(&reply), "SUBSCRIBE_DENIED");
    let reply = deaf
        .request(
            "setPreferredLayer",
            json!({ "producerId": "p", "layer": "low" }),
        )
        .await;
    assert_eq!(error_code(&reply), "SUBSCRIBE_DENIED");

    // Admin actions: refused without the grant, then a room admin kicks and closes.
    let reply = speaker
        .request("kickParticipant", json!({ "participantId": "whoever" }))
        .await;
    assert_eq!(error_code(&reply), "ADMIN_REQUIRED");
    let admin_grants = Grants {
        room_admin: true,
        ..full.clone()
    };
    let mut admin = connected(&server, &issue("admin", admin_grants)).await;
    let joined = join_granted(&mut admin, "A").await;
    let deaf_id = ok(&joined, "joinRoomResponse")["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["displayName"] == "D")
        .unwrap()["participantId"]
        .clone();
    let reply = admin
        .request(
            "kickParticipant",
            json!({ "participantId": deaf_id, "reason": "test" }),
        )
        .await;
    ok(&reply, "kickParticipantResponse");
    let kicked = deaf
        .notification("kicked", std::time::Duration::from_secs(5))
        .await;
    assert_eq!(kicked["data"]["reason"], "test");
    let left = owner
        .notification("participantLeft", std::time::Duration::from_secs(5))
        .await;
    assert_eq!(left["data"]["participantId"], deaf_id);
    // The kicked session can join again (its membership ended with the kick).
    ok(&join_granted(&mut deaf, "D").await, "joinRoomResponse");
    ok(
        &admin.request("closeRoom", json!({})).await,
        "closeRoomResponse",
    );
    owner
        .notification("roomClosed", std::time::Duration::from_secs(5))
        .await;
    assert_eq!(server.ctx.rooms.counts().rooms, 0);
    assert_eq!(server.ctx.media.stats().await.transports, 0);
    server.stop().await;
}

fn hs256_for(server: &sfu::ServerHandle, claims: &Claims) -> String {
    server.ctx.auth.issue(claims).unwrap()
}
