//! Raspberry Pi firmware tryboot (Raspberry Pi 4/5 with Raspberry Pi's kernel).
//!
//! Each slot has a boot partition of its own; `autoboot.txt` on partition 1 (mounted at
//! /efi) names the committed slot's in `[all]` and the other's in `[tryboot]`
//! (edgeimg_proto::tryboot). A release carries, per slot, the image of that slot's whole
//! boot partition.
//!
//! - Stage: write the image to the inactive slot's boot partition, the first 4 KiB (the
//!   FAT boot sector) last, and read it all back. Until the boot sector is written the
//!   partition is no filesystem, so a staging cut short is never booted, even by a tryboot.
//!   Nothing persistent changes: the trial is armed by the reboot itself
//!   (`reboot "0 tryboot"`, [`BootBackend::trial_reboot_arg`]).
//! - Trial: the firmware boots the `[tryboot]` partition once. A hang or panic resets the
//!   board and the flag is gone: the committed slot boots.
//! - Commit: a new autoboot.txt with the two partitions swapped (complete file, fsync,
//!   rename, fsync of the directory: the rename rewrites one FAT directory entry in place).
//!   A power cut before the rename leaves the old file, and the next boot is the old slot
//!   (the release counts as rolled back); after it, the new slot.
//! - Disarm: zero the boot sector.

use std::path::{Path, PathBuf};

use edgeimg_proto::tryboot::{self, Autoboot, AUTOBOOT_FILE};
use edgeimg_proto::Slot;

use super::{io, partition, slot_from_cmdline, BootBackend, BootError, BootFiles, SlotStatus};

pub struct Tryboot {
    /// Mount point of partition 1 (autoboot.txt).
    pub boot_dir: PathBuf,
    /// Each slot's boot partition (block device; a file in tests).
    pub partitions: [PathBuf; 2],
    /// The kernel command line (/proc/cmdline).
    pub cmdline: PathBuf,
}

impl Tryboot {
    fn partition(&self, slot: Slot) -> &Path {
        partition::of(&self.partitions, slot)
    }

    fn autoboot_path(&self) -> PathBuf {
        self.boot_dir.join(AUTOBOOT_FILE)
    }

    pub fn autoboot(&self) -> Result<Autoboot, BootError> {
        let p = self.autoboot_path();
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        tryboot::parse(&text).map_err(|why| BootError::State(format!("{}: {why}", p.display())))
    }

    fn write_autoboot(&self, default: Slot) -> Result<(), BootError> {
        let p = self.autoboot_path();
        crate::fsutil::atomic_write(&p, tryboot::autoboot(default).as_bytes(), 0o644).map_err(io(&p))?;
        crate::fsutil::sync_dir(&self.boot_dir).map_err(io(&self.boot_dir))
    }

    fn bootable(&self, slot: Slot) -> bool {
        partition::has_fat(self.partition(slot))
    }

    fn zero_head(&self, slot: Slot) -> Result<(), BootError> {
        partition::zero_head(self.partition(slot))
    }
}

impl BootBackend for Tryboot {
    fn name(&self) -> &'static str {
        "tryboot"
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        slot_from_cmdline(&self.cmdline)
    }

    /// A boot of the slot autoboot.txt does not commit (the firmware's device tree says
    /// the same in /proc/device-tree/chosen/bootloader/tryboot; the file is what a
    /// commit changes, so it is the one asked).
    fn is_trial(&self) -> Result<bool, BootError> {
        Ok(self.autoboot()?.default != self.booted_slot()?)
    }

    fn disarm(&self, slot: Slot) -> Result<(), BootError> {
        if self.booted_slot()? == slot {
            return Err(BootError::State(format!("refusing to disarm slot {slot}: it is the running system")));
        }
        if self.autoboot()?.default == slot {
            return Err(BootError::State(format!(
                "refusing to disarm slot {slot}: autoboot.txt boots it by default; commit or roll back first"
            )));
        }
        self.zero_head(slot)
    }

    fn stage(&self, slot: Slot, files: &BootFiles, tries: u32) -> Result<(), BootError> {
        if tries != 1 {
            return Err(BootError::State(format!("tries = {tries}: the firmware tries a slot exactly once")));
        }
        let image = partition::whole_image(files, slot, "tryboot")?;
        self.disarm(slot)?;
        partition::write_image(self.partition(slot), image)
    }

    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        if self.booted_slot()? != slot {
            return Err(BootError::State(format!("slot {slot} is not the running system: not committing it")));
        }
        if self.autoboot()?.default == slot {
            return Ok(());
        }
        self.write_autoboot(slot)
    }

    fn set_default(&self, slot: Slot) -> Result<(), BootError> {
        if !self.bootable(slot) {
            return Err(BootError::State(format!(
                "slot {slot}'s boot partition ({}) holds no FAT filesystem: it cannot become the default",
                self.partition(slot).display()
            )));
        }
        let a = self.autoboot()?;
        if a.default != slot && self.booted_slot()? == slot {
            return Err(BootError::State(format!(
                "slot {slot} is on trial, not committed; it cannot become the default"
            )));
        }
        self.write_autoboot(slot)
    }

    fn status(&self) -> Result<Vec<SlotStatus>, BootError> {
        let a = self.autoboot()?;
        let booted = self.booted_slot().ok();
        Ok(Slot::ALL
            .iter()
            .map(|&slot| {
                let bootable = self.bootable(slot);
                let trial = a.default != slot && booted == Some(slot);
                SlotStatus {
                    slot,
                    bootable,
                    good: bootable && a.default == slot,
                    tries_left: trial.then_some(0),
                    detail: match (bootable, a.default == slot, trial) {
                        (false, _, _) => "no FAT filesystem on its boot partition".into(),
                        (true, true, _) => {
                            format!("default (autoboot.txt boot_partition={})", tryboot::partition_of(slot))
                        }
                        (true, false, true) => "on trial (tryboot)".into(),
                        (true, false, false) => "tried by the next `reboot \"0 tryboot\"`".into(),
                    },
                }
            })
            .collect())
    }

    fn trial_reboot_arg(&self) -> Option<&'static str> {
        Some(tryboot::REBOOT_ARG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeimg_proto::tryboot::WHOLE_PARTITION;
    use partition::HEAD;
    use std::fs::File;
    use std::io::{Seek, SeekFrom, Write};

    const MIB: u64 = 1 << 20;

    /// Partition 1 as a directory, the boot partitions as 8 MiB files; slot A committed
    /// and its partition holding a FAT filesystem, as the builder lays the disk out.
    fn setup(booted: Slot) -> (tempfile::TempDir, Tryboot) {
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("efi");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join(AUTOBOOT_FILE), tryboot::autoboot(Slot::A)).unwrap();
        let parts = [t.path().join("boot-a"), t.path().join("boot-b")];
        for p in &parts {
            File::create(p).unwrap().set_len(8 * MIB).unwrap();
        }
        let cmdline = t.path().join("cmdline");
        std::fs::write(&cmdline, format!("ro edgeimg.slot={}\n", booted.letter())).unwrap();
        let b = Tryboot { boot_dir: boot, partitions: parts, cmdline };
        let img = fat(t.path(), "a");
        std::fs::copy(&img, &b.partitions[0]).unwrap();
        (t, b)
    }

    /// A real FAT image (mkfs.vfat) with one file whose content names it.
    fn fat(dir: &Path, name: &str) -> PathBuf {
        let img = dir.join(format!("{name}.vfat"));
        File::create(&img).unwrap().set_len(4 * MIB).unwrap();
        let ok = std::process::Command::new("mkfs.vfat")
            .args(["-n", "BOOT"])
            .arg(&img)
            .output()
            .expect("these tests run the real mkfs.vfat: apt-get install dosfstools");
        assert!(ok.status.success());
        let mut f = File::options().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(2 * MIB)).unwrap();
        f.write_all(format!("boot files of {name}").as_bytes()).unwrap();
        img
    }

    fn files(image: &Path) -> BootFiles {
        BootFiles {
            cmdline: String::new(),
            files: vec![(image.to_path_buf(), WHOLE_PARTITION.into())],
            title: "t".into(),
        }
    }

    fn set_booted(b: &Tryboot, slot: Slot) {
        std::fs::write(&b.cmdline, format!("ro edgeimg.slot={}\n", slot.letter())).unwrap();
    }

    #[test]
    fn stage_try_commit_and_roll_back() {
        let (t, b) = setup(Slot::A);
        assert!(!b.is_trial().unwrap());
        let st = b.status().unwrap();
        assert!(st[0].good && st[0].bootable && !st[1].bootable, "{st:?}");

        let img = fat(t.path(), "b");
        b.stage(Slot::B, &files(&img), 1).unwrap();
        assert_eq!(std::fs::read(&b.partitions[1]).unwrap()[..4 * MIB as usize], std::fs::read(&img).unwrap()[..]);
        // Nothing persistent armed it: without the tryboot reboot, A boots.
        assert_eq!(b.autoboot().unwrap(), Autoboot { default: Slot::A, tryboot: Slot::B });
        assert_eq!(b.trial_reboot_arg(), Some("0 tryboot"));
        let st = b.status().unwrap();
        assert!(st[1].bootable && !st[1].good && st[1].tries_left.is_none(), "{st:?}");

        // The tryboot: B runs, and is on trial until committed.
        set_booted(&b, Slot::B);
        assert!(b.is_trial().unwrap());
        assert_eq!(b.status().unwrap()[1].tries_left, Some(0));
        assert!(b.set_default(Slot::B).unwrap_err().to_string().contains("on trial"));
        assert!(b.mark_good(Slot::A).unwrap_err().to_string().contains("not the running system"));
        b.mark_good(Slot::B).unwrap();
        assert_eq!(b.autoboot().unwrap(), Autoboot { default: Slot::B, tryboot: Slot::A });
        assert!(!b.is_trial().unwrap());
        b.mark_good(Slot::B).unwrap();

        // Operator rollback to A, which is still a whole filesystem.
        b.set_default(Slot::A).unwrap();
        assert_eq!(b.autoboot().unwrap().default, Slot::A);
        drop(t);
    }

    #[test]
    fn refusals_leave_the_running_slot_alone() {
        let (t, b) = setup(Slot::A);
        let img = fat(t.path(), "b");
        let running = std::fs::read(&b.partitions[0]).unwrap();
        assert!(b.stage(Slot::A, &files(&img), 1).unwrap_err().to_string().contains("running system"));
        assert!(b.stage(Slot::B, &files(&img), 2).unwrap_err().to_string().contains("exactly once"));
        let two =
            BootFiles { files: vec![(img.clone(), "/vmlinuz".into()), (img.clone(), "/x".into())], ..files(&img) };
        assert!(b.stage(Slot::B, &two, 1).unwrap_err().to_string().contains("needs one"));
        let wrong = BootFiles { files: vec![(img.clone(), "/vmlinuz".into())], ..files(&img) };
        assert!(b.stage(Slot::B, &wrong, 1).unwrap_err().to_string().contains("whole partition"));
        let big = t.path().join("big.vfat");
        File::create(&big).unwrap().set_len(9 * MIB).unwrap();
        assert!(b.stage(Slot::B, &files(&big), 1).unwrap_err().to_string().contains("boot_mib"));
        assert!(b.set_default(Slot::B).unwrap_err().to_string().contains("no FAT"));
        assert_eq!(std::fs::read(&b.partitions[0]).unwrap(), running, "slot A's partition untouched");
        assert_eq!(b.autoboot().unwrap().default, Slot::A);
    }

    /// Power cut at each step of staging and committing: what boots next.
    #[test]
    fn power_cut_at_each_step() {
        let (t, b) = setup(Slot::A);
        let img = fat(t.path(), "b");
        // Cut after disarm, or during the body: the boot sector is zero, so the partition is
        // no filesystem; autoboot.txt still boots A, and a stray tryboot finds nothing to boot
        // (the firmware then resets into A).
        b.stage(Slot::B, &files(&img), 1).unwrap();
        b.zero_head(Slot::B).unwrap();
        assert!(!b.bootable(Slot::B) && b.autoboot().unwrap().default == Slot::A);
        // Cut after the body, before the head: same.
        let mut f = File::options().write(true).open(&b.partitions[1]).unwrap();
        f.write_all(&[0u8; HEAD]).unwrap();
        assert!(!b.bootable(Slot::B));
        // A torn autoboot.txt rename cannot happen (one directory entry); a temp file left by a
        // cut before the rename is ignored by the firmware and replaced by the next commit.
        b.stage(Slot::B, &files(&img), 1).unwrap();
        set_booted(&b, Slot::B);
        std::fs::write(b.boot_dir.join(".autoboot.txt.tmp"), "torn").unwrap();
        assert_eq!(b.autoboot().unwrap().default, Slot::A, "before the rename: A is still the default");
        b.mark_good(Slot::B).unwrap();
        assert_eq!(b.autoboot().unwrap().default, Slot::B);
        // A bad autoboot.txt is reported, never guessed at.
        std::fs::write(b.autoboot_path(), "[all]\nboot_partition=2\n").unwrap();
        assert!(b.is_trial().unwrap_err().to_string().contains("tryboot_a_b"));
    }
}
