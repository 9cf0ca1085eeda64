//! Bandwidth estimation with real browsers on a real shaped link (the browser side is
//! tests/browser/bwe.mjs; tests/bwe.rs is the same story with str0m peers).
//!
//! A network namespace is joined to the host by a veth pair on a private /30; the server (in
//! process) listens, and announces its ICE candidate, on the host-side address. `tc tbf` on the
//! host-side veth shapes everything the SFU sends to the namespace. One Chromium runs on the
//! host (the publisher: 1280x720 three-layer simulcast from a generated clip with motion and
//! noise, plus an unshaped second subscriber); another runs inside the namespace (the shaped
//! subscriber), launched through a wrapper script that does `ip netns exec`.
//!
//! Checks (numbers of the issue; details in bwe.mjs): at 700 kbit/s the shaped subscriber
//! settles within 5 s on a layer <= 640 wide and then for 20 s decodes >= 15 fps with < 2 % loss
//! and no freeze over 1 s; raised to 20 Mbit/s it is back at 1280 wide within 15 s; at
//! 150 kbit/s its video is paused and announced while audio keeps arriving without loss; the
//! unshaped subscriber stays at 1280 wide throughout. Every measurement and timing is printed
//! (`-- --nocapture`); `TEST_LOG=error,sfu::media::core::bandwidth=trace` adds the server's
//! estimates and allocations.
//!
//! Needs root (namespaces, tc), Chromium and `npm ci --prefix tests/browser` (tests/run.sh).
//! The namespace, the veth pair and the clip are removed when the test ends, also on failure.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::netns::{is_root, sh, VethNamespace};

/// Queue of the shaper: what tbf holds before it drops (bufferbloat a home link might have).
const TBF_LATENCY: &str = "100ms";
/// The first rate and its bucket; bwe.mjs changes both later (20 Mbit/s, then 150 kbit/s).
const TBF_FIRST_RATE: &str = "700kbit";
const TBF_FIRST_BURST: &str = "2kb";

/// The namespace of the shaped subscriber, with `tc tbf` on the host side's egress: SFU ->
/// subscriber only. The subscriber's uplink (feedback, signaling) is not shaped.
fn shaped_link() -> VethNamespace {
    let link = VethNamespace::create("bwe", 77);
    sh(
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            &link.host_dev,
            "root",
            "tbf",
            "rate",
            TBF_FIRST_RATE,
            "burst",
            TBF_FIRST_BURST,
            "latency",
            TBF_LATENCY,
        ],
    );
    link
}

/// A temporary directory removed on drop (the clip is ~80 MB).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sfu-bwe-browser-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("cleanup: {}: {e}", self.0.display());
        }
    }
}

/// A 2 s, 30 fps, 1280x720 YUV4MPEG2 clip that is expensive to encode, so every simulcast
/// layer runs at its bitrate cap: a drifting diagonal gradient, fresh luma noise on every frame
/// and a textured, coloured block crossing the picture. (Chromium's built-in fake camera is
/// so cheap to encode that its top layer stays near 700 kbit/s; GUIDE.md §2.)
fn write_clip(path: &Path) {
    const W: usize = 1280;
    const H: usize = 720;
    const FRAMES: usize = 60;
    const BLOCK: usize = 240;
    const NOISE: usize = 8;
    let mut out = Vec::with_capacity(64 + FRAMES * (6 + W * H * 3 / 2));
    out.extend_from_slice(format!("YUV4MPEG2 W{W} H{H} F30:1 Ip A1:1 C420jpeg\n").as_bytes());
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = vec![0u8; W * H];
    for frame in 0..FRAMES {
        // xorshift64*, eight noise bytes per step (the test crate is built without optimisation).
        for chunk in noise.chunks_exact_mut(8) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            chunk.copy_from_slice(&rng.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let bx = (frame * (W - BLOCK)) / FRAMES;
        let by = (H - BLOCK) / 2 + (frame % 20) * 6;
        out.extend_from_slice(b"FRAME\n");
        for y in 0..H {
            let row = &noise[y * W..(y + 1) * W];
            let in_block_rows = (by..by + BLOCK).contains(&y);
            for (x, n) in row.iter().enumerate() {
                let base = if in_block_rows && (bx..bx + BLOCK).contains(&x) {
                    // 16x16 checkerboard moving with the block.
                    if ((x - bx) / 16 + (y - by) / 16).is_multiple_of(2) {
                        40
                    } else {
                        210
                    }
                } else {
                    64 + ((x + y + frame * 4) % 256) / 2
                };
                // +-NOISE around the base.
                out.push(
                    (base + (*n as usize % (2 * NOISE)))
                        .saturating_sub(NOISE)
                        .min(255) as u8,
                );
            }
        }
        for (plane, block_value) in [(0usize, 90u8), (1, 200)] {
            for y in 0..H / 2 {
                for x in 0..W / 2 {
                    let in_block = (by / 2..(by + BLOCK) / 2).contains(&y)
                        && (bx / 2..(bx + BLOCK) / 2).contains(&x);
                    out.push(if in_block {
                        block_value
                    } else {
                        (112 + plane * 16 + ((x + frame) % 64) / 4) as u8
                    });
                }
            }
        }
    }
    fs::write(path, out).expect("clip written");
}

/// Jiffies (busy, all) of every CPU since boot, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let all: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

// Tracks issue 13. With the probe fixes (README "Bandwidth estimation") it passed all nine
// checks in 4 of 5 runs here (before: 2 of 17); the failing run lost 4 audio packets while
// video was paused at 150 kbit/s and the unshaped subscriber dipped to 640 wide once at start.
// With the loss cap's step-down and no probing under it (2026-12-03): 2 of 3 runs, pause
// announced 1.5-2.6 s after the cut (before: 4.4-7.1 s); the failing run lost 1 audio packet
// while paused (tbf dropped 1 of 527 packets; 237 of them were RTX, str0m padding or resends).
// With no probing for 5 s after a pause: 10 of 12, no audio lost while paused in any, pause
// announced 2.8-4.7 s after the cut; one failure had the unshaped viewer below 1280 at its
// start, one the thin viewer on 1280 for 5 samples at 700 kbit/s after a climb.
// Too statistical for the CI gate; run it with
// `cargo test --test bwe_browser -- --ignored --nocapture` (about 47 s).
#[ignore = "statistical, ~1 failure in 5 runs on 2 cores (issue 13); run with --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_subscriber_on_a_shaped_link_gets_the_layer_its_link_carries() {
    assert!(
        is_root(),
        "this test needs root: it creates a network namespace and shapes a veth with tc"
    );
    // Fail before building the namespace when Chromium or the npm packages are missing.
    common::browser_dir();
    let started = Instant::now();
    // Everything here competes for the machine's cores (encoder, two decoders, the server):
    // the run's CPU load goes into the report, to tell a busy machine from a regression.
    let (busy_before, all_before) = cpu_jiffies();
    let load_before = load_average();

    let tmp = TempDir::new();
    let clip = tmp.0.join("clip.y4m");
    write_clip(&clip);
    let clip_time = started.elapsed();

    let link = shaped_link();
    let wrapper = link.chromium_wrapper(&tmp.0);

    // HTTP, WebSocket, WebTransport and media all on the host-side veth address: the publisher
    // and the unshaped subscriber reach it locally, the namespace through the veth.
    let mut args = vec!["--bwe-enabled", "true"];
    args.extend(link.server_args());
    let server = common::start_server_with(&args).await;
    println!(
        "clip {} MB written in {:.1?}; namespace {} ({}) <- {} {} ({TBF_FIRST_RATE}); server {}",
        fs::metadata(&clip).map(|m| m.len() >> 20).unwrap_or(0),
        clip_time,
        link.ns,
        link.ns_ip,
        link.host_dev,
        link.host_ip,
        server.http_addr,
    );

    // The server's own view while the browsers run: did it pause anything for bandwidth?
    let max_paused = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let media = server.ctx.media.clone();
        let max_paused = Arc::clone(&max_paused);
        tokio::spawn(async move {
            loop {
                let paused = media.stats().await.paused_for_bandwidth;
                max_paused.fetch_max(paused, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let base = format!("http://{}", server.http_addr);
    let args: [&std::ffi::OsStr; 5] = [
        base.as_ref(),
        clip.as_ref(),
        wrapper.as_ref(),
        link.host_dev.as_ref(),
        TBF_LATENCY.as_ref(),
    ];
    let (status, stdout) =
        common::run_browser_script("bwe.mjs", args, Duration::from_secs(150)).await;
    sampler.abort();
    let stats = server.ctx.media.stats().await;
    let max_paused = max_paused.load(Ordering::Relaxed);
    let (busy_after, all_after) = cpu_jiffies();
    println!(
        "server: allocations initial {} congestion {} recovered {}, layer switches {}, \
         keyframe requests {}, NACKs {}, most video paused for bandwidth at once {max_paused}; \
         whole test {:.1?}; machine: CPU {}% busy ({} cores), load average {load_before} -> {}",
        stats.allocations_initial,
        stats.allocations_congestion,
        stats.allocations_recovered,
        stats.layer_switches,
        stats.keyframe_requests,
        stats.nacks_received,
        started.elapsed(),
        (busy_after - busy_before) * 100 / (all_after - all_before).max(1),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
    );
    assert!(status.success(), "bwe.mjs failed (output above)");
    assert!(stdout.contains(" passed, 0 failed"), "no summary line");
    assert!(
        max_paused >= 1,
        "the page saw a bandwidth pause but the server never counted one"
    );
    assert!(
        stats.allocations_congestion >= 1 && stats.allocations_recovered >= 1,
        "{stats:?}"
    );
    server.stop().await;
    drop(link);
    drop(tmp);
}
