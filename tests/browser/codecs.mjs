#!/usr/bin/env node
// One video codec end to end through the SFU, in headless Chromium.
//
//   node codecs.mjs http://127.0.0.1:3000 vp9
//
// 1. Capability: RTCRtpSender.getCapabilities('video') must list the codec. If this Chromium
//    cannot send it, the run proves that the demo refuses to publish it (an explicit error, not
//    a silent fallback to another codec), prints `# CANNOT ENCODE <codec>` and passes: there is
//    nothing to forward.
// 2. Page A publishes the fake camera (640x360, three simulcast layers) with ?codec=<codec>,
//    which keeps only that codec in setCodecPreferences. A's outbound-rtp stats must show that
//    codec on every layer it encodes.
// 3. Page B decodes A's video: framesDecoded grows and the inbound-rtp codec is the same codec.
// 4. A must encode several layers (Chromium 156 simulcasts all four codecs; VP9 and AV1 only
//    because the demo sets scalabilityMode on each encoding). B switches to the low layer
//    (decoded width drops to A's low-layer width) and back to high (width grows again), and
//    keeps decoding. Pass `single` as third argument for a codec a browser cannot simulcast:
//    then one layer is expected and the switch checks are skipped, saying so.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, demoState, remotes, CheckFailed, sleep, withTimeout } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
const codec = (process.argv[3] ?? '').toLowerCase();
const expectSimulcast = process.argv[4] !== 'single';
const MIME = { vp8: 'video/VP8', vp9: 'video/VP9', h264: 'video/H264', av1: 'video/AV1' }[codec];
if (!/^https?:\/\//.test(base) || !MIME) {
  console.error('usage: node codecs.mjs <base-url> vp8|vp9|h264|av1');
  process.exit(2);
}
const WIDTH = 640;
const HEIGHT = 360;

const run = createRun({ budgetMs: 110_000, pollMs: 500 });
const { check, waitFor, waitJoined } = run;

function demoUrl(room, name, extra = {}) {
  const q = new URLSearchParams({ room, name, autojoin: '1', ...extra });
  return `${base}/?${q}`;
}

const sent = (p) => p.page.evaluate(() => window.sfuDemo.sent());

async function findVideo(p) {
  return (await remotes(p)).find((r) => r.kind === 'video');
}

function describeVideo(v) {
  if (!v) return 'no remote video';
  const s = v.stats;
  return `${s.codec} ${s.frameWidth}x${s.frameHeight}, framesDecoded=${s.framesDecoded}, packets=${s.packetsReceived}, layer=${v.layer}`;
}

function describeSent(list) {
  return list.map((l) => `${l.rid ?? '-'}:${l.codec}/${l.encoder} ${l.frameWidth}w ${l.framesEncoded}f ${l.scalabilityMode ?? ''}`).join('; ') || 'no outbound video';
}

/** Resolves when framesDecoded grows over one second. */
async function waitDecoding(p, timeoutMs) {
  return waitFor(`${p.label} decodes video`, timeoutMs, async () => {
    const before = await findVideo(p);
    if (!before) return { last: 'no remote video yet' };
    await sleep(1000);
    const after = await findVideo(p);
    if (!after) return { last: 'remote video disappeared' };
    return after.stats.framesDecoded > before.stats.framesDecoded
      ? { done: true, value: { video: after, from: before.stats.framesDecoded } }
      : { last: `framesDecoded stuck (${describeVideo(after)})` };
  });
}

async function waitWidth(p, what, timeoutMs, accept) {
  return waitFor(what, timeoutMs, async () => {
    const v = await findVideo(p);
    if (!v) return { last: 'remote video gone' };
    return accept(v.stats.frameWidth) ? { done: true, value: v } : { last: describeVideo(v) };
  });
}

async function printPageState(p) {
  const s = await withTimeout(demoState(p), 3000, 'state');
  if (!s) {
    console.log(`# window.sfuDemo is not defined (url ${p.page.url()})`);
    return;
  }
  console.log(`# state=${s.state} participantId=${s.participantId} lastError=${s.lastError}`);
  console.log(`# sent: ${describeSent(await withTimeout(sent(p), 3000, 'sent'))}`);
  for (const x of await withTimeout(remotes(p), 3000, 'remotes')) {
    console.log(`# remote ${x.kind} ${x.producerId}: ${JSON.stringify(x.stats)} layer=${x.layer}`);
  }
}

// ---------------------------------------------------------------------------------------------

await run.main(async () => {
  const room = `codec-${codec}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  console.log(`# base ${base}, codec ${MIME}, room ${room}`);

  const A = await run.openPage('A');
  await A.page.goto(`${base}/`);
  const capabilities = await A.page.evaluate(() =>
    RTCRtpSender.getCapabilities('video').codecs.map((c) => `${c.mimeType} ${c.sdpFmtpLine ?? ''}`.trim()));
  const sendable = capabilities.some((c) => c.split(' ')[0].toLowerCase() === MIME.toLowerCase());
  console.log(`# sender capabilities: ${capabilities.join(' | ')}`);

  if (!sendable) {
    console.log(`# CANNOT ENCODE ${MIME}: this Chromium does not list it in RTCRtpSender.getCapabilities('video')`);
    await check(`A refuses to publish ${MIME} instead of falling back`, async () => {
      await A.page.goto(demoUrl(room, 'Alice', { codec, width: String(WIDTH), height: String(HEIGHT) }));
      const s = await waitFor('A reports the missing codec', 15_000, async () => {
        const st = await demoState(A);
        return st?.lastError?.includes('cannot send') ? { done: true, value: st } : { last: JSON.stringify(st) };
      });
      return s.lastError;
    });
    return;
  }

  await check(`A (Alice, ${WIDTH}x${HEIGHT}) joined publishing ${MIME}`, async () => {
    const layerParam = expectSimulcast ? {} : { layers: '1' };
    await A.page.goto(demoUrl(room, 'Alice', { codec, width: String(WIDTH), height: String(HEIGHT), ...layerParam }));
    const s = await waitJoined(A, 15_000);
    return `participantId=${s.participantId}`;
  });

  let layers;
  await check(`A encodes ${MIME} and nothing else`, async () => {
    layers = await waitFor('A encodes video', 20_000, async () => {
      const list = await sent(A);
      const active = list.filter((l) => l.framesEncoded > 0);
      if (!active.length) return { last: describeSent(list) };
      const wrong = active.filter((l) => l.codec?.toLowerCase() !== MIME.toLowerCase());
      if (wrong.length) return { fatal: `encoding another codec: ${describeSent(wrong)}` };
      return { done: true, value: active };
    });
    return describeSent(layers);
  });

  // Simulcast layers start one by one as the send-side bandwidth estimate grows. Give them
  // time; a codec Chromium does not simulcast stays on one layer however long we wait.
  await check(`A's ${MIME} layers ramp up`, async () => {
    const until = Date.now() + 20_000;
    let list = [];
    for (;;) {
      list = await sent(A);
      const active = list.filter((l) => l.framesEncoded > 0);
      if (active.length >= 3 || Date.now() >= until) break;
      await sleep(1000);
    }
    // Active = still encoding: framesEncoded grows over one second.
    await sleep(1000);
    const after = await sent(A);
    layers = after.filter((l) => l.framesEncoded > (list.find((x) => x.rid === l.rid)?.framesEncoded ?? 0));
    if (!layers.length) throw new CheckFailed(`A stopped encoding: ${describeSent(after)}`);
    return describeSent(layers);
  });
  const simulcast = layers.length > 1;
  if (expectSimulcast) {
    await check(`A simulcasts ${MIME}`, async () => {
      if (!simulcast) throw new CheckFailed(`only one layer is encoded: ${describeSent(layers)}`);
      return `${layers.length} layers`;
    });
  } else {
    console.log(`# ${MIME} published as ONE layer (${describeSent(layers)}): no layer switch to test`);
  }

  const B = await run.openPage('B');
  await check('B (Bob) joined', async () => {
    await B.page.goto(demoUrl(room, 'Bob'));
    const s = await waitJoined(B, 15_000);
    return `participantId=${s.participantId}`;
  });

  await check(`B decodes A's video as ${MIME}`, async () => {
    const { video, from } = await waitDecoding(B, 25_000);
    if (video.stats.codec?.toLowerCase() !== MIME.toLowerCase()) {
      throw new CheckFailed(`inbound codec is ${video.stats.codec}, expected ${MIME}`);
    }
    return `framesDecoded=${from}->${video.stats.framesDecoded}, ${describeVideo(video)}`;
  });

  if (!simulcast) return;
  const videoId = (await findVideo(B)).producerId;
  const widths = layers.map((l) => l.frameWidth).filter((w) => w > 0).sort((a, b) => a - b);
  const lowWidth = widths[0];
  const highWidth = widths[widths.length - 1];

  await check(`B's setLayer('low') lowers the decoded width to ~${lowWidth}`, async () => {
    await withTimeout(B.page.evaluate((id) => window.sfuDemo.setLayer(id, 'low'), videoId), 10_000, 'setLayer low');
    const v = await waitWidth(B, `width <= ${lowWidth} after low`, 20_000, (w) => w > 0 && w <= lowWidth);
    return `frameWidth=${v.stats.frameWidth}, layer=${v.layer}`;
  });

  await check(`B's setLayer('high') raises it again (> ${lowWidth})`, async () => {
    await withTimeout(B.page.evaluate((id) => window.sfuDemo.setLayer(id, 'high'), videoId), 10_000, 'setLayer high');
    // The high layer may be encoded smaller than its nominal size under CPU load; anything
    // above the low layer proves the switch.
    const v = await waitWidth(B, `width > ${lowWidth} after high (A's top layer ${highWidth})`, 25_000, (w) => w > lowWidth);
    return `frameWidth=${v.stats.frameWidth}, layer=${v.layer}`;
  });

  await check(`B keeps decoding ${MIME} after the switches`, async () => {
    const { video, from } = await waitDecoding(B, 10_000);
    if (video.stats.codec?.toLowerCase() !== MIME.toLowerCase()) {
      throw new CheckFailed(`inbound codec is ${video.stats.codec}`);
    }
    return `framesDecoded=${from}->${video.stats.framesDecoded}`;
  });
}, { pageState: printPageState, lastConsoleLines: 15 });

run.finish();
