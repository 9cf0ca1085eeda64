//! The HTTP surface on PORT: WebSocket upgrade, health and status, dev token, demo page; and
//! the Prometheus endpoint on METRICS_PORT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use super::admission::{self, Caller, Entry, Refusal};
use crate::limits::OpenConnection;
use crate::AppContext;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/webtransport", get(webtransport_info))
        .route("/audit", get(audit_log))
        .merge(super::whip::routes());
    if ctx.settings.dev_mode {
        router = router.route("/dev/token", get(dev_token));
    }
    let router = router
        .fallback_service(ServeDir::new(&ctx.settings.config.web_demo_dir))
        .layer(middleware::from_fn_with_state(ctx.clone(), http_rate_limit))
        .layer(cors(&ctx.settings.allowed_origins));
    security_headers(router).with_state(ctx)
}

/// `/metrics` alone, for the METRICS_PORT listener (kept off the public port).
pub fn metrics_router(ctx: Arc<AppContext>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(ctx): State<Arc<AppContext>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::telemetry::metrics::render(&ctx).await,
                )
            }),
        )
        .with_state(ctx)
}

/// `connect-src` admits other origins because signaling may move to the node that owns a room
/// (redirect) and WebTransport lives on another port; scripts, frames and objects stay locked.
fn security_headers(router: Router<Arc<AppContext>>) -> Router<Arc<AppContext>> {
    let headers: [(&str, &str); 5] = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; \
             connect-src 'self' http: https: ws: wss:; object-src 'none'; base-uri 'none'; \
             frame-ancestors 'none'",
        ),
    ];
    headers.into_iter().fold(router, |router, (name, value)| {
        router.layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ))
    })
}

fn cors(allowed: &[String]) -> CorsLayer {
    let origin = if allowed.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

fn too_many(retry_after: Duration, what: &str) -> Response {
    Refusal::rate_limited(retry_after, what).into_response()
}

/// Per-IP request rate on every endpoint except the probes (kubelet polls those).
async fn http_rate_limit(
    State(ctx): State<Arc<AppContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path != "/healthz" && path != "/readyz" {
        if let Err(retry_after) = ctx.limits.check_http(peer.ip()) {
            return too_many(retry_after, "requests");
        }
    }
    next.run(request).await
}

async fn ws_upgrade(
    State(ctx): State<Arc<AppContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    open: Option<Extension<OpenConnection>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let caller = Caller::from_http(peer, &headers);
    if let Err(refusal) = admission::admit(&ctx, Entry::WebSocket, &caller) {
        return refusal.into_response();
    }
    // The hard cap sits well above MAX_MESSAGE_SIZE so an oversized message gets a proper
    // error reply from the session instead of a dropped connection.
    let hard_cap = ctx
        .settings
        .config
        .max_message_size
        .saturating_mul(16)
        .max(1 << 20);
    ws.max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| async move {
            // The socket counts against its client's open connections until it closes.
            let _open = open;
            crate::transport::ws::serve(ctx, socket).await
        })
}

/// The room directory's health (Redis when several nodes share rooms), for /readyz and
/// /health alike: `{status, kind, latencyMs | error}`.
async fn room_store_health(ctx: &AppContext) -> serde_json::Value {
    let health = ctx.rooms.directory().health();
    let Ok(health) = tokio::time::timeout(Duration::from_secs(1), health).await else {
        return json!({ "status": "unavailable", "error": "no answer within 1 s" });
    };
    match &health.latency {
        Ok(rtt) => json!({
            "status": "ok",
            "kind": health.kind,
            "nodeId": health.node_id,
            "latencyMs": rtt.as_secs_f64() * 1000.0,
        }),
        Err(e) => json!({ "status": "unavailable", "kind": health.kind, "error": e }),
    }
}

/// Ready when not draining, every media worker answers within a second and the room
/// directory (Redis, when configured) is reachable.
async fn readyz(State(ctx): State<Arc<AppContext>>) -> Response {
    if ctx.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if tokio::time::timeout(Duration::from_secs(1), ctx.media.stats())
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "media workers not responding",
        )
            .into_response();
    }
    let store = room_store_health(&ctx).await;
    if store["status"] != "ok" {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "room directory unreachable",
        )
            .into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

async fn health(State(ctx): State<Arc<AppContext>>) -> Response {
    let started = std::time::Instant::now();
    let workers = tokio::time::timeout(Duration::from_secs(1), ctx.media.stats()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let room_store = room_store_health(&ctx).await;
    let store_ok = room_store["status"] == "ok";
    let ok = workers.is_ok() && store_ok;
    let status = match (ok, ctx.is_draining()) {
        (false, _) => "degraded",
        (true, true) => "draining",
        (true, false) => "ok",
    };
    let body = json!({
        "status": status,
        "uptimeSeconds": ctx.started.elapsed().as_secs(),
        "dependencies": {
            "mediaWorkers": {
                "status": if ok { "ok" } else { "unavailable" },
                "count": ctx.media.worker_count(),
                "latencyMs": latency_ms,
            },
            "roomStore": room_store,
        },
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn status(State(ctx): State<Arc<AppContext>>) -> Json<serde_json::Value> {
    let per_worker = ctx.media.worker_stats().await;
    let media: crate::media::WorkerStats = per_worker.iter().copied().sum();
    let addrs = ctx.media.worker_addrs();
    let per_worker: Vec<_> = per_worker
        .iter()
        .zip(&addrs)
        .enumerate()
        .map(|(index, (stats, addr))| json!({ "index": index, "addr": addr, "media": stats }))
        .collect();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "environment": format!("{:?}", ctx.settings.config.environment).to_lowercase(),
        "uptimeSeconds": ctx.started.elapsed().as_secs(),
        "draining": ctx.is_draining(),
        "sessions": ctx.sessions.count(),
        "replayBytes": ctx.sessions.replay_bytes(),
        "rooms": ctx.rooms.counts(),
        "bandwidth": ctx.rooms.bandwidth(),
        "media": media,
        "workers": addrs,
        "perWorker": per_worker,
        "iceTcp": ctx.media.ice_tcp_stats(),
        "cluster": ctx.cluster.as_ref().map(|c| c.stats()),
    }))
}

/// `GET /audit?room=&limit=`: audit events, newest first, for room admins (Bearer JWT with the
/// `roomAdmin` grant for that room; all rooms need a `"*"` room grant).
async fn audit_log(
    State(ctx): State<Arc<AppContext>>,
    headers: HeaderMap,
    Query(query): Query<crate::audit::http::AuditQuery>,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    let Some(token) = token else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "Bearer token required", "code": "NOT_AUTHENTICATED" })),
        )
            .into_response();
    };
    let identity = match ctx.auth.verify(token) {
        Ok(identity) => identity,
        Err(e) => {
            let code = crate::session::protocol::ErrorCode::from(e.kind);
            tracing::warn!(code = ?code, "audit read with a bad token");
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": e.message, "code": code })),
            )
                .into_response();
        }
    };
    let scope = query
        .room
        .as_deref()
        .filter(|r| !r.is_empty())
        .unwrap_or("*");
    if !admission::is_room_admin(&identity.grants, scope) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": "the audit log needs the room-admin grant", "code": "ADMIN_REQUIRED" })),
        )
            .into_response();
    }
    crate::audit::http::list(&ctx.audit, query).await
}

/// Where and how to reach the WebTransport endpoint (URL, certificate hash, framing).
async fn webtransport_info(State(ctx): State<Arc<AppContext>>, headers: HeaderMap) -> Response {
    match ctx.webtransport.get() {
        Some(state) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(state.describe(host)),
            )
                .into_response()
        }
        // 200 with no URL rather than 404, so browsers log no failed request on every load.
        None => Json(json!({ "url": null, "certificateHashes": [] })).into_response(),
    }
}

#[derive(Deserialize)]
struct DevTokenQuery {
    name: Option<String>,
}

/// Development only: mint a short-lived token so the demo page works with no Django.
async fn dev_token(State(ctx): State<Arc<AppContext>>, Query(q): Query<DevTokenQuery>) -> Response {
    let user_id = format!("dev-{}", uuid::Uuid::new_v4().simple());
    let name = q.name.filter(|n| !n.trim().is_empty() && n.len() <= 64);
    match ctx.auth.issue_for(&user_id, name.as_deref(), 12 * 3600) {
        Some(token) => Json(json!({ "token": token, "userId": user_id })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no HS256 secret configured to sign development tokens",
        )
            .into_response(),
    }
}
