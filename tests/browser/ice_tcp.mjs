#!/usr/bin/env node
// Chromium without UDP, against a running SFU whose ICE-TCP port is reachable.
//
//   node ice_tcp.mjs <base-url> <chromium-in-netns wrapper>
//
// Page A runs in a Chromium inside a network namespace whose nftables drop every UDP packet
// (tests/ice_tcp_browser.rs builds it): it joins with the unmodified web demo, publishes, and
// subscribes to B. Page B, a normal Chromium on the host, publishes too. Checks: both of A's
// connections select a TCP candidate pair, B decodes A's video, A decodes B's video and
// receives B's audio, all through the server's one ICE-TCP port.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, demoState, remotes, withTimeout } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
const nsChromium = process.argv[3];
if (!/^https?:\/\//.test(base) || !nsChromium) {
  console.error('usage: node ice_tcp.mjs <base-url> <chromium-in-netns wrapper>');
  process.exit(2);
}

// The pages reach the server only as http://<veth address>, which is not a secure context.
const run = createRun({
  budgetMs: 60_000,
  pollMs: 500,
  extraArgs: [`--unsafely-treat-insecure-origin-as-secure=${base}`],
});
const { check, waitFor, waitJoined, decodesVideo } = run;

const demoUrl = (room, name, extra = {}) =>
  `${base}/?${new URLSearchParams({ room, name, autojoin: '1', layers: '1', ...extra })}`;

const selected = (p) => p.page.evaluate(() => window.sfuDemo.selectedCandidates());

async function printPageState(p) {
  const s = await withTimeout(demoState(p), 3000, 'state');
  console.log(`# ${p.label}: ${JSON.stringify(s)}`);
  const c = await withTimeout(selected(p), 3000, 'candidates');
  console.log(`# ${p.label} selected candidates: ${JSON.stringify(c)}`);
}

await run.main(async () => {
  const room = `tcp-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  console.log(`# base ${base}, room ${room}`);

  const A = await run.openPage('A (no UDP)', { executablePath: nsChromium });
  await check('A (no UDP) joined and publishes', async () => {
    await A.page.goto(demoUrl(room, 'Alice'));
    const s = await waitJoined(A, 15_000);
    return `participantId=${s.participantId}`;
  });

  await check("A's publisher connection runs over TCP", async () => {
    const c = await waitFor('publisher pair selected', 20_000, async () => {
      const { publisher } = await selected(A);
      return publisher ? { done: true, value: publisher } : { last: 'no selected pair yet' };
    });
    // Chromium's active TCP candidate (port 9) becomes peer-reflexive once the server's
    // answer shows the connection's real port; a relay would mean TURN was used instead.
    if (c.protocol !== 'tcp' || c.candidateType === 'relay') {
      throw new Error(`selected local candidate is ${JSON.stringify(c)}, not a direct TCP one`);
    }
    return JSON.stringify(c);
  });

  const B = await run.openPage('B (host)');
  await check('B (normal) joined and publishes', async () => {
    await B.page.goto(demoUrl(room, 'Bob'));
    const s = await waitJoined(B, 15_000);
    return `participantId=${s.participantId}`;
  });

  await check("B decodes A's video (published over ICE-TCP)", async () => {
    const v = await decodesVideo(B, 25_000);
    return `framesDecoded=${v.stats.framesDecoded}, ${v.stats.frameWidth}x${v.stats.frameHeight}`;
  });

  await check("A decodes B's video over ICE-TCP", async () => {
    const v = await decodesVideo(A, 25_000);
    const { subscriber } = await selected(A);
    if (subscriber?.protocol !== 'tcp') {
      throw new Error(`subscriber pair is ${JSON.stringify(subscriber)}, not TCP`);
    }
    return `framesDecoded=${v.stats.framesDecoded}, ${v.stats.frameWidth}x${v.stats.frameHeight}, ${JSON.stringify(subscriber)}`;
  });

  await check("A receives B's audio", async () => {
    const a = await waitFor('audio packets', 10_000, async () => {
      const audio = (await remotes(A)).find((r) => r.kind === 'audio' && r.stats.packetsReceived > 0);
      return audio ? { done: true, value: audio } : { last: 'no audio packets' };
    });
    return `packetsReceived=${a.stats.packetsReceived}`;
  });
}, { pageState: printPageState, lastConsoleLines: 20 });

run.finish();
