//! `--find-capacity`: raise the subscriber count step by step until loss exceeds the limit or
//! the server's CPU saturates one core, then bisect between the last passing and the first
//! failing count. Each step is a complete run (fresh room, ramp, settle, measure).

use serde::Serialize;

use super::{BenchConfig, Report};

#[derive(Debug, Clone)]
pub struct CapacityConfig {
    /// First subscriber count.
    pub start: usize,
    /// Next count = ceil(count × factor) (at least +1).
    pub factor: f64,
    /// Never go above this many subscribers.
    pub max: usize,
    /// A step with more loss (%) fails.
    pub loss_limit: f64,
    /// A step whose server CPU reaches this (% of one core) is saturated.
    pub cpu_limit: f64,
    /// Bisection steps after the first failure.
    pub refine: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub loss_limit_percent: f64,
    pub cpu_limit_percent: f64,
    /// Every step in the order run.
    pub steps: Vec<Report>,
    /// "pass" or why a step failed, per step.
    pub verdicts: Vec<String>,
    /// The largest subscriber count that passed.
    pub capacity: Option<usize>,
    pub cpu_percent_at_capacity: Option<f64>,
    /// Subscribers one core carries at the limit: `capacity` when the CPU limit stopped the
    /// search, else `capacity` scaled to a full core by its CPU share (linear estimate).
    pub subscribers_per_core: Option<f64>,
    /// Why the search stopped (the first failing step's verdict, or "max reached").
    pub stopped_by: String,
}

/// "pass", or why `report` fails the limits.
pub fn verdict(report: &Report, cap: &CapacityConfig) -> String {
    let cpu = report.server.as_ref().map(|s| s.cpu_percent);
    if report.failed > 0 {
        format!("fail: {} participants failed", report.failed)
    } else if report.subscribers_ready < report.subscribers {
        format!(
            "fail: {} of {} subscribers never received media",
            report.subscribers - report.subscribers_ready,
            report.subscribers
        )
    } else if report.loss_percent > cap.loss_limit {
        format!(
            "fail: loss {:.3} % > {} %",
            report.loss_percent, cap.loss_limit
        )
    } else if cpu.is_some_and(|c| c >= cap.cpu_limit) {
        format!(
            "fail: server CPU {:.1} % ≥ {} %",
            cpu.unwrap_or_default(),
            cap.cpu_limit
        )
    } else {
        "pass".into()
    }
}

/// Run steps from `base` (its `subscribers` is replaced) and find the capacity.
/// `on_step` sees every step as it completes.
pub async fn find_capacity(
    base: BenchConfig,
    cap: &CapacityConfig,
    mut on_step: impl FnMut(&Report),
) -> anyhow::Result<CapacityReport> {
    let mut out = CapacityReport {
        loss_limit_percent: cap.loss_limit,
        cpu_limit_percent: cap.cpu_limit,
        steps: Vec::new(),
        verdicts: Vec::new(),
        capacity: None,
        cpu_percent_at_capacity: None,
        subscribers_per_core: None,
        stopped_by: "max reached".into(),
    };
    let mut pass: Option<(usize, Option<f64>)> = None;
    let mut fail: Option<usize> = None;
    let mut n = cap.start.clamp(1, cap.max.max(1));
    let mut refinements = 0;
    loop {
        let mut config = base.clone();
        config.subscribers = n;
        config.json = None;
        let report = super::run(config).await?;
        on_step(&report);
        let v = verdict(&report, cap);
        let passed = v == "pass";
        if passed {
            if pass.is_none_or(|(p, _)| n > p) {
                pass = Some((n, report.server.as_ref().map(|s| s.cpu_percent)));
            }
        } else {
            if fail.is_none() {
                out.stopped_by = v.clone();
            }
            if fail.is_none_or(|f| n < f) {
                fail = Some(n);
            }
        }
        out.steps.push(report);
        out.verdicts.push(v);
        // Next count: grow until the first failure, then bisect.
        n = match (pass, fail) {
            (_, None) => {
                if n >= cap.max {
                    break;
                }
                ((n as f64 * cap.factor).ceil() as usize)
                    .max(n + 1)
                    .min(cap.max)
            }
            (low, Some(high)) => {
                let low = low.map(|(p, _)| p).unwrap_or(0);
                if refinements >= cap.refine || high - low <= 1 {
                    break;
                }
                refinements += 1;
                (low + high) / 2
            }
        };
        if n == 0 {
            break;
        }
    }
    if let Some((n, cpu)) = pass {
        out.capacity = Some(n);
        out.cpu_percent_at_capacity = cpu;
        let cpu_stopped = out.stopped_by.contains("CPU");
        out.subscribers_per_core = match cpu {
            _ if cpu_stopped => Some(n as f64),
            Some(c) if c > 0.0 => Some(n as f64 * 100.0 / c),
            _ => None,
        };
    }
    Ok(out)
}

impl CapacityReport {
    pub fn summary(&self) -> String {
        match (self.capacity, self.cpu_percent_at_capacity) {
            (Some(n), cpu) => format!(
                "Capacity: {n} subscribers passed (server CPU {} % of one core); stopped by: {}; \
                 ≈ {} subscribers per core{}.",
                cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "?".into()),
                self.stopped_by,
                self.subscribers_per_core
                    .map(|s| format!("{s:.0}"))
                    .unwrap_or_else(|| "?".into()),
                if self.stopped_by.contains("CPU") {
                    ""
                } else {
                    " (linear estimate from the passing step's CPU share)"
                }
            ),
            (None, _) => format!("Capacity: no step passed; stopped by: {}.", self.stopped_by),
        }
    }
}
