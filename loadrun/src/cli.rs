//! `sfu-bench` (and `sfu bench`): flags, modes (one run, a sweep, `--find-capacity`, `--compare janus`) and
//! their outputs (table, JSON, SVG chart, README section).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;

use super::capacity::{self, CapacityConfig, CapacityReport};
use super::chart::{self, Series};
use super::janus::{self, JanusProcess};
use super::readme;
use super::{BenchConfig, Layer, MediaTransport, Report, Scenario, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// Our SFU at `--url` (started by you).
    Sfu,
    /// Janus VideoRoom, started by the runner with `--janus-config`.
    Janus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareWith {
    Janus,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    #[arg(long, value_enum, default_value = "livestream")]
    pub scenario: Scenario,
    /// Publishers (livestream, audio); ignored by `meeting`.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers; participants for `meeting`. The first step of `--find-capacity`.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Several runs, one per subscriber count (comma-separated), e.g. `--sweep 50,100,200`.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<usize>,
    /// Measured steady state, after the ramp.
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// Participants started per second.
    #[arg(long, default_value_t = 10.0)]
    pub ramp_per_sec: f64,
    #[arg(long, value_enum, default_value = "auto")]
    pub layer: Layer,
    /// How subscribers receive media: UDP, ICE-TCP through the server's `ICE_TCP_PORT`, or
    /// frames over their WebTransport session (`consumeFrames`; counted per frame).
    #[arg(long, value_enum, default_value = "udp")]
    pub subscriber_transport: MediaTransport,
    /// Read this process's CPU time and RSS from /proc (our SFU's pid).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// HS256 secret to mint tokens; without it tokens come from `/dev/token`.
    #[arg(long, env = "DJANGO_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Subscribers join through this node (RELAY_ROOMS), which relays the room from --url's.
    #[arg(long)]
    pub relay_url: Option<String>,
    /// The relay node's pid: its CPU is reported as "relay node cpu".
    #[arg(long)]
    pub relay_pid: Option<u32>,
    /// Write the report(s) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw CPU per forwarded packet and loss against subscribers (SVG) here.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Rewrite this run's block in the README's Performance section (e.g. `README.md`).
    #[arg(long)]
    pub readme: Option<PathBuf>,
    /// Name of the README block (default: derived from mode and scenario).
    #[arg(long)]
    pub readme_key: Option<String>,
    /// Raise subscribers (×`--step-factor` from `--subscribers`) until loss exceeds
    /// `--loss-limit` or the server's CPU reaches `--cpu-limit`; report subscribers per core.
    #[arg(long)]
    pub find_capacity: bool,
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    #[arg(long, default_value_t = 2000)]
    pub max_subscribers: usize,
    /// Loss (%) above which a step fails.
    #[arg(long, default_value_t = 0.5)]
    pub loss_limit: f64,
    /// Server CPU (% of one core) at which a step counts as saturated.
    #[arg(long, default_value_t = 95.0)]
    pub cpu_limit: f64,
    /// Bisection steps between the last passing and the first failing count.
    #[arg(long, default_value_t = 2)]
    pub refine: usize,
    /// Which server to measure.
    #[arg(long, value_enum, default_value = "sfu")]
    pub target: TargetKind,
    /// Run against our SFU, then against a Janus the runner starts, with the same parameters;
    /// print both CPU costs per forwarded packet and their ratio.
    #[arg(long, value_enum)]
    pub compare: Option<CompareWith>,
    /// Janus configuration folder (`janus -F`).
    #[arg(long)]
    pub janus_config: Option<PathBuf>,
    /// The Janus binary (default `$JANUS_BIN`, `/usr/bin/janus`).
    #[arg(long)]
    pub janus_bin: Option<PathBuf>,
    /// Janus's HTTP API, as configured in `janus.transport.http.jcfg`.
    #[arg(long, default_value = "http://127.0.0.1:8088/janus")]
    pub janus_url: String,
    /// CPUs Janus is pinned to (`taskset -c`); empty: not pinned.
    #[arg(long, default_value = "0")]
    pub janus_cpus: String,
}

impl BenchArgs {
    fn config(&self, subscribers: usize) -> BenchConfig {
        let mut config = BenchConfig::new(self.url.clone(), self.scenario);
        config.publishers = self.publishers;
        config.subscribers = subscribers;
        config.duration = Duration::from_secs(self.duration_secs);
        config.ramp_per_sec = self.ramp_per_sec;
        config.layer = self.layer;
        config.subscriber_transport = self.subscriber_transport;
        config.server_pid = self.server_pid;
        config.jwt_secret = self.jwt_secret.clone();
        config.relay_url = self.relay_url.clone();
        config.relay_pid = self.relay_pid;
        config
    }

    fn counts(&self) -> Vec<usize> {
        if self.sweep.is_empty() {
            vec![self.subscribers]
        } else {
            self.sweep.clone()
        }
    }

    fn janus_options(&self) -> JanusOptions {
        JanusOptions {
            binary: self.janus_bin.clone().unwrap_or_else(janus::default_binary),
            config_dir: self
                .janus_config
                .clone()
                .unwrap_or_else(janus::default_config_dir),
            cpus: Some(self.janus_cpus.clone()).filter(|c| !c.is_empty()),
            url: self.janus_url.clone(),
        }
    }

    fn default_key(&self) -> String {
        let scenario = format!("{:?}", self.scenario).to_lowercase();
        if self.find_capacity {
            format!("capacity-{scenario}")
        } else if self.compare.is_some() {
            format!("compare-janus-{scenario}")
        } else {
            format!("{scenario}-{}", self.layer.as_str())
        }
    }
}

/// How the runner starts Janus.
#[derive(Debug, Clone)]
pub struct JanusOptions {
    pub binary: PathBuf,
    pub config_dir: PathBuf,
    pub cpus: Option<String>,
    pub url: String,
}

impl JanusOptions {
    pub async fn start(&self) -> anyhow::Result<JanusProcess> {
        JanusProcess::start(
            &self.binary,
            &self.config_dir,
            self.cpus.as_deref(),
            &self.url,
        )
        .await
    }
}

/// Our SFU and Janus at one subscriber count, same parameters, back to back.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub sfu: Report,
    pub janus: Report,
    /// Janus's CPU per forwarded packet ÷ ours.
    pub janus_over_sfu: Option<f64>,
}

impl Comparison {
    pub fn new(sfu: Report, janus: Report) -> Comparison {
        let janus_over_sfu = match (sfu.cpu_us_per_packet(), janus.cpu_us_per_packet()) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        Comparison {
            sfu,
            janus,
            janus_over_sfu,
        }
    }
}

/// Run `config` against our SFU, then against a freshly started Janus (killed afterwards).
pub async fn compare_janus(
    config: BenchConfig,
    janus: &JanusOptions,
) -> anyhow::Result<Comparison> {
    let mut ours = config.clone();
    ours.target = Target::Sfu;
    let sfu = super::run(ours).await.context("run against our SFU")?;
    let janus_report = run_janus(config, janus).await?;
    Ok(Comparison::new(sfu, janus_report))
}

/// Start Janus, run `config` against it with its pid, stop it.
pub async fn run_janus(mut config: BenchConfig, janus: &JanusOptions) -> anyhow::Result<Report> {
    let mut process = janus.start().await?;
    config.target = Target::Janus(process.url.clone());
    config.server_pid = Some(process.pid());
    let report = super::run(config).await.context("run against Janus");
    process.stop();
    report
}

#[derive(Serialize)]
#[serde(untagged)]
enum Output<'a> {
    Runs(&'a [Report]),
    Capacity(&'a CapacityReport),
    Comparisons(&'a [Comparison]),
}

/// `sfu bench`: run, print, write; the exit code.
pub async fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    let command = command_line();
    let mut failed = false;
    let (output_json, chart_series, markdown): (String, Vec<(String, Vec<Report>)>, String) =
        if args.find_capacity {
            if args.compare.is_some() {
                return Err(anyhow!("--find-capacity and --compare run separately"));
            }
            let cap = CapacityConfig {
                start: args.subscribers.max(1),
                factor: args.step_factor,
                max: args.max_subscribers,
                loss_limit: args.loss_limit,
                cpu_limit: args.cpu_limit,
                refine: args.refine,
            };
            let mut base = args.config(args.subscribers);
            let mut janus_process = None;
            if args.target == TargetKind::Janus {
                let process = args.janus_options().start().await?;
                base.target = Target::Janus(process.url.clone());
                base.server_pid = Some(process.pid());
                janus_process = Some(process);
            }
            let report = capacity::find_capacity(base, &cap, |step| {
                print!("{}", step.table());
                println!(
                    "→ {} subscribers: {}\n",
                    step.subscribers,
                    capacity::verdict(step, &cap)
                );
            })
            .await?;
            drop(janus_process);
            println!("{}", report.summary());
            let name = target_name(args.target).to_string();
            (
                serde_json::to_string_pretty(&Output::Capacity(&report))?,
                vec![(name, report.steps.clone())],
                report.markdown(),
            )
        } else if args.compare.is_some() {
            let janus = args.janus_options();
            if args.server_pid.is_none() {
                return Err(anyhow!(
                    "--compare needs --server-pid of our SFU to measure its CPU"
                ));
            }
            let mut comparisons = Vec::new();
            for n in args.counts() {
                let comparison = compare_janus(args.config(n), &janus).await?;
                println!("== our SFU, {n} subscribers\n{}", comparison.sfu.table());
                println!("== Janus, {n} subscribers\n{}", comparison.janus.table());
                println!("{}", comparison_line(&comparison));
                failed |= comparison.sfu.failed > 0 || comparison.janus.failed > 0;
                comparisons.push(comparison);
            }
            (
                serde_json::to_string_pretty(&Output::Comparisons(&comparisons))?,
                vec![
                    (
                        "our SFU".into(),
                        comparisons.iter().map(|c| c.sfu.clone()).collect(),
                    ),
                    (
                        "Janus VideoRoom".into(),
                        comparisons.iter().map(|c| c.janus.clone()).collect(),
                    ),
                ],
                comparisons_markdown(&comparisons),
            )
        } else {
            let mut reports = Vec::new();
            let mut janus_process = None;
            for n in args.counts() {
                let mut config = args.config(n);
                if args.target == TargetKind::Janus {
                    if janus_process.is_none() {
                        janus_process = Some(args.janus_options().start().await?);
                    }
                    let process = janus_process.as_ref().expect("started");
                    config.target = Target::Janus(process.url.clone());
                    config.server_pid = Some(process.pid());
                }
                let report = super::run(config).await?;
                print!("{}", report.table());
                failed |= report.failed > 0;
                reports.push(report);
            }
            drop(janus_process);
            let json = if reports.len() == 1 {
                serde_json::to_string_pretty(&reports[0])?
            } else {
                serde_json::to_string_pretty(&Output::Runs(&reports))?
            };
            (
                json,
                vec![(target_name(args.target).to_string(), reports.clone())],
                runs_markdown(&reports),
            )
        };

    if let Some(path) = &args.json {
        std::fs::write(path, &output_json)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        let title = format!(
            "{}, layer {}: {}",
            format!("{:?}", args.scenario).to_lowercase(),
            args.layer.as_str(),
            if args.find_capacity {
                "--find-capacity steps"
            } else if args.compare.is_some() {
                "our SFU and Janus VideoRoom, same runner"
            } else {
                "runs"
            }
        );
        write_chart(path, &title, &chart_series)?;
        println!("chart written to {}", path.display());
    }
    if let Some(path) = &args.readme {
        let key = args
            .readme_key
            .clone()
            .unwrap_or_else(|| args.default_key());
        let mut block = format!("Command: `{command}`\n\nMachine: {}\n\n", machine());
        block.push_str(&markdown);
        if let Some(chart) = &args.chart {
            let rel = relative_to(chart, path);
            block.push_str(&format!("\n![{key}]({rel})\n"));
        }
        readme::update(path, &key, &block)?;
        println!("README block `{key}` written to {}", path.display());
    }
    Ok(if failed { 1 } else { 0 })
}

/// Entry point of the `sfu-bench` binary.
pub fn main(args: BenchArgs) -> ! {
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("sfu-bench: {e}");
        std::process::exit(2)
    });
    match runtime.block_on(bench(args)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sfu-bench: bench failed: {e:#}");
            std::process::exit(1)
        }
    }
}

fn target_name(target: TargetKind) -> &'static str {
    match target {
        TargetKind::Sfu => "our SFU",
        TargetKind::Janus => "Janus VideoRoom",
    }
}

/// Write the SVG chart of `series` (name, runs) to `path`.
pub fn write_chart(
    path: &std::path::Path,
    title: &str,
    series: &[(String, Vec<Report>)],
) -> anyhow::Result<()> {
    let series: Vec<Series> = series
        .iter()
        .map(|(name, reports)| Series {
            name,
            points: reports
                .iter()
                .map(|r| (r.subscribers as f64, r.cpu_us_per_packet(), r.loss_percent))
                .collect(),
        })
        .collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, chart::svg(title, &series))
        .with_context(|| format!("writing {}", path.display()))
}

fn comparison_line(c: &Comparison) -> String {
    let f = |v: Option<f64>| {
        v.map(|v| format!("{v:.2} µs"))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "CPU per forwarded packet at {} subscribers: our SFU {}, Janus {}, Janus/ours {}",
        c.sfu.subscribers,
        f(c.sfu.cpu_us_per_packet()),
        f(c.janus.cpu_us_per_packet()),
        c.janus_over_sfu
            .map(|r| format!("{r:.2}×"))
            .unwrap_or_else(|| "-".into())
    )
}

/// The command line as typed, with the binary shown as `sfu`.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match args.iter().position(|a| a == "bench") {
        Some(i) => args[i + 1..].to_vec(),
        None => args,
    };
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    format!("sfu bench {}", quoted.join(" "))
}

/// CPU model, cores and kernel, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    // Under `taskset` this is the runner's own share.
    let runner = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs (runner on {runner}), Linux {}",
        kernel.trim()
    )
}

fn relative_to(file: &std::path::Path, readme: &std::path::Path) -> String {
    let base = readme.parent().unwrap_or(std::path::Path::new(""));
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (file_abs, base_abs) = (
        abs(file),
        abs(if base.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            base
        }),
    );
    file_abs
        .strip_prefix(&base_abs)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.display().to_string())
}

fn pct(p: &Option<super::stats::Percentiles>, scale: f64) -> String {
    match p {
        Some(p) => format!(
            "{} / {}",
            trim(p.p50 as f64 / scale),
            trim(p.p99 as f64 / scale)
        ),
        None => "-".into(),
    }
}

fn trim(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(trim).unwrap_or_else(|| "-".into())
}

/// Markdown rows for runs side by side (one column per run).
pub fn columns_markdown(
    headers: &[String],
    reports: &[&Report],
    extra: &[(String, Vec<String>)],
) -> String {
    let mut out = format!(
        "| | {} |\n|---|{}\n",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        let cells: Vec<String> = reports.iter().map(|r| f(r)).collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row("scenario", &|r| {
        format!(
            "{:?}, layer {}, subscribers over {}",
            r.scenario,
            r.layer.as_str(),
            r.subscriber_transport.as_str()
        )
        .to_lowercase()
    });
    row("publishers × subscribers", &|r| {
        format!("{} × {}", r.publishers, r.subscribers)
    });
    row("joined / failed", &|r| {
        format!("{} / {}", r.joined, r.failed)
    });
    row("measured", &|r| format!("{:.0} s", r.measured_secs));
    row("forwarded packets/s", &|r| {
        format!("{:.0}", r.packets_per_sec)
    });
    row("forwarded Mbit/s", &|r| trim(r.mbit_per_sec));
    row("packets by layer (audio/low/med/high)", &|r| {
        let l = r.packets_by_layer;
        format!("{}/{}/{}/{}", l.audio, l.low, l.medium, l.high)
    });
    row("server CPU (% of a core)", &|r| {
        opt(r.server.as_ref().map(|s| s.cpu_percent))
    });
    row("**server CPU µs / forwarded packet**", &|r| {
        format!("**{}**", opt(r.cpu_us_per_packet()))
    });
    row(
        "machine floor µs / packet (sendmmsg + AES-GCM, same run)",
        &|r| opt(r.floor.map(|f| f.total_us)),
    );
    row("**server CPU ÷ floor**", &|r| {
        format!("**{}**", opt(r.cpu_times_floor()))
    });
    row("loss", &|r| format!("{:.3} %", r.loss_percent));
    row("UDP receive-buffer drops (machine)", &|r| {
        r.udp_rcvbuf_errors
            .map_or_else(|| "-".into(), |n| n.to_string())
    });
    row("latency publisher → subscriber p50 / p99 (ms)", &|r| {
        pct(&r.latency_us, 1000.0)
    });
    row("join time p50 / p99 (ms)", &|r| pct(&r.join_ms, 1.0));
    row("server RSS ÷ subscribers (KiB)", &|r| {
        opt(r
            .server
            .as_ref()
            .and_then(|s| s.rss_bytes_per_subscriber)
            .map(|b| b / 1024.0))
    });
    row("server RSS growth ÷ subscribers (KiB)", &|r| {
        opt(r
            .server
            .as_ref()
            .and_then(|s| s.rss_growth_per_subscriber)
            .map(|b| b / 1024.0))
    });
    for (name, cells) in extra {
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    out
}

fn runs_markdown(reports: &[Report]) -> String {
    let headers: Vec<String> = reports
        .iter()
        .map(|r| format!("{} subscribers", r.subscribers))
        .collect();
    let refs: Vec<&Report> = reports.iter().collect();
    columns_markdown(&headers, &refs, &[])
}

fn comparisons_markdown(comparisons: &[Comparison]) -> String {
    let mut headers = Vec::new();
    let mut refs = Vec::new();
    let mut ratio = Vec::new();
    for c in comparisons {
        headers.push(format!("our SFU ({})", c.sfu.subscribers));
        headers.push(format!("Janus ({})", c.janus.subscribers));
        refs.push(&c.sfu);
        refs.push(&c.janus);
        ratio.push(String::new());
        ratio.push(
            c.janus_over_sfu
                .map(|r| format!("**{r:.2}×**"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    columns_markdown(
        &headers,
        &refs,
        &[("Janus CPU per packet ÷ ours".to_string(), ratio)],
    )
}

impl CapacityReport {
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| subscribers | packets/s | Mbit/s | server CPU % | µs / packet | loss % | latency p50 / p99 (ms) | join p50 / p99 (ms) | RSS ÷ subs (KiB) | result |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (step, verdict) in self.steps.iter().zip(&self.verdicts) {
            out.push_str(&format!(
                "| {} | {:.0} | {} | {} | {} | {:.3} | {} | {} | {} | {} |\n",
                step.subscribers,
                step.packets_per_sec,
                trim(step.mbit_per_sec),
                opt(step.server.as_ref().map(|s| s.cpu_percent)),
                opt(step.cpu_us_per_packet()),
                step.loss_percent,
                pct(&step.latency_us, 1000.0),
                pct(&step.join_ms, 1.0),
                opt(step
                    .server
                    .as_ref()
                    .and_then(|s| s.rss_bytes_per_subscriber)
                    .map(|b| b / 1024.0)),
                verdict
            ));
        }
        out.push_str(&format!("\n{}\n", self.summary()));
        out
    }
}
