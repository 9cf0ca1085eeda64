//! `sfu` binary: `sfu` / `sfu serve` runs the server; `sfu token` mints a token for testing.

use std::time::Duration;

use clap::{Parser, Subcommand};
use sfu::config::{Config, Environment};

#[derive(Parser)]
#[command(name = "sfu", version, about = "WebRTC selective forwarding unit")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Make a self-signed WebTransport certificate and key for development.
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Apply the audit-log schema migrations (DATABASE_URL, or the SQLite file) and exit.
    Migrate,
    /// Print a JWT signed with DJANGO_JWT_SECRET (for curl/wscat testing).
    Token {
        /// The `user_id` claim.
        #[arg(long, default_value = "cli-user")]
        user_id: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Load-test a running server: runs the `sfu-bench` binary next to this one with these
    /// arguments (`sfu bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// Write `webtransport-cert.pem` and `webtransport-key.pem` (ECDSA P-256) into a directory
    /// and print the certificate's SHA-256 for `serverCertificateHashes`.
    Generate {
        #[arg(long, default_value = "certs")]
        out_dir: std::path::PathBuf,
        /// Validity in days (browsers accept at most 14 for hash-pinned certificates).
        #[arg(long, default_value_t = 14)]
        days: u32,
        /// Subject alternative names, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        san: Vec<String>,
    },
}

fn generate_certs(out_dir: &std::path::Path, days: u32, san: &[String]) -> Result<(), String> {
    use std::io::Write;
    if !(1..=14).contains(&days) {
        return Err("--days must be between 1 and 14".into());
    }
    let identity = wtransport::Identity::self_signed_builder()
        .subject_alt_names(san)
        .from_now_utc()
        .validity_days(days)
        .build()
        .map_err(|e| format!("invalid subject alternative name: {e}"))?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let cert = &identity.certificate_chain().as_slice()[0];
    let cert_path = out_dir.join("webtransport-cert.pem");
    let key_path = out_dir.join("webtransport-key.pem");
    std::fs::write(&cert_path, cert.to_pem())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    // The key is readable by its owner only.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&key_path)
        .and_then(|mut f| f.write_all(identity.private_key().to_secret_pem().as_bytes()))
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let hash = cert.hash();
    println!("certificate: {}", cert_path.display());
    println!("key:         {}", key_path.display());
    println!(
        "sha-256:     {}",
        hash.fmt(wtransport::tls::Sha256DigestFmt::DottedHex)
    );
    use base64::Engine;
    println!(
        "base64:      {}",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    );
    println!(
        "use: WEBTRANSPORT_CERT_FILE={} WEBTRANSPORT_KEY_FILE={}",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

fn fail(message: &str) -> ! {
    eprintln!("sfu: {message}");
    std::process::exit(2);
}

/// Replace this process with `sfu-bench` from this executable's directory (the load runner is
/// its own crate, `loadrun`, so the server binary carries none of it).
fn exec_bench(args: &[std::ffi::OsString]) -> ! {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("own path: {e}")));
    let bench = exe.with_file_name("sfu-bench");
    if !bench.is_file() {
        fail(&format!(
            "{} not found: `sfu bench` runs the separate load runner; build it with \
             `cargo build --release --workspace` (or `-p sfu-loadrun`)",
            bench.display()
        ));
    }
    let error = std::process::Command::new(&bench).args(args).exec();
    fail(&format!("{}: {error}", bench.display()))
}

fn main() {
    let cli = Cli::parse();
    // The runner is a client: it needs none of the server's configuration.
    let command = match cli.command {
        Some(Command::Bench { args }) => exec_bench(&args),
        other => other,
    };
    let production = cli.config.environment == Environment::Production;
    let settings = cli.config.resolve().unwrap_or_else(|e| fail(&e));
    match command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            let backend = sfu::audit::AuditBackend::from_database_url(
                settings.config.database_url.as_deref(),
                &settings.config.audit_sqlite_path,
            )
            .unwrap_or_else(|e| fail(&format!("DATABASE_URL: {e}")));
            let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(&e.to_string()));
            runtime
                .block_on(sfu::audit::migrate(&backend))
                .unwrap_or_else(|e| fail(&format!("migration failed: {e:#}")));
            println!("migrations applied to {}", backend.describe());
        }
        Command::Certs {
            action: CertsAction::Generate { out_dir, days, san },
        } => generate_certs(&out_dir, days, &san).unwrap_or_else(|e| fail(&e)),
        Command::Token { user_id, ttl } => {
            if settings.config.jwt_secret.is_none() {
                fail("set DJANGO_JWT_SECRET to mint a token the server will accept");
            }
            let auth = sfu::auth::Authenticator::new(settings.jwt_secret.as_deref(), None)
                .unwrap_or_else(|e| fail(&e));
            println!(
                "{}",
                auth.issue_for(&user_id, None, ttl).expect("secret is set")
            );
        }
        Command::Bench { .. } => unreachable!("handled above"),
        Command::Serve => {
            sfu::telemetry::init_logging(&settings.config.log_level, production)
                .unwrap_or_else(|e| fail(&e));
            let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| fail(&e.to_string()));
            runtime.block_on(async move {
                let dev = settings.dev_mode;
                let handle = sfu::start(settings)
                    .await
                    .unwrap_or_else(|e| fail(&e.to_string()));
                if dev {
                    tracing::info!(
                        "development mode: open http://127.0.0.1:{}/",
                        handle.http_addr.port()
                    );
                }
                let drain_timeout =
                    Duration::from_secs(handle.ctx.settings.config.drain_timeout_secs);
                shutdown_signal().await;
                // A second signal during the drain exits at once.
                tokio::spawn(async {
                    shutdown_signal().await;
                    eprintln!("sfu: second signal, exiting now");
                    std::process::exit(130);
                });
                let remaining = handle.drain(drain_timeout).await;
                tracing::info!(remaining, "stopped");
            });
        }
    }
}

/// SIGTERM (orchestrators) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
