//! Media over WebTransport, signaling side: `publishFrames` makes a producer fed by frames,
//! and the session's media streams are handed to its room's worker.

use serde_json::json;

use super::super::protocol::wire::ProducerInfo;
use super::super::protocol::{ConsumeFrames, ErrorCode, OutboundEnvelope, PublishFrames};
use super::super::{Flow, Reply, Session};
use super::publish_denied;
use crate::auth::Identity;
use crate::media::frames::ingest::FrameStream;
use crate::media::frames::FrameCodec;
use crate::media::ortc::kind_str;
use crate::session::errors::Failure;

/// Media streams a session may open while it cannot take them before it is closed.
const REFUSED_STREAM_BUDGET: u32 = 16;

impl Session {
    pub(super) async fn publish_frames(&mut self, identity: &Identity, r: PublishFrames) -> Reply {
        if self.frame_session.is_none() {
            return Err(webtransport_required("publishFrames"));
        }
        let m = self.membership_in(r.room_id.as_deref())?;
        let codec = FrameCodec::parse(&r.codec).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnsupportedCodec,
                "codec: `vp8`, `h264` or `opus` can be sent as frames",
            )
        })?;
        let kind = kind_str(codec.kind());
        if !identity.grants.may_publish(kind) {
            return Err(publish_denied(kind));
        }
        let (view, _mid) = self
            .ctx
            .rooms
            .publish_frames(&m.room_id, &m.participant_id, codec, r.layers)
            .await?;
        let mut producer = json!(ProducerInfo::from(&view));
        producer["codec"] = json!(codec.mime_type());
        Ok((
            "publishFramesResponse",
            json!({ "producerId": view.producer_id.to_string(), "producer": producer }),
        ))
    }

    pub(super) async fn consume_frames(&mut self, identity: &Identity, r: ConsumeFrames) -> Reply {
        let Some(session) = self.frame_session.clone() else {
            return Err(webtransport_required("consumeFrames"));
        };
        if !identity.grants.subscribe {
            return Err(super::subscribe_denied());
        }
        let m = self.membership_in(r.room_id.as_deref())?;
        let (view, info) = self
            .ctx
            .rooms
            .consume_frames(&m.room_id, &m.participant_id, &r.producer_id, session)
            .await?;
        let mut producer = json!(ProducerInfo::from(&view));
        producer["codec"] = json!(info.codec);
        Ok((
            "consumeFramesResponse",
            json!({ "producerId": view.producer_id.to_string(), "producer": producer }),
        ))
    }

    /// A media stream the client opened: to its room's worker, which reads the stream header
    /// and checks that the track is this session's.
    pub fn on_frame_stream(&mut self, stream: FrameStream) -> Flow {
        let refusal = match self.membership.as_ref() {
            Some(m) => match self
                .ctx
                .rooms
                .ingest_frames(&m.room_id, &m.participant_id, stream)
            {
                Ok(()) => return Flow::Continue,
                Err(e) => e.to_string(),
            },
            None => "media streams need a joined room and publishFrames".to_string(),
        };
        self.refused_streams += 1;
        metrics::counter!("sfu_webtransport_refused_total", "what" => "media_stream").increment(1);
        self.sink.send(OutboundEnvelope::notification(
            "frameError",
            json!({ "producerId": null, "code": "NOT_IN_ROOM", "message": refusal }),
        ));
        if self.refused_streams > REFUSED_STREAM_BUDGET {
            return Flow::Close("too many refused media streams");
        }
        Flow::Continue
    }
}

/// The coded refusal of a media-over-WebTransport request on another carrier.
pub(super) fn webtransport_required(what: &str) -> Failure {
    Failure::new(
        ErrorCode::WebTransportRequired,
        format!("{what} needs a WebTransport session: the frames travel on its streams"),
    )
}
