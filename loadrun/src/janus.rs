//! Target adapter for Janus VideoRoom (Janus 1.1.x): the same str0m publishers and subscribers
//! as against our SFU, signaled over Janus's plain HTTP API (`POST /janus`, long-poll
//! `GET /janus/<session>`), and a Janus process started with the repository's configuration
//! (`benches/janus/`), pinned like ours and killed at the end.
//!
//! Flow per participant: `create` a session, `attach` `janus.plugin.videoroom`; publishers
//! `join` as `publisher` and `publish` with our str0m offer (Opus + 3-layer VP8 simulcast by
//! rid); subscribers `join` as `subscriber` with the publishers' feeds, answer Janus's offer
//! with str0m and `start`; a fixed layer is picked with `configure {streams:[{mid, substream}]}`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Layer, Outcome, Role, RunContext, Scenario};
use testkit::peer::Publish;

const PLUGIN: &str = "janus.plugin.videoroom";

/// Where Janus listens and what the run shares between its participants.
pub struct JanusTarget {
    pub base: String,
    http: reqwest::Client,
    pub room: u64,
    /// Publisher ids (feeds) as they finish publishing.
    feeds: Mutex<Vec<u64>>,
}

impl JanusTarget {
    pub fn new(base: &str) -> anyhow::Result<JanusTarget> {
        Ok(JanusTarget {
            base: base.trim_end_matches('/').to_string(),
            // Long polls hold for up to 30 s.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .pool_max_idle_per_host(4096)
                .build()?,
            room: rand::random::<u64>() % (1 << 40) + 1,
            feeds: Mutex::new(Vec::new()),
        })
    }

    fn feeds(&self) -> Vec<u64> {
        self.feeds.lock().expect("feeds").clone()
    }
}

static TRANSACTION: AtomicU64 = AtomicU64::new(1);

fn transaction() -> String {
    format!("t{}", TRANSACTION.fetch_add(1, Ordering::Relaxed))
}

/// One Janus session with a long-poll task feeding its events into a channel.
struct Session {
    http: reqwest::Client,
    url: String,
    events: mpsc::UnboundedReceiver<Value>,
    /// Events read while waiting for another one.
    backlog: VecDeque<Value>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let reply: Value = http
        .post(url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?
        .error_for_status()?
        .json()
        .await?;
    if reply["janus"] == "error" {
        bail!("Janus error: {}", reply["error"]);
    }
    Ok(reply)
}

impl Session {
    async fn create(target: &JanusTarget) -> anyhow::Result<Session> {
        let reply = post(
            &target.http,
            &target.base,
            json!({ "janus": "create", "transaction": transaction() }),
        )
        .await?;
        let id = reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id in {reply}"))?;
        let url = format!("{}/{id}", target.base);
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(long_poll(target.http.clone(), url.clone(), tx));
        Ok(Session {
            http: target.http.clone(),
            url,
            events,
            backlog: VecDeque::new(),
            poller,
        })
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let reply = post(
            &self.http,
            &self.url,
            json!({ "janus": "attach", "plugin": PLUGIN, "transaction": transaction() }),
        )
        .await?;
        reply["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id in {reply}"))
    }

    /// Send a plugin message; returns the synchronous reply (`success` or `ack`).
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = json!({ "janus": "message", "transaction": transaction(), "body": body });
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        let reply = post(&self.http, &format!("{}/{handle}", self.url), request).await?;
        if let Some(error) = reply["plugindata"]["data"]["error"].as_str() {
            bail!("videoroom: {error}");
        }
        Ok(reply)
    }

    /// Our offer carries all our candidates: tell Janus there are no more.
    async fn trickle_completed(&self, handle: u64) -> anyhow::Result<()> {
        post(
            &self.http,
            &format!("{}/{handle}", self.url),
            json!({ "janus": "trickle", "transaction": transaction(), "candidate": { "completed": true } }),
        )
        .await?;
        Ok(())
    }

    /// The next plugin event of `handle` for which `want` holds (others are kept for later).
    async fn event(
        &mut self,
        handle: u64,
        within: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        if let Some(i) = self
            .backlog
            .iter()
            .position(|e| e["sender"] == json!(handle) && want(e))
        {
            return Ok(self.backlog.remove(i).expect("index"));
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| anyhow!("no Janus event within {within:?}"))?
                .ok_or_else(|| anyhow!("Janus long poll ended"))?;
            if let Some(error) = event["plugindata"]["data"]["error"].as_str() {
                if event["sender"] == json!(handle) {
                    bail!("videoroom: {error}");
                }
            }
            if event["sender"] == json!(handle) && want(&event) {
                return Ok(event);
            }
            if self.backlog.len() < 256 {
                self.backlog.push_back(event);
            }
        }
    }

    async fn destroy(&self) {
        let _ = post(
            &self.http,
            &self.url,
            json!({ "janus": "destroy", "transaction": transaction() }),
        )
        .await;
    }
}

/// `GET /janus/<session>?maxev=N` in a loop; every event goes to `tx`.
async fn long_poll(http: reqwest::Client, url: String, tx: mpsc::UnboundedSender<Value>) {
    loop {
        let reply = http
            .get(&url)
            .query(&[("maxev", "16"), ("rid", &transaction())])
            .send()
            .await;
        let value: Value = match reply {
            Ok(r) => match r.json().await {
                Ok(v) => v,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let events = match value {
            Value::Array(events) => events,
            other => vec![other],
        };
        for event in events {
            if event["janus"] == "keepalive" {
                continue;
            }
            if event["janus"] == "error" && event["error"]["code"] == 458 {
                // No such session: it is gone.
                return;
            }
            if tx.send(event).is_err() {
                return;
            }
        }
    }
}

/// One participant against Janus; mirrors `participant_inner` for our SFU.
pub(super) async fn participant_inner(
    ctx: &RunContext,
    target: &JanusTarget,
    role: Role,
    joined: &mut Option<tokio::sync::oneshot::Sender<bool>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let name = format!("bench-{}-{}", ctx.room, role.index);
    outcome.connect_at = Some(Instant::now());
    let mut session = Session::create(target).await?;
    let publisher_handle = session.attach().await?;
    if role.index == 0 {
        let publishers = ctx
            .participants
            .min(match ctx.config.scenario {
                Scenario::Meeting => ctx.participants,
                _ => ctx.config.publishers.max(1),
            })
            .max(1);
        session
            .message(
                publisher_handle,
                json!({
                    "request": "create",
                    "room": target.room,
                    "description": name,
                    "publishers": publishers,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "bitrate": 0,
                    "fir_freq": 0,
                    "notify_joining": false,
                }),
                None,
            )
            .await
            .context("create room")?;
    }
    ctx.joined.fetch_add(1, Ordering::Relaxed);
    if let Some(tx) = joined.take() {
        let _ = tx.send(true);
    }

    let sender = match role.publish {
        Some(video) => {
            session
                .message(
                    publisher_handle,
                    json!({ "request": "join", "ptype": "publisher", "room": target.room, "display": name }),
                    None,
                )
                .await?;
            let joined = session
                .event(publisher_handle, Duration::from_secs(15), |e| {
                    e["plugindata"]["data"]["videoroom"] == "joined"
                })
                .await
                .context("publisher join")?;
            let feed = joined["plugindata"]["data"]["id"]
                .as_u64()
                .ok_or_else(|| anyhow!("no publisher id in {joined}"))?;
            let peer = ctx.peer(false).await?;
            // Janus reads the rids of `a=simulcast` highest first (substream 2 = the first rid).
            let offer = peer.publish_offer(Publish::load(video, true)).await?;
            session
                .message(
                    publisher_handle,
                    json!({ "request": "publish", "audio": true, "video": video }),
                    Some(json!({ "type": "offer", "sdp": offer })),
                )
                .await?;
            session.trickle_completed(publisher_handle).await?;
            let answer = session
                .event(publisher_handle, Duration::from_secs(15), |e| {
                    e["jsep"]["type"] == "answer"
                })
                .await
                .context("publish answer")?;
            peer.publish_answer(answer["jsep"]["sdp"].as_str().unwrap_or_default())
                .await?;
            // Janus lists a feed for subscribers only once its PeerConnection is up.
            session
                .event(publisher_handle, Duration::from_secs(15), |e| {
                    e["janus"] == "webrtcup"
                })
                .await
                .context("publisher PeerConnection (webrtcup)")?;
            target.feeds.lock().expect("feeds").push(feed);
            Some((peer, feed))
        }
        None => None,
    };

    let mut receiver = None;
    if role.subscribe {
        // Subscribe to every publisher but ourselves, once all have published.
        let own = sender.as_ref().map(|(_, feed)| *feed);
        let wanted = match ctx.config.scenario {
            Scenario::Meeting => ctx.participants,
            _ => ctx.config.publishers.max(1),
        };
        let deadline = Instant::now() + ctx.config.ready_timeout;
        let feeds = loop {
            let feeds = target.feeds();
            if feeds.len() >= wanted || Instant::now() >= deadline {
                break feeds;
            }
            if *stop.borrow() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let streams: Vec<Value> = feeds
            .iter()
            .filter(|f| Some(**f) != own)
            .map(|f| json!({ "feed": f }))
            .collect();
        if streams.is_empty() {
            bail!("no Janus publisher to subscribe to");
        }
        let handle = session.attach().await?;
        session
            .message(
                handle,
                json!({ "request": "join", "ptype": "subscriber", "room": target.room, "streams": streams }),
                None,
            )
            .await?;
        let offer = session
            .event(handle, Duration::from_secs(15), |e| {
                e["jsep"]["type"] == "offer"
            })
            .await
            .context("subscriber offer")?;
        let peer = ctx.peer(true).await?;
        let answer = peer
            .answer_sdp(offer["jsep"]["sdp"].as_str().unwrap_or_default())
            .await?;
        session
            .message(
                handle,
                json!({ "request": "start" }),
                Some(json!({ "type": "answer", "sdp": answer })),
            )
            .await?;
        session.trickle_completed(handle).await?;
        let substream = match ctx.config.layer {
            Layer::Low => Some(0),
            Layer::Medium => Some(1),
            Layer::High => Some(2),
            Layer::Auto => None,
        };
        if let Some(substream) = substream {
            let video_mids: Vec<Value> = offer["plugindata"]["data"]["streams"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter(|s| s["type"] == "video")
                        .map(|s| json!({ "mid": s["mid"], "substream": substream }))
                        .collect()
                })
                .unwrap_or_default();
            if !video_mids.is_empty() {
                session
                    .message(
                        handle,
                        json!({ "request": "configure", "streams": video_mids }),
                        None,
                    )
                    .await?;
            }
        }
        receiver = Some(peer);
    }

    // Steady state: keep the long poll drained until the run ends.
    while !*stop.borrow() {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                session.backlog.clear();
                while session.events.try_recv().is_ok() {}
            }
        }
    }
    if let Some(receiver) = &receiver {
        if let Ok((rx, _)) = receiver.take_stats().await {
            outcome.rx = Some(rx);
        }
    }
    if let Some((sender, _)) = &sender {
        if let Ok((_, plis)) = sender.take_stats().await {
            outcome.keyframe_requests = plis;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), session.destroy()).await;
    Ok(())
}

/// A Janus process started for one run; killed when dropped.
pub struct JanusProcess {
    child: Child,
    pub url: String,
}

impl JanusProcess {
    /// Start `janus -F <config_dir>` (under `taskset -c <cpus>` when given) and wait until its
    /// HTTP API answers on `url`.
    pub async fn start(
        binary: &Path,
        config_dir: &Path,
        cpus: Option<&str>,
        url: &str,
    ) -> anyhow::Result<JanusProcess> {
        let config_dir = std::fs::canonicalize(config_dir)
            .with_context(|| format!("Janus config folder {}", config_dir.display()))?;
        let log = std::env::temp_dir().join(format!("sfu-bench-janus-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)?;
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .arg("-F")
            .arg(&config_dir)
            .arg("-C")
            .arg(config_dir.join("janus.jcfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file));
        let child = command
            .spawn()
            .with_context(|| format!("starting {} (is Janus installed?)", binary.display()))?;
        let mut process = JanusProcess {
            child,
            url: url.trim_end_matches('/').to_string(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                bail!(
                    "Janus exited at start-up ({status}); log: {}",
                    log.display()
                );
            }
            if let Ok(r) = http.get(format!("{}/info", process.url)).send().await {
                if r.status().is_success() {
                    return Ok(process);
                }
            }
            if Instant::now() >= deadline {
                process.stop();
                bail!(
                    "Janus did not answer on {} within 15 s; log: {}",
                    url,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This host's primary IPv4 address (the source of its default route); no packet is sent.
pub fn primary_ipv4() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("8.8.8.8:53").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// The Janus binary: `JANUS_BIN`, else `/usr/bin/janus`, else `janus` on the PATH.
pub fn default_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("JANUS_BIN") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/bin/janus");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("janus")
    }
}

/// The repository's Janus configuration folder (`benches/janus` at the workspace root, beside
/// this crate's `loadrun/`).
pub fn default_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("benches/janus")
}
