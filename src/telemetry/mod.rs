//! Logging: JSON lines in production (for log shippers), human-readable otherwise.

use tracing_subscriber::EnvFilter;

pub fn init_logging(level: &str, json: bool) -> Result<(), String> {
    let filter = EnvFilter::try_new(level)
        .map_err(|e| format!("LOG_LEVEL `{level}` is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| format!("logging already initialised: {e}"))
}

pub mod metrics;
