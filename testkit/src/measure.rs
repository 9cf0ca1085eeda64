//! What load-run peers share and measure: the run's phase and epoch, and per-peer receive
//! statistics (packets, bytes, loss from the stamps' counters, one-way latency from their send
//! times: same process, same monotonic clock).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use str0m::media::Mid;

use crate::histogram::Histogram;
use crate::payload::{read_stamp, AUDIO_LAYER};

/// Run phases shared by every peer: only packets that arrive while measuring are counted, and
/// publishers stop once done.
pub const PHASE_RAMP: u8 = 0;
pub const PHASE_MEASURE: u8 = 1;
pub const PHASE_DONE: u8 = 2;

/// What every peer of one run shares.
pub struct Shared {
    pub epoch: Instant,
    pub phase: AtomicU8,
    /// Subscriber peers that received their first media packet.
    pub subscribers_ready: AtomicUsize,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            phase: AtomicU8::new(PHASE_RAMP),
            subscribers_ready: AtomicUsize::new(0),
        })
    }

    /// Microseconds since the run's epoch.
    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// Packet counters of one received stream (one mid and one publisher layer).
#[derive(Debug, Clone, Copy)]
pub struct StreamCounter {
    pub first: u32,
    pub last: u32,
    pub received: u64,
}

impl StreamCounter {
    /// Packets the publisher sent between the first and last one seen.
    pub fn expected(&self) -> u64 {
        u64::from(self.last.wrapping_sub(self.first)) + 1
    }
}

/// What a receiving peer measured.
#[derive(Debug, Clone, Default)]
pub struct RxStats {
    /// When the first media packet arrived (any phase).
    pub first_packet: Option<Instant>,
    /// Counted while measuring only.
    pub packets: u64,
    pub bytes: u64,
    pub streams: HashMap<(Mid, u8), StreamCounter>,
    pub latency_us: Histogram,
    /// Packets whose payload carried no stamp.
    pub unstamped: u64,
    /// Stamped packets by layer: low, medium, high, audio.
    pub layer_packets: [u64; 4],
}

impl RxStats {
    pub fn on_packet(&mut self, mid: Mid, payload: &[u8], audio: bool, recv_us: u64) {
        self.packets += 1;
        self.bytes += payload.len() as u64;
        let Some((layer, counter, sent_us)) = read_stamp(payload, audio) else {
            self.unstamped += 1;
            return;
        };
        self.latency_us.record(recv_us.saturating_sub(sent_us));
        let slot = if layer == AUDIO_LAYER {
            3
        } else {
            usize::from(layer).min(2)
        };
        self.layer_packets[slot] += 1;
        self.streams
            .entry((mid, layer))
            .and_modify(|s| {
                // Counters only grow; a lower one is a late or retransmitted packet.
                if counter.wrapping_sub(s.last) < u32::MAX / 2 {
                    s.last = counter;
                }
                if s.first.wrapping_sub(counter) < u32::MAX / 2 && counter != s.first {
                    s.first = counter;
                }
                s.received += 1;
            })
            .or_insert(StreamCounter {
                first: counter,
                last: counter,
                received: 1,
            });
    }

    /// One whole frame a WebTransport subscriber received (`wtmedia`): counted as one unit,
    /// its first packet's stamp gives latency and layer. Loss is not counted for frames (a
    /// frame's stamp numbers packets, not frames).
    pub fn on_frame(&mut self, frame: &[u8], audio: bool, recv_us: u64) {
        self.packets += 1;
        self.bytes += frame.len() as u64;
        // The stamp follows the Opus TOC byte, or the VP8 frame header (10 bytes for a
        // keyframe, 3 otherwise).
        let offset = match (audio, frame.first()) {
            (true, _) => 1,
            (false, Some(tag)) if tag & 1 == 0 => 10,
            (false, Some(_)) => 3,
            (false, None) => {
                self.unstamped += 1;
                return;
            }
        };
        let Some(s) = frame.get(offset..offset + crate::payload::STAMP_LEN) else {
            self.unstamped += 1;
            return;
        };
        let layer = s[0];
        let sent_us = u64::from_be_bytes(s[5..13].try_into().expect("8 bytes"));
        self.latency_us.record(recv_us.saturating_sub(sent_us));
        let slot = if layer == AUDIO_LAYER {
            3
        } else {
            usize::from(layer).min(2)
        };
        self.layer_packets[slot] += 1;
    }

    /// (expected, lost) over all streams; duplicates never make loss negative.
    pub fn loss(&self) -> (u64, u64) {
        self.streams.values().fold((0, 0), |(e, l), s| {
            let expected = s.expected();
            (e + expected, l + expected.saturating_sub(s.received))
        })
    }
}
