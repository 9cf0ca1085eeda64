//! Forwarding: one incoming RTP packet of a producer goes to each of its consumers on this
//! worker (layer decision → id rewrite → `write_rtp` → drain the subscriber). No allocation of
//! our own per packet and no scan beyond the producer's own consumer list.

use std::time::{Duration, Instant};

use str0m::media::Pt;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Input, Rtc};

use super::{ConsumerKey, Egress, ProducerKey, Transport, TransportKey, WorkerCore};
use crate::media::codec::{inspect_video_payload, VideoPayloadInfo};
use crate::media::simulcast::{Decision, PacketIds};
use crate::media::{Kind, MediaEvent};

/// What every consumer of one packet shares, computed once per packet.
struct Incoming<'a> {
    publisher: TransportKey,
    producer: ProducerKey,
    layer: u8,
    packet: &'a RtpPacket,
    info: VideoPayloadInfo,
    ids: PacketIds,
    ext_vals: ExtensionValues,
    video: bool,
}

impl WorkerCore {
    pub(super) fn forward(
        &mut self,
        key: TransportKey,
        packet: RtpPacket,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        self.stats.rtp_packets_in += 1;
        let Some((pk, layer)) = self.resolve_route(key, &packet) else {
            return;
        };
        if !self.note_packet(key, pk, layer, packet.header.payload_type, now) {
            return;
        }
        let producer = &self.producers[pk];
        if producer.paused {
            return;
        }
        let video = producer.kind == Kind::Video;
        let info = if video {
            inspect_video_payload(producer.codec, &packet.payload)
        } else {
            inspect_video_payload(None, &[])
        };
        if !video {
            self.producers[pk]
                .voice
                .on_level(packet.header.ext_vals.audio_level, now);
        }
        if let Some(layer_state) = self.producers[pk].layers.get_mut(layer as usize) {
            layer_state
                .meter
                .add(packet.payload.len(), info.temporal_id);
        }
        let incoming = Incoming {
            publisher: key,
            producer: pk,
            layer,
            ids: PacketIds {
                seq: *packet.seq_no,
                timestamp: packet.header.timestamp,
                picture_id: info.picture_id,
                tl0_pic_idx: info.tl0_pic_idx,
            },
            ext_vals: forwardable_extensions(&packet.header.ext_vals),
            packet: &packet,
            info,
            video,
        };
        for i in 0..self.producers[pk].consumers.len() {
            let ck = self.producers[pk].consumers[i];
            self.forward_to(ck, &incoming, now, egress);
        }
    }

    /// Layer activity and codec of the producer; false if the layer is unknown.
    fn note_packet(
        &mut self,
        key: TransportKey,
        pk: ProducerKey,
        layer: u8,
        pt: Pt,
        now: Instant,
    ) -> bool {
        let producer = &mut self.producers[pk];
        let Some(layer_state) = producer.layers.get_mut(layer as usize) else {
            return false;
        };
        layer_state.last_packet = Some(now);
        let became_active = !layer_state.active;
        layer_state.active = true;
        if producer.codec_pt != Some(pt) {
            producer.codec = self.transports[key]
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.pt() == pt)
                .map(|p| p.spec().codec);
            producer.codec_pt = Some(pt);
        }
        if became_active {
            self.retarget_consumers(pk, now);
        }
        true
    }

    fn forward_to(
        &mut self,
        ck: ConsumerKey,
        incoming: &Incoming<'_>,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        let consumer = &mut self.consumers[ck];
        let Some(ssrc) = consumer.tx_ssrc else {
            return;
        };
        if consumer.paused {
            return;
        }
        let (layer, packet, info) = (incoming.layer, incoming.packet, &incoming.info);
        match consumer.selector.on_packet(layer, info.starts_keyframe) {
            Decision::Drop => return,
            Decision::Forward => {}
            Decision::SwitchAndForward => {
                tracing::trace!(consumer = ?ck, layer, "switched at keyframe");
                consumer.munger.switch_layer(incoming.ids, now);
                self.stats.layer_switches += 1;
                let _ = self.events.send(MediaEvent::LayerChanged {
                    transport: self.transports[consumer.transport].id,
                    producer: self.producers[incoming.producer].id,
                    layer: Some(layer),
                    temporal: info.temporal_id.map(|_| consumer.selector.temporal),
                });
            }
        }
        if !consumer
            .selector
            .admits_temporal(info.temporal_id, info.starts_frame)
        {
            consumer.munger.skip(incoming.ids, info.starts_frame);
            return;
        }
        let Some(out) = consumer.munger.rewrite(incoming.ids, now) else {
            return;
        };
        let sub_key = consumer.transport;
        let Some(out_pt) = self.subscriber_pt(ck, incoming.publisher, packet.header.payload_type)
        else {
            return;
        };
        let mut write = RtpWrite::new(
            out_pt,
            SeqNo::from(out.seq),
            out.timestamp,
            packet.timestamp,
            info.payload_for(&packet.payload, out.picture_id, out.tl0_pic_idx),
        )
        .marker(packet.header.marker)
        .ext_vals(incoming.ext_vals.clone())
        .nackable(incoming.video);
        if let (Some(descriptor), Some(pid)) = (info.vp8, out.picture_id) {
            let mut patch = descriptor.patch().picture_id(pid);
            if let Some(tl0) = out.tl0_pic_idx {
                patch = patch.tl0_pic_idx(tl0);
            }
            if let Ok(patch) = patch.build() {
                write = write.vp8_patch(patch);
            }
        }
        let subscriber = &mut self.transports[sub_key];
        subscriber.advance_clock(now);
        if let Some(stream) = subscriber.rtc.direct_api().stream_tx(&ssrc) {
            stream.write_rtp(write);
            self.stats.rtp_packets_forwarded += 1;
            self.stats.rtp_bytes_forwarded += packet.payload.len() as u64;
        }
        self.drain(sub_key, now, egress);
    }

    /// The consumer's payload type for the publisher's `in_pt`, cached per consumer.
    fn subscriber_pt(&mut self, ck: ConsumerKey, publisher: TransportKey, in_pt: Pt) -> Option<Pt> {
        let consumer = &self.consumers[ck];
        if let Some((from, to)) = consumer.pt_map {
            if from == in_pt {
                return Some(to);
            }
        }
        let to = map_payload_type(
            &self.transports[publisher].rtc,
            &self.transports[consumer.transport].rtc,
            in_pt,
        )?;
        self.consumers[ck].pt_map = Some((in_pt, to));
        Some(to)
    }

    /// Find (producer, layer) of an incoming packet; cached per SSRC after the first lookup.
    fn resolve_route(
        &mut self,
        key: TransportKey,
        packet: &RtpPacket,
    ) -> Option<(ProducerKey, u8)> {
        let ssrc = packet.header.ssrc;
        let transport = &mut self.transports[key];
        if let Some(route) = transport.ssrc_routes.get(&ssrc) {
            return Some(*route);
        }
        let (mid, rid) = {
            let mut api = transport.rtc.direct_api();
            let stream = api.stream_rx(&ssrc)?;
            (stream.mid(), stream.rid())
        };
        let pk = *transport.producers_by_mid.get(&mid)?;
        let producer = &self.producers[pk];
        let layer = match rid {
            None => 0,
            Some(rid) => producer.layers.iter().position(|l| l.rid == Some(rid))? as u8,
        };
        transport.ssrc_routes.insert(ssrc, (pk, layer));
        Some((pk, layer))
    }
}

/// How stale a subscriber's clock may be when a forwarded packet leaves it.
const CLOCK_STEP: Duration = Duration::from_millis(1);

impl Transport {
    /// str0m stamps a packet's send time (what TWCC feedback is compared with) and paces with
    /// the time of the `Rtc`'s last input. A subscriber that only sends gets no input between
    /// its timeouts, so move its clock before writing: with stale send times GCC reads the
    /// spread of arrivals as growing queueing delay and cuts its estimate.
    fn advance_clock(&mut self, now: Instant) {
        if self.bwe.is_some() && now.saturating_duration_since(self.clock) >= CLOCK_STEP {
            self.clock = now;
            let _ = self.rtc.handle_input(Input::Timeout(now));
        }
    }
}

/// Header extensions worth passing on. RID/MID are per-transport and set by str0m itself.
fn forwardable_extensions(incoming: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: incoming.audio_level,
        voice_activity: incoming.voice_activity,
        video_orientation: incoming.video_orientation,
        video_content_type: incoming.video_content_type,
        ..Default::default()
    }
}

/// The subscriber's payload type for the codec the publisher used with `pt`.
fn map_payload_type(publisher: &Rtc, subscriber: &Rtc, pt: Pt) -> Option<Pt> {
    let params = publisher
        .codec_config()
        .params()
        .iter()
        .find(|p| p.pt() == pt)?;
    subscriber
        .codec_config()
        .match_params(*params)
        .or_else(|| {
            subscriber
                .codec_config()
                .find(|p| p.spec().codec == params.spec().codec)
        })
        .map(|p| p.pt())
}
