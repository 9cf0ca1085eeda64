//! Test harness: the server in-process (`sfu::start`), PostgreSQL control, and everything
//! shared with benches and the load runner re-exported from `testkit` (str0m peers, the
//! WebSocket/WebTransport signaling client, tokens, synthetic media, process helpers).
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;

pub mod netns;

pub use testkit::*;

pub async fn start_server() -> sfu::ServerHandle {
    start_server_with(&[]).await
}

/// The test server, with extra command-line style settings appended (they override).
pub async fn start_server_with(extra: &[&str]) -> sfu::ServerHandle {
    let mut args = vec![
        "sfu",
        "--environment",
        "test",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--rtc-min-port",
        "0",
        "--ice-tcp-port",
        "0",
        "--rtc-listen-ip",
        "127.0.0.1",
        "--workers",
        "2",
        "--jwt-secret",
        SECRET,
        "--log-level",
        "warn",
        "--metrics-port",
        "0",
        "--webtransport-port",
        "0",
        "--resume-grace-secs",
        "1",
    ];
    // Each server its own audit files, so parallel tests never share a SQLite database.
    let dir = scratch_dir();
    let audit_db = format!("--audit-sqlite-path={}", dir.join("audit.db").display());
    let audit_spill = format!(
        "--audit-spill-path={}",
        dir.join("audit-spill.jsonl").display()
    );
    args.push(&audit_db);
    args.push(&audit_spill);
    args.extend_from_slice(extra);
    let config = sfu::config::Config::parse_from(args).expect("test config parses");
    let _ = sfu::telemetry::init_logging(
        &std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()),
        false,
    );
    sfu::start(config.resolve().expect("test config valid"))
        .await
        .expect("server starts")
}

/// The `sfu` binary of this build as its own process (see [`testkit::spawn_server_binary`]).
pub async fn spawn_server_process(env: &[(&str, &str)]) -> ServerProcess {
    spawn_server_binary(env!("CARGO_BIN_EXE_sfu").as_ref(), env).await
}

/// A token from the server's own authenticator (whatever secret it was started with).
pub fn token(server: &sfu::ServerHandle, user: &str) -> String {
    server
        .ctx
        .auth
        .issue_for(user, Some(user), 600)
        .expect("HS256 secret configured")
}

// ---------------------------------------------------------------------------------------------
// Signaling client: `testkit::SignalClient` plus constructors that know the in-process server.

/// A [`testkit::SignalClient`] (every method and field through `Deref`) with constructors that
/// take the in-process server; panics when it cannot connect.
pub struct WsClient(pub testkit::SignalClient);

pub type SignalClient = WsClient;

impl std::ops::Deref for WsClient {
    type Target = testkit::SignalClient;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for WsClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        WsClient(
            testkit::SignalClient::connect_ws(addr)
                .await
                .expect("websocket connects"),
        )
    }

    pub async fn connect_with(server: &sfu::ServerHandle, transport: Transport) -> Self {
        match transport {
            Transport::WebSocket => Self::connect(server.http_addr).await,
            Transport::WebTransport => connect_wt(server).await.expect("WebTransport connects"),
        }
    }
}

/// Connect to the server's WebTransport endpoint, trusting the certificate by its hash.
pub async fn connect_wt(server: &sfu::ServerHandle) -> Result<WsClient, String> {
    let state = server.ctx.webtransport.get().expect("WebTransport enabled");
    let hash = state.certificate_hash().expect("self-signed certificate");
    connect_wt_with(state.local_addr.port(), hash).await
}

pub async fn connect_wt_with(port: u16, hash: [u8; 32]) -> Result<WsClient, String> {
    testkit::SignalClient::connect_wt_local(port, hash)
        .await
        .map(WsClient)
        .map_err(|e| format!("{e:#}"))
}

/// A client authenticated as `name` that joined `room` (creating it first when `create`).
pub async fn joined(server: &sfu::ServerHandle, room: &str, name: &str, create: bool) -> WsClient {
    let mut ws = WsClient::connect(server.http_addr).await;
    ws.join(&token(server, name), room, name, create).await;
    ws
}

// ---------------------------------------------------------------------------------------------
// The machine's PostgreSQL (trust auth, database `test`), for audit tests that stop it.

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL installed")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .expect("a PostgreSQL version")
}

/// `pg_ctlcluster … <action>`; exit code 2 means it was already in that state.
pub fn pg_ctl(action: &str) -> bool {
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &pg_version(), "main", action])
        .status()
        .is_ok_and(|status| status.success() || status.code() == Some(2))
}

/// Restarts PostgreSQL when dropped, so a failing outage test does not leave it down.
pub struct RestartPostgres;

impl Drop for RestartPostgres {
    fn drop(&mut self) {
        // No assertion here: this may run while a failed test unwinds.
        if !pg_ctl("start") {
            eprintln!("could not restart PostgreSQL (pg_ctlcluster start)");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium: the scripts' directory, once its prerequisites are there.

/// `tests/browser`, after checking that `npm ci` ran there and Chromium is installed.
pub fn browser_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci --prefix tests/browser` (tests/run.sh does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium missing: `apt-get install chromium` (tests/run.sh does)"
    );
    dir
}

/// `node tests/browser/<script> <args…>` (after [`browser_dir`]'s checks): its output echoed,
/// its exit status and stdout returned. Panics if it runs longer than `limit`.
pub async fn run_browser_script<I, S>(
    script: &str,
    args: I,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let run = tokio::process::Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{script} finishes within {limit:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    (output.status, stdout)
}

/// The server's `GET /status` document.
#[allow(dead_code)]
pub async fn status(server: &sfu::ServerHandle) -> serde_json::Value {
    status_at(server.http_addr).await
}

/// `GET /status` of a server reached at `addr` (an `sfu` process, another node).
pub async fn status_at(addr: SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/status"))
        .await
        .expect("GET /status")
        .json()
        .await
        .expect("/status is JSON")
}

// ---------------------------------------------------------------------------------------------
// Several nodes: the machine's Redis, and clients of a node reached by address.

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable")
}

/// A WebSocket client of the node at `addr`, authenticated as `user`.
pub async fn client_at(addr: SocketAddr, user: &str) -> SignalClient {
    let mut c = SignalClient::connect(addr).await;
    c.authenticate(&token_for(user)).await;
    c
}

/// The video producer's id in a `publisherAnswer`'s data.
pub fn video_producer(publisher_answer: &serde_json::Value) -> String {
    publisher_answer["producers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["kind"] == "video"))
        .and_then(|p| p["producerId"].as_str())
        .unwrap_or_else(|| panic!("no video producer in {publisher_answer}"))
        .to_string()
}
