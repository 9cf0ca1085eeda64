//! Headless Chromium publishing through a real coturn only (`iceTransportPolicy: 'relay'`, the
//! `iceServers` of joinRoomResponse) while a normal page decodes: tests/browser/turn_relay.mjs.
//! `tests/run.sh` installs Chromium, its npm packages and coturn.

mod common;
mod coturn;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use coturn::{Coturn, TURN_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_through_turn_relay_only_and_a_normal_page_decodes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci --prefix tests/browser` (tests/run.sh does)"
    );
    let turn = Coturn::start().await;
    let url = turn.url();
    let server =
        common::start_server_with(&["--turn-urls", &url, "--turn-secret", TURN_SECRET]).await;
    let run = tokio::process::Command::new("node")
        .arg(dir.join("turn_relay.mjs"))
        .arg(format!("http://{}", server.http_addr))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("browser script finishes within 90 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "turn_relay.mjs failed (output above); coturn log {}:\n{}",
        turn.log.display(),
        turn.log()
    );
    assert!(stdout.contains(" passed, 0 failed"), "no summary line");
    let stats = server.ctx.media.stats().await;
    assert!(stats.rtp_packets_forwarded > 0, "{stats:?}");
    server.stop().await;
}
