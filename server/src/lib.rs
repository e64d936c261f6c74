//! The edgeimg update server (`edgeimg serve`).
//!
//! - serves the TUF repository as static files (`/tuf/metadata/`, `/tuf/targets/`), with
//!   ranges and entity tags, so any TUF client (the device updater, python-tuf) reads it;
//! - takes signed device enrollments and reports into a fleet database (SQLite);
//! - pauses a channel by itself when a release fails on too many devices (auto-halt) and
//!   keeps the online metadata fresh, both with the ONLINE keys only;
//! - shows the fleet: JSON API, Prometheus `/metrics`, an HTML dashboard at `/`.
//!
//! See docs/server.md for the API, the schema and the numbers.

pub mod api;
pub mod app;
pub mod attest;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod files;
pub mod fleet;
pub mod halt;
pub mod html;
pub mod metrics;
pub mod refresh;
pub mod repo_view;
pub mod server;

use anyhow::Context;

pub use config::{Config, ServeArgs};
pub use server::Server;

/// `edgeimg serve`: run until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let server = Server::start(config).await?;
        server.run_until(shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
