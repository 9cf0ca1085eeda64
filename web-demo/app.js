// Browser client for the SFU.
//
// One signaling connection carries JSON messages: a WebTransport bidirectional stream when the
// server offers one (GET /webtransport), else a WebSocket at /ws (signaling.js hides which).
// One RTCPeerConnection publishes our camera and mic (video as three simulcast layers) and a
// second one receives everything the server forwards. The server drives the subscriber
// connection: it sends offers, we only answer.
//
// When the signaling connection drops while joined, the session is resumed on a new connection
// (`resume` with the token from `connected` and the highest `seq` seen); the PeerConnections
// are kept and media never stops. If the server cannot resume, the page rejoins from scratch.
//
// Query parameters: room, name, autojoin=1, width, height (see below); transport=ws|wt forces
// one transport (no fallback); wtTimeout=<ms> bounds the WebTransport handshake (default 3000);
// codec=vp8|vp9|h264|av1 makes the published video use only that codec (setCodecPreferences),
// layers=1 publishes one layer instead of three simulcast layers.
//
// Test hooks live on `window.sfuDemo` (see the bottom of this file).

import { connectSignaling, DEFAULT_WT_TIMEOUT_MS } from './signaling.js';
import { FramePublisher, FrameSubscriber, webTransportMediaSupport } from './wt-media.js';

const LAYER_CHOICES = ['auto', 'low', 'medium', 'high'];
const REQUEST_TIMEOUT_MS = 15000;
const PING_INTERVAL_MS = 20000;
const STATS_INTERVAL_MS = 1000;
// Resume: used when `connected` carries no resumeGraceMs; attempts back off like this.
const DEFAULT_RESUME_GRACE_MS = 10000;
const RESUME_BACKOFF_MS = [0, 250, 500, 1000, 2000, 4000];
const RESUME_REPLY_TIMEOUT_MS = 5000;

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
  transport: document.getElementById('transport'),
  media: document.getElementById('media'),
};

const params = new URLSearchParams(location.search);

// 'auto' (WebTransport, else WebSocket), 'wt' or 'ws'.
const TRANSPORT_PREFERENCE = ({ wt: 'wt', webtransport: 'wt', ws: 'ws', websocket: 'ws' })[params.get('transport')] ?? 'auto';
const WT_TIMEOUT_MS = Number(params.get('wtTimeout')) > 0 ? Number(params.get('wtTimeout')) : DEFAULT_WT_TIMEOUT_MS;
const VIDEO_CODEC = (params.get('codec') ?? '').toLowerCase(); // '' = the browser's choice
const SINGLE_LAYER = params.get('layers') === '1';
// How media travels: 'webrtc' (default), 'webtransport' (WebCodecs frames on the signaling
// session, bridged by the server) or 'auto' (WebTransport when it and WebCodecs exist).
const MEDIA_PREFERENCE = ({ auto: 'auto', webrtc: 'webrtc', wt: 'webtransport', webtransport: 'webtransport' })[params.get('media')] ?? 'webrtc';
const PUBLISH = params.get('publish') === '0' ? false : true;
// `?relay=1`: only TURN relay candidates (needs TURN_URLS on the server), to try the relay path.
const RELAY_ONLY = params.get('relay') === '1';

const app = {
  state: 'idle',
  lastError: null,
  session: null,
  transport: null, // kind of the last signaling connection made: 'webtransport' | 'websocket'
  fallbackReason: null, // why the last connection is not WebTransport (null if it is, or forced)
  signaling: 'closed', // 'connecting' | 'connected' | 'reconnecting' | 'closed'
  resumes: 0, // sessions resumed after a signaling drop
  rejoins: 0, // full rejoins after a resume failed
  // Milliseconds from the last Join to: media (camera open), authenticated, room (joined on the
  // server), joined (publishing too), subscriberConnected, firstRemoteFrame.
  timeline: null,
};

/** Record how long after Join `step` happened (first time only); logs the first frame. */
function markTimeline(step) {
  const t = app.timeline;
  if (!t || t[step] !== undefined) return;
  t[step] = Math.round(performance.now() - t.start);
  if (step === 'firstRemoteFrame') log(`first remote video frame ${t[step]} ms after Join`);
}

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

function renderTransport() {
  const badge = ui.transport;
  if (!badge) return;
  let text = '';
  if (app.signaling === 'closed') text = '';
  else if (app.signaling === 'reconnecting') text = 'Signaling: reconnecting…';
  else if (app.signaling === 'connecting') text = 'Signaling: connecting…';
  else if (app.transport === 'webtransport') text = 'Signaling: WebTransport';
  else if (app.transport === 'websocket') text = `Signaling: WebSocket${app.fallbackReason ? ' (fallback)' : ''}`;
  badge.textContent = text;
  badge.hidden = !text;
  badge.dataset.transport = app.transport ?? '';
  badge.dataset.signaling = app.signaling;
  badge.title = app.fallbackReason ? `WebTransport not used: ${app.fallbackReason}` : '';
  badge.className = `transport-badge transport-${app.signaling === 'reconnecting' ? 'reconnecting' : (app.transport ?? 'none')}`;
}

function setSignaling(signaling, transport) {
  app.signaling = signaling;
  if (transport) {
    app.transport = transport.kind;
    app.fallbackReason = transport.fallbackReason ?? null;
  }
  renderTransport();
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Keep only `codec` (e.g. 'vp9') and its retransmission entry in the transceiver's offer.
 * Throws when the browser cannot send that codec, so the page shows why instead of silently
 * publishing something else.
 */
function preferCodec(transceiver, codec) {
  const all = RTCRtpSender.getCapabilities('video')?.codecs ?? [];
  const wanted = all.filter((c) => c.mimeType.toLowerCase() === `video/${codec}`);
  if (!wanted.length) {
    throw new Error(`this browser cannot send ${codec} (it sends ${[...new Set(all.map((c) => c.mimeType))].join(', ')})`);
  }
  transceiver.setCodecPreferences([...wanted, ...all.filter((c) => c.mimeType.toLowerCase() === 'video/rtx')]);
  log(`publishing video as ${wanted[0].mimeType}`);
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
    this.transport = null; // see signaling.js for the interface
    this.nextRequestId = 1;
    this.pending = new Map(); // String(requestId) -> {type, resolve, reject, timer}
    this.outbox = []; // requests made while reconnecting, sent once resumed
    this.lastSeq = 0; // highest `seq` received from the server
    this.resumeToken = null;
    this.resumeGraceMs = 0;
    this.reconnecting = false;
    this.roomName = null;
    this.displayName = null;
    this.participantId = null;
    this.iceServers = []; // TURN servers with our credentials, from joinRoomResponse
    this.localStream = null;
    this.pubPc = null;
    this.subPc = null;
    this.subTracks = new Map(); // mid -> {mid, producerId, participantId, kind} from the latest offer
    this.subQueue = Promise.resolve();
    this.participants = new Map(); // participantId -> {displayName, producers: Map, tile, media}
    this.remotes = new Map(); // producerId -> remote media entry (see attachRemote)
    this.layers = new Map(); // producerId -> last layerChanged value
    this.mediaPath = null; // 'webrtc' | 'webtransport', decided at joinRoom
    this.frames = null; // FrameSubscriber (media over WebTransport)
    this.framePublisher = null;
    this.frameProducers = new Map(); // producerId -> producer info, consumed as frames
    this.estimateBps = null; // the server's estimate of our downlink (bandwidthEstimate)
    this.pingTimer = null;
    this.statsTimer = null;
    this.refreshing = false;
    // With several SFU nodes, a room lives on one of them; joinRoom redirects us there.
    this.baseUrl = location.origin;
  }

  // --- signaling transport ------------------------------------------------------------------

  async connect() {
    setSignaling('connecting');
    const transport = await connectSignaling({ preference: TRANSPORT_PREFERENCE, wtTimeoutMs: WT_TIMEOUT_MS, log, baseUrl: this.baseUrl });
    if (this.closed) {
      transport.close('join cancelled');
      throw new Error('join cancelled');
    }
    this.attach(transport);
    setSignaling('connected', transport);
    log(`signaling over ${transport.kind} (${transport.url})`);
  }

  attach(transport) {
    this.transport = transport;
    transport.onmessage = (text) => {
      if (this.transport === transport) this.onMessage(text);
    };
    transport.onclose = ({ reason }) => {
      if (this.transport === transport) this.onTransportClosed(reason);
    };
  }

  /** Forgets the current connection and closes it without reporting a drop. */
  detach(reason) {
    const transport = this.transport;
    this.transport = null;
    transport?.close(reason);
  }

  onTransportClosed(reason) {
    this.transport = null;
    if (this.closed) return;
    if (this.reconnecting) {
      // The connection carrying our `resume` died: fail that attempt, the loop tries again.
      for (const [key, p] of [...this.pending]) {
        if (p.type !== 'resume') continue;
        this.pending.delete(key);
        clearTimeout(p.timer);
        p.reject(new SignalingError(`resume: ${reason}`, 'DISCONNECTED', 'resume'));
      }
      return;
    }
    if (this.resumeToken && this.participantId) {
      this.reconnect(reason);
    } else if (app.session === this) {
      fail(new Error(`signaling connection closed (${reason})`));
    }
  }

  /** Closes the connection abruptly, as a network drop would (test hook). */
  dropSignaling() {
    const transport = this.transport;
    if (!transport) return false;
    log(`dropping the ${transport.kind} signaling connection (test hook)`, 'warn');
    transport.drop();
    return true;
  }

  send(message, transport = this.transport) {
    if (!transport) throw new Error('signaling connection is not open');
    transport.send(message);
  }

  /**
   * Sends a request and resolves with the reply's data. While reconnecting, requests wait in
   * the outbox until the session is resumed (`direct` sends at once: only `resume` does).
   */
  request(type, data = {}, { timeoutMs = REQUEST_TIMEOUT_MS, direct = false } = {}) {
    const requestId = this.nextRequestId++;
    const key = String(requestId);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(key);
        reject(new SignalingError(`${type}: no reply within ${timeoutMs / 1000}s`, 'TIMEOUT', type));
      }, timeoutMs);
      this.pending.set(key, { type, resolve, reject, timer });
      const sendNow = () => {
        if (!this.pending.has(key)) return; // timed out or closed meanwhile
        try {
          this.send({ type, data, requestId });
        } catch (err) {
          clearTimeout(timer);
          this.pending.delete(key);
          reject(err);
        }
      };
      if (this.reconnecting && !direct) this.outbox.push(sendNow);
      else sendNow();
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
    if (!msg || typeof msg !== 'object') {
      log(`ignoring non-object message: ${String(text).slice(0, 100)}`, 'warn');
      return;
    }
    const key = msg.requestId == null ? null : String(msg.requestId);
    const p = key === null ? undefined : this.pending.get(key);

    // Replayed messages keep their original seq; anything at or below the highest seen was
    // handled already. The reply to `resume` is exempt: where it sits in the sequence is up to
    // the server, and it must not hide the replay that follows it.
    if (typeof msg.seq === 'number' && p?.type !== 'resume') {
      if (msg.seq <= this.lastSeq) {
        log(`ignoring ${msg.type} with seq ${msg.seq} (already at ${this.lastSeq})`, 'warn');
        return;
      }
      this.lastSeq = msg.seq;
    }

    if (p) {
      this.pending.delete(key);
      clearTimeout(p.timer);
      if (msg.type === 'error') {
        const code = msg.data?.code;
        const err = new SignalingError(`${p.type} failed: ${msg.error || msg.data?.message || 'error'}${code ? ` (${code})` : ''}`,
          code, msg.data?.requestType ?? p.type);
        err.retryAfterMs = msg.data?.retryAfterMs;
        err.nodeUrl = msg.data?.nodeUrl;
        p.reject(err);
      } else {
        // Resumed: from here on the connection is live again. This must happen before the next
        // frame (possibly a replayed message in the same chunk) is handled, so not in a promise
        // continuation.
        if (p.type === 'resume') this.onResumed();
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

  // --- resume ---------------------------------------------------------------------------------

  onResumed() {
    this.reconnecting = false;
    setSignaling('connected', this.transport);
    const outbox = this.outbox;
    this.outbox = [];
    for (const sendNow of outbox) sendNow();
  }

  /**
   * Reconnects after an unexpected drop and resumes the session (same PeerConnections). Tries
   * with backoff while the server still holds the session (resumeGraceMs); rejoins from scratch
   * when the server refuses the resume or the grace period is over.
   */
  async reconnect(reason) {
    this.reconnecting = true;
    setSignaling('reconnecting');
    const graceMs = this.resumeGraceMs > 0 ? this.resumeGraceMs : DEFAULT_RESUME_GRACE_MS;
    const deadline = performance.now() + graceMs;
    log(`signaling lost (${reason}); resuming (grace ${graceMs} ms, last seq ${this.lastSeq})`, 'warn');

    for (let attempt = 1; ; attempt++) {
      const delay = RESUME_BACKOFF_MS[Math.min(attempt - 1, RESUME_BACKOFF_MS.length - 1)];
      if (performance.now() + delay >= deadline) break;
      await sleep(delay);
      if (this.closed) return;

      let transport;
      try {
        transport = await connectSignaling({ preference: TRANSPORT_PREFERENCE, wtTimeoutMs: WT_TIMEOUT_MS, log, baseUrl: this.baseUrl });
      } catch (err) {
        log(`resume attempt ${attempt}: cannot connect: ${err.message}`, 'warn');
        continue;
      }
      if (this.closed) {
        transport.close('leaving');
        return;
      }
      this.attach(transport);
      app.transport = transport.kind;
      app.fallbackReason = transport.fallbackReason ?? null;

      const timeoutMs = Math.max(1000, Math.min(RESUME_REPLY_TIMEOUT_MS, deadline - performance.now()));
      const lastSeq = this.lastSeq;
      try {
        // The resume token alone does not prove who we are: the JWT goes along.
        const res = await this.request('resume', { token: this.resumeToken, lastSeq, accessToken: this.token }, { direct: true, timeoutMs });
        if (typeof res.resumeToken === 'string' && res.resumeToken) this.resumeToken = res.resumeToken;
        if (res.participantId && res.participantId !== this.participantId) {
          log(`resumed as ${res.participantId}, expected ${this.participantId}`, 'warn');
        }
        app.resumes++;
        log(`resumed over ${transport.kind} (attempt ${attempt}, connection ${res.connectionId ?? '?'}, ` +
          `${Array.isArray(res.replayed) ? res.replayed.length : res.replayed ?? '?'} message(s) replayed after seq ${lastSeq})`);
        return;
      } catch (err) {
        if (this.closed) return;
        if (this.transport === transport) this.detach('resume failed');
        // No answer, or the new connection died too: the session may still be there, try again.
        if (['TIMEOUT', 'DISCONNECTED', 'RATE_LIMITED'].includes(err.code) || !err.code) {
          log(`resume attempt ${attempt}: ${err.message}`, 'warn');
          if (err.code === 'RATE_LIMITED' && err.retryAfterMs > 0) await sleep(Math.min(err.retryAfterMs, 5000));
          continue;
        }
        // RESUME_FAILED (unknown or expired token), INVALID_PAYLOAD, UNKNOWN_TYPE (old server)...
        rejoin(this, err.message);
        return;
      }
    }
    if (!this.closed) rejoin(this, `no resume within ${graceMs} ms`);
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
        this.frames?.remove(data.producerId);
        this.frameProducers.delete(data.producerId);
        this.participants.get(data.participantId)?.producers.delete(data.producerId);
        this.removeRemote(data.producerId);
        break;
      case 'layersWanted':
        // Dynacast: no subscriber needs some of our simulcast layers; stop (or resume) them.
        this.applyLayersWanted(data.layers ?? []).catch((err) => log(`layersWanted: ${err.message}`));
        break;
      case 'keyFrameRequest':
        // A subscriber needs a keyframe of our WebTransport video (layer as the server counts).
        this.framePublisher?.requestKeyframe(data.producerId, data.layer);
        break;
      case 'frameError':
        log(`server refused a media stream: ${data.code}: ${data.message}`, 'warn');
        break;
      case 'bandwidthEstimate':
        // What the server's estimator thinks our downlink carries; it picks layers to fit.
        this.estimateBps = data.estimateBps;
        break;
      case 'layerChanged':
        // The server's bandwidth allocator pauses video the link cannot carry (layer null).
        this.layers.set(data.producerId, data.paused ? `paused: ${data.reason || 'bandwidth'}` : data.layer);
        this.renderLayer(data.producerId);
        log(`layer of ${data.producerId} is now ${this.layers.get(data.producerId)}`);
        break;
      case 'error':
        reportError(new Error(`server: ${msg.error || data.message || 'error'}${data.code ? ` (${data.code})` : ''}`));
        break;
      case 'pong':
        break;
      case 'resumed':
        // A reply to an earlier resume attempt that was given up on (or replayed): nothing to do.
        log('ignoring a late resumed reply');
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
    this.roomName = roomName;
    this.displayName = displayName;
    // Camera and signaling start together: the room (and the subscriptions the server starts
    // on join) need not wait for the camera, only publishing does.
    const media = this.getLocalMedia().then((stream) => {
      markTimeline('media');
      return stream;
    });
    // The token and the signaling connection are fetched at once: only authenticate needs both.
    const tokenFetched = fetchDevToken(displayName);
    const connected = this.connect();
    connected.catch(() => {}); // reported by the await below, not as an unhandled rejection
    const { token } = await tokenFetched;
    this.token = token;
    this.assertOpen();
    await connected;
    await this.authenticate();
    markTimeline('authenticated');

    const roomId = sanitizeRoomId(roomName);
    let joined = await this.joinOrCreate(roomId, roomName.trim() || roomId, displayName);
    this.localStream = await media;
    this.assertOpen();
    if (joined.relayedFrom && this.localStream) {
      // This node relays the room from its owner: watching works here, publishing does not.
      log(`this node relays the room; publishing happens on ${joined.relayedFrom}`);
      await this.request('leaveRoom', {}).catch(() => {});
      await this.moveTo(joined.relayedFrom);
      joined = await this.joinFollowingRedirect(roomId, displayName);
    }
    markTimeline('room');
    this.participantId = joined.participantId;
    this.relayedFrom = joined.relayedFrom ?? null;
    if (this.relayedFrom) log(`watching a room relayed from its owner ${this.relayedFrom}`);
    this.iceServers = Array.isArray(joined.iceServers) ? joined.iceServers : [];
    if (this.iceServers.length) log(`TURN: ${this.iceServers.flatMap((s) => s.urls).join(', ')}`);
    log(`joined room ${joined.roomId ?? roomId} as ${this.participantId}; ${joined.participants?.length ?? 0} other(s) present`);
    await this.afterJoin(joined);
  }

  async connectAndAuthenticate() {
    await this.connect();
    await this.authenticate();
  }

  async authenticate() {
    const connected = await this.request('authenticate', { token: this.token });
    if (typeof connected.resumeToken === 'string' && connected.resumeToken) this.resumeToken = connected.resumeToken;
    if (Number(connected.resumeGraceMs) > 0) this.resumeGraceMs = Number(connected.resumeGraceMs);
    log(`authenticated as ${connected.user?.fullName ?? connected.user?.id ?? '?'} (connection ${connected.connectionId}` +
      `${this.resumeToken ? `, resumable for ${this.resumeGraceMs || DEFAULT_RESUME_GRACE_MS} ms` : ''})`);
  }

  /** The room lives on another node: move signaling there (same token) before joining. */
  async moveTo(nodeUrl) {
    log(`room lives on ${nodeUrl}; reconnecting there`);
    this.baseUrl = new URL(nodeUrl, location.href).origin;
    this.detach('moving to the room\'s node');
    // A new session on another node: its sequence numbers start over.
    this.resumeToken = null;
    this.lastSeq = 0;
    await this.connectAndAuthenticate();
  }

  afterJoin(joined) {
    for (const p of joined.participants ?? []) this.addParticipant(p);

    this.pingTimer = setInterval(() => {
      // lastSeq: what arrived need not be kept for a resume any more.
      if (!this.reconnecting) this.request('ping', { lastSeq: this.lastSeq }).catch(() => {});
    }, PING_INTERVAL_MS);
    this.statsTimer = setInterval(() => this.refreshStats(), STATS_INTERVAL_MS);

    if (this.mediaPath === 'webtransport') this.startFrames(joined);
    return this.publish();
  }

  async getLocalMedia() {
    // `?publish=0`: watch only (no camera or microphone asked for).
    if (PUBLISH === false) return null;
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
      return await this.joinFollowingRedirect(roomId, displayName);
    } catch (err) {
      if (err.code !== 'ROOM_NOT_FOUND') throw err;
    }
    try {
      const created = await this.request('createRoom', { name: roomName, roomId });
      log(`created room ${roomId}`);
      // The least-loaded node may be another one: join there.
      if (created.nodeUrl && new URL(created.nodeUrl, location.href).origin !== this.baseUrl) {
        await this.moveTo(created.nodeUrl);
      }
    } catch (err) {
      // Another client created it between our joinRoom and createRoom.
      if (err.code !== 'ROOM_EXISTS') throw err;
    }
    return this.joinFollowingRedirect(roomId, displayName);
  }

  async joinFollowingRedirect(roomId, displayName) {
    try {
      return await this.request('joinRoom', this.joinRequest(roomId, displayName));
    } catch (err) {
      if (err.code !== 'ROOM_ON_OTHER_NODE' || !err.nodeUrl) throw err;
      await this.moveTo(err.nodeUrl);
      return this.request('joinRoom', this.joinRequest(roomId, displayName));
    }
  }

  /** joinRoom's data; decides (on the connection in use) how media travels for this join. */
  joinRequest(roomId, displayName) {
    this.mediaPath = this.chooseMediaPath();
    return this.mediaPath === 'webtransport'
      ? { roomId, displayName, media: 'webtransport' }
      : { roomId, displayName };
  }

  chooseMediaPath() {
    const choice = ui.media?.value || MEDIA_PREFERENCE;
    if (choice === 'webrtc') return 'webrtc';
    const missing = webTransportMediaSupport(this.transport);
    if (!missing) return 'webtransport';
    if (choice === 'webtransport') throw new Error(`media over WebTransport is not possible: ${missing}`);
    log(`media over WebRTC (${missing})`);
    return 'webrtc';
  }

  // --- media over WebTransport ----------------------------------------------------------------

  startFrames(joined) {
    this.frames = new FrameSubscriber({
      wt: this.transport.wt,
      log,
      onTrack: ({ producerId, kind, track, stats }) => {
        const participantId = this.frameProducers.get(producerId)?.participantId;
        if (!participantId) return;
        // What attachRemote and readStats read of a receiver: the track, and frame counters.
        this.attachRemote({ producerId, participantId, kind, mid: null }, { track, frameStats: stats });
      },
    });
    for (const p of joined.participants ?? []) {
      for (const producer of p.producers ?? []) this.consumeFrames({ ...producer, participantId: p.participantId });
    }
  }

  consumeFrames(producer) {
    if (!this.frames || this.frameProducers.has(producer.producerId)) return;
    this.frameProducers.set(producer.producerId, producer);
    this.frames.expect(producer.producerId, producer.kind);
    this.request('consumeFrames', { producerId: producer.producerId })
      .then(() => log(`receiving ${producer.kind} ${producer.producerId} over WebTransport`))
      .catch((err) => log(`consumeFrames ${producer.producerId}: ${err.message}`, 'warn'));
  }

  async publishFrames() {
    this.framePublisher = new FramePublisher({ wt: this.transport.wt, request: (type, data) => this.request(type, data), log });
    const producers = await this.framePublisher.start(this.localStream);
    log(`publishing ${producers.map((p) => `${p.kind}${p.layers?.length ? ` [${p.layers.join(',')}]` : ''}`).join(', ') || 'nothing'} over WebTransport`);
  }

  // RTCPeerConnection configuration: the TURN servers the SFU handed out (none without TURN_URLS).
  pcConfig() {
    const config = { iceServers: this.iceServers };
    if (RELAY_ONLY) config.iceTransportPolicy = 'relay';
    return config;
  }

  async publish() {
    if (!this.localStream) return;
    if (this.mediaPath === 'webtransport') return this.publishFrames();
    const pc = new RTCPeerConnection(this.pcConfig());
    this.pubPc = pc;
    pc.onconnectionstatechange = () => log(`publisher connection: ${pc.connectionState}`);

    const audio = this.localStream.getAudioTracks()[0];
    const video = this.localStream.getVideoTracks()[0];
    if (audio) pc.addTransceiver(audio, { direction: 'sendonly' });
    if (video) {
      // Chromium simulcasts VP9 and AV1 only when each encoding names a scalabilityMode (else
      // it sends the first encoding alone, the legacy SVC path). L1T3 also gives VP8 three
      // temporal layers, which the server's bandwidth allocator drops (30 → 15 → 7.5 fps)
      // before a smaller picture; H264 gets none.
      const layered = VIDEO_CODEC !== 'h264';
      const sendEncodings = SINGLE_LAYER
        ? [{ maxBitrate: 1500000 }]
        : SIMULCAST_ENCODINGS.map((e) => (layered ? { ...e, scalabilityMode: 'L1T3' } : e));
      const transceiver = pc.addTransceiver(video, { direction: 'sendonly', sendEncodings });
      const { sender } = transceiver;
      if (VIDEO_CODEC) preferCodec(transceiver, VIDEO_CODEC);
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
    const pc = new RTCPeerConnection(this.pcConfig());
    this.subPc = pc;
    pc.onconnectionstatechange = () => {
      log(`subscriber connection: ${pc.connectionState}`);
      if (pc.connectionState === 'connected') markTimeline('subscriberConnected');
    };
    pc.ontrack = (ev) => {
      const info = this.subTracks.get(ev.transceiver.mid);
      if (info) this.attachRemote(info, ev.transceiver.receiver);
    };
    return pc;
  }

  async handleSubscriberOffer({ sdp, tracks = [] }) {
    if (this.closed) return;
    if (tracks.length) markTimeline('subscriberOffer');
    const pc = this.subscriberPc();
    // Set before applying the offer: ontrack fires inside setRemoteDescription.
    this.subTracks = new Map(tracks.map((t) => [t.mid, t]));
    await pc.setRemoteDescription({ type: 'offer', sdp });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (this.closed) return;
    this.reconcileRemotes();
    await this.request('subscriberAnswer', { sdp: answer.sdp });
    if (tracks.length) markTimeline('subscriberAnswered');
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
      video.requestVideoFrameCallback?.(() => markTimeline('firstRemoteFrame'));
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
      // Pinned: served first when our link is short (setConsumerPriority 255; unpinned 1).
      const pin = el('input', { type: 'checkbox', class: 'pin', title: 'Served first when bandwidth is short' });
      pin.addEventListener('change', () => {
        this.setPinned(producerId, pin.checked).catch((err) => {
          reportError(err);
          pin.checked = !pin.checked;
        });
      });
      remote.el = el('div', { class: 'remote-video', 'data-producer-id': producerId, 'data-kind': 'video' }, [
        video,
        el('div', { class: 'controls' }, [
          el('label', {}, ['Layer ', picker]),
          el('label', {}, [pin, ' pin']),
          remote.layerEl,
        ]),
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
    // Media follows in the next subscriberOffer (or, over WebTransport, once consumed).
    this.ensureParticipant(producer.participantId).producers.set(producer.producerId, producer);
    if (this.mediaPath === 'webtransport') this.consumeFrames(producer);
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

  async setPinned(producerId, pinned) {
    const res = await this.request('setConsumerPriority', { producerId, priority: pinned ? 255 : 1 });
    const remote = this.remotes.get(producerId);
    if (remote) remote.pinned = pinned;
    log(`${pinned ? 'pinned' : 'unpinned'} ${producerId}`);
    return res;
  }

  renderLayer(producerId) {
    const remote = this.remotes.get(producerId);
    if (remote?.layerEl) remote.layerEl.textContent = `receiving: ${this.layers.get(producerId) ?? '–'}`;
  }

  async readStats(remote) {
    if (remote.receiver.frameStats) return frameTrackStats(remote);
    let s = null;
    let codec = null;
    try {
      const report = await remote.receiver.getStats();
      s = pickInboundRtp(report);
      codec = (s?.codecId && report.get(s.codecId)?.mimeType) || null;
    } catch { /* the connection was closed under us */ }
    return {
      codec,
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
        const estimate = this.estimateBps == null ? '' : ` · link ≈ ${Math.round(this.estimateBps / 1000)} kbps`;
        remote.statsEl.textContent =
          `layer ${layer} · ${s.frameWidth}x${s.frameHeight} · ${Math.round(s.framesPerSecond)} fps · ` +
          `${kbps} kbps${estimate} · ${s.framesDecoded} frames decoded · via ${mediaPathOf(remote)}`;
      } else {
        remote.statsEl.textContent = `audio · ${kbps} kbps · ${s.packetsReceived} packets · via ${mediaPathOf(remote)}`;
      }
    }
  }

  async snapshot() {
    return Promise.all([...this.remotes.values()].map(async (r) => {
      const { codec, framesDecoded, frameWidth, frameHeight, framesPerSecond, packetsReceived, bytesReceived } = await this.readStats(r);
      return {
        producerId: r.producerId,
        participantId: r.participantId,
        kind: r.kind,
        layer: this.layers.get(r.producerId) ?? null,
        preferredLayer: r.preferred,
        pinned: Boolean(r.pinned),
        path: mediaPathOf(r),
        estimateBps: this.estimateBps,
        stats: { codec, framesDecoded, frameWidth, frameHeight, framesPerSecond, packetsReceived, bytesReceived },
      };
    }));
  }

  async applyLayersWanted(layers) {
    if (this.framePublisher) {
      this.framePublisher.setActive(layers);
      log(`dynacast: encoding ${layers.filter((l) => l.active).map((l) => l.rid).join(',') || 'no layer'}`);
      return;
    }
    const sender = this.pubPc?.getSenders().find((s) => s.track?.kind === 'video');
    if (!sender) return;
    const p = sender.getParameters();
    let changed = false;
    for (const e of p.encodings ?? []) {
      const wanted = layers.find((l) => l.rid === e.rid);
      if (wanted && e.active !== wanted.active) {
        e.active = wanted.active;
        changed = true;
      }
    }
    if (!changed) return;
    await sender.setParameters(p);
    log(`dynacast: sending ${p.encodings.filter((e) => e.active).map((e) => e.rid).join(',') || 'no layer'}`);
  }

  /** Our published video as the browser encodes it: one entry per outbound-rtp (layer). */
  async sendSnapshot() {
    if (!this.pubPc) return [];
    const report = await this.pubPc.getStats();
    const out = [];
    report.forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      out.push({
        rid: s.rid ?? null,
        codec: (s.codecId && report.get(s.codecId)?.mimeType) || null,
        encoder: s.encoderImplementation ?? null,
        frameWidth: s.frameWidth ?? 0,
        framesEncoded: s.framesEncoded ?? 0,
        active: s.active ?? null,
        scalabilityMode: s.scalabilityMode ?? null,
      });
    });
    return out.sort((a, b) => String(a.rid).localeCompare(String(b.rid)));
  }

  // --- teardown -------------------------------------------------------------------------------

  async leave() {
    if (this.transport?.isOpen && !this.reconnecting) {
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
    this.outbox = [];
    this.reconnecting = false;
    this.pubPc?.close();
    this.subPc?.close();
    this.framePublisher?.close();
    this.frames?.close();
    this.localStream?.getTracks().forEach((t) => t.stop());
    ui.localVideo.srcObject = null;
    ui.localInfo.textContent = '';
    for (const id of [...this.remotes.keys()]) this.removeRemote(id);
    for (const p of this.participants.values()) p.tile.remove();
    this.participants.clear();
    this.detach('leaving');
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
  app.timeline = { start: performance.now() };
  const session = new Session();
  app.session = session;
  setState('joining');
  setSignaling('connecting');
  try {
    await session.join(roomName, displayName);
    if (app.session === session) {
      setState('joined');
      markTimeline('joined');
    }
  } catch (err) {
    if (app.session === session) fail(err);
  }
}

async function leave() {
  const session = app.session;
  app.session = null;
  if (session) await session.leave();
  setState('idle');
  setSignaling('closed');
  log('left');
}

function fail(err) {
  reportError(err, { fatal: true });
  const session = app.session;
  app.session = null;
  session?.close();
  setState('error');
  setSignaling('closed');
}

// The server could not resume `session`: tear everything down and join the same room again.
async function rejoin(session, reason) {
  if (app.session !== session) return;
  log(`cannot resume (${reason}); rejoining from scratch`, 'warn');
  app.session = null;
  session.close();
  app.rejoins++;
  await join(session.roomName, session.displayName);
}

ui.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  join(ui.room.value, ui.name.value);
});
ui.leave.addEventListener('click', () => leave());
window.addEventListener('pagehide', () => app.session?.close());
// A Content-Security-Policy without the WebTransport origin in connect-src blocks it silently.
document.addEventListener('securitypolicyviolation', (ev) => {
  log(`blocked by Content-Security-Policy ${ev.effectiveDirective}: ${ev.blockedURI}`, 'warn');
});

// ---------------------------------------------------------------------------------------------
// Test hooks

window.sfuDemo = {
  get state() { return app.state; },
  get participantId() { return app.session?.participantId ?? null; },
  /** The owner's URL when this node relays the room (RELAY_ROOMS), else null. */
  get relayedFrom() { return app.session?.relayedFrom ?? null; },
  get lastError() { return app.lastError; },
  /** Kind of the signaling connection in use (or last used): 'webtransport' | 'websocket' | null. */
  get transport() { return app.transport; },
  /** Why WebTransport was not used for it (null when it was, or when ?transport=ws forced WebSocket). */
  get transportFallbackReason() { return app.fallbackReason; },
  /** 'connecting' | 'connected' | 'reconnecting' | 'closed'. */
  get signaling() { return app.signaling; },
  /** Successful session resumes after a signaling drop. */
  get resumes() { return app.resumes; },
  /** Full rejoins after a resume was refused or the grace period ran out. */
  get rejoins() { return app.rejoins; },
  /** Milliseconds from the last Join to each step: {media, authenticated, room, joined,
   * subscriberConnected, firstRemoteFrame}. */
  get timeline() {
    if (!app.timeline) return null;
    const { start, ...steps } = app.timeline;
    return steps;
  },
  /** Highest server `seq` handled by the current session. */
  get lastSeq() { return app.session?.lastSeq ?? 0; },
  /** Every remote track with fresh inbound-rtp stats. */
  remotes: async () => (app.session ? app.session.snapshot() : []),
  /** How this page's media travels: 'webrtc' | 'webtransport' (null before a join). */
  get mediaPath() { return app.session?.mediaPath ?? null; },
  /** Our WebTransport video layers: [{rid, width, framesSent, skipped, active}]. */
  framesSent: () => app.session?.framePublisher?.stats() ?? [],
  /** Our published video layers as encoded: [{rid, codec, encoder, frameWidth, framesEncoded, scalabilityMode}]. */
  sent: async () => (app.session ? app.session.sendSnapshot() : []),
  /** Sends setPreferredLayer; resolves with the server's response data. */
  setLayer: (producerId, layer) =>
    app.session ? app.session.setLayer(producerId, layer) : Promise.reject(new Error('not joined')),
  join,
  leave,
  /** Closes the signaling connection abruptly, as a network drop would; true if one was open. */
  dropSignaling: () => app.session?.dropSignaling() ?? false,
  /** Local candidate type ('host' | 'srflx' | 'relay') of the publisher's selected pair, or null. */
  publisherCandidateType: async () => (await selectedLocalCandidate(app.session?.pubPc))?.candidateType ?? null,
  /** The selected pair's local candidate of each connection: {publisher, subscriber}, each
   * {candidateType, protocol ('udp' | 'tcp'), relayProtocol} or null. */
  selectedCandidates: async () => ({
    publisher: pick(await selectedLocalCandidate(app.session?.pubPc)),
    subscriber: pick(await selectedLocalCandidate(app.session?.subPc)),
  }),
};

/** Which path a remote track arrives on. */
const mediaPathOf = (remote) => (remote.receiver.frameStats ? 'WebTransport' : 'WebRTC');

/** A WebTransport track's counters in the shape of inbound-rtp stats (fps over the last read). */
function frameTrackStats(remote) {
  const f = remote.receiver.frameStats;
  const now = performance.timeOrigin + performance.now();
  const last = remote.fpsMark;
  const framesPerSecond = last && now > last.at ? ((f.framesDecoded - last.decoded) * 1000) / (now - last.at) : 0;
  remote.fpsMark = { at: now, decoded: f.framesDecoded };
  return {
    codec: remote.kind === 'video' ? 'video/VP8' : 'audio/opus',
    framesDecoded: f.framesDecoded,
    frameWidth: f.frameWidth,
    frameHeight: f.frameHeight,
    framesPerSecond,
    packetsReceived: f.framesReceived,
    bytesReceived: f.bytesReceived,
    timestamp: now,
  };
}

const pick = (c) => (c ? { candidateType: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null } : null);

async function selectedLocalCandidate(pc) {
  if (!pc) return null;
  const stats = [...(await pc.getStats()).values()];
  const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
  const pair = stats.find((s) => s.id === transport?.selectedCandidatePairId)
    ?? stats.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
  return stats.find((s) => s.id === pair?.localCandidateId) ?? null;
}

// ---------------------------------------------------------------------------------------------
// Start-up: ?room=R&name=N fill the form, &autojoin=1 joins right away.

ui.room.value = params.get('room') ?? '';
ui.name.value = params.get('name') ?? '';
if (ui.media) ui.media.value = MEDIA_PREFERENCE;
setState('idle');
renderTransport();
if (params.get('autojoin') === '1' && ui.room.value && ui.name.value) join(ui.room.value, ui.name.value);
