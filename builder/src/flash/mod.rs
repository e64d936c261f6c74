//! `edgeimg flash`: write a disk image to an SD card, eMMC or USB stick, safely and fast.
//! (Being implemented: see issue 9.)

use std::path::PathBuf;

/// Arguments of `edgeimg flash`.
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// Image to write: disk.img or disk.img.zst (a disk.img.bmap beside it is used).
    pub image: PathBuf,
    /// Target block device (or a regular file).
    pub target: PathBuf,
}

pub fn run(args: FlashArgs, json: bool) -> anyhow::Result<()> {
    let _ = (args, json);
    anyhow::bail!("edgeimg flash is not implemented yet")
}
