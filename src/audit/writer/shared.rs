//! Counters shared between the [`crate::audit::AuditLog`] handles and the writer task.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::DROP_LOG_INTERVAL;
use crate::audit::event::now_unix_ms;
use crate::audit::AuditStats;

/// Counters shared between the handles and the task.
#[derive(Default)]
pub(crate) struct Shared {
    /// Recorded and held in memory (intake, queue, batch in flight).
    pub queued: AtomicU64,
    pub written: AtomicU64,
    pub spilled: AtomicU64,
    pub spill_replayed: AtomicU64,
    pub dropped: AtomicU64,
    pub write_failures: AtomicU64,
    pub spill_backlog: AtomicU64,
    /// Noise events in the intake channel (bounded: see [`super::NOISE_SHARE_DIVISOR`]).
    pub noise_in_intake: AtomicU64,
    /// Events [`crate::audit::AuditLog::record_coalesced`] counted instead of recording.
    pub coalesced: AtomicU64,
    /// Unix ms of the last "intake full" error line (throttling).
    pub last_intake_drop_log_ms: AtomicI64,
}

impl Shared {
    pub(crate) fn stats(&self) -> AuditStats {
        AuditStats {
            queued: self.queued.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            spilled: self.spilled.load(Ordering::Relaxed),
            spill_replayed: self.spill_replayed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            spill_backlog: self.spill_backlog.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_dropped_total").increment(n);
        }
    }

    pub(crate) fn add_written(&self, n: u64) {
        if n > 0 {
            self.written.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_written_total").increment(n);
        }
    }

    pub(crate) fn add_spilled(&self, n: u64) {
        if n > 0 {
            self.spilled.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_spilled_total").increment(n);
        }
    }

    pub(crate) fn add_write_failure(&self) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sfu_audit_write_failures_total").increment(1);
    }

    pub(crate) fn leave_memory(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!("sfu_audit_queue_depth").set(self.queued.load(Ordering::Relaxed) as f64);
        metrics::gauge!("sfu_audit_spill_backlog")
            .set(self.spill_backlog.load(Ordering::Relaxed) as f64);
    }
}

/// Throttled error line for events refused at [`super::AuditLog::record`].
pub(crate) fn log_intake_drop(shared: &Shared, reason: &str) {
    let now = now_unix_ms();
    let last = shared.last_intake_drop_log_ms.load(Ordering::Relaxed);
    if now - last >= DROP_LOG_INTERVAL.as_millis() as i64
        && shared
            .last_intake_drop_log_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(
            reason,
            dropped_total = shared.dropped.load(Ordering::Relaxed),
            "audit event dropped at record()"
        );
    }
}
