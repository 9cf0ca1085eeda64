#!/usr/bin/env node
// Join → first remote video frame, with the publisher already live, as a user of the web demo
// sees it.
//
//   node join_latency.mjs <base-url>
//
// Page P publishes (the demo's default 3-layer simulcast). Then, three times, a fresh page V
// joins the room with the unmodified demo; its `sfuDemo.timeline` gives the milliseconds from
// Join to joined, to its subscriber connection being up, and to the first remote video frame
// presented (requestVideoFrameCallback). Prints every run and the median; fails when the median
// is over the budget given as the second argument (default 1000 ms).
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, demoState } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
const budgetMs = Number(process.argv[3] ?? 1000);
if (!/^https?:\/\//.test(base) || !(budgetMs > 0)) {
  console.error('usage: node join_latency.mjs <base-url> [median budget ms]');
  process.exit(2);
}

const run = createRun({ budgetMs: 60_000, pollMs: 100 });
const { check, waitFor, waitJoined } = run;
const RUNS = 3;

// Viewers join without a camera (`publish=0`): the figure is a viewer's Join → first frame,
// not the time three more pages encoding 720p simulcast on two cores take to settle.
const demoUrl = (room, name, extra = {}) => `${base}/?${new URLSearchParams({ room, name, autojoin: '1', ...extra })}`;
const timeline = (p) => p.page.evaluate(() => window.sfuDemo.timeline);

await run.main(async () => {
  const room = `join-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  console.log(`# base ${base}, room ${room}`);

  const P = await run.openPage('P (publisher)');
  await check('P joined and its video is encoding', async () => {
    await P.page.goto(demoUrl(room, 'Pub'));
    await waitJoined(P, 15_000);
    const sent = await waitFor('frames encoded', 15_000, async () => {
      const layers = await P.page.evaluate(() => window.sfuDemo.sent());
      const top = layers.find((l) => l.framesEncoded > 30);
      return top ? { done: true, value: layers } : { last: JSON.stringify(layers) };
    });
    return `${sent.length} layer(s)`;
  });

  const firstFrames = [];
  for (let i = 1; i <= RUNS; i++) {
    const V = await run.openPage(`V${i} (viewer)`);
    await check(`V${i} joins and presents P's first video frame`, async () => {
      await V.page.goto(demoUrl(room, `Viewer${i}`, { publish: '0' }));
      const t = await waitFor('first remote frame', 10_000, async () => {
        const s = await demoState(V);
        if (s?.state === 'error') return { fatal: s.lastError };
        const tl = await timeline(V);
        return tl?.firstRemoteFrame !== undefined ? { done: true, value: tl } : { last: JSON.stringify(tl) };
      });
      firstFrames.push(t.firstRemoteFrame);
      return `ms after Join: ${Object.entries(t).sort((a, b) => a[1] - b[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`;
    });
    await V.context.close();
  }

  await check(`median Join → first frame within ${budgetMs} ms`, async () => {
    const sorted = [...firstFrames].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    console.log(`# join-to-first-frame ms: ${firstFrames.join(', ')}; median ${median}`);
    if (median > budgetMs) throw new Error(`median ${median} ms`);
    return `median ${median} ms`;
  });
}, { lastConsoleLines: 15 });

run.finish();
