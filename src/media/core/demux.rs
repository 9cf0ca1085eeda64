//! Network input, where the hot path starts: a datagram finds its transport in O(1) by remote
//! address, or on first contact by the local ufrag of a STUN binding request that proves the
//! transport's ICE password.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::ice::StunMessage;
use str0m::net::{Protocol, Receive};
use str0m::{IceCreds, Input};

use super::{Egress, Negotiation, TransportKey, WorkerCore};
use crate::media::TransportId;

/// Most remote addresses one transport keeps (a client's host, reflexive and relayed
/// candidates, v4 and v6, with room to roam); beyond this the oldest is forgotten.
pub(super) const MAX_REMOTE_ADDRS: usize = 8;

/// How a datagram was routed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The source address is already tied to the transport.
    Known(TransportKey),
    /// A binding request from a new address naming the transport's local ufrag.
    Ufrag(TransportKey),
}

impl WorkerCore {
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        data: &[u8],
        egress: &mut dyn Egress,
    ) {
        let Some(route) = self.route(source, data) else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        let key = match route {
            Route::Known(key) => key,
            // Anyone can name a ufrag (it travels in clear in every request): only a request
            // signed with the transport's password may tie a new address to it, else a flood
            // of spoofed sources would steal those addresses from the clients that own them.
            Route::Ufrag(key) if self.passes_integrity(key, data) => key,
            Route::Ufrag(_) => {
                self.stats.datagrams_dropped += 1;
                return;
            }
        };
        let local = self.candidate_addr;
        if !self.feed(key, Protocol::Udp, source, local, data, now) {
            return;
        }
        if let Route::Ufrag(key) = route {
            self.learn_address(key, source);
        }
        self.drain(key, now, egress);
        self.after_drain(now, egress);
    }

    /// The transport an ICE-TCP connection's first frame asks for: a STUN binding request
    /// naming one of our local ufrags and signed with that transport's password. A link is
    /// only ever tied to a transport this way, so a TCP client cannot claim someone else's.
    pub fn claim_tcp(&mut self, first_frame: &[u8]) -> Option<TransportId> {
        self.tcp_candidate_addr?;
        let stun = StunMessage::parse(first_frame).ok()?;
        if !stun.is_binding_request() {
            return None;
        }
        let (local_ufrag, _remote) = stun.split_username()?;
        let key = *self.by_ufrag.get(local_ufrag)?;
        self.passes_integrity(key, first_frame)
            .then(|| self.transports[key].id)
    }

    /// One RFC 4571 frame from an ICE-TCP link already tied to `transport` (by
    /// [`WorkerCore::claim_tcp`]); the link, not the address, routes it.
    pub fn handle_tcp_frame(
        &mut self,
        now: Instant,
        transport: TransportId,
        source: SocketAddr,
        data: &[u8],
        egress: &mut dyn Egress,
    ) {
        let (Some(&key), Some(local)) = (self.by_id.get(&transport), self.tcp_candidate_addr)
        else {
            self.stats.datagrams_dropped += 1;
            return;
        };
        if self.feed(key, Protocol::Tcp, source, local, data, now) {
            self.drain(key, now, egress);
            self.after_drain(now, egress);
        }
    }

    /// Hand one packet that arrived at `local` over `proto` to transport `key`'s str0m;
    /// false (and counted as dropped) when str0m refuses it. Shared by UDP and ICE-TCP.
    fn feed(
        &mut self,
        key: TransportKey,
        proto: Protocol,
        source: SocketAddr,
        local: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        // STUN's first two bits are zero; only ORTC transports need to look inside.
        if data.first().is_some_and(|b| *b < 2) {
            self.learn_remote_ufrag(key, data);
        }
        let Ok(receive) = Receive::new(proto, source, local, data) else {
            self.stats.datagrams_dropped += 1;
            return false;
        };
        let transport = &mut self.transports[key];
        if let Err(e) = transport.rtc.handle_input(Input::Receive(now, receive)) {
            tracing::debug!(transport = transport.id.0, ?proto, error = %e, "rejected packet");
            self.stats.datagrams_dropped += 1;
            return false;
        }
        true
    }

    /// O(1) demux: a known remote address, else the local ufrag in a STUN binding request.
    fn route(&self, source: SocketAddr, data: &[u8]) -> Option<Route> {
        if let Some(key) = self.by_addr.get(&source) {
            return Some(Route::Known(*key));
        }
        let stun = StunMessage::parse(data).ok()?;
        if !stun.is_binding_request() {
            return None;
        }
        let (local_ufrag, _remote) = stun.split_username()?;
        self.by_ufrag.get(local_ufrag).copied().map(Route::Ufrag)
    }

    /// Whether `data` is a STUN message whose MESSAGE-INTEGRITY was made with this
    /// transport's local ICE password (the short-term credential, RFC 8489 §9.1.1/§14.5).
    fn passes_integrity(&mut self, key: TransportKey, data: &[u8]) -> bool {
        let Ok(stun) = StunMessage::parse(data) else {
            return false;
        };
        let password = self.transports[key]
            .rtc
            .direct_api()
            .local_ice_credentials()
            .pass;
        stun_integrity_ok(&stun, &password)
    }

    /// Tie `source` to transport `key`, keeping at most [`MAX_REMOTE_ADDRS`] per transport:
    /// the oldest goes first, but never the address str0m nominated.
    fn learn_address(&mut self, key: TransportKey, source: SocketAddr) {
        let transport = &mut self.transports[key];
        if transport.remote_addrs.contains(&source) {
            return;
        }
        if transport.remote_addrs.len() >= MAX_REMOTE_ADDRS {
            let nominated = transport.nominated;
            let oldest = transport
                .remote_addrs
                .iter()
                .position(|a| Some(*a) != nominated)
                .unwrap_or(0);
            let evicted = transport.remote_addrs.remove(oldest);
            if self.by_addr.get(&evicted) == Some(&key) {
                self.by_addr.remove(&evicted);
            }
        }
        transport.remote_addrs.push(source);
        self.by_addr.insert(source, key);
    }

    /// ORTC clients never send their ICE ufrag; take it from their binding requests (again
    /// after an ICE restart) so str0m accepts them. Only a request that proves our password
    /// may change it.
    fn learn_remote_ufrag(&mut self, key: TransportKey, data: &[u8]) {
        let Ok(stun) = StunMessage::parse(data) else {
            return;
        };
        let transport = &mut self.transports[key];
        let Negotiation::Ortc(state) = &mut transport.negotiation else {
            return;
        };
        let Some((_, remote)) = stun.split_username().filter(|_| stun.is_binding_request()) else {
            return;
        };
        if remote == state.remote_ufrag || remote.is_empty() || remote.len() > 256 {
            return;
        }
        let mut api = transport.rtc.direct_api();
        if !stun_integrity_ok(&stun, &api.local_ice_credentials().pass) {
            return;
        }
        state.remote_ufrag = remote.to_string();
        api.set_remote_ice_credentials(IceCreds {
            ufrag: state.remote_ufrag.clone(),
            pass: state.remote_pwd.clone(),
        });
    }
}

/// HMAC-SHA1 over the message up to MESSAGE-INTEGRITY, with the header length adjusted to end
/// there, keyed with the password (str0m's parser keeps that span; its crypto provider hashes).
pub(super) fn stun_integrity_ok(stun: &StunMessage<'_>, password: &str) -> bool {
    let provider = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    stun.verify(password.as_bytes(), |key, parts| {
        provider.sha1_hmac(key, parts)
    })
}
