//! Forwarding: one incoming RTP packet of a producer goes to each of its consumers on this
//! worker (layer decision → id rewrite → `send_rtp_now`, or `write_rtp` and a drain when a pacer
//! decides). No allocation of our own per packet and no scan beyond the producer's consumer list.

use std::time::Instant;

use str0m::format::PayloadParams;
use str0m::media::Pt;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{Input, Rtc, SendNow};

use super::drain::{send_datagram, transmit};
use super::{
    ConsumerKey, Egress, Origin, ProducerKey, ProducerPacket, Transport, TransportKey, WorkerCore,
};
use crate::media::codec::{inspect_video_payload, VideoPayloadInfo};
use crate::media::simulcast::{Decision, PacketIds};
use crate::media::{Kind, MediaEvent};

/// What every consumer of one packet shares, computed once per packet.
struct Incoming<'a> {
    producer: ProducerKey,
    packet: &'a ProducerPacket,
    info: VideoPayloadInfo,
    ids: PacketIds,
    video: bool,
}

impl WorkerCore {
    /// A packet from a publisher on this worker: to this worker's consumers, and one copy to
    /// each worker that mirrors the producer.
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
        let pt = packet.header.payload_type;
        if self.producers[pk].codec_pt != Some(pt) {
            let params = self.transports[key]
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.pt() == pt)
                .copied();
            self.set_codec(pk, pt, params);
        }
        if !self.note_packet(pk, layer, now) || self.producers[pk].paused {
            return;
        }
        let producer = &self.producers[pk];
        let packet = ProducerPacket {
            producer: producer.id,
            layer,
            seq: *packet.seq_no,
            rtp_timestamp: packet.header.timestamp,
            received: packet.timestamp,
            marker: packet.header.marker,
            pt,
            params: producer.codec_params,
            ext_vals: forwardable_extensions(&packet.header.ext_vals),
            payload: packet.payload,
        };
        if !producer.exports.to.is_empty() {
            self.export_packet(pk, &packet);
        }
        self.fan_out(pk, &packet, now, egress);
    }

    /// A packet another worker relayed to one of our mirrors.
    pub(super) fn forward_relayed(
        &mut self,
        packet: &ProducerPacket,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        self.stats.relay_packets_in += 1;
        let Some(&pk) = self.producer_by_id.get(&packet.producer) else {
            return;
        };
        // Only mirrors take relayed packets: a worker never feeds its own producers.
        if !matches!(self.producers[pk].origin, Origin::Mirror { .. }) {
            return;
        }
        if self.producers[pk].codec_pt != Some(packet.pt) {
            self.set_codec(pk, packet.pt, packet.params);
        }
        if !self.note_packet(pk, packet.layer, now) {
            return;
        }
        self.fan_out(pk, packet, now, egress);
    }

    /// The same for both: measure, then each consumer of the producer on this worker.
    pub(super) fn fan_out(
        &mut self,
        pk: ProducerKey,
        packet: &ProducerPacket,
        now: Instant,
        egress: &mut dyn Egress,
    ) {
        if !self.producers[pk].frame_consumers.is_empty() {
            self.depacketize_for_frames(pk, packet.layer, packet, now);
        }
        let producer = &mut self.producers[pk];
        let video = producer.kind == Kind::Video;
        let info = if video {
            inspect_video_payload(producer.codec, &packet.payload)
        } else {
            producer.voice.on_level(packet.ext_vals.audio_level, now);
            inspect_video_payload(None, &[])
        };
        if let Some(layer_state) = producer.layers.get_mut(packet.layer as usize) {
            layer_state
                .meter
                .add(packet.payload.len(), info.temporal_id);
        }
        let incoming = Incoming {
            producer: pk,
            ids: PacketIds {
                seq: packet.seq,
                timestamp: packet.rtp_timestamp,
                picture_id: info.picture_id,
                tl0_pic_idx: info.tl0_pic_idx,
            },
            packet,
            info,
            video,
        };
        for i in 0..self.producers[pk].consumers.len() {
            let ck = self.producers[pk].consumers[i];
            self.forward_to(ck, &incoming, now, egress);
        }
    }

    /// The publisher's payload type changed (first packet, or another codec).
    fn set_codec(&mut self, pk: ProducerKey, pt: Pt, params: Option<PayloadParams>) {
        let producer = &mut self.producers[pk];
        producer.codec_pt = Some(pt);
        producer.codec_params = params;
        producer.codec = params.map(|p| p.spec().codec);
    }

    /// Layer activity of the producer; false if the layer is unknown.
    pub(super) fn note_packet(&mut self, pk: ProducerKey, layer: u8, now: Instant) -> bool {
        let producer = &mut self.producers[pk];
        let Some(layer_state) = producer.layers.get_mut(layer as usize) else {
            return false;
        };
        layer_state.last_packet = Some(now);
        let became_active = !layer_state.active;
        layer_state.active = true;
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
        let (packet, info) = (incoming.packet, &incoming.info);
        let layer = packet.layer;
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
        let Some(out_pt) = self.subscriber_pt(ck, packet.pt) else {
            return;
        };
        let mut write = RtpWrite::new(
            out_pt,
            SeqNo::from(out.seq),
            out.timestamp,
            packet.received,
            info.payload_for(&packet.payload, out.picture_id, out.tl0_pic_idx),
        )
        .marker(packet.marker)
        .ext_vals(packet.ext_vals.clone())
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
        let (out, in_slot) = match egress.slot() {
            Some(slot) => (slot, true),
            None => (&mut self.datagram_buf[..], false),
        };
        match subscriber.rtc.send_rtp_now(ssrc, write, now, out) {
            SendNow::Written {
                proto,
                destination,
                len,
                ..
            } => {
                if in_slot {
                    egress.commit(proto, destination, len);
                } else {
                    send_datagram(egress, proto, destination, &self.datagram_buf[..len]);
                }
            }
            SendNow::Transmit(datagram) => transmit(egress, &datagram),
            SendNow::Queued => {
                subscriber.release_written(now);
                self.drain(sub_key, now, egress);
            }
            SendNow::NoStream => return,
        }
        self.stats.rtp_packets_forwarded += 1;
        self.stats.rtp_bytes_forwarded += packet.payload.len() as u64;
    }

    /// The consumer's payload type for the publisher's `in_pt`, cached per consumer.
    fn subscriber_pt(&mut self, ck: ConsumerKey, in_pt: Pt) -> Option<Pt> {
        let consumer = &self.consumers[ck];
        if let Some((from, to)) = consumer.pt_map {
            if from == in_pt {
                return Some(to);
            }
        }
        let params = self.producers[consumer.producer].codec_params?;
        let to = map_payload_type(params, &self.transports[consumer.transport].rtc)?;
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

impl Transport {
    /// For a packet `send_rtp_now` queued (a pacer decides, or the stream has a backlog):
    /// str0m moves a written packet into its pacer's queues only on a timeout, so a packet
    /// written and drained at once would wait for the subscriber's next timer (its deadline
    /// is "now", so the worker's timer heap, a wake-up and a second drain per packet). A
    /// timeout right after the write sends it in this drain instead. It also moves the
    /// `Rtc`'s clock to `now`, which str0m stamps as the send time TWCC feedback is compared
    /// with (a subscriber that only sends gets no other input between its timeouts, and with
    /// stale send times GCC reads the spread of arrivals as queueing delay).
    fn release_written(&mut self, now: Instant) {
        let _ = self.rtc.handle_input(Input::Timeout(now));
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

/// The subscriber's payload type for the codec the publisher uses with `params`.
fn map_payload_type(params: PayloadParams, subscriber: &Rtc) -> Option<Pt> {
    subscriber
        .codec_config()
        .match_params(params)
        .or_else(|| {
            subscriber
                .codec_config()
                .find(|p| p.spec().codec == params.spec().codec)
        })
        .map(|p| p.pt())
}
