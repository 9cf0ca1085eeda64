//! Headless Chromium against the real server: page A publishes 1280x720 simulcast, page B
//! subscribes, decodes, and switches layers. The browser side is tests/browser/simulcast.mjs;
//! `.ci/run` installs Chromium and its npm packages.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_simulcast_and_subscriber_switches_layers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci --prefix tests/browser` (see .ci/run)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium missing: `apt-get install chromium` (see .ci/run)"
    );
    let server = common::start_server().await;
    let url = format!("http://{}", server.http_addr);
    let run = tokio::process::Command::new("node")
        .arg(dir.join("simulcast.mjs"))
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("browser test finishes within 150 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let stats = server.ctx.media.stats().await;
    println!("server media stats: {stats:?}");
    assert!(
        output.status.success(),
        "browser checks failed (output above)"
    );
    assert!(stdout.contains(" passed, 0 failed"), "no summary line");
    assert!(stats.rtp_packets_forwarded > 0);
    server.stop().await;
}
