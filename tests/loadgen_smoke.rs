//! The load runner (`loadrun`, the `sfu-loadrun` crate) against an in-process server: each scenario runs for a
//! couple of seconds with a handful of peers and must report media at every subscriber,
//! measured loss and latency, and a parseable JSON report.

mod common;

/// These runs check the load runner's mechanics and layer accounting over 2 s measured right
/// after joining, with six servers sharing two cores: the server runs without bandwidth
/// estimation, which would (rightly) step subscribers down when CPU starvation shows up as
/// delay. BWE under load is what `tests/bwe.rs` and the benchmark's BWE on/off runs cover.
const BENCH_SERVER: &[&str] = &["--bwe-enabled", "false"];

use std::path::Path;
use std::time::Duration;

use loadrun::{BenchConfig, Layer, MediaTransport, Report, Scenario};

/// A config against `server` with tokens signed by the test secret, ramping 50/s.
fn bench_config(server: &sfu::ServerHandle, scenario: Scenario) -> BenchConfig {
    let mut config = BenchConfig::new(format!("http://{}", server.http_addr), scenario);
    config.ramp_per_sec = 50.0;
    config.jwt_secret = Some(common::SECRET.to_string());
    config
}

async fn run_scenario(
    scenario: Scenario,
    publishers: usize,
    subscribers: usize,
    layer: Layer,
    dev_tokens: bool,
) -> Report {
    run_scenario_over(
        scenario,
        publishers,
        subscribers,
        layer,
        dev_tokens,
        MediaTransport::Udp,
    )
    .await
}

async fn run_scenario_over(
    scenario: Scenario,
    publishers: usize,
    subscribers: usize,
    layer: Layer,
    dev_tokens: bool,
    subscriber_transport: MediaTransport,
) -> Report {
    let server = common::start_server_with(BENCH_SERVER).await;
    let json_path = common::scratch_dir().join("report.json");
    let mut config = bench_config(&server, scenario);
    config.publishers = publishers;
    config.subscribers = subscribers;
    config.duration = Duration::from_secs(2);
    config.settle = Duration::from_millis(300);
    config.ready_timeout = Duration::from_secs(10);
    config.layer = layer;
    config.subscriber_transport = subscriber_transport;
    // In-process server: its CPU is this process's (an upper bound, runner included).
    config.server_pid = Some(std::process::id());
    // One scenario exercises `/dev/token` (the test server is not in production mode).
    config.jwt_secret = (!dev_tokens).then(|| common::SECRET.to_string());
    config.json = Some(json_path.clone());
    let report = tokio::time::timeout(Duration::from_secs(25), loadrun::run(config))
        .await
        .expect("run finishes")
        .expect("run succeeds");
    println!("{}", report.table());

    assert_eq!(report.failed, 0, "errors: {:?}", report.errors);
    assert_eq!(report.subscriber_packets.len(), report.subscribers);
    assert!(
        report.subscriber_packets.iter().all(|&p| p > 20),
        "media must reach every subscriber: {:?}",
        report.subscriber_packets
    );
    // Frames carry no per-frame counter: loss is counted for RTP subscribers only.
    if subscriber_transport != MediaTransport::Webtransport {
        assert!(report.expected_packets > 0, "loss was not measured");
        assert!(
            report.loss_percent < 20.0,
            "loss {:.2} %",
            report.loss_percent
        );
    }
    assert_eq!(report.unstamped_packets, 0);
    let latency = report.latency_us.expect("latency percentiles");
    assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    assert!(latency.p99 < 2_000_000, "latency p99 {} µs", latency.p99);
    let join = report.join_ms.expect("join-time percentiles");
    assert_eq!(join.samples as usize, report.subscribers);
    // The machine's floor was measured in the same run, and our cost is quoted against it.
    let floor = report.floor.expect("floor measured");
    assert!(
        floor.sendmmsg_us > 0.0 && floor.aes_gcm_us > 0.0,
        "{floor:?}"
    );
    assert!(report.cpu_times_floor().is_some_and(|x| x > 0.0));
    // Receive-buffer drops over the window are read from /proc/net/snmp (machine-wide).
    assert!(report.udp_rcvbuf_errors.is_some(), "RcvbufErrors not read");
    let usage = report.server.as_ref().expect("server usage");
    assert!(usage.cpu_seconds >= 0.0);
    assert!(usage.rss_bytes.unwrap_or(0) > 0);

    let written: Report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON written"))
            .expect("JSON parses");
    assert_eq!(written.packets, report.packets);
    assert_eq!(written.scenario, scenario);
    assert_eq!(written.subscriber_transport, subscriber_transport);
    if subscriber_transport == MediaTransport::Tcp {
        assert_eq!(
            server.ctx.media.ice_tcp_stats().opened as usize,
            subscribers,
            "every subscriber received over its own ICE-TCP link"
        );
    }
    server.stop().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livestream_one_publisher_three_subscribers() {
    let report = run_scenario(Scenario::Livestream, 1, 3, Layer::Auto, false).await;
    assert_eq!(report.participants, 4);
    // Auto forwards the high layer (~1.5 Mbit/s) plus audio to each subscriber.
    assert!(
        report.mbit_per_sec > 3.0 * 0.5,
        "{} Mbit/s",
        report.mbit_per_sec
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livestream_with_subscribers_over_ice_tcp() {
    let report = run_scenario_over(
        Scenario::Livestream,
        1,
        3,
        Layer::High,
        false,
        MediaTransport::Tcp,
    )
    .await;
    assert!(
        report.table().contains("subscribers over tcp"),
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livestream_with_subscribers_over_webtransport() {
    let report = run_scenario_over(
        Scenario::Livestream,
        1,
        3,
        Layer::High,
        false,
        MediaTransport::Webtransport,
    )
    .await;
    let table = report.table();
    assert!(table.contains("subscribers over webtransport"), "{table}");
    assert!(table.contains("frames received"), "{table}");
    // High-layer video frames (30/s) and audio frames (50/s) reached each subscriber.
    assert!(
        report.packets_by_layer.high > 0 && report.packets_by_layer.audio > 0,
        "{table}"
    );
    assert_eq!(
        report.packets_by_layer.low + report.packets_by_layer.medium,
        0,
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_two_publishers_two_subscribers_with_dev_tokens() {
    let report = run_scenario(Scenario::Audio, 2, 2, Layer::Auto, true).await;
    assert_eq!(report.participants, 4);
    // 50 packets/s from each of two publishers, to each subscriber.
    let per_sub = report.packets as f64 / 2.0 / report.measured_secs;
    assert!((60.0..=130.0).contains(&per_sub), "{per_sub} packets/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_of_three_on_the_low_layer() {
    let report = run_scenario(Scenario::Meeting, 0, 3, Layer::Low, false).await;
    assert_eq!(report.participants, 3);
    assert_eq!(report.publishers, 3);
    // Two remote low layers (~150 kbit/s) plus audio each: far below the high layer's rate.
    let per_sub_mbit = report.mbit_per_sec / 3.0;
    assert!(per_sub_mbit < 0.8, "{per_sub_mbit} Mbit/s per subscriber");
}

/// `sfu-bench` as the CLI parses it (`loadrun::cli::BenchArgs`), run in-process.
async fn bench_cli(args: &[String]) -> i32 {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: loadrun::cli::BenchArgs,
    }
    let mut argv = vec!["sfu-bench".to_string()];
    argv.extend(args.iter().cloned());
    let cli = <Cli as clap::Parser>::try_parse_from(argv).expect("flags parse");
    tokio::time::timeout(Duration::from_secs(60), loadrun::cli::bench(cli.bench))
        .await
        .expect("bench finishes")
        .expect("bench succeeds")
}

/// `flags` plus what every CLI run here shares: 50 joins/s, tokens signed with the test
/// secret, this process as the server's pid (the server is in-process), `server`'s URL, and
/// the output files (`--json` etc.).
fn cli_args(server: &sfu::ServerHandle, flags: &[&str], outputs: &[(&str, &Path)]) -> Vec<String> {
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    let pid = std::process::id().to_string();
    let url = format!("http://{}", server.http_addr);
    for (flag, value) in [
        ("--ramp-per-sec", "50"),
        ("--jwt-secret", common::SECRET),
        ("--server-pid", &pid),
        ("--url", &url),
    ] {
        args.extend([flag.to_string(), value.to_string()]);
    }
    for (flag, path) in outputs {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_writes_json_chart_and_readme_block() {
    let server = common::start_server_with(BENCH_SERVER).await;
    let dir = common::scratch_dir();
    let (json, chart, readme) = (
        dir.join("sweep.json"),
        dir.join("sweep.svg"),
        dir.join("README.md"),
    );
    std::fs::write(&readme, "# x\n\n## Load runner\n\ntext\n\n## Status\n\ns\n").unwrap();
    let args = cli_args(
        &server,
        &[
            "--scenario",
            "audio",
            "--publishers",
            "1",
            "--sweep",
            "1,2",
            "--duration-secs",
            "1",
        ],
        &[
            ("--json", &json),
            ("--chart", &chart),
            ("--readme", &readme),
        ],
    );
    assert_eq!(bench_cli(&args).await, 0);

    let reports: Vec<Report> =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).unwrap();
    assert_eq!(
        reports.iter().map(|r| r.subscribers).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(reports.iter().all(|r| r.packets > 0 && r.failed == 0));
    assert!(reports
        .iter()
        .all(|r| r.packets_by_layer.audio == r.packets));
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // Two points in each panel (CPU per packet, loss), joined by one line each.
    assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
    assert_eq!(svg.matches("<polyline").count(), 2);
    let text = std::fs::read_to_string(&readme).unwrap();
    let perf = text
        .find("## Performance")
        .expect("Performance section added");
    assert!(perf < text.find("## Status").unwrap());
    assert!(text.contains("<!-- bench:audio-auto begin"));
    assert!(text.contains("Command: `sfu bench"));
    assert!(text.contains("sweep.svg)"));
    assert!(text.contains("server CPU µs / forwarded packet"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_capacity_steps_up_and_reports_per_core() {
    let server = common::start_server_with(BENCH_SERVER).await;
    let json = common::scratch_dir().join("capacity.json");
    let args = cli_args(
        &server,
        &[
            "--scenario",
            "audio",
            "--find-capacity",
            "--subscribers",
            "1",
            "--step-factor",
            "2",
            "--max-subscribers",
            "2",
            // The in-process "server" includes the runner: only loss may stop this search.
            "--cpu-limit",
            "10000",
            "--duration-secs",
            "1",
        ],
        &[("--json", &json)],
    );
    assert_eq!(bench_cli(&args).await, 0);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report}");
    assert_eq!(steps[0]["subscribers"], 1);
    assert_eq!(steps[1]["subscribers"], 2);
    assert_eq!(report["verdicts"], serde_json::json!(["pass", "pass"]));
    assert_eq!(report["capacity"], 2);
    assert_eq!(report["stopped_by"], "max reached");
    assert!(report["subscribers_per_core"].as_f64().unwrap() > 0.0);

    // A limit no run can meet: the first step fails and nothing passes.
    let cap = loadrun::capacity::CapacityConfig {
        start: 1,
        factor: 2.0,
        max: 4,
        loss_limit: -1.0,
        cpu_limit: 10000.0,
        refine: 1,
    };
    let mut base = bench_config(&server, Scenario::Audio);
    base.duration = Duration::from_secs(1);
    base.settle = Duration::from_millis(200);
    let failing = loadrun::capacity::find_capacity(base, &cap, |_| {})
        .await
        .unwrap();
    assert_eq!(failing.steps.len(), 1);
    assert_eq!(failing.capacity, None);
    assert!(
        failing.stopped_by.starts_with("fail: loss"),
        "{}",
        failing.stopped_by
    );
    server.stop().await;
}

/// Our SFU and Janus VideoRoom back to back. Needs Debian's `janus` (tests/run.sh installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_with_janus_reports_both_costs_and_the_ratio() {
    let janus = loadrun::janus::default_binary();
    if !janus.exists() {
        eprintln!(
            "SKIPPED: {} is absent (apt-get install -y janus)",
            janus.display()
        );
        return;
    }
    let server = common::start_server_with(BENCH_SERVER).await;
    let json = common::scratch_dir().join("compare.json");
    let args = cli_args(
        &server,
        &[
            "--scenario",
            "livestream",
            "--subscribers",
            "2",
            "--layer",
            "high",
            "--compare",
            "janus",
            // Unpinned here; benchmarks pin it with the default `--janus-cpus 0`.
            "--janus-cpus",
            "",
            "--duration-secs",
            "2",
        ],
        &[("--json", &json)],
    );
    assert_eq!(bench_cli(&args).await, 0);
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &runs[0];
    for side in ["sfu", "janus"] {
        let report: Report = serde_json::from_value(run[side].clone()).unwrap();
        assert_eq!(report.failed, 0, "{side}: {:?}", report.errors);
        assert!(
            report.subscriber_packets.iter().all(|&p| p > 20),
            "{side}: {:?}",
            report.subscriber_packets
        );
        // Both forward the layer asked for (Janus: substream 2 of the rid simulcast).
        assert!(
            report.packets_by_layer.high > 0,
            "{side}: {:?}",
            report.packets_by_layer
        );
        assert_eq!(
            report.packets_by_layer.low + report.packets_by_layer.medium,
            0,
            "{side}: {:?}",
            report.packets_by_layer
        );
        assert!(report.cpu_us_per_packet().is_some());
    }
    assert_eq!(
        run["janus"]["target"]["janus"],
        "http://127.0.0.1:8088/janus"
    );
    assert!(run["janus_over_sfu"].as_f64().unwrap() > 0.0);
    server.stop().await;
}
