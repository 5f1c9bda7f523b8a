//! Logs: to stderr, human-readable by default or JSON lines with `log.format = "json"`
//! (`KEYGATE_LOG__FORMAT=json`), at the level `RUST_LOG` sets (default `info`).

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the process's log subscriber, writing lines in `format`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
