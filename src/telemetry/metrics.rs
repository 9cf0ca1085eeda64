//! Prometheus metrics via the `metrics` crate, exported on METRICS_PORT at `/metrics`.
//!
//! Counters for events (requests, errors, limit trips) are recorded where they happen. Totals
//! the media workers keep (packets, bytes, NACKs, PLIs) and the current counts of rooms,
//! participants, transports, producers and consumers are read at scrape time, so a
//! forwarded packet costs no atomic shared across workers.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppContext;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder once (tests start several servers in one process).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .expect("valid buckets")
                .set_buckets_for_metric(
                    Matcher::Full("sfu_bwe_estimate_bps".into()),
                    &[
                        100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6, 20e6,
                    ],
                )
                .expect("valid buckets")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// Render the exposition text, refreshing the scrape-time series first.
pub async fn render(ctx: &Arc<AppContext>) -> String {
    let handle = handle();
    let rooms = ctx.rooms.counts();
    let media = ctx.media.stats().await;
    metrics::gauge!("sfu_rooms").set(rooms.rooms as f64);
    metrics::gauge!("sfu_participants").set(rooms.participants as f64);
    metrics::gauge!("sfu_producers").set(media.producers as f64);
    metrics::gauge!("sfu_consumers").set(media.consumers as f64);
    metrics::gauge!("sfu_transports").set(media.transports as f64);
    metrics::gauge!("sfu_signaling_sessions").set(ctx.sessions.count() as f64);
    metrics::gauge!("sfu_draining").set(if ctx.is_draining() { 1.0 } else { 0.0 });
    metrics::counter!("sfu_rtp_packets_received_total").absolute(media.rtp_packets_in);
    metrics::counter!("sfu_rtp_packets_forwarded_total").absolute(media.rtp_packets_forwarded);
    metrics::counter!("sfu_rtp_bytes_forwarded_total").absolute(media.rtp_bytes_forwarded);
    metrics::counter!("sfu_nacks_received_total").absolute(media.nacks_received);
    metrics::counter!("sfu_plis_sent_total").absolute(media.keyframe_requests);
    metrics::counter!("sfu_layer_switches_total").absolute(media.layer_switches);
    metrics::counter!("sfu_datagrams_dropped_total").absolute(media.datagrams_dropped);
    metrics::counter!("sfu_bwe_estimates_total").absolute(media.bwe_estimates);
    metrics::counter!("sfu_bwe_estimator_resets_total").absolute(media.bwe_resets);
    for (reason, count) in [
        ("initial", media.allocations_initial),
        ("congestion", media.allocations_congestion),
        ("recovered", media.allocations_recovered),
        ("preference", media.allocations_preference),
    ] {
        metrics::counter!("sfu_bwe_allocation_changes_total", "reason" => reason).absolute(count);
    }
    metrics::gauge!("sfu_bwe_paused_tracks").set(media.paused_for_bandwidth as f64);
    let tcp = ctx.media.ice_tcp_stats();
    metrics::gauge!("sfu_ice_tcp_links").set(tcp.links as f64);
    metrics::counter!("sfu_ice_tcp_links_opened_total").absolute(tcp.opened);
    for (reason, count) in tcp.closed {
        metrics::counter!("sfu_ice_tcp_closed_total", "reason" => reason).absolute(count);
    }
    if let Some(p) = process_stats() {
        metrics::counter!("process_cpu_seconds_total").absolute(p.cpu_seconds as u64);
        metrics::gauge!("process_cpu_seconds").set(p.cpu_seconds);
        metrics::gauge!("process_resident_memory_bytes").set(p.resident_bytes as f64);
    }
    handle.render()
}

struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
}

/// CPU time and RSS from /proc (Linux); `None` elsewhere.
fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let rss_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // CLK_TCK and the page size are 100 and 4096 on every Linux we target.
    Some(ProcessStats {
        cpu_seconds: ticks / 100.0,
        resident_bytes: rss_pages * 4096,
    })
}
