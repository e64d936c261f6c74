//! NVIDIA Jetson, JetPack 6 / L4T r36 (edgeimg_proto::l4t has how the firmware chooses).
//!
//! Each slot boots from its own `APP` / `APP_b` partition (FAT: extlinux.conf, kernel,
//! initrd), which a release carries as one image per slot. NVIDIA's firmware boots the
//! active boot chain; edgeimg keeps the committed slot in a file on the ESP.
//!
//! - Stage: zero the target's boot sector, write its image (boot sector last) and read it
//!   back, set its `RootfsStatusSlotX` back to normal if the firmware once marked it
//!   unbootable, then arm it: `nvbootctrl -t rootfs set-active-boot-slot N` (one UEFI
//!   variable write). A power cut before the arming leaves the running slot active; after
//!   it, the next boot is the trial.
//! - Trial: a boot of the slot the ESP's record does not name. L4T's retry count (3 warm
//!   boots) falls back by itself from a slot that never reaches Linux or hangs before the
//!   health checks pass (the image holds L4T's count-clearing service back on a trial boot).
//! - Commit: the record names the slot (complete file, fsync, rename, fsync of the
//!   directory), then L4T's service clears the retry count.
//! - Give up (health checks failed): arm the committed slot again, then reboot.
//! - Disarm: zero the boot sector; if the firmware was armed to switch to that slot, arm
//!   the running one again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgeimg_proto::l4t::{self, BOOT_CHAIN_FW_NEXT, BOOT_CHAIN_OS_CURRENT, COMMITTED_FILE};
use edgeimg_proto::Slot;

use super::{io, partition, slot_from_cmdline, BootBackend, BootError, BootFiles, SlotStatus};

pub struct L4t {
    /// Mount point of the ESP (the committed-slot record).
    pub boot_dir: PathBuf,
    /// Each slot's `APP` partition (block device; a file in tests).
    pub partitions: [PathBuf; 2],
    /// efivarfs (or a directory laid out like it, in tests).
    pub efivars: PathBuf,
    /// The kernel command line (/proc/cmdline).
    pub cmdline: PathBuf,
    /// NVIDIA's boot control tool (package nvidia-l4t-tools).
    pub nvbootctrl: PathBuf,
    /// systemctl, to start L4T's retry-count service after a commit.
    pub systemctl: PathBuf,
    /// Root of the running system (where L4T's unit files are looked for).
    pub root: PathBuf,
}

impl L4t {
    fn partition(&self, slot: Slot) -> &Path {
        partition::of(&self.partitions, slot)
    }

    fn record_path(&self) -> PathBuf {
        self.boot_dir.join(COMMITTED_FILE)
    }

    /// The slot edgeimg committed (the ESP's record).
    pub fn committed(&self) -> Result<Slot, BootError> {
        let p = self.record_path();
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        text.trim().parse().map_err(|e| {
            BootError::State(format!(
                "{}: {e}. It names the committed slot (a or b); write the letter of the slot that runs well into it",
                p.display()
            ))
        })
    }

    fn write_committed(&self, slot: Slot) -> Result<(), BootError> {
        let p = self.record_path();
        let dir = p.parent().unwrap_or(&self.boot_dir).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        crate::fsutil::atomic_write(&p, format!("{}\n", slot.letter()).as_bytes(), 0o644).map_err(io(&p))?;
        crate::fsutil::sync_dir(&dir).map_err(io(&dir))
    }

    fn efivar(&self, name: &str) -> Option<u32> {
        l4t::parse_efivar_u32(&std::fs::read(self.efivars.join(l4t::efivar_name(name))).ok()?)
    }

    /// Write one of NVIDIA's u32 variables through efivarfs, whose files are immutable
    /// until told otherwise (`chattr -i`); the value goes in one write, as efivarfs needs.
    fn set_efivar(&self, name: &str, value: u32) -> Result<(), BootError> {
        let p = self.efivars.join(l4t::efivar_name(name));
        if p.exists() {
            // chattr from e2fsprogs, which every edgeimg image has. A file that is not
            // immutable (or a test directory on a file system without the flag) needs
            // nothing; an immutable one that stays so fails the write below, which says so.
            let _ = Command::new("chattr").arg("-i").arg(&p).output();
        }
        let mut f = File::options().write(true).create(true).truncate(false).open(&p).map_err(io(&p))?;
        f.write_all(&l4t::efivar_u32(l4t::NV_ATTRIBUTES, value)).map_err(io(&p))
    }

    /// The firmware's mark on a slot that ran out of tries, cleared: nothing else clears it
    /// (L4T ≥ 35.2 has no mark-boot-successful), and a slot so marked is never booted again.
    fn clear_unbootable(&self, slot: Slot) -> Result<(), BootError> {
        if self.efivar(&l4t::status_var(slot)) == Some(l4t::STATUS_UNBOOTABLE) {
            tracing::info!("slot {slot} was marked unbootable by the firmware; marking it normal for its new release");
            self.set_efivar(&l4t::status_var(slot), l4t::STATUS_NORMAL)?;
        }
        Ok(())
    }

    /// Make the firmware boot `slot` from the next boot on (its boot chain).
    fn arm(&self, slot: Slot) -> Result<(), BootError> {
        let chain = l4t::chain_of(slot).to_string();
        let args = ["-t", "rootfs", "set-active-boot-slot", chain.as_str()];
        let cmd = format!("{} {}", self.nvbootctrl.display(), args.join(" "));
        let out = Command::new(&self.nvbootctrl).args(args).output().map_err(|e| BootError::Command {
            cmd: cmd.clone(),
            message: format!("{e} (nvbootctrl comes with NVIDIA's nvidia-l4t-tools package)"),
        })?;
        if !out.status.success() {
            let message = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
            return Err(BootError::Command { cmd, message });
        }
        Ok(())
    }

    /// The slot the firmware switches to at the next boot, when a switch is pending.
    fn armed(&self) -> Option<Slot> {
        self.efivar(BOOT_CHAIN_FW_NEXT).and_then(l4t::slot_of_chain)
    }

    /// Let L4T's service clear the retry count now that the slot is committed (it was held
    /// back on this trial boot). Not fatal: the next boot runs it anyway.
    fn release_retry_count(&self) {
        let unit = l4t::RETRY_SERVICE;
        let installed = ["usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"]
            .iter()
            .any(|d| self.root.join(d).join(unit).exists());
        if !installed {
            return;
        }
        match Command::new(&self.systemctl).args(["start", "--no-block", unit]).status() {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!("systemctl start {unit}: {s}; the retry count is cleared at the next boot"),
            Err(e) => tracing::warn!("systemctl start {unit}: {e}; the retry count is cleared at the next boot"),
        }
    }
}

impl BootBackend for L4t {
    fn name(&self) -> &'static str {
        "l4t"
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        slot_from_cmdline(&self.cmdline)
    }

    fn is_trial(&self) -> Result<bool, BootError> {
        Ok(self.committed()? != self.booted_slot()?)
    }

    fn disarm(&self, slot: Slot) -> Result<(), BootError> {
        let booted = self.booted_slot()?;
        if booted == slot {
            return Err(BootError::State(format!("refusing to disarm slot {slot}: it is the running system")));
        }
        if self.committed()? == slot {
            return Err(BootError::State(format!(
                "refusing to disarm slot {slot}: it is the committed slot ({}); commit or roll back first",
                self.record_path().display()
            )));
        }
        if self.armed() == Some(slot) {
            self.arm(booted)?;
        }
        partition::zero_head(self.partition(slot))
    }

    fn stage(&self, slot: Slot, files: &BootFiles, _tries: u32) -> Result<(), BootError> {
        // `tries` is NVIDIA's RootfsRetryCountMax here, a firmware setting (the board file
        // refuses another value).
        let image = partition::whole_image(files, slot, "l4t")?;
        self.disarm(slot)?;
        partition::write_image(self.partition(slot), image)?;
        self.clear_unbootable(slot)?;
        self.arm(slot)
    }

    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        if self.booted_slot()? != slot {
            return Err(BootError::State(format!("slot {slot} is not the running system: not committing it")));
        }
        if self.committed()? != slot {
            self.write_committed(slot)?;
        }
        self.release_retry_count();
        Ok(())
    }

    fn give_up(&self, slot: Slot) -> Result<(), BootError> {
        let committed = self.committed()?;
        if self.booted_slot()? == slot && committed != slot {
            self.arm(committed)?;
        }
        Ok(())
    }

    fn set_default(&self, slot: Slot) -> Result<(), BootError> {
        if !partition::has_fat(self.partition(slot)) {
            return Err(BootError::State(format!(
                "slot {slot}'s APP partition ({}) holds no FAT filesystem: it cannot become the default",
                self.partition(slot).display()
            )));
        }
        let committed = self.committed()?;
        if committed != slot && self.booted_slot()? == slot {
            return Err(BootError::State(format!(
                "slot {slot} is on trial, not committed; it cannot become the default"
            )));
        }
        // Armed first: a power cut before the record is written boots the slot as a trial,
        // which its health checks then commit.
        self.clear_unbootable(slot)?;
        self.arm(slot)?;
        self.write_committed(slot)
    }

    fn status(&self) -> Result<Vec<SlotStatus>, BootError> {
        let committed = self.committed()?;
        let booted = self.booted_slot().ok();
        let armed = self.armed();
        let chain = self.efivar(BOOT_CHAIN_OS_CURRENT).and_then(l4t::slot_of_chain);
        Ok(Slot::ALL
            .iter()
            .map(|&slot| {
                let has_fs = partition::has_fat(self.partition(slot));
                let marked = self.efivar(&l4t::status_var(slot)) == Some(l4t::STATUS_UNBOOTABLE);
                let bootable = has_fs && !marked;
                let trial = committed != slot && booted == Some(slot);
                let mut detail = match (has_fs, marked, committed == slot, trial) {
                    (false, _, _, _) => "no FAT filesystem on its APP partition".to_string(),
                    (true, true, _, _) => format!(
                        "marked unbootable by the firmware ({} = 0xff): it ran out of tries",
                        l4t::status_var(slot)
                    ),
                    (true, false, true, _) => "committed".into(),
                    (true, false, false, true) => "on trial (L4T's retry count falls back from it)".into(),
                    (true, false, false, false) if armed == Some(slot) => "armed: the next boot tries it".into(),
                    (true, false, false, false) => "installed, not armed".into(),
                };
                if booted == Some(slot) && chain.is_some_and(|c| c != slot) {
                    detail.push_str(&format!(
                        "; but the firmware booted boot chain {} (BootChainOsCurrent): its APP partition holds the \
                         other slot's files",
                        l4t::chain_of(chain.unwrap_or(slot))
                    ));
                }
                SlotStatus { slot, bootable, good: bootable && committed == slot, tries_left: None, detail }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeimg_proto::tryboot::WHOLE_PARTITION;

    const MIB: u64 = 1 << 20;

    /// A device tree as flashed: slot A committed and booted, its APP partition a real FAT
    /// filesystem, APP_b empty, both slots normal; nvbootctrl a script that sets
    /// BootChainFwNext as the real one does.
    fn setup() -> (tempfile::TempDir, L4t) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        let efivars = p.join("efivars");
        std::fs::create_dir_all(p.join("efi/edgeimg")).unwrap();
        std::fs::create_dir_all(&efivars).unwrap();
        std::fs::write(p.join("efi").join(COMMITTED_FILE), "a\n").unwrap();
        std::fs::write(p.join("cmdline"), "ro edgeimg.slot=a\n").unwrap();
        let nvbootctrl = p.join("nvbootctrl");
        std::fs::write(
            &nvbootctrl,
            format!(
                "#!/bin/sh\nprintf '\\007\\000\\000\\000\\00'\"$4\"'\\000\\000\\000' > {}/{}\n",
                efivars.display(),
                l4t::efivar_name(BOOT_CHAIN_FW_NEXT)
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&nvbootctrl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = L4t {
            boot_dir: p.join("efi"),
            partitions: [p.join("APP"), p.join("APP_b")],
            efivars,
            cmdline: p.join("cmdline"),
            nvbootctrl,
            systemctl: "/bin/false".into(),
            root: p.to_path_buf(),
        };
        let fat = fat(p, "a");
        std::fs::copy(&fat, &b.partitions[0]).unwrap();
        File::create(&b.partitions[1]).unwrap().set_len(8 * MIB).unwrap();
        for s in Slot::ALL {
            b.set_efivar(&l4t::status_var(s), l4t::STATUS_NORMAL).unwrap();
        }
        (t, b)
    }

    fn fat(dir: &Path, name: &str) -> PathBuf {
        let img = dir.join(format!("{name}.vfat"));
        File::create(&img).unwrap().set_len(4 * MIB).unwrap();
        let ok = Command::new("mkfs.vfat")
            .arg(&img)
            .output()
            .expect("these tests run the real mkfs.vfat: apt-get install dosfstools");
        assert!(ok.status.success());
        img
    }

    fn files(image: &Path) -> BootFiles {
        BootFiles {
            cmdline: String::new(),
            files: vec![(image.to_path_buf(), WHOLE_PARTITION.into())],
            title: "t".into(),
        }
    }

    #[test]
    fn staging_writes_clears_the_mark_and_arms() {
        let (t, b) = setup();
        b.set_efivar(&l4t::status_var(Slot::B), l4t::STATUS_UNBOOTABLE).unwrap();
        let st = b.status().unwrap();
        assert!(st[0].good && !st[1].bootable && st[1].detail.contains("no FAT"), "{st:?}");
        let img = fat(t.path(), "b");
        b.stage(Slot::B, &files(&img), 1).unwrap();
        assert_eq!(std::fs::read(&b.partitions[1]).unwrap()[..4 * MIB as usize], std::fs::read(&img).unwrap()[..]);
        assert_eq!(b.efivar(&l4t::status_var(Slot::B)), Some(l4t::STATUS_NORMAL));
        assert_eq!(b.armed(), Some(Slot::B));
        assert!(b.status().unwrap()[1].detail.contains("armed"));
        assert!(!b.is_trial().unwrap());
    }

    #[test]
    fn disarming_an_armed_slot_arms_the_running_one() {
        // A staged update superseded before its reboot: the next install disarms B, which
        // must not leave the firmware switching to a chain whose APP is being rewritten.
        let (t, b) = setup();
        b.stage(Slot::B, &files(&fat(t.path(), "b")), 1).unwrap();
        b.disarm(Slot::B).unwrap();
        assert_eq!(b.armed(), Some(Slot::A));
        assert!(!partition::has_fat(&b.partitions[1]));
    }

    #[test]
    fn refusals_leave_the_running_and_committed_slot_alone() {
        let (t, b) = setup();
        let running = std::fs::read(&b.partitions[0]).unwrap();
        let img = fat(t.path(), "x");
        assert!(b.stage(Slot::A, &files(&img), 1).unwrap_err().to_string().contains("running system"));
        let wrong = BootFiles { files: vec![(img.clone(), "/boot/Image".into())], ..files(&img) };
        assert!(b.stage(Slot::B, &wrong, 1).unwrap_err().to_string().contains("l4t"));
        assert!(b.set_default(Slot::B).unwrap_err().to_string().contains("no FAT"));
        assert!(b.mark_good(Slot::B).unwrap_err().to_string().contains("not the running system"));
        // Booted B on trial: A is the committed slot and cannot be disarmed.
        b.stage(Slot::B, &files(&fat(t.path(), "b")), 1).unwrap();
        std::fs::write(&b.cmdline, "edgeimg.slot=b\n").unwrap();
        assert!(b.is_trial().unwrap());
        assert!(b.disarm(Slot::A).unwrap_err().to_string().contains("committed slot"));
        assert!(b.set_default(Slot::B).unwrap_err().to_string().contains("on trial"));
        assert_eq!(std::fs::read(&b.partitions[0]).unwrap(), running, "APP untouched");
        // A broken record is reported with what to do, never guessed at.
        std::fs::write(b.boot_dir.join(COMMITTED_FILE), "c\n").unwrap();
        assert!(b.is_trial().unwrap_err().to_string().contains("write the letter"));
    }

    #[test]
    fn commit_and_operator_rollback() {
        let (t, b) = setup();
        b.stage(Slot::B, &files(&fat(t.path(), "b")), 1).unwrap();
        std::fs::write(&b.cmdline, "edgeimg.slot=b\n").unwrap();
        b.mark_good(Slot::B).unwrap(); // L4T's unit is not installed here: nothing to start
        assert_eq!(b.committed().unwrap(), Slot::B);
        assert!(!b.is_trial().unwrap());
        b.set_default(Slot::A).unwrap();
        assert_eq!((b.committed().unwrap(), b.armed()), (Slot::A, Some(Slot::A)));
    }
}
