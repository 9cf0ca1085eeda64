//! The machine's own floor for forwarding one packet, measured in the same run as the load so
//! that figures from different (or noisy) machines compare: handing one 1200-byte datagram to
//! the kernel on loopback with `sendmmsg(2)` (a batch of 64, as the server sends) plus
//! AES-128-GCM over 1200 bytes (SRTP's cipher). Both are the sending thread's CPU time per
//! packet, so another busy core does not inflate them, and the cheapest of a few rounds.
//! Linux only, like the server.

use std::net::UdpSocket;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use serde::{Deserialize, Serialize};

/// Payload size of both probes: a full-size video RTP packet.
pub const PACKET_BYTES: usize = 1200;
const BATCH: usize = 64;

/// CPU µs per packet of each part of the floor, and their sum.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Floor {
    pub sendmmsg_us: f64,
    pub aes_gcm_us: f64,
    pub total_us: f64,
}

/// Rounds per probe; the floor is each probe's cheapest round (a floor is a minimum: the other
/// rounds were disturbed by something else on the machine).
const ROUNDS: u32 = 5;

impl Floor {
    /// Run both probes for about `budget` in all.
    pub fn measure(budget: Duration) -> anyhow::Result<Floor> {
        let round = budget / (2 * ROUNDS);
        let (mut sendmmsg_us, mut aes_gcm_us) = (f64::MAX, f64::MAX);
        for _ in 0..ROUNDS {
            sendmmsg_us = sendmmsg_us.min(sendmmsg_probe(round)?);
            aes_gcm_us = aes_gcm_us.min(aes_gcm_probe(round)?);
        }
        Ok(Floor {
            sendmmsg_us,
            aes_gcm_us,
            total_us: sendmmsg_us + aes_gcm_us,
        })
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// µs of CPU per datagram sent by `sendmmsg` to a loopback socket that a second thread
/// drains (a full receive buffer would drop datagrams early and look cheaper).
fn sendmmsg_probe(budget: Duration) -> anyhow::Result<f64> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let to = match receiver.local_addr()? {
        std::net::SocketAddr::V4(v4) => v4,
        other => anyhow::bail!("unexpected receiver address {other}"),
    };
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while receiver.recv(&mut buf).is_ok() {}
    });
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sender);
    let payload = [0x5au8; PACKET_BYTES];
    // Unconnected, with an address per message, as the server sends (one socket, many
    // destinations): each datagram pays its route lookup.
    let mut addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut iovecs = [libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: PACKET_BYTES,
    }; BATCH];
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (header, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
        header.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        header.msg_hdr.msg_iov = iov;
        header.msg_hdr.msg_iovlen = 1;
    }
    let wall = std::time::Instant::now();
    let start = thread_cpu();
    let mut sent: u64 = 0;
    while wall.elapsed() < budget {
        // SAFETY: the headers point at an address, iovecs and a payload that outlive the call.
        let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // A full send buffer: let the drain catch up.
            std::thread::yield_now();
        }
    }
    let cpu = thread_cpu() - start;
    drop(sender);
    let _ = drain.join();
    anyhow::ensure!(sent > 0, "sendmmsg sent nothing");
    Ok(cpu.as_secs_f64() * 1e6 / sent as f64)
}

/// µs of CPU per AES-128-GCM seal of [`PACKET_BYTES`].
fn aes_gcm_probe(budget: Duration) -> anyhow::Result<f64> {
    let key = UnboundKey::new(&AES_128_GCM, &[7u8; 16])
        .map_err(|_| anyhow::anyhow!("AES-128-GCM key"))?;
    let key = LessSafeKey::new(key);
    let mut buf = vec![0x5au8; PACKET_BYTES];
    let wall = std::time::Instant::now();
    let start = thread_cpu();
    let mut sealed: u64 = 0;
    while wall.elapsed() < budget {
        for _ in 0..256 {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&sealed.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from([0u8; 12]),
                    &mut buf,
                )
                .map_err(|_| anyhow::anyhow!("AES-128-GCM seal"))?;
            std::hint::black_box(tag.as_ref());
            sealed += 1;
        }
    }
    let cpu = thread_cpu() - start;
    Ok(cpu.as_secs_f64() * 1e6 / sealed as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_probes_measure_a_positive_cost() {
        let floor = Floor::measure(Duration::from_millis(200)).unwrap();
        assert!(
            floor.sendmmsg_us > 0.0 && floor.aes_gcm_us > 0.0,
            "{floor:?}"
        );
        assert!((floor.total_us - floor.sendmmsg_us - floor.aes_gcm_us).abs() < 1e-9);
    }
}
