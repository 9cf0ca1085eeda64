//! Reading a WebTransport publisher's media streams on its room's worker. The signaling side
//! hands over each unidirectional stream once; from then on its frames are read by a task on
//! the worker's own thread and delivered through the worker's frame inbox — no thread hop per
//! frame. A stream that breaks the framing, or stalls inside a frame, is dropped (which stops
//! it for the client) and reported; the session and its other streams live on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::wire::{
    FrameError, FrameErrorCode, FrameHeader, StreamHeader, FRAME_HEADER_LEN, STREAM_HEADER_LEN,
};
use crate::media::TransportId;

/// A media stream as the signaling side received it (a WebTransport unidirectional stream).
pub type FrameStream = Box<dyn AsyncRead + Send + Unpin>;

/// Frames (and stream events) waiting for the worker; a full inbox makes readers wait, which
/// pushes back on the publisher through QUIC flow control instead of dropping its frames.
pub(crate) const FRAME_INBOX: usize = 1024;
/// The stream header must arrive this soon after the stream opened, and a frame's payload
/// this soon after its header.
const STREAM_DEADLINE: Duration = Duration::from_secs(10);

/// What a reader tells its worker.
pub(crate) enum FrameInput {
    /// A stream's header: it claims `header.producer`; the worker checks that the producer is
    /// one of `publisher`'s frame producers and sets `stop` when it is not.
    Opened {
        stream: u64,
        publisher: TransportId,
        header: StreamHeader,
        stop: Arc<AtomicBool>,
    },
    /// One whole frame.
    Frame {
        stream: u64,
        keyframe: bool,
        timestamp_us: u64,
        payload: Arc<[u8]>,
    },
    /// The stream broke the framing or timed out; it is dropped.
    Failed {
        stream: u64,
        publisher: TransportId,
        error: FrameError,
    },
    /// The client finished (or reset) the stream.
    Ended { stream: u64 },
}

/// Read one media stream until it ends, fails or is refused.
pub(crate) async fn read_stream(
    stream: u64,
    publisher: TransportId,
    mut source: FrameStream,
    inbox: mpsc::Sender<FrameInput>,
) {
    let outcome = read_frames(stream, publisher, &mut source, &inbox).await;
    let message = match outcome {
        Ok(()) => FrameInput::Ended { stream },
        Err(error) => FrameInput::Failed {
            stream,
            publisher,
            error,
        },
    };
    let _ = inbox.send(message).await;
}

async fn read_frames(
    stream: u64,
    publisher: TransportId,
    source: &mut FrameStream,
    inbox: &mpsc::Sender<FrameInput>,
) -> Result<(), FrameError> {
    let mut header = [0u8; STREAM_HEADER_LEN];
    match read_exact(source, &mut header, "stream header").await? {
        Read::Whole => {}
        // Opened and finished without a header: nothing to do.
        Read::EndedCleanly => return Ok(()),
    }
    let header = StreamHeader::parse(&header)?;
    let stop = Arc::new(AtomicBool::new(false));
    let opened = FrameInput::Opened {
        stream,
        publisher,
        header,
        stop: stop.clone(),
    };
    if inbox.send(opened).await.is_err() {
        return Ok(());
    }
    loop {
        let mut head = [0u8; FRAME_HEADER_LEN];
        match read_exact(source, &mut head, "frame header").await? {
            Read::Whole => {}
            Read::EndedCleanly => return Ok(()),
        }
        // Refused by the worker (reported there): drop the stream, read nothing more of it.
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let frame = FrameHeader::parse(&head)?;
        let mut payload = vec![0u8; frame.length];
        if let Read::EndedCleanly = read_exact(source, &mut payload, "frame").await? {
            return Err(FrameError::new(
                FrameErrorCode::InvalidFrame,
                format!("stream ended inside a frame of {} bytes", frame.length),
            ));
        }
        let input = FrameInput::Frame {
            stream,
            keyframe: frame.keyframe,
            timestamp_us: frame.timestamp_us,
            payload: payload.into(),
        };
        if inbox.send(input).await.is_err() {
            return Ok(());
        }
    }
}

enum Read {
    Whole,
    /// The stream ended before the first byte of this read.
    EndedCleanly,
}

/// Fill `buf`, within [`STREAM_DEADLINE`]. A stream that ends part-way is an error; one that
/// ends before the first byte is not.
async fn read_exact(
    source: &mut FrameStream,
    buf: &mut [u8],
    what: &str,
) -> Result<Read, FrameError> {
    let fill = async {
        let mut filled = 0;
        while filled < buf.len() {
            match source.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) if filled == 0 => return Ok(Read::EndedCleanly),
                Ok(0) | Err(_) => {
                    return Err(FrameError::new(
                        FrameErrorCode::InvalidFrame,
                        format!("stream ended inside a {what}"),
                    ))
                }
                Ok(n) => filled += n,
            }
        }
        Ok(Read::Whole)
    };
    match tokio::time::timeout(STREAM_DEADLINE, fill).await {
        Ok(result) => result,
        Err(_) => Err(FrameError::new(
            FrameErrorCode::FrameTimeout,
            format!("no complete {what} within {} s", STREAM_DEADLINE.as_secs()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frames::wire::MAX_FRAME_BYTES;
    use uuid::Uuid;

    async fn run(bytes: Vec<u8>) -> Vec<FrameInput> {
        let (tx, mut rx) = mpsc::channel(16);
        read_stream(7, TransportId(1), Box::new(std::io::Cursor::new(bytes)), tx).await;
        let mut out = Vec::new();
        while let Ok(input) = rx.try_recv() {
            out.push(input);
        }
        out
    }

    fn stream_with(frames: &[(bool, &[u8])]) -> Vec<u8> {
        let header = StreamHeader {
            producer: Uuid::from_u128(42),
            layer: 1,
        };
        let mut bytes = header.encode().to_vec();
        for (i, (keyframe, payload)) in frames.iter().enumerate() {
            let head = FrameHeader {
                keyframe: *keyframe,
                timestamp_us: i as u64 * 33_000,
                length: payload.len(),
            };
            bytes.extend_from_slice(&head.encode());
            bytes.extend_from_slice(payload);
        }
        bytes
    }

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order() {
        let out = run(stream_with(&[(true, b"key"), (false, b"delta")])).await;
        assert!(matches!(&out[0], FrameInput::Opened { header, .. }
            if header.producer == Uuid::from_u128(42) && header.layer == 1));
        assert!(
            matches!(&out[1], FrameInput::Frame { keyframe: true, payload, .. } if &payload[..] == b"key")
        );
        assert!(
            matches!(&out[2], FrameInput::Frame { keyframe: false, timestamp_us: 33_000, payload, .. } if &payload[..] == b"delta")
        );
        assert!(matches!(out[3], FrameInput::Ended { stream: 7 }));
    }

    #[tokio::test]
    async fn broken_streams_are_reported_with_their_code() {
        let code = |out: &[FrameInput]| match out.last() {
            Some(FrameInput::Failed { error, .. }) => Some(error.code),
            _ => None,
        };
        let mut bad_version = stream_with(&[]);
        bad_version[0] = 2;
        assert_eq!(
            code(&run(bad_version).await),
            Some(FrameErrorCode::InvalidFrame)
        );
        // A length over the cap is refused from the header alone: nothing is allocated.
        let mut huge = stream_with(&[]);
        huge.extend_from_slice(
            &FrameHeader {
                keyframe: true,
                timestamp_us: 0,
                length: MAX_FRAME_BYTES,
            }
            .encode(),
        );
        huge[STREAM_HEADER_LEN + 9..STREAM_HEADER_LEN + 13]
            .copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(code(&run(huge).await), Some(FrameErrorCode::FrameTooLarge));
        // Cut inside a frame.
        let mut cut = stream_with(&[(true, b"keyframe")]);
        cut.truncate(cut.len() - 3);
        assert_eq!(code(&run(cut).await), Some(FrameErrorCode::InvalidFrame));
        // Cut inside the stream header.
        assert_eq!(
            code(&run(vec![1, 2, 3]).await),
            Some(FrameErrorCode::InvalidFrame)
        );
        // Nothing at all is not an error.
        assert!(matches!(
            run(Vec::new()).await[..],
            [FrameInput::Ended { .. }]
        ));
    }
}
