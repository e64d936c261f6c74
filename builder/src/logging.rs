//! One tracing setup for the edgeimg binary: human-readable on stderr, JSON on request.
//! Colours only on a terminal: `edgeimg serve` under systemd logs to the journal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `verbose` counts -v flags; `RUST_LOG` overrides.
pub fn init(verbose: u8, json: bool) {
    let default = match verbose {
        0 => "warn,edgeimg=info",
        1 => "info,edgeimg=debug",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.compact().try_init() };
}
