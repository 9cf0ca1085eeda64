// mediasoup-client interop (issue #3): an unmodified mediasoup-client, bundled here at test time
// with esbuild (never committed), drives the seed's ORTC messages in headless Chromium.
//   A: device.load(routerRtpCapabilities) → send transport → produce audio + 3-layer simulcast
//   B: recv transport → consume both → decodes; setConsumerPreferredLayers(0) lowers B's width.
//
//   node mediasoup.mjs http://127.0.0.1:3000

import { fileURLToPath } from 'node:url';
import path from 'node:path';
import fs from 'node:fs';
import esbuild from 'esbuild';
import { createRun } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!base) {
  console.error('usage: node mediasoup.mjs <server base url>');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));

const bundle = esbuild.buildSync({
  entryPoints: [path.join(here, 'mediasoup-entry.mjs')],
  bundle: true,
  format: 'iife',
  globalName: 'mediasoupClient',
  platform: 'browser',
  write: false,
}).outputFiles[0].text;
const pageScript = fs.readFileSync(path.join(here, 'mediasoup-page.js'), 'utf8');

const run = createRun({ budgetMs: 100_000, pollMs: 500 });

/** Open a page on the server's origin whose HTML and scripts come from this test. */
async function open(label) {
  const p = await run.openPage(label);
  await p.page.route(`${base}/__ms/**`, (route) => {
    const url = route.request().url();
    if (url.endsWith('/bundle.js')) return route.fulfill({ contentType: 'text/javascript', body: bundle });
    if (url.endsWith('/page.js')) return route.fulfill({ contentType: 'text/javascript', body: pageScript });
    return route.fulfill({ status: 404, body: 'not found' });
  });
  // The document itself must come from the server: Chromium's local-network-access checks
  // treat an intercepted document as public and block its WebSocket to 127.0.0.1.
  await p.page.goto(`${base}/healthz`);
  await p.page.addScriptTag({ url: '/__ms/bundle.js' });
  await p.page.addScriptTag({ url: '/__ms/page.js' });
  await p.page.waitForFunction(() => window.msReady === true);
  return p;
}

await run.main(async () => {
  const room = `ms-${Date.now()}`;
  const A = await open('A');
  let producers;
  await run.check('A loads routerRtpCapabilities into a mediasoup-client Device', async () => {
    const r = await A.page.evaluate((room) => window.msTest.start(room, 'Alice', true), room);
    if (!r.canVideo) throw new Error('device cannot produce video');
    return `mediasoup-client ${r.version}`;
  });
  await run.check('A produces audio and 3-layer simulcast video', async () => {
    producers = await A.page.evaluate(() => window.msTest.publish());
    if (producers.layers !== 3) throw new Error(`${producers.layers} encodings`);
    return `audio ${producers.audio.slice(0, 8)}, video ${producers.video.slice(0, 8)}`;
  });

  const B = await open('B');
  await run.check('B joins and consumes both producers', async () => {
    await B.page.evaluate((room) => window.msTest.start(room, 'Bob', false), room);
    const consumed = await B.page.evaluate((ids) => window.msTest.consume(ids), [producers.audio, producers.video]);
    const video = consumed.find((c) => c.kind === 'video');
    if (video?.type !== 'simulcast') throw new Error(`video consumer type ${video?.type}`);
    return consumed.map((c) => `${c.kind} ${c.codec}`).join(', ');
  });
  await run.check('B decodes video and receives audio', async () => {
    const s = await run.waitFor('frames decoded', 20_000, async () => {
      const s = await B.page.evaluate(() => window.msTest.stats());
      return { done: s.framesDecoded > 10 && s.audioPackets > 20, value: s, last: JSON.stringify(s) };
    });
    return `${s.framesDecoded} frames at ${s.frameWidth}x${s.frameHeight}, ${s.audioPackets} audio packets`;
  });
  let wide;
  await run.check('B receives a high layer (width >= 640) once A ramps up', async () => {
    await B.page.evaluate(() => window.msTest.setLayers(2));
    wide = await run.waitFor('high layer', 30_000, async () => {
      const s = await B.page.evaluate(() => window.msTest.stats());
      return { done: s.frameWidth >= 640, value: s.frameWidth, last: JSON.stringify(s) };
    });
    return `width ${wide}`;
  });
  await run.check('setConsumerPreferredLayers(0) lowers B\'s decoded resolution', async () => {
    await B.page.evaluate(() => window.msTest.setLayers(0));
    const s = await run.waitFor('low layer', 20_000, async () => {
      const s = await B.page.evaluate(() => window.msTest.stats());
      return { done: s.frameWidth > 0 && s.frameWidth <= 400, value: s, last: JSON.stringify(s) };
    });
    if (!s.layerNotifications.includes(0)) throw new Error(`no consumerLayersChanged to 0: ${s.layerNotifications}`);
    return `${wide} -> ${s.frameWidth} wide; consumerLayersChanged ${JSON.stringify(s.layerNotifications)}`;
  });
  await run.check('consume of an unknown producer is a clear error', async () => {
    const r = await B.page.evaluate(() => window.msTest.tryRequest('consume', {
      producerId: 'not-a-producer',
      rtpCapabilities: { codecs: [] },
    }));
    if (!r.error?.startsWith('PRODUCER_NOT_FOUND')) throw new Error(JSON.stringify(r));
    return r.error;
  });
});
run.finish();
