//! The background task that owns the queue: batches events into the database, spills to the
//! local file while it is down, replays the file when it is back. See the module docs of
//! [`crate::audit`] for the policy.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::db::{Db, Inserted};
use super::event::{now_unix_ms, AuditEvent};
use super::{spill, AuditConfig, AuditStats};

/// Longest a single batch write may take before it counts as failed (and is retried; the
/// event ids make a write that did land harmless to repeat).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one "events dropped" error line per this interval (the counter has every drop).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Messages taken from the intake in one go before the task looks at anything else.
const INTAKE_BURST: usize = 1024;

pub(crate) enum Msg {
    Event(AuditEvent),
    Flush {
        deadline: Instant,
        reply: oneshot::Sender<bool>,
    },
}

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
    /// Unix ms of the last "intake full" error line (throttling).
    pub last_intake_drop_log_ms: AtomicI64,
}

impl Shared {
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            queued: self.queued.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            spilled: self.spilled.load(Ordering::Relaxed),
            spill_replayed: self.spill_replayed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            spill_backlog: self.spill_backlog.load(Ordering::Relaxed),
        }
    }

    pub fn add_dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_dropped_total").increment(n);
        }
    }

    fn add_written(&self, n: u64) {
        if n > 0 {
            self.written.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_written_total").increment(n);
        }
    }

    fn add_spilled(&self, n: u64) {
        if n > 0 {
            self.spilled.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("sfu_audit_events_spilled_total").increment(n);
        }
    }

    fn add_write_failure(&self) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sfu_audit_write_failures_total").increment(1);
    }

    fn leave_memory(&self, n: u64) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }

    fn publish_gauges(&self) {
        metrics::gauge!("sfu_audit_queue_depth").set(self.queued.load(Ordering::Relaxed) as f64);
        metrics::gauge!("sfu_audit_spill_backlog")
            .set(self.spill_backlog.load(Ordering::Relaxed) as f64);
    }
}

/// Events in the spill file not yet in the database. `seqs` has one entry per line from
/// `read_offset` on (0 for lines left by an earlier process), oldest first.
struct SpillState {
    len: u64,
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

    async fn finish(&mut self, out: JobOutput) {
        let job = self.job.take();
        match (out, job) {
            (JobOutput::Migrate(Ok(())), _) => {
                tracing::info!("audit migrations applied");
                self.migrated = true;
                self.succeeded();
            }
            (JobOutput::Migrate(Err(e)), _) => self.failed(format!("{e:#}")),
            (JobOutput::Batch(Ok(inserted)), Some(Job::Batch { batch, copied })) => {
                let n = batch.len() as u64;
                tracing::debug!(events = n, copied = copied.is_some(), "audit batch written");
                self.reject(&inserted, |i| &batch[i].1);
                self.shared.add_written(n - inserted.rejected.len() as u64);
                match copied {
                    // Also the first lines of the spill file: skip them there.
                    Some(end) => {
                        self.spill.read_offset = end;
                        let k = (n as usize).min(self.spill.seqs.len());
                        self.spill.seqs.drain(..k);
                    }
                    None => self.shared.leave_memory(n),
                }
                self.succeeded();
                self.truncate_spill_if_done().await;
            }
            (JobOutput::Batch(Err(e)), Some(Job::Batch { batch, copied })) => {
                if copied.is_none() {
                    // Back to the front, in order: still the oldest events in memory.
                    for item in batch.into_iter().rev() {
                        self.pending.push_front(item);
                    }
                    self.batch_due = Some(Instant::now());
                }
                self.failed(e);
            }
            (JobOutput::Replay(Ok((chunk, inserted))), _) => {
                if chunk.lines == 0 {
                    // The file holds fewer lines than counted: it was changed behind our back.
                    let lost = self.spill.seqs.len() as u64;
                    tracing::error!(
                        lost,
                        path = %self.cfg.spill_path.display(),
                        "audit spill file shorter than expected; events lost"
                    );
                    self.spill.seqs.clear();
                    self.note_dropped(lost, "spill file truncated or deleted externally");
                } else {
                    tracing::debug!(
                        lines = chunk.lines,
                        offset = self.spill.read_offset,
                        next_offset = chunk.next_offset,
                        "audit spill lines replayed"
                    );
                    self.reject(&inserted, |i| &chunk.events[i]);
                    let stored = (chunk.events.len() - inserted.rejected.len()) as u64;
                    self.shared.add_written(stored);
                    self.shared
                        .spill_replayed
                        .fetch_add(stored, Ordering::Relaxed);
                    self.note_dropped(chunk.unreadable, "unreadable spill line");
                    let k = (chunk.lines as usize).min(self.spill.seqs.len());
                    self.spill.seqs.drain(..k);
                    self.spill.read_offset = chunk.next_offset;
                }
                self.succeeded();
                self.truncate_spill_if_done().await;
            }
            (JobOutput::Replay(Err(e)), _) => self.failed(e),
            (JobOutput::Batch(_), other) => {
                debug_assert!(false, "batch result without a batch job");
                self.job = other;
            }
        }
        self.shared
            .spill_backlog
            .store(self.spill.seqs.len() as u64, Ordering::Relaxed);
    }

    /// Events the database refused as data: logged in full (the log line is their last
    /// record) and counted as dropped.
    fn reject<'a>(&mut self, inserted: &Inserted, event: impl Fn(usize) -> &'a AuditEvent) {
        for (i, error) in &inserted.rejected {
            let e = event(*i);
            tracing::error!(
                event = %serde_json::to_string(e).unwrap_or_default(),
                %error,
                "audit event refused by the database; dropped"
            );
        }
        self.shared.add_dropped(inserted.rejected.len() as u64);
    }

    fn succeeded(&mut self) {
        if self.retry_at.take().is_some() {
            tracing::info!(
                backlog = self.spill.seqs.len(),
                queued = self.pending.len(),
                "audit database reachable again"
            );
        }
    }

    fn failed(&mut self, error: String) {
        self.shared.add_write_failure();
        if self.retry_at.is_none() {
            tracing::warn!(
                %error,
                retry_in = ?self.cfg.retry_interval,
                "audit database write failed; events are kept (memory, then spill file) and retried"
            );
        } else {
            tracing::debug!(%error, "audit database still failing");
        }
        self.retry_at = Some(Instant::now() + self.cfg.retry_interval);
    }

    async fn truncate_spill_if_done(&mut self) {
        let nothing_left = self.spill.seqs.is_empty();
        let copy_pending = matches!(
            self.job,
            Some(Job::Batch {
                copied: Some(_),
                ..
            })
        );
        if !nothing_left || copy_pending || self.spill.len == 0 {
            return;
        }
        let path = self.cfg.spill_path.clone();
        match tokio::task::spawn_blocking(move || spill::truncate(&path)).await {
            Ok(Ok(())) => {
                self.spill.len = 0;
                self.spill.read_offset = 0;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot truncate the audit spill file"),
            Err(e) => tracing::error!(error = %e, "audit spill truncate panicked"),
        }
    }

    /// Keep at most `queue_capacity` events in memory: move the oldest to the spill file,
    /// at least a batch at a time so a long outage does not fsync for every event.
    async fn enforce_capacity(&mut self) {
        let cap = self.cfg.queue_capacity;
        if self.pending.len() > cap {
            let excess = self.pending.len() - cap;
            let n = excess.max(self.cfg.batch_size.min(self.pending.len()));
            self.spill_out(n, true).await;
        }
    }

    /// Move the oldest `n` queued events (and, first, a batch being written, whose events are
    /// older) to the end of the spill file. From the first event that does not fit under
    /// `spill_max_bytes` on, the rest are dropped if `drop_unfit` (the queue is over capacity),
    /// else kept in memory. If the file cannot be written, the events are dropped.
    async fn spill_out(&mut self, n: usize, drop_unfit: bool) {
        let n = n.min(self.pending.len());
        let uncopied_batch = matches!(self.job, Some(Job::Batch { copied: None, .. }));
        if n == 0 && !uncopied_batch {
            return;
        }
        let mut budget = self.cfg.spill_max_bytes.saturating_sub(self.spill.len);
        let mut bytes = Vec::new();
        let mut new_seqs = Vec::new();
        // The batch in flight goes first, or else nothing can be written after it.
        let mut copy: Option<(u64, usize)> = None;
        let mut blocked = false;
        if let Some(Job::Batch {
            batch,
            copied: None,
        }) = &self.job
        {
            let lines: Vec<u8> = batch.iter().flat_map(|(_, e)| spill::encode(e)).collect();
            if lines.len() as u64 <= budget {
                budget -= lines.len() as u64;
                copy = Some((lines.len() as u64, batch.len()));
                new_seqs.extend(batch.iter().map(|(s, _)| *s));
                bytes.extend(lines);
            } else {
                blocked = true;
            }
        }
        let mut moved = 0u64;
        let mut dropped = 0u64;
        let mut unfit = Vec::new();
        for (seq, event) in self.pending.drain(..n) {
            if !blocked {
                let line = spill::encode(&event);
                if line.len() as u64 <= budget {
                    budget -= line.len() as u64;
                    bytes.extend(line);
                    new_seqs.push(seq);
                    moved += 1;
                    continue;
                }
                blocked = true;
            }
            if drop_unfit {
                dropped += 1;
            } else {
                unfit.push((seq, event));
            }
        }
        for item in unfit.into_iter().rev() {
            self.pending.push_front(item);
        }
        if !bytes.is_empty() {
            let path = self.cfg.spill_path.clone();
            let len = bytes.len() as u64;
            let written = tokio::task::spawn_blocking(move || spill::append(&path, &bytes)).await;
            match written {
                Ok(Ok(())) => {
                    let start = self.spill.len;
                    self.spill.len += len;
                    self.spill.seqs.extend(new_seqs);
                    let copied_events = copy.map_or(0, |(_, k)| k as u64);
                    self.shared.add_spilled(moved + copied_events);
                    self.shared.leave_memory(moved + copied_events);
                    if let (Some((copy_bytes, _)), Some(Job::Batch { copied, .. })) =
                        (copy, self.job.as_mut())
                    {
                        // A batch is only taken from memory when the file has nothing left to
                        // replay, so the copy is what would be read next.
                        *copied = Some(start + copy_bytes);
                    }
                }
                result => {
                    let error = match result {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(())) => unreachable!(),
                    };
                    tracing::error!(
                        path = %self.cfg.spill_path.display(),
                        %error,
                        "cannot write the audit spill file"
                    );
                    dropped += moved;
                }
            }
        }
        if dropped > 0 {
            self.shared.leave_memory(dropped);
            self.note_dropped(dropped, "spill file full or unwritable");
        }
        self.shared
            .spill_backlog
            .store(self.spill.seqs.len() as u64, Ordering::Relaxed);
    }

    fn note_dropped(&mut self, n: u64, reason: &str) {
        if n == 0 {
            return;
        }
        self.shared.add_dropped(n);
        self.drops_not_logged += n;
        let now = Instant::now();
        if self
            .last_drop_log
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_INTERVAL)
        {
            tracing::error!(
                dropped = self.drops_not_logged,
                dropped_total = self.shared.dropped.load(Ordering::Relaxed),
                reason,
                spill_max_bytes = self.cfg.spill_max_bytes,
                "audit events dropped"
            );
            self.drops_not_logged = 0;
            self.last_drop_log = Some(now);
        }
    }

    /// Oldest event not yet in the database (nor dropped).
    fn oldest_outstanding(&self) -> Option<u64> {
        [self.spill.seqs.front().copied(), self.oldest_in_memory()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Oldest event held only in memory.
    fn oldest_in_memory(&self) -> Option<u64> {
        let in_flight = match &self.job {
            Some(Job::Batch {
                batch,
                copied: None,
            }) => batch.first().map(|(s, _)| *s),
            _ => None,
        };
        [in_flight, self.pending.front().map(|(s, _)| *s)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Answer flushes: `true` once their events are in the database; at the deadline, put
    /// what is still in memory into the spill file and answer `false`.
    async fn settle_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let oldest = self.oldest_outstanding();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| oldest.is_none_or(|o| o > w.target));
        for w in done {
            let _ = w.reply.send(true);
        }
        self.waiters = waiting;
        let now = Instant::now();
        if !self.waiters.iter().any(|w| w.deadline <= now) {
            return;
        }
        let expired_target = self
            .waiters
            .iter()
            .filter(|w| w.deadline <= now)
            .map(|w| w.target)
            .max()
            .unwrap_or(0);
        if self.oldest_in_memory().is_some_and(|o| o <= expired_target) {
            self.spill_out(self.pending.len(), false).await;
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.deadline <= now);
        for w in expired {
            let _ = w.reply.send(false);
        }
        self.waiters = waiting;
    }
}

async fn insert(db: &Db, events: &[AuditEvent]) -> Result<Inserted, String> {
    match tokio::time::timeout(WRITE_TIMEOUT, db.insert(events)).await {
        Ok(Ok(inserted)) => Ok(inserted),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("write timed out after {WRITE_TIMEOUT:?}")),
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
