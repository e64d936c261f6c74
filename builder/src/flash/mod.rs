//! `edgeimg flash`: write a disk image to an SD card, eMMC or USB stick, safely and fast.
//!
//! The pieces, in the order a job uses them:
//! - `device`: facts about a block device from sysfs/procfs roots (size, model, mounts...);
//! - `safety`: the refusal rules, a pure function of those facts;
//! - `source`: the image (raw or zstd) and its block map, as a forward stream;
//! - `target`: where it goes (a device or a file, behind a trait tests can replace);
//! - `writer`: decompress, check range checksums, write mapped ranges, first MiB last;
//! - `verify`: read back from the medium and compare with the block map;
//! - `provision`: the per-device file dropped into the boot partition's FAT;
//! - `job`: the plan (checks before touching the target) and its execution;
//! - `events`: progress as bars or JSON lines.

pub mod device;
pub mod error;
pub mod events;
pub mod job;
pub mod provision;
pub mod safety;
pub mod source;
pub mod target;
pub mod verify;
pub mod writer;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use crate::net::chain;

pub use device::World;
pub use error::FlashError;
pub use job::{Plan, Request, Summary, TargetInfo, TargetKind};
pub use source::BmapChoice;

use events::{size, FlashEvent, JsonSink, ReporterSink, Sink};

/// Arguments of `edgeimg flash`.
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// Image to write: disk.img or disk.img.zst (a disk.img.bmap beside it is used).
    pub image: PathBuf,
    /// Target block device (or a regular file).
    pub target: PathBuf,
    /// Block map (bmaptool format) to use instead of `<image without .zst>.bmap` beside the image.
    #[arg(long, value_name = "PATH", conflicts_with = "no_bmap")]
    pub bmap: Option<PathBuf>,
    /// Ignore any block map and write every byte of the image (slower).
    #[arg(long)]
    pub no_bmap: bool,
    /// Do not ask before overwriting the target.
    #[arg(short, long)]
    pub yes: bool,
    /// Write to a disk that is not removable (an internal disk, eMMC) or to a partition.
    /// Never overrides the refusal of a mounted disk or of the disk the system runs from.
    #[arg(long)]
    pub force: bool,
    /// Per-device provisioning file (edgeimg-provision.toml) to drop on the boot partition
    /// after writing. It is validated before the target is touched; its contents are never logged.
    #[arg(long, value_name = "FILE")]
    pub provision: Option<PathBuf>,
    /// Where sysfs is (for containers that mount the host's elsewhere).
    #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
    pub sysfs_root: PathBuf,
    /// Where procfs is.
    #[arg(long, value_name = "DIR", default_value = "/proc", hide = true)]
    pub proc_root: PathBuf,
}

impl FlashArgs {
    fn request(&self) -> Request {
        Request {
            image: self.image.clone(),
            bmap: match (&self.bmap, self.no_bmap) {
                (_, true) => BmapChoice::Ignore,
                (Some(p), false) => BmapChoice::Path(p.clone()),
                (None, false) => BmapChoice::Beside,
            },
            target: self.target.clone(),
            force: self.force,
            provision: self.provision.clone(),
        }
    }
}

/// Ask on the terminal; never wait for input that cannot come.
fn confirm(plan: &Plan) -> Result<(), FlashError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(FlashError::NoTerminal(plan.target.path.clone()));
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", plan.describe());
    let _ = write!(err, "Write the image to {}? [y/N] ", plan.target.path.display());
    let _ = err.flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(FlashError::Declined(plan.target.path.clone())),
    }
}

fn flash(args: &FlashArgs, sink: &dyn Sink) -> Result<(Plan, Summary), FlashError> {
    let world = World { sys: args.sysfs_root.clone(), proc: args.proc_root.clone() };
    let target = TargetInfo::inspect(&args.target, &world)?;
    let plan = Plan::prepare(&args.request(), target)?;
    for w in &plan.warnings {
        sink.event(FlashEvent::Warning { message: w.clone() });
    }
    if let Some(p) = &plan.provision {
        tracing::info!("provisioning from {}: {}", p.path.display(), p.summary);
    }
    if plan.needs_confirmation() && !args.yes {
        confirm(&plan)?;
    }
    let mut target = plan.open_target()?;
    let summary = plan.execute(&mut target, sink)?;
    Ok((plan, summary))
}

pub fn run(args: FlashArgs, json: bool) -> anyhow::Result<()> {
    let sink: Box<dyn Sink> =
        if json { Box::new(JsonSink) } else { Box::new(ReporterSink(crate::progress::reporter(false))) };
    match flash(&args, sink.as_ref()) {
        Ok((plan, s)) => {
            if !json {
                let rate = s.bytes_written as f64 / s.seconds.max(0.001);
                println!(
                    "Wrote {} to {}: {} of a {} image written, read back and verified, in {:.1} s ({}/s)",
                    plan.image.path.display(),
                    plan.target.path.display(),
                    size(s.bytes_written),
                    size(s.image_size),
                    s.seconds,
                    size(rate as u64)
                );
                if let Some(p) = &plan.provision {
                    println!("Provisioned: {} (/{})", p.summary, edgeimg_proto::provision::FILE_NAME);
                }
                if plan.target.is_device() {
                    println!("It is safe to remove {} now.", plan.target.path.display());
                }
            }
            Ok(())
        }
        Err(e) => {
            let stopped_at = e.stopped_at();
            let error = if json { chain(&e) } else { "stopped".into() };
            sink.event(FlashEvent::Failed { error, partial: stopped_at.is_some(), stopped_at });
            Err(e.into())
        }
    }
}
