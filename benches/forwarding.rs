//! Forwarding hot path: one SRTP packet into a worker, N SRTP packets out.
//!
//! A real publisher and N real subscribers (str0m, DTLS-SRTP) are connected to one
//! `WorkerCore` over an in-memory network; the timed part is `handle_datagram` for a
//! pre-encrypted VP8 packet, which decrypts, picks the layer, rewrites ids, encrypts N copies
//! and hands them to the egress. Throughput is reported per *forwarded* packet, so
//! 1 / (elements per second) is the CPU time per forwarded packet.
//!
//! Run: `cargo bench --bench forwarding`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sfu::media::core::{Egress, WorkerCore};
use sfu::media::{BweSettings, CodecName, MediaEvent, TransportId};
use str0m::format::Codec;
use str0m::media::{Mid, Rid};
use str0m::rtp::{RtpWrite, SeqNo};
use testkit::payload::vp8_frame;
use testkit::peer::{PeerOptions, PeerState, Poll, Publish};

const SFU_ADDR: &str = "127.0.0.1:40000";

/// Collects what the core sends, for delivery to the in-memory peers.
#[derive(Default)]
struct Wire(Vec<(SocketAddr, Vec<u8>)>);

impl Egress for Wire {
    fn send(&mut self, destination: SocketAddr, payload: &[u8]) {
        self.0.push((destination, payload.to_vec()));
    }

    // The in-memory network has no TCP; the bench's peers only have UDP candidates.
    fn send_tcp(&mut self, destination: SocketAddr, payload: &[u8]) {
        self.send(destination, payload);
    }
}

/// Counts and discards: the timed loop must not measure our own copying.
struct Sink(u64);

impl Egress for Sink {
    fn send(&mut self, _destination: SocketAddr, payload: &[u8]) {
        self.0 += payload.len() as u64;
    }

    fn send_tcp(&mut self, destination: SocketAddr, payload: &[u8]) {
        self.send(destination, payload);
    }
}

/// A testkit peer on the in-memory network (no socket: the bench moves its datagrams).
struct Client {
    addr: SocketAddr,
    peer: PeerState,
}

impl Client {
    fn new(port: u16) -> Self {
        let addr: SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
        let options = PeerOptions {
            record: false,
            ..Default::default()
        };
        Client {
            addr,
            peer: PeerState::new(options, addr).unwrap(),
        }
    }

    /// Drain output; datagrams go to the SFU.
    fn poll(&mut self, to_sfu: &mut Vec<(SocketAddr, Vec<u8>)>) {
        loop {
            match self.peer.poll() {
                Poll::Timeout(_) => return,
                Poll::Transmit(t) => to_sfu.push((self.addr, t.contents.to_vec())),
                Poll::Closed => panic!("client Rtc failed"),
            }
        }
    }
}

struct Setup {
    core: WorkerCore,
    publisher: Client,
    video_mid: Mid,
    subscribers: usize,
    frame: u64,
}

fn pump(core: &mut WorkerCore, clients: &mut HashMap<SocketAddr, Client>, rounds: usize) {
    let sfu: SocketAddr = SFU_ADDR.parse().unwrap();
    for _ in 0..rounds {
        let now = Instant::now();
        let mut to_sfu = Vec::new();
        for c in clients.values_mut() {
            c.peer.timeout(now);
            c.poll(&mut to_sfu);
        }
        let mut wire = Wire::default();
        for (from, data) in to_sfu {
            core.handle_datagram(now, from, &data, &mut wire);
        }
        core.handle_timeouts(now, &mut wire);
        for (to, data) in wire.0 {
            if let Some(c) = clients.get_mut(&to) {
                c.peer.receive(sfu, &data);
            }
        }
        if clients.values().all(|c| c.peer.connected) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("peers did not connect");
}

fn setup(subscribers: usize) -> Setup {
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<MediaEvent>();
    let mut core = WorkerCore::new(
        SFU_ADDR.parse().unwrap(),
        &[CodecName::Opus, CodecName::Vp8],
        BweSettings::default(),
        events_tx,
    );
    let mut wire = Wire::default();
    let now = Instant::now();

    let mut publisher = Client::new(1);
    // Video only: 3-layer VP8 simulcast.
    let offer = publisher.peer.offer_publish(Publish {
        audio: None,
        ..Publish::AUDIO_VIDEO
    });
    let (answer, producers) = core
        .publisher_offer(TransportId(1), &offer, now, &mut wire)
        .unwrap();
    publisher.peer.accept_answer(&answer).unwrap();
    let video_mid = publisher.peer.mids()[0];
    let producer = producers[0].producer_id;

    let mut clients = HashMap::new();
    for i in 0..subscribers {
        let id = TransportId(100 + i as u64);
        core.create_subscriber(id, now);
        core.subscribe(id, producer, "bench".into(), now, &mut wire)
            .unwrap();
        let Ok(MediaEvent::SubscriberOffer { sdp, .. }) = events.try_recv() else {
            panic!("expected a subscriber offer");
        };
        let mut client = Client::new(1000 + i as u16);
        let answer = client.peer.accept_offer(&sdp).unwrap();
        core.subscriber_answer(id, &answer, now, &mut wire).unwrap();
        clients.insert(client.addr, client);
    }
    let publisher_addr = publisher.addr;
    clients.insert(publisher_addr, publisher);
    pump(&mut core, &mut clients, 5000);
    let publisher = clients.remove(&publisher_addr).unwrap();
    Setup {
        core,
        publisher,
        video_mid,
        subscribers,
        frame: 0,
    }
}

impl Setup {
    /// Encrypted datagrams of `count` single-packet VP8 frames on the top layer; the first is
    /// a keyframe so every subscriber starts forwarding at once.
    fn packets(&mut self, count: u64) -> Vec<Vec<u8>> {
        let pt = self
            .publisher
            .peer
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .unwrap()
            .pt();
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let frame = self.frame;
            self.frame += 1;
            let pid = (frame % 0x8000) as u16;
            let key = frame == 0;
            let payload = vp8_frame(pid, key, 1100, 0x42);
            let now = Instant::now();
            let mut api = self.publisher.peer.rtc.direct_api();
            let tx = api
                .stream_tx_by_mid(self.video_mid, Some(Rid::from("f")))
                .unwrap();
            tx.write_rtp(
                RtpWrite::new(
                    pt,
                    SeqNo::from(frame + 1),
                    (frame * 3000) as u32,
                    now,
                    payload,
                )
                .marker(true)
                .nackable(true),
            );
            // str0m releases queued RTP when time is fed in.
            self.publisher.peer.timeout(now);
            let mut sent = Vec::new();
            self.publisher.poll(&mut sent);
            // RTP only (RFC 5761: RTCP has its packet type, 192..=223, in byte 1).
            out.extend(
                sent.into_iter()
                    .map(|(_, d)| d)
                    .filter(|d| d[0] >> 6 == 2 && !(192..=223).contains(&d[1])),
            );
        }
        assert_eq!(out.len() as u64, count, "one datagram per frame");
        out
    }
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_one_packet_to_n");
    group.measurement_time(Duration::from_secs(5));
    for n in [1usize, 10, 100] {
        let mut s = setup(n);
        // Warm up: let the first keyframe start every consumer.
        let from = s.publisher.addr;
        for p in s.packets(10) {
            s.core
                .handle_datagram(Instant::now(), from, &p, &mut Sink(0));
        }
        // Checked here, not after the timed part: a filter (`cargo bench -- forwarding/10`)
        // skips the other sizes' timed parts.
        let before = s.core.stats().rtp_packets_forwarded;
        assert!(before > 0, "the warm-up forwarded nothing");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let packets = s.packets(iters);
                let mut sink = Sink(0);
                let start = Instant::now();
                for p in &packets {
                    s.core.handle_datagram(start, from, p, &mut sink);
                }
                start.elapsed()
            })
        });
        assert_eq!(s.subscribers, n);
    }
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
