//! How the server reaches a client, across reconnects.
//!
//! Every message gets a per-session sequence number and stays in a bounded replay ring. The
//! ring keeps each message's rendering without its `seq` (shared by every session a room
//! broadcast reached) and adds the number on the way out. The live connection (WebSocket or
//! WebTransport) can be detached and another attached later: a resuming client says which
//! `seq` it saw last and gets everything after it, so no notification is lost between a drop
//! and a resume.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::protocol::{wire, OutboundEnvelope};
use crate::room::{Broadcast, Notice, Notifier};

/// Messages kept for replay. A session that misses more than this must rejoin.
pub const REPLAY_BUFFER: usize = 1024;
/// Bytes kept for replay, whatever the count: a session's memory is bounded by this, not by
/// what clients make the server say.
pub const REPLAY_BYTES: usize = 256 * 1024;

/// The connection currently carrying a session's messages.
struct Live {
    tx: mpsc::Sender<Arc<str>>,
    /// Told to close the connection when it cannot keep up (the client then resumes).
    kick: Arc<Notify>,
}

struct Outbox {
    next_seq: u64,
    /// Messages without their `seq` (see [`with_seq`]).
    ring: VecDeque<(u64, Arc<str>)>,
    /// Sum of the ring's message lengths (a shared rendering counts for each session: the
    /// bound is what a session may hold, whoever else holds it too).
    ring_bytes: usize,
    /// Off until the session authenticates: an anonymous connection cannot resume, so
    /// keeping its messages would only let it grow the server's memory.
    replayable: bool,
    live: Option<Live>,
    /// Bumped on every attach, so a stale detach or expiry can tell it lost the race.
    generation: u64,
}

impl Outbox {
    /// Keep `text` for replay, dropping the oldest beyond the count and byte bounds.
    fn remember(&mut self, seq: u64, text: Arc<str>) {
        self.ring_bytes += text.len();
        self.ring.push_back((seq, text));
        while self.ring.len() > REPLAY_BUFFER || self.ring_bytes > REPLAY_BYTES {
            match self.ring.pop_front() {
                Some((_, old)) => self.ring_bytes -= old.len(),
                None => break,
            }
        }
    }
}

#[derive(Clone)]
pub struct SessionSink {
    pub connection_id: Uuid,
    outbox: Arc<Mutex<Outbox>>,
}

/// A resume asked for messages that already left the replay ring.
#[derive(Debug)]
pub struct ReplayGap;

impl SessionSink {
    pub fn new(connection_id: Uuid) -> Self {
        SessionSink {
            connection_id,
            outbox: Arc::new(Mutex::new(Outbox {
                next_seq: 1,
                ring: VecDeque::new(),
                ring_bytes: 0,
                replayable: false,
                live: None,
                generation: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sequence, remember and (if a connection is attached) deliver one message.
    pub fn send(&self, message: OutboundEnvelope) {
        self.send_rendered(message.to_json().into());
    }

    /// [`SessionSink::send`] for a message already rendered (without `seq`).
    fn send_rendered(&self, body: Arc<str>) {
        let mut outbox = self.lock();
        let seq = outbox.next_seq;
        outbox.next_seq += 1;
        if let Some(live) = &outbox.live {
            if live.tx.try_send(with_seq(&body, seq)).is_err() {
                // The client stopped reading. Cut it loose; it resumes and replays from the
                // ring instead of the server buffering without bound.
                tracing::warn!(session = %self.connection_id, "outbound queue full; disconnecting the client");
                live.kick.notify_one();
                outbox.live = None;
            }
        }
        if outbox.replayable {
            outbox.remember(seq, body);
        }
    }

    /// The client has every message up to `last_seq` (`ping {lastSeq}`): a resume will never
    /// ask for them, so the ring lets them go. A `last_seq` not sent yet changes nothing.
    pub fn acknowledge(&self, last_seq: u64) {
        let mut outbox = self.lock();
        if last_seq >= outbox.next_seq {
            return;
        }
        while outbox.ring.front().is_some_and(|(seq, _)| *seq <= last_seq) {
            if let Some((_, text)) = outbox.ring.pop_front() {
                outbox.ring_bytes -= text.len();
            }
        }
    }

    /// Bytes this session keeps for a resume.
    pub fn replay_bytes(&self) -> usize {
        self.lock().ring_bytes
    }

    /// Keep messages for replay from now on (the session authenticated and can resume).
    pub fn enable_replay(&self) {
        self.lock().replayable = true;
    }

    /// Route messages to a new connection. Returns the generation of this attachment.
    pub fn attach(&self, tx: mpsc::Sender<Arc<str>>, kick: Arc<Notify>) -> u64 {
        let mut outbox = self.lock();
        if let Some(old) = outbox.live.take() {
            // A resume elsewhere supersedes a connection the server still thinks is live.
            old.kick.notify_one();
        }
        outbox.live = Some(Live { tx, kick });
        outbox.generation += 1;
        outbox.generation
    }

    /// Attach `tx` and queue every message after `last_seq` on it, in order.
    pub fn resume(
        &self,
        last_seq: u64,
        tx: mpsc::Sender<Arc<str>>,
        kick: Arc<Notify>,
    ) -> Result<(u64, usize), ReplayGap> {
        let mut outbox = self.lock();
        let oldest = outbox
            .ring
            .front()
            .map(|(s, _)| *s)
            .unwrap_or(outbox.next_seq);
        if last_seq + 1 < oldest || last_seq >= outbox.next_seq {
            return Err(ReplayGap);
        }
        let mut replayed = 0;
        for (seq, text) in outbox.ring.iter() {
            if *seq > last_seq {
                if tx.try_send(with_seq(text, *seq)).is_err() {
                    return Err(ReplayGap);
                }
                replayed += 1;
            }
        }
        if let Some(old) = outbox.live.take() {
            old.kick.notify_one();
        }
        outbox.live = Some(Live { tx, kick });
        outbox.generation += 1;
        Ok((outbox.generation, replayed))
    }

    /// Stop delivering to the connection of `generation` (if it is still the attached one).
    /// Returns true when this call detached it.
    pub fn detach(&self, generation: u64) -> bool {
        let mut outbox = self.lock();
        if outbox.generation == generation && outbox.live.is_some() {
            outbox.live = None;
            return true;
        }
        false
    }

    /// Whether a connection currently carries this session.
    pub fn is_attached(&self) -> bool {
        self.lock().live.is_some()
    }

    /// Whether the attachment of `generation` is gone and nobody re-attached since.
    pub fn still_detached_since(&self, generation: u64) -> bool {
        let outbox = self.lock();
        outbox.generation == generation && outbox.live.is_none()
    }
}

/// The room's notices reach a signaling client as wire notifications.
impl Notifier for SessionSink {
    fn notify(&self, notice: Notice) {
        self.send(wire::notification(notice));
    }

    fn notify_broadcast(&self, broadcast: &Broadcast) {
        let body = broadcast.rendered.get_or_init(|| {
            wire::notification(broadcast.notice.clone())
                .to_json()
                .into()
        });
        self.send_rendered(body.clone());
    }
}

/// `body` (a JSON object rendered without `seq`) with `"seq": seq` as its last member, as the
/// envelope itself would render it.
fn with_seq(body: &str, seq: u64) -> Arc<str> {
    let open = body.strip_suffix('}').unwrap_or(body);
    let separator = if open.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!("{open}{separator}\"seq\":{seq}}}").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note(n: u64) -> OutboundEnvelope {
        OutboundEnvelope::notification("n", json!({ "n": n }))
    }

    #[test]
    fn acknowledged_messages_leave_the_ring_and_a_resume_after_them_still_works() {
        let sink = SessionSink::new(Uuid::new_v4());
        sink.enable_replay();
        for n in 1..=5 {
            sink.send(note(n));
        }
        assert_eq!(sink.lock().ring.len(), 5);
        sink.acknowledge(99); // never sent: ignored
        assert_eq!(sink.lock().ring.len(), 5);
        sink.acknowledge(3);
        let kept: Vec<u64> = sink.lock().ring.iter().map(|(s, _)| *s).collect();
        assert_eq!(kept, vec![4, 5]);
        let bytes: usize = sink.lock().ring.iter().map(|(_, t)| t.len()).sum();
        assert_eq!(sink.lock().ring_bytes, bytes);
        // Resuming from what was acknowledged replays the rest; from before it, a gap.
        let (tx, _rx) = mpsc::channel(16);
        assert!(sink.resume(2, tx, Arc::new(Notify::new())).is_err());
        let (tx, mut rx) = mpsc::channel(16);
        let (_, replayed) = sink.resume(3, tx, Arc::new(Notify::new())).unwrap();
        assert_eq!(replayed, 2);
        assert!(rx.try_recv().unwrap().contains(r#""seq":4"#));
    }

    #[test]
    fn resume_replays_exactly_what_was_missed() {
        let sink = SessionSink::new(Uuid::new_v4());
        sink.enable_replay();
        let (tx, mut rx) = mpsc::channel(16);
        let generation = sink.attach(tx, Arc::new(Notify::new()));
        sink.send(note(1));
        sink.send(note(2));
        assert!(sink.detach(generation));
        sink.send(note(3));
        sink.send(note(4));
        let (tx2, mut rx2) = mpsc::channel(16);
        // The client saw seq 1 only (2 was lost in flight).
        let (_, replayed) = sink.resume(1, tx2, Arc::new(Notify::new())).unwrap();
        assert_eq!(replayed, 3);
        let seqs: Vec<u64> = std::iter::from_fn(|| rx2.try_recv().ok())
            .map(|t| {
                serde_json::from_str::<serde_json::Value>(&t).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 2);
    }

    #[test]
    fn a_broadcast_is_rendered_once_and_numbered_per_session() {
        let (a, b) = (
            SessionSink::new(Uuid::new_v4()),
            SessionSink::new(Uuid::new_v4()),
        );
        for sink in [&a, &b] {
            sink.enable_replay();
        }
        b.send(note(1)); // b is one message ahead
        let (tx_a, mut rx_a) = mpsc::channel(4);
        let (tx_b, mut rx_b) = mpsc::channel(4);
        a.attach(tx_a, Arc::new(Notify::new()));
        b.attach(tx_b, Arc::new(Notify::new()));
        let left = Broadcast::new(Notice::ParticipantLeft {
            participant_id: "p1".into(),
        });
        a.notify_broadcast(&left);
        b.notify_broadcast(&left);
        let shared = |sink: &SessionSink| sink.lock().ring.back().unwrap().1.clone();
        assert!(
            Arc::ptr_eq(&shared(&a), &shared(&b)),
            "one rendering kept by both"
        );
        let parsed = |text: Arc<str>| serde_json::from_str::<serde_json::Value>(&text).unwrap();
        let (got_a, got_b) = (
            parsed(rx_a.try_recv().unwrap()),
            parsed(rx_b.try_recv().unwrap()),
        );
        assert_eq!(got_a["type"], "participantLeft");
        assert_eq!(got_a["data"]["participantId"], "p1");
        assert_eq!(
            (got_a["seq"].as_u64(), got_b["seq"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(got_a["data"], got_b["data"]);
        assert_eq!(&*with_seq("{}", 7), r#"{"seq":7}"#);
    }

    #[test]
    fn resume_beyond_the_ring_is_a_gap() {
        let sink = SessionSink::new(Uuid::new_v4());
        sink.enable_replay();
        for n in 0..(REPLAY_BUFFER as u64 + 10) {
            sink.send(note(n));
        }
        let (tx, _rx) = mpsc::channel(4096);
        assert!(sink.resume(1, tx.clone(), Arc::new(Notify::new())).is_err());
        assert!(sink.resume(99_999, tx, Arc::new(Notify::new())).is_err());
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_and_empty_before_authentication() {
        let big = || OutboundEnvelope::notification("n", json!({ "pad": "x".repeat(60_000) }));
        let sink = SessionSink::new(Uuid::new_v4());
        for _ in 0..50 {
            sink.send(big());
        }
        assert_eq!(
            sink.lock().ring.len(),
            0,
            "nothing kept before authentication"
        );
        sink.enable_replay();
        for _ in 0..50 {
            sink.send(big());
        }
        let outbox = sink.lock();
        assert!(
            outbox.ring_bytes <= REPLAY_BYTES,
            "{} bytes kept",
            outbox.ring_bytes
        );
        assert!(outbox.ring.len() >= 3, "recent messages are still kept");
        let counted: usize = outbox.ring.iter().map(|(_, t)| t.len()).sum();
        assert_eq!(counted, outbox.ring_bytes);
    }
}
