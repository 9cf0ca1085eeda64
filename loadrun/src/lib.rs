//! Load runner (`sfu-bench`, also reachable as `sfu bench`): str0m peers over real UDP publish synthetic Opus and 3-layer VP8
//! simulcast through a running SFU; subscribers measure packets, loss, one-way latency and
//! join time; the server's CPU and RSS are read from `/proc` when its pid is given.
//!
//! Signaling runs over WebTransport (the server's `GET /webtransport` gives the URL and the
//! certificate hash to trust). Scenarios: `livestream` (P video publishers, 1 by default, × N
//! subscribers), `audio` (P audio-only publishers × N subscribers), `meeting` (N participants,
//! each publishing audio + video and subscribing to all others).

pub mod capacity;
pub mod chart;
pub mod cli;
pub mod floor;
mod frames;
pub mod janus;
pub mod readme;
mod report;
pub mod stats;

pub use report::{LayerPackets, Report, ServerUsage};

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use stats::Histogram;
use testkit::measure::{RxStats, Shared, PHASE_DONE, PHASE_MEASURE};
use testkit::peer::{Peer, PeerOptions, Publish};
use testkit::signal::{SignalClient, WtEndpoint, WtTarget};
use testkit::token::{Claims, Grants};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Livestream,
    Audio,
    Meeting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Low,
    Medium,
    High,
    Auto,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Low => "low",
            Layer::Medium => "medium",
            Layer::High => "high",
            Layer::Auto => "auto",
        }
    }
}

/// How subscribers reach the server's media: UDP (the default path) or ICE-TCP (RFC 6544,
/// the fallback for networks without UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MediaTransport {
    #[default]
    Udp,
    Tcp,
    /// Media over WebTransport: whole frames on the signaling session (`consumeFrames`).
    Webtransport,
}

impl MediaTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaTransport::Udp => "udp",
            MediaTransport::Tcp => "tcp",
            MediaTransport::Webtransport => "webtransport",
        }
    }
}

/// Which server a run drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Our SFU at `BenchConfig::url` (WebTransport signaling).
    Sfu,
    /// Janus VideoRoom's HTTP API at this URL (e.g. `http://127.0.0.1:8088/janus`).
    Janus(String),
}

/// Everything a run needs; `sfu bench` fills it from flags.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server's HTTP base URL, e.g. `http://127.0.0.1:3000`.
    pub url: String,
    /// Our SFU (default) or Janus.
    pub target: Target,
    pub scenario: Scenario,
    /// Publishers for `livestream` and `audio` (ignored by `meeting`).
    pub publishers: usize,
    /// Subscribers; for `meeting`, the number of participants.
    pub subscribers: usize,
    /// Length of the measured steady state (after the ramp and `settle`).
    pub duration: Duration,
    /// Participants started per second.
    pub ramp_per_sec: f64,
    pub layer: Layer,
    /// How subscribers receive (publishers always use UDP).
    pub subscriber_transport: MediaTransport,
    /// Measure the machine's floor (`floor.rs`) for this long before the run; `None`: skip.
    pub floor_budget: Option<Duration>,
    pub server_pid: Option<u32>,
    /// HS256 secret to mint tokens with; without it tokens come from `GET /dev/token`.
    pub jwt_secret: Option<String>,
    pub json: Option<PathBuf>,
    /// Pause between "every subscriber receives media" and the start of measurement.
    pub settle: Duration,
    /// How long to wait for every subscriber's first packet before measuring anyway.
    pub ready_timeout: Duration,
    /// Subscribers join through this node instead (our SFU with RELAY_ROOMS): the room stays
    /// on `url`'s node and is relayed to them over a node link.
    pub relay_url: Option<String>,
    /// The relay node's pid, whose CPU is measured as `server`'s is.
    pub relay_pid: Option<u32>,
}

impl BenchConfig {
    pub fn new(url: impl Into<String>, scenario: Scenario) -> Self {
        BenchConfig {
            url: url.into(),
            target: Target::Sfu,
            scenario,
            publishers: 1,
            subscribers: 10,
            duration: Duration::from_secs(30),
            ramp_per_sec: 10.0,
            layer: Layer::Auto,
            subscriber_transport: MediaTransport::Udp,
            floor_budget: Some(Duration::from_secs(1)),
            server_pid: None,
            jwt_secret: None,
            json: None,
            settle: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(30),
            relay_url: None,
            relay_pid: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Role {
    index: usize,
    /// Some(video?) when publishing.
    publish: Option<bool>,
    subscribe: bool,
}

#[derive(Default)]
pub(crate) struct Outcome {
    error: Option<String>,
    rx: Option<RxStats>,
    join: Option<Duration>,
    keyframe_requests: u64,
    subscribe: bool,
    /// When the signaling connection was started (join time counts from here).
    connect_at: Option<Instant>,
}

/// How participants get tokens.
enum Tokens {
    Secret(String),
    Dev(reqwest::Client, String),
}

impl Tokens {
    async fn token(&self, user: &str, role: &Role, scenario: Scenario) -> anyhow::Result<String> {
        match self {
            Tokens::Secret(secret) => {
                let publish = match role.publish {
                    Some(true) => vec!["audio".to_string(), "video".to_string()],
                    Some(false) => vec!["audio".to_string()],
                    None => Vec::new(),
                };
                let claims = Claims {
                    grants: Some(Grants {
                        rooms: vec!["*".into()],
                        create_room: role.index == 0,
                        publish,
                        // Publishers of one-to-many scenarios receive nothing, as in production.
                        subscribe: role.subscribe || scenario == Scenario::Meeting,
                        room_admin: false,
                    }),
                    ..Claims::participant(user, 24 * 3600)
                };
                Ok(testkit::token::mint(secret, &claims))
            }
            Tokens::Dev(http, base) => {
                let reply: Value = http
                    .get(format!("{base}/dev/token"))
                    .query(&[("name", user)])
                    .send()
                    .await?
                    .error_for_status()
                    .context("GET /dev/token (server not in development mode? pass --jwt-secret)")?
                    .json()
                    .await?;
                reply["token"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("no token in /dev/token reply"))
            }
        }
    }
}

pub(crate) struct RunContext {
    config: BenchConfig,
    /// Our SFU: where its WebTransport signaling is, and tokens for it.
    target: Option<WtTarget>,
    endpoint: Option<Arc<WtEndpoint>>,
    /// The relay node subscribers join through (`--relay-url`).
    relay: Option<(WtTarget, Arc<WtEndpoint>)>,
    tokens: Option<Tokens>,
    /// Janus: its API and the run's room.
    janus: Option<janus::JanusTarget>,
    shared: Arc<Shared>,
    room: String,
    participants: usize,
    local_ip: std::net::IpAddr,
    /// The server's ICE-TCP address, when subscribers use TCP.
    ice_tcp: Option<std::net::SocketAddr>,
    joined: AtomicUsize,
    failed: AtomicUsize,
}

impl RunContext {
    /// A measuring peer of this run; `subscriber` ones count towards "ready".
    async fn peer(&self, subscriber: bool) -> anyhow::Result<Peer> {
        let options = PeerOptions::load(self.local_ip, self.shared.clone(), subscriber);
        match self.ice_tcp {
            Some(server) if subscriber => {
                Peer::spawn_tcp(options, server, Default::default()).await
            }
            _ => Peer::spawn_opts(options).await,
        }
    }
}

fn roles(config: &BenchConfig) -> Vec<Role> {
    let mut out = Vec::new();
    match config.scenario {
        Scenario::Livestream | Scenario::Audio => {
            let video = config.scenario == Scenario::Livestream;
            for _ in 0..config.publishers.max(1) {
                out.push(Role {
                    index: out.len(),
                    publish: Some(video),
                    subscribe: false,
                });
            }
            for _ in 0..config.subscribers {
                out.push(Role {
                    index: out.len(),
                    publish: None,
                    subscribe: true,
                });
            }
        }
        Scenario::Meeting => {
            for _ in 0..config.subscribers.max(2) {
                out.push(Role {
                    index: out.len(),
                    publish: Some(true),
                    subscribe: true,
                });
            }
        }
    }
    out
}

/// The server's ICE-TCP address from its `/status` (its port, at the address we reach it on).
async fn ice_tcp_addr(
    base: &str,
    server_ip: std::net::IpAddr,
) -> anyhow::Result<std::net::SocketAddr> {
    let status: Value = reqwest::get(format!("{base}/status"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let addr: std::net::SocketAddr = status["iceTcp"]["addr"]
        .as_str()
        .ok_or_else(|| anyhow!("the server has ICE-TCP off (ICE_TCP_ENABLED=false)"))?
        .parse()?;
    Ok(std::net::SocketAddr::new(server_ip, addr.port()))
}

/// Run one benchmark and return its report (also written to `config.json` when set).
pub async fn run(config: BenchConfig) -> anyhow::Result<Report> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let relay = match (&config.target, &config.relay_url) {
        (Target::Sfu, Some(url)) => {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let target = testkit::signal::discover(&http, url.trim_end_matches('/')).await?;
            let endpoint = testkit::signal::client_endpoint(&target)?;
            Some((target, endpoint))
        }
        (Target::Janus(_), Some(_)) => bail!("--relay-url needs our SFU"),
        (_, None) => None,
    };
    let (base, target, endpoint, tokens, janus) = match &config.target {
        Target::Sfu => {
            let base = config.url.trim_end_matches('/').to_string();
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let target = testkit::signal::discover(&http, &base).await?;
            let endpoint = testkit::signal::client_endpoint(&target)?;
            let tokens = match &config.jwt_secret {
                Some(secret) => Tokens::Secret(secret.clone()),
                None => Tokens::Dev(http.clone(), base.clone()),
            };
            (base, Some(target), Some(endpoint), Some(tokens), None)
        }
        Target::Janus(url) => {
            let janus = janus::JanusTarget::new(url)?;
            (janus.base.clone(), None, None, None, Some(janus))
        }
    };
    // Media sockets bind where the server's host resolves from here (loopback in tests).
    let host = reqwest::Url::parse(&base)?
        .host_str()
        .ok_or_else(|| anyhow!("--url has no host"))?
        .to_string();
    let server_ip = tokio::net::lookup_host((host.as_str(), 0))
        .await?
        .next()
        .ok_or_else(|| anyhow!("{host} does not resolve"))?
        .ip();
    // The address this machine routes to the server from: the peers' ICE host candidate.
    let local_ip = if janus.is_some() {
        // Janus gathers no loopback candidates: use this host's primary IPv4 address.
        janus::primary_ipv4().unwrap_or(server_ip)
    } else if server_ip.is_loopback() {
        server_ip
    } else {
        let any: std::net::IpAddr = if server_ip.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let probe = std::net::UdpSocket::bind((any, 0))?;
        probe.connect((server_ip, 9))?;
        probe.local_addr()?.ip()
    };
    let ice_tcp = match config.subscriber_transport {
        MediaTransport::Udp => None,
        MediaTransport::Webtransport if janus.is_some() => {
            bail!("--subscriber-transport webtransport needs our SFU")
        }
        MediaTransport::Webtransport => None,
        MediaTransport::Tcp if janus.is_some() => {
            bail!("--subscriber-transport tcp needs our SFU (Janus is not set up for ICE-TCP)")
        }
        MediaTransport::Tcp => Some(ice_tcp_addr(&base, server_ip).await?),
    };
    // Before any load, so both measure an idle machine.
    let floor = match config.floor_budget {
        Some(budget) => {
            Some(tokio::task::spawn_blocking(move || floor::Floor::measure(budget)).await??)
        }
        None => None,
    };
    let roles = roles(&config);
    let ctx = Arc::new(RunContext {
        ice_tcp,
        target,
        endpoint,
        relay,
        tokens,
        janus,
        shared: Shared::new(),
        room: format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        participants: roles.len(),
        local_ip,
        joined: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        config,
    });
    let config = &ctx.config;
    let subscribers = roles.iter().filter(|r| r.subscribe).count();
    let publishers = roles.iter().filter(|r| r.publish.is_some()).count();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    // Ramp: the first participant creates the room; the others follow at the configured rate.
    // The server's RSS before anyone joins: what follows is growth per subscriber.
    let rss_before = config.server_pid.and_then(stats::process_rss_bytes);
    let ramp_start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / config.ramp_per_sec.max(0.01));
    let mut tasks = Vec::with_capacity(roles.len());
    let mut next = Instant::now();
    for role in roles.iter().copied() {
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(participant(
            ctx.clone(),
            role,
            joined_tx,
            stop_rx.clone(),
        )));
        if role.index == 0 {
            // Nobody can join before the room exists.
            if !joined_rx.await.unwrap_or(false) {
                break;
            }
        }
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();

    // Wait until every subscriber receives media (or the ready timeout), then settle.
    let ready_deadline = Instant::now() + config.ready_timeout;
    loop {
        let ready = ctx.shared.subscribers_ready.load(Ordering::Relaxed);
        let failed = ctx.failed.load(Ordering::Relaxed);
        if ready + failed >= subscribers || Instant::now() >= ready_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let subscribers_ready = ctx.shared.subscribers_ready.load(Ordering::Relaxed);
    tokio::time::sleep(config.settle).await;

    // Steady state.
    let cpu_start = config.server_pid.and_then(stats::process_cpu_seconds);
    let relay_cpu_start = config.relay_pid.and_then(stats::process_cpu_seconds);
    let workers_start = config
        .server_pid
        .map(stats::worker_cpu_seconds)
        .unwrap_or_default();
    let rcvbuf_start = stats::udp_rcvbuf_errors();
    let measure_start = Instant::now();
    ctx.shared.phase.store(PHASE_MEASURE, Ordering::Relaxed);
    tokio::time::sleep(config.duration).await;
    ctx.shared.phase.store(PHASE_DONE, Ordering::Relaxed);
    let measured_secs = measure_start.elapsed().as_secs_f64();
    let cpu_end = config.server_pid.and_then(stats::process_cpu_seconds);
    let relay_cpu_end = config.relay_pid.and_then(stats::process_cpu_seconds);
    let workers_end = config
        .server_pid
        .map(stats::worker_cpu_seconds)
        .unwrap_or_default();
    let rcvbuf_errors = rcvbuf_start
        .zip(stats::udp_rcvbuf_errors())
        .map(|(start, end)| end.saturating_sub(start));
    let rss = config.server_pid.and_then(stats::process_rss_bytes);

    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("participant task panicked: {e}")),
            ..Default::default()
        }));
    }

    // Aggregate.
    let mut latency = Histogram::default();
    let mut joins = Histogram::default();
    let mut report = Report {
        target: config.target.clone(),
        scenario: config.scenario,
        layer: config.layer,
        subscriber_transport: config.subscriber_transport,
        ramp_per_sec: config.ramp_per_sec,
        publishers,
        subscribers,
        participants: ctx.participants,
        joined: ctx.joined.load(Ordering::Relaxed),
        failed: outcomes.iter().filter(|o| o.error.is_some()).count()
            + (ctx.participants - outcomes.len()),
        errors: outcomes
            .iter()
            .filter_map(|o| o.error.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .take(10)
            .collect(),
        ramp_secs,
        subscribers_ready,
        measured_secs,
        packets: 0,
        bytes: 0,
        packets_per_sec: 0.0,
        mbit_per_sec: 0.0,
        subscriber_packets: Vec::new(),
        expected_packets: 0,
        lost_packets: 0,
        loss_percent: 0.0,
        unstamped_packets: 0,
        latency_us: None,
        join_ms: None,
        keyframe_requests_at_publishers: 0,
        packets_by_layer: LayerPackets::default(),
        server: None,
        relay: None,
        floor,
        udp_rcvbuf_errors: rcvbuf_errors,
    };
    for outcome in &outcomes {
        report.keyframe_requests_at_publishers += outcome.keyframe_requests;
        if !outcome.subscribe {
            continue;
        }
        let rx = outcome.rx.clone().unwrap_or_default();
        report.packets += rx.packets;
        report.bytes += rx.bytes;
        report.unstamped_packets += rx.unstamped;
        report.packets_by_layer.low += rx.layer_packets[0];
        report.packets_by_layer.medium += rx.layer_packets[1];
        report.packets_by_layer.high += rx.layer_packets[2];
        report.packets_by_layer.audio += rx.layer_packets[3];
        report.subscriber_packets.push(rx.packets);
        let (expected, lost) = rx.loss();
        report.expected_packets += expected;
        report.lost_packets += lost;
        latency.merge(&rx.latency_us);
        if let Some(join) = outcome.join {
            joins.record(join.as_millis() as u64);
        }
    }
    report.packets_per_sec = report.packets as f64 / measured_secs.max(1e-9);
    report.mbit_per_sec = report.bytes as f64 * 8.0 / 1e6 / measured_secs.max(1e-9);
    report.loss_percent = if report.expected_packets == 0 {
        0.0
    } else {
        report.lost_packets as f64 * 100.0 / report.expected_packets as f64
    };
    report.latency_us = latency.summary();
    report.join_ms = joins.summary();
    if let (Some(pid), Some(start), Some(end)) = (config.server_pid, cpu_start, cpu_end) {
        report.server = Some(ServerUsage {
            worker_cpu_seconds: workers_end
                .iter()
                .zip(&workers_start)
                .map(|(end, start)| (end - start).max(0.0))
                .collect(),
            rss_bytes: rss,
            rss_bytes_per_subscriber: rss
                .filter(|_| subscribers > 0)
                .map(|r| r as f64 / subscribers as f64),
            rss_growth_per_subscriber: rss
                .zip(rss_before)
                .filter(|_| subscribers > 0)
                .map(|(after, before)| after.saturating_sub(before) as f64 / subscribers as f64),
            ..ServerUsage::measured(pid, end - start, measured_secs, report.packets)
        });
    }
    if let (Some(pid), Some(start), Some(end)) = (config.relay_pid, relay_cpu_start, relay_cpu_end)
    {
        report.relay = Some(ServerUsage {
            rss_bytes: stats::process_rss_bytes(pid),
            ..ServerUsage::measured(pid, end - start, measured_secs, report.packets)
        });
    }
    if let Some(path) = &config.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// One participant: signaling, publishing and/or subscribing until told to stop.
async fn participant(
    ctx: Arc<RunContext>,
    role: Role,
    joined: tokio::sync::oneshot::Sender<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome {
        subscribe: role.subscribe,
        ..Default::default()
    };
    let mut joined = Some(joined);
    let result = participant_inner(&ctx, role, &mut joined, stop, &mut outcome).await;
    if let Some(tx) = joined.take() {
        let _ = tx.send(false);
    }
    if let Err(e) = result {
        ctx.failed.fetch_add(1, Ordering::Relaxed);
        outcome.error = Some(format!("{e:#}"));
    }
    if let (Some(first), Some(started)) = (
        outcome.rx.as_ref().and_then(|rx| rx.first_packet),
        outcome.connect_at,
    ) {
        outcome.join = Some(first.saturating_duration_since(started));
    }
    outcome
}

async fn participant_inner(
    ctx: &RunContext,
    role: Role,
    joined: &mut Option<tokio::sync::oneshot::Sender<bool>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let (Some(tokens), Some(endpoint), Some(target)) = (&ctx.tokens, &ctx.endpoint, &ctx.target)
    else {
        let janus = ctx.janus.as_ref().expect("a Janus target when not ours");
        return janus::participant_inner(ctx, janus, role, joined, stop, outcome).await;
    };
    let name = format!("bench-{}-{}", ctx.room, role.index);
    let token = tokens.token(&name, &role, ctx.config.scenario).await?;
    outcome.connect_at = Some(Instant::now());
    // Pure subscribers go through the relay node when there is one.
    let (endpoint, target) = match &ctx.relay {
        Some((target, endpoint)) if role.publish.is_none() && role.index != 0 => (endpoint, target),
        _ => (endpoint, target),
    };
    let mut signal = SignalClient::connect_wt(endpoint.clone(), target).await?;
    signal
        .call("authenticate", json!({ "token": token }))
        .await?;
    if role.index == 0 {
        signal
            .call(
                "createRoom",
                json!({
                    "name": ctx.room,
                    "roomId": ctx.room,
                    "maxParticipants": ctx.participants.clamp(2, 1000),
                }),
            )
            .await?;
    }
    let frames_only = role.subscribe
        && role.publish.is_none()
        && ctx.config.subscriber_transport == MediaTransport::Webtransport;
    let mut join = json!({ "roomId": ctx.room, "displayName": name });
    if frames_only {
        join["media"] = json!("webtransport");
    }
    let room = signal.call("joinRoom", join).await?;
    ctx.joined.fetch_add(1, Ordering::Relaxed);
    if let Some(tx) = joined.take() {
        let _ = tx.send(true);
    }
    if frames_only {
        return frames::subscribe(ctx, &mut signal, &room, stop, outcome).await;
    }
    // Whoever may receive gets a receiving peer; only subscribers' count as "ready".
    let receiver = ctx.peer(role.subscribe).await?;
    let sender = match role.publish {
        Some(video) => {
            let peer = ctx.peer(false).await?;
            peer.publish_spec(&mut signal, Publish::load(video, false))
                .await?;
            Some(peer)
        }
        None => None,
    };
    let mut layered: HashSet<String> = HashSet::new();
    let result: anyhow::Result<()> = async {
        while let Some(message) = next_message(&mut signal, &mut stop).await? {
            if message["type"] != "subscriberOffer" {
                continue;
            }
            receiver.answer_offer(&mut signal, &message).await?;
            if ctx.config.layer == Layer::Auto {
                continue;
            }
            let tracks = message["data"]["tracks"].as_array().cloned();
            for track in tracks.unwrap_or_default() {
                let Some(producer) = track["producerId"].as_str() else {
                    continue;
                };
                if track["kind"] == "video" && layered.insert(producer.to_string()) {
                    signal
                        .call(
                            "setPreferredLayer",
                            json!({ "producerId": producer, "layer": ctx.config.layer.as_str() }),
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }
    .await;
    // Stats survive a signaling failure; collect them before reporting it.
    if let Ok((rx, _)) = receiver.take_stats().await {
        outcome.rx = Some(rx);
    }
    if let Some(sender) = &sender {
        if let Ok((_, plis)) = sender.take_stats().await {
            outcome.keyframe_requests = plis;
        }
    }
    result?;
    // Leaving is best effort and bounded: the run is over.
    let _ = tokio::time::timeout(Duration::from_secs(2), signal.call("leaveRoom", json!({}))).await;
    Ok(())
}

/// A participant's next notification: `None` once the run stops, an error when the server
/// ended the session (kicked, room closed, shutting down).
/// How often runner clients acknowledge what they received (`ping {lastSeq}`).
const ACK_EVERY: Duration = Duration::from_secs(2);

pub(crate) async fn next_message(
    signal: &mut SignalClient,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<Value>> {
    while !*stop.borrow() {
        // What a real client does: say what arrived, so the server's replay ring stays short.
        signal.acknowledge_every(ACK_EVERY).await?;
        let message = tokio::select! {
            m = signal.next_notification(Duration::from_millis(500)) => m?,
            _ = stop.changed() => return Ok(None),
        };
        let Some(message) = message else { continue };
        if message["type"] == "pong" {
            continue;
        }
        if matches!(
            message["type"].as_str(),
            Some("kicked" | "roomClosed" | "serverShuttingDown")
        ) {
            bail!("server ended the session: {message}");
        }
        return Ok(Some(message));
    }
    Ok(None)
}
