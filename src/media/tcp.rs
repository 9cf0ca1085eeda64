//! ICE-TCP: one passive TCP port for the node (RFC 6544), framed as RFC 4571 (a 2-byte
//! big-endian length before every STUN, DTLS, RTP or RTCP packet), for clients whose networks
//! drop UDP.
//!
//! The data path: the accept thread reads a new connection's first frame (a STUN binding
//! request naming one of our ufrags), asks each worker in turn whether it owns that ufrag,
//! and hands the socket to the one that does. From then on the connection lives on that
//! worker's runtime: a reader task feeds its frames to the worker loop and a writer task
//! drains a bounded queue. A client that does not read is dropped when its queue is full,
//! so it can never stall the worker or hold unbounded memory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::worker::Command;
use super::TransportId;

/// Largest frame accepted. WebRTC packets stay near 1200 bytes on TCP as on UDP; RFC 4571
/// allows 65535, which we refuse rather than buffer.
pub const MAX_FRAME: usize = 4096;
/// A new connection must send its binding request within this.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// A tied link silent this long is closed (ICE consent checks come every few seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections waiting for their first frame, in all and per client IP; more are closed at
/// once, so idle sockets cannot pile up.
pub const MAX_PENDING: usize = 512;
pub const MAX_PENDING_PER_IP: usize = 32;
/// Frames queued for one link before the client counts as too slow and is dropped
/// (≈ 600 KB, about a second of a 720p stream).
pub const WRITE_QUEUE_FRAMES: usize = 512;
/// Kernel send buffer of a link. Fixed (not autotuned up to `tcp_wmem`'s 4 MB) so a stalled
/// client is noticed within about a second and holds bounded memory; 256 KB still carries
/// 200 Mbit/s at 10 ms RTT.
pub const SEND_BUFFER_BYTES: usize = 256 * 1024;
/// Links one transport may have (a client opens one per local interface it tries).
pub const MAX_LINKS_PER_TRANSPORT: usize = 4;
/// Frames from all links of a worker waiting for its loop; readers wait when it is full.
pub const WORKER_INBOX: usize = 1024;

/// Why a connection or link ended, as the `reason` label of `sfu_ice_tcp_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// Too many connections waiting for their first frame.
    Busy,
    /// No first frame in time, or a link silent past [`IDLE_TIMEOUT`].
    Idle,
    /// A frame longer than [`MAX_FRAME`].
    Oversize,
    /// The first frame is not a signed binding request for a transport of ours.
    Unclaimed,
    /// The transport has its maximum of links already.
    TooManyLinks,
    /// The client did not read fast enough.
    SlowReader,
    /// The client closed, or the socket failed.
    Closed,
    /// The transport it belonged to is gone.
    TransportGone,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Busy,
        CloseReason::Idle,
        CloseReason::Oversize,
        CloseReason::Unclaimed,
        CloseReason::TooManyLinks,
        CloseReason::SlowReader,
        CloseReason::Closed,
        CloseReason::TransportGone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Busy => "busy",
            CloseReason::Idle => "idle",
            CloseReason::Oversize => "oversize",
            CloseReason::Unclaimed => "unclaimed",
            CloseReason::TooManyLinks => "too_many_links",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::Closed => "closed",
            CloseReason::TransportGone => "transport_gone",
        }
    }
}

/// One server's ICE-TCP counters, shared by the accept thread and the workers' links
/// (exported at scrape time, like the workers' own totals).
#[derive(Default)]
pub struct TcpCounters {
    closed: [AtomicU64; CloseReason::ALL.len()],
    links: AtomicU64,
    opened: AtomicU64,
}

impl TcpCounters {
    pub fn record(&self, reason: CloseReason) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections or links ended for `reason` so far.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].load(Ordering::Relaxed)
    }

    /// Links open now, on all workers.
    pub fn links(&self) -> u64 {
        self.links.load(Ordering::Relaxed)
    }

    /// Connections tied to a transport so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// Read one RFC 4571 frame into `buf` (replacing its contents).
async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> Result<(), CloseReason> {
    let mut len = [0u8; 2];
    reader
        .read_exact(&mut len)
        .await
        .map_err(|_| CloseReason::Closed)?;
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(CloseReason::Oversize);
    }
    buf.resize(len, 0);
    reader
        .read_exact(buf)
        .await
        .map_err(|_| CloseReason::Closed)?;
    Ok(())
}

/// Start accepting on `listener` on a thread of its own; connections go to `workers`.
pub fn spawn_listener(
    listener: std::net::TcpListener,
    workers: Vec<mpsc::UnboundedSender<Command>>,
    counters: Arc<TcpCounters>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("ice-tcp-accept".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("ICE-TCP runtime");
            runtime.block_on(accept_loop(listener, Arc::new(workers), counters));
        })?;
    Ok(())
}

async fn accept_loop(
    listener: std::net::TcpListener,
    workers: Arc<Vec<mpsc::UnboundedSender<Command>>>,
    counters: Arc<TcpCounters>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register TCP listener");
    let pending = Arc::new(Mutex::new(Pending::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Pending::enter(&pending, peer.ip()) else {
            counters.record(CloseReason::Busy);
            continue;
        };
        let workers = workers.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let outcome = hand_over(stream, peer, &workers).await;
            drop(slot);
            if let Err(reason) = outcome {
                tracing::debug!(%peer, ?reason, "ICE-TCP connection refused");
                counters.record(reason);
            }
        });
    }
}

/// Read the first frame and give the socket to the worker that owns its ufrag.
async fn hand_over(
    mut stream: TcpStream,
    peer: SocketAddr,
    workers: &[mpsc::UnboundedSender<Command>],
) -> Result<(), CloseReason> {
    let _ = stream.set_nodelay(true);
    let mut first = Vec::new();
    tokio::time::timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut stream, &mut first))
        .await
        .map_err(|_| CloseReason::Idle)??;
    let mut stream = stream.into_std().map_err(|_| CloseReason::Closed)?;
    for worker in workers {
        let (reply, answer) = oneshot::channel();
        let offer = Command::AdoptTcp {
            stream,
            peer,
            first_frame: std::mem::take(&mut first),
            reply,
        };
        if worker.send(offer).is_err() {
            return Err(CloseReason::Closed);
        }
        match answer.await {
            Ok(Adoption::Adopted) => return Ok(()),
            Ok(Adoption::Refused(reason)) => return Err(reason),
            Ok(Adoption::NotMine {
                stream: s,
                first_frame,
            }) => {
                stream = s;
                first = first_frame;
            }
            Err(_) => return Err(CloseReason::Closed),
        }
    }
    Err(CloseReason::Unclaimed)
}

/// A worker's answer to [`Command::AdoptTcp`].
pub enum Adoption {
    Adopted,
    /// The ufrag is this worker's, but the link cannot be taken.
    Refused(CloseReason),
    /// Not this worker's: the socket comes back for the next one.
    NotMine {
        stream: std::net::TcpStream,
        first_frame: Vec<u8>,
    },
}

/// Connections waiting for their first frame, per client IP.
#[derive(Default)]
struct Pending {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A place among the pending connections, given back when dropped.
struct PendingSlot {
    pending: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Pending {
    fn enter(pending: &Arc<Mutex<Pending>>, ip: IpAddr) -> Option<PendingSlot> {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let here = p.per_ip.get(&ip).copied().unwrap_or(0);
        if p.total >= MAX_PENDING || here >= MAX_PENDING_PER_IP {
            return None;
        }
        p.total += 1;
        *p.per_ip.entry(ip).or_default() += 1;
        Some(PendingSlot {
            pending: pending.clone(),
            ip,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.total -= 1;
        if let Some(n) = p.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.per_ip.remove(&self.ip);
            }
        }
    }
}

/// What a link's reader tells its worker loop.
pub enum LinkInput {
    Frame {
        peer: SocketAddr,
        link: u64,
        data: Vec<u8>,
    },
    Ended {
        peer: SocketAddr,
        link: u64,
        reason: CloseReason,
    },
}

/// One adopted connection, owned by the worker loop. Dropping it closes the socket.
struct Link {
    id: u64,
    transport: TransportId,
    writer: mpsc::Sender<Vec<u8>>,
    tasks: [AbortHandle; 2],
    counters: Arc<TcpCounters>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.counters.links.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's ICE-TCP links, by the client's address (what str0m transmits to).
pub struct Links {
    by_peer: HashMap<SocketAddr, Link>,
    next_id: u64,
    inbox: mpsc::Sender<LinkInput>,
    counters: Arc<TcpCounters>,
}

impl Links {
    /// Links whose readers deliver to `inbox` (the worker loop holds its receiver).
    pub fn new(inbox: mpsc::Sender<LinkInput>, counters: Arc<TcpCounters>) -> Self {
        Links {
            by_peer: HashMap::new(),
            next_id: 1,
            inbox,
            counters,
        }
    }

    /// Take `stream` for `transport`; must run on the worker's runtime.
    pub fn adopt(
        &mut self,
        transport: TransportId,
        stream: std::net::TcpStream,
        peer: SocketAddr,
    ) -> Result<(), CloseReason> {
        let links_of_transport = self
            .by_peer
            .values()
            .filter(|l| l.transport == transport)
            .count();
        if links_of_transport >= MAX_LINKS_PER_TRANSPORT {
            return Err(CloseReason::TooManyLinks);
        }
        set_send_buffer(&stream, SEND_BUFFER_BYTES);
        let stream = TcpStream::from_std(stream).map_err(|_| CloseReason::Closed)?;
        let (read_half, write_half) = stream.into_split();
        let id = self.next_id;
        self.next_id += 1;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let reader = tokio::spawn(read_link(read_half, peer, id, self.inbox.clone()));
        let writer_task = tokio::spawn(write_link(write_half, queue));
        self.counters.links.fetch_add(1, Ordering::Relaxed);
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        // A second connection from the same address replaces the first (it is a new socket).
        self.by_peer.insert(
            peer,
            Link {
                id,
                transport,
                writer,
                tasks: [reader.abort_handle(), writer_task.abort_handle()],
                counters: self.counters.clone(),
            },
        );
        Ok(())
    }

    /// The transport a frame from link `id` at `peer` belongs to, if the link is current.
    pub fn transport_of(&self, peer: SocketAddr, id: u64) -> Option<TransportId> {
        self.by_peer
            .get(&peer)
            .filter(|l| l.id == id)
            .map(|l| l.transport)
    }

    /// Close link `id` at `peer` (if it is still the current one there).
    pub fn close(&mut self, peer: SocketAddr, id: u64, reason: CloseReason) {
        if self.by_peer.get(&peer).is_some_and(|l| l.id == id) {
            self.by_peer.remove(&peer);
            self.counters.record(reason);
        }
    }

    /// Close the links of transports that `alive` no longer knows.
    pub fn retain_transports(&mut self, alive: impl Fn(TransportId) -> bool) {
        self.by_peer.retain(|_, link| {
            let keep = alive(link.transport);
            if !keep {
                link.counters.record(CloseReason::TransportGone);
            }
            keep
        });
    }

    /// Queue one frame for `peer`; a link whose queue is full is dropped (slow reader).
    pub fn send(&mut self, peer: SocketAddr, payload: &[u8]) {
        let Some(link) = self.by_peer.get(&peer) else {
            return;
        };
        let Ok(len) = u16::try_from(payload.len()) else {
            return;
        };
        let mut frame = Vec::with_capacity(payload.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        match link.writer.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(%peer, transport = link.transport.0, "ICE-TCP client too slow, dropped");
                self.by_peer.remove(&peer);
                self.counters.record(CloseReason::SlowReader);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.by_peer.remove(&peer);
                self.counters.record(CloseReason::Closed);
            }
        }
    }
}

fn set_send_buffer(stream: &std::net::TcpStream, bytes: usize) {
    let value = bytes as libc::c_int;
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_SNDBUF not set");
    }
}

async fn read_link(
    read_half: tokio::net::tcp::OwnedReadHalf,
    peer: SocketAddr,
    link: u64,
    inbox: mpsc::Sender<LinkInput>,
) {
    let mut reader = BufReader::new(read_half);
    let reason = loop {
        let mut data = Vec::new();
        match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut reader, &mut data)).await {
            Err(_) => break CloseReason::Idle,
            Ok(Err(reason)) => break reason,
            Ok(Ok(())) => {}
        }
        // Waiting here when the worker is behind pushes back on the client through TCP.
        if inbox
            .send(LinkInput::Frame { peer, link, data })
            .await
            .is_err()
        {
            return;
        }
    };
    let _ = inbox.send(LinkInput::Ended { peer, link, reason }).await;
}

async fn write_link(
    write_half: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut writer = BufWriter::new(write_half);
    while let Some(frame) = queue.recv().await {
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        // Coalesce what is already queued into one write.
        while let Ok(frame) = queue.try_recv() {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_read_whole_and_oversized_ones_refused() {
        let mut wire: &[u8] = &[0, 3, 1, 2, 3, 0, 0, 0xff, 0xff];
        let mut buf = Vec::new();
        read_frame(&mut wire, &mut buf).await.unwrap();
        assert_eq!(buf, [1, 2, 3]);
        read_frame(&mut wire, &mut buf).await.unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            read_frame(&mut wire, &mut buf).await,
            Err(CloseReason::Oversize)
        );
        let mut truncated: &[u8] = &[0, 5, 1];
        assert_eq!(
            read_frame(&mut truncated, &mut buf).await,
            Err(CloseReason::Closed)
        );
    }

    #[test]
    fn pending_connections_are_capped_per_ip_and_released() {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let ip: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..MAX_PENDING_PER_IP)
            .map(|_| Pending::enter(&pending, ip).expect("under the cap"))
            .collect();
        assert!(Pending::enter(&pending, ip).is_none());
        assert!(Pending::enter(&pending, [10, 0, 0, 2].into()).is_some());
        drop(slots);
        assert!(Pending::enter(&pending, ip).is_some());
        assert_eq!(pending.lock().unwrap().total, 0);
    }
}
