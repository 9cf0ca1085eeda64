//! WebTransport signaling framing: every message is a 4-byte big-endian length and that many
//! bytes of UTF-8 JSON, on one bidirectional stream. (The server has its own copy: this crate
//! must not reach into the server's internals, and the two meet only on the wire.)

/// One message as a frame.
pub fn encode(text: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + text.len());
    frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Reassembles frames from stream reads of any size.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buffer: Vec<u8>,
}

impl FrameBuffer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame's body, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let header: [u8; 4] = self.buffer.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(header) as usize;
        let body = self.buffer.get(4..4 + len)?.to_vec();
        self.buffer.drain(..4 + len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_arbitrary_splits() {
        let mut wire = encode("{\"a\":1}");
        wire.extend(encode(""));
        wire.extend(encode("ü"));
        let mut buffer = FrameBuffer::default();
        let mut out = Vec::new();
        for chunk in wire.chunks(3) {
            buffer.push(chunk);
            while let Some(frame) = buffer.next_frame() {
                out.push(String::from_utf8(frame).unwrap());
            }
        }
        assert_eq!(out, ["{\"a\":1}", "", "ü"]);
        assert!(buffer.next_frame().is_none());
    }
}
