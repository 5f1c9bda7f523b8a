//! Logs: to stderr, human-readable by default or JSON lines with
//! `KEYGATE_LOG__FORMAT=json`, at the level `RUST_LOG` sets (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("KEYGATE_LOG__FORMAT")
        .is_ok_and(|format| format.eq_ignore_ascii_case("json"));
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
