#!/usr/bin/env node
// End-to-end check of WebTransport signaling, its WebSocket fallback, and session resume.
//
//   node webtransport.mjs http://127.0.0.1:3000 [mode]
//
// Modes:
//   wt (default)  The server offers WebTransport (GET /webtransport). Alice (1280x720) and Bob join
//                 one room; both must signal over WebTransport; Bob decodes Alice's video and
//                 receives her audio. Then Bob's signaling connection is dropped
//                 (sfuDemo.dropSignaling()): he must resume the session (sfuDemo.resumes >= 1,
//                 same participant, still 'joined', no full rejoin) and keep decoding throughout.
//   fallback      The server advertises a WebTransport URL where nothing listens: both pages must
//                 end up on WebSocket within ~10 s, and Bob decodes Alice's video.
//   ws            As wt, but both pages are forced to WebSocket (?transport=ws): resume over
//                 WebSocket.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, CheckFailed, PROBE_TIMEOUT_MS, sleep, withTimeout } from './harness.mjs';

const MODES = ['wt', 'fallback', 'ws'];
const base = (process.argv[2] ?? '').replace(/\/+$/, '');
const mode = process.argv[3] ?? 'wt';
if (!/^https?:\/\//.test(base) || !MODES.includes(mode)) {
  console.error(`usage: node webtransport.mjs <base-url> [${MODES.join('|')}]   e.g. http://127.0.0.1:3000 wt`);
  process.exit(2);
}

const FALLBACK_WITHIN_MS = 10_000;

const run = createRun({ budgetMs: 90_000, pollMs: 250 });
const { check, waitFor } = run;

// ---------------------------------------------------------------------------------------------
// Page helpers

function demoUrl(room, name, extra = {}) {
  const q = new URLSearchParams({ room, name, autojoin: '1', ...extra });
  if (mode === 'ws') q.set('transport', 'ws');
  return `${base}/?${q}`;
}

const demoState = (p) =>
  p.page.evaluate(() => {
    const d = window.sfuDemo;
    if (!d) return null;
    return {
      state: d.state,
      lastError: d.lastError,
      participantId: d.participantId,
      transport: d.transport,
      fallbackReason: d.transportFallbackReason ?? null,
      signaling: d.signaling,
      resumes: d.resumes,
      rejoins: d.rejoins,
      lastSeq: d.lastSeq,
      badge: document.getElementById('transport')?.textContent ?? null,
    };
  });

const describeState = (s) =>
  s ? `state=${s.state} transport=${s.transport} signaling=${s.signaling} resumes=${s.resumes} rejoins=${s.rejoins} ` +
    `lastSeq=${s.lastSeq}${s.fallbackReason ? ` fallbackReason="${s.fallbackReason}"` : ''}${s.lastError ? ` lastError="${s.lastError}"` : ''}`
    : 'window.sfuDemo not defined yet';

const remotes = (p) => p.page.evaluate(() => window.sfuDemo.remotes());

async function waitJoined(p, timeoutMs) {
  return waitFor(`${p.label} joins`, timeoutMs, async () => {
    const s = await demoState(p);
    if (!s) return { last: 'window.sfuDemo not defined yet' };
    if (s.state === 'error') return { fatal: `page is in state error: ${s.lastError}` };
    return s.state === 'joined' ? { done: true, value: s } : { last: describeState(s) };
  });
}

/** The remote video with `producerId` (the first video if undefined), or undefined. */
async function findVideo(p, producerId) {
  const list = await remotes(p);
  return list.find((r) => r.kind === 'video' && (!producerId || r.producerId === producerId));
}

function describeVideo(v) {
  if (!v) return 'no remote video';
  const s = v.stats;
  return `${s.frameWidth}x${s.frameHeight}, framesDecoded=${s.framesDecoded}, packets=${s.packetsReceived}, layer=${v.layer}`;
}

/** Resolves when the video's framesDecoded grows over one second (and passes `above`, if given). */
async function waitDecoding(p, producerId, timeoutMs, above = -1) {
  return waitFor(`${p.label} decodes video`, timeoutMs, async () => {
    const before = await findVideo(p, producerId);
    if (!before) return { last: 'no remote video yet' };
    await sleep(1000);
    const after = await findVideo(p, producerId);
    if (!after) return { last: 'remote video disappeared' };
    const grew = after.stats.framesDecoded > before.stats.framesDecoded && after.stats.framesDecoded > above;
    return grew
      ? { done: true, value: { video: after, from: before.stats.framesDecoded } }
      : { last: `framesDecoded stuck at ${after.stats.framesDecoded} (${describeVideo(after)})` };
  });
}

/** The demo's state and remote tracks, for the diagnostics printed after a failure. */
async function printPageState(p) {
  const s = await withTimeout(demoState(p), 3000, 'state');
  if (!s) {
    console.log(`# window.sfuDemo is not defined (url ${p.page.url()})`);
  } else {
    console.log(`# participantId=${s.participantId} ${describeState(s)} badge="${s.badge}"`);
    const r = await withTimeout(remotes(p), 3000, 'remotes');
    for (const x of r) console.log(`# remote ${x.kind} ${x.producerId} from ${x.participantId}: ${JSON.stringify(x.stats)} layer=${x.layer}`);
  }
}

/** The demo's on-page log, for the diagnostics printed after a failure. */
async function printPageLog(p) {
  const logText = await withTimeout(p.page.evaluate(() => document.getElementById('log')?.textContent ?? ''), 3000, 'log');
  console.log('# page log (last 25 lines):');
  for (const line of logText.trim().split('\n').slice(-25)) console.log(`#   ${line}`);
}

/** What the server says at GET /webtransport, for the log (the page fetches it itself). */
async function probeWebTransportInfo() {
  try {
    const res = await withTimeout(fetch(`${base}/webtransport`, { cache: 'no-store' }), 5000, 'GET /webtransport');
    const text = await res.text();
    let detail = '';
    try {
      const body = JSON.parse(text);
      detail = ` url=${body.url} certificateHashes=${Array.isArray(body.certificateHashes) ? body.certificateHashes.length : 'none'}`;
    } catch { /* not JSON */ }
    return { status: res.status, line: `HTTP ${res.status}${detail}` };
  } catch (err) {
    return { status: 0, line: `failed: ${err.message}` };
  }
}

// ---------------------------------------------------------------------------------------------

async function joinAndCheckTransport(label, name, room, extra, expected) {
  const p = await run.openPage(label);
  await check(`${label} (${name}${extra.width ? `, ${extra.width}x${extra.height}` : ''}) joined`, async () => {
    await p.page.goto(demoUrl(room, name, extra));
    const s = await waitJoined(p, 20_000);
    return `participantId=${s.participantId}`;
  });
  await check(`${label} signals over ${expected}`, async () => {
    // Joined implies connected, so the transport is settled by now.
    const s = await demoState(p);
    if (s.transport !== expected) throw new CheckFailed(`sfuDemo.transport is ${s.transport}, expected ${expected} (${describeState(s)})`);
    return `badge "${s.badge}"`;
  });
  return p;
}

await run.main(async () => {
  const room = `wt-${mode}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const info = await probeWebTransportInfo();
  console.log(`# base ${base}, mode ${mode}, room ${room}, GET /webtransport: ${info.line}`);

  if (mode === 'fallback') {
    for (const [label, name, extra] of [['A', 'Alice', { width: '1280', height: '720' }], ['B', 'Bob', {}]]) {
      const p = await run.openPage(label);
      await check(`${label} (${name}) falls back to WebSocket within ${FALLBACK_WITHIN_MS / 1000}s`, async () => {
        const started = Date.now();
        await p.page.goto(demoUrl(room, name, extra));
        const s = await waitFor(`${label} on websocket`, FALLBACK_WITHIN_MS, async () => {
          const st = await demoState(p);
          if (!st) return { last: 'window.sfuDemo not defined yet' };
          if (st.state === 'error') return { fatal: `page is in state error: ${st.lastError}` };
          if (st.transport === 'webtransport') return { fatal: 'page connected over WebTransport (expected nothing to listen there)' };
          return st.transport === 'websocket' ? { done: true, value: st } : { last: describeState(st) };
        });
        return `after ${((Date.now() - started) / 1000).toFixed(1)}s; reason: ${s.fallbackReason ?? 'none given'}`;
      });
      await check(`${label} joined over the fallback`, async () => {
        const s = await waitJoined(p, 15_000);
        if (s.transport !== 'websocket') throw new CheckFailed(`transport changed to ${s.transport}`);
        return `participantId=${s.participantId}, badge "${s.badge}"`;
      });
    }
    const B = run.pages[1];
    await check("B decoded frames of A's video", async () => {
      const { video, from } = await waitDecoding(B, undefined, 20_000);
      return `framesDecoded=${from}->${video.stats.framesDecoded}, ${video.stats.frameWidth}x${video.stats.frameHeight}`;
    });
  } else {
    const expected = mode === 'ws' ? 'websocket' : 'webtransport';
    await joinAndCheckTransport('A', 'Alice', room, { width: '1280', height: '720' }, expected);
    const B = await joinAndCheckTransport('B', 'Bob', room, {}, expected);

    let videoId;
    await check("B decoded frames of A's video", async () => {
      const { video, from } = await waitDecoding(B, undefined, 20_000);
      videoId = video.producerId;
      return `framesDecoded=${from}->${video.stats.framesDecoded}, ${video.stats.frameWidth}x${video.stats.frameHeight}, producer ${videoId}`;
    });

    await check("B receives A's audio", async () => {
      const a = await waitFor('audio packets', 10_000, async () => {
        const list = await remotes(B);
        const audio = list.find((r) => r.kind === 'audio' && r.stats.packetsReceived > 0);
        return audio ? { done: true, value: audio } : { last: list.some((r) => r.kind === 'audio') ? 'audio without packets' : 'no remote audio' };
      });
      return `packetsReceived=${a.stats.packetsReceived}`;
    });

    const before = await demoState(B);
    const framesBefore = (await findVideo(B, videoId))?.stats.framesDecoded ?? 0;
    await check("B's signaling connection is dropped", async () => {
      const dropped = await withTimeout(B.page.evaluate(() => window.sfuDemo.dropSignaling()), PROBE_TIMEOUT_MS, 'dropSignaling');
      if (dropped !== true) throw new CheckFailed(`dropSignaling() returned ${dropped}`);
      return `at lastSeq=${before.lastSeq}, framesDecoded=${framesBefore}`;
    });

    await check('B resumes the session', async () => {
      const s = await waitFor('B resumes', 20_000, async () => {
        const st = await demoState(B);
        if (st.state === 'error') return { fatal: `page is in state error: ${st.lastError}` };
        if (st.rejoins > before.rejoins) return { fatal: `resume failed and the page rejoined from scratch (${describeState(st)})` };
        const done = st.resumes > before.resumes && st.state === 'joined' && st.signaling === 'connected';
        return done ? { done: true, value: st } : { last: describeState(st) };
      });
      if (s.participantId !== before.participantId) {
        throw new CheckFailed(`participantId changed from ${before.participantId} to ${s.participantId}`);
      }
      if (s.transport !== expected) throw new CheckFailed(`resumed over ${s.transport}, expected ${expected}`);
      return `resumes=${s.resumes}, still ${s.state} as ${s.participantId} over ${s.transport}, lastSeq=${s.lastSeq}`;
    });

    await check('B keeps decoding the same video after the resume', async () => {
      const { video, from } = await waitDecoding(B, videoId, 10_000, framesBefore);
      return `framesDecoded ${framesBefore} before the drop, now ${from}->${video.stats.framesDecoded}`;
    });

    await check('B can still make requests after the resume', async () => {
      const res = await withTimeout(B.page.evaluate((id) => window.sfuDemo.setLayer(id, 'auto'), videoId), 10_000, 'setLayer auto');
      return `setPreferredLayer -> ${JSON.stringify(res)}`;
    });
  }
}, { pageState: printPageState, extra: printPageLog });

run.finish();
