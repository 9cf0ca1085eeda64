//! A WebTransport media client: the framing of README "Media over WebTransport", written from
//! the README (not from the server's code), for tests and the load runner.
//!
//! A stream is `version 1 | producerId (16 bytes) | layer`, then frames of
//! `flags (bit 0 keyframe) | timestamp µs (u64) | length (u32) | payload`, big-endian.

use anyhow::Context;
use uuid::Uuid;
use wtransport::{Connection, SendStream};

/// One open media stream of a track's layer.
pub struct TrackStream {
    stream: SendStream,
}

impl TrackStream {
    /// Open a unidirectional stream for `producer`'s `layer` and write its header.
    pub async fn open(connection: &Connection, producer: Uuid, layer: u8) -> anyhow::Result<Self> {
        let mut stream = connection
            .open_uni()
            .await
            .context("open_uni")?
            .await
            .context("uni stream")?;
        let mut header = vec![1u8];
        header.extend_from_slice(producer.as_bytes());
        header.push(layer);
        stream.write_all(&header).await.context("stream header")?;
        Ok(TrackStream { stream })
    }

    /// Raw bytes on the stream (for malformed input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("write")?;
        Ok(())
    }

    pub async fn write_frame(
        &mut self,
        keyframe: bool,
        timestamp_us: u64,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(13 + payload.len());
        frame.push(u8::from(keyframe));
        frame.extend_from_slice(&timestamp_us.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        self.write_raw(&frame).await
    }

    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.stream.finish().await.context("finish")?;
        Ok(())
    }
}

/// A frame the str0m test peer recognises after the SFU packetized it (see `peer.rs`): with
/// the 4-byte VP8 descriptor it becomes an 8-byte payload whose byte 4 is the keyframe bit and
/// byte 7 the layer.
pub fn tagged_vp8_frame(keyframe: bool, layer: u8) -> [u8; 4] {
    [if keyframe { 0x00 } else { 0x01 }, 0x00, 0x00, layer]
}
