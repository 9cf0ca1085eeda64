// Runs inside the test page (served by mediasoup.mjs through request interception): drives an
// unmodified mediasoup-client Device through the seed's ORTC messages over our WebSocket.
/* global mediasoupClient */
(() => {
  class Signaling {
    constructor(url) {
      this.ws = new WebSocket(url);
      this.pending = new Map();
      this.next = 1;
      this.notifications = [];
      this.opened = new Promise((resolve, reject) => {
        this.ws.onopen = resolve;
        this.ws.onerror = () => reject(new Error('websocket failed'));
      });
      this.ws.onmessage = (event) => {
        const msg = JSON.parse(event.data);
        const waiter = msg.requestId !== undefined && this.pending.get(msg.requestId);
        if (waiter) {
          this.pending.delete(msg.requestId);
          if (msg.type === 'error') waiter.reject(new Error(`${msg.data.code}: ${msg.data.message}`));
          else waiter.resolve(msg.data);
        } else {
          this.notifications.push({ type: msg.type, data: msg.data });
        }
      };
    }

    request(type, data) {
      const requestId = this.next++;
      return new Promise((resolve, reject) => {
        this.pending.set(requestId, { resolve, reject });
        this.ws.send(JSON.stringify({ type, data, requestId }));
      });
    }
  }

  const state = { consumers: [], videoConsumer: null };

  async function start(room, name, create) {
    const { token } = await (await fetch(`/dev/token?name=${encodeURIComponent(name)}`)).json();
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    state.sig = new Signaling(url);
    await state.sig.opened;
    await state.sig.request('authenticate', { token });
    if (create) await state.sig.request('createRoom', { name: room, roomId: room });
    const joined = await state.sig.request('joinRoom', { roomId: room, displayName: name });
    state.room = room;
    state.device = new mediasoupClient.Device({ handlerName: 'Chrome111' });
    await state.device.load({ routerRtpCapabilities: joined.routerRtpCapabilities });
    return { version: mediasoupClient.version, canVideo: state.device.canProduce('video') };
  }

  async function transport(direction) {
    const t = await state.sig.request('createWebRtcTransport', { roomId: state.room, direction });
    const options = {
      id: t.transportId,
      iceParameters: t.iceParameters,
      iceCandidates: t.iceCandidates,
      dtlsParameters: t.dtlsParameters,
    };
    const tr = direction === 'send'
      ? state.device.createSendTransport(options)
      : state.device.createRecvTransport(options);
    tr.on('connect', ({ dtlsParameters }, ok, fail) => {
      state.sig.request('connectWebRtcTransport', { transportId: tr.id, dtlsParameters }).then(() => ok(), fail);
    });
    if (direction === 'send') {
      tr.on('produce', ({ kind, rtpParameters, appData }, ok, fail) => {
        state.sig.request('publish', { roomId: state.room, kind, rtpParameters, transportId: tr.id, appData })
          .then((r) => ok({ id: r.producerId }), fail);
      });
    }
    return tr;
  }

  async function publish() {
    const send = await transport('send');
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { exact: 1280 }, height: { exact: 720 } },
    });
    const audio = await send.produce({ track: stream.getAudioTracks()[0] });
    const video = await send.produce({
      track: stream.getVideoTracks()[0],
      encodings: [
        { scaleResolutionDownBy: 4, maxBitrate: 150_000 },
        { scaleResolutionDownBy: 2, maxBitrate: 500_000 },
        { scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
      ],
    });
    state.send = send;
    return { audio: audio.id, video: video.id, layers: video.rtpParameters.encodings.length };
  }

  async function consume(producerIds) {
    state.recv = state.recv ?? (await transport('recv'));
    const out = [];
    for (const producerId of producerIds) {
      const r = await state.sig.request('consume', {
        producerId,
        rtpCapabilities: state.device.rtpCapabilities,
        transportId: state.recv.id,
      });
      const consumer = await state.recv.consume({
        id: r.consumerId,
        producerId: r.producerId,
        kind: r.kind,
        rtpParameters: r.rtpParameters,
      });
      const el = document.createElement(r.kind);
      el.autoplay = true;
      el.muted = true;
      el.playsInline = true;
      el.srcObject = new MediaStream([consumer.track]);
      document.body.appendChild(el);
      el.play().catch(() => {});
      state.consumers.push(consumer);
      if (r.kind === 'video') state.videoConsumer = consumer;
      out.push({ kind: r.kind, type: r.type, codec: r.rtpParameters.codecs[0].mimeType });
    }
    return out;
  }

  async function stats() {
    const result = {};
    for (const consumer of state.consumers) {
      const report = await consumer.getStats();
      for (const s of report.values()) {
        if (s.type !== 'inbound-rtp') continue;
        if (consumer.kind === 'video') {
          result.framesDecoded = s.framesDecoded ?? 0;
          result.frameWidth = s.frameWidth ?? 0;
          result.frameHeight = s.frameHeight ?? 0;
        } else {
          result.audioPackets = s.packetsReceived ?? 0;
        }
      }
    }
    result.layerNotifications = state.sig.notifications
      .filter((n) => n.type === 'consumerLayersChanged')
      .map((n) => n.data.spatialLayer);
    return result;
  }

  async function setLayers(spatialLayer) {
    return state.sig.request('setConsumerPreferredLayers', {
      consumerId: state.videoConsumer.id,
      spatialLayer,
    });
  }

  async function tryRequest(type, data) {
    try {
      return { ok: await state.sig.request(type, data) };
    } catch (e) {
      return { error: String(e.message) };
    }
  }

  window.msTest = { start, publish, consume, stats, setLayers, tryRequest };
  window.msReady = true;
})();
