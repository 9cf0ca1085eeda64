//! Rate limits (governor's GCRA, keyed): new connections and HTTP requests per client IP,
//! signaling messages per user. A trip is logged at warn and counted in metrics.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::audit::{AuditEvent, AuditKind, AuditLog};
use crate::config::Config;

pub struct Limits {
    audit: AuditLog,
    connections: DefaultKeyedRateLimiter<IpAddr>,
    http: DefaultKeyedRateLimiter<IpAddr>,
    messages: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
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
        }
    }

    /// `Err(retry_after)` when the limit named `which` is exceeded for `key`.
    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        which: &'static str,
        who: &dyn std::fmt::Display,
    ) -> Result<(), Duration> {
        limiter.check_key(key).map_err(|not_until| {
            metrics::counter!("sfu_rate_limit_trips_total", "limit" => which).increment(1);
            tracing::warn!(limit = which, client = %who, "rate limit tripped");
            self.audit.record(
                AuditEvent::new(AuditKind::LimitTripped)
                    .detail(serde_json::json!({ "limit": which, "client": who.to_string() })),
            );
            not_until.wait_time_from(self.clock.now())
        })
    }

    pub fn check_connection(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.connections, &ip, "connections", &ip)
    }

    pub fn check_http(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check(&self.http, &ip, "http", &ip)
    }

    pub fn check_message(&self, key: &str) -> Result<(), Duration> {
        self.check(&self.messages, &key.to_string(), "messages", &key)
    }

    /// Forget idle keys so the maps stay bounded; call periodically.
    pub fn prune(&self) {
        self.connections.retain_recent();
        self.http.retain_recent();
        self.messages.retain_recent();
    }
}
