//! Headless Chromium publishing through a real coturn only (`iceTransportPolicy: 'relay'`, the
//! `iceServers` of joinRoomResponse) while a normal page decodes: tests/browser/turn_relay.mjs.
//! `tests/run.sh` installs Chromium, its npm packages and coturn.

mod common;
mod coturn;

use std::time::Duration;

use coturn::{Coturn, TURN_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_through_turn_relay_only_and_a_normal_page_decodes() {
    let turn = Coturn::start().await;
    let url = turn.url();
    let server =
        common::start_server_with(&["--turn-urls", &url, "--turn-secret", TURN_SECRET]).await;
    let (status, stdout) = common::run_browser_script(
        "turn_relay.mjs",
        [format!("http://{}", server.http_addr)],
        Duration::from_secs(90),
    )
    .await;
    assert!(
        status.success(),
        "turn_relay.mjs failed (output above); coturn log {}:\n{}",
        turn.log.display(),
        turn.log()
    );
    assert!(stdout.contains(" passed, 0 failed"), "no summary line");
    let stats = server.ctx.media.stats().await;
    assert!(stats.rtp_packets_forwarded > 0, "{stats:?}");
    server.stop().await;
}
