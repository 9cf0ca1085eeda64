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

/// One frame a WebTransport subscriber received.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    pub producer: Uuid,
    pub layer: u8,
    pub keyframe: bool,
    pub timestamp_us: u64,
    pub payload: Vec<u8>,
    /// Which stream (in order of acceptance) carried it.
    pub stream: u64,
    /// Whether it was the first frame of its stream.
    pub first_in_stream: bool,
}

/// Accepts the server's media streams on a session and records their frames. `paused`
/// stops reading (a slow subscriber) until cleared.
#[derive(Clone, Default)]
pub struct FrameReceiver {
    pub frames: std::sync::Arc<std::sync::Mutex<Vec<ReceivedFrame>>>,
    pub paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Streams that ended in a reset (the server abandoned them).
    pub resets: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FrameReceiver {
    pub fn spawn(connection: Connection) -> Self {
        let receiver = FrameReceiver::default();
        let r = receiver.clone();
        tokio::spawn(async move {
            let mut index = 0u64;
            while let Ok(stream) = connection.accept_uni().await {
                index += 1;
                tokio::spawn(r.clone().read(stream, index));
            }
        });
        receiver
    }

    pub fn frames(&self) -> Vec<ReceivedFrame> {
        self.frames.lock().unwrap().clone()
    }

    async fn wait_while_paused(&self) {
        while self.paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn read(self, mut stream: wtransport::RecvStream, index: u64) {
        let mut header = [0u8; 18];
        self.wait_while_paused().await;
        if stream.read_exact(&mut header).await.is_err() || header[0] != 1 {
            return;
        }
        let producer = Uuid::from_bytes(header[1..17].try_into().unwrap());
        let layer = header[17];
        let mut first = true;
        loop {
            self.wait_while_paused().await;
            let mut head = [0u8; 13];
            match stream.read_exact(&mut head).await {
                Ok(()) => {}
                Err(wtransport::error::StreamReadExactError::FinishedEarly(0)) => return,
                Err(_) => {
                    self.resets
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
            let length = u32::from_be_bytes(head[9..13].try_into().unwrap()) as usize;
            let mut payload = vec![0u8; length];
            if stream.read_exact(&mut payload).await.is_err() {
                self.resets
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            self.frames.lock().unwrap().push(ReceivedFrame {
                producer,
                layer,
                keyframe: head[0] & 1 == 1,
                timestamp_us: u64::from_be_bytes(head[1..9].try_into().unwrap()),
                payload,
                stream: index,
                first_in_stream: first,
            });
            first = false;
        }
    }
}
