// WHIP/WHEP with plain RTCPeerConnection in headless Chromium:
//   A publishes camera + microphone with WHIP (POST /whip/{room}, 201 + answer + Location),
//   B plays the room with WHEP (POST /whep/{room}) and decodes frames,
//   A's DELETE on its Location ends the publish, and B's tracks end.
//
//   node whip_whep.mjs http://127.0.0.1:3000

import { createRun } from './harness.mjs';

const base = (process.argv[2] ?? '').replace(/\/+$/, '');
if (!base) {
  console.error('usage: node whip_whep.mjs <server base url>');
  process.exit(2);
}

// Page-side helpers, installed with addInitScript so both pages have them.
function pageHelpers() {
  async function token(name) {
    const r = await fetch(`/dev/token?name=${name}`);
    return (await r.json()).token;
  }
  async function exchange(pc, url, bearer) {
    await pc.setLocalDescription(await pc.createOffer());
    // No trickle: wait for host candidates so the offer is complete.
    await new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
      setTimeout(resolve, 2000);
    });
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${bearer}` },
      body: pc.localDescription.sdp,
    });
    const body = await res.text();
    if (res.status !== 201) throw new Error(`${res.status}: ${body}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return { location: res.headers.get('Location'), contentType: res.headers.get('Content-Type') };
  }
  window.whipPublish = async (room) => {
    window.bearer = await token('whip');
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
    const pc = new RTCPeerConnection();
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly' });
    window.pc = pc;
    const r = await exchange(pc, `/whip/${room}`, window.bearer);
    window.location_ = r.location;
    return r;
  };
  window.whipDelete = async (asOther) => {
    const bearer = asOther ? await token('intruder') : window.bearer;
    const res = await fetch(window.location_, { method: 'DELETE', headers: { Authorization: `Bearer ${bearer}` } });
    return { status: res.status, body: await res.text() };
  };
  window.whepPlay = async (room) => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    window.tracks = [];
    window.ended = [];
    // What a WHEP player does when the server ends the session (DTLS close): close the
    // connection, which ends its tracks.
    pc.onconnectionstatechange = () => {
      window.connectionStates = [...(window.connectionStates ?? []), pc.connectionState];
      if (pc.connectionState === 'closed' || pc.connectionState === 'failed') pc.close();
    };
    pc.ontrack = (e) => {
      window.tracks.push(e.track);
      e.track.onended = () => window.ended.push(e.track.kind);
      if (e.track.kind === 'video') {
        const v = document.createElement('video');
        v.muted = true; v.autoplay = true; v.srcObject = new MediaStream([e.track]);
        document.body.appendChild(v); v.play().catch(() => {});
      }
    };
    window.pc = pc;
    const r = await exchange(pc, `/whep/${room}`, await token('whep'));
    // The server's DTLS close_notify puts the DTLS transport in 'closed': the session is over.
    const dtls = pc.getTransceivers()[0].receiver.transport;
    dtls.onstatechange = () => {
      window.connectionStates = [...(window.connectionStates ?? []), `dtls-${dtls.state}`];
      if (dtls.state === 'closed') pc.close();
    };
    return r;
  };
  window.whepStats = async () => {
    const out = { connection: window.pc.connectionState, seen: window.connectionStates, ended: window.ended, states: window.tracks.map((t) => `${t.kind}:${t.readyState}`) };
    for (const s of (await window.pc.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') { out.framesDecoded = s.framesDecoded ?? 0; out.width = s.frameWidth ?? 0; }
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioPackets = s.packetsReceived ?? 0;
    }
    return out;
  };
}

const run = createRun({ budgetMs: 90_000, pollMs: 500 });

async function open(label) {
  const p = await run.openPage(label);
  await p.page.addInitScript(pageHelpers);
  // Any page of the server will do; the helpers only need its origin.
  await p.page.goto(`${base}/healthz`);
  return p;
}

await run.main(async () => {
  const room = `whip-${Date.now()}`;
  const A = await open('A');
  await run.check('WHIP publish answers 201 with an SDP answer and a Location', async () => {
    const r = await A.page.evaluate((room) => window.whipPublish(room), room);
    if (!r.location?.startsWith(`/whip/${room}/`)) throw new Error(`Location ${r.location}`);
    if (!r.contentType?.startsWith('application/sdp')) throw new Error(`Content-Type ${r.contentType}`);
    return r.location;
  });
  await run.check('A connects', async () => run.waitFor('A connected', 15_000, async () => {
    const state = await A.page.evaluate(() => window.pc.connectionState);
    return { done: state === 'connected', value: state, last: state };
  }));

  const B = await open('B');
  await run.check('WHEP play answers 201 with a Location', async () => {
    const r = await B.page.evaluate((room) => window.whepPlay(room), room);
    if (!r.location?.startsWith(`/whep/${room}/`)) throw new Error(`Location ${r.location}`);
    return r.location;
  });
  await run.check('B decodes A\'s video and receives its audio', async () => {
    const s = await run.waitFor('frames decoded', 20_000, async () => {
      const s = await B.page.evaluate(() => window.whepStats());
      return { done: s.framesDecoded > 10 && s.audioPackets > 20, value: s, last: JSON.stringify(s) };
    });
    return `${s.framesDecoded} frames at width ${s.width}, ${s.audioPackets} audio packets`;
  });
  await run.check('DELETE with another user\'s token is refused and changes nothing', async () => {
    const r = await A.page.evaluate(() => window.whipDelete(true));
    if (r.status !== 403) throw new Error(`${r.status} ${r.body}`);
    const before = await B.page.evaluate(() => window.whepStats());
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const after = await B.page.evaluate(() => window.whepStats());
    if (!(after.framesDecoded > before.framesDecoded)) throw new Error('B stopped decoding');
    return `403 ${JSON.parse(r.body).code}`;
  });
  await run.check('DELETE on the Location ends the publish; B\'s session is closed and its tracks end', async () => {
    const r = await A.page.evaluate(() => window.whipDelete(false));
    if (r.status !== 200) throw new Error(`${r.status} ${r.body}`);
    const started = Date.now();
    const s = await run.waitFor('B tracks ended', 10_000, async () => {
      const s = await B.page.evaluate(() => window.whepStats());
      return { done: s.states.length > 0 && s.states.every((x) => x.endsWith(':ended')), value: s, last: JSON.stringify(s) };
    });
    return `B after ${Date.now() - started} ms: ${s.states.join(', ')}, connection states ${s.seen}`;
  });
});
run.finish();
