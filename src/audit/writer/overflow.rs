//! The overflow policy: memory bound, spill file, drops (noise first), and flush deadlines.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{spill, Job, Writer, DROP_LOG_INTERVAL, NOISE_SHARE_DIVISOR};

impl Writer {
    /// Keep at most `queue_capacity` events in memory: move the oldest to the spill file,
    /// at least a batch at a time so a long outage does not fsync for every event. When the
    /// file has no room left for the next real event, the noise in memory goes first.
    pub(super) async fn enforce_capacity(&mut self) {
        let cap = self.cfg.queue_capacity;
        if self.pending.len() <= cap {
            return;
        }
        let budget = self.cfg.spill_max_bytes.saturating_sub(self.spill.len);
        let real_blocked = self
            .pending
            .iter()
            .find(|(_, e)| !e.kind.is_noise())
            .is_some_and(|(_, e)| spill::encode(e).len() as u64 > budget);
        if real_blocked {
            let before = self.pending.len();
            self.pending.retain(|(_, e)| !e.kind.is_noise());
            let dropped = (before - self.pending.len()) as u64;
            self.shared.leave_memory(dropped);
            self.note_dropped(dropped, "spill file full: noise dropped before real events");
            if self.pending.len() <= cap {
                return;
            }
        }
        let excess = self.pending.len() - cap;
        let n = excess.max(self.cfg.batch_size.min(self.pending.len()));
        self.spill_out(n, true).await;
    }

    /// Move the oldest `n` queued events (and, first, a batch being written, whose events are
    /// older) to the end of the spill file. From the first event that does not fit under
    /// `spill_max_bytes` on, the rest are dropped if `drop_unfit` (the queue is over capacity),
    /// else kept in memory. Noise takes at most 1/[`NOISE_SHARE_DIVISOR`] of the file; noise
    /// that does not fit is dropped and does not hold back the events after it. If the file
    /// cannot be written, the events are dropped.
    pub(super) async fn spill_out(&mut self, n: usize, drop_unfit: bool) {
        let n = n.min(self.pending.len());
        let uncopied_batch = matches!(self.job, Some(Job::Batch { copied: None, .. }));
        if n == 0 && !uncopied_batch {
            return;
        }
        let mut budget = self.cfg.spill_max_bytes.saturating_sub(self.spill.len);
        let mut noise_budget =
            (self.cfg.spill_max_bytes / NOISE_SHARE_DIVISOR).saturating_sub(self.spill.noise_len);
        // The batch in flight goes first, or else nothing can be written after it.
        let (mut out, blocked_by_batch) = self.copy_in_flight(budget);
        budget -= out.bytes.len() as u64;
        let mut blocked = blocked_by_batch;
        let mut dropped = 0u64;
        let mut noise_dropped = 0u64;
        let mut unfit = Vec::new();
        for (seq, event) in self.pending.drain(..n) {
            let noise = event.kind.is_noise();
            if !blocked {
                let line = spill::encode(&event);
                let len = line.len() as u64;
                if len <= budget && (!noise || len <= noise_budget) {
                    budget -= len;
                    if noise {
                        noise_budget -= len;
                        out.noise_bytes += len;
                    }
                    out.bytes.extend(line);
                    out.seqs.push(seq);
                    out.moved += 1;
                    continue;
                }
                blocked = !noise;
            }
            if noise {
                noise_dropped += 1;
            } else if drop_unfit {
                dropped += 1;
            } else {
                unfit.push((seq, event));
            }
        }
        for item in unfit.into_iter().rev() {
            self.pending.push_front(item);
        }
        if !out.bytes.is_empty() {
            dropped += self.append(out).await;
        }
        if dropped > 0 {
            self.shared.leave_memory(dropped);
            self.note_dropped(dropped, "spill file full or unwritable");
        }
        if noise_dropped > 0 {
            self.shared.leave_memory(noise_dropped);
            self.note_dropped(noise_dropped, "noise over its share of the spill file");
        }
        self.shared
            .spill_backlog
            .store(self.spill.seqs.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn note_dropped(&mut self, n: u64, reason: &str) {
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
    pub(super) fn oldest_outstanding(&self) -> Option<u64> {
        [self.spill.seqs.front().copied(), self.oldest_in_memory()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Oldest event held only in memory.
    pub(super) fn oldest_in_memory(&self) -> Option<u64> {
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
    pub(super) async fn settle_waiters(&mut self) {
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

    /// The lines of the batch being written if it is not in the file yet (and fits in
    /// `budget`: else `true`, nothing may be spilled after it). Already taken from the queue,
    /// it is kept whole: its noise is counted but not capped.
    fn copy_in_flight(&self, budget: u64) -> (Outgoing, bool) {
        let mut out = Outgoing::default();
        let Some(Job::Batch {
            batch,
            copied: None,
        }) = &self.job
        else {
            return (out, false);
        };
        for (seq, event) in batch {
            let line = spill::encode(event);
            if event.kind.is_noise() {
                out.noise_bytes += line.len() as u64;
            }
            out.bytes.extend(line);
            out.seqs.push(*seq);
        }
        if out.bytes.len() as u64 > budget {
            return (Outgoing::default(), true);
        }
        out.copy = Some((out.bytes.len() as u64, batch.len()));
        (out, false)
    }

    /// Append `out` to the spill file; the number of queued events lost if that fails.
    async fn append(&mut self, out: Outgoing) -> u64 {
        let path = self.cfg.spill_path.clone();
        let len = out.bytes.len() as u64;
        let bytes = out.bytes;
        let written = tokio::task::spawn_blocking(move || spill::append(&path, &bytes)).await;
        let error = match written {
            Ok(Ok(())) => {
                let start = self.spill.len;
                self.spill.len += len;
                self.spill.noise_len += out.noise_bytes;
                self.spill.seqs.extend(out.seqs);
                let copied_events = out.copy.map_or(0, |(_, k)| k as u64);
                self.shared.add_spilled(out.moved + copied_events);
                self.shared.leave_memory(out.moved + copied_events);
                if let (Some((copy_bytes, _)), Some(Job::Batch { copied, .. })) =
                    (out.copy, self.job.as_mut())
                {
                    // A batch is only taken from memory when the file has nothing left to
                    // replay, so the copy is what would be read next.
                    *copied = Some(start + copy_bytes);
                }
                return 0;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(
            path = %self.cfg.spill_path.display(),
            %error,
            "cannot write the audit spill file"
        );
        out.moved
    }
}

/// Spill lines ready to append, and what they stand for.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    seqs: Vec<u64>,
    /// Events from the memory queue among them.
    moved: u64,
    noise_bytes: u64,
    /// The batch in flight, copied first: (its bytes, its events).
    copy: Option<(u64, usize)>,
}
