#!/usr/bin/env node
// Unit checks of the WebTransport signaling framer in web-demo/signaling.js (no browser, no
// server): 4-byte big-endian length + UTF-8 JSON, reassembled from arbitrarily split or merged
// stream chunks.
//
//   node framing.mjs
//
// Exit status: 0 when every check passed, 1 otherwise.

import { readFile } from 'node:fs/promises';

// web-demo has no package.json saying "module", so load the file as an ES module by content.
const source = await readFile(new URL('../../web-demo/signaling.js', import.meta.url), 'utf8');
const { encodeFrame, FrameDecoder, base64ToUint8Array, MAX_FRAME_BYTES } =
  await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

let passed = 0;
let failed = 0;

function check(name, fn) {
  try {
    const detail = fn();
    passed++;
    console.log(`ok - ${name}${detail ? ` (${detail})` : ''}`);
  } catch (err) {
    failed++;
    console.log(`not ok - ${name}: ${err.message}`);
  }
}

function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: got ${a.slice(0, 200)}, expected ${e.slice(0, 200)}`);
}

const concat = (parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

const messages = [
  { type: 'authenticate', data: { token: 'x.y.z' }, requestId: 1 },
  { type: 'subscriberOffer', data: { sdp: 'v=0\r\n'.repeat(40), tracks: [] }, seq: 7 },
  { type: 'participantJoined', data: { participant: { displayName: 'Zoë 🎥 Ünïcödé' } }, seq: 8 },
  {},
];
const frames = messages.map((m) => encodeFrame(m));
const stream = concat(frames);
const texts = messages.map((m) => JSON.stringify(m));

check('encodeFrame writes a 4-byte big-endian length then UTF-8 JSON', () => {
  const f = encodeFrame({ type: 'ping' });
  const body = '{"type":"ping"}';
  assertEqual([...f.subarray(0, 4)], [0, 0, 0, body.length], 'header');
  assertEqual(new TextDecoder().decode(f.subarray(4)), body, 'payload');
  const big = encodeFrame({ s: 'a'.repeat(70000) });
  assertEqual([...big.subarray(0, 4)], [0, 1, 0x11, 0x78], 'header of a 70008-byte payload');
  const emoji = encodeFrame({ s: '🎥' });
  assertEqual(new DataView(emoji.buffer).getUint32(0), emoji.length - 4, 'length counts UTF-8 bytes, not characters');
});

check('all frames in one chunk', () => {
  assertEqual(new FrameDecoder().push(stream), texts, 'decoded');
});

check('every split point of the whole stream', () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new FrameDecoder();
    const out = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    assertEqual(out, texts, `split at ${cut}`);
    if (d.buffered !== 0) throw new Error(`split at ${cut}: ${d.buffered} bytes left over`);
  }
  return `${stream.length + 1} splits`;
});

check('one byte per chunk (headers and multi-byte characters split)', () => {
  const d = new FrameDecoder();
  const out = [];
  for (const b of stream) out.push(...d.push(new Uint8Array([b])));
  assertEqual(out, texts, 'decoded');
});

check('random chunking, many rounds', () => {
  let seed = 42;
  const rand = (n) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const long = concat(Array.from({ length: 20 }, () => stream));
  const expected = Array.from({ length: 20 }, () => texts).flat();
  for (let round = 0; round < 200; round++) {
    const d = new FrameDecoder();
    const out = [];
    for (let at = 0; at < long.length;) {
      const n = 1 + rand(700);
      out.push(...d.push(long.subarray(at, at + n)));
      at += n;
    }
    assertEqual(out, expected, `round ${round}`);
  }
  return `200 rounds over ${long.length} bytes`;
});

check('a frame larger than the initial buffer, arriving in pieces', () => {
  const msg = { type: 'subscriberOffer', data: { sdp: 'a=x\r\n'.repeat(50000) } };
  const f = encodeFrame(msg);
  const d = new FrameDecoder();
  const out = [];
  for (let at = 0; at < f.length; at += 4093) out.push(...d.push(f.subarray(at, at + 4093)));
  assertEqual(out.length, 1, 'frame count');
  assertEqual(JSON.parse(out[0]), msg, 'payload');
  return `${f.length} bytes`;
});

check('an empty frame and an ArrayBuffer chunk', () => {
  const empty = new Uint8Array([0, 0, 0, 0]);
  assertEqual(new FrameDecoder().push(concat([empty, frames[0]]).buffer), ['', texts[0]], 'decoded');
});

check('an absurd length is rejected (stream out of sync)', () => {
  const d = new FrameDecoder();
  try {
    d.push(new Uint8Array([0x7b, 0x22, 0x74, 0x79, 0x70])); // '{"typ': JSON without a header
  } catch (err) {
    return err.message;
  }
  throw new Error(`no error (limit ${MAX_FRAME_BYTES})`);
});

check('base64ToUint8Array decodes a SHA-256 value (also base64url, unpadded)', () => {
  const bytes = Uint8Array.from({ length: 32 }, (_, i) => i * 7 + 250);
  const b64 = Buffer.from(bytes).toString('base64');
  assertEqual([...base64ToUint8Array(b64)], [...bytes], 'base64');
  assertEqual([...base64ToUint8Array(Buffer.from(bytes).toString('base64url'))], [...bytes], 'base64url');
  let threw = false;
  try {
    base64ToUint8Array('not base64!');
  } catch {
    threw = true;
  }
  if (!threw) throw new Error('accepted garbage');
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
