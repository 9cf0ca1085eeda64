#!/usr/bin/env node
// Media over WebTransport in Chromium (WebCodecs), bridged both ways with WebRTC.
//
//   node wt_media.mjs http://127.0.0.1:3000
//
// A publishes its 1280x720 camera and microphone with media=webtransport (VP8 in three
// layers and Opus, as frames on its WebTransport session). B is a plain WebRTC page: it
// decodes A's video and gets A's audio (WebTransport -> WebRTC), and publishes its own camera
// over WebRTC. C receives with media=webtransport: it decodes A's video (WebTransport ->
// WebTransport, frames passed through) and B's (WebRTC -> WebTransport, RTP rebuilt into
// frames), decodes audio from both, and switches A's layer low and back high. D plays A with
// WHEP (a plain RTCPeerConnection) and decodes it.
// Exit status: 0 when every check passed, 1 when one failed, 2 on bad usage.

import { createRun, demoState, remotes, sleep, withTimeout } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!/^https?:\/\//.test(base)) {
  console.error('usage: node wt_media.mjs <base-url>');
  process.exit(2);
}

const run = createRun({ budgetMs: 100_000, pollMs: 500 });
const { check, waitFor, waitJoined } = run;

const demoUrl = (room, name, extra = {}) =>
  `${base}/?${new URLSearchParams({ room, name, autojoin: '1', ...extra })}`;

async function remoteOf(p, participantId, kind) {
  return (await remotes(p)).find((r) => r.participantId === participantId && r.kind === kind);
}

const show = (r) => (r ? `${r.path}: ${r.stats.frameWidth}x${r.stats.frameHeight}, framesDecoded=${r.stats.framesDecoded}, received=${r.stats.packetsReceived}, layer=${r.layer}` : 'none');

/** framesDecoded of `participantId`'s `kind` on page p grows over a second (on `path`). */
async function decoding(p, participantId, kind, path, timeoutMs) {
  return waitFor(`${p.label} decodes ${kind} of ${participantId.slice(0, 8)}`, timeoutMs, async () => {
    const before = await remoteOf(p, participantId, kind);
    if (!before) return { last: 'no such remote yet' };
    await sleep(1000);
    const after = await remoteOf(p, participantId, kind);
    if (after?.path !== path) return { last: `path ${after?.path}` };
    const grew = after.stats.framesDecoded > before.stats.framesDecoded;
    return grew ? { done: true, value: { from: before, to: after } } : { last: show(after) };
  });
}

async function printPageState(p) {
  const s = await withTimeout(demoState(p), 3000, 'state');
  console.log(`# state=${s?.state} participantId=${s?.participantId} lastError=${s?.lastError}`);
  const mediaPath = await p.page.evaluate(() => window.sfuDemo?.mediaPath).catch(() => null);
  console.log(`# mediaPath=${mediaPath} framesSent=${JSON.stringify(await p.page.evaluate(() => window.sfuDemo?.framesSent()).catch(() => null))}`);
  for (const r of await withTimeout(remotes(p), 3000, 'remotes')) console.log(`# remote ${r.kind} from ${r.participantId}: ${show(r)}`);
}

await run.main(async () => {
  const room = `wtmedia-${Date.now().toString(36)}`;
  console.log(`# base ${base}, room ${room}`);

  const A = await run.openPage('A');
  let a;
  await check('A joined and publishes over WebTransport', async () => {
    await A.page.goto(demoUrl(room, 'Alice', { width: '1280', height: '720', media: 'webtransport' }));
    a = (await waitJoined(A, 15_000)).participantId;
    const sent = await waitFor('A encodes three layers', 15_000, async () => {
      const layers = await A.page.evaluate(() => window.sfuDemo.framesSent());
      const path = await A.page.evaluate(() => window.sfuDemo.mediaPath);
      return layers.length === 3 && layers.every((l) => l.framesSent > 10) && path === 'webtransport'
        ? { done: true, value: layers }
        : { last: `path=${path} ${JSON.stringify(layers)}` };
    });
    return sent.map((l) => `${l.rid} ${l.width}w ${l.framesSent} frames`).join(', ');
  });

  // A WHEP player (plain RTCPeerConnection, POST /whep/{room}) of the WebTransport publisher,
  // before anyone else publishes: it plays A's tracks.
  const D = await run.openPage('D');
  await check("D (WHEP) decodes A's WebTransport video", async () => {
    await D.page.goto(`${base}/healthz`);
    await withTimeout(D.page.evaluate(async (room) => {
      const { token } = await (await fetch('/dev/token?name=whep')).json();
      const pc = new RTCPeerConnection();
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.ontrack = (e) => {
        if (e.track.kind !== 'video') return;
        const v = document.createElement('video');
        v.muted = true; v.autoplay = true; v.srcObject = new MediaStream([e.track]);
        document.body.appendChild(v); v.play().catch(() => {});
      };
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); setTimeout(r, 2000); });
      const res = await fetch(`/whep/${room}`, { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${token}` }, body: pc.localDescription.sdp });
      if (res.status !== 201) throw new Error(`WHEP ${res.status}: ${await res.text()}`);
      await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
      window.whep = pc;
    }, room), 15_000, 'WHEP play');
    const stats = () => D.page.evaluate(async () => {
      let out = { framesDecoded: 0, width: 0, audioPackets: 0 };
      for (const s of (await window.whep.getStats()).values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'video') out = { ...out, framesDecoded: s.framesDecoded ?? 0, width: s.frameWidth ?? 0 };
        if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioPackets = s.packetsReceived ?? 0;
      }
      return out;
    });
    const got = await waitFor('WHEP frames decoded', 20_000, async () => {
      const x = await stats();
      return x.framesDecoded > 5 && x.audioPackets > 10 ? { done: true, value: x } : { last: JSON.stringify(x) };
    });
    return `framesDecoded=${got.framesDecoded}, ${got.width} wide, audio packets ${got.audioPackets}`;
  });

  const B = await run.openPage('B');
  let b;
  await check('B (WebRTC) joined', async () => {
    await B.page.goto(demoUrl(room, 'Bob', { width: '640', height: '360' }));
    b = (await waitJoined(B, 15_000)).participantId;
    return `participantId=${b}`;
  });

  await check("B decodes A's WebTransport video over WebRTC", async () => {
    const { from, to } = await decoding(B, a, 'video', 'WebRTC', 20_000);
    return `framesDecoded ${from.stats.framesDecoded}->${to.stats.framesDecoded}, ${to.stats.frameWidth}x${to.stats.frameHeight}`;
  });

  await check("B receives A's WebTransport audio over WebRTC", async () => {
    const r = await waitFor('audio packets', 10_000, async () => {
      const x = await remoteOf(B, a, 'audio');
      return x?.stats.packetsReceived > 20 ? { done: true, value: x } : { last: show(x) };
    });
    return `packetsReceived=${r.stats.packetsReceived}`;
  });

  const C = await run.openPage('C');
  await check('C joined to receive over WebTransport', async () => {
    await C.page.goto(demoUrl(room, 'Carol', { media: 'webtransport' }));
    const s = await waitJoined(C, 15_000);
    return `participantId=${s.participantId}`;
  });

  await check("C decodes A's video (WebTransport -> WebTransport)", async () => {
    const { from, to } = await decoding(C, a, 'video', 'WebTransport', 20_000);
    return `framesDecoded ${from.stats.framesDecoded}->${to.stats.framesDecoded}, ${to.stats.frameWidth}x${to.stats.frameHeight}`;
  });

  await check("C decodes B's video (WebRTC -> WebTransport)", async () => {
    const { from, to } = await decoding(C, b, 'video', 'WebTransport', 20_000);
    return `framesDecoded ${from.stats.framesDecoded}->${to.stats.framesDecoded}, ${to.stats.frameWidth}x${to.stats.frameHeight}`;
  });

  await check('C decodes audio from both', async () => {
    const both = await waitFor('audio frames decoded', 10_000, async () => {
      const fromA = await remoteOf(C, a, 'audio');
      const fromB = await remoteOf(C, b, 'audio');
      return fromA?.stats.framesDecoded > 20 && fromB?.stats.framesDecoded > 20
        ? { done: true, value: [fromA, fromB] }
        : { last: `A: ${show(fromA)}; B: ${show(fromB)}` };
    });
    return `A ${both[0].stats.framesDecoded}, B ${both[1].stats.framesDecoded} audio frames decoded`;
  });

  let videoId;
  await check("C's WebTransport video of A reaches >= 640 wide", async () => {
    const r = await waitFor('wide', 20_000, async () => {
      const x = await remoteOf(C, a, 'video');
      return x?.stats.frameWidth >= 640 ? { done: true, value: x } : { last: show(x) };
    });
    videoId = r.producerId;
    return show(r);
  });

  await check("C's setLayer('low') on A's video gives <= 400 wide over WebTransport", async () => {
    await withTimeout(C.page.evaluate((id) => window.sfuDemo.setLayer(id, 'low'), videoId), 10_000, 'setLayer low');
    const r = await waitFor('narrow', 15_000, async () => {
      const x = await remoteOf(C, a, 'video');
      return x?.stats.frameWidth > 0 && x.stats.frameWidth <= 400 ? { done: true, value: x } : { last: show(x) };
    });
    return show(r);
  });

  await check("C's setLayer('high') gives >= 960 wide and keeps decoding", async () => {
    await withTimeout(C.page.evaluate((id) => window.sfuDemo.setLayer(id, 'high'), videoId), 10_000, 'setLayer high');
    await waitFor('wide again', 15_000, async () => {
      const x = await remoteOf(C, a, 'video');
      return x?.stats.frameWidth >= 960 ? { done: true, value: x } : { last: show(x) };
    });
    const { from, to } = await decoding(C, a, 'video', 'WebTransport', 10_000);
    return `framesDecoded ${from.stats.framesDecoded}->${to.stats.framesDecoded}, ${to.stats.frameWidth}x${to.stats.frameHeight}`;
  });

  await check('the tiles say which path each track uses', async () => {
    const textB = await B.page.locator(`[data-participant-id="${a}"] .remote-video .stats`).textContent();
    const textC = await C.page.locator(`[data-participant-id="${a}"] .remote-video .stats`).textContent();
    if (!textB.includes('via WebRTC') || !textC.includes('via WebTransport')) throw new Error(`B "${textB}", C "${textC}"`);
    return `B: "${textB}"; C: "${textC}"`;
  });

  for (const p of [A, B, C]) {
    await check(`${p.label} recorded no error`, async () => {
      const s = await demoState(p);
      if (s.lastError) throw new Error(s.lastError);
      return 'none';
    });
  }
}, { pageState: printPageState, lastConsoleLines: 30 });

run.finish();
