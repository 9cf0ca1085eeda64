//! A bottleneck link for a test peer's downlink, sans I/O: datagrams leave at most at `rate`,
//! wait in a queue bounded by `queue_limit` of delay (tbf's `latency`) and are dropped beyond
//! it. That is what a thin access link does to an SFU's media: queueing delay first (what
//! GCC's delay detector sees), then loss. Deterministic, so BWE tests need no namespace.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub struct Shaper {
    rate_bps: u64,
    queue_limit: Duration,
    /// When the link has finished sending what is queued.
    busy_until: Option<Instant>,
    queue: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    pub delivered: u64,
    pub dropped: u64,
}

impl Shaper {
    pub fn new(rate_bps: u64, queue_limit: Duration) -> Self {
        Shaper {
            rate_bps: rate_bps.max(1),
            queue_limit,
            busy_until: None,
            queue: VecDeque::new(),
            delivered: 0,
            dropped: 0,
        }
    }

    /// Change the link rate; what is queued keeps its departure times.
    pub fn set_rate(&mut self, rate_bps: u64) {
        self.rate_bps = rate_bps.max(1);
    }

    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// A datagram reaches the link at `now`: queued, or dropped when the queue is too long.
    pub fn offer(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if start.saturating_duration_since(now) > self.queue_limit {
            self.dropped += 1;
            return;
        }
        // Serialization time of this datagram, with IP and UDP headers, at the link rate.
        let bits = (data.len() as u64 + 28) * 8;
        let leaves = start + Duration::from_nanos(bits * 1_000_000_000 / self.rate_bps);
        self.busy_until = Some(leaves);
        self.queue.push_back((leaves, source, data.to_vec()));
    }

    /// When the next datagram leaves the link.
    pub fn next_release(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _, _)| *at)
    }

    /// The next datagram that has left the link by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self.next_release()? > now {
            return None;
        }
        let (_, source, data) = self.queue.pop_front()?;
        self.delivered += 1;
        Some((source, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_at_the_rate_and_drops_past_the_queue_limit() {
        let t0 = Instant::now();
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // 972 + 28 bytes = 8000 bits: 10 ms each at 800 kbit/s.
        let mut link = Shaper::new(800_000, Duration::from_millis(25));
        for _ in 0..5 {
            link.offer(t0, from, &[0; 972]);
        }
        // Leave at 10, 20, 30 ms; the 4th would wait 30 ms > 25 ms: dropped, as the 5th.
        assert_eq!(link.dropped, 2);
        assert!(link.pop_due(t0 + Duration::from_millis(9)).is_none());
        assert!(link.pop_due(t0 + Duration::from_millis(10)).is_some());
        assert_eq!(link.next_release(), Some(t0 + Duration::from_millis(20)));
        while link.pop_due(t0 + Duration::from_secs(1)).is_some() {}
        assert_eq!((link.delivered, link.dropped), (3, 2));
    }
}
