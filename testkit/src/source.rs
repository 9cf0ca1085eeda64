//! What a publishing peer sends: one [`Track`] per m-line, writing codec-shaped one-packet
//! frames every 20 ms ([`crate::payload::synthetic_payload`]) or stamped, realistically sized
//! Opus/VP8 for load runs. Keyframes on a layer's first frame and whenever the SFU asks.

use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Mid, Rid};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::Rtc;

use crate::payload::{self, FPS, LAYERS};

/// What to publish in one offer.
#[derive(Debug, Clone, Copy)]
pub struct Publish {
    pub audio: Option<Codec>,
    pub video: Option<Codec>,
    /// Video as 3-layer simulcast with rids [`LAYERS`].
    pub simulcast: bool,
    /// List the rids highest first in the offer (as Janus wants them).
    pub high_first: bool,
    /// Stamped, sized load-run packets (Opus/VP8) instead of codec-shaped one-packet frames.
    pub stamped: bool,
}

impl Publish {
    /// Opus + 3-layer VP8 simulcast, codec-shaped.
    pub const AUDIO_VIDEO: Publish = Publish {
        audio: Some(Codec::Opus),
        video: Some(Codec::Vp8),
        simulcast: true,
        high_first: false,
        stamped: false,
    };

    /// One track of `codec`: audio, or video (3-layer simulcast when `simulcast`).
    pub fn codec(codec: Codec, simulcast: bool) -> Self {
        let (audio, video) = if codec.is_audio() {
            (Some(codec), None)
        } else {
            (None, Some(codec))
        };
        Publish {
            audio,
            video,
            simulcast,
            ..Self::AUDIO_VIDEO
        }
    }

    /// Stamped Opus, and stamped VP8 simulcast when `video`.
    pub fn load(video: bool, high_first: bool) -> Self {
        Publish {
            video: video.then_some(Codec::Vp8),
            high_first,
            stamped: true,
            ..Self::AUDIO_VIDEO
        }
    }
}

/// One published m-line's synthetic media.
pub(crate) struct Track {
    codec: Codec,
    pub(crate) mid: Mid,
    /// One entry per layer, lowest first; `None` for a single unlayered stream.
    rids: Vec<Option<Rid>>,
    stamped: bool,
    period: Duration,
    /// RTP clock ticks per frame.
    ticks: u64,
    next: Instant,
    frame: u64,
    /// Packets sent per layer (the next sequence number is this + 1).
    sent: Vec<u32>,
    keyframe_due: Vec<bool>,
}

impl Track {
    pub(crate) fn new(codec: Codec, mid: Mid, simulcast: bool, stamped: bool) -> Self {
        let audio = codec.is_audio();
        let rids: Vec<Option<Rid>> = if simulcast && !audio {
            LAYERS.iter().map(|r| Some(Rid::from(*r))).collect()
        } else {
            vec![None]
        };
        // Stamped video runs at FPS; everything else one frame per 20 ms.
        let period = if stamped && !audio {
            Duration::from_nanos(1_000_000_000 / FPS)
        } else {
            Duration::from_millis(20)
        };
        let clock = if audio { 48_000 } else { 90_000 };
        Track {
            codec,
            mid,
            stamped,
            period,
            ticks: (clock * period.as_nanos() as u64 + 500_000_000) / 1_000_000_000,
            next: Instant::now(),
            frame: 0,
            sent: vec![0; rids.len()],
            keyframe_due: vec![true; rids.len()],
            rids,
        }
    }

    pub(crate) fn keyframe_request(&mut self, mid: Mid, rid: Option<Rid>) {
        if mid != self.mid {
            return;
        }
        if let Some(layer) = self.rids.iter().position(|r| *r == rid) {
            self.keyframe_due[layer] = true;
        }
    }

    /// Write whatever is due; a stall longer than 200 ms is skipped rather than burst out.
    pub(crate) fn write_due(&mut self, rtc: &mut Rtc, now: Instant, sent_us: u64) {
        if now.saturating_duration_since(self.next) > Duration::from_millis(200) {
            self.next = now;
        }
        let Some(pt) = rtc
            .codec_config()
            .find(|p| p.spec().codec == self.codec)
            .map(|p| p.pt())
        else {
            return;
        };
        let audio = self.codec.is_audio();
        let mut api = rtc.direct_api();
        while self.next <= now {
            self.next += self.period;
            let frame = self.frame;
            self.frame += 1;
            for layer in 0..self.rids.len() {
                let keyframe = std::mem::take(&mut self.keyframe_due[layer]);
                let packets = self.packets(frame, layer, keyframe, sent_us);
                let Some(tx) = api.stream_tx_by_mid(self.mid, self.rids[layer]) else {
                    continue;
                };
                let count = packets.len();
                for (i, payload) in packets.into_iter().enumerate() {
                    let seq = SeqNo::from(u64::from(self.sent[layer]) + 1);
                    self.sent[layer] = self.sent[layer].wrapping_add(1);
                    tx.write_rtp(
                        RtpWrite::new(pt, seq, (frame * self.ticks) as u32, now, payload)
                            .marker(!audio && i + 1 == count)
                            .nackable(!audio),
                    );
                }
            }
        }
    }

    fn packets(&self, frame: u64, layer: usize, keyframe: bool, sent_us: u64) -> Vec<Vec<u8>> {
        if !self.stamped {
            return vec![payload::synthetic_payload(
                self.codec,
                frame,
                layer as u8,
                keyframe,
            )];
        }
        if self.codec.is_audio() {
            return vec![payload::stamped_opus(self.sent[layer], sent_us)];
        }
        let mut counter = self.sent[layer];
        let pid = (frame % 0x8000) as u16;
        payload::stamped_vp8_frame(layer, keyframe, pid, &mut counter, sent_us)
    }
}
