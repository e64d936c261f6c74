//! `edgeimg-updater` command line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgeimg-updater", version, about = "edgeimg device agent")]
pub struct Cli {
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Root of the system to work on (tests point this at a directory).
    #[arg(long, global = true, default_value = "/")]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take the provisioning file from the boot partition and apply it (boot service).
    Provision {
        /// Mount point of the boot partition.
        #[arg(long, default_value = "/efi")]
        boot_dir: String,
    },
    /// Link this release's images and manifests into K3s's state (boot service).
    K3sPrepare,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Provision { boot_dir } => {
            let live = cli.root == std::path::Path::new("/");
            let o = crate::provision::run(&cli.root, &boot_dir, live).context("provisioning")?;
            match &o.applied {
                Some(p) => tracing::info!("provisioning applied: {}", p.summary()),
                None => tracing::info!("no provisioning file: using the image's defaults"),
            }
            Ok(())
        }
        Command::K3sPrepare => {
            match crate::k3s_prepare::run(&cli.root).context("preparing K3s")? {
                None => tracing::info!("this image has no K3s"),
                Some(r) => tracing::info!(
                    "K3s prepared: linked {:?}, unlinked {:?}, manifests written {:?}, removed {:?}, import cache {}",
                    r.linked,
                    r.unlinked,
                    r.manifests_written,
                    r.manifests_removed,
                    if r.import_cache { "on" } else { "off" }
                ),
            }
            Ok(())
        }
    }
}
