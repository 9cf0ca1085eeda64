//! WHIP (RFC 9725) and WHEP: publish or play with one HTTP request carrying an SDP offer.
//!
//! `POST /whip/{room}` and `POST /whep/{room}` take `application/sdp` with a Bearer JWT and
//! answer `201 Created`, the SDP answer and a `Location` for the session; `DELETE` on that
//! location ends it. The session is a room participant like any other, so WHIP producers reach
//! WebSocket/WebTransport subscribers and WHEP players see their producers. Errors are JSON
//! `{error, code}` with a fitting status.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde_json::json;

use super::admission::{self, Caller, Entry};
use crate::auth::Identity;
use crate::room::{Requester, RoomError, RoomErrorKind, RoomSpec};
use crate::session::protocol::ErrorCode;
use crate::session::room_error_code;
use crate::turn;
use crate::AppContext;

/// Largest SDP offer accepted (browsers send 5–15 KB).
const MAX_SDP_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<Arc<AppContext>> {
    Router::new()
        .route("/whip/{room}", post(whip_post))
        .route("/whep/{room}", post(whep_post))
        .route(
            "/whip/{room}/{session}",
            patch(ice_patch).delete(whip_delete),
        )
        .route(
            "/whep/{room}/{session}",
            patch(ice_patch).delete(whep_delete),
        )
}

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": message.into(), "code": code })),
    )
        .into_response()
}

fn room_error(e: RoomError) -> Response {
    let code = room_error_code(e.kind);
    let status = match code {
        ErrorCode::RoomNotFound | ErrorCode::ProducerNotFound | ErrorCode::ParticipantNotFound => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::RoomAccessDenied
        | ErrorCode::PublishDenied
        | ErrorCode::SubscribeDenied
        | ErrorCode::AdminRequired => StatusCode::FORBIDDEN,
        ErrorCode::RoomFull | ErrorCode::TooManyRooms | ErrorCode::ServerShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::RoomOnOtherNode => StatusCode::CONFLICT,
        ErrorCode::OwnerUnreachable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::InternalError | ErrorCode::DirectoryUnavailable => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let mut body = json!({ "error": e.message, "code": code });
    if let Some((key, value)) = e.detail {
        body[key] = value;
    }
    (status, Json(body)).into_response()
}

/// Why a WHIP/WHEP POST was refused. A room owned by another node is a `307 Temporary
/// Redirect` to the same endpoint there (RFC 9725 §4.5 lets clients follow it, and OBS,
/// GStreamer and ffmpeg do; a 409 with a JSON body is something they cannot act on). The
/// method and body are kept by 307, so the offer is simply posted again to the owner.
fn post_refused(entry: Entry, room: &str, e: RoomError) -> Response {
    let owner = match (&e.kind, &e.detail) {
        (RoomErrorKind::OnOtherNode, Some(("nodeUrl", serde_json::Value::String(url)))) => {
            Some(url.trim_end_matches('/').to_string())
        }
        _ => None,
    };
    let Some(owner) = owner else {
        return room_error(e);
    };
    let location = format!(
        "{owner}/{}/{}",
        entry.name(),
        url::form_urlencoded::byte_serialize(room.as_bytes()).collect::<String>()
    );
    let mut response = room_error(e);
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The Bearer token and who it names; 401 otherwise.
fn bearer(ctx: &AppContext, headers: &HeaderMap) -> Result<(Identity, String), Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::NotAuthenticated,
                "send `Authorization: Bearer <JWT>`",
            ))
        })?;
    match ctx.auth.verify(token) {
        Ok(identity) => Ok((identity, token.to_string())),
        Err(e) => {
            let code = ErrorCode::from(e.kind);
            tracing::warn!(code = ?code, reason = %e.message, "WHIP/WHEP authentication failed");
            Err(Box::new(error(StatusCode::UNAUTHORIZED, code, e.message)))
        }
    }
}

/// The offer body: must be `application/sdp`, UTF-8 and of sane size.
fn offer(headers: &HeaderMap, body: &Bytes) -> Result<String, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidSdp,
            "Content-Type must be application/sdp",
        )));
    }
    if body.len() > MAX_SDP_BYTES {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageTooLarge,
            format!("the offer is larger than {MAX_SDP_BYTES} bytes"),
        )));
    }
    String::from_utf8(body.to_vec()).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidSdp,
            "the offer is not UTF-8",
        ))
    })
}

/// Who posts (Bearer token, else 401) and their offer: what both POST endpoints start with.
fn authorized_offer(
    ctx: &AppContext,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Identity, String, String), Box<Response>> {
    let (identity, token) = bearer(ctx, headers)?;
    Ok((identity, token, offer(headers, body)?))
}

fn created(kind: &str, room: &str, session: &str, answer: String, links: Vec<String>) -> Response {
    let location = format!("/{kind}/{room}/{session}");
    let mut response = (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/sdp".to_string()),
            (header::LOCATION, location),
            (header::ETAG, format!("\"{session}\"")),
            (
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                "Location, ETag, Link".to_string(),
            ),
        ],
        answer,
    )
        .into_response();
    // TURN servers as RFC 9725 §4.6 `Link: <turn:…>; rel="ice-server"` headers (none unset).
    for link in links {
        if let Ok(value) = header::HeaderValue::from_str(&link) {
            response.headers_mut().append(header::LINK, value);
        }
    }
    response
}

fn turn_links(ctx: &AppContext, identity: &Identity) -> Vec<String> {
    turn::link_headers(ctx.settings.turn.as_ref(), &identity.user.id)
}

/// WHIP into a room that does not exist yet creates it when the token may create rooms.
async fn ensure_room(ctx: &AppContext, room: &str, identity: &Identity) -> Result<(), RoomError> {
    if ctx.rooms.room_exists(room) || !identity.grants.create_room {
        return Ok(());
    }
    match ctx
        .rooms
        .create_room(
            RoomSpec {
                name: room.to_string(),
                room_id: Some(room.to_string()),
                ..Default::default()
            },
            &identity.user.id,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind == RoomErrorKind::RoomExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// What both POST endpoints do before the room sees the offer: the shared admission policy,
/// the Bearer token, the offer body, then the grants this entry needs.
fn admitted(
    ctx: &AppContext,
    entry: Entry,
    peer: SocketAddr,
    room: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Identity, String, String), Box<Response>> {
    let caller = Caller::from_http(peer, headers);
    admission::admit(ctx, entry, &caller).map_err(|r| Box::new(r.into_response()))?;
    let (identity, token, sdp) = authorized_offer(ctx, headers, body)?;
    let kinds = crate::room::sdp_sending_kinds(&sdp);
    admission::authorize_http(entry, &identity.grants, room, &kinds)
        .map_err(|r| Box::new(r.into_response()))?;
    Ok((identity, token, sdp))
}

async fn whip_post(
    State(ctx): State<Arc<AppContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (identity, token, sdp) = match admitted(&ctx, Entry::Whip, peer, &room, &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if let Err(e) = ensure_room(&ctx, &room, &identity).await {
        return post_refused(Entry::Whip, &room, e);
    }
    let started = ctx
        .rooms
        .whip_publish(&room, &identity.user.id, &token, sdp)
        .await;
    answer_post(&ctx, Entry::Whip, &room, &identity, started)
}

/// The 201 (answer, Location, TURN `Link`s) of a started WHIP/WHEP session, or its refusal.
fn answer_post(
    ctx: &AppContext,
    entry: Entry,
    room: &str,
    identity: &Identity,
    started: Result<crate::room::HttpMediaSession, RoomError>,
) -> Response {
    match started {
        Ok(session) => {
            tracing::info!(room = %room, participant = %session.participant_id, user = %identity.user.id, entry = entry.name(), "WHIP/WHEP session started");
            let links = turn_links(ctx, identity);
            created(
                entry.name(),
                room,
                &session.participant_id,
                session.answer,
                links,
            )
        }
        Err(e) => post_refused(entry, room, e),
    }
}

async fn whep_post(
    State(ctx): State<Arc<AppContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (identity, token, sdp) = match admitted(&ctx, Entry::Whep, peer, &room, &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let started = ctx
        .rooms
        .whep_play(&room, &identity.user.id, &token, sdp)
        .await;
    answer_post(&ctx, Entry::Whep, &room, &identity, started)
}

/// DELETE `/{whip|whep}/{room}/{session}`: a WHIP session is only reachable under `/whip`, a
/// WHEP one under `/whep`; its own user or an admin of that room may end it.
async fn session_delete(
    ctx: &AppContext,
    entry: Entry,
    room: &str,
    session: &str,
    headers: &HeaderMap,
) -> Response {
    let (identity, _) = match bearer(ctx, headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let under_own_path = ctx.rooms.is_whip_session(room, session) == Some(entry == Entry::Whip);
    if !under_own_path {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::ParticipantNotFound,
            format!(
                "no such {} session in this room",
                entry.name().to_uppercase()
            ),
        );
    }
    let requester = Requester {
        user_id: &identity.user.id,
        admin_here: admission::is_room_admin(&identity.grants, room),
    };
    match ctx.rooms.end_http_session(room, session, requester).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => room_error(e),
    }
}

async fn whip_delete(
    State(ctx): State<Arc<AppContext>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    session_delete(&ctx, Entry::Whip, &room, &session, &headers).await
}

async fn whep_delete(
    State(ctx): State<Arc<AppContext>>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    session_delete(&ctx, Entry::Whep, &room, &session, &headers).await
}

/// Trickle ICE and ICE restarts over PATCH are not offered: our candidates are all in the
/// answer (ICE-lite, host candidates only). RFC 9725 §4.3.1 says to answer 405 then.
async fn ice_patch() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "DELETE")],
        Json(json!({
            "error": "trickle ICE and ICE restart are not supported; end the session with DELETE and POST a new offer",
            "code": ErrorCode::InvalidPayload,
        })),
    )
        .into_response()
}
