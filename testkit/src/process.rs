//! Processes and files for tests: scratch directories, free ports, and the server binary run as
//! its own process with test settings.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::token::SECRET;

/// A fresh directory under the system temp dir for one server's (or test's) files.
pub fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sfu-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A free TCP port on loopback (for spawned server processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `sfu` binary running as its own process, killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the server binary at `binary` with a clean environment (test defaults, signing with
/// [`SECRET`], + `env`). It binds port 0 itself and the real address is read from its start-up
/// log line, so no port can be raced away.
pub async fn spawn_server_binary(binary: &Path, env: &[(&str, &str)]) -> ServerProcess {
    let dir = scratch_dir();
    let mut command = std::process::Command::new(binary);
    command
        .env_clear()
        .env("NODE_ENV", "test")
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("METRICS_PORT", "0")
        .env("WEBTRANSPORT_PORT", "0")
        .env("MEDIASOUP_WORKER_RTC_MIN_PORT", "0")
        .env("ICE_TCP_PORT", "0")
        .env("RTC_LISTEN_IP", "127.0.0.1")
        .env("SFU_WORKERS", "1")
        .env("DJANGO_JWT_SECRET", SECRET)
        // `sfu=info` for the "sfu listening" line; warnings stay visible.
        .env("LOG_LEVEL", "warn,sfu=info")
        .env("AUDIT_SQLITE_PATH", dir.join("audit.db"))
        .env("AUDIT_SPILL_PATH", dir.join("audit-spill.jsonl"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("sfu binary starts");
    // Logs go to stdout; keep draining both pipes so the server never blocks on them.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            match listening_addr(&line) {
                Some(addr) => {
                    let _ = tx.send(addr);
                }
                // Info lines are noise here; warnings and errors are worth seeing.
                None if !line.contains("INFO") => {
                    eprintln!("[sfu] {line}");
                }
                None => {}
            }
        }
    });
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[sfu] {line}");
        }
    });
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("server process logged its address");
    ServerProcess { child, addr }
}

/// The HTTP address in the "sfu listening" log line (pretty or JSON format).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("sfu listening") {
        return None;
    }
    let after = &line[line.find("http_addr")?..];
    let start = after.find("127.0.0.1:")?;
    let addr: String = after[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}

/// Poll `check` every 50 ms until it holds; panics naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_in_both_log_formats() {
        let pretty = "INFO sfu: sfu listening http_addr=127.0.0.1:4321 wt=1";
        let json = r#"{"fields":{"message":"sfu listening","http_addr":"127.0.0.1:99"}}"#;
        assert_eq!(
            listening_addr(pretty),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(listening_addr(json), Some("127.0.0.1:99".parse().unwrap()));
        assert_eq!(listening_addr("something else 127.0.0.1:1"), None);
    }
}
