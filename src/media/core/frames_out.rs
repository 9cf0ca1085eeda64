//! WebTransport subscribers: a frame consumer gets one producer's frames on its session's
//! streams (`media/frames/sink.rs`). Frames of a WebTransport publisher are passed on as they
//! came; a WebRTC publisher's RTP is rebuilt into frames once per layer (`depacketize`),
//! whatever the number of frame consumers.
//!
//! Layer choice: the bandwidth allocator (`media/allocator.rs`, as for WebRTC subscribers)
//! divides the path's estimate — QUIC's congestion window over its RTT — among the
//! subscriber's frame consumers, within each one's preferred layer (`setPreferredLayer`);
//! switches happen at a keyframe of the new layer, which starts a new stream. A subscriber
//! whose queue is full is behind: its stale stream is reset, frames are dropped until the
//! next keyframe, and its layer is capped one lower for [`CONGESTION_HOLD`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;

use super::bandwidth::layer_rates;
use super::{Origin, ProducerKey, WorkerCore};
use crate::media::allocator::{self, Allocation, Pausing, TrackDemand, TrackState};
use crate::media::frames::depacketize::Depacketizer;
use crate::media::frames::sink::{spawn_writer, FrameSession, OutFrame, SinkHandle};
use crate::media::frames::FrameCodec;
use crate::media::simulcast::Preference;
use crate::media::simulcast::MAX_LAYERS;
use crate::media::{Kind, MediaError, MediaEvent, ProducerId, TransportId};

/// How long a subscriber that fell behind stays capped below the layer it could not take.
const CONGESTION_HOLD: Duration = Duration::from_secs(10);

pub(super) struct FrameConsumer {
    producer: ProducerKey,
    producer_id: ProducerId,
    /// The subscribing participant's subscriber transport id (names it in events).
    subscriber: TransportId,
    sink: SinkHandle,
    preference: Preference,
    /// The layer being sent; `None` until its first keyframe.
    current: Option<u8>,
    /// Dropped frames since the queue was full: wait for a keyframe.
    behind: bool,
    ceiling: Option<(u8, Instant)>,
    video: bool,
    /// The allocator's memory and decision (`None`: no estimate yet, not limited).
    allocation_state: TrackState,
    allocated: Option<Allocation>,
}

/// What `consumeFrames` answers.
#[derive(Debug, Clone)]
pub struct FrameConsumerInfo {
    pub kind: Kind,
    pub codec: Option<&'static str>,
    pub layers: Vec<String>,
}

/// Microseconds on the process's clock (frame timestamps rebuilt from RTP start from it).
pub(super) fn micros(t: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_micros() as u64
}

impl WorkerCore {
    /// Start sending `producer`'s frames to the WebTransport session of `subscriber`.
    pub fn create_frame_consumer(
        &mut self,
        subscriber: TransportId,
        producer: ProducerId,
        session: Arc<dyn FrameSession>,
        now: Instant,
    ) -> Result<FrameConsumerInfo, MediaError> {
        let pk = self.producer_key(producer)?;
        let p = &self.producers[pk];
        let codec = match p.codec.or_else(|| self.negotiated_codec(pk)) {
            Some(codec) => Some(FrameCodec::from_str0m(codec).ok_or_else(|| {
                MediaError::UnsupportedCodec(format!(
                    "this track is {codec}; frames are sent for VP8, H264 and Opus"
                ))
            })?),
            None => None,
        };
        let info = FrameConsumerInfo {
            kind: p.kind,
            codec: codec.map(FrameCodec::mime_type),
            layers: p
                .layers
                .iter()
                .filter_map(|l| l.rid.map(|r| r.to_string()))
                .collect(),
        };
        let existing = p
            .frame_consumers
            .iter()
            .any(|k| self.frame_consumers[*k].subscriber == subscriber);
        if existing {
            return Ok(info);
        }
        let video = p.kind == Kind::Video;
        let key = self.frame_consumers.insert(FrameConsumer {
            producer: pk,
            producer_id: producer,
            subscriber,
            sink: spawn_writer(session),
            preference: Preference::Auto,
            current: None,
            behind: false,
            ceiling: None,
            video,
            allocation_state: TrackState::default(),
            allocated: None,
        });
        self.producers[pk].frame_consumers.push(key);
        if let Some(layer) = self.frame_target(key, now) {
            self.request_layer_keyframe(pk, layer, now);
        }
        Ok(info)
    }

    /// A WebRTC producer's codec before its first packet: the first the publisher's answer
    /// accepted on its m-line.
    fn negotiated_codec(&self, pk: ProducerKey) -> Option<str0m::format::Codec> {
        let p = &self.producers[pk];
        let Origin::Local(key) = p.origin else {
            return None;
        };
        let rtc = &self.transports.get(key)?.rtc;
        let pt = *rtc.media(p.mid)?.remote_pts().first()?;
        rtc.codec_config()
            .params()
            .iter()
            .find(|params| params.pt() == pt)
            .map(|params| params.spec().codec)
    }

    /// `setPreferredLayer` for a frame consumer; false when `subscriber` has none of it.
    pub fn set_frame_preference(
        &mut self,
        subscriber: TransportId,
        producer: ProducerId,
        preference: Preference,
        now: Instant,
    ) -> Result<(), MediaError> {
        let pk = self.producer_key(producer)?;
        let key = self.producers[pk]
            .frame_consumers
            .iter()
            .copied()
            .find(|k| self.frame_consumers[*k].subscriber == subscriber)
            .ok_or(MediaError::ProducerNotFound)?;
        self.frame_consumers[key].preference = preference;
        self.frame_consumers[key].ceiling = None;
        if let Some(layer) = self.frame_target(key, now) {
            if Some(layer) != self.frame_consumers[key].current {
                self.request_layer_keyframe(pk, layer, now);
            }
        }
        Ok(())
    }

    /// Frame consumers of a subscriber that left (their writers end with them).
    pub(super) fn close_frame_consumers(&mut self, subscriber: TransportId) {
        let keys = self.frame_consumers_of(subscriber);
        for key in keys {
            self.remove_frame_consumer(key);
        }
    }

    /// Keys of `subscriber`'s frame consumers.
    fn frame_consumers_of(&self, subscriber: TransportId) -> Vec<usize> {
        self.frame_consumers
            .iter()
            .filter(|(_, c)| c.subscriber == subscriber)
            .map(|(k, _)| k)
            .collect()
    }

    pub(super) fn remove_frame_consumer(&mut self, key: usize) {
        let Some(consumer) = self.frame_consumers.try_remove(key) else {
            return;
        };
        if let Some(p) = self.producers.get_mut(consumer.producer) {
            p.frame_consumers.retain(|k| *k != key);
        }
    }

    /// The layer a frame consumer should get now.
    fn frame_target(&self, key: usize, now: Instant) -> Option<u8> {
        let c = &self.frame_consumers[key];
        let layers = &self.producers[c.producer].layers;
        let active: Vec<u8> = (0..layers.len() as u8)
            .filter(|l| layers[usize::from(*l)].active)
            .collect();
        let mut wanted = match c.preference {
            Preference::Auto => u8::MAX,
            Preference::Fixed(l) => l,
        };
        if let Some((ceiling, until)) = c.ceiling {
            if now < until {
                wanted = wanted.min(ceiling);
            }
        }
        match c.allocated {
            Some(Allocation::Paused) => return None,
            Some(Allocation::Layer(l, _)) => wanted = wanted.min(l),
            None => {}
        }
        let Some(&lowest) = active.first() else {
            // Nothing measured yet: the lowest layer is the safe start.
            return Some(0).filter(|_| !layers.is_empty());
        };
        Some(
            active
                .iter()
                .copied()
                .filter(|l| *l <= wanted)
                .max()
                .unwrap_or(lowest),
        )
    }

    /// Housekeeping: divide each WebTransport subscriber's path estimate among its tracks.
    pub(super) fn allocate_frames(&mut self, now: Instant) {
        let mut subscribers: Vec<TransportId> = self
            .frame_consumers
            .iter()
            .map(|(_, c)| c.subscriber)
            .collect();
        subscribers.sort_unstable_by_key(|t| t.0);
        subscribers.dedup();
        for subscriber in subscribers {
            let keys = self.frame_consumers_of(subscriber);
            let Some(estimate) = self.frame_consumers[keys[0]].sink.session.estimate_bps() else {
                continue;
            };
            let demands: Vec<TrackDemand> = keys.iter().map(|k| self.frame_demand(*k)).collect();
            let mut states: Vec<TrackState> = keys
                .iter()
                .map(|k| self.frame_consumers[*k].allocation_state)
                .collect();
            // QUIC's congestion window is loss-driven already: what it allows may pause.
            let changes =
                allocator::allocate(estimate, Pausing::Allowed, &demands, &mut states, now);
            for (k, state) in keys.iter().zip(&states) {
                self.frame_consumers[*k].allocation_state = *state;
            }
            for change in changes {
                let key = keys[change.track];
                let c = &mut self.frame_consumers[key];
                c.allocated = Some(change.allocation);
                tracing::debug!(subscriber = subscriber.0, producer = %c.producer_id, estimate, allocation = ?change.allocation, reason = change.reason.as_str(), "frame allocation");
                if c.video && change.allocation == Allocation::Paused && c.current.take().is_some()
                {
                    let _ = self.events.send(MediaEvent::LayerChanged {
                        transport: c.subscriber,
                        producer: c.producer_id,
                        layer: None,
                        temporal: None,
                    });
                }
                if let Some(layer) = self.frame_target(key, now) {
                    if Some(layer) != self.frame_consumers[key].current {
                        let pk = self.frame_consumers[key].producer;
                        self.request_layer_keyframe(pk, layer, now);
                    }
                }
            }
        }
    }

    /// What a frame consumer's track costs per layer (frames carry no temporal layers).
    fn frame_demand(&self, key: usize) -> TrackDemand {
        let c = &self.frame_consumers[key];
        let producer = &self.producers[c.producer];
        let (layer_bps, _, measured) = layer_rates(producer);
        TrackDemand {
            audio: !c.video,
            priority: u16::from(super::DEFAULT_PRIORITY) * 2,
            max_layer: match c.preference {
                Preference::Auto => MAX_LAYERS as u8 - 1,
                Preference::Fixed(l) => l,
            },
            layer_bps,
            temporal_bps: Default::default(),
            measured,
        }
    }

    /// A packet of a WebRTC producer that has frame consumers: rebuild frames of its layer.
    pub(super) fn depacketize_for_frames(
        &mut self,
        pk: ProducerKey,
        layer: u8,
        packet: &super::ProducerPacket,
        now: Instant,
    ) {
        let p = &mut self.producers[pk];
        if matches!(p.origin, Origin::Frames) {
            return;
        }
        let Some(codec) = p.codec.and_then(FrameCodec::from_str0m) else {
            return;
        };
        let Some(state) = p.layers.get_mut(usize::from(layer)) else {
            return;
        };
        let depacketizer = state
            .depacketizer
            .get_or_insert_with(|| Depacketizer::new(codec));
        let frame = depacketizer.push(
            packet.seq,
            packet.rtp_timestamp,
            packet.marker,
            &packet.payload,
            micros(packet.received),
        );
        if let Some(frame) = frame {
            self.deliver_frame(
                pk,
                layer,
                frame.keyframe,
                frame.timestamp_us,
                frame.data,
                now,
            );
        }
    }

    /// One whole frame of producer `pk` to each of its frame consumers that wants its layer.
    pub(super) fn deliver_frame(
        &mut self,
        pk: ProducerKey,
        layer: u8,
        keyframe: bool,
        timestamp_us: u64,
        payload: Arc<[u8]>,
        now: Instant,
    ) {
        let mut keyframe_asks: Vec<u8> = Vec::new();
        let mut gone: Vec<usize> = Vec::new();
        for i in 0..self.producers[pk].frame_consumers.len() {
            let key = self.producers[pk].frame_consumers[i];
            let Some(target) = self.frame_target(key, now) else {
                continue;
            };
            let c = &mut self.frame_consumers[key];
            // Every audio frame can start a stream.
            let keyframe = keyframe || !c.video;
            let mut new_stream = c.video && keyframe;
            if c.current != Some(layer) {
                if layer != target {
                    continue;
                }
                if !keyframe {
                    keyframe_asks.push(target);
                    continue;
                }
                c.current = Some(layer);
                c.behind = false;
                new_stream = true;
                self.stats.layer_switches += 1;
                if c.video {
                    let _ = self.events.send(MediaEvent::LayerChanged {
                        transport: c.subscriber,
                        producer: c.producer_id,
                        layer: Some(layer),
                        temporal: None,
                    });
                }
            } else if layer != target {
                keyframe_asks.push(target);
            }
            if c.behind {
                if !keyframe {
                    continue;
                }
                c.behind = false;
                new_stream = true;
            }
            let frame = OutFrame {
                producer: c.producer_id,
                layer,
                keyframe,
                timestamp_us,
                payload: payload.clone(),
                new_stream,
            };
            match c.sink.frames.try_send(frame) {
                Ok(()) => self.stats.frames_out += 1,
                Err(TrySendError::Full(_)) => {
                    self.stats.frames_dropped += 1;
                    c.behind = true;
                    c.sink.reset.notify_one();
                    if c.video && layer > 0 {
                        c.ceiling = Some((layer - 1, now + CONGESTION_HOLD));
                    }
                    keyframe_asks.push(layer.saturating_sub(u8::from(c.video)));
                }
                Err(TrySendError::Closed(_)) => gone.push(key),
            }
        }
        for key in gone {
            self.remove_frame_consumer(key);
        }
        keyframe_asks.sort_unstable();
        keyframe_asks.dedup();
        for layer in keyframe_asks {
            self.request_layer_keyframe(pk, layer, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::media::core::{BweSettings, Egress};
    use crate::media::frames::ingest::FrameInput;
    use crate::media::frames::sink::{BoxFuture, FrameStreamOut};
    use crate::media::frames::wire::StreamHeader;
    use crate::media::CodecName;

    struct NoWire;
    impl Egress for NoWire {
        fn send(&mut self, _: SocketAddr, _: &[u8]) {}
        fn send_tcp(&mut self, _: SocketAddr, _: &[u8]) {}
    }

    /// A subscriber session whose path carries `estimate`; records the layer of each stream
    /// opened (its header's last byte).
    #[derive(Default)]
    struct Path {
        estimate: AtomicU64,
        layers: Mutex<Vec<u8>>,
    }

    struct Session(Arc<Path>);
    struct Stream(Arc<Path>, bool);

    impl FrameSession for Session {
        fn open_stream(&self) -> BoxFuture<'static, Option<Box<dyn FrameStreamOut>>> {
            let path = self.0.clone();
            Box::pin(async move { Some(Box::new(Stream(path, true)) as Box<dyn FrameStreamOut>) })
        }
        fn estimate_bps(&self) -> Option<u64> {
            Some(self.0.estimate.load(Ordering::Relaxed))
        }
    }

    impl FrameStreamOut for Stream {
        fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, bool> {
            if std::mem::take(&mut self.1) {
                self.0.layers.lock().unwrap().push(bytes[17]);
            }
            Box::pin(async { true })
        }
        fn reset(&mut self) {}
    }

    /// Three seconds of 30 fps frames on each of three layers sized 150 / 500 / 1500 kbit/s,
    /// housekeeping every 250 ms; returns the consumer's layer at the end.
    async fn run(core: &mut WorkerCore, producer: ProducerId, now: &mut Instant, frame: &mut u64) {
        const SIZES: [usize; 3] = [625, 2083, 6250];
        for _ in 0..90 {
            for (layer, size) in SIZES.iter().enumerate() {
                let key = frame.is_multiple_of(15);
                let mut payload = vec![0u8; *size];
                payload[0] = if key { 0x10 } else { 0x11 };
                core.on_frame_input(
                    FrameInput::Frame {
                        stream: layer as u64 + 1,
                        keyframe: key,
                        timestamp_us: *frame * 33_333,
                        payload: payload.into(),
                    },
                    *now,
                    &mut NoWire,
                );
            }
            *frame += 1;
            *now += Duration::from_micros(33_333);
            if frame.is_multiple_of(8) {
                core.tick(*now, &mut NoWire);
            }
            tokio::task::yield_now().await;
        }
        let _ = producer;
    }

    #[tokio::test]
    async fn the_path_estimate_picks_the_layer_of_a_webtransport_subscriber() {
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut core = WorkerCore::new(addr, &CodecName::ALL, BweSettings::default(), events);
        let publisher = TransportId(1);
        let rids = ["q", "h", "f"].map(String::from).to_vec();
        let producer = core
            .create_frame_producer(publisher, FrameCodec::Vp8, rids)
            .unwrap()
            .producer_id;
        let mut now = Instant::now();
        for layer in 0..3u8 {
            let stop = Arc::new(AtomicBool::new(false));
            let header = StreamHeader { producer, layer };
            let opened = FrameInput::Opened {
                stream: u64::from(layer) + 1,
                publisher,
                header,
                stop,
            };
            core.on_frame_input(opened, now, &mut NoWire);
        }
        let path = Arc::new(Path::default());
        path.estimate.store(800_000, Ordering::Relaxed);
        core.create_frame_consumer(
            TransportId(2),
            producer,
            Arc::new(Session(path.clone())),
            now,
        )
        .unwrap();
        let current = |core: &WorkerCore| core.frame_consumers.iter().next().unwrap().1.current;

        let mut frame = 0;
        run(&mut core, producer, &mut now, &mut frame).await;
        assert_eq!(
            current(&core),
            Some(1),
            "800 kbit/s carries the 500 kbit/s layer"
        );
        // The path opens up: after the climb hold, the top layer.
        path.estimate.store(5_000_000, Ordering::Relaxed);
        run(&mut core, producer, &mut now, &mut frame).await;
        assert_eq!(current(&core), Some(2));
        // Congestion: down at once, to what fits.
        path.estimate.store(300_000, Ordering::Relaxed);
        run(&mut core, producer, &mut now, &mut frame).await;
        assert_eq!(current(&core), Some(0));
        tokio::task::yield_now().await;
        let layers = path.layers.lock().unwrap().clone();
        assert!(
            layers.contains(&1) && layers.contains(&2),
            "streams opened per layer: {layers:?}"
        );
        assert_eq!(layers.last(), Some(&0));
    }
}
