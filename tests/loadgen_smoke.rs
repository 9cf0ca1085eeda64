//! The load runner (`sfu::loadgen`) against an in-process server: each scenario runs for a
//! couple of seconds with a handful of peers and must report media at every subscriber,
//! measured loss and latency, and a parseable JSON report.

mod common;

use std::time::Duration;

use sfu::loadgen::{BenchConfig, Layer, Report, Scenario};

async fn run_scenario(
    scenario: Scenario,
    publishers: usize,
    subscribers: usize,
    layer: Layer,
    dev_tokens: bool,
) -> Report {
    let server = common::start_server_with(&[]).await;
    let json_path = common::scratch_dir().join("report.json");
    let mut config = BenchConfig::new(format!("http://{}", server.http_addr), scenario);
    config.publishers = publishers;
    config.subscribers = subscribers;
    config.duration = Duration::from_secs(2);
    config.settle = Duration::from_millis(300);
    config.ready_timeout = Duration::from_secs(10);
    config.ramp_per_sec = 50.0;
    config.layer = layer;
    // In-process server: its CPU is this process's (an upper bound, runner included).
    config.server_pid = Some(std::process::id());
    // One scenario exercises `/dev/token` (the test server is not in production mode).
    config.jwt_secret = (!dev_tokens).then(|| common::SECRET.to_string());
    config.json = Some(json_path.clone());
    let report = tokio::time::timeout(Duration::from_secs(25), sfu::loadgen::run(config))
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
    assert!(report.expected_packets > 0, "loss was not measured");
    assert!(
        report.loss_percent < 20.0,
        "loss {:.2} %",
        report.loss_percent
    );
    assert_eq!(report.unstamped_packets, 0);
    let latency = report.latency_us.expect("latency percentiles");
    assert!(latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    assert!(latency.p99 < 2_000_000, "latency p99 {} µs", latency.p99);
    let join = report.join_ms.expect("join-time percentiles");
    assert_eq!(join.samples as usize, report.subscribers);
    let usage = report.server.as_ref().expect("server usage");
    assert!(usage.cpu_seconds >= 0.0);
    assert!(usage.rss_bytes.unwrap_or(0) > 0);

    let written: Report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON written"))
            .expect("JSON parses");
    assert_eq!(written.packets, report.packets);
    assert_eq!(written.scenario, scenario);
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
