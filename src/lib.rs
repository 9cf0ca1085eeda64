//! A selective forwarding unit for WebRTC media. See README.md for the data path.
//!
//! Layers, outermost first: `transport` (sockets) → `session` (protocol state machine) →
//! `room` (model) → `media` (workers, forwarding). Each layer only knows the ones below it.

pub mod auth;
pub mod config;
pub mod media;
pub mod room;
pub mod session;
pub mod telemetry;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use auth::Authenticator;
use config::Settings;
use media::MediaRouter;
use room::Rooms;

/// Everything a session needs, shared by all connections.
pub struct AppContext {
    pub settings: Settings,
    pub auth: Authenticator,
    pub rooms: Arc<Rooms>,
    pub media: MediaRouter,
    pub started: Instant,
}

/// A running server: its bound addresses and a way to stop it.
pub struct ServerHandle {
    pub http_addr: SocketAddr,
    pub ctx: Arc<AppContext>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stop accepting connections and wait for the HTTP server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }

    /// Wait until the server stops on its own (or `shutdown` resolves).
    pub async fn run_until(mut self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = self.task.await;
    }
}

/// Bind every socket and start serving. Used by `main` and by the integration tests.
pub async fn start(settings: Settings) -> anyhow::Result<ServerHandle> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let media = MediaRouter::start(settings.media.clone(), events_tx)?;
    let rooms = Rooms::new(media.clone());
    let ctx = Arc::new(AppContext {
        auth: Authenticator::new(&settings.jwt_secret),
        settings,
        rooms: rooms.clone(),
        media,
        started: Instant::now(),
    });

    // Media events (offers, layer changes) are routed to sessions off the worker threads.
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            rooms.on_media_event(event);
        }
    });

    let bind = SocketAddr::new(ctx.settings.config.host, ctx.settings.config.port);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let http_addr = listener.local_addr()?;
    let app = transport::http::router(ctx.clone());
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = shutdown_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, dev_mode = ctx.settings.dev_mode, "sfu listening");
    Ok(ServerHandle {
        http_addr,
        ctx,
        shutdown: Some(shutdown_tx),
        task,
    })
}
