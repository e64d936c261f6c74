//! x86 UEFI with systemd-boot and boot counting (what the builder makes).
//!
//! State lives in the ESP's entry file names: `slot-b+1.conf` is armed with one try;
//! systemd-boot renames it to `slot-b+0-1.conf` before starting it; an entry with no tries
//! left sorts last, so the next boot takes the other slot. Committing renames it to
//! `slot-b.conf`. The highest `version` among good entries is the default.

use std::path::{Path, PathBuf};

use edgeimg_proto::slot::{systemd_boot_entry, EntryImage};
use edgeimg_proto::Slot;

use super::{io, slot_from_cmdline, write_boot_file, BootBackend, BootError, BootFiles, SlotStatus};

pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

pub struct SystemdBoot {
    /// Mount point of the ESP.
    pub esp: PathBuf,
    /// efivarfs (or a directory laid out like it, in tests).
    pub efivars: PathBuf,
    /// The kernel command line (/proc/cmdline).
    pub cmdline: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    file: String,
    slot: Slot,
    tries_left: Option<u32>,
    version: u64,
}

/// `slot-b+1-0.conf` → (slot B, Some(1)); `slot-a.conf` → (slot A, None).
fn parse_name(name: &str) -> Option<(Slot, Option<u32>)> {
    let stem = name.strip_suffix(".conf")?;
    let (id, counter) = match stem.split_once('+') {
        Some((id, c)) => (id, Some(c.split('-').next()?.parse().ok()?)),
        None => (stem, None),
    };
    let slot = id.strip_prefix("slot-")?.parse().ok()?;
    Some((slot, counter))
}

impl SystemdBoot {
    fn entries_dir(&self) -> PathBuf {
        self.esp.join("loader/entries")
    }

    fn entries(&self) -> Result<Vec<Entry>, BootError> {
        let dir = self.entries_dir();
        let mut v = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(io(&dir)(e)),
        };
        for e in rd.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some((slot, tries_left)) = parse_name(&file) else { continue };
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let version =
                text.lines().find_map(|l| l.strip_prefix("version")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
            v.push(Entry { file, slot, tries_left, version });
        }
        v.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(v)
    }

    fn efivar(&self, name: &str) -> Option<String> {
        let b = std::fs::read(self.efivars.join(format!("{name}-{LOADER_GUID}"))).ok()?;
        // 4 bytes of attributes, then UTF-16LE.
        let units: Vec<u16> =
            b.get(4..)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        Some(String::from_utf16_lossy(&units))
    }

    fn sync(&self) -> Result<(), BootError> {
        let d = self.entries_dir();
        crate::fsutil::sync_dir(&d).map_err(io(&d))
    }
}

impl BootBackend for SystemdBoot {
    fn name(&self) -> &'static str {
        "systemd-boot"
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        slot_from_cmdline(&self.cmdline)
    }

    fn is_trial(&self) -> Result<bool, BootError> {
        let booted = self.booted_slot()?;
        Ok(self.entries()?.iter().any(|e| e.slot == booted && e.tries_left.is_some()))
    }

    fn disarm(&self, slot: Slot) -> Result<(), BootError> {
        let booted = self.booted_slot().ok();
        if booted == Some(slot) {
            return Err(BootError::State(format!("refusing to disarm slot {slot}: it is the running system")));
        }
        for e in self.entries()?.into_iter().filter(|e| e.slot == slot) {
            let p = self.entries_dir().join(&e.file);
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
        self.sync()
    }

    fn stage(&self, slot: Slot, files: &BootFiles, tries: u32) -> Result<(), BootError> {
        if self.booted_slot().ok() == Some(slot) {
            return Err(BootError::State(format!("refusing to stage slot {slot}: it is the running system")));
        }
        for (src, dest) in &files.files {
            write_boot_file(&self.esp.join(dest.trim_start_matches('/')), src)?;
        }
        let path_of = |suffix: &str| {
            files.files.iter().map(|(_, d)| d.as_str()).find(|d| d.ends_with(suffix)).unwrap_or_default().to_string()
        };
        let version = self.entries()?.iter().map(|e| e.version).max().unwrap_or(0) + 1;
        let (linux, initrd, uki) = (path_of("/linux"), path_of("/initrd"), path_of(".efi"));
        // A signed unified kernel image carries its own command line (Secure Boot images).
        let image = if uki.is_empty() {
            EntryImage::Linux { linux: &linux, initrd: &initrd, options: &files.cmdline }
        } else {
            EntryImage::Uki { efi: &uki }
        };
        let text = systemd_boot_entry(slot, &files.title, version, &image);
        // Any stale entry for the slot goes first; the new one appears by rename, complete.
        self.disarm(slot)?;
        // Files of an older layout in the slot's directories (a kernel and initrd when the
        // new release boots a signed UKI, or the reverse) would only fill the ESP.
        let keep: Vec<PathBuf> = files.files.iter().map(|(_, d)| self.esp.join(d.trim_start_matches('/'))).collect();
        let mut dirs: Vec<&Path> = keep.iter().filter_map(|p| p.parent()).collect();
        dirs.dedup();
        for dir in dirs {
            for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
                let p = e.path();
                if p.is_file() && !keep.contains(&p) {
                    std::fs::remove_file(&p).map_err(io(&p))?;
                }
            }
        }
        let dest = self.entries_dir().join(format!("{}+{tries}.conf", slot.entry_id()));
        crate::fsutil::atomic_write(&dest, text.as_bytes(), 0o644).map_err(io(&dest))?;
        self.sync()
    }

    fn mark_good(&self, slot: Slot) -> Result<(), BootError> {
        // Never bless an entry other than the one that booted (a stale LoaderBootCountPath
        // from a failed try would otherwise bless the failed slot).
        if let (Some(count), Some(selected)) = (self.efivar("LoaderBootCountPath"), self.efivar("LoaderEntrySelected"))
        {
            let id = |s: &str| {
                s.rsplit(['\\', '/'])
                    .next()
                    .unwrap_or(s)
                    .trim_end_matches(".conf")
                    .split('+')
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            if id(&count) != id(&selected) {
                return Err(BootError::State(format!(
                    "LoaderBootCountPath ({count}) is not the booted entry ({selected}): not blessing"
                )));
            }
        }
        let entries = self.entries()?;
        let Some(e) = entries.iter().find(|e| e.slot == slot) else {
            return Err(BootError::State(format!("slot {slot} has no boot entry to bless")));
        };
        if e.tries_left.is_none() {
            return Ok(());
        }
        let from = self.entries_dir().join(&e.file);
        let to = self.entries_dir().join(format!("{}.conf", slot.entry_id()));
        std::fs::rename(&from, &to).map_err(io(&from))?;
        self.sync()
    }

    fn set_default(&self, slot: Slot) -> Result<(), BootError> {
        let entries = self.entries()?;
        let e = entries.iter().find(|e| e.slot == slot && e.tries_left.is_none()).ok_or_else(|| {
            BootError::State(format!("slot {slot} has no committed (good) entry; it cannot become the default"))
        })?;
        let version = entries.iter().map(|e| e.version).max().unwrap_or(0) + 1;
        let path = self.entries_dir().join(&e.file);
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let new: String = text
            .lines()
            .map(|l| if l.starts_with("version") { format!("version    {version}\n") } else { format!("{l}\n") })
            .collect();
        crate::fsutil::atomic_write(&path, new.as_bytes(), 0o644).map_err(io(&path))?;
        self.sync()
    }

    fn status(&self) -> Result<Vec<SlotStatus>, BootError> {
        let entries = self.entries()?;
        Ok(Slot::ALL
            .iter()
            .map(|&s| match entries.iter().find(|e| e.slot == s) {
                None => SlotStatus {
                    slot: s,
                    bootable: false,
                    good: false,
                    tries_left: None,
                    detail: "no boot entry".into(),
                },
                Some(e) => SlotStatus {
                    slot: s,
                    bootable: e.tries_left != Some(0),
                    good: e.tries_left.is_none(),
                    tries_left: e.tries_left,
                    detail: format!("{} (version {})", e.file, e.version),
                },
            })
            .collect())
    }
}

/// For tests: what systemd-boot does at boot (pick the entry, count the try down).
pub fn simulate_boot(esp: &Path) -> Option<Slot> {
    let b = SystemdBoot { esp: esp.into(), efivars: PathBuf::new(), cmdline: PathBuf::new() };
    let mut entries = b.entries().ok()?;
    // Entries with tries left or good first, by version (highest first); exhausted last.
    entries.sort_by_key(|e| (e.tries_left == Some(0), std::cmp::Reverse(e.version)));
    let e = entries.first()?;
    if let Some(n) = e.tries_left {
        if n > 0 {
            let done = e
                .file
                .split('+')
                .nth(1)
                .and_then(|c| c.trim_end_matches(".conf").split('-').nth(1))
                .and_then(|d| d.parse::<u32>().ok())
                .unwrap_or(0);
            let new = format!("{}+{}-{}.conf", e.slot.entry_id(), n - 1, done + 1);
            std::fs::rename(b.entries_dir().join(&e.file), b.entries_dir().join(new)).ok()?;
        }
    }
    Some(e.slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, SystemdBoot) {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("efi");
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        std::fs::write(
            esp.join("loader/entries/slot-a.conf"),
            systemd_boot_entry(
                Slot::A,
                "t",
                1,
                &EntryImage::Linux {
                    linux: "/edgeimg/slot-a/linux",
                    initrd: "/edgeimg/slot-a/initrd",
                    options: "edgeimg.slot=a",
                },
            ),
        )
        .unwrap();
        std::fs::write(d.path().join("cmdline"), "ro edgeimg.slot=a\n").unwrap();
        let b = SystemdBoot { esp, efivars: d.path().join("efivars"), cmdline: d.path().join("cmdline") };
        (d, b)
    }

    fn files(d: &Path) -> BootFiles {
        std::fs::write(d.join("linux"), b"kernel").unwrap();
        std::fs::write(d.join("initrd"), b"initrd").unwrap();
        BootFiles {
            cmdline: "ro edgeimg.slot=b".into(),
            files: vec![
                (d.join("linux"), "/edgeimg/slot-b/linux".into()),
                (d.join("initrd"), "/edgeimg/slot-b/initrd".into()),
            ],
            title: "edge 2.0.0".into(),
        }
    }

    #[test]
    fn stage_try_commit() {
        let (d, b) = setup();
        b.stage(Slot::B, &files(d.path()), 1).unwrap();
        assert_eq!(std::fs::read(b.esp.join("edgeimg/slot-b/linux")).unwrap(), b"kernel");
        let st = b.status().unwrap();
        assert_eq!(st[1].tries_left, Some(1));
        assert!(!st[1].good);
        // The firmware boots it (counting the try down) ...
        assert_eq!(simulate_boot(&b.esp), Some(Slot::B));
        std::fs::write(&b.cmdline, "edgeimg.slot=b\n").unwrap();
        assert!(b.is_trial().unwrap());
        // ... and it is committed: it stays the default.
        b.mark_good(Slot::B).unwrap();
        assert!(!b.is_trial().unwrap());
        assert_eq!(simulate_boot(&b.esp), Some(Slot::B));
        assert_eq!(simulate_boot(&b.esp), Some(Slot::B));
    }

    #[test]
    fn a_signed_uki_gets_an_efi_entry_without_options() {
        let (d, b) = setup();
        std::fs::write(d.path().join("uki-b.efi"), b"MZ signed uki").unwrap();
        let files = BootFiles {
            cmdline: "ro roothash=abc edgeimg.slot=b".into(),
            files: vec![(d.path().join("uki-b.efi"), "/edgeimg/slot-b/uki.efi".into())],
            title: "edge 2.0.0".into(),
        };
        // Slot B held an unsigned release before: its kernel and initrd go.
        b.stage(Slot::B, &super::tests::files(d.path()), 1).unwrap();
        assert!(b.esp.join("edgeimg/slot-b/linux").exists());
        b.stage(Slot::B, &files, 1).unwrap();
        assert_eq!(std::fs::read(b.esp.join("edgeimg/slot-b/uki.efi")).unwrap(), b"MZ signed uki");
        assert!(!b.esp.join("edgeimg/slot-b/linux").exists() && !b.esp.join("edgeimg/slot-b/initrd").exists());
        let entry = std::fs::read_to_string(b.esp.join("loader/entries/slot-b+1.conf")).unwrap();
        assert!(entry.contains("\nefi        /edgeimg/slot-b/uki.efi\n"), "{entry}");
        // Under Secure Boot the stub ignores loader options; giving none keeps the signed
        // command line the only one.
        assert!(!entry.contains("options") && !entry.contains("linux "), "{entry}");
        assert_eq!(simulate_boot(&b.esp), Some(Slot::B));
    }

    #[test]
    fn unblessed_slot_falls_back_and_booted_slot_is_protected() {
        let (d, b) = setup();
        assert!(b.disarm(Slot::A).is_err(), "never disarm the running slot");
        assert!(b.stage(Slot::A, &files(d.path()), 1).is_err());
        b.stage(Slot::B, &files(d.path()), 1).unwrap();
        assert_eq!(simulate_boot(&b.esp), Some(Slot::B), "tried once");
        assert_eq!(simulate_boot(&b.esp), Some(Slot::A), "not blessed: back to A");
        assert_eq!(simulate_boot(&b.esp), Some(Slot::A));
        let st = b.status().unwrap();
        assert!(!st[1].bootable);
    }

    #[test]
    fn stale_count_path_is_never_blessed() {
        let (d, b) = setup();
        b.stage(Slot::B, &files(d.path()), 1).unwrap();
        simulate_boot(&b.esp);
        std::fs::create_dir_all(&b.efivars).unwrap();
        let var = |name: &str, v: &str| {
            let mut bytes = vec![7, 0, 0, 0];
            for u in v.encode_utf16() {
                bytes.extend_from_slice(&u.to_le_bytes());
            }
            std::fs::write(b.efivars.join(format!("{name}-{LOADER_GUID}")), bytes).unwrap();
        };
        var("LoaderBootCountPath", "\\loader\\entries\\slot-b+0-1.conf");
        var("LoaderEntrySelected", "slot-a.conf");
        assert!(b.mark_good(Slot::B).is_err());
        var("LoaderEntrySelected", "slot-b.conf");
        b.mark_good(Slot::B).unwrap();
    }

    #[test]
    fn operator_rollback_to_the_good_slot() {
        let (d, b) = setup();
        b.stage(Slot::B, &files(d.path()), 1).unwrap();
        simulate_boot(&b.esp);
        b.mark_good(Slot::B).unwrap();
        b.set_default(Slot::A).unwrap();
        assert_eq!(simulate_boot(&b.esp), Some(Slot::A));
    }
}
