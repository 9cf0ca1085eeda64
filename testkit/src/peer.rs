//! A str0m client endpoint. [`PeerState`] is the sans-IO part (an `Rtc`, what it publishes, what
//! it records or measures), usable on an in-memory network (the forwarding bench); [`Peer`]
//! drives one on its own UDP socket from a tokio task (tests, the load runner).
//!
//! What it publishes is described by [`Publish`] and written by [`crate::source`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, TcpType, Transmit};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::measure::{RxStats, Shared, PHASE_DONE, PHASE_MEASURE};
use crate::payload::LAYERS;
use crate::shaper::Shaper;
use crate::signal::SignalClient;
pub use crate::source::Publish;
use crate::source::Track;

/// Opus and VP8 only, as the load runner and most tests publish.
pub fn default_config() -> RtcConfig {
    RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
}

/// Load-run measurement: counted in [`PeerState::rx`] while the run measures.
#[derive(Clone)]
pub struct Measure {
    pub shared: Arc<Shared>,
    /// Counts towards `Shared::subscribers_ready` on its first packet.
    pub subscriber: bool,
}

/// How a peer is made.
pub struct PeerOptions {
    /// Where its UDP socket binds (port 0).
    pub ip: IpAddr,
    /// Codecs etc.; RTP mode is switched on when the peer is made.
    pub config: RtcConfig,
    /// Keep every received packet's summary in [`PeerState::received`].
    pub record: bool,
    /// Keep every received packet with its payload in [`PeerState::raw`].
    pub record_raw: bool,
    pub measure: Option<Measure>,
}

impl Default for PeerOptions {
    /// Loopback, [`default_config`], recording summaries.
    fn default() -> Self {
        PeerOptions {
            ip: Ipv4Addr::LOCALHOST.into(),
            config: default_config(),
            record: true,
            record_raw: false,
            measure: None,
        }
    }
}

impl PeerOptions {
    /// A load-run peer on `ip`: nothing recorded per packet, everything measured.
    pub fn load(ip: IpAddr, shared: Arc<Shared>, subscriber: bool) -> Self {
        PeerOptions {
            ip,
            record: false,
            measure: Some(Measure { shared, subscriber }),
            ..Default::default()
        }
    }
}

/// One RTP packet as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mid: Mid,
    pub seq: u64,
    pub timestamp: u32,
    pub keyframe: bool,
    /// Layer index the synthetic publisher wrote into the payload (255 for audio).
    pub layer: u8,
    pub pt: u8,
    /// The packet carried the MID header extension (a sender stops once we report its SSRC).
    pub carried_mid: bool,
}

/// One received RTP packet with its payload (peers with `record_raw`).
#[derive(Debug, Clone)]
pub struct RawReceived {
    pub mid: Mid,
    pub seq: u64,
    pub timestamp: u32,
    pub pt: u8,
    pub payload: Vec<u8>,
}

/// Every `every`-th RTP datagram a connected peer receives (of payload type `pt` only, when
/// set: the header is in the clear under SRTP) is discarded before str0m sees it, so its
/// NACKs must bring the packet back. STUN, DTLS and RTCP always pass (told apart by their
/// first two bytes, RFC 7983 and RFC 5761).
#[derive(Debug, Clone, Default)]
pub struct InboundLoss {
    pub every: u32,
    pub pt: Option<u8>,
    seen: u32,
    /// How many were discarded so far.
    pub discarded: u32,
}

impl InboundLoss {
    pub fn every(every: u32) -> Self {
        InboundLoss {
            every,
            ..Default::default()
        }
    }

    /// Only packets of payload type `pt` (e.g. not their RTX resends).
    pub fn of_payload_type(self, pt: u8) -> Self {
        InboundLoss {
            pt: Some(pt),
            ..self
        }
    }

    fn discards(&mut self, datagram: &[u8]) -> bool {
        let &[first, second, ..] = datagram else {
            return false;
        };
        let rtp = (128..=191).contains(&first) && !(192..=223).contains(&second);
        // The second byte is the marker bit and the payload type.
        let pt_matches = self.pt.is_none_or(|pt| second & 0x7f == pt);
        if !rtp || !pt_matches || self.every == 0 {
            return false;
        }
        self.seen += 1;
        let discard = self.seen.is_multiple_of(self.every);
        self.discarded += u32::from(discard);
        discard
    }
}

/// What [`PeerState::poll`] has for the caller.
pub enum Poll {
    Transmit(Transmit),
    /// Nothing to do before this.
    Timeout(Instant),
    /// The Rtc failed; the peer is dead.
    Closed,
}

/// A peer's state; [`Peer`] tasks own one, reached through [`Peer::with`].
pub struct PeerState {
    pub rtc: Rtc,
    pub local: SocketAddr,
    /// What its one candidate is: UDP, or the client end of an ICE-TCP connection.
    proto: Protocol,
    pub connected: bool,
    pub received: Vec<Received>,
    pub raw: Vec<RawReceived>,
    pub keyframe_requests: Vec<Option<Rid>>,
    pub rx: RxStats,
    /// A bottleneck on what this peer receives (BWE tests); `None`: loopback as is.
    pub downlink: Option<Shaper>,
    /// Loss on what this peer receives (resend tests); `None`: nothing is discarded.
    pub inbound_loss: Option<InboundLoss>,
    record: bool,
    record_raw: bool,
    measure: Option<Measure>,
    epoch: Instant,
    tracks: Vec<Track>,
    pending: Option<PendingPublish>,
}

/// Our publishing offer waiting for its answer, with its m-lines' (kind, mid).
struct PendingPublish {
    offer: SdpPendingOffer,
    spec: Publish,
    mids: Vec<(MediaKind, Mid)>,
}

impl PeerState {
    /// An endpoint whose only candidate is `local`.
    pub fn new(options: PeerOptions, local: SocketAddr) -> anyhow::Result<Self> {
        Self::with_candidate(
            options,
            local,
            Candidate::host(local, "udp")?,
            Protocol::Udp,
        )
    }

    /// An endpoint whose only candidate is an active ICE-TCP one at `local`, the local end of
    /// a connection to the server's passive candidate (RFC 6544).
    pub fn new_tcp(options: PeerOptions, local: SocketAddr) -> anyhow::Result<Self> {
        let candidate = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Active)
            .build()?;
        Self::with_candidate(options, local, candidate, Protocol::Tcp)
    }

    fn with_candidate(
        options: PeerOptions,
        local: SocketAddr,
        candidate: Candidate,
        proto: Protocol,
    ) -> anyhow::Result<Self> {
        let mut rtc = options.config.set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(candidate);
        let epoch = options
            .measure
            .as_ref()
            .map_or_else(Instant::now, |m| m.shared.epoch);
        Ok(PeerState {
            rtc,
            local,
            proto,
            connected: false,
            received: Vec::new(),
            raw: Vec::new(),
            keyframe_requests: Vec::new(),
            rx: RxStats::default(),
            downlink: None,
            inbound_loss: None,
            record: options.record,
            record_raw: options.record_raw,
            measure: options.measure,
            epoch,
            tracks: Vec::new(),
            pending: None,
        })
    }

    /// Our publishing offer for `spec`, kept pending until [`PeerState::accept_answer`].
    pub fn offer_publish(&mut self, spec: Publish) -> String {
        let mut api = self.rtc.sdp_api();
        let mut mids = Vec::new();
        if spec.audio.is_some() {
            let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            mids.push((MediaKind::Audio, mid));
        }
        if spec.video.is_some() {
            let sim = spec.simulcast.then(|| {
                let mut sim = Simulcast::new();
                let mut rids = LAYERS;
                if spec.high_first {
                    rids.reverse();
                }
                for rid in rids {
                    sim.add_send_layer(SimulcastLayer::new(rid));
                }
                sim
            });
            let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, sim);
            mids.push((MediaKind::Video, mid));
        }
        let (offer, pending) = api.apply().expect("a local offer with m-lines");
        self.pending = Some(PendingPublish {
            offer: pending,
            spec,
            mids,
        });
        offer.to_sdp_string()
    }

    /// Accept the answer to [`PeerState::offer_publish`]; its media starts once connected.
    pub fn accept_answer(&mut self, sdp: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp)?;
        let PendingPublish { offer, spec, mids } = self
            .pending
            .take()
            .ok_or_else(|| anyhow!("no pending offer"))?;
        self.rtc.sdp_api().accept_answer(offer, answer)?;
        for (kind, mid) in mids {
            let codec = match kind {
                MediaKind::Audio => spec.audio,
                MediaKind::Video => spec.video,
            };
            let codec = codec.expect("an m-line per requested kind");
            self.tracks
                .push(Track::new(codec, mid, spec.simulcast, spec.stamped));
        }
        Ok(())
    }

    /// Accept a remote offer; returns our answer.
    pub fn accept_offer(&mut self, sdp: &str) -> anyhow::Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp)?;
        Ok(self.rtc.sdp_api().accept_offer(offer)?.to_sdp_string())
    }

    /// The mids this peer publishes, in offer order (audio first).
    pub fn mids(&self) -> Vec<Mid> {
        self.tracks.iter().map(|t| t.mid).collect()
    }

    /// Drive str0m until it has a datagram to send or wants waking later.
    pub fn poll(&mut self) -> Poll {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    // str0m is drained: now it may take the next datagram off the shaped
                    // link (one at a time, as RTP mode keeps only one pending packet).
                    let now = Instant::now();
                    if let Some((source, data)) =
                        self.downlink.as_mut().and_then(|l| l.pop_due(now))
                    {
                        self.handle_datagram(now, source, &data);
                        continue;
                    }
                    let link = self.downlink.as_ref().and_then(Shaper::next_release);
                    return Poll::Timeout(link.map_or(t, |l| l.min(t)));
                }
                Ok(Output::Transmit(t)) => return Poll::Transmit(t),
                Ok(Output::Event(e)) => self.on_event(e),
                Err(_) => return Poll::Closed,
            }
        }
    }

    /// A datagram from `source` arrived at our address.
    pub fn receive(&mut self, source: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        match self.downlink.as_mut() {
            // Delivered from `poll` once it has left the link.
            Some(link) => link.offer(now, source, data),
            None => self.handle_datagram(now, source, data),
        }
    }

    fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        if self.connected {
            if let Some(loss) = self.inbound_loss.as_mut() {
                if loss.discards(data) {
                    return;
                }
            }
        }
        if let Ok(rx) = Receive::new(self.proto, source, self.local, data) {
            let _ = self.rtc.handle_input(Input::Receive(now, rx));
        }
    }

    pub fn timeout(&mut self, now: Instant) {
        let _ = self.rtc.handle_input(Input::Timeout(now));
    }

    pub fn publishes(&self) -> bool {
        !self.tracks.is_empty()
    }

    /// Write what is due of every track (once connected, and until a load run is done).
    pub fn write_media(&mut self, now: Instant) {
        let done = self
            .measure
            .as_ref()
            .is_some_and(|m| m.shared.phase.load(Ordering::Relaxed) == PHASE_DONE);
        if !self.connected || done {
            return;
        }
        let sent_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        for track in &mut self.tracks {
            track.write_due(&mut self.rtc, now, sent_us);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::KeyframeRequest(req) => {
                self.keyframe_requests.push(req.rid);
                for track in &mut self.tracks {
                    track.keyframe_request(req.mid, req.rid);
                }
            }
            Event::RtpPacket(packet) => {
                let Some(mid) = self
                    .rtc
                    .direct_api()
                    .stream_rx(&packet.header.ssrc)
                    .map(|s| s.mid())
                else {
                    return;
                };
                let (seq, timestamp) = (*packet.seq_no, packet.header.timestamp);
                let pt = *packet.header.payload_type;
                let payload = &packet.payload;
                if self.record {
                    // The shaped VP8 frame (8 bytes, S bit) carries keyframe bit and layer.
                    let video = payload.len() == 8 && payload[0] == 0x90;
                    self.received.push(Received {
                        mid,
                        seq,
                        timestamp,
                        keyframe: video && payload[4] & 1 == 0,
                        layer: if video { payload[7] } else { 255 },
                        pt,
                        carried_mid: packet.header.ext_vals.mid.is_some(),
                    });
                }
                if self.record_raw {
                    self.raw.push(RawReceived {
                        mid,
                        seq,
                        timestamp,
                        pt,
                        payload: payload.to_vec(),
                    });
                }
                self.measure_packet(mid, &packet.payload);
            }
            _ => {}
        }
    }

    fn measure_packet(&mut self, mid: Mid, payload: &[u8]) {
        let Some(measure) = &self.measure else { return };
        let now = Instant::now();
        if self.rx.first_packet.is_none() {
            self.rx.first_packet = Some(now);
            if measure.subscriber {
                measure
                    .shared
                    .subscribers_ready
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if measure.shared.phase.load(Ordering::Relaxed) != PHASE_MEASURE {
            return;
        }
        let audio = self
            .rtc
            .media(mid)
            .is_some_and(|m| m.kind() == MediaKind::Audio);
        let recv_us = measure.shared.micros(now);
        self.rx.on_packet(mid, payload, audio, recv_us);
    }

    /// Take what this peer measured, and how many keyframe requests it got.
    pub fn take_stats(&mut self) -> (RxStats, u64) {
        let requests = std::mem::take(&mut self.keyframe_requests).len() as u64;
        (std::mem::take(&mut self.rx), requests)
    }
}

type Job = Box<dyn FnOnce(&mut PeerState) + Send>;

/// A [`PeerState`] on its own UDP socket, driven by a tokio task.
pub struct Peer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Peer {
    /// Bind a UDP socket on `options.ip` and start the peer's task.
    pub async fn spawn_opts(options: PeerOptions) -> anyhow::Result<Peer> {
        let socket = UdpSocket::bind(SocketAddr::new(options.ip, 0)).await?;
        let state = PeerState::new(options, socket.local_addr()?)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_peer(socket, state, rx));
        Ok(Peer { jobs })
    }

    /// Connect to the server's ICE-TCP candidate `server` and run the peer over that one
    /// connection, RFC 4571-framed. Setting `stop_reading` makes it stop reading the socket
    /// (a client too slow for what it is sent), with a small receive buffer so it shows soon.
    pub async fn spawn_tcp(
        options: PeerOptions,
        server: SocketAddr,
        stop_reading: Arc<std::sync::atomic::AtomicBool>,
    ) -> anyhow::Result<Peer> {
        let socket = match server {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_recv_buffer_size(16 * 1024)?;
        socket.bind(SocketAddr::new(options.ip, 0))?;
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let state = PeerState::new_tcp(options, stream.local_addr()?)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_tcp_peer(stream, state, rx, stop_reading));
        Ok(Peer { jobs })
    }

    /// Loopback, Opus + VP8, recording [`PeerState::received`].
    pub async fn spawn() -> Peer {
        Self::spawn_opts(PeerOptions::default())
            .await
            .expect("peer starts")
    }

    /// A peer with its own codec configuration, also recording every received payload in
    /// [`PeerState::raw`].
    pub async fn spawn_with(config: RtcConfig) -> Peer {
        Self::spawn_opts(PeerOptions {
            config,
            record_raw: true,
            ..Default::default()
        })
        .await
        .expect("peer starts")
    }

    /// Run `f` on the peer's task and return its result.
    pub async fn try_with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PeerState) -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |state| {
                let _ = tx.send(f(state));
            }))
            .map_err(|_| anyhow!("peer task ended"))?;
        Ok(rx.await?)
    }

    /// [`Peer::try_with`], panicking when the peer is gone.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PeerState) -> R + Send + 'static,
    ) -> R {
        self.try_with(f).await.expect("peer alive")
    }

    /// Our publishing offer for `spec`, kept pending.
    pub async fn publish_offer(&self, spec: Publish) -> anyhow::Result<String> {
        self.try_with(move |s| s.offer_publish(spec)).await
    }

    /// Accept the server's answer to [`Peer::publish_offer`] and start sending media.
    pub async fn publish_answer(&self, sdp: &str) -> anyhow::Result<()> {
        let sdp = sdp.to_string();
        self.try_with(move |s| s.accept_answer(&sdp)).await?
    }

    /// Offer → `publisherOffer` → answer; returns the `publisherAnswer` data.
    pub async fn publish_spec(
        &self,
        signal: &mut SignalClient,
        spec: Publish,
    ) -> anyhow::Result<Value> {
        let offer = self.publish_offer(spec).await?;
        let reply = signal
            .call("publisherOffer", json!({ "sdp": offer }))
            .await?;
        if reply["type"] != "publisherAnswer" {
            bail!("unexpected reply to publisherOffer: {reply}");
        }
        let data = reply["data"].clone();
        self.publish_answer(data["sdp"].as_str().unwrap_or_default())
            .await?;
        Ok(data)
    }

    /// Publish Opus + 3-layer VP8 simulcast (shaped frames); panics on failure.
    pub async fn publish(&self, signal: &mut SignalClient) -> Value {
        self.publish_spec(signal, Publish::AUDIO_VIDEO)
            .await
            .unwrap_or_else(|e| panic!("publish: {e:#}"))
    }

    /// Publish one track of `codec`: audio, or video as 3-layer simulcast (rids [`LAYERS`])
    /// when `simulcast`; one codec-shaped packet per layer every 20 ms. Panics on failure.
    pub async fn publish_codec(
        &self,
        signal: &mut SignalClient,
        codec: Codec,
        simulcast: bool,
    ) -> Value {
        self.publish_spec(signal, Publish::codec(codec, simulcast))
            .await
            .unwrap_or_else(|e| panic!("publish {codec:?}: {e:#}"))
    }

    /// Accept a remote offer; returns our answer.
    pub async fn answer_sdp(&self, sdp: &str) -> anyhow::Result<String> {
        let sdp = sdp.to_string();
        self.try_with(move |s| s.accept_offer(&sdp)).await?
    }

    /// Answer one `subscriberOffer` notification.
    pub async fn answer_offer(
        &self,
        signal: &mut SignalClient,
        offer: &Value,
    ) -> anyhow::Result<()> {
        let sdp = offer["data"]["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("subscriberOffer without sdp: {offer}"))?;
        let answer = self.answer_sdp(sdp).await?;
        let reply = signal
            .call("subscriberAnswer", json!({ "sdp": answer }))
            .await?;
        if reply["type"] != "subscriberAnswerResponse" {
            bail!("unexpected reply to subscriberAnswer: {reply}");
        }
        Ok(())
    }

    /// [`Peer::answer_offer`], panicking on failure.
    pub async fn answer_subscriber_offer(&self, signal: &mut SignalClient, offer: &Value) {
        self.answer_offer(signal, offer)
            .await
            .unwrap_or_else(|e| panic!("answer subscriberOffer: {e:#}"))
    }

    pub async fn received(&self) -> Vec<Received> {
        self.with(|s| s.received.clone()).await
    }

    pub async fn connected(&self) -> bool {
        self.with(|s| s.connected).await
    }

    /// Take what this peer measured, and how many keyframe requests it got.
    pub async fn take_stats(&self) -> anyhow::Result<(RxStats, u64)> {
        self.try_with(PeerState::take_stats).await
    }
}

/// Answer `subscriberOffer`s until one lists `tracks` m-lines; returns that offer.
pub async fn negotiate_subscriber(signal: &mut SignalClient, peer: &Peer, tracks: usize) -> Value {
    loop {
        let offer = signal
            .notification("subscriberOffer", Duration::from_secs(10))
            .await;
        peer.answer_subscriber_offer(signal, &offer).await;
        if offer["data"]["tracks"].as_array().map_or(0, Vec::len) >= tracks {
            return offer;
        }
    }
}

/// Send what str0m has queued; the next wake-up, or `None` once the Rtc is dead.
async fn flush(state: &mut PeerState, socket: &UdpSocket) -> Option<Instant> {
    loop {
        match state.poll() {
            Poll::Timeout(t) => return Some(t),
            Poll::Transmit(t) => {
                let _ = socket.send_to(&t.contents, t.destination).await;
            }
            Poll::Closed => return None,
        }
    }
}

async fn run_peer(socket: UdpSocket, mut state: PeerState, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut buf = vec![0u8; 2000];
    let mut media = tokio::time::interval(Duration::from_millis(10));
    media.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let Some(deadline) = flush(&mut state, &socket).await else {
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
                    state.receive(source, &buf[..n]);
                    // Take what else is queued before waiting again.
                    for _ in 0..32 {
                        if flush(&mut state, &socket).await.is_none() {
                            return;
                        }
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => state.receive(source, &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
            }
            // Only publishers need the media clock.
            _ = media.tick(), if state.publishes() => state.write_media(Instant::now()),
            _ = tokio::time::sleep(wait) => state.timeout(Instant::now()),
        }
    }
}

/// [`run_peer`] over one ICE-TCP connection: every transmit is a frame on it, whatever its
/// destination (the connection is the candidate pair).
async fn run_tcp_peer(
    stream: tokio::net::TcpStream,
    mut state: PeerState,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    stop_reading: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = stream.peer_addr() else {
        return;
    };
    let (mut read_half, mut write_half) = stream.into_split();
    let (frames_tx, mut frames) = mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(async move {
        loop {
            if stop_reading.load(Ordering::Relaxed) {
                // Hold the socket open, unread, until the server gives up on us.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let mut len = [0u8; 2];
            if read_half.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut frame = vec![0u8; u16::from_be_bytes(len) as usize];
            if read_half.read_exact(&mut frame).await.is_err()
                || frames_tx.send(frame).await.is_err()
            {
                return;
            }
        }
    });
    let mut media = tokio::time::interval(Duration::from_millis(10));
    media.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let deadline = loop {
            match state.poll() {
                Poll::Timeout(t) => break t,
                Poll::Transmit(t) => {
                    let mut frame = (t.contents.len() as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(&t.contents);
                    if write_half.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                Poll::Closed => return,
            }
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job(&mut state),
                None => return,
            },
            frame = frames.recv() => match frame {
                Some(frame) => state.receive(server, &frame),
                // The server closed the connection: the peer is disconnected.
                None => {
                    state.connected = false;
                    return;
                }
            },
            _ = media.tick(), if state.publishes() => state.write_media(Instant::now()),
            _ = tokio::time::sleep(wait) => state.timeout(Instant::now()),
        }
    }
}
