//! ICE-TCP with real browsers on a network that drops UDP (the browser side is
//! tests/browser/ice_tcp.mjs; tests/ice_tcp.rs is the same story with str0m peers).
//!
//! A network namespace is joined to the host by a veth pair; nftables inside it drop every
//! UDP packet. The server (in process) listens on, and announces, the host-side address. One
//! Chromium runs inside the namespace with the unmodified web demo: it can reach the server
//! only over TCP, so it publishes and subscribes through the ICE-TCP port. Another runs on
//! the host and publishes and decodes normally. (`--webrtc-ip-handling-policy` cannot be used
//! instead: Chromium then drops its TCP candidates too; GUIDE.md §2.)
//!
//! Needs root (namespaces, nftables), Chromium and `npm ci --prefix tests/browser`
//! (tests/run.sh installs them). The namespace and the veth pair are removed when it ends.

mod common;

use std::time::Duration;

use common::netns::{is_root, VethNamespace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_without_udp_publishes_and_subscribes_over_ice_tcp() {
    assert!(
        is_root(),
        "this test needs root: it creates a network namespace and nftables rules"
    );
    common::browser_dir();
    let link = VethNamespace::create("tcp", 78);
    link.block_udp();
    let dir = testkit::scratch_dir();
    let wrapper = link.chromium_wrapper(&dir);
    let server = common::start_server_with(&link.server_args()).await;
    let tcp = server.ctx.media.ice_tcp_addr().expect("ICE-TCP on");
    let base = format!("http://{}", server.http_addr);
    let args: [&std::ffi::OsStr; 2] = [base.as_ref(), wrapper.as_ref()];
    let (status, stdout) =
        common::run_browser_script("ice_tcp.mjs", args, Duration::from_secs(90)).await;
    let ice_tcp = server.ctx.media.ice_tcp_stats();
    println!("ICE-TCP at {tcp}: {ice_tcp:?}");
    assert!(status.success(), "ice_tcp.mjs failed (output above)");
    assert!(stdout.contains(" passed, 0 failed"), "no summary line");
    // The page's own stats said TCP; the server agrees: A's two connections were TCP links
    // (closed again when the browsers closed).
    assert!(ice_tcp.opened >= 2, "{ice_tcp:?}");
    let _ = std::fs::remove_dir_all(dir);
}
