//! The edgeimg update server (`edgeimg serve`). Being implemented (issue 5).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `edgeimg serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The TUF repository directory (made by `edgeimg publish`).
    #[arg(long)]
    pub repo: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("edgeimg serve is not implemented yet")
}
