//! What one run measured ([`Report`], also its JSON form) and the table printed after it.

use serde::{Deserialize, Serialize};

use crate::floor::Floor;
use crate::stats::Percentiles;
use crate::{Layer, MediaTransport, Scenario, Target};

/// Server-side cost over the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU seconds per wall second × 100 (can exceed 100 on several cores).
    pub cpu_percent: f64,
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// CPU seconds of each media worker thread while measuring (how a room spread).
    #[serde(default)]
    pub worker_cpu_seconds: Vec<f64>,
    pub rss_bytes: Option<u64>,
    pub rss_bytes_per_subscriber: Option<f64>,
    /// RSS at the end minus RSS before the first join, per subscriber.
    #[serde(default)]
    pub rss_growth_per_subscriber: Option<f64>,
}

impl ServerUsage {
    /// `cpu` seconds of process `pid` over `secs` in which subscribers received `packets`.
    pub fn measured(pid: u32, cpu: f64, secs: f64, packets: u64) -> Self {
        let cpu = cpu.max(0.0);
        ServerUsage {
            pid,
            cpu_seconds: cpu,
            cpu_percent: cpu * 100.0 / secs.max(1e-9),
            cpu_us_per_forwarded_packet: (packets > 0).then(|| cpu * 1e6 / packets as f64),
            worker_cpu_seconds: Vec::new(),
            rss_bytes: None,
            rss_bytes_per_subscriber: None,
            rss_growth_per_subscriber: None,
        }
    }
}

/// Packets received while measuring, by the publisher layer their stamp names.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LayerPackets {
    pub audio: u64,
    pub low: u64,
    pub medium: u64,
    pub high: u64,
}

/// The result of one run (also the JSON written to `--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The server measured.
    #[serde(default = "default_target")]
    pub target: Target,
    pub scenario: Scenario,
    pub layer: Layer,
    /// How subscribers received: UDP or ICE-TCP.
    #[serde(default)]
    pub subscriber_transport: MediaTransport,
    pub ramp_per_sec: f64,
    pub publishers: usize,
    /// Participants that subscribe (every participant in `meeting`).
    pub subscribers: usize,
    pub participants: usize,
    pub joined: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub ramp_secs: f64,
    /// Subscribers that received media before measurement began.
    pub subscribers_ready: usize,
    pub measured_secs: f64,
    /// Packets received by all subscribers while measuring (= packets the SFU forwarded to them).
    pub packets: u64,
    pub bytes: u64,
    pub packets_per_sec: f64,
    pub mbit_per_sec: f64,
    /// Packets received by each subscriber while measuring.
    pub subscriber_packets: Vec<u64>,
    pub expected_packets: u64,
    pub lost_packets: u64,
    pub loss_percent: f64,
    pub unstamped_packets: u64,
    pub latency_us: Option<Percentiles>,
    /// Signaling connect → first media packet, per subscriber.
    pub join_ms: Option<Percentiles>,
    pub keyframe_requests_at_publishers: u64,
    /// Which layers reached the subscribers (shows what the server forwarded).
    #[serde(default)]
    pub packets_by_layer: LayerPackets,
    pub server: Option<ServerUsage>,
    /// The relay node's cost, when subscribers joined through one (`--relay-url`).
    #[serde(default)]
    pub relay: Option<ServerUsage>,
    /// The machine's floor per packet, measured before the run (`floor.rs`).
    #[serde(default)]
    pub floor: Option<Floor>,
    /// UDP datagrams the kernel dropped for a full socket receive buffer while measuring,
    /// machine-wide: tells a stall upstream of the fan-out from loss in the server.
    #[serde(default)]
    pub udp_rcvbuf_errors: Option<u64>,
}

fn default_target() -> Target {
    Target::Sfu
}

impl Report {
    /// Server CPU µs per forwarded packet, when the server's pid was given.
    pub fn cpu_us_per_packet(&self) -> Option<f64> {
        self.server
            .as_ref()
            .and_then(|s| s.cpu_us_per_forwarded_packet)
    }

    /// Server CPU per forwarded packet as a multiple of the machine's floor.
    pub fn cpu_times_floor(&self) -> Option<f64> {
        let floor = self.floor?.total_us;
        (floor > 0.0).then(|| self.cpu_us_per_packet().map(|c| c / floor))?
    }
}

fn fmt_percentiles(p: &Option<Percentiles>, scale: f64, unit: &str) -> String {
    match p {
        Some(p) => format!(
            "p50 {:.2}{unit}  p99 {:.2}{unit}  max {:.2}{unit}  (n={})",
            p.p50 as f64 / scale,
            p.p99 as f64 / scale,
            p.max as f64 / scale,
            p.samples
        ),
        None => "-".into(),
    }
}

impl Report {
    /// What `packets` counts: frames when subscribers receive over WebTransport.
    pub fn unit(&self) -> &'static str {
        if self.subscriber_transport == MediaTransport::Webtransport {
            "frame"
        } else {
            "packet"
        }
    }

    /// Server CPU nanoseconds per byte delivered to subscribers.
    pub fn cpu_ns_per_byte(&self) -> Option<f64> {
        let cpu = self.server.as_ref()?.cpu_seconds;
        (self.bytes > 0).then(|| cpu * 1e9 / self.bytes as f64)
    }

    /// A plain two-column table.
    pub fn table(&self) -> String {
        let l = self.packets_by_layer;
        let unit = self.unit();
        let mut rows: Vec<(&str, String)> = vec![
            (
                "target",
                match &self.target {
                    Target::Sfu => "our SFU".to_string(),
                    Target::Janus(url) => format!("Janus VideoRoom ({url})"),
                },
            ),
            (
                "scenario",
                format!(
                    "{:?} (layer {}, subscribers over {})",
                    self.scenario,
                    self.layer.as_str(),
                    self.subscriber_transport.as_str()
                )
                .to_lowercase(),
            ),
            (
                "participants",
                format!(
                    "{} ({} publishing, {} subscribing)",
                    self.participants, self.publishers, self.subscribers
                ),
            ),
            (
                "joined / failed",
                format!("{} / {}", self.joined, self.failed),
            ),
            ("ramp", format!("{:.1} s", self.ramp_secs)),
            (
                "subscribers ready",
                format!("{} / {}", self.subscribers_ready, self.subscribers),
            ),
            ("measured", format!("{:.1} s", self.measured_secs)),
            (
                if unit == "frame" {
                    "frames received"
                } else {
                    "packets received"
                },
                format!(
                    "{} ({:.0}/s, {:.2} Mbit/s)",
                    self.packets, self.packets_per_sec, self.mbit_per_sec
                ),
            ),
            (
                "per subscriber",
                match (
                    self.subscriber_packets.iter().min(),
                    self.subscriber_packets.iter().max(),
                ) {
                    (Some(min), Some(max)) => format!("min {min}  max {max} {unit}s"),
                    _ => "-".into(),
                },
            ),
            (
                "loss",
                if unit == "frame" {
                    "not counted for frames".to_string()
                } else {
                    format!(
                        "{:.3} % ({} of {})",
                        self.loss_percent, self.lost_packets, self.expected_packets
                    )
                },
            ),
            (
                "by layer",
                format!(
                    "audio {}  low {}  medium {}  high {}",
                    l.audio, l.low, l.medium, l.high
                ),
            ),
            (
                "UDP receive-buffer drops",
                self.udp_rcvbuf_errors
                    .map(|n| format!("{n} (machine-wide, while measuring)"))
                    .unwrap_or_else(|| "-".into()),
            ),
            ("latency", fmt_percentiles(&self.latency_us, 1000.0, " ms")),
            ("join time", fmt_percentiles(&self.join_ms, 1.0, " ms")),
            (
                "keyframe requests",
                self.keyframe_requests_at_publishers.to_string(),
            ),
        ];
        if let Some(floor) = &self.floor {
            rows.push((
                "floor",
                format!(
                    "{:.2} µs/packet (sendmmsg {:.2} + AES-128-GCM {:.2}); server at {}",
                    floor.total_us,
                    floor.sendmmsg_us,
                    floor.aes_gcm_us,
                    self.cpu_times_floor()
                        .map(|x| format!("{x:.2}× the floor"))
                        .unwrap_or_else(|| "-".into())
                ),
            ));
        }
        if let Some(relay) = &self.relay {
            rows.push((
                "relay node cpu",
                format!(
                    "{:.2} s ({:.1} %), {} µs/forwarded {unit}",
                    relay.cpu_seconds,
                    relay.cpu_percent,
                    relay
                        .cpu_us_per_forwarded_packet
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                ),
            ));
        }
        if let Some(server) = &self.server {
            rows.push((
                "server cpu",
                format!(
                    "{:.2} s ({:.1} %), {} µs/forwarded {unit}, {} ns/byte",
                    server.cpu_seconds,
                    server.cpu_percent,
                    server
                        .cpu_us_per_forwarded_packet
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    self.cpu_ns_per_byte()
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into())
                ),
            ));
            if server.worker_cpu_seconds.len() > 1 {
                let per: Vec<String> = server
                    .worker_cpu_seconds
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("#{i} {s:.2} s"))
                    .collect();
                rows.push(("worker cpu", per.join(", ")));
            }
            rows.push((
                "server rss",
                match (server.rss_bytes, server.rss_bytes_per_subscriber) {
                    (Some(r), Some(per)) => format!(
                        "{:.1} MiB ({:.1} KiB/subscriber; grew {} KiB/subscriber)",
                        r as f64 / 1048576.0,
                        per / 1024.0,
                        server
                            .rss_growth_per_subscriber
                            .map(|g| format!("{:.1}", g / 1024.0))
                            .unwrap_or_else(|| "-".into())
                    ),
                    (Some(r), None) => format!("{:.1} MiB", r as f64 / 1048576.0),
                    _ => "-".into(),
                },
            ));
        }
        for e in &self.errors {
            rows.push(("error", e.clone()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}
