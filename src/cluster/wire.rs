//! The node link's wire, sans I/O: RTP packets as QUIC datagrams, and control messages as
//! length-prefixed JSON on one bidirectional stream (README "One room over several nodes").
//!
//! ```text
//! packet datagram: kind u8 = 1 | producerId 16 bytes | layer u8 | seq u64 | rtp timestamp u32
//!                  | pt u8 | flags u8 | [audio level i8] [orientation u8] [content type u8]
//!                  | RTP payload
//! flags: bit 0 marker, bit 1 audio level, bit 2 voice activity present, bit 3 voice
//!        activity, bit 4 video orientation, bit 5 content type; the rest 0
//! control message: length u32 | JSON
//! ```
//!
//! Integers are big-endian. The sequence number is the publisher's extended one, so the relay
//! node's fan-out sees exactly what the owner's does. Payload parameters travel once per
//! producer and payload type, as a `codec` control message.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use str0m::format::PayloadParams;
use str0m::media::Pt;
use str0m::rtp::{ExtensionValues, VideoOrientation};
use uuid::Uuid;

use crate::media::core::ProducerPacket;
use crate::room::{ParticipantView, ProducerView};

pub const PACKET: u8 = 1;
/// kind, producer, layer, seq, timestamp, pt, flags.
pub const PACKET_HEADER_LEN: usize = 1 + 16 + 1 + 8 + 4 + 1 + 1;
/// Largest control message: a welcome of a full room is a few hundred KB at most.
pub const MAX_CONTROL_BYTES: usize = 4 << 20;

const MARKER: u8 = 0x01;
const AUDIO_LEVEL: u8 = 0x02;
const VOICE_PRESENT: u8 = 0x04;
const VOICE_ACTIVE: u8 = 0x08;
const ORIENTATION: u8 = 0x10;
const CONTENT_TYPE: u8 = 0x20;
const KNOWN_FLAGS: u8 = 0x3f;

/// `packet` as one datagram.
pub fn encode_packet(packet: &ProducerPacket, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(PACKET_HEADER_LEN + 3 + packet.payload.len());
    out.push(PACKET);
    out.extend_from_slice(packet.producer.as_bytes());
    out.push(packet.layer);
    out.extend_from_slice(&packet.seq.to_be_bytes());
    out.extend_from_slice(&packet.rtp_timestamp.to_be_bytes());
    out.push(*packet.pt);
    let ext = &packet.ext_vals;
    let mut flags = 0;
    if packet.marker {
        flags |= MARKER;
    }
    if ext.audio_level.is_some() {
        flags |= AUDIO_LEVEL;
    }
    if let Some(active) = ext.voice_activity {
        flags |= VOICE_PRESENT | if active { VOICE_ACTIVE } else { 0 };
    }
    if ext.video_orientation.is_some() {
        flags |= ORIENTATION;
    }
    if ext.video_content_type.is_some() {
        flags |= CONTENT_TYPE;
    }
    out.push(flags);
    if let Some(level) = ext.audio_level {
        out.push(level as u8);
    }
    if let Some(orientation) = ext.video_orientation {
        out.push(orientation as u8);
    }
    if let Some(content) = ext.video_content_type {
        out.push(content);
    }
    out.extend_from_slice(&packet.payload);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram shorter than its header")]
    Short,
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    #[error("reserved flag bits set")]
    Flags,
}

/// Read one packet datagram; its payload parameters are looked up with `params(producer, pt)`.
pub fn decode_packet(
    datagram: &[u8],
    received: Instant,
    params: impl FnOnce(Uuid, Pt) -> Option<PayloadParams>,
) -> Result<ProducerPacket, WireError> {
    if datagram.len() < PACKET_HEADER_LEN {
        return Err(WireError::Short);
    }
    if datagram[0] != PACKET {
        return Err(WireError::Kind(datagram[0]));
    }
    let producer = Uuid::from_bytes(datagram[1..17].try_into().expect("16 bytes"));
    let layer = datagram[17];
    let seq = u64::from_be_bytes(datagram[18..26].try_into().expect("8 bytes"));
    let rtp_timestamp = u32::from_be_bytes(datagram[26..30].try_into().expect("4 bytes"));
    let pt = Pt::from(datagram[30]);
    let flags = datagram[31];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(WireError::Flags);
    }
    let mut rest = &datagram[PACKET_HEADER_LEN..];
    let mut take = |present: bool| -> Result<Option<u8>, WireError> {
        if !present {
            return Ok(None);
        }
        let (&byte, tail) = rest.split_first().ok_or(WireError::Short)?;
        rest = tail;
        Ok(Some(byte))
    };
    let audio_level = take(flags & AUDIO_LEVEL != 0)?.map(|b| b as i8);
    let video_orientation = take(flags & ORIENTATION != 0)?.map(VideoOrientation::from);
    let video_content_type = take(flags & CONTENT_TYPE != 0)?;
    let ext_vals = ExtensionValues {
        audio_level,
        voice_activity: (flags & VOICE_PRESENT != 0).then_some(flags & VOICE_ACTIVE != 0),
        video_orientation,
        video_content_type,
        ..Default::default()
    };
    Ok(ProducerPacket {
        producer,
        layer,
        seq,
        rtp_timestamp,
        received,
        marker: flags & MARKER != 0,
        pt,
        params: params(producer, pt),
        ext_vals,
        payload: Arc::from(rest),
    })
}

/// A producer of the owner's room, with what a relay node needs to mirror it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkProducer {
    pub producer_id: Uuid,
    pub participant_id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// Simulcast layers as the room announces them (rids).
    pub layers: Vec<String>,
    pub mid: String,
    /// The producer's layers in order (`None`: a single unnamed layer).
    pub rids: Vec<Option<String>>,
    pub mime_type: Option<String>,
}

/// A participant of the owner's room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkParticipant {
    pub participant_id: String,
    pub user_id: String,
    pub display_name: String,
    pub producers: Vec<LinkProducer>,
}

impl LinkParticipant {
    /// A participant as the other node is told of it when it joins (it publishes nothing yet).
    pub fn joining(view: ParticipantView) -> Self {
        LinkParticipant {
            participant_id: view.participant_id,
            user_id: view.user_id,
            display_name: view.display_name,
            producers: Vec::new(),
        }
    }

    /// The participant as the room layer shows it, with `producers`.
    pub fn view(&self, producers: Vec<ProducerView>) -> ParticipantView {
        ParticipantView {
            participant_id: self.participant_id.clone(),
            user_id: self.user_id.clone(),
            display_name: self.display_name.clone(),
            producers,
        }
    }
}

/// The room's definition as the owner holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkRoom {
    pub room_id: String,
    pub name: String,
    pub description: Option<String>,
    pub max_participants: u32,
}

/// Control messages, both ways, in order on the link's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Control {
    // relay → owner
    /// First message: who asks (a node token signed with the shared secret) for which room.
    #[serde(rename_all = "camelCase")]
    Hello {
        token: String,
        room_id: String,
        node_id: String,
    },
    /// Start sending this producer's packets.
    #[serde(rename_all = "camelCase")]
    Export {
        producer_id: Uuid,
    },
    /// Nobody on the relay node consumes it any more.
    #[serde(rename_all = "camelCase")]
    Unexport {
        producer_id: Uuid,
    },
    #[serde(rename_all = "camelCase")]
    Keyframe {
        producer_id: Uuid,
        layer: u8,
    },
    /// The layers the relay node's consumers want (dynacast).
    #[serde(rename_all = "camelCase")]
    Wants {
        producer_id: Uuid,
        layers: Vec<bool>,
    },
    /// Someone joined the room on the relay node: the owner's room shows them too.
    LocalJoined {
        participant: LinkParticipant,
    },
    #[serde(rename_all = "camelCase")]
    LocalLeft {
        participant_id: String,
    },

    // owner → relay
    Welcome {
        room: LinkRoom,
        participants: Vec<LinkParticipant>,
    },
    /// The hello was refused; the link ends.
    Refused {
        code: String,
        message: String,
    },
    ParticipantJoined {
        participant: LinkParticipant,
    },
    #[serde(rename_all = "camelCase")]
    ParticipantLeft {
        participant_id: String,
    },
    ProducerAdded {
        producer: LinkProducer,
    },
    #[serde(rename_all = "camelCase")]
    ProducerClosed {
        producer_id: Uuid,
        participant_id: String,
    },
    #[serde(rename_all = "camelCase")]
    ProducerPaused {
        producer_id: Uuid,
        participant_id: String,
        paused: bool,
    },
    /// What payload type `params.pt()` of this producer means (before its packets).
    #[serde(rename_all = "camelCase")]
    Codec {
        producer_id: Uuid,
        params: PayloadParams,
    },
    /// The producer ended on the owner (its packets stop).
    #[serde(rename_all = "camelCase")]
    ProducerGone {
        producer_id: Uuid,
    },
    RoomClosed,
}

/// One control message as it goes on the stream.
pub fn encode_control(message: &Control) -> Vec<u8> {
    let json = serde_json::to_vec(message).expect("control messages serialize");
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("control message is not valid: {0}")]
    Invalid(String),
    #[error("link closed: {0}")]
    Closed(String),
}

/// Largest hello: read before the peer has proven anything, so it must stay small.
pub const MAX_HELLO_BYTES: usize = 8 * 1024;

/// Read one length-prefixed control message.
pub async fn read_control<R>(reader: &mut R) -> Result<Control, ControlError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    read_control_within(reader, MAX_CONTROL_BYTES).await
}

/// Read one length-prefixed control message of at most `max` bytes.
pub async fn read_control_within<R>(reader: &mut R, max: usize) -> Result<Control, ControlError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    reader
        .read_exact(&mut len)
        .await
        .map_err(|e| ControlError::Closed(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(ControlError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| ControlError::Closed(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| ControlError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(marker: bool, ext_vals: ExtensionValues) -> ProducerPacket {
        ProducerPacket {
            producer: Uuid::new_v4(),
            layer: 2,
            seq: (1 << 40) + 17,
            rtp_timestamp: 0xdead_beef,
            received: Instant::now(),
            marker,
            pt: Pt::from(96),
            params: None,
            ext_vals,
            payload: Arc::from(&b"vp8 payload bytes"[..]),
        }
    }

    fn round_trip(p: &ProducerPacket) -> ProducerPacket {
        let mut out = Vec::new();
        encode_packet(p, &mut out);
        decode_packet(&out, Instant::now(), |producer, pt| {
            assert_eq!((producer, pt), (p.producer, p.pt));
            None
        })
        .expect("decodes")
    }

    #[test]
    fn packets_keep_every_field_the_fan_out_reads() {
        let p = packet(true, ExtensionValues::default());
        let back = round_trip(&p);
        assert_eq!(back.producer, p.producer);
        assert_eq!(
            (back.layer, back.seq, back.rtp_timestamp),
            (2, p.seq, p.rtp_timestamp)
        );
        assert!(back.marker);
        assert_eq!(back.pt, p.pt);
        assert_eq!(&*back.payload, &*p.payload);
        assert_eq!(back.ext_vals, ExtensionValues::default());

        let ext = ExtensionValues {
            audio_level: Some(-37),
            voice_activity: Some(true),
            video_orientation: Some(VideoOrientation::Deg90),
            video_content_type: Some(1),
            ..Default::default()
        };
        let back = round_trip(&packet(false, ext.clone()));
        assert!(!back.marker);
        assert_eq!(back.ext_vals, ext);
        let quiet = ExtensionValues {
            voice_activity: Some(false),
            ..Default::default()
        };
        assert_eq!(round_trip(&packet(false, quiet.clone())).ext_vals, quiet);
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let mut out = Vec::new();
        encode_packet(&packet(false, ExtensionValues::default()), &mut out);
        let now = Instant::now();
        assert_eq!(
            decode_packet(&out[..10], now, |_, _| None).unwrap_err(),
            WireError::Short
        );
        let mut bad = out.clone();
        bad[0] = 9;
        assert_eq!(
            decode_packet(&bad, now, |_, _| None).unwrap_err(),
            WireError::Kind(9)
        );
        let mut bad = out.clone();
        bad[31] = 0x80;
        assert_eq!(
            decode_packet(&bad, now, |_, _| None).unwrap_err(),
            WireError::Flags
        );
        // A flag promising an extension byte the datagram does not have.
        let mut bad = out[..PACKET_HEADER_LEN].to_vec();
        bad[31] = AUDIO_LEVEL;
        assert_eq!(
            decode_packet(&bad, now, |_, _| None).unwrap_err(),
            WireError::Short
        );
    }

    #[tokio::test]
    async fn control_messages_are_framed_and_bounded() {
        let hello = Control::Hello {
            token: "t".into(),
            room_id: "r".into(),
            node_id: "n".into(),
        };
        let wants = Control::Wants {
            producer_id: Uuid::new_v4(),
            layers: vec![true, false, true],
        };
        let mut bytes = encode_control(&hello);
        bytes.extend(encode_control(&wants));
        let mut reader = &bytes[..];
        assert_eq!(read_control(&mut reader).await.unwrap(), hello);
        assert_eq!(read_control(&mut reader).await.unwrap(), wants);
        assert!(matches!(
            read_control(&mut reader).await,
            Err(ControlError::Closed(_))
        ));
        let huge = ((MAX_CONTROL_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_control(&mut &huge[..]).await,
            Err(ControlError::TooLarge(_))
        ));
        let mut junk = 5u32.to_be_bytes().to_vec();
        junk.extend_from_slice(b"{nope");
        assert!(matches!(
            read_control(&mut &junk[..]).await,
            Err(ControlError::Invalid(_))
        ));
        let text = String::from_utf8(encode_control(&wants)[4..].to_vec()).unwrap();
        assert!(text.contains(r#""type":"wants""#), "{text}");
        assert!(text.contains(r#""producerId""#), "{text}");
    }
}
