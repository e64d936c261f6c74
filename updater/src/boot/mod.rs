//! Boot backends: how a slot is tried once, blessed, or given up, per boot loader. One file
//! per backend, all with the same operations (as in RAUC); chosen once from the config.

pub mod fake;
pub mod l4t;
pub mod partition;
pub mod systemd_boot;
pub mod tryboot;
pub mod uboot;

use std::path::{Path, PathBuf};

use edgeimg_proto::Slot;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    State(String),
    #[error("running {cmd}: {message}")]
    Command { cmd: String, message: String },
}

pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootError {
    let path = path.to_path_buf();
    move |source| BootError::Io { path, source }
}

/// Boot files of a slot: verified local files and where they go on the boot partition.
#[derive(Debug, Clone)]
pub struct BootFiles {
    pub cmdline: String,
    pub files: Vec<(PathBuf, String)>,
    /// Shown in boot menus, e.g. "k3s-edge 1.4.0".
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// The loader has an entry for it.
    pub bootable: bool,
    /// Blessed (committed); false while on trial or failed.
    pub good: bool,
    /// Tries left while on trial (None when good or not bootable).
    pub tries_left: Option<u32>,
    pub detail: String,
}

pub trait BootBackend: Send {
    fn name(&self) -> &'static str;
    /// The slot that booted now.
    fn booted_slot(&self) -> Result<Slot, BootError>;
    /// Whether this boot is the trial of a slot not yet blessed.
    fn is_trial(&self) -> Result<bool, BootError>;
    /// Make `slot` unbootable (before its partitions are rewritten).
    fn disarm(&self, slot: Slot) -> Result<(), BootError>;
    /// Install boot files for `slot` and arm it to be tried on the next boot (`tries`
    /// attempts), leaving the booted slot as the fallback.
    fn stage(&self, slot: Slot, files: &BootFiles, tries: u32) -> Result<(), BootError>;
    /// Commit: the booted, trial slot becomes the default.
    fn mark_good(&self, slot: Slot) -> Result<(), BootError>;
    /// The booted trial `slot` failed its health checks: make sure the reboot that follows
    /// does not boot it again. Loaders that never boot an unblessed slot twice need nothing
    /// (the default); L4T's firmware keeps booting the active chain until its retry count
    /// runs out, so the committed slot is armed again.
    fn give_up(&self, _slot: Slot) -> Result<(), BootError> {
        Ok(())
    }
    /// Make a good slot the default again (operator rollback).
    fn set_default(&self, slot: Slot) -> Result<(), BootError>;
    fn status(&self) -> Result<Vec<SlotStatus>, BootError>;
    /// The argument the reboot into a trial must pass to `reboot(2)` (`systemctl reboot
    /// ARG`), when the loader's trial is armed by the reboot itself rather than by state
    /// written at staging (Raspberry Pi tryboot: `0 tryboot`). Such a trial does not
    /// survive a power cut before the reboot: the updater then stays staged and reboots
    /// again, instead of counting a fallback.
    fn trial_reboot_arg(&self) -> Option<&'static str> {
        None
    }
}

/// `edgeimg.slot=` from a kernel command line file.
pub fn slot_from_cmdline(cmdline: &Path) -> Result<Slot, BootError> {
    let text = std::fs::read_to_string(cmdline).map_err(io(cmdline))?;
    text.split_whitespace()
        .find_map(|a| a.strip_prefix("edgeimg.slot="))
        .ok_or_else(|| BootError::State(format!("{} has no edgeimg.slot= (not an edgeimg boot?)", cmdline.display())))?
        .parse()
        .map_err(BootError::State)
}

/// Write a file on the boot partition: complete temp file, fsync, rename, fsync dir.
pub fn write_boot_file(dest: &Path, src: &Path) -> Result<(), BootError> {
    let bytes = std::fs::read(src).map_err(io(src))?;
    crate::fsutil::atomic_write(dest, &bytes, 0o644).map_err(io(dest))
}
