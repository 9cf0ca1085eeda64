//! Audit log: who authenticated, which rooms were created and closed, who joined and left (and
//! for how long), producers and consumers, limit trips and admin actions — stored with sqlx in
//! an embedded SQLite file by default, or in PostgreSQL when `DATABASE_URL` is a
//! `postgres://`/`postgresql://` URL.
//!
//! # Schema and migrations
//!
//! One table, `audit_events (id, at_ms, kind, room_id, participant_id, user_id, detail)`,
//! indexed on `(room_id, at_ms)`, plus an insertion sequence `seq` that orders events of the
//! same millisecond (on SQLite `seq` is the integer primary key and `id` is `UNIQUE`, which
//! keeps `seq` stable across `VACUUM`; on PostgreSQL `id` is the `UUID` primary key). The SQL lives in `migrations/<backend>/` at the repository
//! root and is compiled into the binary ([`migrate`], the `sfu migrate` command, or
//! [`AuditConfig::migrate_on_start`]). Applying migrations is idempotent.
//!
//! # Writes never block
//!
//! [`AuditLog::record`] is a non-blocking `try_send` into a bounded intake channel
//! ([`AuditConfig::intake_capacity`]); it never awaits, so the media path and signaling are
//! not slowed down by the database. One background task takes events from the intake, in
//! arrival order, and writes them in batches (up to [`AuditConfig::batch_size`] events, or
//! whatever has waited [`AuditConfig::flush_interval`]) — one multi-row statement (PostgreSQL)
//! or one transaction (SQLite) per batch. Every event carries a UUID generated when it is
//! created; inserts are `ON CONFLICT (id) DO NOTHING`, so a batch written twice (a retry after
//! a timeout that did commit, a spill replay after a crash) is stored once.
//!
//! # When the database is down: overflow policy
//!
//! The task keeps accepting events and retries every [`AuditConfig::retry_interval`]:
//!
//! 1. **Memory.** Up to [`AuditConfig::queue_capacity`] events wait in memory (plus what sits
//!    in the intake channel for the moment it takes the task to move it). The bound holds
//!    whether the database is down or merely slower than the event rate.
//! 2. **Spill file.** Beyond that, the *oldest* events are appended to
//!    [`AuditConfig::spill_path`] (JSON lines, at least a batch at a time, fsynced before they
//!    leave memory). Order is kept: the file always holds older events than memory.
//! 3. **Replay.** When the database answers again, the spill file is replayed first, in order,
//!    a batch at a time, then the memory queue; the file is truncated once fully replayed.
//!    A spill file left by a previous process (crash, shutdown during an outage) is replayed
//!    at start-up the same way.
//! 4. **Drop.** Only when the spill file would grow past [`AuditConfig::spill_max_bytes`] are
//!    events dropped: the oldest in-memory events, the ones that would have gone to the file.
//!    Each drop is counted (`sfu_audit_events_dropped_total`, [`AuditStats::dropped`]) and
//!    logged at error level (at most one line per 10 s, with the count).
//!
//! Events are also dropped, counted and logged the same way in these rarer cases: the intake
//! channel is full (the task is stalled, e.g. on a hung disk) or the task is gone; the spill
//! file cannot be written (I/O error); a spill line cannot be parsed (a torn write); or the
//! database refuses an event's *content* (PostgreSQL SQLSTATE class 22/23/54, SQLite
//! CONSTRAINT/TOOBIG/MISMATCH/RANGE — the batch is retried row by row and only the refused
//! rows are dropped, with the full event in the log line, so one bad event cannot block the
//! queue). NUL characters, which PostgreSQL cannot store, are replaced beforehand.
//!
//! # Noise: coalesced, bounded, dropped first
//!
//! Limit trips and failed logins ([`AuditKind::is_noise`]) can be caused in bulk by anyone,
//! before authenticating. They must never crowd out the events that record what users did:
//!
//! * **Coalescing.** Callers record them with [`AuditLog::record_coalesced`] and a key (e.g.
//!   `"messages:<ip>"`): one row for the first event of a key per
//!   [`AuditConfig::coalesce_window`] (10 s), and when the window ends one summary row with
//!   `detail.count` and `detail.windowSecs`. At most [`COALESCE_MAX_KEYS`] keys have a
//!   window; further keys share one [`COALESCE_OTHER_KEY`] window, so memory stays bounded
//!   whatever the number of clients.
//! * **A share, not the whole.** Noise may hold at most a quarter of the intake channel and a
//!   quarter of the spill file (`spill_max_bytes / 4`); noise beyond its share is dropped
//!   (counted in `dropped`) and does not hold back the real events behind it.
//! * **Dropped first.** When the spill file has no room left for the next real event, the
//!   noise waiting in memory is dropped before any real event is.
//!
//! # Shutdown
//!
//! Call [`AuditLog::flush`] with the drain deadline: it ends the open coalescing windows
//! (writing their summaries) and returns `true` once every event recorded before the call is
//! in the database; at the deadline it moves what is still in memory to the
//! spill file (replayed by the next start) and returns `false`.
//!
//! # Metrics
//!
//! `sfu_audit_events_written_total`, `sfu_audit_events_spilled_total`,
//! `sfu_audit_events_dropped_total`, `sfu_audit_write_failures_total` (failed batch attempts),
//! `sfu_audit_events_coalesced_total` (events counted into a summary row instead of recorded),
//! gauges `sfu_audit_queue_depth` (events held in memory) and `sfu_audit_spill_backlog`
//! (events in the spill file not yet replayed).
//!
//! # Reading
//!
//! [`AuditLog::query`] (newest first, optionally one room); [`http::list`] is the body of
//! `GET /audit?room=…&limit=…` — the caller checks that the requester is an admin.

mod coalesce;
mod db;
mod event;
pub mod http;
mod migrations;
mod room_events;
mod spill;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use coalesce::{MAX_KEYS as COALESCE_MAX_KEYS, OTHER_KEY as COALESCE_OTHER_KEY};
pub use db::{AuditBackend, MAX_QUERY_LIMIT};
pub use event::{AuditEvent, AuditKind};

use coalesce::Coalescer;
use db::Db;
use writer::{Msg, Shared, Writer, NOISE_SHARE_DIVISOR};

/// Extra time [`AuditLog::flush`] allows past its timeout for the task to move what is left in
/// memory to the spill file.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Apply the embedded migrations for `backend` (idempotent). `sfu migrate`.
pub async fn migrate(backend: &AuditBackend) -> anyhow::Result<()> {
    let db = Db::connect_lazy(backend)?;
    let result = db.migrate().await;
    db.close().await;
    result
}

/// Tuning for [`AuditLog`]. See the module docs for how the limits interact.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Events kept in memory while the database is unavailable; older ones go to the spill
    /// file.
    pub queue_capacity: usize,
    /// Slots in the channel [`AuditLog::record`] puts events in; it is emptied continuously
    /// by the background task (even during an outage), so it only fills if that task stalls.
    pub intake_capacity: usize,
    /// Most events per insert.
    pub batch_size: usize,
    /// Longest an event waits in memory for a batch to fill.
    pub flush_interval: Duration,
    /// JSON-lines file for events that do not fit in memory during an outage.
    pub spill_path: PathBuf,
    /// Size the spill file may reach; events beyond it are dropped.
    pub spill_max_bytes: u64,
    /// Pause between attempts while the database is failing.
    pub retry_interval: Duration,
    /// Apply migrations (in the background, retried like writes) before the first write.
    pub migrate_on_start: bool,
    /// Window of [`AuditLog::record_coalesced`]: one row per key per window, plus a summary.
    pub coalesce_window: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            queue_capacity: 10_000,
            intake_capacity: 10_000,
            batch_size: 200,
            flush_interval: Duration::from_millis(200),
            spill_path: PathBuf::from("./data/audit-spill.jsonl"),
            spill_max_bytes: 100 * 1024 * 1024,
            retry_interval: Duration::from_secs(1),
            migrate_on_start: false,
            coalesce_window: Duration::from_secs(10),
        }
    }
}

impl AuditConfig {
    /// The defaults with another spill file.
    pub fn with_spill_path(spill_path: impl Into<PathBuf>) -> Self {
        AuditConfig {
            spill_path: spill_path.into(),
            ..Default::default()
        }
    }
}

/// Counters since [`AuditLog::start`] (`queued` and `spill_backlog` are current values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditStats {
    /// Recorded and held in memory (not yet written, spilled or dropped).
    pub queued: u64,
    /// Stored in the database (including replays from the spill file).
    pub written: u64,
    /// Appended to the spill file.
    pub spilled: u64,
    /// Of `written`, how many came from the spill file.
    pub spill_replayed: u64,
    /// Lost: see the overflow policy in the module docs.
    pub dropped: u64,
    /// Failed write attempts (each is retried).
    pub write_failures: u64,
    /// Events in the spill file waiting to be replayed.
    pub spill_backlog: u64,
    /// Events [`AuditLog::record_coalesced`] counted into a summary row instead of recording.
    pub coalesced: u64,
}

/// The sending side of the writer's intake; noise may take only a share of it.
#[derive(Clone)]
struct Intake {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    noise_max: u64,
}

impl Intake {
    fn send(&self, event: AuditEvent) {
        let noise = event.kind.is_noise();
        if noise && self.shared.noise_in_intake.fetch_add(1, Ordering::Relaxed) >= self.noise_max {
            self.shared.noise_in_intake.fetch_sub(1, Ordering::Relaxed);
            self.shared.add_dropped(1);
            writer::log_intake_drop(&self.shared, "noise over its share of the intake");
            return;
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(Msg::Event(event)) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            if noise {
                self.shared.noise_in_intake.fetch_sub(1, Ordering::Relaxed);
            }
            self.shared.add_dropped(1);
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "intake full",
                mpsc::error::TrySendError::Closed(_) => "audit task stopped",
            };
            writer::log_intake_drop(&self.shared, reason);
        }
    }
}

/// The open coalescing windows. Dropped with the last [`AuditLog`] handle, which writes the
/// summaries still open.
struct Coalescing {
    state: Mutex<Coalescer>,
    intake: Intake,
}

impl Coalescing {
    fn offer(&self, event: AuditEvent, key: &str) {
        let mut out = Vec::new();
        let counted = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = state.suppressed();
            state.offer(event, key, tokio::time::Instant::now(), &mut out);
            before < state.suppressed()
        };
        if counted {
            self.intake.shared.coalesced.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_coalesced_total").increment(1);
        }
        out.into_iter().for_each(|e| self.intake.send(e));
    }

    /// Write the summaries of ended windows (`all`: of every window).
    fn close_windows(&self, all: bool) {
        let mut out = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if all {
                state.drain(&mut out);
            } else {
                state.expire(tokio::time::Instant::now(), &mut out);
            }
        }
        out.into_iter().for_each(|e| self.intake.send(e));
    }

    /// Close ended windows on time, as long as a handle exists.
    fn spawn_ticker(this: &Arc<Coalescing>, window: Duration) {
        let weak = Arc::downgrade(this);
        let period = (window / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(c) => c.close_windows(false),
                    None => break,
                }
            }
        });
    }
}

impl Drop for Coalescing {
    fn drop(&mut self) {
        self.close_windows(true);
    }
}

/// Handle to the audit log; cheap to clone. The background task ends once every handle is
/// dropped (after writing, or spilling if the database is down, what it still holds).
#[derive(Clone)]
pub struct AuditLog {
    intake: Intake,
    coalescing: Arc<Coalescing>,
    db: Db,
    backend: Arc<AuditBackend>,
}

impl AuditLog {
    /// Start the background writer. Does not need the database to be reachable: connections
    /// are made on first use and retried; a spill file left by an earlier run is replayed.
    pub async fn start(backend: AuditBackend, config: AuditConfig) -> anyhow::Result<AuditLog> {
        anyhow::ensure!(config.batch_size > 0, "audit batch_size must be at least 1");
        anyhow::ensure!(
            config.queue_capacity > 0 && config.intake_capacity > 0,
            "audit queue_capacity and intake_capacity must be at least 1"
        );
        anyhow::ensure!(
            !config.spill_path.as_os_str().is_empty(),
            "audit spill_path is empty"
        );
        let db = Db::connect_lazy(&backend)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(config.intake_capacity);
        tracing::info!(
            backend = %backend.describe(),
            spill = %config.spill_path.display(),
            "audit log started"
        );
        let intake = Intake {
            tx,
            shared: shared.clone(),
            noise_max: (config.intake_capacity as u64 / NOISE_SHARE_DIVISOR).max(1),
        };
        let coalescing = Arc::new(Coalescing {
            state: Mutex::new(Coalescer::new(config.coalesce_window)),
            intake: intake.clone(),
        });
        Coalescing::spawn_ticker(&coalescing, config.coalesce_window);
        tokio::spawn(Writer::new(db.clone(), config, shared.clone(), rx).run());
        Ok(AuditLog {
            intake,
            coalescing,
            db,
            backend: Arc::new(backend),
        })
    }

    pub fn backend(&self) -> &AuditBackend {
        &self.backend
    }

    /// Queue `event` for writing. Never blocks and never awaits; callable from any thread.
    /// Noise kinds ([`AuditKind::is_noise`]) may hold only a quarter of the intake; beyond
    /// that they are dropped (and counted) so they cannot crowd out real events.
    pub fn record(&self, event: AuditEvent) {
        self.intake.send(event);
    }

    /// Like [`AuditLog::record`], for events that can repeat in bulk (limit trips, failed
    /// logins): the first event for `key` in a window ([`AuditConfig::coalesce_window`],
    /// 10 s) is recorded at once; later ones in the same window are only counted; when the
    /// window ends, one summary row is recorded if the window saw more than one event — a copy
    /// of the first event (new id, time of the last one) whose `detail` object also has
    /// `count` (events in the window, the first included), `windowSecs` and `firstAtMs`.
    /// Memory is bounded: at most [`COALESCE_MAX_KEYS`] keys have a window; events for other
    /// keys share the [`COALESCE_OTHER_KEY`] window, whose summary carries only the counts
    /// (and `otherKeys: true`). Keys are cut to 200 bytes. [`AuditLog::flush`] ends every
    /// open window first.
    pub fn record_coalesced(&self, event: AuditEvent, key: &str) {
        self.coalescing.offer(event, key);
    }

    /// Wait until every event recorded before this call is in the database: `true`. If that
    /// takes longer than `timeout`, what is still in memory is moved to the spill file (so a
    /// shutdown loses nothing: it is replayed at the next start) and the answer is `false`;
    /// that can add up to a few seconds to `timeout`.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.coalescing.close_windows(true);
        let deadline = tokio::time::Instant::now() + timeout;
        let (reply, answer) = oneshot::channel();
        let sent = tokio::time::timeout_at(
            deadline,
            self.intake.tx.send(Msg::Flush { deadline, reply }),
        );
        if !matches!(sent.await, Ok(Ok(()))) {
            return false;
        }
        matches!(
            tokio::time::timeout_at(deadline + FLUSH_GRACE, answer).await,
            Ok(Ok(true))
        )
    }

    /// Stored events, newest first, for one room or all; at most `limit` (capped at
    /// [`MAX_QUERY_LIMIT`]). Events still queued are not included.
    pub async fn query(
        &self,
        room_id: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<AuditEvent>> {
        self.db.query(room_id, limit).await
    }

    pub fn stats(&self) -> AuditStats {
        self.intake.shared.stats()
    }
}
