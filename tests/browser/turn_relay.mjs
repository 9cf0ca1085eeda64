#!/usr/bin/env node
// Publishing through a TURN relay only, against a running SFU started with TURN_URLS.
//
//   node turn_relay.mjs http://127.0.0.1:3000
//
// Page A opens the web demo with ?relay=1 (iceTransportPolicy 'relay', iceServers from
// joinRoomResponse) and publishes one video layer; its selected candidate must be a relay
// candidate. Page B, a normal page, decodes A's video and receives its audio.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, demoState, remotes, withTimeout } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node turn_relay.mjs <base-url>');
  process.exit(2);
}

const run = createRun({ budgetMs: 60_000, pollMs: 500 });
const { check, waitFor, waitJoined, decodesVideo } = run;

const demoUrl = (room, name, extra = {}) =>
  `${base}/?${new URLSearchParams({ room, name, autojoin: '1', ...extra })}`;

async function printPageState(p) {
  const s = await withTimeout(demoState(p), 3000, 'state');
  console.log(`# ${p.label}: ${JSON.stringify(s)}`);
}

await run.main(async () => {
  const room = `turn-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  console.log(`# base ${base}, room ${room}`);

  const A = await run.openPage('A');
  await check('A (relay only) joined', async () => {
    await A.page.goto(demoUrl(room, 'Alice', { relay: '1', layers: '1' }));
    const s = await waitJoined(A, 15_000);
    return `participantId=${s.participantId}`;
  });

  await check("A's publisher uses a relay candidate", async () => {
    const type = await waitFor('selected candidate pair', 20_000, async () => {
      const t = await A.page.evaluate(() => window.sfuDemo.publisherCandidateType());
      return t ? { done: true, value: t } : { last: 'no selected pair yet' };
    });
    if (type !== 'relay') throw new Error(`selected local candidate is ${type}, not relay`);
    return `candidateType=${type}`;
  });

  const B = await run.openPage('B');
  await check('B (normal) joined', async () => {
    await B.page.goto(demoUrl(room, 'Bob'));
    const s = await waitJoined(B, 15_000);
    return `participantId=${s.participantId}`;
  });

  await check("B decodes A's relayed video", async () => {
    const v = await decodesVideo(B, 25_000);
    return `framesDecoded=${v.stats.framesDecoded}, ${v.stats.frameWidth}x${v.stats.frameHeight}`;
  });

  await check("B receives A's audio", async () => {
    const a = await waitFor('audio packets', 10_000, async () => {
      const audio = (await remotes(B)).find((r) => r.kind === 'audio' && r.stats.packetsReceived > 0);
      return audio ? { done: true, value: audio } : { last: 'no audio packets' };
    });
    return `packetsReceived=${a.stats.packetsReceived}`;
  });
}, { pageState: printPageState, lastConsoleLines: 20 });

run.finish();
