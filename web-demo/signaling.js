// Signaling transports for the demo page: WebTransport first, WebSocket as the fallback.
//
// Both carry the same JSON envelopes `{type, data?, requestId?, error?, seq?}` and sit behind one
// small interface, so app.js never needs to know which one is in use:
//
//   transport.kind            'webtransport' | 'websocket'
//   transport.url             where it is connected
//   transport.fallbackReason  why WebTransport was not used (null when it was, or when forced off)
//   transport.send(obj)       serialize and send one message; throws when not open
//   transport.onmessage       (text) => void, one call per received message
//   transport.onclose         ({reason}) => void, once, when the connection ends by itself or
//                             through drop(); never after close()
//   transport.close(reason)   intentional close (Leave, page unload): onclose is not called
//   transport.drop()          abrupt close as if the network dropped (test hook): onclose is called
//
// WebTransport framing: one bidirectional stream; every message, both directions, is a 4-byte
// unsigned big-endian length N followed by N bytes of UTF-8 JSON.
//
// This module touches no DOM at load time, so Node can import it to test the framer
// (tests/browser/framing.mjs).

export const FRAME_HEADER_BYTES = 4;
/** A length beyond this means the stream is out of sync (or hostile): give up on it. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;
export const DEFAULT_WT_TIMEOUT_MS = 3000;
const WS_CONNECT_TIMEOUT_MS = 5000;
const WT_INFO_TIMEOUT_MS = 3000;

const encoder = new TextEncoder();

/** One message as a frame: 4-byte big-endian length + UTF-8 JSON. */
export function encodeFrame(message) {
  const payload = encoder.encode(typeof message === 'string' ? message : JSON.stringify(message));
  if (payload.length > MAX_FRAME_BYTES) throw new Error(`message of ${payload.length} bytes is too large to frame`);
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  new DataView(frame.buffer).setUint32(0, payload.length, false);
  frame.set(payload, FRAME_HEADER_BYTES);
  return frame;
}

/**
 * Reassembles frames from stream chunks, which may split a frame anywhere (even inside the
 * header) or carry several frames at once. `push(chunk)` returns the texts of every frame
 * completed by that chunk, in order; it throws on a length over `maxFrameBytes`.
 */
export class FrameDecoder {
  constructor(maxFrameBytes = MAX_FRAME_BYTES) {
    this.maxFrameBytes = maxFrameBytes;
    this.buf = new Uint8Array(4096);
    this.start = 0; // first unread byte
    this.end = 0; // one past the last buffered byte
    this.decoder = new TextDecoder('utf-8');
  }

  /** Bytes received but not yet part of a complete frame. */
  get buffered() {
    return this.end - this.start;
  }

  push(chunk) {
    if (!(chunk instanceof Uint8Array)) chunk = new Uint8Array(chunk);
    this.append(chunk);
    const frames = [];
    const view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    while (this.end - this.start >= FRAME_HEADER_BYTES) {
      const length = view.getUint32(this.start, false);
      if (length > this.maxFrameBytes) {
        throw new Error(`frame length ${length} exceeds the ${this.maxFrameBytes}-byte limit (stream out of sync?)`);
      }
      if (this.end - this.start < FRAME_HEADER_BYTES + length) break;
      const from = this.start + FRAME_HEADER_BYTES;
      frames.push(this.decoder.decode(this.buf.subarray(from, from + length)));
      this.start = from + length;
    }
    if (this.start === this.end) this.start = this.end = 0;
    return frames;
  }

  append(chunk) {
    const used = this.end - this.start;
    if (this.end + chunk.length > this.buf.length) {
      if (used + chunk.length <= this.buf.length) {
        this.buf.copyWithin(0, this.start, this.end); // room enough once compacted
      } else {
        let size = this.buf.length * 2;
        while (size < used + chunk.length) size *= 2;
        const grown = new Uint8Array(size);
        grown.set(this.buf.subarray(this.start, this.end));
        this.buf = grown;
      }
      this.start = 0;
      this.end = used;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }
}

/** Standard base64 (base64url and missing padding are tolerated) → bytes. */
export function base64ToUint8Array(text) {
  let s = String(text).trim().replace(/-/g, '+').replace(/_/g, '/');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s)) throw new Error('not base64');
  s = s.replace(/=+$/, '');
  if (s.length % 4 === 1) throw new Error('not base64 (bad length)');
  s += '='.repeat((4 - (s.length % 4)) % 4);
  const binary = atob(s);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

function describe(err) {
  if (!err) return 'unknown error';
  const parts = [err.message || err.name || String(err)];
  // WebTransportError carries where it came from and the QUIC/app error code, when known.
  if (err.source) parts.push(`source=${err.source}`);
  if (err.streamErrorCode != null) parts.push(`code=${err.streamErrorCode}`);
  return parts.join(', ');
}

// ---------------------------------------------------------------------------------------------
// WebSocket

class WebSocketSignaling {
  constructor(ws, url) {
    this.kind = 'websocket';
    this.url = url;
    this.fallbackReason = null;
    this.ws = ws;
    this.onmessage = null;
    this.onclose = null;
    this.ended = false;
    ws.onmessage = (ev) => {
      if (!this.ended) this.onmessage?.(typeof ev.data === 'string' ? ev.data : String(ev.data));
    };
    ws.onerror = () => {}; // always followed by close
    ws.onclose = (ev) => this.finish(`WebSocket closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`);
  }

  get isOpen() {
    return !this.ended && this.ws.readyState === WebSocket.OPEN;
  }

  send(message) {
    if (!this.isOpen) throw new Error('signaling connection is not open');
    this.ws.send(JSON.stringify(message));
  }

  finish(reason) {
    if (this.ended) return;
    this.ended = true;
    const cb = this.onclose;
    this.onclose = null;
    cb?.({ reason });
  }

  close(reason = 'leaving') {
    this.onclose = null;
    this.ended = true;
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, reason);
  }

  drop() {
    // A page cannot reset a TCP connection; 4000 (application-defined) marks the simulated drop.
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(4000, 'simulated network drop');
    this.finish('signaling dropped (test hook)');
  }
}

export function connectWebSocket(url, timeoutMs = WS_CONNECT_TIMEOUT_MS) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => {
      ws.onopen = ws.onclose = ws.onerror = null;
      ws.close();
      reject(new Error(`cannot connect to ${url} (no answer within ${timeoutMs} ms)`));
    }, timeoutMs);
    ws.onopen = () => {
      clearTimeout(timer);
      resolve(new WebSocketSignaling(ws, url));
    };
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      clearTimeout(timer);
      reject(new Error(`cannot connect to ${url} (close code ${ev.code})`));
    };
  });
}

// ---------------------------------------------------------------------------------------------
// WebTransport

class WebTransportSignaling {
  constructor(wt, stream, url) {
    this.kind = 'webtransport';
    this.url = url;
    this.fallbackReason = null;
    this.wt = wt;
    this.reader = stream.readable.getReader();
    this.writer = stream.writable.getWriter();
    this.onmessage = null;
    this.onclose = null;
    this.ended = false;
    this.writer.closed.catch(() => {});
    wt.closed.then(
      (info) => this.finish(`WebTransport session closed${info?.closeCode ? ` (code ${info.closeCode}${info.reason ? `: ${info.reason}` : ''})` : ''}`),
      (err) => this.finish(`WebTransport session failed: ${describe(err)}`),
    );
    this.readLoop();
  }

  get isOpen() {
    return !this.ended;
  }

  async readLoop() {
    const frames = new FrameDecoder();
    try {
      for (;;) {
        const { value, done } = await this.reader.read();
        if (done) {
          this.finish('signaling stream ended by the server');
          return;
        }
        for (const text of frames.push(value)) {
          if (this.ended) return;
          this.onmessage?.(text);
        }
      }
    } catch (err) {
      this.finish(`signaling stream failed: ${describe(err)}`);
    }
  }

  send(message) {
    if (this.ended) throw new Error('signaling connection is not open');
    // One write per message: header and payload together.
    this.writer.write(encodeFrame(message)).catch((err) => this.finish(`signaling write failed: ${describe(err)}`));
  }

  finish(reason) {
    if (this.ended) return;
    this.ended = true;
    const cb = this.onclose;
    this.onclose = null;
    this.shutdown(1, reason);
    cb?.({ reason });
  }

  shutdown(closeCode, reason) {
    try { this.reader.cancel().catch(() => {}); } catch { /* already gone */ }
    try { this.writer.abort().catch(() => {}); } catch { /* already gone */ }
    try { this.wt.close({ closeCode, reason: String(reason).slice(0, 100) }); } catch { /* already closed */ }
  }

  close(reason = 'leaving') {
    this.onclose = null;
    if (this.ended) return;
    this.ended = true;
    // Let queued writes (e.g. leaveRoom) go out first, then close the session.
    this.writer.close().catch(() => {}).finally(() => {
      try { this.wt.close({ closeCode: 0, reason }); } catch { /* already closed */ }
    });
  }

  drop() {
    // Reset the stream both ways and tear the session down, without a goodbye message.
    this.finish('signaling dropped (test hook)');
  }
}

/**
 * Asks the server where its WebTransport endpoint is. Resolves to {url, hashes} or throws with
 * the reason to fall back (404: the server offers none).
 */
export async function fetchWebTransportInfo(timeoutMs = WT_INFO_TIMEOUT_MS, baseUrl = location.origin) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  let res;
  try {
    res = await fetch(new URL('/webtransport', baseUrl), { cache: 'no-store', signal: abort.signal });
  } catch (err) {
    throw new Error(`GET /webtransport failed: ${abort.signal.aborted ? `no answer within ${timeoutMs} ms` : describe(err)}`);
  } finally {
    clearTimeout(timer);
  }
  // 404 is the contract for "no WebTransport here"; 204 and `{"url": null}` are read the same way.
  if (res.status === 404 || res.status === 204) throw new Error(`the server offers no WebTransport (GET /webtransport: ${res.status})`);
  if (!res.ok) throw new Error(`GET /webtransport: HTTP ${res.status}`);
  let body;
  try {
    body = await res.json();
  } catch {
    throw new Error('GET /webtransport returned no JSON');
  }
  if (body && body.url == null) throw new Error('the server offers no WebTransport (GET /webtransport: no url)');
  if (!body || typeof body.url !== 'string' || !body.url) throw new Error('GET /webtransport returned no url');
  const hashes = (Array.isArray(body.certificateHashes) ? body.certificateHashes : []).map((h, i) => {
    if (!h || typeof h.value !== 'string') throw new Error(`certificateHashes[${i}] has no value`);
    let value;
    try {
      value = base64ToUint8Array(h.value);
    } catch (err) {
      throw new Error(`certificateHashes[${i}].value: ${err.message}`);
    }
    const algorithm = typeof h.algorithm === 'string' ? h.algorithm : 'sha-256';
    if (algorithm === 'sha-256' && value.length !== 32) {
      throw new Error(`certificateHashes[${i}] is ${value.length} bytes, a SHA-256 hash has 32`);
    }
    return { algorithm, value };
  });
  return { url: new URL(body.url, baseUrl).href, hashes };
}

export async function connectWebTransport(timeoutMs = DEFAULT_WT_TIMEOUT_MS, baseUrl = location.origin) {
  if (typeof WebTransport === 'undefined') {
    throw new Error(window.isSecureContext ? 'this browser has no WebTransport' : 'WebTransport needs a secure context (https or localhost)');
  }
  const { url, hashes } = await fetchWebTransportInfo(WT_INFO_TIMEOUT_MS, baseUrl);
  let wt = null;
  try {
    wt = new WebTransport(url, hashes.length ? { serverCertificateHashes: hashes } : {});
    // Observe both so that a failure here is never reported as an unhandled rejection.
    wt.ready.catch(() => {});
    wt.closed.catch(() => {});
    await withTimeout(wt.ready, timeoutMs, `WebTransport handshake with ${url}`);
    const stream = await withTimeout(wt.createBidirectionalStream(), timeoutMs, 'opening the signaling stream');
    return new WebTransportSignaling(wt, stream, url);
  } catch (err) {
    try { wt?.close(); } catch { /* never opened */ }
    throw new Error(`${url}: ${describe(err)}`);
  }
}

/**
 * Connects by preference: 'auto' tries WebTransport and falls back to WebSocket; 'wt' uses
 * WebTransport only; 'ws' WebSocket only. `log(message, level)` hears about fallbacks.
 */
export async function connectSignaling({ preference = 'auto', wtTimeoutMs = DEFAULT_WT_TIMEOUT_MS, log = () => {}, baseUrl = location.origin } = {}) {
  let fallbackReason = null;
  if (preference !== 'ws') {
    try {
      return await connectWebTransport(wtTimeoutMs, baseUrl);
    } catch (err) {
      if (preference === 'wt') throw new Error(`WebTransport (forced): ${err.message}`);
      fallbackReason = err.message;
      log(`WebTransport not used: ${err.message}; falling back to WebSocket`, 'warn');
    }
  }
  // The node we talk to: this page's origin, or the node a room was redirected to.
  const base = new URL(baseUrl);
  const transport = await connectWebSocket(`${base.protocol === 'https:' ? 'wss' : 'ws'}://${base.host}/ws`);
  transport.fallbackReason = fallbackReason;
  return transport;
}
