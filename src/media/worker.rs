//! The I/O edge of one worker: a thread with a single-threaded tokio runtime that owns one UDP
//! socket and one [`WorkerCore`]. Signaling reaches it only through the command channel.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::core::{Egress, Relay, WorkerCore};
use super::egress::BatchEgress;
use super::frames::ingest::{read_stream, FrameInput, FrameStream, FRAME_INBOX};
use super::links::RelayPeers;
use super::tcp::{Adoption, LinkInput, Links, TcpCounters, WORKER_INBOX};
use super::{
    MediaConfig, MediaError, MediaEvent, NewProducer, Preference, ProducerId, TransportId,
    WorkerStats,
};

const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);
/// Largest datagram we accept; WebRTC stays under ~1200 bytes, the rest is slack.
const RECV_BUFFER: usize = 2048;

pub(crate) enum Command {
    PublisherOffer {
        transport: TransportId,
        sdp: String,
        reply: oneshot::Sender<Result<(String, Vec<NewProducer>), MediaError>>,
    },
    CreateSubscriber {
        transport: TransportId,
        reply: oneshot::Sender<()>,
    },
    Subscribe {
        transport: TransportId,
        producer: ProducerId,
        stream_id: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    SubscriberAnswer {
        transport: TransportId,
        sdp: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    SetPreference {
        transport: TransportId,
        producer: ProducerId,
        preference: Preference,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    CloseTransport {
        transport: TransportId,
        reply: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<WorkerStats>,
    },
    /// An ICE-TCP connection whose first frame was read by the accept thread: take it if
    /// that frame claims one of this worker's transports, else give it back.
    AdoptTcp {
        stream: std::net::TcpStream,
        peer: SocketAddr,
        first_frame: Vec<u8>,
        reply: oneshot::Sender<Adoption>,
    },
    /// A WebTransport publisher's media stream: read by a task on this worker's thread.
    IngestFrames {
        publisher: TransportId,
        stream: FrameStream,
    },
    /// Any other operation on the core (ORTC, WHEP, pause...): the closure replies itself.
    Run(CoreTask),
}

pub(crate) type CoreTask = Box<dyn FnOnce(&mut WorkerCore, Instant, &mut dyn Egress) + Send>;

pub(crate) struct WorkerHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub local_addr: SocketAddr,
}

/// How a worker reaches the node's other workers (`core/relay.rs`), and tells the router
/// how loaded it is.
pub(crate) struct WorkerLinks {
    /// Its own relay inbox.
    pub inbox: mpsc::Receiver<Relay>,
    /// Every worker's inbox, by index (its own included, never used), and the node links'.
    pub peers: Arc<RelayPeers>,
    /// Consumers on each worker, by index; this worker keeps its own slot current.
    pub loads: Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

impl WorkerHandle {
    pub fn spawn(
        index: usize,
        config: &MediaConfig,
        ice_tcp_port: Option<u16>,
        tcp_counters: Arc<TcpCounters>,
        events: mpsc::UnboundedSender<MediaEvent>,
        links: WorkerLinks,
    ) -> anyhow::Result<Self> {
        let port = if config.port_min == 0 {
            0
        } else {
            config.port_min + index as u16
        };
        let bind = SocketAddr::new(config.listen_ip, port);
        let socket = StdUdpSocket::bind(bind)
            .map_err(|e| anyhow::anyhow!("media worker {index}: cannot bind UDP {bind}: {e}"))?;
        socket.set_nonblocking(true)?;
        grow_socket_buffers(&socket);
        let local_addr = socket.local_addr()?;
        let candidate_addr = SocketAddr::new(config.announced_ip, local_addr.port());
        let tcp_candidate_addr =
            ice_tcp_port.map(|port| SocketAddr::new(config.announced_ip, port));
        let codecs = config.codecs.clone();
        let bwe = config.bwe;
        let (commands, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("media-worker-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                runtime.block_on(async move {
                    let socket = UdpSocket::from_std(socket).expect("register UDP socket");
                    let mut core =
                        WorkerCore::new(candidate_addr, &codecs, bwe, events).with_index(index);
                    if let Some(addr) = tcp_candidate_addr {
                        core = core.with_tcp_candidate(addr);
                    }
                    run(index, socket, core, rx, tcp_counters, links).await;
                });
            })?;
        tracing::info!(worker = index, %local_addr, %candidate_addr, "media worker started");
        Ok(WorkerHandle {
            commands,
            local_addr,
        })
    }
}

/// Kernel buffers of a worker's UDP socket. Linux's default (≈ 208 KB) holds ≈ 150 datagrams:
/// a keyframe burst from several publishers arriving while the worker fans out one packet to
/// hundreds of subscribers overflows it, and every subscriber then loses the same packets.
/// 4 MB is `net.core.rmem_max` on common distributions; as root it is forced past a lower max.
const SOCKET_BUFFER_BYTES: libc::c_int = 4 * 1024 * 1024;

/// Grow `socket`'s kernel buffers to [`SOCKET_BUFFER_BYTES`]: the media workers' sockets, and
/// the WebTransport endpoint's (its one socket carries every client's signaling and
/// handshakes; see `transport::webtransport`).
pub(crate) fn grow_socket_buffers(socket: &StdUdpSocket) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |option| {
            // SAFETY: setsockopt(2) on a socket we own, with a pointer to a live c_int.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&SOCKET_BUFFER_BYTES as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
            }
        };
        // FORCE needs CAP_NET_ADMIN; without it the plain option is capped at the sysctl max.
        if !set(force) && !set(plain) {
            tracing::warn!(error = %std::io::Error::last_os_error(), "UDP socket buffer not grown");
        }
    }
}

/// Largest burst of received datagrams handled before timers and commands get a turn.
const RECV_BURST: usize = 256;

async fn run(
    index: usize,
    socket: UdpSocket,
    mut core: WorkerCore,
    mut commands: mpsc::UnboundedReceiver<Command>,
    tcp_counters: Arc<TcpCounters>,
    links: WorkerLinks,
) {
    let WorkerLinks {
        inbox: mut relay_inbox,
        peers,
        loads,
    } = links;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Everything one wake-up produces (a publisher packet fans out to every subscriber) is
    // queued here and leaves in `sendmmsg` batches; the queue is empty whenever we wait.
    // ICE-TCP links' readers run on this thread too and deliver through `tcp_inbox`.
    let (inbox, mut tcp_inbox) = mpsc::channel(WORKER_INBOX);
    let mut egress = WorkerEgress {
        udp: BatchEgress::new(&socket),
        tcp: Links::new(inbox, tcp_counters),
    };
    // WebTransport publishers' stream readers run on this thread and deliver here.
    let (frame_tx, mut frame_inbox) = mpsc::channel::<FrameInput>(FRAME_INBOX);
    let mut next_frame_stream: u64 = 0;
    let mut dropped_reported = 0;
    loop {
        let deadline = core.next_deadline(Instant::now());
        tokio::select! {
            biased;
            ready = socket.readable() => {
                if ready.is_err() {
                    continue;
                }
                // Drain what is queued so one wake-up serves a burst of datagrams.
                for _ in 0..RECV_BURST {
                    match socket.try_recv_from(&mut buf) {
                        Ok((len, source)) => {
                            core.handle_datagram(Instant::now(), source, &buf[..len], &mut egress);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // ICMP port unreachable etc. surface here on Linux; not fatal.
                            tracing::trace!(worker = index, error = %e, "recv error");
                            break;
                        }
                    }
                }
            }
            Some(relay) = relay_inbox.recv() => {
                core.on_relay(relay, Instant::now(), &mut egress);
                for _ in 0..RECV_BURST {
                    let Ok(relay) = relay_inbox.try_recv() else { break };
                    core.on_relay(relay, Instant::now(), &mut egress);
                }
            }
            Some(input) = tcp_inbox.recv() => {
                on_link_input(&mut core, input, &mut egress);
                // A burst from several links is served in one wake-up, as UDP's is.
                for _ in 0..RECV_BURST {
                    let Ok(input) = tcp_inbox.try_recv() else { break };
                    on_link_input(&mut core, input, &mut egress);
                }
            }
            Some(input) = frame_inbox.recv() => {
                core.on_frame_input(input, Instant::now(), &mut egress);
                for _ in 0..RECV_BURST {
                    let Ok(input) = frame_inbox.try_recv() else { break };
                    core.on_frame_input(input, Instant::now(), &mut egress);
                }
            }
            command = commands.recv() => {
                match command {
                    None => {
                        tracing::info!(worker = index, "media worker stopping");
                        return;
                    }
                    Some(Command::IngestFrames { publisher, stream }) => {
                        next_frame_stream += 1;
                        tokio::spawn(read_stream(next_frame_stream, publisher, stream, frame_tx.clone()));
                    }
                    Some(command) => handle_command(&mut core, command, &mut egress),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = housekeeping.tick() => {
                core.tick(Instant::now(), &mut egress);
                egress.tcp.retain_transports(|id| core.has_transport(id));
                if egress.udp.dropped > dropped_reported {
                    tracing::debug!(
                        worker = index,
                        dropped = egress.udp.dropped - dropped_reported,
                        "egress datagrams dropped (socket buffer full)"
                    );
                    dropped_reported = egress.udp.dropped;
                }
            }
        }
        core.handle_timeouts(Instant::now(), &mut egress);
        egress.udp.flush();
        // What this wake-up has for other workers leaves in one message per worker; a full
        // inbox drops it (counted) rather than stall this worker's own subscribers.
        for (to, relay) in core.take_relay() {
            if let Err(relay) = peers.send(to, relay) {
                core.relay_dropped(&relay);
            }
        }
        if let Some(load) = loads.get(index) {
            load.store(core.consumer_count(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The worker's two ways out: batched UDP and its ICE-TCP links.
struct WorkerEgress {
    udp: BatchEgress,
    tcp: Links,
}

impl Egress for WorkerEgress {
    fn send(&mut self, destination: SocketAddr, payload: &[u8]) {
        self.udp.push(destination, payload);
    }

    fn send_tcp(&mut self, destination: SocketAddr, payload: &[u8]) {
        self.tcp.send(destination, payload);
    }

    fn slot(&mut self) -> Option<&mut [u8]> {
        Some(self.udp.slot())
    }

    fn commit(&mut self, proto: Protocol, destination: SocketAddr, len: usize) {
        match proto {
            Protocol::Udp => self.udp.commit(destination, len),
            // The slot is the UDP batch's next one; an ICE-TCP frame is copied out of it.
            _ => self.tcp.send(destination, &self.udp.slot()[..len]),
        }
    }
}

fn on_link_input(core: &mut WorkerCore, input: LinkInput, egress: &mut WorkerEgress) {
    match input {
        LinkInput::Frame { peer, link, data } => {
            if let Some(transport) = egress.tcp.transport_of(peer, link) {
                core.handle_tcp_frame(Instant::now(), transport, peer, &data, egress);
            }
        }
        LinkInput::Ended { peer, link, reason } => egress.tcp.close(peer, link, reason),
    }
}

/// Take an ICE-TCP connection if its first frame claims one of our transports.
fn adopt_tcp(
    core: &mut WorkerCore,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    first_frame: Vec<u8>,
    egress: &mut WorkerEgress,
) -> Adoption {
    let Some(transport) = core.claim_tcp(&first_frame) else {
        return Adoption::NotMine {
            stream,
            first_frame,
        };
    };
    if let Err(reason) = egress.tcp.adopt(transport, stream, peer) {
        return Adoption::Refused(reason);
    }
    core.handle_tcp_frame(Instant::now(), transport, peer, &first_frame, egress);
    Adoption::Adopted
}

fn handle_command(core: &mut WorkerCore, command: Command, egress: &mut WorkerEgress) {
    let now = Instant::now();
    match command {
        Command::PublisherOffer {
            transport,
            sdp,
            reply,
        } => {
            let _ = reply.send(core.publisher_offer(transport, &sdp, now, egress));
        }
        Command::CreateSubscriber { transport, reply } => {
            core.create_subscriber(transport, now);
            let _ = reply.send(());
        }
        Command::Subscribe {
            transport,
            producer,
            stream_id,
            reply,
        } => {
            let _ = reply.send(core.subscribe(transport, producer, stream_id, now, egress));
        }
        Command::SubscriberAnswer {
            transport,
            sdp,
            reply,
        } => {
            let _ = reply.send(core.subscriber_answer(transport, &sdp, now, egress));
        }
        Command::SetPreference {
            transport,
            producer,
            preference,
            reply,
        } => {
            let _ = reply.send(core.set_preference(transport, producer, preference, now, egress));
        }
        Command::CloseTransport { transport, reply } => {
            core.close_transport(transport, now, egress);
            let _ = reply.send(());
        }
        Command::Stats { reply } => {
            let _ = reply.send(core.stats());
        }
        Command::AdoptTcp {
            stream,
            peer,
            first_frame,
            reply,
        } => {
            let _ = reply.send(adopt_tcp(core, stream, peer, first_frame, egress));
        }
        Command::Run(task) => task(core, now, egress),
        // Taken by the loop, which owns the frame inbox.
        Command::IngestFrames { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(socket: &StdUdpSocket, option: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) into a live c_int of the given size.
        unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::SOL_SOCKET,
                option,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        value
    }

    #[test]
    fn worker_sockets_get_large_buffers() {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let before = buffer(&socket, libc::SO_RCVBUF);
        grow_socket_buffers(&socket);
        // The kernel reports twice what was set (bookkeeping overhead), capped by rmem_max
        // unless forced; either way far above its ≈ 208 KB default.
        let after = buffer(&socket, libc::SO_RCVBUF);
        assert!(after >= 1 << 20 && after > before, "{before} -> {after}");
        assert!(buffer(&socket, libc::SO_SNDBUF) >= 1 << 20);
    }
}
