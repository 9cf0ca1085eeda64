//! The I/O edge of one worker: a thread with a single-threaded tokio runtime that owns one UDP
//! socket and one [`WorkerCore`]. Signaling reaches it only through the command channel.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::core::{Egress, WorkerCore};
use super::egress::BatchEgress;
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
    /// Any other operation on the core (ORTC, WHEP, pause...): the closure replies itself.
    Run(CoreTask),
}

pub(crate) type CoreTask = Box<dyn FnOnce(&mut WorkerCore, Instant, &mut dyn Egress) + Send>;

pub(crate) struct WorkerHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub local_addr: SocketAddr,
}

impl WorkerHandle {
    pub fn spawn(
        index: usize,
        config: &MediaConfig,
        events: mpsc::UnboundedSender<MediaEvent>,
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
        let local_addr = socket.local_addr()?;
        let candidate_addr = SocketAddr::new(config.announced_ip, local_addr.port());
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
                    let core = WorkerCore::new(candidate_addr, &codecs, bwe, events);
                    run(index, socket, core, rx).await;
                });
            })?;
        tracing::info!(worker = index, %local_addr, %candidate_addr, "media worker started");
        Ok(WorkerHandle {
            commands,
            local_addr,
        })
    }
}

/// Largest burst of received datagrams handled before timers and commands get a turn.
const RECV_BURST: usize = 256;

async fn run(
    index: usize,
    socket: UdpSocket,
    mut core: WorkerCore,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Everything one wake-up produces (a publisher packet fans out to every subscriber) is
    // queued here and leaves in `sendmmsg` batches; the queue is empty whenever we wait.
    let mut egress = BatchEgress::new(&socket);
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
            command = commands.recv() => {
                let Some(command) = command else {
                    tracing::info!(worker = index, "media worker stopping");
                    return;
                };
                handle_command(&mut core, command, &mut egress);
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = housekeeping.tick() => {
                core.tick(Instant::now(), &mut egress);
                if egress.dropped > dropped_reported {
                    tracing::debug!(
                        worker = index,
                        dropped = egress.dropped - dropped_reported,
                        "egress datagrams dropped (socket buffer full)"
                    );
                    dropped_reported = egress.dropped;
                }
            }
        }
        core.handle_timeouts(Instant::now(), &mut egress);
        egress.flush();
    }
}

fn handle_command(core: &mut WorkerCore, command: Command, egress: &mut dyn Egress) {
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
        Command::Run(task) => task(core, now, egress),
    }
}
