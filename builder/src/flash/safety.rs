//! The rules that keep `edgeimg flash` from overwriting the wrong disk, as a pure function
//! of the device facts, and the description shown before asking for confirmation.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::device::DeviceFacts;
use super::events::size;
use crate::gpt::Table;

/// Why a target is refused. Only `NotRemovable` and `Partition` give way to `--force`:
/// writing over a mounted filesystem or the running system is never what anyone wants.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    HoldsSystem { dev: String, mount_point: String, via: String },
    Mounted { dev: String, at: String, via: String },
    Swap { dev: String, via: String },
    InUse { dev: String, holder: String },
    NoMedium { dev: String },
    ReadOnly { dev: String },
    TooSmall { dev: String, image: u64, target: u64 },
    Partition { dev: String, disk: String },
    NotRemovable { dev: String },
}

impl Refusal {
    pub fn overridable(&self) -> bool {
        matches!(self, Refusal::NotRemovable { .. } | Refusal::Partition { .. })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::HoldsSystem { dev, mount_point, via } => {
                write!(f, "{dev} holds the running system ({mount_point} is on {via}): refusing")
            }
            Refusal::Mounted { dev, at, via } => write!(f, "{dev} is mounted at {at} ({via}): unmount it first"),
            Refusal::Swap { dev, via } => write!(f, "{dev} is in use as swap ({via}): swapoff it first"),
            Refusal::InUse { dev, holder } => {
                write!(f, "{dev} is in use by {holder} (device-mapper, LVM or RAID): close or stop it first")
            }
            Refusal::NoMedium { dev } => write!(f, "{dev} has no medium (size 0): insert the card"),
            Refusal::ReadOnly { dev } => {
                write!(f, "{dev} is read-only: is the SD card's lock switch on?")
            }
            Refusal::TooSmall { dev, image, target } => write!(
                f,
                "the image ({}, {image} bytes) is larger than {dev} ({}, {target} bytes): use a bigger card",
                size(*image),
                size(*target)
            ),
            Refusal::Partition { dev, disk } => {
                write!(f, "{dev} is a partition of /dev/{disk}: flash the whole disk, or pass --force if you mean it")
            }
            Refusal::NotRemovable { dev } => {
                write!(f, "{dev} is not removable (an internal disk?): pass --force if you are sure")
            }
        }
    }
}

/// Every rule that `facts` break, in order of severity. `image_size` is None when it is not
/// known before decompressing (a .zst without a block map and without a size in its header).
pub fn check(facts: &DeviceFacts, image_size: Option<u64>, force: bool) -> Vec<Refusal> {
    let dev = facts.dev();
    let mut out = Vec::new();
    for u in &facts.system {
        out.push(Refusal::HoldsSystem { dev: dev.clone(), mount_point: u.what.clone(), via: u.via.clone() });
    }
    for u in &facts.mounts {
        out.push(Refusal::Mounted { dev: dev.clone(), at: u.what.clone(), via: u.via.clone() });
    }
    // Swap counts as the running system; a swap use is only listed once.
    for u in facts.swaps.iter().filter(|u| !facts.system.iter().any(|s| s.what == "swap" && s.via == u.via)) {
        out.push(Refusal::Swap { dev: dev.clone(), via: u.via.clone() });
    }
    if facts.mounts.is_empty() && facts.swaps.is_empty() {
        if let Some(h) = facts.holders.first() {
            out.push(Refusal::InUse { dev: dev.clone(), holder: h.clone() });
        }
    }
    if facts.size == 0 {
        out.push(Refusal::NoMedium { dev: dev.clone() });
    } else if let Some(image) = image_size.filter(|&i| i > facts.size) {
        out.push(Refusal::TooSmall { dev: dev.clone(), image, target: facts.size });
    }
    if facts.read_only {
        out.push(Refusal::ReadOnly { dev: dev.clone() });
    }
    if let Some(disk) = &facts.partition_of {
        out.push(Refusal::Partition { dev: dev.clone(), disk: disk.clone() });
    }
    if !facts.is_removable() {
        out.push(Refusal::NotRemovable { dev });
    }
    if force {
        out.retain(|r| !r.overridable());
    }
    out
}

/// What is on a disk or image now, in one line: its partition table and partitions.
pub fn contents(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return "unknown (cannot be read)".into();
    };
    if let Ok(t) = Table::read_from(&mut f) {
        if t.partitions.is_empty() {
            return "GPT with no partitions".into();
        }
        let parts: Vec<String> = t
            .partitions
            .iter()
            .map(|p| {
                let label = if p.label.is_empty() { "(no label)" } else { p.label.as_str() };
                format!("{label} {}", size(p.size()))
            })
            .collect();
        return format!("GPT: {}", parts.join(", "));
    }
    let mut mbr = [0u8; 512];
    if f.seek(SeekFrom::Start(0)).is_err() || f.read_exact(&mut mbr).is_err() {
        return "nothing (empty)".into();
    }
    if mbr[510] == 0x55 && mbr[511] == 0xAA {
        let parts: Vec<String> = (0..4)
            .filter_map(|i| {
                let e = &mbr[446 + 16 * i..462 + 16 * i];
                let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
                (e[4] != 0).then(|| format!("type 0x{:02x} {}", e[4], size(sectors * 512)))
            })
            .collect();
        if !parts.is_empty() {
            return format!("MBR: {}", parts.join(", "));
        }
    }
    if mbr.iter().all(|&b| b == 0) {
        "no partition table (starts with zeros)".into()
    } else {
        "no partition table (unknown data)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::device::Use;

    fn usb_stick() -> DeviceFacts {
        DeviceFacts {
            name: "sdb".into(),
            devnum: "8:16".into(),
            size: 8 << 30,
            removable_flag: true,
            read_only: false,
            partition_of: None,
            model: Some("Ultra".into()),
            vendor: Some("SanDisk".into()),
            bus: Some("usb".into()),
            mmc_type: None,
            partitions: vec![],
            holders: vec![],
            mounts: vec![],
            swaps: vec![],
            system: vec![],
        }
    }

    #[test]
    fn a_plain_usb_stick_passes() {
        assert_eq!(check(&usb_stick(), Some(1 << 30), false), vec![]);
    }

    #[test]
    fn force_lifts_only_the_soft_rules() {
        let mut f = usb_stick();
        f.removable_flag = false;
        f.bus = Some("ata".into());
        f.partition_of = Some("sda".into());
        f.mounts.push(Use { what: "/mnt".into(), via: "sdb1".into() });
        let all = check(&f, Some(16 << 30), false);
        assert_eq!(all.len(), 4, "{all:?}");
        let forced = check(&f, Some(16 << 30), true);
        assert!(matches!(forced.as_slice(), [Refusal::Mounted { .. }, Refusal::TooSmall { .. }]), "{forced:?}");
    }

    #[test]
    fn sd_card_in_a_built_in_slot_is_removable_emmc_is_not() {
        let mut f = usb_stick();
        f.removable_flag = false;
        f.bus = Some("mmc".into());
        f.mmc_type = Some("SD".into());
        assert!(f.is_removable());
        f.mmc_type = Some("MMC".into());
        assert!(!f.is_removable());
        assert_eq!(f.label(), "SanDisk Ultra (eMMC, not removable)");
    }
}
