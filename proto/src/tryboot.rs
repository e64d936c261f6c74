//! Raspberry Pi firmware `tryboot` A/B: the disk layout and the `autoboot.txt` format that
//! the builder writes and the updater rewrites.
//!
//! The firmware reads `autoboot.txt` from partition 1 (a small FAT partition, labelled
//! `esp` like every board's boot partition, mounted at `/efi`). Each slot has a boot
//! partition of its own (firmware, device trees, config.txt, kernel, initrd, cmdline.txt):
//! slot A is partition 2, slot B partition 3. `[all]` names the committed slot's partition;
//! `[tryboot]` the other's, which the firmware boots once when Linux reboots with
//! `reboot "0 tryboot"`. The tryboot flag does not outlive the next reset, so a trial that
//! hangs or panics (watchdog, `panic=5`) comes back on the committed slot by itself.
//!
//! Committing rewrites `autoboot.txt` with the two partitions swapped (a complete new file,
//! fsynced, renamed over the old one: on FAT the rename rewrites one directory entry).

use crate::Slot;

/// The file the firmware reads on partition 1.
pub const AUTOBOOT_FILE: &str = "autoboot.txt";
/// The kernel command line on a slot's boot partition (`cmdline=` in config.txt).
pub const CMDLINE_FILE: &str = "cmdline.txt";
/// The kernel and initrd on a slot's boot partition.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";
/// What a slot's one boot file means: the whole boot partition's filesystem image.
pub const WHOLE_PARTITION: &str = "/";
/// The argument to `reboot(2)` (`systemctl reboot ARG`) that asks for one tryboot.
pub const REBOOT_ARG: &str = "0 tryboot";

/// PARTLABEL of a slot's boot partition.
pub fn boot_label(slot: Slot) -> String {
    format!("boot-{}", slot.letter())
}

/// Partition number of a slot's boot partition (the disk layout puts them right after
/// partition 1).
pub fn partition_of(slot: Slot) -> u32 {
    match slot {
        Slot::A => 2,
        Slot::B => 3,
    }
}

pub fn slot_of(partition: u32) -> Option<Slot> {
    Slot::ALL.into_iter().find(|&s| partition_of(s) == partition)
}

/// `autoboot.txt` with `default` committed and the other slot the tryboot target.
pub fn autoboot(default: Slot) -> String {
    format!(
        "# Written by edgeimg: the committed slot boots; `reboot \"0 tryboot\"` tries the other once.\n\
         [all]\n\
         tryboot_a_b=1\n\
         boot_partition={}\n\
         [tryboot]\n\
         boot_partition={}\n",
        partition_of(default),
        partition_of(default.other())
    )
}

/// The committed slot and the tryboot slot an `autoboot.txt` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoboot {
    pub default: Slot,
    pub tryboot: Slot,
}

/// Parse `autoboot.txt` as the firmware does: `boot_partition=` in `[all]` (or before any
/// section) and in `[tryboot]`; other sections and settings are ignored.
pub fn parse(text: &str) -> Result<Autoboot, String> {
    let mut section = "all".to_string();
    let (mut all, mut try_part, mut ab) = (None, None, false);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: `{line}` is not key=value", i + 1));
        };
        let (k, v) = (k.trim(), v.trim());
        match (section.as_str(), k) {
            ("all", "tryboot_a_b") => ab = v == "1",
            (s @ ("all" | "tryboot"), "boot_partition") => {
                let n: u32 = v.parse().map_err(|_| format!("line {}: boot_partition={v} is not a number", i + 1))?;
                let slot = slot_of(n).ok_or_else(|| {
                    format!("line {}: boot_partition={n} is not a slot's boot partition (2 or 3)", i + 1)
                })?;
                if s == "all" {
                    all = Some(slot);
                } else {
                    try_part = Some(slot);
                }
            }
            _ => {}
        }
    }
    if !ab {
        return Err("no tryboot_a_b=1 in [all]: the firmware would not use the [tryboot] section".into());
    }
    let default = all.ok_or("no boot_partition in [all]")?;
    let tryboot = try_part.ok_or("no boot_partition in [tryboot]")?;
    if default == tryboot {
        return Err(format!("[all] and [tryboot] both boot partition {}", partition_of(default)));
    }
    Ok(Autoboot { default, tryboot })
}

/// What edgeimg adds to a board's config.txt on each slot's boot partition.
pub fn config_txt_tail() -> String {
    format!(
        "\n# Added by edgeimg: this slot's kernel, initrd and command line (on this partition).\n\
         [all]\n\
         kernel={KERNEL_FILE}\n\
         initramfs {INITRD_FILE} followkernel\n\
         cmdline={CMDLINE_FILE}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_parse_back() {
        for s in Slot::ALL {
            assert_eq!(parse(&autoboot(s)).unwrap(), Autoboot { default: s, tryboot: s.other() });
        }
        assert!(autoboot(Slot::A).contains("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"));
    }

    #[test]
    fn parse_as_the_firmware_reads() {
        let t = "tryboot_a_b=1\nboot_partition=3 # B\n[pi4]\nboot_partition=7\n[tryboot]\n boot_partition = 2\n";
        assert_eq!(parse(t).unwrap(), Autoboot { default: Slot::B, tryboot: Slot::A });
        assert!(parse("[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n").unwrap_err().contains("tryboot_a_b"));
        assert!(parse("[all]\ntryboot_a_b=1\nboot_partition=2\n").unwrap_err().contains("[tryboot]"));
        assert!(parse("[all]\ntryboot_a_b=1\nboot_partition=4\n").unwrap_err().contains("2 or 3"));
        assert!(parse("[all]\ntryboot_a_b=1\nboot_partition=x\n").unwrap_err().contains("not a number"));
        assert!(parse("[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n")
            .unwrap_err()
            .contains("both"));
        assert!(parse("tryboot_a_b\n").unwrap_err().contains("key=value"));
    }
}
