// Browser client for the SFU.
//
// One WebSocket carries JSON signaling; one RTCPeerConnection publishes our camera and mic
// (video as three simulcast layers) and a second one receives everything the server forwards.
// The server drives the subscriber connection: it sends offers, we only answer.
//
// Test hooks live on `window.sfuDemo` (see the bottom of this file).

const LAYER_CHOICES = ['auto', 'low', 'medium', 'high'];
const REQUEST_TIMEOUT_MS = 15000;
const PING_INTERVAL_MS = 20000;
const STATS_INTERVAL_MS = 1000;

// Low → high: the server maps rid order to the low/medium/high layers.
const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1500000 },
];

const ui = {
  form: document.getElementById('join-form'),
  room: document.getElementById('room'),
  name: document.getElementById('name'),
  join: document.getElementById('join'),
  leave: document.getElementById('leave'),
  status: document.getElementById('status'),
  error: document.getElementById('error'),
  grid: document.getElementById('grid'),
  localVideo: document.getElementById('local-video'),
  localInfo: document.getElementById('local-info'),
  log: document.getElementById('log'),
};

const params = new URLSearchParams(location.search);

const app = {
  state: 'idle',
  lastError: null,
  session: null,
};

// ---------------------------------------------------------------------------------------------
// Small helpers

function log(message, level = 'info') {
  const line = `${new Date().toISOString().slice(11, 23)} ${message}`;
  ui.log.textContent += line + '\n';
  ui.log.scrollTop = ui.log.scrollHeight;
  (level === 'error' ? console.error : level === 'warn' ? console.warn : console.info)(`[sfu] ${message}`);
}

function setState(state) {
  app.state = state;
  ui.status.textContent = state;
  ui.status.className = `status status-${state}`;
  const busy = state === 'joining' || state === 'joined';
  ui.join.disabled = busy;
  ui.room.disabled = busy;
  ui.name.disabled = busy;
  ui.leave.disabled = state === 'idle';
}

function reportError(err, { fatal = false } = {}) {
  const message = err instanceof Error ? err.message : String(err);
  app.lastError = message;
  ui.error.textContent = message;
  ui.error.hidden = false;
  log(fatal ? `fatal: ${message}` : message, 'error');
}

function clearError() {
  app.lastError = null;
  ui.error.hidden = true;
  ui.error.textContent = '';
}

// Room ids must match [A-Za-z0-9_-]{1,64}; the typed name is kept as the room's display name.
function sanitizeRoomId(name) {
  const id = name.trim().replace(/[^A-Za-z0-9_-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64);
  return id || 'room';
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

class SignalingError extends Error {
  constructor(message, code, requestType) {
    super(message);
    this.name = 'SignalingError';
    this.code = code;
    this.requestType = requestType;
  }
}

function videoConstraints() {
  // `?width=&height=` asks for an exact size so tests get a predictable set of simulcast layers.
  const width = Number(params.get('width'));
  const height = Number(params.get('height'));
  return {
    width: width > 0 ? { exact: width } : { ideal: 1280 },
    height: height > 0 ? { exact: height } : { ideal: 720 },
  };
}

async function fetchDevToken(displayName) {
  const res = await fetch(`/dev/token?name=${encodeURIComponent(displayName)}`, { cache: 'no-store' });
  if (!res.ok) {
    throw new Error(`GET /dev/token failed with HTTP ${res.status}` +
      (res.status === 404 ? ' (is the server running in development mode?)' : ''));
  }
  const body = await res.json();
  if (!body || typeof body.token !== 'string') throw new Error('GET /dev/token returned no token');
  return body;
}

function pickInboundRtp(report) {
  // After an SSRC change there can be two entries; the busier one is the live stream.
  let best = null;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && (!best || (s.packetsReceived ?? 0) > (best.packetsReceived ?? 0))) best = s;
  });
  return best;
}

// ---------------------------------------------------------------------------------------------
// One join: lives from Join until Leave or a fatal error, then is discarded.

class Session {
  constructor() {
    this.closed = false;
    this.ws = null;
    this.nextRequestId = 1;
    this.pending = new Map(); // String(requestId) -> {type, resolve, reject, timer}
    this.participantId = null;
    this.localStream = null;
    this.pubPc = null;
    this.subPc = null;
    this.subTracks = new Map(); // mid -> {mid, producerId, participantId, kind} from the latest offer
    this.subQueue = Promise.resolve();
    this.participants = new Map(); // participantId -> {displayName, producers: Map, tile, media}
    this.remotes = new Map(); // producerId -> remote media entry (see attachRemote)
    this.layers = new Map(); // producerId -> last layerChanged value
    this.pingTimer = null;
    this.statsTimer = null;
    this.refreshing = false;
  }

  // --- signaling transport ------------------------------------------------------------------

  openSocket() {
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve();
      };
      ws.onmessage = (ev) => this.onMessage(ev.data);
      ws.onerror = () => {
        if (!opened) reject(new Error(`cannot connect to ${url}`));
      };
      ws.onclose = (ev) => {
        if (!opened) reject(new Error(`cannot connect to ${url} (close code ${ev.code})`));
        else if (!this.closed) fail(new Error(`signaling connection closed (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`));
      };
    });
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) throw new Error('signaling connection is not open');
    this.ws.send(JSON.stringify(message));
  }

  request(type, data = {}) {
    const requestId = this.nextRequestId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(String(requestId));
        reject(new SignalingError(`${type}: no reply within ${REQUEST_TIMEOUT_MS / 1000}s`, 'TIMEOUT', type));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(String(requestId), { type, resolve, reject, timer });
      try {
        this.send({ type, data, requestId });
      } catch (err) {
        clearTimeout(timer);
        this.pending.delete(String(requestId));
        reject(err);
      }
    });
  }

  onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      log(`ignoring non-JSON frame: ${String(text).slice(0, 100)}`, 'warn');
      return;
    }
    const key = msg.requestId == null ? null : String(msg.requestId);
    if (key !== null && this.pending.has(key)) {
      const p = this.pending.get(key);
      this.pending.delete(key);
      clearTimeout(p.timer);
      if (msg.type === 'error') {
        const code = msg.data?.code;
        p.reject(new SignalingError(`${p.type} failed: ${msg.error || msg.data?.message || 'error'}${code ? ` (${code})` : ''}`,
          code, msg.data?.requestType ?? p.type));
      } else {
        p.resolve(msg.data ?? {});
      }
      return;
    }
    try {
      this.onNotification(msg);
    } catch (err) {
      reportError(new Error(`handling ${msg.type}: ${err.message}`));
    }
  }

  onNotification(msg) {
    const data = msg.data ?? {};
    switch (msg.type) {
      case 'subscriberOffer':
        // Offers must be applied strictly in order; each waits for the previous answer.
        this.subQueue = this.subQueue
          .then(() => this.handleSubscriberOffer(data))
          .catch((err) => { if (!this.closed) reportError(new Error(`subscriber negotiation: ${err.message}`)); });
        break;
      case 'participantJoined':
        this.addParticipant(data.participant);
        break;
      case 'participantLeft':
        this.removeParticipant(data.participantId);
        break;
      case 'newProducer':
        this.addProducerInfo(data.producer);
        break;
      case 'producerClosed':
        log(`producer ${data.producerId} closed`);
        this.participants.get(data.participantId)?.producers.delete(data.producerId);
        this.removeRemote(data.producerId);
        break;
      case 'layerChanged':
        this.layers.set(data.producerId, data.layer);
        this.renderLayer(data.producerId);
        log(`layer of ${data.producerId} is now ${data.layer}`);
        break;
      case 'error':
        reportError(new Error(`server: ${msg.error || data.message || 'error'}${data.code ? ` (${data.code})` : ''}`));
        break;
      case 'pong':
        break;
      default:
        log(`ignoring unexpected message ${msg.type}`, 'warn');
    }
  }

  // --- join / publish -------------------------------------------------------------------------

  // A Leave while joining closes the session; stop at the next step instead of carrying on.
  assertOpen() {
    if (this.closed) throw new Error('join cancelled');
  }

  async join(roomName, displayName) {
    this.localStream = await this.getLocalMedia();
    this.assertOpen();
    const { token } = await fetchDevToken(displayName);
    this.assertOpen();
    await this.openSocket();
    const connected = await this.request('authenticate', { token });
    log(`authenticated as ${connected.user?.fullName ?? connected.user?.id ?? '?'} (connection ${connected.connectionId})`);

    const roomId = sanitizeRoomId(roomName);
    const joined = await this.joinOrCreate(roomId, roomName.trim() || roomId, displayName);
    this.participantId = joined.participantId;
    log(`joined room ${joined.roomId ?? roomId} as ${this.participantId}; ${joined.participants?.length ?? 0} other(s) present`);
    for (const p of joined.participants ?? []) this.addParticipant(p);

    this.pingTimer = setInterval(() => this.request('ping').catch(() => {}), PING_INTERVAL_MS);
    this.statsTimer = setInterval(() => this.refreshStats(), STATS_INTERVAL_MS);

    await this.publish();
  }

  async getLocalMedia() {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: videoConstraints() });
      if (this.closed) {
        stream.getTracks().forEach((t) => t.stop());
        return null;
      }
      ui.localVideo.srcObject = stream;
      const settings = stream.getVideoTracks()[0]?.getSettings();
      if (settings) ui.localInfo.textContent = `${settings.width}x${settings.height}`;
      return stream;
    } catch (err) {
      // Still join, as a viewer: watching does not need a camera.
      reportError(new Error(`camera/microphone unavailable (${err.name}: ${err.message}); joining without publishing`));
      return null;
    }
  }

  async joinOrCreate(roomId, roomName, displayName) {
    try {
      return await this.request('joinRoom', { roomId, displayName });
    } catch (err) {
      if (err.code !== 'ROOM_NOT_FOUND') throw err;
    }
    try {
      await this.request('createRoom', { name: roomName, roomId });
      log(`created room ${roomId}`);
    } catch (err) {
      // Another client created it between our joinRoom and createRoom.
      if (err.code !== 'ROOM_EXISTS') throw err;
    }
    return this.request('joinRoom', { roomId, displayName });
  }

  async publish() {
    if (!this.localStream) return;
    const pc = new RTCPeerConnection();
    this.pubPc = pc;
    pc.onconnectionstatechange = () => log(`publisher connection: ${pc.connectionState}`);

    const audio = this.localStream.getAudioTracks()[0];
    const video = this.localStream.getVideoTracks()[0];
    if (audio) pc.addTransceiver(audio, { direction: 'sendonly' });
    if (video) {
      const { sender } = pc.addTransceiver(video, { direction: 'sendonly', sendEncodings: SIMULCAST_ENCODINGS });
      // Under CPU pressure Chrome would otherwise shrink every layer, hiding the layer switch.
      try {
        const p = sender.getParameters();
        p.degradationPreference = 'maintain-resolution';
        await sender.setParameters(p);
      } catch { /* optional; older browsers reject the field */ }
    }

    // No need to wait for ICE gathering: the server is ICE-lite and learns our address from STUN.
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const answer = await this.request('publisherOffer', { sdp: offer.sdp });
    if (this.closed) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    const producers = answer.producers ?? [];
    log(`publishing ${producers.map((p) => `${p.kind}${p.layers?.length ? ` [${p.layers.join(',')}]` : ''}`).join(', ') || 'nothing'}`);
  }

  // --- subscribe ------------------------------------------------------------------------------

  subscriberPc() {
    if (this.subPc) return this.subPc;
    const pc = new RTCPeerConnection();
    this.subPc = pc;
    pc.onconnectionstatechange = () => log(`subscriber connection: ${pc.connectionState}`);
    pc.ontrack = (ev) => {
      const info = this.subTracks.get(ev.transceiver.mid);
      if (info) this.attachRemote(info, ev.transceiver.receiver);
    };
    return pc;
  }

  async handleSubscriberOffer({ sdp, tracks = [] }) {
    if (this.closed) return;
    const pc = this.subscriberPc();
    // Set before applying the offer: ontrack fires inside setRemoteDescription.
    this.subTracks = new Map(tracks.map((t) => [t.mid, t]));
    await pc.setRemoteDescription({ type: 'offer', sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (this.closed) return;
    this.reconcileRemotes();
    await this.request('subscriberAnswer', { sdp: answer.sdp });
    log(`subscribed to ${tracks.length} track(s)`);
  }

  // The offer's track list is authoritative: attach whatever ontrack missed (e.g. a reused mid)
  // and drop media the server no longer sends.
  reconcileRemotes() {
    const live = new Set();
    for (const t of this.subPc.getTransceivers()) {
      const info = t.mid == null ? undefined : this.subTracks.get(t.mid);
      if (!info || t.currentDirection === 'stopped') continue;
      live.add(info.producerId);
      this.attachRemote(info, t.receiver);
    }
    for (const producerId of [...this.remotes.keys()]) {
      if (!live.has(producerId)) this.removeRemote(producerId);
    }
  }

  attachRemote(info, receiver) {
    const { producerId, participantId, kind } = info;
    const existing = this.remotes.get(producerId);
    if (existing && existing.receiver === receiver && existing.track === receiver.track) return;
    if (existing) this.removeRemote(producerId);
    // A mid can be recycled for another producer; whatever it carried before is gone.
    for (const [id, r] of this.remotes) if (r.receiver === receiver) this.removeRemote(id);

    const participant = this.ensureParticipant(participantId);
    const track = receiver.track;
    const stream = new MediaStream([track]);
    const remote = { producerId, participantId, kind, mid: info.mid, receiver, track, preferred: 'auto', prev: null };

    if (kind === 'video') {
      const video = el('video', { autoplay: true, muted: true, playsInline: true });
      video.srcObject = stream;
      const picker = el('select', { class: 'layer-picker', title: 'Preferred simulcast layer' },
        LAYER_CHOICES.map((l) => el('option', { value: l, text: l })));
      picker.addEventListener('change', () => {
        const wanted = picker.value;
        this.setLayer(producerId, wanted).catch((err) => {
          reportError(err);
          picker.value = remote.preferred;
        });
      });
      remote.layerEl = el('span', { class: 'layer-badge' });
      remote.statsEl = el('div', { class: 'stats', text: 'waiting for media…' });
      remote.picker = picker;
      remote.el = el('div', { class: 'remote-video', 'data-producer-id': producerId, 'data-kind': 'video' }, [
        video,
        el('div', { class: 'controls' }, [el('label', {}, ['Layer ', picker]), remote.layerEl]),
        remote.statsEl,
      ]);
      participant.media.append(remote.el);
    } else {
      const audio = el('audio', { autoplay: true });
      audio.srcObject = stream;
      // Autoplay with sound may need a user gesture; retry on the first click.
      audio.play().catch(() => document.addEventListener('click', () => audio.play().catch(() => {}), { once: true }));
      remote.statsEl = el('span', { class: 'stats', text: 'audio' });
      remote.el = el('div', { class: 'remote-audio', 'data-producer-id': producerId, 'data-kind': 'audio' }, [audio, remote.statsEl]);
      participant.tile.append(remote.el);
    }
    this.remotes.set(producerId, remote);
    this.renderLayer(producerId);
    log(`receiving ${kind} ${producerId} from ${participant.displayName}`);
  }

  removeRemote(producerId) {
    const remote = this.remotes.get(producerId);
    if (!remote) return;
    this.remotes.delete(producerId);
    remote.el.querySelectorAll('video, audio').forEach((m) => { m.srcObject = null; });
    remote.el.remove();
  }

  // --- participants ---------------------------------------------------------------------------

  ensureParticipant(participantId, displayName) {
    let p = this.participants.get(participantId);
    if (!p) {
      const label = el('div', { class: 'label' });
      const media = el('div', { class: 'media' });
      const tile = el('section', { class: 'tile remote', 'data-participant-id': participantId }, [label, media]);
      p = { participantId, displayName: displayName ?? participantId.slice(0, 8), producers: new Map(), tile, label, media };
      this.participants.set(participantId, p);
      ui.grid.append(tile);
    } else if (displayName) {
      p.displayName = displayName;
    }
    p.label.textContent = p.displayName;
    return p;
  }

  addParticipant(info) {
    if (!info || info.participantId === this.participantId) return;
    const p = this.ensureParticipant(info.participantId, info.displayName);
    for (const producer of info.producers ?? []) p.producers.set(producer.producerId, producer);
    log(`participant ${p.displayName} (${info.participantId}) is here`);
  }

  removeParticipant(participantId) {
    const p = this.participants.get(participantId);
    for (const [id, r] of [...this.remotes]) if (r.participantId === participantId) this.removeRemote(id);
    if (!p) return;
    this.participants.delete(participantId);
    p.tile.remove();
    log(`participant ${p.displayName} left`);
  }

  addProducerInfo(producer) {
    if (!producer || producer.participantId === this.participantId) return;
    // Media follows in the next subscriberOffer; for now just remember what exists.
    this.ensureParticipant(producer.participantId).producers.set(producer.producerId, producer);
    log(`new ${producer.kind} producer ${producer.producerId}`);
  }

  // --- layers and stats -----------------------------------------------------------------------

  async setLayer(producerId, layer) {
    if (!LAYER_CHOICES.includes(layer)) throw new Error(`unknown layer ${layer}; use one of ${LAYER_CHOICES.join(', ')}`);
    const res = await this.request('setPreferredLayer', { producerId, layer });
    const remote = this.remotes.get(producerId);
    if (remote) {
      remote.preferred = layer;
      if (remote.picker) remote.picker.value = layer;
    }
    log(`preferred layer of ${producerId} set to ${layer}`);
    return res;
  }

  renderLayer(producerId) {
    const remote = this.remotes.get(producerId);
    if (remote?.layerEl) remote.layerEl.textContent = `receiving: ${this.layers.get(producerId) ?? '–'}`;
  }

  async readStats(remote) {
    let s = null;
    try {
      s = pickInboundRtp(await remote.receiver.getStats());
    } catch { /* the connection was closed under us */ }
    return {
      framesDecoded: s?.framesDecoded ?? 0,
      frameWidth: s?.frameWidth ?? 0,
      frameHeight: s?.frameHeight ?? 0,
      framesPerSecond: s?.framesPerSecond ?? 0,
      packetsReceived: s?.packetsReceived ?? 0,
      bytesReceived: s?.bytesReceived ?? 0,
      timestamp: s?.timestamp ?? performance.timeOrigin + performance.now(),
    };
  }

  async refreshStats() {
    // getStats can take longer than the interval on a busy machine; skip rather than pile up.
    if (this.refreshing) return;
    this.refreshing = true;
    try {
      await this.renderStats();
    } finally {
      this.refreshing = false;
    }
  }

  async renderStats() {
    for (const remote of [...this.remotes.values()]) {
      const s = await this.readStats(remote);
      const prev = remote.prev;
      const kbps = prev && s.timestamp > prev.timestamp
        ? Math.max(0, Math.round(((s.bytesReceived - prev.bytesReceived) * 8) / (s.timestamp - prev.timestamp)))
        : 0;
      remote.prev = s;
      if (remote.kind === 'video') {
        const layer = this.layers.get(remote.producerId) ?? '–';
        remote.statsEl.textContent =
          `layer ${layer} · ${s.frameWidth}x${s.frameHeight} · ${Math.round(s.framesPerSecond)} fps · ` +
          `${kbps} kbps · ${s.framesDecoded} frames decoded`;
      } else {
        remote.statsEl.textContent = `audio · ${kbps} kbps · ${s.packetsReceived} packets`;
      }
    }
  }

  async snapshot() {
    return Promise.all([...this.remotes.values()].map(async (r) => {
      const { framesDecoded, frameWidth, frameHeight, framesPerSecond, packetsReceived, bytesReceived } = await this.readStats(r);
      return {
        producerId: r.producerId,
        participantId: r.participantId,
        kind: r.kind,
        layer: this.layers.get(r.producerId) ?? null,
        preferredLayer: r.preferred,
        stats: { framesDecoded, frameWidth, frameHeight, framesPerSecond, packetsReceived, bytesReceived },
      };
    }));
  }

  // --- teardown -------------------------------------------------------------------------------

  async leave() {
    if (this.ws?.readyState === WebSocket.OPEN) {
      try {
        await this.request('leaveRoom', {});
      } catch (err) {
        log(`leaveRoom: ${err.message}`, 'warn');
      }
    }
    this.close();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    clearInterval(this.statsTimer);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error(`${p.type}: session closed`));
    }
    this.pending.clear();
    this.pubPc?.close();
    this.subPc?.close();
    this.localStream?.getTracks().forEach((t) => t.stop());
    ui.localVideo.srcObject = null;
    ui.localInfo.textContent = '';
    for (const id of [...this.remotes.keys()]) this.removeRemote(id);
    for (const p of this.participants.values()) p.tile.remove();
    this.participants.clear();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'leaving');
  }
}

// ---------------------------------------------------------------------------------------------
// Page-level actions

async function join(roomName, displayName) {
  if (app.session) return;
  roomName = String(roomName ?? '').trim();
  displayName = String(displayName ?? '').trim();
  if (!roomName || !displayName) {
    reportError(new Error('room and name are required'));
    return;
  }
  clearError();
  const session = new Session();
  app.session = session;
  setState('joining');
  try {
    await session.join(roomName, displayName);
    if (app.session === session) setState('joined');
  } catch (err) {
    if (app.session === session) fail(err);
  }
}

async function leave() {
  const session = app.session;
  app.session = null;
  if (session) await session.leave();
  setState('idle');
  log('left');
}

function fail(err) {
  reportError(err, { fatal: true });
  const session = app.session;
  app.session = null;
  session?.close();
  setState('error');
}

ui.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  join(ui.room.value, ui.name.value);
});
ui.leave.addEventListener('click', () => leave());
window.addEventListener('pagehide', () => app.session?.close());

// ---------------------------------------------------------------------------------------------
// Test hooks

window.sfuDemo = {
  get state() { return app.state; },
  get participantId() { return app.session?.participantId ?? null; },
  get lastError() { return app.lastError; },
  /** Every remote track with fresh inbound-rtp stats. */
  remotes: async () => (app.session ? app.session.snapshot() : []),
  /** Sends setPreferredLayer; resolves with the server's response data. */
  setLayer: (producerId, layer) =>
    app.session ? app.session.setLayer(producerId, layer) : Promise.reject(new Error('not joined')),
  join,
  leave,
};

// ---------------------------------------------------------------------------------------------
// Start-up: ?room=R&name=N fill the form, &autojoin=1 joins right away.

ui.room.value = params.get('room') ?? '';
ui.name.value = params.get('name') ?? '';
setState('idle');
if (params.get('autojoin') === '1' && ui.room.value && ui.name.value) join(ui.room.value, ui.name.value);
