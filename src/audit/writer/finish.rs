//! What the writer does when a database job ends: account for the events, retry on failure.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{spill, Job, JobOutput, Writer};
use crate::audit::db::Inserted;
use crate::audit::event::AuditEvent;

impl Writer {
    pub(super) async fn finish(&mut self, out: JobOutput) {
        let job = self.job.take();
        match (out, job) {
            (JobOutput::Migrate(Ok(())), _) => {
                tracing::info!("audit migrations applied");
                self.migrated = true;
                self.succeeded();
            }
            (JobOutput::Migrate(Err(e)), _) => self.failed(format!("{e:#}")),
            (JobOutput::Batch(Ok(inserted)), Some(Job::Batch { batch, copied })) => {
                self.batch_written(&batch, copied, &inserted);
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

    /// A batch reached the database; if it had also been copied to the spill file meanwhile,
    /// those lines are skipped there.
    fn batch_written(
        &mut self,
        batch: &[(u64, AuditEvent)],
        copied: Option<u64>,
        inserted: &Inserted,
    ) {
        let n = batch.len() as u64;
        tracing::debug!(events = n, copied = copied.is_some(), "audit batch written");
        self.reject(inserted, |i| &batch[i].1);
        let stored = n - inserted.rejected.len() as u64;
        self.shared.add_written(stored);
        match copied {
            // Also the first lines of the spill file (copied there while this write
            // was in flight): skip them there. They left the spill for the database,
            // so they count as replayed: every spilled event is replayed or dropped.
            Some(end) => {
                self.spill.read_offset = end;
                let k = (n as usize).min(self.spill.seqs.len());
                self.spill.seqs.drain(..k);
                self.shared
                    .spill_replayed
                    .fetch_add(stored.min(k as u64), Ordering::Relaxed);
            }
            None => self.shared.leave_memory(n),
        }
    }

    /// Events the database refused as data: logged in full (the log line is their last
    /// record) and counted as dropped.
    pub(super) fn reject<'a>(
        &mut self,
        inserted: &Inserted,
        event: impl Fn(usize) -> &'a AuditEvent,
    ) {
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

    pub(super) fn succeeded(&mut self) {
        if self.retry_at.take().is_some() {
            tracing::info!(
                backlog = self.spill.seqs.len(),
                queued = self.pending.len(),
                "audit database reachable again"
            );
        }
    }

    pub(super) fn failed(&mut self, error: String) {
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

    pub(super) async fn truncate_spill_if_done(&mut self) {
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
                self.spill.noise_len = 0;
                self.spill.read_offset = 0;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot truncate the audit spill file"),
            Err(e) => tracing::error!(error = %e, "audit spill truncate panicked"),
        }
    }
}
