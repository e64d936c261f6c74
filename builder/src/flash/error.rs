//! Everything that can stop `edgeimg flash`, each naming the file, device or offset it is about.

use std::io;
use std::path::PathBuf;

use super::safety::Refusal;
use crate::bmap::BmapError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    // --- before anything is written ---
    #[error("reading image {path}: {source}")]
    Image { path: PathBuf, source: io::Error },
    #[error("{path}: {what} images are not supported: decompress it first, or use disk.img.zst or disk.img")]
    UnsupportedCompression { path: PathBuf, what: &'static str },
    #[error("block map {path}: {source}")]
    Bmap { path: PathBuf, source: BmapError },
    #[error("block map {path} does not belong to {image}: it describes {bmap_size} bytes, the image has {image_size}")]
    BmapSize { path: PathBuf, image: PathBuf, bmap_size: u64, image_size: u64 },
    #[error("provisioning file {path}: {message}")]
    Provision { path: PathBuf, message: String },
    #[error("the image {path} has no `{label}` partition to put the provisioning file on")]
    NoEsp { path: PathBuf, label: &'static str },
    #[error("reading {path}: {source}")]
    Sysfs { path: PathBuf, source: io::Error },
    #[error("{name}: no such block device in {sysfs}")]
    NoSuchDevice { name: String, sysfs: PathBuf },
    #[error("target {path}: {message}")]
    TargetKind { path: PathBuf, message: String },
    #[error("target {path} is the image itself")]
    TargetIsImage { path: PathBuf },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<Refusal>),
    #[error("not confirmed: nothing was written to {0}")]
    Declined(PathBuf),
    #[error("no terminal to ask on before overwriting {0}: pass --yes to confirm")]
    NoTerminal(PathBuf),
    #[error("opening {path} for writing: {source}")]
    Open { path: PathBuf, source: io::Error },

    // --- while writing or verifying (wrapped in `Partial`) ---
    #[error("the image is corrupt: decompressing at image offset {offset}: {source}")]
    Decompress { offset: u64, source: io::Error },
    #[error("the image ends at byte {got}, but {expected} bytes were expected: it is truncated")]
    Truncated { expected: u64, got: u64 },
    #[error("the image is {got} bytes, but its block map says {expected}: the image or the block map is wrong")]
    SizeMismatch { expected: u64, got: u64 },
    #[error(
        "the image does not match its block map: blocks {first}-{last} (bytes {offset}..) have sha256 {got}, \
         the block map says {expected}: the image or the block map is corrupt"
    )]
    Corrupt { first: u64, last: u64, offset: u64, expected: String, got: String },
    #[error("the image is larger than the target ({capacity} bytes): it does not fit")]
    NoRoom { capacity: u64 },
    #[error("writing {len} bytes at offset {offset}: {source}")]
    Write { offset: u64, len: usize, source: io::Error },
    #[error("reading back {len} bytes at offset {offset}: {source}")]
    ReadBack { offset: u64, len: usize, source: io::Error },
    #[error("flushing to the target: {0}")]
    Sync(io::Error),
    #[error(
        "read-back mismatch in blocks {first}-{last} (bytes {offset}..{end}): the target returned different data \
         than was written: the card may be failing or counterfeit"
    )]
    Mismatch { first: u64, last: u64, offset: u64, end: u64 },
    #[error("read-back mismatch in the first MiB (partition table): the card may be failing or counterfeit")]
    HeadMismatch,
    #[error("the boot partition: {0}")]
    Fat(String),
    #[error("the provisioning file read back from the boot partition differs from {0}")]
    ProvisionMismatch(PathBuf),
    #[error("{}", partial_message(*.stopped_at, *.device, .wipe.as_deref()))]
    Partial {
        stopped_at: u64,
        device: bool,
        /// Why the first MiB could not be wiped, if it could not.
        wipe: Option<String>,
        #[source]
        source: Box<FlashError>,
    },
}

fn partial_message(stopped_at: u64, device: bool, wipe: Option<&str>) -> String {
    let what = if device { "the card" } else { "the copy" };
    match wipe {
        None => format!("partially written: stopped at byte offset {stopped_at}; {what} is not bootable"),
        Some(e) => format!(
            "partially written: stopped at byte offset {stopped_at}; wiping the partition table failed ({e}): \
             do not boot from {what}, flash it again"
        ),
    }
}

impl FlashError {
    /// Byte offset where writing stopped, for a partially written target.
    pub fn stopped_at(&self) -> Option<u64> {
        match self {
            FlashError::Partial { stopped_at, .. } => Some(*stopped_at),
            _ => None,
        }
    }
}
