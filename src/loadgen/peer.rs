//! A str0m endpoint on its own UDP socket, driven by a tokio task: publishes synthetic Opus and
//! 3-layer VP8 simulcast, or receives and measures what the SFU forwards.
//!
//! Every payload carries a 13-byte stamp right after the codec header (the VP8 payload
//! descriptor, plus the VP8 frame header on a frame's first packet; the Opus TOC byte):
//! layer (255 = audio), a per-stream packet counter (u32 BE) and the send time in µs since the
//! runner's epoch (u64 BE). Subscribers derive loss from the counters and one-way latency from
//! the stamps (same process, same monotonic clock).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::signaling::Signal;
use super::stats::Histogram;

/// Simulcast rids, lowest layer first.
pub const LAYERS: [&str; 3] = ["q", "h", "f"];
/// Target bitrates of the three layers (bits/s) and their nominal sizes.
pub const LAYER_BITRATES: [u64; 3] = [150_000, 500_000, 1_500_000];
const LAYER_SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
const FPS: u64 = 30;
/// Keyframes are this many times a delta frame's size.
const KEYFRAME_FACTOR: u64 = 4;
/// Largest RTP payload written (≤ 1200 bytes, as browsers packetize).
pub const MAX_PAYLOAD: usize = 1150;
/// Opus at ~32 kbit/s: 80 bytes every 20 ms.
const OPUS_PAYLOAD: usize = 80;
pub const STAMP_LEN: usize = 13;
pub const AUDIO_LAYER: u8 = 255;

/// Run phases shared by every peer: only packets that arrive while measuring are counted.
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

    fn micros(&self, at: Instant) -> u64 {
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
    fn on_packet(&mut self, mid: Mid, payload: &[u8], audio: bool, recv_us: u64, measuring: bool) {
        if !measuring {
            return;
        }
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

    /// (expected, lost) over all streams; duplicates never make loss negative.
    pub fn loss(&self) -> (u64, u64) {
        self.streams.values().fold((0, 0), |(e, l), s| {
            let expected = s.expected();
            (e + expected, l + expected.saturating_sub(s.received))
        })
    }
}

fn stamp(layer: u8, counter: u32, sent_us: u64) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    out[0] = layer;
    out[1..5].copy_from_slice(&counter.to_be_bytes());
    out[5..13].copy_from_slice(&sent_us.to_be_bytes());
    out
}

/// Find the stamp: after the Opus TOC byte, or after the VP8 descriptor (and frame header).
pub fn read_stamp(payload: &[u8], audio: bool) -> Option<(u8, u32, u64)> {
    let offset = if audio {
        1
    } else {
        // Our descriptor: X=1, I=1 with a 15-bit picture id → 4 bytes. Parse generally anyway.
        let first = *payload.first()?;
        let mut offset = 1;
        if first & 0x80 != 0 {
            let ext = *payload.get(1)?;
            offset += 1;
            if ext & 0x80 != 0 {
                offset += if payload.get(offset)? & 0x80 != 0 {
                    2
                } else {
                    1
                };
            }
            if ext & 0x40 != 0 {
                offset += 1;
            }
            if ext & 0x30 != 0 {
                offset += 1;
            }
        }
        let start_of_partition = first & 0x10 != 0 && first & 0x07 == 0;
        if start_of_partition {
            let keyframe = payload.get(offset)? & 0x01 == 0;
            offset += if keyframe { 10 } else { 3 };
        }
        offset
    };
    let s = payload.get(offset..offset + STAMP_LEN)?;
    Some((
        s[0],
        u32::from_be_bytes([s[1], s[2], s[3], s[4]]),
        u64::from_be_bytes([s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12]]),
    ))
}

/// Synthetic Opus (50 packets/s) and optionally 3-layer VP8 simulcast at 30 fps.
struct SyntheticSource {
    audio: Mid,
    video: Option<Mid>,
    next_audio: Instant,
    next_video: Instant,
    audio_packets: u32,
    frames: u64,
    layer_packets: [u32; 3],
    keyframe_due: [bool; 3],
    shared: Arc<Shared>,
}

impl SyntheticSource {
    fn new(audio: Mid, video: Option<Mid>, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        SyntheticSource {
            audio,
            video,
            next_audio: now,
            next_video: now,
            audio_packets: 0,
            frames: 0,
            layer_packets: [0; 3],
            keyframe_due: [true; 3],
            shared,
        }
    }

    /// Write whatever is due; a stall longer than 200 ms is skipped rather than burst out.
    fn write_due(&mut self, rtc: &mut Rtc) {
        let now = Instant::now();
        let audio_period = Duration::from_millis(20);
        let video_period = Duration::from_nanos(1_000_000_000 / FPS);
        if now.saturating_duration_since(self.next_audio) > Duration::from_millis(200) {
            self.next_audio = now;
        }
        if now.saturating_duration_since(self.next_video) > Duration::from_millis(200) {
            self.next_video = now;
        }
        let opus = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
        let vp8 = rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt());
        let mut api = rtc.direct_api();
        while self.next_audio <= now {
            self.next_audio += audio_period;
            let Some(opus) = opus else { break };
            let n = self.audio_packets;
            self.audio_packets = n.wrapping_add(1);
            let mut payload = Vec::with_capacity(OPUS_PAYLOAD);
            payload.push(0xfc);
            payload.extend_from_slice(&stamp(AUDIO_LAYER, n, self.shared.micros(now)));
            payload.resize(OPUS_PAYLOAD, 0);
            if let Some(tx) = api.stream_tx_by_mid(self.audio, None) {
                tx.write_rtp(RtpWrite::new(
                    opus,
                    SeqNo::from(u64::from(n) + 1),
                    n.wrapping_mul(960),
                    now,
                    payload,
                ));
            }
        }
        let Some(video) = self.video else { return };
        while self.next_video <= now {
            self.next_video += video_period;
            let Some(vp8) = vp8 else { break };
            let frame = self.frames;
            self.frames += 1;
            let pid = (frame % 0x8000) as u16;
            for (layer, rid) in LAYERS.iter().enumerate() {
                let keyframe = std::mem::take(&mut self.keyframe_due[layer]);
                let base = (LAYER_BITRATES[layer] / 8 / FPS) as usize;
                let size = if keyframe {
                    base * KEYFRAME_FACTOR as usize
                } else {
                    base
                };
                let count = size.div_ceil(MAX_PAYLOAD - 30).max(1);
                let per_packet = size / count;
                let Some(tx) = api.stream_tx_by_mid(video, Some(Rid::from(*rid))) else {
                    continue;
                };
                for i in 0..count {
                    let mut payload = Vec::with_capacity(per_packet.max(40));
                    // X=1, S on the first packet, PID=0; I=1; M=1 + 15-bit picture id.
                    payload.extend_from_slice(&[
                        if i == 0 { 0x90 } else { 0x80 },
                        0x80,
                        0x80 | (pid >> 8) as u8,
                        (pid & 0xff) as u8,
                    ]);
                    if i == 0 {
                        if keyframe {
                            let (w, h) = LAYER_SIZES[layer];
                            // Frame tag (key, shown) + start code + dimensions.
                            payload.extend_from_slice(&[0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
                            payload.extend_from_slice(&w.to_le_bytes());
                            payload.extend_from_slice(&h.to_le_bytes());
                        } else {
                            payload.extend_from_slice(&[0x11, 0x00, 0x00]);
                        }
                    }
                    let n = self.layer_packets[layer];
                    self.layer_packets[layer] = n.wrapping_add(1);
                    payload.extend_from_slice(&stamp(layer as u8, n, self.shared.micros(now)));
                    payload.resize(per_packet.max(payload.len()).min(MAX_PAYLOAD), 0);
                    tx.write_rtp(
                        RtpWrite::new(
                            vp8,
                            SeqNo::from(u64::from(n) + 1),
                            (frame * (90_000 / FPS)) as u32,
                            now,
                            payload,
                        )
                        .marker(i + 1 == count)
                        .nackable(true),
                    );
                }
            }
        }
    }
}

/// State owned by a peer's task; reached through [`Peer::with`].
pub struct PeerState {
    pub rtc: Rtc,
    source: Option<SyntheticSource>,
    /// Our publishing offer waiting for its answer, and its (audio, video) mids.
    pending: Option<(SdpPendingOffer, (Mid, Option<Mid>))>,
    pub rx: RxStats,
    pub keyframe_requests: u64,
    pub connected: bool,
    /// Counts towards `Shared::subscribers_ready` on its first packet.
    subscriber: bool,
    shared: Arc<Shared>,
}

type Job = Box<dyn FnOnce(&mut PeerState) + Send>;

pub struct Peer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Peer {
    /// Bind a UDP socket on `ip` and start the peer's task.
    pub async fn spawn(
        ip: std::net::IpAddr,
        subscriber: bool,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Peer> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let local = socket.local_addr()?;
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        let state = PeerState {
            rtc,
            source: None,
            pending: None,
            rx: RxStats::default(),
            keyframe_requests: 0,
            connected: false,
            subscriber,
            shared,
        };
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_peer(socket, local, state, rx));
        Ok(Peer { jobs })
    }

    /// Run `f` on the peer's task and return its result.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PeerState) -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |state| {
                let _ = tx.send(f(state));
            }))
            .map_err(|_| anyhow::anyhow!("peer task ended"))?;
        Ok(rx.await?)
    }

    /// Publish audio (and 3-layer simulcast video when `video`): offer → server → answer.
    pub async fn publish(&self, signal: &mut Signal, video: bool) -> anyhow::Result<Value> {
        let offer = self.publish_offer(video, false).await?;
        let reply = signal
            .request("publisherOffer", json!({ "sdp": offer }))
            .await?;
        let data = reply["data"].clone();
        self.publish_answer(data["sdp"].as_str().unwrap_or_default())
            .await?;
        Ok(data)
    }

    /// Our publishing offer (audio, and 3-layer simulcast video when `video`), kept pending.
    /// The rids are listed lowest first, or highest first with `high_first`.
    pub async fn publish_offer(&self, video: bool, high_first: bool) -> anyhow::Result<String> {
        self.with(move |s| {
            let mut api = s.rtc.sdp_api();
            let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            let video = video.then(|| {
                let mut sim = Simulcast::new();
                let mut rids = LAYERS;
                if high_first {
                    rids.reverse();
                }
                for rid in rids {
                    sim.add_send_layer(SimulcastLayer::new(rid));
                }
                api.add_media(MediaKind::Video, Direction::SendOnly, None, None, Some(sim))
            });
            let (offer, pending) = api.apply().expect("local offer");
            s.pending = Some((pending, (audio, video)));
            offer.to_sdp_string()
        })
        .await
    }

    /// Accept the server's answer to [`Peer::publish_offer`] and start sending media.
    pub async fn publish_answer(&self, sdp: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp)?;
        self.with(move |s| -> anyhow::Result<()> {
            let (pending, mids) = s
                .pending
                .take()
                .ok_or_else(|| anyhow::anyhow!("no pending offer"))?;
            s.rtc.sdp_api().accept_answer(pending, answer)?;
            s.source = Some(SyntheticSource::new(mids.0, mids.1, s.shared.clone()));
            Ok(())
        })
        .await?
    }

    /// Answer one `subscriberOffer` notification.
    pub async fn answer_offer(&self, signal: &mut Signal, offer: &Value) -> anyhow::Result<()> {
        let sdp = offer["data"]["sdp"].as_str().unwrap_or_default();
        let answer = self.answer_sdp(sdp).await?;
        signal
            .request("subscriberAnswer", json!({ "sdp": answer }))
            .await?;
        Ok(())
    }

    /// Accept a remote offer; returns our answer.
    pub async fn answer_sdp(&self, sdp: &str) -> anyhow::Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp)?;
        self.with(move |s| -> anyhow::Result<String> {
            Ok(s.rtc.sdp_api().accept_offer(offer)?.to_sdp_string())
        })
        .await?
    }

    /// Take what this peer measured (and how many keyframe requests it got).
    pub async fn take_stats(&self) -> anyhow::Result<(RxStats, u64)> {
        self.with(|s| (std::mem::take(&mut s.rx), s.keyframe_requests))
            .await
    }
}

fn record(state: &mut PeerState, event: Event) {
    match event {
        Event::Connected => state.connected = true,
        Event::KeyframeRequest(req) => {
            state.keyframe_requests += 1;
            if let (Some(source), Some(rid)) = (state.source.as_mut(), req.rid) {
                if let Some(layer) = LAYERS.iter().position(|r| Rid::from(*r) == rid) {
                    source.keyframe_due[layer] = true;
                }
            }
        }
        Event::RtpPacket(packet) => {
            let now = Instant::now();
            let Some(mid) = state
                .rtc
                .direct_api()
                .stream_rx(&packet.header.ssrc)
                .map(|s| s.mid())
            else {
                return;
            };
            let audio = state
                .rtc
                .media(mid)
                .is_some_and(|m| m.kind() == MediaKind::Audio);
            if state.rx.first_packet.is_none() {
                state.rx.first_packet = Some(now);
                if state.subscriber {
                    state
                        .shared
                        .subscribers_ready
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            let measuring = state.shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
            let recv_us = state.shared.micros(now);
            state
                .rx
                .on_packet(mid, &packet.payload, audio, recv_us, measuring);
        }
        _ => {}
    }
}

fn handle_datagram(state: &mut PeerState, local: SocketAddr, source: SocketAddr, data: &[u8]) {
    if let Ok(rx) = Receive::new(Protocol::Udp, source, local, data) {
        let _ = state.rtc.handle_input(Input::Receive(Instant::now(), rx));
    }
}

/// Drain str0m until it asks to be woken later; `None` once the Rtc is dead.
async fn drain(state: &mut PeerState, socket: &UdpSocket) -> Option<Instant> {
    loop {
        match state.rtc.poll_output() {
            Ok(Output::Timeout(t)) => return Some(t),
            Ok(Output::Transmit(t)) => {
                let _ = socket.send_to(&t.contents, t.destination).await;
            }
            Ok(Output::Event(e)) => record(state, e),
            Err(_) => return None,
        }
    }
}

async fn run_peer(
    socket: UdpSocket,
    local: SocketAddr,
    mut state: PeerState,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let mut buf = vec![0u8; 2000];
    let mut media = tokio::time::interval(Duration::from_millis(10));
    media.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let Some(deadline) = drain(&mut state, &socket).await else {
            return;
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job(&mut state),
                None => return,
            },
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, source)) = r {
                    handle_datagram(&mut state, local, source, &buf[..n]);
                    // Take what else is queued before waiting again.
                    for _ in 0..32 {
                        if drain(&mut state, &socket).await.is_none() {
                            return;
                        }
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => handle_datagram(&mut state, local, source, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
            }
            // Only publishers need the media clock.
            _ = media.tick(), if state.source.is_some() => {
                if state.connected && state.shared.phase.load(Ordering::Relaxed) != PHASE_DONE {
                    if let Some(source) = state.source.as_mut() {
                        source.write_due(&mut state.rtc);
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {
                let _ = state.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
}
