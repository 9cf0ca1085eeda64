#!/usr/bin/env node
// End-to-end simulcast check against a running SFU.
//
//   node simulcast.mjs http://127.0.0.1:3000
//
// Two headless Chromium contexts open the web demo in the same room. Alice publishes the fake
// camera at exactly 1280x720 (three simulcast layers: 320, 640 and 1280 wide); Bob checks that
// he decodes her video and audio, that 'auto' ramps up to at least the middle layer, and that
// setPreferredLayer switches him to the low and then the high layer.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { chromium } from 'playwright-core';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
// Optional: page B opens the demo on another node (multi-node redirect check).
const baseB = (process.argv[3] ?? base).replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node simulcast.mjs <base-url>   e.g. http://127.0.0.1:3000');
  process.exit(2);
}

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/',
];

const BUDGET_MS = 90_000; // every check's timeout is capped by this overall deadline
const POLL_MS = 500;
const PROBE_TIMEOUT_MS = 5_000; // one page.evaluate must not eat the whole budget
const deadline = Date.now() + BUDGET_MS;

let passed = 0;
let failed = 0;

// Last resort if something hangs outside a polling loop (e.g. browser launch).
const watchdog = setTimeout(() => {
  failed++;
  console.log(`not ok - whole run exceeded ${(BUDGET_MS + 30_000) / 1000}s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(1);
}, BUDGET_MS + 30_000);
watchdog.unref();

class CheckFailed extends Error {}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Run one named check. `fn` returns a short detail string for the ok line.
 * A failure is counted and rethrown: later checks depend on earlier ones.
 */
async function check(name, fn) {
  try {
    const detail = await fn();
    passed++;
    console.log(`ok - ${name}${detail ? ` (${detail})` : ''}`);
  } catch (err) {
    failed++;
    // Playwright messages carry a colored call log; keep the first line, uncolored.
    const message = String(err?.message ?? err).replace(/\x1b\[[0-9;]*m/g, '').split('\n')[0];
    console.log(`not ok - ${name}: ${message}`);
    throw new CheckFailed(message);
  }
}

/**
 * Poll `probe` every POLL_MS until it returns {done: true, value}, or {fatal: message} to give
 * up at once. `describe` of the last result goes into the timeout message.
 */
async function waitFor(what, timeoutMs, probe) {
  const start = Date.now();
  const until = Math.min(start + timeoutMs, deadline);
  let last = 'no result yet';
  for (;;) {
    try {
      const r = await withTimeout(probe(), PROBE_TIMEOUT_MS, 'probe');
      if (r?.fatal) throw new CheckFailed(`${what}: ${r.fatal}`);
      if (r?.done) return r.value;
      if (r?.last !== undefined) last = r.last;
    } catch (err) {
      if (err instanceof CheckFailed) throw err;
      last = `probe failed: ${err.message}`;
    }
    if (Date.now() >= until) {
      const waited = ((Date.now() - start) / 1000).toFixed(1);
      throw new CheckFailed(`${what}: not reached within ${waited}s (last: ${last})`);
    }
    await sleep(POLL_MS);
  }
}

// ---------------------------------------------------------------------------------------------
// Page helpers

async function openPage(browser, label) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const messages = [];
  page.on('console', (m) => messages.push({ error: m.type() === 'error', text: `[${m.type()}] ${m.text()}` }));
  page.on('pageerror', (e) => messages.push({ error: true, text: `[pageerror] ${e.message}` }));
  page.on('crash', () => messages.push({ error: true, text: '[crash] page crashed' }));
  return { label, context, page, messages };
}

function demoUrl(room, name, extra = {}, origin = base) {
  const q = new URLSearchParams({ room, name, autojoin: '1', ...extra });
  return `${origin}/?${q}`;
}

const demoState = (p) =>
  p.page.evaluate(() => (window.sfuDemo
    ? { state: window.sfuDemo.state, lastError: window.sfuDemo.lastError, participantId: window.sfuDemo.participantId }
    : null));

const remotes = (p) => p.page.evaluate(() => window.sfuDemo.remotes());

async function waitJoined(p, timeoutMs) {
  return waitFor(`${p.label} joins`, timeoutMs, async () => {
    const s = await demoState(p);
    if (!s) return { last: 'window.sfuDemo not defined yet' };
    if (s.state === 'error') return { fatal: `page is in state error: ${s.lastError}` };
    return s.state === 'joined' ? { done: true, value: s } : { last: `state=${s.state}` };
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

/** Resolves when the video's framesDecoded grows over one second. */
async function waitDecoding(p, producerId, timeoutMs) {
  return waitFor(`${p.label} decodes video`, timeoutMs, async () => {
    const before = await findVideo(p, producerId);
    if (!before) return { last: 'no remote video yet' };
    await sleep(1000);
    const after = await findVideo(p, producerId);
    if (!after) return { last: 'remote video disappeared' };
    const grew = after.stats.framesDecoded > before.stats.framesDecoded;
    return grew
      ? { done: true, value: { video: after, from: before.stats.framesDecoded } }
      : { last: `framesDecoded stuck at ${after.stats.framesDecoded} (${describeVideo(after)})` };
  });
}

async function waitWidth(p, producerId, what, timeoutMs, accept) {
  return waitFor(what, timeoutMs, async () => {
    const v = await findVideo(p, producerId);
    if (!v) return { last: 'remote video gone' };
    return accept(v.stats.frameWidth) ? { done: true, value: v } : { last: describeVideo(v) };
  });
}

async function dumpDiagnostics(pages) {
  for (const p of pages) {
    console.log(`# --- page ${p.label} ---`);
    try {
      const s = await withTimeout(demoState(p), 3000, 'state');
      if (!s) {
        console.log(`# window.sfuDemo is not defined (url ${p.page.url()})`);
      } else {
        console.log(`# state=${s.state} participantId=${s.participantId} lastError=${s.lastError}`);
        const r = await withTimeout(remotes(p), 3000, 'remotes');
        for (const x of r) console.log(`# remote ${x.kind} ${x.producerId} from ${x.participantId}: ${JSON.stringify(x.stats)} layer=${x.layer}`);
      }
    } catch (err) {
      console.log(`# (could not read page state: ${err.message})`);
    }
    const errors = p.messages.filter((m) => m.error);
    console.log(`# console errors (${errors.length}):`);
    for (const m of errors.slice(-30)) console.log(`#   ${m.text}`);
    console.log('# last console lines:');
    for (const m of p.messages.slice(-20)) console.log(`#   ${m.text}`);
  }
}

// ---------------------------------------------------------------------------------------------

const pages = [];
let browser;
try {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  const room = `simulcast-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  console.log(`# base ${base}${baseB !== base ? ` (page B on ${baseB})` : ''}, room ${room}`);

  const A = await openPage(browser, 'A');
  pages.push(A);
  await check('A (Alice, 1280x720) joined', async () => {
    await A.page.goto(demoUrl(room, 'Alice', { width: '1280', height: '720' }));
    const s = await waitJoined(A, 15_000);
    return `participantId=${s.participantId}`;
  });

  const B = await openPage(browser, 'B');
  pages.push(B);
  await check('B (Bob) joined', async () => {
    await B.page.goto(demoUrl(room, 'Bob', {}, baseB));
    const s = await waitJoined(B, 15_000);
    return `participantId=${s.participantId}`;
  });

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

  await check('B shows a layer picker for the video', async () => {
    const n = await B.page.locator(`[data-producer-id="${videoId}"] select.layer-picker`).count();
    if (n !== 1) throw new CheckFailed(`expected 1 select.layer-picker under [data-producer-id="${videoId}"], found ${n}`);
    return 'select.layer-picker present';
  });

  await check("B's auto layer reaches >= 640 wide", async () => {
    const v = await waitWidth(B, videoId, 'width >= 640 under auto', 20_000, (w) => w >= 640);
    return `frameWidth=${v.stats.frameWidth}, layer=${v.layer}`;
  });

  await check("B's setLayer('low') gives <= 400 wide", async () => {
    await withTimeout(B.page.evaluate((id) => window.sfuDemo.setLayer(id, 'low'), videoId), 10_000, 'setLayer low');
    const v = await waitWidth(B, videoId, 'width <= 400 after low', 15_000, (w) => w > 0 && w <= 400);
    return `frameWidth=${v.stats.frameWidth}, layer=${v.layer}`;
  });

  await check("B's setLayer('high') gives >= 960 wide", async () => {
    await withTimeout(B.page.evaluate((id) => window.sfuDemo.setLayer(id, 'high'), videoId), 10_000, 'setLayer high');
    const v = await waitWidth(B, videoId, 'width >= 960 after high', 20_000, (w) => w >= 960);
    return `frameWidth=${v.stats.frameWidth}, layer=${v.layer}`;
  });

  await check('B keeps decoding after the switches', async () => {
    const { video, from } = await waitDecoding(B, videoId, 10_000);
    return `framesDecoded=${from}->${video.stats.framesDecoded}`;
  });
} catch (err) {
  if (!(err instanceof CheckFailed)) {
    failed++;
    console.log(`not ok - unexpected error: ${err.stack ?? err}`);
  }
  await dumpDiagnostics(pages);
} finally {
  await browser?.close().catch(() => {});
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
