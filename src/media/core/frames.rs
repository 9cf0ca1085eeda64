//! Producers fed by WebTransport publishers: whole frames arrive from the worker's frame
//! inbox (`media/frames/ingest.rs`), are packetized per layer into RTP, and from there take
//! the same path as a WebRTC publisher's packets (mirrors on other workers, fan-out, layer
//! selection, allocator). Keyframe requests and dynacast go back to the publisher as
//! signaling (`MediaEvent::KeyframeWanted`, `LayersWanted`).

use std::time::Instant;

use str0m::media::{Mid, Rid};
use uuid::Uuid;

use super::relay::Exports;
use super::{Egress, KeyframeRequests, Layer, Origin, Producer, ProducerPacket, WorkerCore};
use crate::media::frames::ingest::FrameInput;
use crate::media::frames::packetize::{Packetizer, RtpPiece};
use crate::media::frames::wire::{FrameError, FrameErrorCode};
use crate::media::frames::FrameCodec;
use crate::media::simulcast::MAX_LAYERS;
use crate::media::{MediaError, MediaEvent, NewProducer, TransportId};

/// A simulcast layer name: what browsers use as RIDs (RFC 8851 allows alphanumerics).
fn valid_rid(rid: &str) -> bool {
    !rid.is_empty() && rid.len() <= 16 && rid.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl WorkerCore {
    /// A producer whose frames `publisher` (a WebTransport session) will send on its own
    /// streams. `rids` names the simulcast layers, lowest first (none for one layer).
    pub fn create_frame_producer(
        &mut self,
        publisher: TransportId,
        codec: FrameCodec,
        rids: Vec<String>,
    ) -> Result<NewProducer, MediaError> {
        let kind = codec.kind();
        if rids.len() > MAX_LAYERS || (kind == crate::media::Kind::Audio && !rids.is_empty()) {
            return Err(MediaError::InvalidParameters(format!(
                "layers: at most {MAX_LAYERS}, and none for audio"
            )));
        }
        if let Some(bad) = rids.iter().find(|r| !valid_rid(r)) {
            return Err(MediaError::InvalidParameters(format!(
                "layer name {bad:?}: 1-16 letters or digits"
            )));
        }
        if (1..rids.len()).any(|i| rids[..i].contains(&rids[i])) {
            return Err(MediaError::InvalidParameters("layer names repeat".into()));
        }
        // H264 needs packetization-mode 1 (FU-A) where the server offers both modes.
        let config = self.rtc_template.codec_config();
        let params = config
            .params()
            .iter()
            .filter(|p| p.spec().codec == codec.str0m_codec())
            .max_by_key(|p| p.spec().format.packetization_mode == Some(1))
            .copied()
            .ok_or_else(|| {
                MediaError::UnsupportedCodec(format!(
                    "{} is not enabled on this server (CODECS)",
                    codec.mime_type()
                ))
            })?;
        let layer = |rid: Option<Rid>| Layer {
            packetizer: Some(Packetizer::new(codec)),
            ..Layer::new(rid)
        };
        let layers: Vec<Layer> = if rids.is_empty() {
            vec![layer(None)]
        } else {
            rids.iter()
                .map(|r| layer(Some(Rid::from(r.as_str()))))
                .collect()
        };
        self.next_nonce += 1;
        let mid = Mid::from(format!("wt{}", self.next_nonce).as_str());
        let id = Uuid::new_v4();
        let pk = self.producers.insert(Producer {
            id,
            origin: Origin::Frames,
            publisher,
            mid,
            kind,
            layers,
            keyframes: KeyframeRequests::default(),
            codec: Some(codec.str0m_codec()),
            codec_pt: Some(params.pt()),
            codec_params: Some(params),
            mime_type: Some(codec.mime_type().to_string()),
            paused: false,
            consumers: Vec::new(),
            dynacast: Default::default(),
            voice: Default::default(),
            exports: Exports::default(),
            idle_since: None,
            frame_consumers: Vec::new(),
        });
        self.producer_by_id.insert(id, pk);
        Ok(NewProducer {
            producer_id: id,
            mid: mid.to_string(),
            kind,
            rids,
        })
    }

    /// Close every frame producer of `publisher` (its session left).
    pub(super) fn close_frame_producers(
        &mut self,
        publisher: TransportId,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        let ids: Vec<_> = self
            .producers
            .iter()
            .filter(|(_, p)| matches!(p.origin, Origin::Frames) && p.publisher == publisher)
            .map(|(_, p)| p.id)
            .collect();
        for id in ids {
            let _ = self.close_producer(id, now, egress);
        }
        self.frame_streams.retain(|_, (_, p)| *p != publisher);
    }

    /// Something a publisher's stream reader delivered.
    pub(crate) fn on_frame_input(
        &mut self,
        input: FrameInput,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        match input {
            FrameInput::Opened {
                stream,
                publisher,
                header,
                stop,
            } => {
                let owned = self.producer_by_id.get(&header.producer).and_then(|pk| {
                    let p = &self.producers[*pk];
                    (matches!(p.origin, Origin::Frames) && p.publisher == publisher)
                        .then_some(p.layers.len())
                });
                let refusal = match owned {
                    None => Some(FrameError::new(
                        FrameErrorCode::TrackNotYours,
                        format!(
                            "producer {} is not one of this session's publishFrames tracks",
                            header.producer
                        ),
                    )),
                    Some(layers) if usize::from(header.layer) >= layers => Some(FrameError::new(
                        FrameErrorCode::InvalidFrame,
                        format!("layer {} of a track with {layers}", header.layer),
                    )),
                    Some(_) => None,
                };
                match refusal {
                    Some(error) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        self.frame_refused(publisher, Some(header.producer), error);
                    }
                    None => {
                        self.frame_streams
                            .insert(stream, ((header.producer, header.layer), publisher));
                    }
                }
            }
            FrameInput::Frame {
                stream,
                keyframe,
                timestamp_us,
                payload,
            } => {
                if let Some(((producer, layer), _)) = self.frame_streams.get(&stream).copied() {
                    let frame = (keyframe, timestamp_us, payload);
                    self.forward_frame(producer, layer, frame, now, egress);
                }
            }
            FrameInput::Failed {
                stream,
                publisher,
                error,
            } => {
                let producer = self.frame_streams.remove(&stream).map(|((p, _), _)| p);
                self.frame_refused(publisher, producer, error);
            }
            FrameInput::Ended { stream } => {
                self.frame_streams.remove(&stream);
            }
        }
    }

    fn frame_refused(&mut self, publisher: TransportId, producer: Option<Uuid>, error: FrameError) {
        tracing::debug!(publisher = publisher.0, ?producer, code = error.code.as_str(), message = %error.message, "frame stream refused");
        metrics::counter!("sfu_frames_refused_total", "code" => error.code.as_str()).increment(1);
        self.stats.frame_streams_refused += 1;
        let _ = self.events.send(MediaEvent::FrameRefused {
            transport: publisher,
            producer,
            code: error.code.as_str(),
            message: error.message,
        });
    }

    /// One frame of a layer: packetized, then forwarded as an RTP publisher's packets are.
    fn forward_frame(
        &mut self,
        producer: Uuid,
        layer: u8,
        (keyframe, timestamp_us, frame): (bool, u64, std::sync::Arc<[u8]>),
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        let Some(&pk) = self.producer_by_id.get(&producer) else {
            return;
        };
        self.stats.frames_in += 1;
        // WebTransport subscribers get the frame as it came, before any RTP is made of it.
        if !self.producers[pk].frame_consumers.is_empty() && !self.producers[pk].paused {
            self.note_packet(pk, layer, now);
            self.deliver_frame(pk, layer, keyframe, timestamp_us, frame.clone(), now);
        }
        let mut pieces: Vec<RtpPiece> = Vec::with_capacity(frame.len() / 1000 + 1);
        let p = &mut self.producers[pk];
        let Some(packetizer) = p
            .layers
            .get_mut(usize::from(layer))
            .and_then(|l| l.packetizer.as_mut())
        else {
            return;
        };
        packetizer.packetize(&frame, timestamp_us, |piece| pieces.push(piece));
        let (Some(pt), params) = (p.codec_pt, p.codec_params) else {
            return;
        };
        for piece in pieces {
            self.stats.rtp_packets_in += 1;
            if !self.note_packet(pk, layer, now) || self.producers[pk].paused {
                continue;
            }
            let packet = ProducerPacket {
                producer,
                layer,
                seq: piece.seq,
                rtp_timestamp: piece.rtp_timestamp,
                received: now,
                marker: piece.marker,
                pt,
                params,
                ext_vals: Default::default(),
                payload: piece.payload,
            };
            if !self.producers[pk].exports.to.is_empty() {
                self.export_packet(pk, &packet);
            }
            self.fan_out(pk, &packet, now, egress);
        }
        self.after_drain(now, egress);
    }
}
