//! Coalescing of repetitive events ([`super::AuditLog::record_coalesced`]): per key, the first
//! event of a window is recorded at once, the rest of the window only counts, and when the
//! window ends one summary row carries the count. Memory is bounded: at most [`MAX_KEYS`]
//! windows (keys cut to [`MAX_KEY_LEN`] bytes); events for further keys share the
//! [`OTHER_KEY`] window.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::event::AuditEvent;

/// Distinct keys with an open window; beyond this, events fold into [`OTHER_KEY`].
pub const MAX_KEYS: usize = 1024;
/// Keys are cut to this many bytes (a key is often built from client input).
pub const MAX_KEY_LEN: usize = 200;
/// The window that collects events of keys beyond [`MAX_KEYS`].
pub const OTHER_KEY: &str = "other";

struct Window {
    opened: Instant,
    /// The event recorded when the window opened: the template of the summary.
    first: AuditEvent,
    /// Events in the window, the first included.
    count: u64,
    last_at_ms: i64,
}

pub(crate) struct Coalescer {
    window: Duration,
    windows: HashMap<String, Window>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Coalescer {
            window,
            windows: HashMap::new(),
        }
    }

    /// Take `event` for `key`; what must be recorded now is pushed to `out` (the summary of
    /// the key's ended window, then `event` if it opens a window).
    pub fn offer(&mut self, event: AuditEvent, key: &str, now: Instant, out: &mut Vec<AuditEvent>) {
        let mut key = cut(key);
        if !self.windows.contains_key(key) && self.windows.len() >= MAX_KEYS {
            key = OTHER_KEY;
        }
        if let Some(w) = self.windows.get_mut(key) {
            if now.duration_since(w.opened) < self.window {
                w.count += 1;
                w.last_at_ms = w.last_at_ms.max(event.at_unix_ms);
                return;
            }
            let ended = self.windows.remove(key).expect("just found");
            out.extend(self.summary(key, ended));
        }
        out.push(event.clone());
        self.windows.insert(
            key.to_string(),
            Window {
                opened: now,
                last_at_ms: event.at_unix_ms,
                first: event,
                count: 1,
            },
        );
    }

    /// End the windows open for a full window length by `now`: their summaries to `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<AuditEvent>) {
        let window = self.window;
        let ended: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| now.duration_since(w.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(w) = self.windows.remove(&key) {
                out.extend(self.summary(&key, w));
            }
        }
    }

    /// End every window now (flush, shutdown).
    pub fn drain(&mut self, out: &mut Vec<AuditEvent>) {
        for (key, w) in std::mem::take(&mut self.windows) {
            out.extend(self.summary(&key, w));
        }
    }

    /// Events counted but not yet in a summary row.
    pub fn suppressed(&self) -> u64 {
        self.windows.values().map(|w| w.count - 1).sum()
    }

    /// The row for an ended window, if it saw more than its first event.
    fn summary(&self, key: &str, w: Window) -> Option<AuditEvent> {
        if w.count <= 1 {
            return None;
        }
        let secs = self.window.as_secs_f64();
        let window_secs = if secs.fract() == 0.0 {
            json!(secs as u64)
        } else {
            json!(secs)
        };
        let first_at_ms = w.first.at_unix_ms;
        let mut event = w.first;
        event.id = Uuid::new_v4();
        event.at_unix_ms = w.last_at_ms;
        let extra = json!({
            "count": w.count,
            "windowSecs": window_secs,
            "firstAtMs": first_at_ms,
        });
        if key == OTHER_KEY {
            // Several keys share this window: the first event's details would mislead.
            event.room_id = None;
            event.participant_id = None;
            event.user_id = None;
            event.detail = extra;
            event.detail["otherKeys"] = Value::Bool(true);
        } else if let Value::Object(detail) = &mut event.detail {
            detail.extend(extra.as_object().cloned().unwrap_or_default());
        } else {
            let original = std::mem::take(&mut event.detail);
            event.detail = extra;
            event.detail["detail"] = original;
        }
        Some(event)
    }
}

/// `key` cut to at most [`MAX_KEY_LEN`] bytes on a character boundary.
fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut end = MAX_KEY_LEN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditKind;

    fn trip(i: u64) -> AuditEvent {
        AuditEvent::new(AuditKind::LimitTripped).detail(json!({ "limit": "messages", "i": i }))
    }

    #[test]
    fn first_at_once_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(10));
        let mut out = Vec::new();
        for i in 0..5 {
            c.offer(trip(i), "ip:1", t0 + Duration::from_secs(i), &mut out);
        }
        c.offer(trip(9), "ip:2", t0, &mut out);
        assert_eq!(out.len(), 2, "one first event per key");
        assert_eq!(c.suppressed(), 4);
        out.clear();
        c.expire(t0 + Duration::from_secs(9), &mut out);
        assert!(out.is_empty(), "window still open");
        c.expire(t0 + Duration::from_secs(10), &mut out);
        assert_eq!(out.len(), 1, "ip:2 saw one event: no summary");
        let s = &out[0];
        assert_eq!(s.detail["count"], 5);
        assert_eq!(s.detail["windowSecs"], 10);
        assert_eq!(s.detail["limit"], "messages");
        assert_eq!(s.detail["i"], 0, "the first event's details");
        assert_eq!(c.suppressed(), 0);
        // A new window after the old one ended: recorded at once again.
        out.clear();
        c.offer(trip(7), "ip:1", t0 + Duration::from_secs(11), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn an_event_after_the_window_ends_the_window_itself() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1));
        let mut out = Vec::new();
        c.offer(trip(0), "k", t0, &mut out);
        c.offer(trip(1), "k", t0, &mut out);
        c.offer(trip(2), "k", t0 + Duration::from_secs(2), &mut out);
        assert_eq!(out.len(), 3, "first, summary, first of the next window");
        assert_eq!(out[1].detail["count"], 2);
        assert_eq!(out[2].detail["i"], 2);
    }

    #[test]
    fn keys_are_bounded() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(10));
        let mut out = Vec::new();
        for i in 0..(MAX_KEYS as u64 + 50) {
            c.offer(trip(i).room("r"), &format!("k{i}"), t0, &mut out);
        }
        assert_eq!(c.windows.len(), MAX_KEYS + 1, "the rest share one window");
        assert_eq!(out.len(), MAX_KEYS + 1);
        let long = "é".repeat(MAX_KEY_LEN);
        assert!(cut(&long).len() <= MAX_KEY_LEN);
        out.clear();
        c.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].detail["count"], 50);
        assert_eq!(out[0].detail["otherKeys"], true);
        assert_eq!(out[0].room_id, None);
    }
}
