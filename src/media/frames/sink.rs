//! Sending frames to a WebTransport subscriber. The worker never waits for the network: it
//! hands each frame to the consumer's writer task (on the worker's thread) through a small
//! queue, and when that queue is full the subscriber is behind — the worker drops frames until
//! the next keyframe and tells the writer to reset the stale stream (its unsent frames are
//! discarded by QUIC, not delivered late); the keyframe starts a new stream.
//!
//! Streams as the publisher's (`wire.rs`): one per group of pictures per video track, one for
//! an audio track; each begins with the stream header of the producer and layer it carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::wire::{FrameHeader, StreamHeader};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the media plane needs of a WebTransport session to send it media.
pub trait FrameSession: Send + Sync + 'static {
    /// A new unidirectional stream; `None` when the session is gone.
    fn open_stream(&self) -> BoxFuture<'static, Option<Box<dyn FrameStreamOut>>>;
    /// What the path carries now, by QUIC's own congestion control (bits/s); `None` before
    /// it knows.
    fn estimate_bps(&self) -> Option<u64> {
        None
    }
}

/// One outgoing unidirectional stream.
pub trait FrameStreamOut: Send {
    /// Write all of `bytes`; false when the stream or session is gone.
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> BoxFuture<'a, bool>;
    /// Abandon the stream: what was not delivered yet is dropped (RESET_STREAM).
    fn reset(&mut self);
}

/// Frames a consumer's writer may have queued: about a second of video. Past it the
/// subscriber counts as behind.
pub(crate) const SINK_QUEUE: usize = 32;

/// One frame for a subscriber.
#[derive(Debug)]
pub(crate) struct OutFrame {
    pub producer: Uuid,
    pub layer: u8,
    pub keyframe: bool,
    pub timestamp_us: u64,
    pub payload: Arc<[u8]>,
    /// Start a new stream with this frame (a video keyframe, a layer switch, a restart).
    pub new_stream: bool,
}

/// The worker's end of a consumer's writer.
pub(crate) struct SinkHandle {
    pub frames: mpsc::Sender<OutFrame>,
    /// Raised when the worker dropped frames: the writer resets the stream it is writing.
    pub reset: Arc<Notify>,
    /// The subscriber's session, for its path estimate.
    pub session: Arc<dyn FrameSession>,
}

/// Start a writer for one consumer on the current (worker) thread.
pub(crate) fn spawn_writer(session: Arc<dyn FrameSession>) -> SinkHandle {
    let writer_session = session.clone();
    let (frames, rx) = mpsc::channel(SINK_QUEUE);
    let reset = Arc::new(Notify::new());
    tokio::spawn(write_frames(writer_session, rx, reset.clone()));
    SinkHandle {
        frames,
        reset,
        session,
    }
}

async fn write_frames(
    session: Arc<dyn FrameSession>,
    mut frames: mpsc::Receiver<OutFrame>,
    reset: Arc<Notify>,
) {
    let mut stream: Option<Box<dyn FrameStreamOut>> = None;
    // After a reset, frames already queued are stale until the next one that starts a stream.
    let mut skipping = false;
    let mut bytes = Vec::new();
    while let Some(frame) = frames.recv().await {
        if frame.new_stream {
            skipping = false;
            // A reset raised meanwhile was for the stream this one replaces.
            let _ = futures_util::FutureExt::now_or_never(reset.notified());
            // Dropping a stream finishes it: the client reads it to its end.
            stream = None;
        }
        if skipping {
            continue;
        }
        if stream.is_none() {
            let Some(mut opened) = session.open_stream().await else {
                return;
            };
            let header = StreamHeader {
                producer: frame.producer,
                layer: frame.layer,
            };
            if !opened.write(&header.encode()).await {
                return;
            }
            stream = Some(opened);
        }
        bytes.clear();
        let head = FrameHeader {
            keyframe: frame.keyframe,
            timestamp_us: frame.timestamp_us,
            length: frame.payload.len(),
        };
        bytes.extend_from_slice(&head.encode());
        bytes.extend_from_slice(&frame.payload);
        let Some(out) = stream.as_mut() else { continue };
        tokio::select! {
            written = out.write(&bytes) => {
                if !written {
                    // This stream is gone (the client stopped it); the next keyframe opens another.
                    stream = None;
                    skipping = true;
                }
            }
            _ = reset.notified() => {
                out.reset();
                stream = None;
                skipping = true;
            }
        }
    }
}
