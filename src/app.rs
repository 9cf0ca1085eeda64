//! Start-up wiring: one typed config in, every port bound, each layer given the
//! implementations it needs (chosen here, once), and a handle to drain and stop it all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::limits::Limits;
use crate::media::MediaRouter;
use crate::room::Rooms;
use crate::session::SessionRegistry;
use crate::{audit, cluster, integrations, room, store, telemetry, transport};

/// Everything a session needs, shared by all connections.
pub struct AppContext {
    pub settings: Settings,
    pub audit: audit::AuditLog,
    pub auth: Authenticator,
    pub rooms: Arc<Rooms>,
    pub media: MediaRouter,
    pub limits: Limits,
    pub sessions: SessionRegistry,
    /// Kept to deliver what is queued before exit; the rooms only see it as an event sink.
    pub webhooks: Option<integrations::django::Webhooks>,
    pub started: Instant,
    /// Set once the WebTransport endpoint is bound (absent when disabled).
    pub webtransport: std::sync::OnceLock<Arc<transport::webtransport::WebTransportState>>,
    /// Node links (with REDIS_URL, WebTransport and a shared HS256 secret).
    pub cluster: Option<Arc<cluster::Cluster>>,
    draining: AtomicBool,
}

impl AppContext {
    /// True once shutdown began: not ready, no new sessions or rooms.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// A running server: its bound addresses and a way to stop it.
pub struct ServerHandle {
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
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

    /// Graceful shutdown: report not-ready, tell every client (`serverShuttingDown`), refuse
    /// new sessions, and wait up to `timeout` for clients — signaling and WHIP/WHEP — to leave
    /// before stopping. Returns how many sessions were still there at the deadline.
    pub async fn drain(self, timeout: Duration) -> usize {
        self.ctx.draining.store(true, Ordering::Relaxed);
        let remaining = transport::drain::drain(&self.ctx, timeout).await;
        self.stop().await;
        remaining
    }
}

/// Keep this node registered in Redis with its load; re-registers by itself after an outage.
async fn heartbeat(ctx: std::sync::Weak<AppContext>, directory: Arc<store::RedisDirectory>) {
    let mut healthy = true;
    loop {
        let Some(ctx) = ctx.upgrade() else { return };
        if ctx.is_draining() {
            let _ = directory.deregister().await;
            return;
        }
        let load = ctx.rooms.counts().participants as u64;
        let link = link_endpoint(&ctx);
        drop(ctx);
        match directory.heartbeat(load, link.as_ref()).await {
            Ok(()) if !healthy => {
                tracing::info!(node = %directory.node_id, "Redis reachable again; node re-registered");
                healthy = true;
            }
            Ok(()) => {}
            Err(e) if healthy => {
                tracing::warn!(error = %e, "Redis unreachable; local rooms keep running");
                healthy = false;
            }
            Err(_) => {}
        }
        tokio::time::sleep(store::HEARTBEAT).await;
    }
}

/// Close rooms nobody joined within the empty timeout (they would otherwise count against
/// MAX_ROOMS forever).
async fn close_idle_rooms(rooms: std::sync::Weak<Rooms>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let Some(rooms) = rooms.upgrade() else { return };
        rooms.close_idle_rooms(Instant::now());
    }
}

/// Bind every socket and start serving. Used by `main` and by the integration tests.
pub async fn start(settings: Settings) -> anyhow::Result<ServerHandle> {
    // rustls is built with more than one crypto backend in this tree; pick one explicitly
    // (the same aws-lc-rs str0m uses). An error only means it was installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let auth = Authenticator::new(
        settings.jwt_secret.as_deref(),
        settings.jwt_public_key.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let audit = open_audit(&settings).await?;
    let media = MediaRouter::start(settings.media.clone(), events_tx)?;
    // Bound early: a node's public URL (for redirects) needs the real port.
    let bind = SocketAddr::new(settings.config.host, settings.config.port);
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let http_addr = listener.local_addr()?;
    let redis = redis_directory(&settings, http_addr)?;
    let webhooks = django_webhooks(&settings);
    let rooms = build_rooms(&settings, &media, &audit, webhooks.as_ref(), redis.as_ref());
    let cluster = build_cluster(&settings, &rooms, &media, redis.as_ref());
    let ctx = Arc::new(AppContext {
        cluster,
        auth,
        limits: Limits::new(&settings.config, audit.clone()),
        audit,
        settings,
        rooms,
        media,
        sessions: SessionRegistry::default(),
        webhooks,
        started: Instant::now(),
        webtransport: std::sync::OnceLock::new(),
        draining: AtomicBool::new(false),
    });
    telemetry::metrics::handle();
    if ctx.settings.config.webtransport_enabled {
        let state = start_webtransport(&ctx).await?;
        let _ = ctx.webtransport.set(state);
    }
    // After WebTransport is bound: the first heartbeat already names the link endpoint.
    spawn_housekeeping(&ctx, events_rx, redis);
    let (metrics_addr, shutdown, task) = serve_http(&ctx, listener).await?;
    tracing::info!(%http_addr, %metrics_addr, dev_mode = ctx.settings.dev_mode, "sfu listening");
    Ok(ServerHandle {
        http_addr,
        metrics_addr,
        ctx,
        shutdown: Some(shutdown),
        task,
    })
}

/// The audit log on DATABASE_URL (PostgreSQL) or the embedded SQLite file.
async fn open_audit(settings: &Settings) -> anyhow::Result<audit::AuditLog> {
    let backend = audit::AuditBackend::from_database_url(
        settings.config.database_url.as_deref(),
        &settings.config.audit_sqlite_path,
    )
    .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
    tracing::info!(backend = %backend.describe(), "audit log");
    let config = audit::AuditConfig {
        spill_path: settings.config.audit_spill_path.clone(),
        // Schema changes apply by themselves; `sfu migrate` exists for controlled rollouts.
        migrate_on_start: true,
        ..Default::default()
    };
    audit::AuditLog::start(backend, config).await
}

/// Django webhooks, when DJANGO_WEBHOOK_URL is set.
fn django_webhooks(settings: &Settings) -> Option<integrations::django::Webhooks> {
    let url = settings.config.django_webhook_url.as_ref()?;
    let secret = settings
        .config
        .django_webhook_secret
        .clone()
        .or_else(|| settings.jwt_secret.clone())
        .unwrap_or_default();
    Some(integrations::django::Webhooks::start(
        integrations::django::WebhookConfig::new(url.clone(), secret),
    ))
}

/// The cross-node directory, when REDIS_URL is set; this node is reachable at `http_addr`.
fn redis_directory(
    settings: &Settings,
    http_addr: SocketAddr,
) -> anyhow::Result<Option<Arc<store::RedisDirectory>>> {
    let Some(url) = &settings.config.redis_url else {
        return Ok(None);
    };
    let node_id = settings
        .config
        .node_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
    let public_url = settings.config.public_url.clone().unwrap_or_else(|| {
        format!(
            "http://{}:{}",
            settings.media.announced_ip,
            http_addr.port()
        )
    });
    let directory =
        store::RedisDirectory::new(url, node_id, public_url).map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(Arc::new(directory)))
}

/// The room layer with the implementations of its ports chosen for this configuration.
fn build_rooms(
    settings: &Settings,
    media: &MediaRouter,
    audit: &audit::AuditLog,
    webhooks: Option<&integrations::django::Webhooks>,
    redis: Option<&Arc<store::RedisDirectory>>,
) -> Arc<Rooms> {
    let config = &settings.config;
    let mut observers: Vec<Arc<dyn room::EventSink>> = vec![Arc::new(audit.clone())];
    if let Some(webhooks) = webhooks {
        observers.push(Arc::new(webhooks.clone()));
    }
    let directory: Arc<dyn room::Directory> = match redis {
        Some(redis) => Arc::new(redis.clone()),
        None => Arc::new(store::LocalDirectory),
    };
    let catalog = config.django_room_lookup.then(|| {
        Arc::new(integrations::django::RoomLookup::new(
            &config.django_base_url,
            &config.django_room_lookup_path,
            Duration::from_secs(3),
        )) as Arc<dyn room::RoomCatalog>
    });
    let limits = room::RoomLimits {
        max_rooms: config.max_rooms,
        max_rooms_per_user: config.max_rooms_per_user,
        empty_timeout: Duration::from_secs(config.empty_room_timeout_secs),
    };
    let ports = room::RoomPorts {
        directory,
        catalog,
        observers,
        owner_links: Default::default(),
    };
    Rooms::new(media.clone(), limits, ports)
}

/// Node links, when this node can take part in them: rooms are shared through Redis, links
/// arrive on the WebTransport endpoint, and tokens are signed with the shared secret. With
/// RELAY_ROOMS the rooms relay other nodes' rooms through it rather than redirect.
fn build_cluster(
    settings: &Settings,
    rooms: &Arc<Rooms>,
    media: &MediaRouter,
    redis: Option<&Arc<store::RedisDirectory>>,
) -> Option<Arc<cluster::Cluster>> {
    let redis = redis?;
    let secret = settings.jwt_secret.as_deref()?;
    if !settings.config.webtransport_enabled {
        return None;
    }
    let cluster = cluster::Cluster::new(rooms.clone(), media.clone(), redis.clone(), secret);
    if settings.config.relay_rooms {
        rooms.relay_through(Arc::new(cluster.clone()));
    }
    Some(cluster)
}

/// Where this node accepts node links, for its registry entry.
fn link_endpoint(ctx: &AppContext) -> Option<cluster::LinkEndpoint> {
    ctx.cluster.as_ref()?;
    let wt = ctx.webtransport.get()?;
    Some(cluster::LinkEndpoint {
        url: format!(
            "https://{}:{}{}",
            ctx.settings.media.announced_ip,
            wt.local_addr.port(),
            cluster::LINK_PATH
        ),
        cert_hash: wt.certificate_hash(),
    })
}

/// Background tasks: limiter pruning, idle-room closing, media events, the node heartbeat.
fn spawn_housekeeping(
    ctx: &Arc<AppContext>,
    mut events_rx: mpsc::UnboundedReceiver<crate::media::MediaEvent>,
    redis: Option<Arc<store::RedisDirectory>>,
) {
    let prune_ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(ctx) = prune_ctx.upgrade() else {
                return;
            };
            ctx.limits.prune();
        }
    });
    tokio::spawn(close_idle_rooms(Arc::downgrade(&ctx.rooms)));
    // Media events (offers, layer changes) are routed to sessions off the worker threads.
    let rooms = ctx.rooms.clone();
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            for (room_id, participant_id) in rooms.on_media_event(event) {
                rooms.leave(&room_id, &participant_id).await;
            }
        }
    });
    if let Some(directory) = redis {
        tokio::spawn(heartbeat(Arc::downgrade(ctx), directory));
    }
}

/// Bind the WebTransport endpoint with configured or self-signed certificates.
async fn start_webtransport(
    ctx: &Arc<AppContext>,
) -> anyhow::Result<Arc<transport::webtransport::WebTransportState>> {
    let config = &ctx.settings.config;
    let source = match (
        &config.webtransport_cert_file,
        &config.webtransport_key_file,
    ) {
        (Some(cert), Some(key)) => transport::webtransport::CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => {
            let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            sans.push(ctx.settings.media.announced_ip.to_string());
            sans.dedup();
            transport::webtransport::CertSource::SelfSigned {
                validity: Duration::from_secs(config.webtransport_cert_validity_secs),
                sans,
            }
        }
    };
    let bind = SocketAddr::new(config.host, config.webtransport_port);
    transport::webtransport::start(
        ctx.clone(),
        bind,
        source,
        config.webtransport_public_url.clone(),
    )
    .await
}

/// Serve PORT (until the returned sender fires) and METRICS_PORT.
async fn serve_http(
    ctx: &Arc<AppContext>,
    listener: TcpListener,
) -> anyhow::Result<(
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)> {
    let metrics_bind = SocketAddr::new(ctx.settings.config.host, ctx.settings.config.metrics_port);
    let metrics_listener = TcpListener::bind(metrics_bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {metrics_bind} (METRICS_PORT): {e}"))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let app = transport::http::router(ctx.clone());
    let metrics_app = transport::http::metrics_router(ctx.clone());
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let (serve_ctx, metrics_ctx) = (ctx.clone(), ctx.clone());
    let task = tokio::spawn(async move {
        let metrics_task = tokio::spawn(async move {
            transport::serve::serve(
                metrics_listener,
                metrics_app,
                metrics_ctx,
                std::future::pending(),
            )
            .await;
        });
        transport::serve::serve(listener, app, serve_ctx, async {
            let _ = shutdown_rx.await;
        })
        .await;
        metrics_task.abort();
    });
    Ok((metrics_addr, shutdown_tx, task))
}
