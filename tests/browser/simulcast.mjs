#!/usr/bin/env node
// End-to-end simulcast check against a running SFU.
//
//   node simulcast.mjs http://127.0.0.1:3000
//
// Two headless Chromium contexts open the web demo in the same room. Alice publishes the fake
// camera at exactly 1280x720 (three simulcast layers: 320, 640 and 1280 wide); Bob checks that
// he decodes her video and audio, that 'auto' ramps up to at least the middle layer, and that
// setPreferredLayer switches him to the low and then the high layer; while he is on low, Alice
// is told (dynacast) to stop her two upper layers, and resumes them when he asks for high.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, demoState, remotes, CheckFailed, sleep, withTimeout } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
// Optional: page B opens the demo on another node (multi-node redirect check); with
// `viewer` after it, B joins without a camera (a relay node serves it the owner's room).
const baseB = (process.argv[3] ?? base).replace(/\/+$/, '');
const viewerB = process.argv[4] === 'viewer';
// `no-bwe` after that: B's node runs without bandwidth estimation (no estimate to show).
const estimatedB = process.argv[5] !== 'no-bwe';
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node simulcast.mjs <base-url>   e.g. http://127.0.0.1:3000');
  process.exit(2);
}

const run = createRun({ budgetMs: 90_000, pollMs: 500 });
const { check, waitFor, waitJoined } = run;

// ---------------------------------------------------------------------------------------------
// Page helpers

function demoUrl(room, name, extra = {}, origin = base) {
  const q = new URLSearchParams({ room, name, autojoin: '1', ...extra });
  return `${origin}/?${q}`;
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

/** The demo's state and remote tracks, for the diagnostics printed after a failure. */
async function printPageState(p) {
  const s = await withTimeout(demoState(p), 3000, 'state');
  if (!s) {
    console.log(`# window.sfuDemo is not defined (url ${p.page.url()})`);
  } else {
    console.log(`# state=${s.state} participantId=${s.participantId} lastError=${s.lastError}`);
    const r = await withTimeout(remotes(p), 3000, 'remotes');
    for (const x of r) console.log(`# remote ${x.kind} ${x.producerId} from ${x.participantId}: ${JSON.stringify(x.stats)} layer=${x.layer}`);
  }
}

// ---------------------------------------------------------------------------------------------

await run.main(async () => {
  const room = `simulcast-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  console.log(`# base ${base}${baseB !== base ? ` (page B on ${baseB})` : ''}, room ${room}`);

  const A = await run.openPage('A');
  await check('A (Alice, 1280x720) joined', async () => {
    await A.page.goto(demoUrl(room, 'Alice', { width: '1280', height: '720' }));
    const s = await waitJoined(A, 15_000);
    return `participantId=${s.participantId}`;
  });

  const B = await run.openPage('B');
  await check('B (Bob) joined', async () => {
    await B.page.goto(demoUrl(room, 'Bob', viewerB ? { publish: '0' } : {}, baseB));
    const s = await waitJoined(B, 15_000);
    if (viewerB) {
      const relayedFrom = await B.page.evaluate(() => window.sfuDemo.relayedFrom);
      if (relayedFrom?.replace(/\/+$/, '') !== base) throw new CheckFailed(`B is not served a relayed room (relayedFrom=${relayedFrom}, owner ${base})`);
      return `participantId=${s.participantId}, relayed from ${relayedFrom}`;
    }
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

  // Dynacast: B, the only subscriber, takes the low layer, so A is told to stop the others.
  await check('A stops sending the layers nobody receives', async () => {
    const sent = await waitFor('h and f inactive at A', 10_000, async () => {
      const layers = await A.page.evaluate(() => window.sfuDemo.sent());
      const off = layers.filter((l) => (l.rid === 'h' || l.rid === 'f') && l.active === false);
      return { done: off.length === 2, value: layers, last: JSON.stringify(layers.map((l) => [l.rid, l.active])) };
    });
    return sent.map((l) => `${l.rid}:${l.active ? 'on' : 'off'}`).join(' ');
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

  // The server's estimator tells B what its downlink carries (bandwidthEstimate); the tile's
  // stats line shows it beside the layer.
  if (estimatedB) await check("B's video tile shows the server's bandwidth estimate", async () => {
    const stats = B.page.locator(`[data-producer-id="${videoId}"] .stats`);
    const shown = await waitFor('estimate on the tile', 10_000, async () => {
      const v = (await remotes(B)).find((r) => r.producerId === videoId);
      const text = (await stats.textContent()) ?? '';
      return v?.estimateBps > 0 && text.includes('link ≈')
        ? { done: true, value: { bps: v.estimateBps, text } }
        : { last: `estimateBps=${v?.estimateBps}, tile "${text}"` };
    });
    return `estimateBps=${shown.bps}; "${shown.text.match(/link ≈ \d+ kbps/)?.[0]}"`;
  });

  // Pinning ranks A's video first for B's link (setConsumerPriority 255); the server answers.
  await check('B pins the video with the tile\'s pin box', async () => {
    const errorBefore = (await demoState(B))?.lastError ?? null;
    await B.page.locator(`[data-producer-id="${videoId}"] input.pin`).check();
    const v = await waitFor('pinned', 10_000, async () => {
      const s = await demoState(B);
      if ((s?.lastError ?? null) !== errorBefore) return { fatal: `demo error: ${s.lastError}` };
      const r = (await remotes(B)).find((x) => x.producerId === videoId);
      return r?.pinned ? { done: true, value: r } : { last: `pinned=${r?.pinned}` };
    });
    return `pinned=${v.pinned}, layer=${v.layer}`;
  });
}, { pageState: printPageState, lastConsoleLines: 20 });

run.finish();
