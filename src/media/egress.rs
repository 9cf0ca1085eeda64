//! Batched UDP egress: datagrams pushed here are copied into a fixed ring of
//! slots and handed to the kernel with one `sendmmsg(2)` per batch instead of one `sendto(2)`
//! per datagram. str0m has no GSO/sendmmsg of its own (one `Transmit` per datagram) and every
//! subscriber has its own destination, so GSO (one destination per call) does not apply.
//!
//! The worker loop owns one [`BatchEgress`], lets the core write a whole input's output into
//! it (a publisher packet fans out to every subscriber), and calls [`BatchEgress::flush`]
//! before it waits again. A full batch flushes on its own. A full socket buffer drops the
//! datagram, as UDP would. Linux only (`sendmmsg`), like the rest of the media path.

use std::net::SocketAddr;

/// Datagrams per `sendmmsg` call.
pub const BATCH: usize = 64;
/// Slot size; larger datagrams (none in practice: WebRTC stays under ~1200 bytes) go out
/// alone through `sendto`.
const SLOT: usize = 1500;

pub struct BatchEgress {
    fd: std::os::fd::RawFd,
    buffers: Box<[[u8; SLOT]]>,
    lengths: [usize; BATCH],
    destinations: [Option<SocketAddr>; BATCH],
    queued: usize,
    /// Datagrams the kernel refused (full buffer, unreachable, …).
    pub dropped: u64,
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// `sendmmsg`/`sendto` calls made.
    pub syscalls: u64,
}

impl BatchEgress {
    /// Write through `socket`; it must outlive this value (the worker loop owns both).
    pub fn new(socket: &impl std::os::fd::AsRawFd) -> Self {
        Self::with_fd(socket.as_raw_fd())
    }

    fn with_fd(fd: std::os::fd::RawFd) -> Self {
        BatchEgress {
            fd,
            buffers: vec![[0u8; SLOT]; BATCH].into_boxed_slice(),
            lengths: [0; BATCH],
            destinations: [None; BATCH],
            queued: 0,
            dropped: 0,
            sent: 0,
            syscalls: 0,
        }
    }

    /// Send everything queued: one `sendmmsg` per call, repeated until the batch is out.
    pub fn flush(&mut self) {
        let mut start = 0;
        while start < self.queued {
            let n = self.queued - start;
            // Built per flush: pointers into `self` must not outlive this borrow.
            let mut addrs: [std::mem::MaybeUninit<libc::sockaddr_storage>; BATCH] =
                [std::mem::MaybeUninit::uninit(); BATCH];
            let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH];
            // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
            let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for i in 0..n {
                let slot = start + i;
                let destination = self.destinations[slot].expect("queued slot has a destination");
                let addr_len = write_sockaddr(&mut addrs[i], destination);
                iovecs[i] = libc::iovec {
                    iov_base: self.buffers[slot].as_mut_ptr().cast(),
                    iov_len: self.lengths[slot],
                };
                let header = &mut headers[i].msg_hdr;
                header.msg_name = addrs[i].as_mut_ptr().cast();
                header.msg_namelen = addr_len;
                header.msg_iov = &mut iovecs[i];
                header.msg_iovlen = 1;
            }
            // SAFETY: `headers[..n]` point at `addrs`, `iovecs` and `self.buffers`, all alive
            // and unaliased for the duration of the call.
            let sent = unsafe {
                libc::sendmmsg(
                    self.fd,
                    headers.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            self.syscalls += 1;
            if sent > 0 {
                self.sent += sent as u64;
                start += sent as usize;
                continue;
            }
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if error.kind() == std::io::ErrorKind::WouldBlock {
                // The socket buffer is full: the rest of this batch is lost, as with sendto.
                self.dropped += n as u64;
                break;
            }
            // The first datagram failed (e.g. an unreachable destination): skip it only.
            tracing::trace!(error = %error, "sendmmsg");
            self.dropped += 1;
            start += 1;
        }
        self.clear();
    }

    fn clear(&mut self) {
        for destination in &mut self.destinations[..self.queued] {
            *destination = None;
        }
        self.queued = 0;
    }

    /// One datagram too large for a slot: send it on its own.
    fn send_alone(&mut self, destination: SocketAddr, payload: &[u8]) {
        let mut addr = std::mem::MaybeUninit::<libc::sockaddr_storage>::uninit();
        let addr_len = write_sockaddr(&mut addr, destination);
        // SAFETY: `payload` and `addr` are valid for the call.
        let result = unsafe {
            libc::sendto(
                self.fd,
                payload.as_ptr().cast(),
                payload.len(),
                libc::MSG_DONTWAIT,
                addr.as_ptr().cast(),
                addr_len,
            )
        };
        self.syscalls += 1;
        if result < 0 {
            self.dropped += 1;
        } else {
            self.sent += 1;
        }
    }
}

/// Fill a `sockaddr_storage` with `addr`; returns the length to pass along with it.
fn write_sockaddr(
    storage: &mut std::mem::MaybeUninit<libc::sockaddr_storage>,
    addr: SocketAddr,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { storage.as_mut_ptr().cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                storage
                    .as_mut_ptr()
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

impl BatchEgress {
    /// The next free slot, to write one datagram into in place; [`Self::commit`] queues it.
    /// (A full batch flushes as it fills, so there is always one.)
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.buffers[self.queued]
    }

    /// Queue the first `len` bytes of [`Self::slot`] for `destination`.
    pub fn commit(&mut self, destination: SocketAddr, len: usize) {
        let slot = self.queued;
        self.lengths[slot] = len.min(SLOT);
        self.destinations[slot] = Some(destination);
        self.queued += 1;
        if self.queued == BATCH {
            self.flush();
        }
    }

    /// Queue one datagram; a full batch goes out at once.
    pub fn push(&mut self, destination: SocketAddr, payload: &[u8]) {
        if payload.len() > SLOT {
            self.flush();
            self.send_alone(destination, payload);
            return;
        }
        self.slot()[..payload.len()].copy_from_slice(payload);
        self.commit(destination, payload.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_reach_every_destination_in_order() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<_> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for r in &receivers {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
        }
        let mut egress = BatchEgress::new(&sender);
        // More than one batch, and one oversized datagram in the middle.
        let total = BATCH + 10;
        for i in 0..total {
            let to = receivers[i % 3].local_addr().unwrap();
            if i == 20 {
                egress.push(to, &vec![7u8; SLOT + 100]);
            }
            egress.push(to, &(i as u32).to_be_bytes());
        }
        egress.flush();
        assert_eq!(egress.queued, 0);
        assert_eq!(egress.dropped, 0);
        assert_eq!(egress.sent, total as u64 + 1);
        // 64 in the first batch (flushed early by the big one at 20), then the rest.
        assert!(egress.syscalls <= 4, "{} syscalls", egress.syscalls);
        let mut buf = [0u8; 4096];
        for (k, r) in receivers.iter().enumerate() {
            let mut expect: Vec<u32> = (0..total as u32).filter(|i| *i as usize % 3 == k).collect();
            if k == 20 % 3 {
                expect.insert(expect.iter().position(|&i| i == 20).unwrap(), u32::MAX);
            }
            for want in expect {
                let n = r.recv(&mut buf).unwrap();
                if want == u32::MAX {
                    assert_eq!(n, SLOT + 100);
                } else {
                    assert_eq!(&buf[..n], &want.to_be_bytes());
                }
            }
        }
    }

    #[test]
    fn datagrams_written_in_place_interleave_with_pushed_ones() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let mut egress = BatchEgress::new(&sender);
        // Across a batch boundary: commit flushes a full batch like push does.
        let total = BATCH + 5;
        for i in 0..total as u32 {
            if i % 2 == 0 {
                egress.push(to, &i.to_be_bytes());
            } else {
                // A slot still holds an earlier datagram's bytes: only `len` of them count.
                let slot = egress.slot();
                slot[..4].copy_from_slice(&i.to_be_bytes());
                slot[4] = 0xAA;
                egress.commit(to, 5);
            }
        }
        // Written but not committed: never sent.
        egress.slot()[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        egress.flush();
        assert_eq!((egress.sent, egress.dropped), (total as u64, 0));
        let mut buf = [0u8; 64];
        for i in 0..total as u32 {
            let n = receiver.recv(&mut buf).unwrap();
            assert_eq!(&buf[..4], &i.to_be_bytes(), "datagram {i}");
            assert_eq!(n, if i % 2 == 0 { 4 } else { 5 }, "datagram {i}");
        }
        receiver.set_nonblocking(true).unwrap();
        assert!(
            receiver.recv(&mut buf).is_err(),
            "an uncommitted slot went out"
        );
    }
}
