//! U-Boot with edgeimg's boot script (qemu-arm64, Raspberry Pi 4 with Debian's kernel).
//!
//! The script (edgeimg_proto::uboot::boot_script) boots `boot_slot`; while
//! `upgrade_available=1` it counts tries in `bootcount` and falls back to the other slot once
//! `bootlimit` tries went by without a commit. The state is kept in two environment copies
//! on the boot partition. This backend reads them the way the script does (first copy if
//! its CRC holds, else the second) and writes them with `fw_setenv`, first copy first, each
//! read back before the next: a power cut at any instant leaves one valid copy with either
//! the old or the new state.
//!
//! A slot is bootable while its directory holds `cmdline.env`: staging writes the kernel
//! and initrd first and that file last; disarming removes it first.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use edgeimg_proto::uboot::{self, BootState, CMDLINE_FILE, ENV_SIZE};
use edgeimg_proto::Slot;

use super::{io, slot_from_cmdline, write_boot_file, BootBackend, BootError, BootFiles, SlotStatus};

pub struct UBoot {
    /// Mount point of the boot partition.
    pub boot_dir: PathBuf,
    /// fw_env.config of each environment copy, the copy read first first.
    pub configs: Vec<PathBuf>,
    /// The kernel command line (/proc/cmdline).
    pub cmdline: PathBuf,
    /// Scratch directory for fw_setenv scripts.
    pub scratch: PathBuf,
    /// The program that writes a copy (`fw_setenv`, from libubootenv-tool).
    pub fw_setenv: String,
}

/// Where a fw_env.config says an environment copy lives: (device or file, offset, size).
pub fn env_location(config: &Path) -> Result<(PathBuf, u64, usize), BootError> {
    let text = std::fs::read_to_string(config).map_err(io(config))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| BootError::State(format!("{} names no environment", config.display())))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| {
        let s = s.trim_start_matches("0x");
        u64::from_str_radix(s, 16)
            .map_err(|_| BootError::State(format!("{}: bad number in `{line}`", config.display())))
    };
    match f.as_slice() {
        [path, offset, size, ..] => Ok((PathBuf::from(path), num(offset)?, num(size)? as usize)),
        _ => Err(BootError::State(format!("{}: expected `<file> <offset> <size>`, got `{line}`", config.display()))),
    }
}

impl UBoot {
    fn read_copy(&self, config: &Path) -> Option<Vec<u8>> {
        let (path, offset, size) = env_location(config).ok()?;
        let mut f = std::fs::File::open(path).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut b = vec![0; size];
        f.read_exact(&mut b).ok()?;
        Some(b)
    }

    /// The state the boot script would read now.
    pub fn state(&self) -> Result<BootState, BootError> {
        let copies: Vec<Option<Vec<u8>>> = self.configs.iter().map(|c| self.read_copy(c)).collect();
        let refs = [copies.first().and_then(|c| c.as_deref()), copies.get(1).and_then(|c| c.as_deref())];
        uboot::pick(refs)
            .map(|(s, _)| s)
            .map_err(|why| BootError::State(format!("no readable U-Boot boot state ({why})")))
    }

    /// Write `state` into every copy in order, each read back before the next is touched.
    fn write_state(&self, state: BootState) -> Result<(), BootError> {
        std::fs::create_dir_all(&self.scratch).map_err(io(&self.scratch))?;
        let script = self.scratch.join("uboot-state.env");
        crate::fsutil::atomic_write(&script, state.to_text().as_bytes(), 0o600).map_err(io(&script))?;
        for config in &self.configs {
            // -f: if this copy is torn, rebuild it from the new state itself.
            let out = std::process::Command::new(&self.fw_setenv)
                .arg("-c")
                .arg(config)
                .arg("-f")
                .arg(&script)
                .arg("-s")
                .arg(&script)
                .output()
                .map_err(|e| BootError::Command { cmd: self.fw_setenv.clone(), message: e.to_string() })?;
            if !out.status.success() {
                return Err(BootError::Command {
                    cmd: format!("{} -c {}", self.fw_setenv, config.display()),
                    message: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
                });
            }
            let back = self
                .read_copy(config)
                .ok_or_else(|| BootError::State(format!("cannot read back the copy of {}", config.display())))?;
            let got = uboot::decode(&back)
                .map_err(|e| e.to_string())
                .and_then(|v| BootState::from_vars(&v).map_err(|e| e.to_string()))
                .map_err(|e| {
                    BootError::State(format!("{} wrote a bad copy ({}): {e}", self.fw_setenv, config.display()))
                })?;
            if got != state {
                return Err(BootError::State(format!(
                    "{} left {got} in the copy of {} instead of {state}",
                    self.fw_setenv,
                    config.display()
                )));
            }
        }
        let _ = std::fs::remove_file(&script);
        Ok(())
    }

    fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.boot_dir.join(slot.boot_dir().trim_start_matches('/'))
    }

    fn bootable(&self, slot: Slot) -> bool {
        self.slot_dir(slot).join(CMDLINE_FILE).is_file()
    }
}

impl BootBackend for UBoot {
    fn name(&self) -> &'static str {
        "u-boot"
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        slot_from_cmdline(&self.cmdline)
    }

    fn is_trial(&self) -> Result<bool, BootError> {
        let s = self.state()?;
        Ok(s.upgrade_available && s.boot_slot == self.booted_slot()?)
    }

    fn disarm(&self, slot: Slot) -> Result<(), BootError> {
        let booted = self.booted_slot()?;
        if booted == slot {
            return Err(BootError::State(format!("refusing to disarm slot {slot}: it is the running system")));
        }
        let f = self.slot_dir(slot).join(CMDLINE_FILE);
        match std::fs::remove_file(&f) {
            Ok(()) => crate::fsutil::sync_dir(&self.slot_dir(slot)).map_err(io(&f))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&f)(e)),
        }
        let s = self.state()?;
        if s.boot_slot == slot {
            // Staged but never booted: the running slot is the one to boot again.
            self.write_state(BootState::committed(booted, s.bootlimit))?;
        }
        Ok(())
    }

    fn stage(&self, slot: Slot, files: &BootFiles, tries: u32) -> Result<(), BootError> {
        if self.booted_slot()? == slot {
            return Err(BootError::State(format!("refusing to stage slot {slot}: it is the running system")));
        }
        if tries == 0 || tries > uboot::MAX_TRIES {
            return Err(BootError::State(format!(
                "tries = {tries}: the U-Boot script counts 1 to {}",
                uboot::MAX_TRIES
            )));
        }
        self.disarm(slot)?;
        let dir = self.slot_dir(slot);
        let mut keep = vec![dir.join(CMDLINE_FILE)];
        for (src, dest) in &files.files {
            let dest = self.boot_dir.join(dest.trim_start_matches('/'));
            write_boot_file(&dest, src)?;
            keep.push(dest);
        }
        // Files of an older layout would only fill the boot partition.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for p in rd.flatten().map(|e| e.path()) {
                if p.is_file() && !keep.contains(&p) {
                    std::fs::remove_file(&p).map_err(io(&p))?;
                }
            }
        }
        let cmdline = dir.join(CMDLINE_FILE);
        crate::fsutil::atomic_write(&cmdline, format!("bootargs={}\n", files.cmdline.trim()).as_bytes(), 0o644)
            .map_err(io(&cmdline))?;
        crate::fsutil::sync_dir(&dir).map_err(io(&dir))?;
        self.write_state(BootState { boot_slot: slot, upgrade_available: true, bootcount: 0, bootlimit: tries })
    }

    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        let s = self.state()?;
        if s.boot_slot != slot {
            return Err(BootError::State(format!(
                "the boot state points at slot {} ({s}), not at slot {slot}: not committing",
                s.boot_slot
            )));
        }
        if !s.upgrade_available {
            return Ok(());
        }
        self.write_state(BootState::committed(slot, s.bootlimit))
    }

    fn set_default(&self, slot: Slot) -> Result<(), BootError> {
        if !self.bootable(slot) {
            return Err(BootError::State(format!("slot {slot} has no {CMDLINE_FILE}: it cannot become the default")));
        }
        let s = self.state()?;
        if s.upgrade_available && s.boot_slot == slot {
            return Err(BootError::State(format!(
                "slot {slot} is on trial, not committed; it cannot become the default"
            )));
        }
        self.write_state(BootState::committed(slot, s.bootlimit))
    }

    fn status(&self) -> Result<Vec<SlotStatus>, BootError> {
        let s = self.state()?;
        Ok(Slot::ALL
            .iter()
            .map(|&slot| {
                let bootable = self.bootable(slot);
                let trial = s.upgrade_available && s.boot_slot == slot;
                SlotStatus {
                    slot,
                    bootable: bootable && !(trial && s.bootcount >= s.bootlimit),
                    good: bootable && !trial,
                    tries_left: trial.then(|| s.bootlimit.saturating_sub(s.bootcount)),
                    detail: if !bootable {
                        format!("no {CMDLINE_FILE}")
                    } else if s.boot_slot == slot {
                        format!("boot state: {s}")
                    } else {
                        "fallback".into()
                    },
                }
            })
            .collect())
    }
}

/// For tests: what the boot script does at power-up (reads the state, counts a try or falls
/// back, writes both copies). Returns the slot it boots.
pub fn simulate_boot(b: &UBoot) -> Result<Slot, BootError> {
    let (slot, next) = b.state()?.boot();
    if let Some(n) = next {
        let bytes = n.to_env().map_err(|e| BootError::State(e.to_string()))?;
        for c in &b.configs {
            let (path, offset, _) = env_location(c)?;
            let mut all = std::fs::read(&path).unwrap_or_default();
            let end = offset as usize + ENV_SIZE;
            if all.len() < end {
                all.resize(end, 0);
            }
            all[offset as usize..end].copy_from_slice(&bytes);
            std::fs::write(&path, all).map_err(io(&path))?;
        }
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot partition with two environment copies, as the builder lays it out, and
    /// libubootenv's fw_setenv writing them, as on a device.
    fn setup(booted: Slot) -> Option<(tempfile::TempDir, UBoot)> {
        assert!(
            std::process::Command::new("fw_setenv").arg("-V").output().is_ok(),
            "these tests run the real fw_setenv: apt-get install libubootenv-tool (ci/setup does)"
        );
        let t = tempfile::tempdir().unwrap();
        let boot = t.path().join("boot");
        let mut configs = Vec::new();
        for name in [uboot::ENV_FILE, uboot::ENV_REDUND_FILE] {
            let cfg = t.path().join(format!("{name}.config"));
            std::fs::write(&cfg, format!("# test\n{}/{name} 0x0000 0x4000\n", boot.display())).unwrap();
            configs.push(cfg);
        }
        let env = BootState::committed(Slot::A, 1).to_env().unwrap();
        for name in [uboot::ENV_FILE, uboot::ENV_REDUND_FILE] {
            std::fs::create_dir_all(&boot).unwrap();
            std::fs::write(boot.join(name), &env).unwrap();
        }
        let a = boot.join("edgeimg/slot-a");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join(CMDLINE_FILE), "bootargs=edgeimg.slot=a\n").unwrap();
        let cmdline = t.path().join("cmdline");
        std::fs::write(&cmdline, format!("ro edgeimg.slot={}\n", booted.letter())).unwrap();
        let b = UBoot {
            boot_dir: boot,
            configs,
            cmdline,
            scratch: t.path().join("scratch"),
            fw_setenv: "fw_setenv".into(),
        };
        Some((t, b))
    }

    fn files(t: &Path, slot: Slot) -> BootFiles {
        let k = t.join("kernel");
        std::fs::write(&k, b"kernel").unwrap();
        BootFiles {
            cmdline: format!("ro roothash=abc edgeimg.slot={}", slot.letter()),
            files: vec![(k, format!("{}/linux", slot.boot_dir()))],
            title: "t".into(),
        }
    }

    fn boot_into(b: &mut UBoot, t: &Path) -> Slot {
        let slot = simulate_boot(b).unwrap();
        std::fs::write(t.join("cmdline"), format!("edgeimg.slot={}\n", slot.letter())).unwrap();
        slot
    }

    #[test]
    fn stage_try_commit() {
        let Some((t, mut b)) = setup(Slot::A) else { return };
        b.stage(Slot::B, &files(t.path(), Slot::B), 1).unwrap();
        let staged = b.state().unwrap();
        assert_eq!(staged, BootState { boot_slot: Slot::B, upgrade_available: true, bootcount: 0, bootlimit: 1 });
        let cmd = std::fs::read_to_string(b.boot_dir.join("edgeimg/slot-b/cmdline.env")).unwrap();
        assert_eq!(cmd, "bootargs=ro roothash=abc edgeimg.slot=b\n");
        // Both copies say the same, and fw_printenv (what an operator runs) agrees.
        for c in &b.configs {
            assert_eq!(BootState::from_env(&b.read_copy(c).unwrap()).unwrap(), staged);
        }
        assert_eq!(boot_into(&mut b, t.path()), Slot::B);
        assert!(b.is_trial().unwrap());
        b.mark_good(Slot::B).unwrap();
        assert_eq!(b.state().unwrap(), BootState::committed(Slot::B, 1));
        assert!(!b.is_trial().unwrap());
        assert_eq!(boot_into(&mut b, t.path()), Slot::B);
        let st = b.status().unwrap();
        assert!(st.iter().all(|s| s.bootable && s.good), "{st:?}");
    }

    #[test]
    fn uncommitted_trial_falls_back() {
        let Some((t, mut b)) = setup(Slot::A) else { return };
        b.stage(Slot::B, &files(t.path(), Slot::B), 1).unwrap();
        assert_eq!(boot_into(&mut b, t.path()), Slot::B);
        // Health never passed: the next power-up goes back to A, committed.
        assert_eq!(boot_into(&mut b, t.path()), Slot::A);
        assert_eq!(b.state().unwrap(), BootState::committed(Slot::A, 1));
        assert!(!b.is_trial().unwrap());
        assert!(b.mark_good(Slot::B).is_err(), "a slot the state does not point at is never committed");
    }

    #[test]
    fn torn_first_copy_keeps_the_old_state_and_is_repaired() {
        let Some((t, b)) = setup(Slot::A) else { return };
        // A power cut in the middle of writing uboot.env: its CRC fails.
        let first = b.boot_dir.join(uboot::ENV_FILE);
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[4..2000].fill(0xa5);
        std::fs::write(&first, &bytes).unwrap();
        assert_eq!(b.state().unwrap(), BootState::committed(Slot::A, 1), "read from the redundant copy");
        // The next write rebuilds the torn copy.
        b.stage(Slot::B, &files(t.path(), Slot::B), 2).unwrap();
        assert_eq!(BootState::from_env(&std::fs::read(&first).unwrap()).unwrap().boot_slot, Slot::B);
        // Torn second copy after a complete first one: the new state stands.
        let second = b.boot_dir.join(uboot::ENV_REDUND_FILE);
        std::fs::write(&second, vec![0u8; 100]).unwrap();
        assert_eq!(b.state().unwrap().boot_slot, Slot::B);
    }

    #[test]
    fn disarm_and_refusals() {
        let Some((t, b)) = setup(Slot::A) else { return };
        assert!(b.disarm(Slot::A).is_err(), "the running slot is never disarmed");
        assert!(b.stage(Slot::A, &files(t.path(), Slot::A), 1).is_err());
        assert!(b.stage(Slot::B, &files(t.path(), Slot::B), 10).is_err());
        b.stage(Slot::B, &files(t.path(), Slot::B), 1).unwrap();
        // A new install before the reboot disarms B: the state goes back to A.
        b.disarm(Slot::B).unwrap();
        assert_eq!(b.state().unwrap(), BootState::committed(Slot::A, 1));
        assert!(!b.boot_dir.join("edgeimg/slot-b/cmdline.env").exists());
        assert!(b.set_default(Slot::B).is_err(), "a disarmed slot cannot become the default");
        // Both copies unreadable: a clear error, not a guess.
        for n in [uboot::ENV_FILE, uboot::ENV_REDUND_FILE] {
            std::fs::write(b.boot_dir.join(n), b"junk").unwrap();
        }
        let e = b.state().unwrap_err().to_string();
        assert!(e.contains("no readable U-Boot boot state"), "{e}");
    }
}
