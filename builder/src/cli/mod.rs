//! Command line of the `edgeimg` binary (clap derive) and the dispatch of each command.

pub mod delta_stats;
pub mod release;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::build::{self, BuildOptions};
use crate::progress;

#[derive(Debug, Parser)]
#[command(name = "edgeimg", version, about = "Build, publish and flash immutable A/B edge OS images running K3s", long_about = None)]
pub struct Cli {
    /// More log output (-v, -vv). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Machine-readable output: progress events and results as JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a flashable A/B disk image and update payload from a board and a recipe.
    Build(BuildArgs),
    /// Release keys: make them, rotate online ones.
    #[command(subcommand)]
    Keys(release::KeysCommand),
    /// Add a build to the TUF release repository (signed with the offline targets key).
    Publish(release::PublishArgs),
    /// Decide which devices get a release: channel, percentage, waves, pause, rollback.
    Rollout(release::RolloutArgs),
    /// Re-sign the online metadata (rollout, snapshot, timestamp) with fresh expiry.
    Refresh {
        #[arg(long)]
        repo: PathBuf,
        /// Key directory with the online keys.
        #[arg(long)]
        keys: PathBuf,
    },
    /// Run the update server: the TUF repository, device reports, fleet view, metrics.
    Serve(edgeimg_server::ServeArgs),
    /// Write a disk image to an SD card, eMMC or USB stick (bmap-aware, verified).
    Flash(crate::flash::FlashArgs),
    /// Resolve the recipe's image tags to digests and record them in its lock file.
    Lock {
        /// Recipe file; the lock file is written beside it (`<recipe>.lock`).
        #[arg(long)]
        recipe: PathBuf,
        /// Resolve every image again, not only the ones missing from the lock file.
        #[arg(long)]
        update: bool,
        /// Registries reached over plain HTTP (loopback registries always are).
        #[arg(long = "insecure-registry", value_delimiter = ',', env = "EDGEIMG_INSECURE_REGISTRIES")]
        insecure_registries: Vec<String>,
        /// Cache for image blobs.
        #[arg(long, env = "EDGEIMG_CACHE")]
        cache_dir: Option<PathBuf>,
    },
    /// What a device on one build downloads to reach another, by each update method.
    DeltaStats(delta_stats::DeltaStatsArgs),
    /// Show what is in a disk image or a build output directory.
    Inspect {
        /// A disk image (disk.img) or a build output directory.
        path: PathBuf,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (edgeimg.1 and one per command) into a directory.
    Man {
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Board name (see boards/) or path to a board file.
    #[arg(long)]
    pub board: String,
    /// Recipe file.
    #[arg(long)]
    pub recipe: PathBuf,
    /// Release version (semantic version); defaults to the recipe's image.version.
    #[arg(long = "version", value_name = "VERSION")]
    pub image_version: Option<String>,
    /// Output base directory; the build goes to OUT/<board>/<image>/<version>/.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Cache for Debian base trees and downloads.
    #[arg(long, env = "EDGEIMG_CACHE")]
    pub cache_dir: Option<PathBuf>,
    /// Directory of board files (default: ./boards, then the built-in boards).
    #[arg(long)]
    pub boards_dir: Option<PathBuf>,
    /// Timestamp for every file in the image; default: the date of the Debian archive state.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
    /// Rebuild the Debian base tree even if it is cached.
    #[arg(long)]
    pub no_cache: bool,
    /// Keep the partial output of a failed build for inspection.
    #[arg(long)]
    pub keep_failed: bool,
    /// Registries reached over plain HTTP (loopback registries always are).
    #[arg(long = "insecure-registry", value_delimiter = ',', env = "EDGEIMG_INSECURE_REGISTRIES")]
    pub insecure_registries: Vec<String>,
    /// Device updater binary for the board's architecture (default: next to this program,
    /// or $EDGEIMG_UPDATER_AMD64 / $EDGEIMG_UPDATER_ARM64).
    #[arg(long)]
    pub updater: Option<PathBuf>,
}

fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("edgeimg")
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build(a) => {
            let opts = BuildOptions {
                board: a.board,
                recipe: a.recipe,
                version: a.image_version,
                out: a.out,
                cache: a.cache_dir.unwrap_or_else(default_cache),
                boards_dir: a.boards_dir,
                source_date_epoch: a.source_date_epoch,
                no_cache: a.no_cache,
                keep_failed: a.keep_failed,
                insecure_registries: a.insecure_registries,
                updater: a.updater,
            };
            let rep = progress::reporter(cli.json);
            let built = build::build(&opts, rep.as_ref())?;
            if !cli.json {
                let r = &built.report;
                println!("Built {} {} for {} in {}", r.image, r.version, r.board, built.dir.display());
                println!(
                    "  disk image   {}/disk.img ({} MiB, {} MiB compressed)",
                    built.dir.display(),
                    r.disk_size >> 20,
                    r.sizes["disk_zst_bytes"] >> 20
                );
                println!("  root hash    {}", r.verity["roothash"].as_str().unwrap_or(""));
                println!("  boot it      tests/qemu-boot {}/disk.img", built.dir.display());
            }
            Ok(())
        }
        Command::Keys(cmd) => release::keys(cmd),
        Command::Publish(a) => release::publish(a, cli.json),
        Command::Rollout(a) => release::rollout(a, cli.json),
        Command::Refresh { repo, keys } => release::refresh(repo, keys),
        Command::Serve(a) => edgeimg_server::run(a),
        Command::Flash(args) => crate::flash::run(args, cli.json),
        Command::Lock { recipe, update, insecure_registries, cache_dir } => {
            let cache = cache_dir.unwrap_or_else(default_cache);
            let changes = crate::oci::lock::lock_recipe(&recipe, update, &insecure_registries, &cache)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
            } else {
                for c in &changes.entries {
                    println!("{:<60} {} {}", c.image, c.digest, c.status);
                }
                println!("wrote {}", changes.lock_file.display());
            }
            Ok(())
        }
        Command::DeltaStats(a) => delta_stats::run(a, cli.json),
        Command::Inspect { path } => {
            let info = crate::inspect::inspect(&path).with_context(|| format!("inspecting {}", path.display()))?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", crate::inspect::render(&info));
            }
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "edgeimg", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing man pages to {}", out.display()))?;
            println!("wrote man pages to {}", out.display());
            Ok(())
        }
    }
}
