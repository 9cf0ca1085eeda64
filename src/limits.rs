//! Rate limits (governor's GCRA, keyed): new sessions and HTTP requests per client, signaling
//! messages per user; and a cap on connections held open at once per client. Clients are keyed
//! by [`client_key`] (IPv4 address, IPv6 /64). A trip is counted in metrics; the warn line and
//! the audit row are written for the first trip of a key per [`TRIP_WINDOW`], and a window
//! with more trips gets one summary (warn line + audit row with `count`) when it is over —
//! at the next trip, or at the next [`Limits::prune`] — so a flood cannot become a log or
//! audit flood.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::audit::{AuditEvent, AuditKind, AuditLog};
use crate::config::Config;

/// Trips of one limit by one key within this window make one warn line and one audit row.
pub const TRIP_WINDOW: Duration = Duration::from_secs(10);

/// The key per-client limits use: an IPv4 address as is (also when IPv4-mapped), an IPv6
/// address by its /64 — one subscriber's prefix, in which it may pick any address it likes.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
        },
    }
}

pub struct Limits {
    audit: AuditLog,
    connections: DefaultKeyedRateLimiter<IpAddr>,
    http: DefaultKeyedRateLimiter<IpAddr>,
    messages: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    trips: Mutex<HashMap<(&'static str, String), TripWindow>>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_open: usize,
}

/// Trips of one limit by one key since `started`.
struct TripWindow {
    started: Instant,
    count: u64,
}

/// One connection counted against its client's cap until dropped (clones share the count).
#[derive(Clone)]
pub struct OpenConnection {
    _counted: Arc<OpenGuard>,
}

struct OpenGuard {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("non-zero")
}

impl Limits {
    pub fn new(config: &Config, audit: AuditLog) -> Self {
        let per_second = config.rate_limit_messages_per_second;
        Limits {
            audit,
            connections: RateLimiter::keyed(Quota::per_minute(nz(
                config.rate_limit_connections_per_minute
            ))),
            http: RateLimiter::keyed(Quota::per_minute(nz(config.rate_limit_http_per_minute))),
            messages: RateLimiter::keyed(
                Quota::per_second(nz(per_second)).allow_burst(nz(per_second.saturating_mul(2))),
            ),
            clock: DefaultClock::default(),
            trips: Mutex::new(HashMap::new()),
            open: Arc::default(),
            max_open: config.max_connections_per_ip.max(1),
        }
    }

    /// `Err(retry_after)` when the limit named `which` is exceeded for `key`.
    fn check<K: std::hash::Hash + Eq + Clone + std::fmt::Display>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        which: &'static str,
    ) -> Result<(), Duration> {
        limiter.check_key(key).map_err(|not_until| {
            self.tripped(which, &key.to_string());
            not_until.wait_time_from(self.clock.now())
        })
    }

    /// Count a trip; the first of a window is logged and audited, with how many trips the
    /// previous window of this key saw (the aggregate of the ones not written then).
    fn tripped(&self, which: &'static str, client: &str) {
        metrics::counter!("sfu_rate_limit_trips_total", "limit" => which).increment(1);
        let now = Instant::now();
        let previous = {
            let mut trips = self.trips.lock().unwrap_or_else(|p| p.into_inner());
            let window = trips
                .entry((which, client.to_string()))
                .or_insert(TripWindow {
                    started: now,
                    count: 0,
                });
            if window.count > 0 && now.duration_since(window.started) < TRIP_WINDOW {
                window.count += 1;
                return;
            }
            let previous = window.count;
            *window = TripWindow {
                started: now,
                count: 1,
            };
            previous
        };
        tracing::warn!(
            limit = which,
            client,
            previous_window_trips = previous,
            window_secs = TRIP_WINDOW.as_secs(),
            "rate limit tripped"
        );
        // First trip of the window only; becomes `record_coalesced` once the audit log has it.
        self.audit.record(
            AuditEvent::new(AuditKind::LimitTripped).detail(serde_json::json!({
                "limit": which,
                "client": client,
                "previousWindowCount": previous,
                "windowSecs": TRIP_WINDOW.as_secs(),
            })),
        );
    }

    /// A new signaling session (WebSocket, WebTransport, WHIP, WHEP) from `ip`.
    pub fn check_connection(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.connections, &client_key(ip), "connections")
    }

    pub fn check_http(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.http, &client_key(ip), "http")
    }

    pub fn check_message(&self, key: &str) -> Result<(), Duration> {
        self.check(&self.messages, &key.to_string(), "messages")
    }

    /// Count a connection `ip` holds open (TCP, from accept on; or a WebTransport session),
    /// or refuse it when its client already holds MAX_CONNECTIONS_PER_IP.
    pub fn open_connection(&self, ip: IpAddr) -> Option<OpenConnection> {
        let key = client_key(ip);
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(key).or_insert(0);
            if *n < self.max_open {
                *n += 1;
                return Some(OpenConnection {
                    _counted: Arc::new(OpenGuard {
                        key,
                        open: self.open.clone(),
                    }),
                });
            }
        }
        self.tripped("open_connections", &key.to_string());
        None
    }

    /// Connections `ip`'s client holds open now.
    pub fn open_connections(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }

    /// Forget idle keys so the maps stay bounded; call periodically.
    pub fn prune(&self) {
        self.connections.retain_recent();
        self.http.retain_recent();
        self.messages.retain_recent();
        let now = Instant::now();
        let mut ended = Vec::new();
        self.trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(which, client), w| {
                let open = now.duration_since(w.started) < TRIP_WINDOW;
                if !open && w.count > 1 {
                    ended.push((*which, client.clone(), w.count));
                }
                open
            });
        // Windows that saw more than their first trip: one summary each, with the count.
        for (which, client, count) in ended {
            tracing::warn!(
                limit = which,
                client,
                count,
                window_secs = TRIP_WINDOW.as_secs(),
                "rate limit trips in the last window"
            );
            self.audit.record(
                AuditEvent::new(AuditKind::LimitTripped).detail(serde_json::json!({
                    "limit": which,
                    "client": client,
                    "count": count,
                    "windowSecs": TRIP_WINDOW.as_secs(),
                    "summary": true,
                })),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client_key;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            client_key(ip("2001:db8:1:2::7"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
    }

    #[test]
    fn ipv4_is_kept_whole_also_when_mapped() {
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_ne!(client_key(ip("192.0.2.7")), client_key(ip("192.0.2.8")));
    }
}
