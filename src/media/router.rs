//! The front door to the node's media workers: every command of the layers above goes
//! through [`MediaRouter`], which knows where each transport lives (a room's worker, or the
//! worker a subscriber was placed on) and sets up cross-worker mirrors before a consumer
//! needs one (`core/relay.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::core::FrameConsumerInfo;
use super::core::{ConsumerCreated, Egress, WorkerCore};
use super::frames::ingest::FrameStream;
use super::frames::sink::FrameSession;
use super::frames::FrameCodec;
use super::links::{RelayPeers, RemoteProducers};
use super::ortc::{RtpCapabilities, RtpParameters, TransportParameters};
use super::worker::{self, Command, WorkerHandle};
use super::{
    tcp, IceTcpStats, Kind, MediaConfig, MediaError, MediaEvent, NewProducer, Preference,
    ProducerId, TransportId, WorkerStats,
};

/// Front door to all workers. Cheap to clone.
#[derive(Clone)]
pub struct MediaRouter {
    workers: Arc<Vec<WorkerHandle>>,
    /// Where the ICE-TCP listener is bound, when it is on.
    tcp_addr: Option<SocketAddr>,
    tcp_counters: Arc<tcp::TcpCounters>,
    next_transport: Arc<AtomicU64>,
    capabilities: Arc<RtpCapabilities>,
    /// Subscriber transports placed on a worker other than their room's (`place`).
    placement: Arc<Mutex<HashMap<TransportId, usize>>>,
    /// Consumers per worker, kept current by each worker after every wake-up.
    loads: Arc<Vec<AtomicUsize>>,
    spread_rooms: bool,
    /// Every worker's relay inbox and the node links' (`links.rs`).
    pub(super) peers: Arc<RelayPeers>,
    /// Producers of other nodes that node links bring here.
    pub(super) remote: Arc<Mutex<RemoteProducers>>,
}

/// A room's own worker keeps taking its subscribers until it has this many more consumers
/// than the least-loaded worker: small rooms pay no relay hop.
const SPREAD_SLACK: usize = 4;

impl MediaRouter {
    /// Bind every worker's socket and start its thread. Fails if a port is taken.
    pub fn start(
        config: MediaConfig,
        events: mpsc::UnboundedSender<MediaEvent>,
    ) -> anyhow::Result<Self> {
        // Bound first: with port 0 the candidates need the port the kernel picked.
        let tcp_listener = match config.ice_tcp_port {
            Some(port) => {
                let bind = SocketAddr::new(config.listen_ip, port);
                let listener = std::net::TcpListener::bind(bind).map_err(|e| {
                    anyhow::anyhow!("ICE-TCP: cannot bind TCP {bind}: {e} (ICE_TCP_PORT)")
                })?;
                // std listens with a backlog of 128; a burst of clients (or of junk) should
                // wait in the kernel's queue rather than time out their SYNs.
                // SAFETY: listen(2) on a socket we own; a second call only resizes the queue.
                unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 1024) };
                Some(listener)
            }
            None => None,
        };
        let tcp_port = match &tcp_listener {
            Some(l) => Some(l.local_addr()?.port()),
            None => None,
        };
        let tcp_counters = Arc::new(tcp::TcpCounters::default());
        let (relay_senders, relay_inboxes): (Vec<_>, Vec<_>) = (0..config.workers)
            .map(|_| mpsc::channel(super::core::RELAY_QUEUE))
            .unzip();
        let relay_senders = Arc::new(RelayPeers::new(relay_senders));
        let loads: Arc<Vec<AtomicUsize>> =
            Arc::new((0..config.workers).map(|_| AtomicUsize::new(0)).collect());
        let mut workers = Vec::with_capacity(config.workers);
        for (index, inbox) in relay_inboxes.into_iter().enumerate() {
            let links = worker::WorkerLinks {
                inbox,
                peers: relay_senders.clone(),
                loads: loads.clone(),
            };
            workers.push(WorkerHandle::spawn(
                index,
                &config,
                tcp_port,
                tcp_counters.clone(),
                events.clone(),
                links,
            )?);
        }
        if let Some(listener) = tcp_listener {
            let addr = listener.local_addr()?;
            let commands = workers.iter().map(|w| w.commands.clone()).collect();
            tcp::spawn_listener(listener, commands, tcp_counters.clone())?;
            tracing::info!(%addr, "ICE-TCP listening");
        }
        Ok(MediaRouter {
            tcp_counters,
            tcp_addr: tcp_port.map(|port| SocketAddr::new(config.listen_ip, port)),
            workers: Arc::new(workers),
            next_transport: Arc::new(AtomicU64::new(1)),
            capabilities: Arc::new(super::core::router_capabilities(&config.codecs)),
            placement: Arc::default(),
            loads,
            spread_rooms: config.spread_rooms,
            peers: relay_senders,
            remote: Arc::default(),
        })
    }

    /// Where a new subscriber transport of a room on worker `home` goes: the least-loaded
    /// worker, unless `home` is within [`SPREAD_SLACK`] of it.
    fn place(&self, home: usize) -> usize {
        if !self.spread_rooms || self.workers.len() < 2 {
            return home;
        }
        let load = |i: usize| {
            self.loads
                .get(i)
                .map_or(usize::MAX, |l| l.load(Ordering::Relaxed))
        };
        let least = (0..self.workers.len())
            .min_by_key(|i| load(*i))
            .unwrap_or(home);
        let chosen = if load(home) <= load(least).saturating_add(SPREAD_SLACK) {
            home
        } else {
            least
        };
        // Counted at once, so a burst of joins does not all see the same stale minimum (the
        // worker overwrites it with the real count after its next wake-up).
        if let Some(l) = self.loads.get(chosen) {
            l.fetch_add(2, Ordering::Relaxed);
        }
        chosen
    }

    /// The worker holding `transport`: where it was placed, else its room's (`hint`).
    fn locate(&self, hint: usize, transport: TransportId) -> usize {
        self.placements().get(&transport).copied().unwrap_or(hint)
    }

    /// The placement map (a panic elsewhere while it was held leaves it usable).
    fn placements(&self) -> std::sync::MutexGuard<'_, HashMap<TransportId, usize>> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_placement(&self, home: usize, transport: TransportId, worker: usize) {
        if worker != home {
            self.placements().insert(transport, worker);
        }
    }

    /// Before a consumer on `target` of a producer on `home`: `target` mirrors it and `home`
    /// feeds the mirror (idempotent; see `core/relay.rs`).
    async fn ensure_mirror(
        &self,
        home: usize,
        target: usize,
        producer: ProducerId,
    ) -> Result<(), MediaError> {
        if self.ensure_remote_mirror(target, producer).await? || home == target {
            return Ok(());
        }
        let spec = self
            .run(home, move |core, _, _| core.export_spec(producer))
            .await??;
        let nonce = self
            .run(target, move |core, now, _| core.create_mirror(spec, now))
            .await?;
        self.run(home, move |core, _, _| {
            core.export_to(producer, target, nonce)
        })
        .await?
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The ICE-TCP listener's local address, when ICE-TCP is on.
    pub fn ice_tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// ICE-TCP links open now and connections closed by reason (`/status`, metrics).
    pub fn ice_tcp_stats(&self) -> IceTcpStats {
        let counters = &self.tcp_counters;
        IceTcpStats {
            addr: self.tcp_addr,
            links: counters.links(),
            opened: counters.opened(),
            closed: tcp::CloseReason::ALL
                .iter()
                .map(|r| (r.label(), counters.closed(*r)))
                .collect(),
        }
    }

    /// Local UDP address of each worker (what the sockets are bound to).
    pub fn worker_addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.local_addr).collect()
    }

    /// A room lives on one worker so its packets never cross threads; spread rooms by hash.
    pub fn worker_for_room(&self, room_id: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room_id.hash(&mut h);
        (h.finish() % self.workers.len() as u64) as usize
    }

    pub fn new_transport_id(&self) -> TransportId {
        TransportId(self.next_transport.fetch_add(1, Ordering::Relaxed))
    }

    async fn call<T>(
        &self,
        worker: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (tx, rx) = oneshot::channel();
        let handle = self.workers.get(worker).ok_or(MediaError::WorkerGone)?;
        handle
            .commands
            .send(make(tx))
            .map_err(|_| MediaError::WorkerGone)?;
        rx.await.map_err(|_| MediaError::WorkerGone)
    }

    /// Apply a publisher's SDP offer, creating its transport on first use.
    /// Returns the answer and the producers this offer added.
    pub async fn publisher_offer(
        &self,
        worker: usize,
        transport: TransportId,
        sdp: String,
    ) -> Result<(String, Vec<NewProducer>), MediaError> {
        self.call(worker, |reply| Command::PublisherOffer {
            transport,
            sdp,
            reply,
        })
        .await?
    }

    /// Create a subscriber transport for a room on worker `home`; it may be placed on another
    /// worker (`place`), which every later call naming it finds.
    pub async fn create_subscriber(
        &self,
        home: usize,
        transport: TransportId,
    ) -> Result<(), MediaError> {
        let worker = self.place(home);
        self.record_placement(home, transport, worker);
        self.call(worker, |reply| Command::CreateSubscriber {
            transport,
            reply,
        })
        .await
    }

    /// Start forwarding `producer` to the subscriber transport (triggers a subscriber offer).
    pub async fn subscribe(
        &self,
        worker: usize,
        transport: TransportId,
        producer: ProducerId,
        stream_id: String,
    ) -> Result<(), MediaError> {
        let target = self.locate(worker, transport);
        self.ensure_mirror(worker, target, producer).await?;
        self.call(target, |reply| Command::Subscribe {
            transport,
            producer,
            stream_id,
            reply,
        })
        .await?
    }

    pub async fn subscriber_answer(
        &self,
        worker: usize,
        transport: TransportId,
        sdp: String,
    ) -> Result<(), MediaError> {
        let worker = self.locate(worker, transport);
        self.call(worker, |reply| Command::SubscriberAnswer {
            transport,
            sdp,
            reply,
        })
        .await?
    }

    pub async fn set_preference(
        &self,
        worker: usize,
        transport: TransportId,
        producer: ProducerId,
        preference: Preference,
    ) -> Result<(), MediaError> {
        let home = worker;
        let worker = self.locate(home, transport);
        let rtp = self
            .call(worker, |reply| Command::SetPreference {
                transport,
                producer,
                preference,
                reply,
            })
            .await?;
        match rtp {
            Ok(()) => Ok(()),
            // Not a WebRTC consumer: maybe the participant takes this track as frames.
            Err(e) => self
                .set_frame_preference(home, transport, producer, preference)
                .await
                .map_err(|_| e),
        }
    }

    /// Rank a consumer against the subscriber's others (1–255) when its link is short.
    pub async fn set_priority(
        &self,
        worker: usize,
        transport: TransportId,
        producer: ProducerId,
        priority: u8,
    ) -> Result<(), MediaError> {
        let worker = self.locate(worker, transport);
        self.run(worker, move |core, now, egress| {
            core.set_priority(transport, producer, priority, now, egress)
        })
        .await?
    }

    /// Close a transport; a publisher's producers (and everyone's consumers of them) go with it.
    /// A producer fed by the WebTransport session `publisher` (frames on its own streams),
    /// on the room's worker.
    pub async fn create_frame_producer(
        &self,
        worker: usize,
        publisher: TransportId,
        codec: FrameCodec,
        rids: Vec<String>,
    ) -> Result<NewProducer, MediaError> {
        self.run(worker, move |core, _, _| {
            core.create_frame_producer(publisher, codec, rids)
        })
        .await?
    }

    /// Hand one of `publisher`'s media streams to the room's worker, which reads it from then
    /// on (its header says which of the publisher's producers it feeds).
    pub fn ingest_frames(
        &self,
        worker: usize,
        publisher: TransportId,
        stream: FrameStream,
    ) -> Result<(), MediaError> {
        let handle = self.workers.get(worker).ok_or(MediaError::WorkerGone)?;
        handle
            .commands
            .send(Command::IngestFrames { publisher, stream })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// Send `producer`'s frames to the WebTransport session of subscriber transport
    /// `subscriber`, from the room's worker (where the producer lives).
    pub async fn create_frame_consumer(
        &self,
        worker: usize,
        subscriber: TransportId,
        producer: ProducerId,
        session: Arc<dyn FrameSession>,
    ) -> Result<FrameConsumerInfo, MediaError> {
        self.ensure_remote_mirror(worker, producer).await?;
        self.run(worker, move |core, now, _| {
            core.create_frame_consumer(subscriber, producer, session, now)
        })
        .await?
    }

    pub async fn set_frame_preference(
        &self,
        worker: usize,
        subscriber: TransportId,
        producer: ProducerId,
        preference: Preference,
    ) -> Result<(), MediaError> {
        self.run(worker, move |core, now, _| {
            core.set_frame_preference(subscriber, producer, preference, now)
        })
        .await?
    }

    pub async fn close_transport(
        &self,
        worker: usize,
        transport: TransportId,
    ) -> Result<(), MediaError> {
        let home = worker;
        let worker = self.locate(home, transport);
        let closed = self
            .call(worker, |reply| Command::CloseTransport { transport, reply })
            .await;
        // WebTransport consumers under this id live on the room's worker whatever the
        // placement of its WebRTC transport.
        if worker != home {
            let _ = self
                .call(home, |reply| Command::CloseTransport { transport, reply })
                .await;
        }
        self.placements().remove(&transport);
        closed
    }

    /// What `joinRoomResponse.routerRtpCapabilities` carries.
    pub fn capabilities(&self) -> &RtpCapabilities {
        &self.capabilities
    }

    /// Run `task` on a worker's thread, against its core.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        worker: usize,
        task: impl FnOnce(&mut WorkerCore, std::time::Instant, &mut dyn Egress) -> T + Send + 'static,
    ) -> Result<T, MediaError> {
        self.call(worker, |reply| {
            Command::Run(Box::new(move |core, now, egress| {
                let _ = reply.send(task(core, now, egress));
            }))
        })
        .await
    }

    pub async fn create_ortc_transport(
        &self,
        worker: usize,
        transport: TransportId,
        send: bool,
    ) -> Result<TransportParameters, MediaError> {
        // A send transport carries producers, which stay on their room's worker.
        let home = worker;
        let worker = if send { home } else { self.place(home) };
        self.record_placement(home, transport, worker);
        self.run(worker, move |core, now, _| {
            core.create_ortc_transport(transport, send, now)
        })
        .await?
    }

    pub async fn connect_ortc(
        &self,
        worker: usize,
        transport: TransportId,
        role: String,
        algorithm: String,
        value: String,
    ) -> Result<(), MediaError> {
        let worker = self.locate(worker, transport);
        self.run(worker, move |core, now, egress| {
            core.connect_ortc(transport, &role, &algorithm, &value, now, egress)
        })
        .await?
    }

    pub async fn ortc_publish(
        &self,
        worker: usize,
        transport: TransportId,
        kind: Kind,
        params: RtpParameters,
    ) -> Result<NewProducer, MediaError> {
        self.run(worker, move |core, now, egress| {
            core.ortc_publish(transport, kind, params, now, egress)
        })
        .await?
    }

    pub async fn ortc_consume(
        &self,
        worker: usize,
        transport: TransportId,
        producer: ProducerId,
        stream_id: String,
        caps: RtpCapabilities,
        paused: bool,
    ) -> Result<(ConsumerCreated, RtpParameters), MediaError> {
        let home = worker;
        let worker = self.locate(home, transport);
        self.ensure_mirror(home, worker, producer).await?;
        self.run(worker, move |core, now, egress| {
            core.ortc_consume(transport, producer, stream_id, &caps, paused, now, egress)
        })
        .await?
    }

    pub async fn whep_offer(
        &self,
        worker: usize,
        transport: TransportId,
        sdp: String,
        producers: Vec<(ProducerId, String)>,
    ) -> Result<(String, Vec<ProducerId>), MediaError> {
        for (producer, _) in &producers {
            self.ensure_remote_mirror(worker, *producer).await?;
        }
        self.run(worker, move |core, now, egress| {
            core.whep_offer(transport, &sdp, &producers, now, egress)
        })
        .await?
    }

    pub async fn set_consumer_paused(
        &self,
        worker: usize,
        transport: TransportId,
        producer: ProducerId,
        paused: bool,
    ) -> Result<(), MediaError> {
        let worker = self.locate(worker, transport);
        self.run(worker, move |core, now, egress| {
            core.set_consumer_paused(transport, producer, paused, now, egress)
        })
        .await?
    }

    pub async fn set_producer_paused(
        &self,
        worker: usize,
        producer: ProducerId,
        paused: bool,
    ) -> Result<(), MediaError> {
        self.run(worker, move |core, now, egress| {
            core.set_producer_paused(producer, paused, now, egress)
        })
        .await?
    }

    pub async fn close_producer(
        &self,
        worker: usize,
        producer: ProducerId,
    ) -> Result<(), MediaError> {
        self.run(worker, move |core, now, egress| {
            core.close_producer(producer, now, egress)
        })
        .await?
    }

    pub async fn restart_ice(
        &self,
        worker: usize,
        transport: TransportId,
    ) -> Result<serde_json::Value, MediaError> {
        let worker = self.locate(worker, transport);
        self.run(worker, move |core, _, _| core.restart_ice(transport))
            .await?
    }

    pub async fn stats(&self) -> WorkerStats {
        self.worker_stats().await.into_iter().sum()
    }

    /// Each worker's own counters, in worker order (a worker that stopped answers zeros).
    pub async fn worker_stats(&self) -> Vec<WorkerStats> {
        let mut out = Vec::with_capacity(self.workers.len());
        for i in 0..self.workers.len() {
            let stats = self.call(i, |reply| Command::Stats { reply }).await;
            out.push(stats.unwrap_or_default());
        }
        out
    }
}
