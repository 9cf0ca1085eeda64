//! Demux and ICE address learning, driven with hand-made STUN binding requests.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::ice::{StunMessage, TransId};

use super::demux::{stun_integrity_ok, MAX_REMOTE_ADDRS};
use super::*;

/// Destinations written: UDP datagrams in `.0`, ICE-TCP frames in `.1`.
#[derive(Default)]
struct Wire(Vec<SocketAddr>, Vec<SocketAddr>);

impl Egress for Wire {
    fn send(&mut self, destination: SocketAddr, _payload: &[u8]) {
        self.0.push(destination);
    }

    fn send_tcp(&mut self, destination: SocketAddr, _payload: &[u8]) {
        self.1.push(destination);
    }
}

const TCP_CANDIDATE: &str = "127.0.0.1:7881";

fn core_with_subscriber() -> (WorkerCore, TransportKey, String, String) {
    let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut core = WorkerCore::new(addr, &CodecName::ALL, BweSettings::default(), events)
        .with_tcp_candidate(TCP_CANDIDATE.parse().unwrap());
    core.create_subscriber(TransportId(1), Instant::now());
    let key = core.by_id[&TransportId(1)];
    let creds = core.transports[key]
        .rtc
        .direct_api()
        .local_ice_credentials();
    (core, key, creds.ufrag, creds.pass)
}

/// A binding request to `local_ufrag`, signed with `password` (as a browser signs it).
fn binding_request(local_ufrag: &str, password: &str) -> Vec<u8> {
    let username = format!("{local_ufrag}:client");
    let mut buf = vec![0u8; 512];
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let n = StunMessage::binding_request(&username, TransId::new(), true, 7, 1_000, false)
        .to_bytes(Some(password.as_bytes()), &mut buf, |k, p| {
            hmac.sha1_hmac(k, p)
        })
        .unwrap();
    buf.truncate(n);
    buf
}

fn from_port(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn integrity_is_checked_with_the_local_password() {
    let request = binding_request("ufrag", "the-right-password-123456");
    let stun = StunMessage::parse(&request).unwrap();
    assert!(stun_integrity_ok(&stun, "the-right-password-123456"));
    assert!(!stun_integrity_ok(&stun, "the-wrong-password-123456"));
    assert!(!stun_integrity_ok(&stun, ""));
    // Any change to the signed part breaks it (here: the last byte of the username).
    let mut tampered = request.clone();
    let at = tampered
        .windows(6)
        .position(|w| w == b"client")
        .expect("username in request");
    tampered[at + 5] ^= 1;
    let stun = StunMessage::parse(&tampered).unwrap();
    assert!(!stun_integrity_ok(&stun, "the-right-password-123456"));
}

#[test]
fn a_request_with_the_ufrag_but_a_wrong_password_ties_no_address() {
    let (mut core, _key, ufrag, _pass) = core_with_subscriber();
    let mut wire = Wire::default();
    let now = Instant::now();
    for port in 1000..1100 {
        let request = binding_request(&ufrag, "not-the-password-at-all!");
        core.handle_datagram(now, from_port(port), &request, &mut wire);
    }
    assert!(core.by_addr.is_empty(), "spoofed sources were learned");
    assert!(wire.0.is_empty(), "str0m answered an unsigned request");
    assert_eq!(core.stats().datagrams_dropped, 100);
}

#[test]
fn a_signed_request_ties_its_address() {
    let (mut core, key, ufrag, pass) = core_with_subscriber();
    let mut wire = Wire::default();
    let source = from_port(5000);
    core.handle_datagram(
        Instant::now(),
        source,
        &binding_request(&ufrag, &pass),
        &mut wire,
    );
    assert_eq!(core.by_addr.get(&source), Some(&key));
    assert_eq!(core.transports[key].remote_addrs, vec![source]);
    assert_eq!(core.stats().datagrams_dropped, 0);
}

#[test]
fn addresses_per_transport_are_bounded_and_the_nominated_one_stays() {
    let (mut core, key, ufrag, pass) = core_with_subscriber();
    let mut wire = Wire::default();
    let now = Instant::now();
    let first = from_port(6000);
    core.handle_datagram(now, first, &binding_request(&ufrag, &pass), &mut wire);
    core.transports[key].nominated = Some(first);
    for port in 6001..6040 {
        core.handle_datagram(
            now,
            from_port(port),
            &binding_request(&ufrag, &pass),
            &mut wire,
        );
    }
    let addrs = &core.transports[key].remote_addrs;
    assert_eq!(addrs.len(), MAX_REMOTE_ADDRS);
    assert_eq!(core.by_addr.len(), MAX_REMOTE_ADDRS);
    assert!(addrs.contains(&first), "the nominated address was evicted");
    assert!(
        addrs.contains(&from_port(6039)),
        "the newest address is missing"
    );
    assert!(
        !core.by_addr.contains_key(&from_port(6001)),
        "the oldest was kept"
    );
    // A known address keeps routing without a new signature (DTLS, RTP, consent checks).
    assert_eq!(core.by_addr.get(&from_port(6039)), Some(&key));
}

#[test]
fn unparsable_offers_and_answers_get_a_bounded_human_message() {
    let (mut core, _key, _ufrag, _pass) = core_with_subscriber();
    let mut wire = Wire::default();
    let now = Instant::now();
    let garbage = "v=0\r\ngarbage";
    let errors = [
        core.publisher_offer(TransportId(7), garbage, now, &mut wire)
            .map(|_| ())
            .unwrap_err(),
        core.subscriber_answer(TransportId(1), garbage, now, &mut wire)
            .unwrap_err(),
        core.whep_offer(TransportId(8), garbage, &[], now, &mut wire)
            .map(|_| ())
            .unwrap_err(),
    ];
    for e in errors {
        let MediaError::InvalidSdp(text) = &e else {
            panic!("not InvalidSdp: {e:?}");
        };
        assert!(text.starts_with("SDP could not be parsed"), "{text}");
        assert!(
            !text.contains("PointerOffset") && !text.contains("0x"),
            "{text}"
        );
        assert!(e.to_string().len() <= 200, "{e}");
    }
    // Nothing was created for the refused offers.
    assert_eq!(core.stats().transports, 1);
}

#[test]
fn a_tcp_link_is_claimed_only_with_the_transports_password() {
    let (mut core, _key, ufrag, pass) = core_with_subscriber();
    assert_eq!(
        core.claim_tcp(&binding_request(&ufrag, "not-the-password-at-all!")),
        None
    );
    assert_eq!(core.claim_tcp(&binding_request("nosuchufrag", &pass)), None);
    assert_eq!(core.claim_tcp(b"GET / HTTP/1.1\r\n\r\n"), None);
    assert_eq!(
        core.claim_tcp(&binding_request(&ufrag, &pass)),
        Some(TransportId(1))
    );
}

#[test]
fn a_binding_request_over_tcp_is_taken_without_touching_udp_demux() {
    let (mut core, _key, ufrag, pass) = core_with_subscriber();
    let mut wire = Wire::default();
    let client = from_port(50_123);
    core.handle_tcp_frame(
        Instant::now(),
        TransportId(1),
        client,
        &binding_request(&ufrag, &pass),
        &mut wire,
    );
    // str0m took it (an answer needs the remote credentials from SDP; tests/ice_tcp.rs has
    // the whole exchange), and nothing went out over UDP.
    assert_eq!(core.stats().datagrams_dropped, 0);
    assert!(wire.0.is_empty(), "nothing leaks onto UDP");
    // A TCP link never ties the address for UDP demux.
    assert!(core.by_addr.is_empty());
}

#[test]
fn the_tcp_candidate_is_passive_and_ranked_below_udp() {
    let (core, _, _, _) = core_with_subscriber();
    let tcp = core.tcp_candidate().expect("ICE-TCP on");
    let line = tcp.to_sdp_string();
    assert!(
        line.contains(" tcp ") && line.contains("7881 typ host tcptype passive"),
        "{line}"
    );
    let udp = str0m::Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap();
    assert!(tcp.prio() < udp.prio(), "UDP must be preferred");
}

#[test]
fn a_subscriber_drops_only_the_extensions_it_is_told_to() {
    use str0m::rtp::Extension;
    let mut template = RtcConfig::new();
    let before: Vec<(u8, Extension)> = template
        .extension_map()
        .iter()
        .map(|(id, e)| (id, e.clone()))
        .collect();
    assert!(
        before
            .iter()
            .any(|(_, e)| *e == Extension::TransportSequenceNumber),
        "str0m's default map has TWCC"
    );
    let dropped = [
        Extension::TransportSequenceNumber,
        Extension::AbsoluteSendTime,
    ];
    assert!(
        before
            .iter()
            .any(|(_, e)| *e == Extension::AbsoluteSendTime),
        "str0m's default map has abs-send-time"
    );
    let mut stripped = super::sdp::without_extensions(template, &dropped);
    let after: Vec<(u8, Extension)> = stripped
        .extension_map()
        .iter()
        .map(|(id, e)| (id, e.clone()))
        .collect();
    let expected: Vec<(u8, Extension)> = before
        .into_iter()
        .filter(|(_, e)| !dropped.contains(e))
        .collect();
    assert_eq!(after, expected, "every other extension keeps its id");
}
