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
    /// Print a JWT signed with DJANGO_JWT_SECRET (for curl/wscat testing).
    Token {
        /// The `user_id` claim.
        #[arg(long, default_value = "cli-user")]
        user_id: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

fn fail(message: &str) -> ! {
    eprintln!("sfu: {message}");
    std::process::exit(2);
}

fn main() {
    let cli = Cli::parse();
    let production = cli.config.environment == Environment::Production;
    let settings = cli.config.resolve().unwrap_or_else(|e| fail(&e));
    match cli.command.unwrap_or(Command::Serve) {
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
