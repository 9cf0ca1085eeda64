//! The HTTP surface on PORT: WebSocket upgrade, health and status, dev token, demo page.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_http::services::ServeDir;

use crate::AppContext;

pub fn router(ctx: Arc<AppContext>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/status", get(status));
    if ctx.settings.dev_mode {
        router = router.route("/dev/token", get(dev_token));
    }
    router
        .fallback_service(ServeDir::new(&ctx.settings.config.web_demo_dir))
        .with_state(ctx)
}

async fn ws_upgrade(State(ctx): State<Arc<AppContext>>, ws: WebSocketUpgrade) -> Response {
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
        .on_upgrade(move |socket| crate::transport::ws::serve(ctx, socket))
}

/// Ready when every media worker answers within a second.
async fn readyz(State(ctx): State<Arc<AppContext>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(1), ctx.media.stats()).await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "media workers not responding",
        )
            .into_response(),
    }
}

async fn health(State(ctx): State<Arc<AppContext>>) -> Response {
    let started = std::time::Instant::now();
    let workers = tokio::time::timeout(Duration::from_secs(1), ctx.media.stats()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ok = workers.is_ok();
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "uptimeSeconds": ctx.started.elapsed().as_secs(),
        "dependencies": {
            "mediaWorkers": {
                "status": if ok { "ok" } else { "unavailable" },
                "count": ctx.media.worker_count(),
                "latencyMs": latency_ms,
            },
            "roomStore": { "status": "ok", "kind": "memory" },
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
    let media = ctx.media.stats().await;
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "environment": format!("{:?}", ctx.settings.config.environment).to_lowercase(),
        "uptimeSeconds": ctx.started.elapsed().as_secs(),
        "rooms": ctx.rooms.counts(),
        "media": media,
        "workers": ctx.media.worker_addrs(),
    }))
}

#[derive(Deserialize)]
struct DevTokenQuery {
    name: Option<String>,
}

/// Development only: mint a short-lived token so the demo page works with no Django.
async fn dev_token(
    State(ctx): State<Arc<AppContext>>,
    Query(q): Query<DevTokenQuery>,
) -> Json<serde_json::Value> {
    let user_id = format!("dev-{}", uuid::Uuid::new_v4().simple());
    let name = q.name.filter(|n| !n.trim().is_empty() && n.len() <= 64);
    let token = ctx.auth.issue_for(&user_id, name.as_deref(), 12 * 3600);
    Json(json!({ "token": token, "userId": user_id }))
}
