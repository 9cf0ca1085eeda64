//! One typed configuration, read from the environment (the seed's variable names) with
//! defaults that run a complete development server with nothing set.

use std::net::IpAddr;

use clap::{Args, ValueEnum};

use crate::media::{BweSettings, CodecName, MediaConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
    Test,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Environment mode. `production` requires DJANGO_JWT_SECRET and disables /dev/token.
    #[arg(long, env = "NODE_ENV", value_enum, default_value = "development")]
    pub environment: Environment,

    /// HTTP and WebSocket port.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// HTTP and WebSocket bind address.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// HS256 secret shared with Django (simplejwt's SIGNING_KEY). Generated in development.
    #[arg(long, env = "DJANGO_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// RS256 public key (PEM text) for tokens signed by Django with a private key.
    #[arg(long, env = "JWT_PUBLIC_KEY", hide_env_values = true)]
    pub jwt_public_key: Option<String>,

    /// File holding the RS256 public key (PEM); alternative to JWT_PUBLIC_KEY.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Django backend URL, used for room lookups when DJANGO_ROOM_LOOKUP is on.
    #[arg(long, env = "DJANGO_BASE_URL", default_value = "http://127.0.0.1:8000")]
    pub django_base_url: String,

    /// Look rooms up at DJANGO_BASE_URL + DJANGO_ROOM_LOOKUP_PATH + <roomId>/ when joined.
    #[arg(long, env = "DJANGO_ROOM_LOOKUP", default_value_t = false, action = clap::ArgAction::Set)]
    pub django_room_lookup: bool,

    #[arg(long, env = "DJANGO_ROOM_LOOKUP_PATH", default_value = "/api/rooms/")]
    pub django_room_lookup_path: String,

    /// Where signed webhooks (room started/finished, participant joined/left, producer
    /// published) are POSTed. Off when unset.
    #[arg(long, env = "DJANGO_WEBHOOK_URL")]
    pub django_webhook_url: Option<String>,

    /// HMAC-SHA256 key for webhook signatures. Default: DJANGO_JWT_SECRET.
    #[arg(long, env = "DJANGO_WEBHOOK_SECRET", hide_env_values = true)]
    pub django_webhook_secret: Option<String>,

    /// Redis URL: share rooms across nodes (registry, placement, redirects). Unset: single node.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// With REDIS_URL: a client joining a room another node owns is served here, the room's
    /// media relayed from its owner over a node link (WebTransport), instead of being sent
    /// to the owner (`ROOM_ON_OTHER_NODE`). Publishing still happens on the owner. Needs
    /// DJANGO_JWT_SECRET (shared by all nodes) and WebTransport on every node.
    #[arg(long, env = "RELAY_ROOMS", default_value_t = false, action = clap::ArgAction::Set)]
    pub relay_rooms: bool,

    /// This node's id in the Redis registry. Default: a random id per process.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Base URL clients use to reach this node's HTTP/WebSocket port, given to clients
    /// redirected here. Default: http://ANNOUNCED_IP:PORT.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Audit log database: a postgres:// URL, or unset for the embedded SQLite file.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// SQLite file of the audit log when DATABASE_URL is unset.
    #[arg(long, env = "AUDIT_SQLITE_PATH", default_value = "./data/audit.db")]
    pub audit_sqlite_path: std::path::PathBuf,

    /// Where audit events wait (JSON lines) while the database is unreachable.
    #[arg(
        long,
        env = "AUDIT_SPILL_PATH",
        default_value = "./data/audit-spill.jsonl"
    )]
    pub audit_spill_path: std::path::PathBuf,

    /// First UDP port for media; worker i binds RTC_MIN_PORT + i. 0 picks free ports.
    #[arg(long, env = "MEDIASOUP_WORKER_RTC_MIN_PORT", default_value_t = 10000)]
    pub rtc_min_port: u16,

    /// Last UDP port for media; the range must hold one port per worker.
    #[arg(long, env = "MEDIASOUP_WORKER_RTC_MAX_PORT", default_value_t = 10100)]
    pub rtc_max_port: u16,

    /// Media workers (one thread and one UDP port each). Default: CPU cores, at most 8.
    #[arg(long, env = "SFU_WORKERS")]
    pub workers: Option<usize>,

    /// IP the media sockets bind to.
    #[arg(long, env = "RTC_LISTEN_IP", default_value = "0.0.0.0")]
    pub rtc_listen_ip: IpAddr,

    /// IP put in ICE candidates, i.e. what clients can reach. Default 127.0.0.1 (local dev).
    #[arg(long, env = "ANNOUNCED_IP")]
    pub announced_ip: Option<IpAddr>,

    /// Codecs offered, comma-separated, in preference order (opus, vp8, vp9, h264, av1).
    #[arg(
        long,
        env = "SFU_CODECS",
        default_value = "opus,vp8,vp9,h264,av1",
        value_delimiter = ','
    )]
    pub codecs: Vec<String>,

    /// Send-side bandwidth estimation (GCC on TWCC feedback) on every subscriber transport;
    /// its estimate picks each subscriber's simulcast layers and pauses video that does not fit.
    #[arg(long, env = "BWE_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub bwe_enabled: bool,

    /// ICE-TCP (RFC 6544 passive candidates on one TCP port) for clients whose networks drop
    /// UDP. Every answer and ORTC transport then carries a TCP candidate beside the UDP one.
    #[arg(long, env = "ICE_TCP_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub ice_tcp_enabled: bool,

    /// Spread a room's subscribers over the node's workers (the least loaded takes the next
    /// one; its producers are relayed from the room's worker in process). False keeps every
    /// room on one worker, so one core.
    #[arg(long, env = "ROOM_SPREAD_WORKERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub room_spread_workers: bool,

    /// The node's one ICE-TCP port, bound on RTC_LISTEN_IP. 0 picks a free port.
    #[arg(long, env = "ICE_TCP_PORT", default_value_t = 7881)]
    pub ice_tcp_port: u16,

    /// What a new subscriber's link is assumed to carry before feedback arrives, in kbit/s.
    #[arg(long, env = "BWE_INITIAL_KBPS", default_value_t = 1000)]
    pub bwe_initial_kbps: u64,

    /// Largest signaling message accepted, in bytes.
    #[arg(long, env = "MAX_MESSAGE_SIZE", default_value_t = 65536)]
    pub max_message_size: usize,

    /// Log filter (error, warn, info, debug, trace, or a tracing EnvFilter directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Serve WebTransport signaling (QUIC, UDP) next to WebSocket.
    #[arg(long, env = "WEBTRANSPORT_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub webtransport_enabled: bool,

    /// UDP port of the WebTransport endpoint (`https://host:port/wt`). 0 picks a free port.
    #[arg(long, env = "WEBTRANSPORT_PORT", default_value_t = 3001)]
    pub webtransport_port: u16,

    /// URL announced to clients, when it differs from `https://<page host>:<port>/wt`
    /// (a load balancer, another port mapping).
    #[arg(long, env = "WEBTRANSPORT_PUBLIC_URL")]
    pub webtransport_public_url: Option<String>,

    /// Operator certificate chain (PEM) for WebTransport; self-signed + rotated when unset.
    #[arg(long, env = "WEBTRANSPORT_CERT_FILE")]
    pub webtransport_cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) for WEBTRANSPORT_CERT_FILE.
    #[arg(long, env = "WEBTRANSPORT_KEY_FILE")]
    pub webtransport_key_file: Option<std::path::PathBuf>,

    /// Validity of the self-signed certificate in seconds (at most 14 days, Chrome's limit
    /// for serverCertificateHashes); it is replaced at half of that.
    #[arg(long, env = "WEBTRANSPORT_CERT_VALIDITY_SECS", default_value_t = 14 * 24 * 3600)]
    pub webtransport_cert_validity_secs: u64,

    /// Prometheus metrics port (`/metrics`). 0 picks a free port.
    #[arg(long, env = "METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,

    /// Origins allowed for CORS and WebSocket upgrades, comma-separated; `*` allows any.
    /// Default: `*` in development, same-origin only in production.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// New WebSocket connections per client IP per minute.
    #[arg(long, env = "RATE_LIMIT_CONNECTIONS_PER_MINUTE", default_value_t = 60)]
    pub rate_limit_connections_per_minute: u32,

    /// HTTP requests per client IP per minute (all endpoints).
    #[arg(long, env = "RATE_LIMIT_HTTP_PER_MINUTE", default_value_t = 600)]
    pub rate_limit_http_per_minute: u32,

    /// Signaling messages per user per second (bursts of twice that are allowed).
    #[arg(long, env = "RATE_LIMIT_MESSAGES_PER_SECOND", default_value_t = 20)]
    pub rate_limit_messages_per_second: u32,

    /// Most rooms this server holds at once.
    #[arg(long, env = "MAX_ROOMS", default_value_t = 1000)]
    pub max_rooms: usize,
    /// Most rooms one user may have created that still exist (`createRoom`, WHIP).
    #[arg(long, env = "MAX_ROOMS_PER_USER", default_value_t = 20)]
    pub max_rooms_per_user: usize,
    /// Seconds a room with nobody in it lives (created and never joined) before it is
    /// closed, as LiveKit's `empty_timeout`. A room closes at once when its last participant
    /// leaves.
    #[arg(long, env = "EMPTY_ROOM_TIMEOUT_SECS", default_value_t = 300)]
    pub empty_room_timeout_secs: u64,
    /// Seconds a dropped client has to resume its session (over either transport) before it
    /// is removed from its room.
    #[arg(long, env = "SESSION_RESUME_GRACE_SECS", default_value_t = 15)]
    pub resume_grace_secs: u64,

    /// Seconds connected clients get to leave after SIGTERM before the process exits.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Directory of the demo page served at `/`.
    #[arg(long, env = "WEB_DEMO_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/web-demo"))]
    pub web_demo_dir: std::path::PathBuf,

    /// Seconds a WebSocket/WebTransport client has to `authenticate` (or `resume`) before it
    /// is told `NOT_AUTHENTICATED` and disconnected.
    #[arg(long, env = "AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub auth_timeout_secs: u64,

    /// Seconds an HTTP request's headers, or a started WebTransport frame, may take to arrive
    /// whole before the connection is closed.
    #[arg(long, env = "READ_TIMEOUT_SECS", default_value_t = 10)]
    pub read_timeout_secs: u64,

    /// Connections one client (IPv4 address, IPv6 /64) may hold open at once: TCP connections
    /// from accept on (also ones whose request never finishes) and WebTransport sessions.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// TURN servers handed to clients, comma-separated `turn:`/`turns:` URIs (e.g.
    /// `turn:turn.example.com:3478?transport=udp,turns:turn.example.com:443?transport=tcp`).
    /// Empty: no ICE servers are announced.
    #[arg(long, env = "TURN_URLS")]
    pub turn_urls: Option<String>,

    /// Shared secret of the TURN server (coturn `static-auth-secret`, used with
    /// `use-auth-secret`): credentials are derived from it per user. Required with TURN_URLS.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// Lifetime of the TURN credentials handed out, in seconds.
    #[arg(long, env = "TURN_CREDENTIAL_TTL_SECS", default_value_t = 3600)]
    pub turn_credential_ttl_secs: u64,
}

#[derive(clap::Parser)]
// A later occurrence of a flag replaces an earlier one (defaults first, overrides after).
#[command(args_override_self = true)]
struct ArgsOnly {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Parse from command-line style arguments (plus the environment), as the binary does.
    pub fn parse_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        ArgsOnly::try_parse_from(args).map(|a| a.config)
    }
}

/// Config checked for consistency, with defaults resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    /// HS256 secret (generated in development when none is configured).
    pub jwt_secret: Option<String>,
    /// RS256 public key PEM, from JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE.
    pub jwt_public_key: Option<String>,
    pub allowed_origins: Vec<String>,
    pub dev_mode: bool,
    pub media: MediaConfig,
    /// TURN servers and the secret their credentials derive from; None when TURN_URLS is empty.
    pub turn: Option<crate::turn::TurnSettings>,
}

impl Config {
    /// Validate and resolve defaults. The error is one line meant for an operator.
    pub fn resolve(self) -> Result<Settings, String> {
        let dev_mode = self.environment != Environment::Production;
        let jwt_public_key = self.resolve_public_key()?;
        let jwt_secret = self.resolve_secret(dev_mode, jwt_public_key.is_some())?;
        self.check_webhook(jwt_secret.is_some())?;
        self.check_limits()?;
        self.check_webtransport()?;
        self.check_relay(jwt_secret.is_some())?;
        let allowed_origins = self.resolve_origins(dev_mode);
        let workers = self.resolve_workers()?;
        let codecs = self.resolve_codecs()?;
        if self.max_message_size < 1024 {
            return Err("MAX_MESSAGE_SIZE must be at least 1024 bytes".into());
        }
        let turn = crate::turn::TurnSettings::resolve(
            self.turn_urls.as_deref(),
            self.turn_secret.as_deref(),
            self.turn_credential_ttl_secs,
        )?;
        let media = MediaConfig {
            workers,
            listen_ip: self.rtc_listen_ip,
            port_min: self.rtc_min_port,
            port_max: self.rtc_max_port,
            announced_ip: self.resolve_announced_ip()?,
            codecs,
            bwe: BweSettings {
                enabled: self.bwe_enabled,
                initial_bps: self.bwe_initial_kbps.saturating_mul(1000),
            },
            ice_tcp_port: self.ice_tcp_enabled.then_some(self.ice_tcp_port),
            spread_rooms: self.room_spread_workers,
        };
        Ok(Settings {
            config: self,
            jwt_secret,
            jwt_public_key,
            allowed_origins,
            dev_mode,
            media,
            turn,
        })
    }

    /// The RS256 public key PEM, from JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE (not both).
    fn resolve_public_key(&self) -> Result<Option<String>, String> {
        match (&self.jwt_public_key, &self.jwt_public_key_file) {
            (Some(_), Some(_)) => Err("set JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE, not both".into()),
            // Env files often carry PEMs on one line with literal \n.
            (Some(pem), None) => Ok(Some(pem.replace("\\n", "\n"))),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(Some)
                .map_err(|e| format!("JWT_PUBLIC_KEY_FILE {}: {e}", path.display())),
            (None, None) => Ok(None),
        }
    }

    /// The HS256 secret: generated in development, required in production unless an RS256
    /// key is configured.
    fn resolve_secret(
        &self,
        dev_mode: bool,
        has_public_key: bool,
    ) -> Result<Option<String>, String> {
        match (&self.jwt_secret, dev_mode) {
            (Some(s), _) if s.len() < 16 => {
                Err("DJANGO_JWT_SECRET must be at least 16 characters".into())
            }
            (Some(s), _) => Ok(Some(s.clone())),
            (None, true) => Ok(Some(random_secret())),
            (None, false) if has_public_key => Ok(None),
            (None, false) => Err(
                "DJANGO_JWT_SECRET is required when NODE_ENV=production (or JWT_PUBLIC_KEY for RS256)"
                    .into(),
            ),
        }
    }

    /// Webhooks need an http(s) URL and a key to sign with.
    fn check_webhook(&self, has_jwt_secret: bool) -> Result<(), String> {
        let Some(url) = &self.django_webhook_url else {
            return Ok(());
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "DJANGO_WEBHOOK_URL must be an http(s) URL, got `{url}`"
            ));
        }
        if self.django_webhook_secret.is_none() && !has_jwt_secret {
            return Err(
                "DJANGO_WEBHOOK_URL needs DJANGO_WEBHOOK_SECRET (or DJANGO_JWT_SECRET)".into(),
            );
        }
        Ok(())
    }

    /// Rate limits, timeouts and connection caps: 0 would refuse everything (or nothing).
    fn check_limits(&self) -> Result<(), String> {
        let at_least_one: [(&str, u64); 7] = [
            (
                "RATE_LIMIT_CONNECTIONS_PER_MINUTE",
                self.rate_limit_connections_per_minute.into(),
            ),
            (
                "RATE_LIMIT_HTTP_PER_MINUTE",
                self.rate_limit_http_per_minute.into(),
            ),
            (
                "RATE_LIMIT_MESSAGES_PER_SECOND",
                self.rate_limit_messages_per_second.into(),
            ),
            ("AUTH_TIMEOUT_SECS", self.auth_timeout_secs),
            ("READ_TIMEOUT_SECS", self.read_timeout_secs),
            ("MAX_CONNECTIONS_PER_IP", self.max_connections_per_ip as u64),
            ("BWE_INITIAL_KBPS", self.bwe_initial_kbps),
        ];
        match at_least_one.iter().find(|(_, value)| *value == 0) {
            Some((name, _)) => Err(format!("{name} must be at least 1")),
            None => Ok(()),
        }
    }

    /// An operator certificate comes with its key; a self-signed one lives 10 s to 14 days.
    /// Relaying needs what node links need.
    fn check_relay(&self, has_secret: bool) -> Result<(), String> {
        if !self.relay_rooms {
            return Ok(());
        }
        if self.redis_url.is_none() {
            return Err("RELAY_ROOMS needs REDIS_URL (rooms are shared through Redis)".into());
        }
        if !self.webtransport_enabled {
            return Err(
                "RELAY_ROOMS needs WEBTRANSPORT_ENABLED (node links are WebTransport)".into(),
            );
        }
        if !has_secret {
            return Err(
                "RELAY_ROOMS needs DJANGO_JWT_SECRET (node links are signed with it)".into(),
            );
        }
        Ok(())
    }

    fn check_webtransport(&self) -> Result<(), String> {
        match (&self.webtransport_cert_file, &self.webtransport_key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "set both WEBTRANSPORT_CERT_FILE and WEBTRANSPORT_KEY_FILE, or neither".into(),
                )
            }
            _ => {}
        }
        if !(10..=14 * 24 * 3600).contains(&self.webtransport_cert_validity_secs) {
            return Err(format!(
                "WEBTRANSPORT_CERT_VALIDITY_SECS must be between 10 and {} (14 days), got {}",
                14 * 24 * 3600,
                self.webtransport_cert_validity_secs
            ));
        }
        Ok(())
    }

    /// Listed origins without a trailing slash; any origin in development by default.
    fn resolve_origins(&self, dev_mode: bool) -> Vec<String> {
        match &self.allowed_origins {
            Some(list) => list
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .collect(),
            None if dev_mode => vec!["*".to_string()],
            None => Vec::new(),
        }
    }

    /// The media worker count (default: cores, at most 8), checked against the port range.
    fn resolve_workers(&self) -> Result<usize, String> {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let workers = self.workers.unwrap_or(cores.min(8));
        if !(1..=64).contains(&workers) {
            return Err(format!(
                "SFU_WORKERS must be between 1 and 64, got {workers}"
            ));
        }
        if self.rtc_min_port != 0 {
            if self.rtc_max_port < self.rtc_min_port {
                return Err(format!(
                    "MEDIASOUP_WORKER_RTC_MAX_PORT ({}) is below MEDIASOUP_WORKER_RTC_MIN_PORT ({})",
                    self.rtc_max_port, self.rtc_min_port
                ));
            }
            let available = (self.rtc_max_port - self.rtc_min_port) as usize + 1;
            if available < workers {
                return Err(format!(
                    "RTC port range {}-{} has {available} ports but {workers} workers need one each",
                    self.rtc_min_port, self.rtc_max_port
                ));
            }
        }
        Ok(workers)
    }

    /// SFU_CODECS in preference order, duplicates dropped.
    fn resolve_codecs(&self) -> Result<Vec<CodecName>, String> {
        let mut codecs = Vec::new();
        for name in &self.codecs {
            let codec = CodecName::parse(name).ok_or_else(|| {
                format!(
                    "SFU_CODECS: unknown codec `{name}` (known: {})",
                    CodecName::KNOWN
                )
            })?;
            if !codecs.contains(&codec) {
                codecs.push(codec);
            }
        }
        if codecs.is_empty() {
            return Err("SFU_CODECS must name at least one codec".into());
        }
        Ok(codecs)
    }

    /// The address put in ICE candidates: ANNOUNCED_IP, else a concrete listen address, else
    /// loopback.
    fn resolve_announced_ip(&self) -> Result<IpAddr, String> {
        match self.announced_ip {
            Some(ip) if ip.is_unspecified() => {
                Err("ANNOUNCED_IP must be a concrete address, not 0.0.0.0 or ::".into())
            }
            Some(ip) => Ok(ip),
            None if !self.rtc_listen_ip.is_unspecified() => Ok(self.rtc_listen_ip),
            None => Ok(IpAddr::from([127, 0, 0, 1])),
        }
    }
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["sfu"];
        argv.extend_from_slice(args);
        Config::parse_from(argv)
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn production_requires_a_secret() {
        let err = parse(&["--environment", "production"]).unwrap_err();
        assert!(err.contains("DJANGO_JWT_SECRET is required"), "{err}");
        assert!(parse(&["--environment", "production", "--jwt-public-key", "PEM"]).is_ok());
        assert!(parse(&[
            "--environment",
            "production",
            "--jwt-secret",
            "0123456789abcdef"
        ])
        .is_ok());
    }

    #[test]
    fn port_range_must_fit_the_workers() {
        let err = parse(&[
            "--workers",
            "4",
            "--rtc-min-port",
            "10000",
            "--rtc-max-port",
            "10001",
        ])
        .unwrap_err();
        assert!(err.contains("4 workers"), "{err}");
    }

    #[test]
    fn unknown_codec_is_rejected() {
        let err = parse(&["--codecs", "opus,theora"]).unwrap_err();
        assert!(err.contains("theora"), "{err}");
        assert!(err.contains("vp9, h264, av1"), "{err}");
    }

    #[test]
    fn every_codec_is_enabled_by_default_and_can_be_narrowed() {
        assert_eq!(parse(&[]).unwrap().media.codecs, CodecName::ALL.to_vec());
        let s = parse(&["--codecs", "H264, opus,h264"]).unwrap();
        assert_eq!(s.media.codecs, vec![CodecName::H264, CodecName::Opus]);
    }

    #[test]
    fn turn_urls_are_checked_and_need_a_secret() {
        assert!(parse(&[]).unwrap().turn.is_none());
        assert!(parse(&["--turn-urls", " , "]).unwrap().turn.is_none());
        let err = parse(&["--turn-urls", "stun:example.com"]).unwrap_err();
        assert!(err.contains("not a TURN URI"), "{err}");
        let err = parse(&["--turn-urls", "turn:example.com"]).unwrap_err();
        assert!(err.contains("TURN_SECRET is missing"), "{err}");
        let err =
            parse(&["--turn-urls", "turn:example.com", "--turn-secret", "short"]).unwrap_err();
        assert!(err.contains("at least 16"), "{err}");
        let s = parse(&[
            "--turn-urls",
            "turn:a.example:3478?transport=udp, turns:a.example:443?transport=tcp",
            "--turn-secret",
            "0123456789abcdef",
        ])
        .unwrap();
        let turn = s.turn.unwrap();
        assert_eq!(turn.urls.len(), 2);
        assert_eq!(turn.urls[1], "turns:a.example:443?transport=tcp");
        assert_eq!(turn.ttl_secs, 3600);
    }

    #[test]
    fn development_defaults_work_with_nothing_set() {
        let s = parse(&[]).unwrap();
        assert!(s.dev_mode);
        assert_eq!(s.jwt_secret.map(|s| s.len()), Some(64));
        assert_eq!(s.allowed_origins, vec!["*"]);
        assert_eq!(s.media.announced_ip, IpAddr::from([127, 0, 0, 1]));
    }
}
