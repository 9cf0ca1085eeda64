// Media over WebTransport for the demo: WebCodecs encodes and decodes, and encoded frames
// travel on the signaling session's own unidirectional streams (README "Media over
// WebTransport"). The server bridges them to and from WebRTC participants.
//
// Framing of every media stream, both directions (integers big-endian):
//   stream header: version u8 = 1 | producerId 16 bytes | layer u8
//   frame:         flags u8 (bit 0 keyframe) | timestamp u64 (µs) | length u32 | payload
// A publisher opens one stream per group of pictures per video layer and one per audio track.

const VERSION = 1;
const STREAM_HEADER_BYTES = 18;
const FRAME_HEADER_BYTES = 13;
const MAX_FRAME_BYTES = 1 << 20;
// Simulcast as the WebRTC path sends it: rid, downscale factor, bitrate.
const LAYERS = [
  { rid: 'q', scale: 4, bitrate: 150_000 },
  { rid: 'h', scale: 2, bitrate: 500_000 },
  { rid: 'f', scale: 1, bitrate: 1_500_000 },
];
const KEYFRAME_INTERVAL_FRAMES = 60;
// Frames a layer may have waiting for the network before its delta frames are skipped (and
// the next frame is a keyframe on a new stream).
const MAX_PENDING_WRITES = 30;

/** Whether this browser can send and receive media over a WebTransport signaling session. */
export function webTransportMediaSupport(transport) {
  if (transport?.kind !== 'webtransport') return 'signaling is not on WebTransport';
  for (const api of ['VideoEncoder', 'VideoDecoder', 'AudioEncoder', 'AudioDecoder', 'MediaStreamTrackProcessor', 'MediaStreamTrackGenerator']) {
    if (typeof globalThis[api] === 'undefined') return `this browser has no ${api}`;
  }
  return null;
}

function uuidBytes(id) {
  const hex = id.replace(/-/g, '');
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`not a UUID: ${id}`);
  return Uint8Array.from(hex.match(/../g), (b) => parseInt(b, 16));
}

function uuidString(bytes) {
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function streamHeader(producerId, layer) {
  const out = new Uint8Array(STREAM_HEADER_BYTES);
  out[0] = VERSION;
  out.set(uuidBytes(producerId), 1);
  out[17] = layer;
  return out;
}

function frameBytes(keyframe, timestampUs, data) {
  const out = new Uint8Array(FRAME_HEADER_BYTES + data.byteLength);
  const view = new DataView(out.buffer);
  out[0] = keyframe ? 1 : 0;
  view.setBigUint64(1, BigInt(Math.max(0, Math.round(timestampUs))));
  view.setUint32(9, data.byteLength);
  out.set(data, FRAME_HEADER_BYTES);
  return out;
}

/** One track layer's streams: a new one at each keyframe; writes are queued in order. */
class LayerSender {
  constructor(wt, producerId, layer, { newStreamAtKeyframe }) {
    this.wt = wt;
    this.producerId = producerId;
    this.layer = layer;
    this.newStreamAtKeyframe = newStreamAtKeyframe;
    this.writer = null;
    this.chain = Promise.resolve();
    this.pending = 0;
    this.needKeyframe = true;
    this.framesSent = 0;
    this.bytesSent = 0;
    this.skipped = 0;
  }

  /** Queue one encoded frame; false when it was skipped (the caller should force a keyframe). */
  send(keyframe, timestampUs, data) {
    if (this.needKeyframe && !keyframe) {
      this.skipped++;
      return false;
    }
    if (this.pending >= MAX_PENDING_WRITES) {
      // The path is behind: drop until the next keyframe, which starts a fresh stream.
      this.needKeyframe = true;
      this.skipped++;
      return false;
    }
    this.needKeyframe = false;
    this.pending++;
    const fresh = !this.writer || (keyframe && this.newStreamAtKeyframe);
    this.chain = this.chain.then(async () => {
      try {
        if (fresh) {
          if (this.writer) this.writer.close().catch(() => {});
          const stream = await this.wt.createUnidirectionalStream();
          this.writer = stream.getWriter();
          this.writer.closed.catch(() => {});
          await this.writer.write(streamHeader(this.producerId, this.layer));
        }
        await this.writer.write(frameBytes(keyframe, timestampUs, data));
        this.framesSent++;
        this.bytesSent += data.byteLength;
      } catch {
        this.writer = null;
        this.needKeyframe = true;
      } finally {
        this.pending--;
      }
    });
    return true;
  }

  close() {
    this.chain.then(() => this.writer?.close().catch(() => {}));
  }
}

function copyChunk(chunk) {
  const data = new Uint8Array(chunk.byteLength);
  chunk.copyTo(data);
  return data;
}

/** Publishes a camera/microphone stream with WebCodecs over the session `wt`. */
export class FramePublisher {
  constructor({ wt, request, log = () => {} }) {
    this.wt = wt;
    this.request = request;
    this.log = log;
    this.layers = [];
    this.audio = null;
    this.closed = false;
    this.keyframeWanted = new Set();
    this.producers = [];
  }

  async start(stream) {
    const video = stream.getVideoTracks()[0];
    const audio = stream.getAudioTracks()[0];
    if (video) await this.startVideo(video);
    if (audio) await this.startAudio(audio);
    return this.producers;
  }

  async startVideo(track) {
    const res = await this.request('publishFrames', { codec: 'vp8', layers: LAYERS.map((l) => l.rid) });
    this.videoId = res.producerId;
    this.producers.push(res.producer);
    this.layers = LAYERS.map((l, i) => ({ ...l, index: i, sender: new LayerSender(this.wt, res.producerId, i, { newStreamAtKeyframe: true }), encoder: null, frames: 0 }));
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    this.log(`publishing video over WebTransport: ${res.producerId} [${LAYERS.map((l) => l.rid).join(',')}]`);
    (async () => {
      for (;;) {
        const { value: frame, done } = await reader.read();
        if (done || this.closed) { frame?.close(); return; }
        try {
          await this.encodeVideo(frame);
        } catch (err) {
          this.log(`video encode: ${err.message}`, 'warn');
        } finally {
          frame.close();
        }
      }
    })();
  }

  async encodeVideo(frame) {
    for (const layer of this.layers) {
      if (layer.inactive) continue;
      const width = Math.max(2, Math.round(frame.displayWidth / layer.scale / 2) * 2);
      const height = Math.max(2, Math.round(frame.displayHeight / layer.scale / 2) * 2);
      if (!layer.encoder || layer.width !== width || layer.height !== height) {
        layer.encoder?.close();
        layer.width = width;
        layer.height = height;
        layer.encoder = new VideoEncoder({
          output: (chunk) => {
            if (!layer.sender.send(chunk.type === 'key', chunk.timestamp, copyChunk(chunk))) layer.forceKey = true;
          },
          error: (err) => this.log(`encoder ${layer.rid}: ${err.message}`, 'warn'),
        });
        layer.encoder.configure({ codec: 'vp8', width, height, bitrate: layer.bitrate, framerate: 30, latencyMode: 'realtime' });
        layer.frames = 0;
      }
      // A slow encoder skips input rather than queueing it.
      if (layer.encoder.encodeQueueSize > 2) continue;
      const keyFrame = layer.frames % KEYFRAME_INTERVAL_FRAMES === 0 || layer.forceKey || this.keyframeWanted.delete(layer.index);
      layer.forceKey = false;
      layer.frames++;
      // The encoder scales the frame to its configured size (Chromium does, in its pipeline).
      layer.encoder.encode(frame, { keyFrame });
    }
  }

  async startAudio(track) {
    const res = await this.request('publishFrames', { codec: 'opus' });
    this.producers.push(res.producer);
    const sender = new LayerSender(this.wt, res.producerId, 0, { newStreamAtKeyframe: false });
    this.audio = { sender, encoder: null };
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    this.log(`publishing audio over WebTransport: ${res.producerId}`);
    (async () => {
      for (;;) {
        const { value: data, done } = await reader.read();
        if (done || this.closed) { data?.close(); return; }
        try {
          if (!this.audio.encoder) {
            this.audio.encoder = new AudioEncoder({
              // Every Opus packet decodes on its own: each may start a stream.
              output: (chunk) => sender.send(true, chunk.timestamp, copyChunk(chunk)),
              error: (err) => this.log(`audio encoder: ${err.message}`, 'warn'),
            });
            this.audio.encoder.configure({ codec: 'opus', sampleRate: data.sampleRate, numberOfChannels: data.numberOfChannels, bitrate: 32_000 });
          }
          this.audio.encoder.encode(data);
        } finally {
          data.close();
        }
      }
    })();
  }

  /** Dynacast (`layersWanted`): stop encoding the layers no subscriber needs. */
  setActive(layers) {
    for (const l of this.layers) {
      const wanted = layers.find((w) => w.rid === l.rid);
      if (!wanted) continue;
      if (wanted.active && l.inactive) l.forceKey = true;
      l.inactive = !wanted.active;
    }
  }

  /** The server relays a subscriber's keyframe request (`keyFrameRequest`). */
  requestKeyframe(producerId, layer) {
    if (producerId === this.videoId) this.keyframeWanted.add(Number(layer));
  }

  stats() {
    return this.layers.map((l) => ({ rid: l.rid, width: l.width ?? 0, framesSent: l.sender.framesSent, skipped: l.sender.skipped, active: !l.inactive }));
  }

  close() {
    this.closed = true;
    for (const l of this.layers) { try { l.encoder?.close(); } catch { /* closed */ } l.sender.close(); }
    try { this.audio?.encoder?.close(); } catch { /* closed */ }
    this.audio?.sender.close();
  }
}

/** Reads exactly n bytes from a stream reader, keeping leftovers; null at a clean end. */
class ByteReader {
  constructor(reader) {
    this.reader = reader;
    this.buf = new Uint8Array(0);
  }

  async take(n) {
    while (this.buf.length < n) {
      const { value, done } = await this.reader.read();
      if (done) {
        if (this.buf.length === 0) return null;
        throw new Error('stream ended inside a frame');
      }
      const joined = new Uint8Array(this.buf.length + value.length);
      joined.set(this.buf);
      joined.set(value, this.buf.length);
      this.buf = joined;
    }
    const out = this.buf.slice(0, n);
    this.buf = this.buf.slice(n);
    return out;
  }
}

/**
 * Receives the server's media streams on session `wt` and decodes them with WebCodecs into
 * MediaStreamTracks (MediaStreamTrackGenerator) the page plays like WebRTC tracks.
 * `onTrack({producerId, kind, track, stats})` fires once per producer.
 */
export class FrameSubscriber {
  constructor({ wt, onTrack, log = () => {} }) {
    this.wt = wt;
    this.onTrack = onTrack;
    this.log = log;
    this.tracks = new Map(); // producerId -> state
    this.kinds = new Map(); // producerId -> 'audio' | 'video' (from consumeFrames)
    this.closed = false;
    this.acceptLoop();
  }

  expect(producerId, kind) {
    this.kinds.set(producerId, kind);
  }

  async acceptLoop() {
    const reader = this.wt.incomingUnidirectionalStreams.getReader();
    try {
      for (;;) {
        const { value: stream, done } = await reader.read();
        if (done || this.closed) return;
        this.readStream(stream).catch((err) => this.log(`media stream: ${err.message}`, 'warn'));
      }
    } catch (err) {
      if (!this.closed) this.log(`media streams ended: ${err.message}`, 'warn');
    }
  }

  track(producerId) {
    let t = this.tracks.get(producerId);
    if (t) return t;
    const kind = this.kinds.get(producerId) ?? 'video';
    const generator = new MediaStreamTrackGenerator({ kind });
    const writer = generator.writable.getWriter();
    t = { producerId, kind, generator, writer, decoder: null, layer: null, stats: { framesReceived: 0, bytesReceived: 0, framesDecoded: 0, frameWidth: 0, frameHeight: 0, streams: 0, errors: 0 } };
    const output = (item) => {
      t.stats.framesDecoded++;
      if (kind === 'video') {
        t.stats.frameWidth = item.displayWidth;
        t.stats.frameHeight = item.displayHeight;
      }
      // A generator that cannot keep up drops rather than queues.
      if (writer.desiredSize !== null && writer.desiredSize <= 0) { item.close(); return; }
      writer.write(item).catch(() => item.close());
    };
    const error = (err) => { t.stats.errors++; t.decoder = null; this.log(`decoder ${producerId}: ${err.message}`, 'warn'); };
    t.makeDecoder = () => {
      if (kind === 'video') {
        const d = new VideoDecoder({ output, error });
        d.configure({ codec: 'vp8', optimizeForLatency: true });
        return d;
      }
      const d = new AudioDecoder({ output, error });
      d.configure({ codec: 'opus', sampleRate: 48_000, numberOfChannels: 1 });
      return d;
    };
    this.tracks.set(producerId, t);
    this.onTrack?.({ producerId, kind, track: generator, stats: t.stats });
    return t;
  }

  async readStream(stream) {
    const bytes = new ByteReader(stream.getReader());
    const header = await bytes.take(STREAM_HEADER_BYTES);
    if (!header) return;
    if (header[0] !== VERSION) throw new Error(`stream header version ${header[0]}`);
    const producerId = uuidString(header.subarray(1, 17));
    const t = this.track(producerId);
    t.layer = header[17];
    t.stats.streams++;
    for (;;) {
      let head;
      try {
        head = await bytes.take(FRAME_HEADER_BYTES);
      } catch {
        return; // reset by the server (we were behind): the next stream starts at a keyframe
      }
      if (!head || this.closed) return;
      const view = new DataView(head.buffer, head.byteOffset);
      const keyframe = (head[0] & 1) === 1;
      const timestamp = Number(view.getBigUint64(1));
      const length = view.getUint32(9);
      if (length > MAX_FRAME_BYTES) throw new Error(`frame of ${length} bytes`);
      let data;
      try {
        data = await bytes.take(length);
      } catch {
        return;
      }
      if (!data) return;
      t.stats.framesReceived++;
      t.stats.bytesReceived += length;
      // A video decoder starts (or restarts after an error) at a keyframe only.
      if (!t.decoder) {
        if (t.kind === 'video' && !keyframe) continue;
        t.decoder = t.makeDecoder();
      }
      const type = t.kind === 'audio' || keyframe ? 'key' : 'delta';
      const chunk = t.kind === 'video'
        ? new EncodedVideoChunk({ type, timestamp, data })
        : new EncodedAudioChunk({ type, timestamp, data });
      try {
        t.decoder.decode(chunk);
      } catch (err) {
        t.stats.errors++;
        t.decoder = null;
        this.log(`decode ${producerId}: ${err.message}`, 'warn');
      }
    }
  }

  remove(producerId) {
    const t = this.tracks.get(producerId);
    if (!t) return;
    this.tracks.delete(producerId);
    try { t.decoder?.close(); } catch { /* closed */ }
    t.writer.close().catch(() => {});
    t.generator.stop();
  }

  close() {
    this.closed = true;
    for (const id of [...this.tracks.keys()]) this.remove(id);
  }
}
