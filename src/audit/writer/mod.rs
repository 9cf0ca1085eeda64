//! The background task that owns the queue: batches events into the database, spills to the
//! local file while it is down, replays the file when it is back. See the module docs of
//! [`crate::audit`] for the policy.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::db::{Db, Inserted};
use super::event::AuditEvent;
use super::{spill, AuditConfig};

mod finish;
mod overflow;
mod shared;

pub(crate) use shared::{log_intake_drop, Shared};

/// Longest a single batch write may take before it counts as failed (and is retried; the
/// event ids make a write that did land harmless to repeat).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one "events dropped" error line per this interval (the counter has every drop).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Messages taken from the intake in one go before the task looks at anything else.
const INTAKE_BURST: usize = 1024;
/// Noise may fill at most 1/this of the spill file (and of the intake): the rest is kept for
/// the events that record what users did.
pub(crate) const NOISE_SHARE_DIVISOR: u64 = 4;

pub(crate) enum Msg {
    Event(AuditEvent),
    Flush {
        deadline: Instant,
        reply: oneshot::Sender<bool>,
    },
}

/// Events in the spill file not yet in the database. `seqs` has one entry per line from
/// `read_offset` on (0 for lines left by an earlier process), oldest first.
struct SpillState {
    len: u64,
    /// Bytes of noise events ([`crate::audit::AuditKind::is_noise`]) in the file; they may
    /// take at most 1/[`NOISE_SHARE_DIVISOR`] of it. Reset when the file is truncated.
    noise_len: u64,
    read_offset: u64,
    seqs: VecDeque<u64>,
}

/// The one database operation in flight.
enum Job {
    Migrate,
    /// A batch taken from the front of the memory queue. `copied` is set once the batch was
    /// also appended to the spill file (to keep the file in order when the queue overflows
    /// during the write): those lines are then the first unread ones in the file, and this is
    /// the offset just after them.
    Batch {
        batch: Vec<(u64, AuditEvent)>,
        copied: Option<u64>,
    },
    /// The next lines of the spill file.
    Replay,
}

enum JobOutput {
    Migrate(anyhow::Result<()>),
    Batch(Result<Inserted, String>),
    Replay(Result<(spill::Chunk, Inserted), String>),
}

type JobFuture = Pin<Box<dyn Future<Output = JobOutput> + Send>>;

struct Waiter {
    /// Done once every event up to this sequence number is in the database.
    target: u64,
    deadline: Instant,
    reply: oneshot::Sender<bool>,
}

pub(crate) struct Writer {
    db: Db,
    cfg: AuditConfig,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    /// Sequence number of the next event received (order of arrival; 0 = older process).
    next_seq: u64,
    /// Oldest first.
    pending: VecDeque<(u64, AuditEvent)>,
    /// When the oldest pending event has waited `flush_interval`.
    batch_due: Option<Instant>,
    spill: SpillState,
    job: Option<Job>,
    migrated: bool,
    /// Set while the database is failing: no attempt before then.
    retry_at: Option<Instant>,
    waiters: Vec<Waiter>,
    closed: bool,
    last_drop_log: Option<Instant>,
    drops_not_logged: u64,
}

impl Writer {
    pub fn new(db: Db, cfg: AuditConfig, shared: Arc<Shared>, rx: mpsc::Receiver<Msg>) -> Self {
        Writer {
            db,
            migrated: !cfg.migrate_on_start,
            cfg,
            shared,
            rx,
            next_seq: 1,
            pending: VecDeque::new(),
            batch_due: None,
            spill: SpillState {
                len: 0,
                noise_len: 0,
                read_offset: 0,
                seqs: VecDeque::new(),
            },
            job: None,
            retry_at: None,
            waiters: Vec::new(),
            closed: false,
            last_drop_log: None,
            drops_not_logged: 0,
        }
    }

    pub async fn run(mut self) {
        self.open_spill().await;
        let mut job_fut: Option<JobFuture> = None;
        loop {
            let now = Instant::now();
            if job_fut.is_none() {
                job_fut = self.next_job(now);
            }
            if self.closed && job_fut.is_none() {
                if self.retry_at.is_some() {
                    // Nobody is left to wait for the database: keep the rest on disk.
                    self.spill_out(self.pending.len(), true).await;
                }
                if self.pending.is_empty() {
                    break;
                }
            }
            let wake = self.next_wake(now, job_fut.is_some());
            tokio::select! {
                msg = self.rx.recv(), if !self.closed => {
                    self.on_msg(msg);
                    for _ in 0..INTAKE_BURST {
                        if self.pending.len() > self.cfg.queue_capacity {
                            break; // spill before taking more
                        }
                        match self.rx.try_recv() {
                            Ok(msg) => self.on_msg(Some(msg)),
                            Err(_) => break,
                        }
                    }
                }
                out = async { job_fut.as_mut().expect("guarded by is_some").await }, if job_fut.is_some() => {
                    job_fut = None;
                    self.finish(out).await;
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
            }
            self.enforce_capacity().await;
            self.settle_waiters().await;
            self.shared.publish_gauges();
        }
        let backlog = self.spill.seqs.len();
        if backlog > 0 {
            tracing::info!(
                backlog,
                path = %self.cfg.spill_path.display(),
                "audit log stopped with events in the spill file; they are written at the next start"
            );
        }
        self.db.close().await;
    }

    async fn open_spill(&mut self) {
        let path = self.cfg.spill_path.clone();
        match tokio::task::spawn_blocking(move || spill::scan(&path)).await {
            Ok(Ok(scan)) => {
                self.spill.len = scan.len;
                self.spill.noise_len = scan.noise_len;
                self.spill.seqs = std::iter::repeat_n(0, scan.lines as usize).collect();
                self.shared
                    .spill_backlog
                    .store(scan.lines, Ordering::Relaxed);
                if scan.lines > 0 {
                    tracing::info!(
                        events = scan.lines,
                        path = %self.cfg.spill_path.display(),
                        "audit spill file from an earlier run; replaying it first"
                    );
                }
            }
            Ok(Err(e)) => tracing::error!(
                path = %self.cfg.spill_path.display(),
                error = %e,
                "cannot read the audit spill file"
            ),
            Err(e) => tracing::error!(error = %e, "audit spill scan panicked"),
        }
    }

    fn on_msg(&mut self, msg: Option<Msg>) {
        match msg {
            Some(Msg::Event(mut event)) => {
                if event.kind.is_noise() {
                    self.shared.noise_in_intake.fetch_sub(1, Ordering::Relaxed);
                }
                event.sanitize();
                let seq = self.next_seq;
                self.next_seq += 1;
                if self.pending.is_empty() {
                    self.batch_due = Some(Instant::now() + self.cfg.flush_interval);
                }
                self.pending.push_back((seq, event));
            }
            Some(Msg::Flush { deadline, reply }) => self.waiters.push(Waiter {
                target: self.next_seq - 1,
                deadline,
                reply,
            }),
            None => self.closed = true,
        }
    }

    fn next_wake(&self, now: Instant, job_running: bool) -> Option<Instant> {
        let mut wake = self.waiters.iter().map(|w| w.deadline).min();
        if !job_running {
            let due = match self.retry_at {
                Some(at) if at > now => Some(at),
                _ if !self.pending.is_empty() => self.batch_due,
                _ => None,
            };
            wake = match (wake, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        wake
    }

    fn next_job(&mut self, now: Instant) -> Option<JobFuture> {
        if self.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        if !self.migrated {
            self.job = Some(Job::Migrate);
            let db = self.db.clone();
            return Some(Box::pin(async move {
                JobOutput::Migrate(
                    match tokio::time::timeout(WRITE_TIMEOUT * 3, db.migrate()).await {
                        Ok(r) => r,
                        Err(_) => Err(anyhow::anyhow!("migrations timed out")),
                    },
                )
            }));
        }
        if !self.spill.seqs.is_empty() {
            self.job = Some(Job::Replay);
            let db = self.db.clone();
            let path = self.cfg.spill_path.clone();
            let offset = self.spill.read_offset;
            let max = self.cfg.batch_size;
            return Some(Box::pin(async move {
                let read =
                    tokio::task::spawn_blocking(move || match spill::read(&path, offset, max) {
                        // Deleted behind our back: handled like a file shorter than counted.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(spill::Chunk {
                            events: Vec::new(),
                            lines: 0,
                            unreadable: 0,
                            next_offset: offset,
                        }),
                        other => other,
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("cannot read the spill file: {e}")));
                JobOutput::Replay(match read {
                    Ok(chunk) => insert(&db, &chunk.events).await.map(|ins| (chunk, ins)),
                    Err(e) => Err(e),
                })
            }));
        }
        let due = self.pending.len() >= self.cfg.batch_size
            || self.batch_due.is_some_and(|d| d <= now)
            || !self.waiters.is_empty()
            || self.closed;
        if self.pending.is_empty() || !due {
            return None;
        }
        let n = self.pending.len().min(self.cfg.batch_size);
        let batch: Vec<(u64, AuditEvent)> = self.pending.drain(..n).collect();
        self.batch_due = (!self.pending.is_empty()).then_some(now);
        let events: Vec<AuditEvent> = batch.iter().map(|(_, e)| e.clone()).collect();
        self.job = Some(Job::Batch {
            batch,
            copied: None,
        });
        let db = self.db.clone();
        Some(Box::pin(async move {
            JobOutput::Batch(insert(&db, &events).await)
        }))
    }
}

async fn insert(db: &Db, events: &[AuditEvent]) -> Result<Inserted, String> {
    match tokio::time::timeout(WRITE_TIMEOUT, db.insert(events)).await {
        Ok(Ok(inserted)) => Ok(inserted),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
    }
}
