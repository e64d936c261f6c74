//! Facts about a block device, read from sysfs and procfs under roots that are passed in
//! (so tests run on a fake tree): size, removable, model, partitions, what is mounted from
//! it, and whether it holds the running system.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::error::FlashError;

/// Where the kernel's view of the machine is: `/sys` and `/proc` on a real system.
#[derive(Debug, Clone)]
pub struct World {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Default for World {
    fn default() -> Self {
        World { sys: PathBuf::from("/sys"), proc: PathBuf::from("/proc") }
    }
}

/// Mount points whose backing disks count as "the running system".
pub const SYSTEM_MOUNTS: [&str; 7] = ["/", "/boot", "/boot/efi", "/efi", "/usr", "/var", "/data"];

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the filesystem's device (0:N for btrfs, overlay, tmpfs...).
    pub devnum: String,
    pub mount_point: String,
    pub source: String,
}

/// A use of the device: a mount point (or "swap") and the device node it goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub what: String,
    pub via: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFacts {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Kernel name: `sdb`, `mmcblk0`.
    pub name: String,
    pub devnum: String,
    pub size: u64,
    /// The kernel's `removable` flag (of the whole disk).
    pub removable_flag: bool,
    pub read_only: bool,
    /// For a partition: the disk it is on.
    pub partition_of: Option<String>,
    pub model: Option<String>,
    pub vendor: Option<String>,
    /// `usb`, `mmc`, `nvme`, `ata`, `virtio`, `scsi`... from the sysfs device path.
    pub bus: Option<String>,
    /// For MMC devices: `SD` (a card) or `MMC` (soldered eMMC).
    pub mmc_type: Option<String>,
    pub partitions: Vec<PartitionFacts>,
    /// Device-mapper / RAID devices stacked on this device or its partitions.
    pub holders: Vec<String>,
    pub mounts: Vec<Use>,
    pub swaps: Vec<Use>,
    /// System mount points (/, /boot, ..., swap) whose storage is on this disk.
    pub system: Vec<Use>,
}

impl DeviceFacts {
    /// `/dev/<name>`, for messages.
    pub fn dev(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// Removable media or an external disk: the kernel's flag, anything on USB, or an SD
    /// card in an MMC slot (which the kernel never flags as removable; eMMC is `MMC`).
    pub fn is_removable(&self) -> bool {
        self.removable_flag || self.bus.as_deref() == Some("usb") || self.mmc_type.as_deref() == Some("SD")
    }

    /// "SanDisk Ultra (USB, removable)".
    pub fn label(&self) -> String {
        let name = [self.vendor.as_deref(), self.model.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
        let mut how = Vec::new();
        if let Some(b) = &self.bus {
            how.push(match (b.as_str(), self.mmc_type.as_deref()) {
                ("mmc", Some("SD")) => "SD card".to_string(),
                ("mmc", Some("MMC")) => "eMMC".to_string(),
                (b, _) => b.to_uppercase(),
            });
        }
        how.push(if self.is_removable() { "removable".into() } else { "not removable".into() });
        let name = if name.is_empty() { "unknown model".to_string() } else { name };
        format!("{name} ({})", how.join(", "))
    }
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn read_required(p: &Path) -> Result<String, FlashError> {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|source| FlashError::Sysfs { path: p.to_path_buf(), source })
}

fn read_u64(p: &Path) -> Result<u64, FlashError> {
    let s = read_required(p)?;
    s.parse().map_err(|_| FlashError::Sysfs {
        path: p.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a number: `{s}`")),
    })
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Undo the octal escapes (`\040` for a space) of mountinfo and swaps fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `/proc/self/mountinfo` (proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let source = right.split(' ').nth(1).unwrap_or("");
            Some(Mount { devnum: f.get(2)?.to_string(), mount_point: unescape(f.get(4)?), source: unescape(source) })
        })
        .collect()
}

/// Device paths in `/proc/swaps` (swap files are skipped: their filesystem is a mount).
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(unescape).collect()
}

/// The block devices the kernel knows, by `major:minor` and by device-mapper name.
#[derive(Debug, Default)]
pub struct Index {
    by_devnum: HashMap<String, String>,
    by_dm_name: HashMap<String, String>,
    names: BTreeSet<String>,
}

impl Index {
    pub fn read(world: &World) -> Self {
        let mut idx = Index::default();
        let class = world.sys.join("class/block");
        for name in dir_names(&class) {
            let d = class.join(&name);
            if let Some(dev) = read_trim(&d.join("dev")) {
                idx.by_devnum.insert(dev, name.clone());
            }
            if let Some(dm) = read_trim(&d.join("dm/name")) {
                idx.by_dm_name.insert(dm, name.clone());
            }
            idx.names.insert(name);
        }
        idx
    }

    pub fn by_devnum(&self, devnum: &str) -> Option<&str> {
        self.by_devnum.get(devnum).map(String::as_str)
    }

    /// Kernel name for a device path such as `/dev/sdb1` or `/dev/mapper/root`.
    pub fn by_path(&self, path: &str) -> Option<&str> {
        if let Some(dm) = path.strip_prefix("/dev/mapper/") {
            return self.by_dm_name.get(dm).map(String::as_str);
        }
        let base = path.strip_prefix("/dev/")?;
        self.names.get(base).map(String::as_str)
    }

    /// The kernel name of a mount's device: by number, else by its source path.
    pub fn of_mount(&self, m: &Mount) -> Option<&str> {
        self.by_devnum(&m.devnum).or_else(|| self.by_path(&m.source))
    }
}

fn class_dir(world: &World, name: &str) -> PathBuf {
    world.sys.join("class/block").join(name)
}

/// The whole disk a device belongs to (itself unless it is a partition).
pub fn whole_disk(world: &World, name: &str) -> String {
    let real = fs::canonicalize(class_dir(world, name)).unwrap_or_else(|_| class_dir(world, name));
    if real.join("partition").exists() {
        if let Some(p) = real.parent().and_then(Path::file_name) {
            return p.to_string_lossy().into_owned();
        }
    }
    name.to_string()
}

/// The devices at the bottom of a device-mapper / RAID stack (`slaves/`), or the device itself.
pub fn leaves(world: &World, name: &str) -> Vec<String> {
    fn walk(world: &World, name: &str, depth: u32, out: &mut Vec<String>) {
        let slaves = dir_names(&class_dir(world, name).join("slaves"));
        if slaves.is_empty() || depth > 16 {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        } else {
            for s in slaves {
                walk(world, &s, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(world, name, 0, &mut out);
    out
}

/// Devices stacked on top of `name` (`holders/`), recursively.
fn holders(world: &World, name: &str, out: &mut Vec<String>) {
    for h in dir_names(&class_dir(world, name).join("holders")) {
        if !out.contains(&h) && out.len() < 256 {
            out.push(h.clone());
            holders(world, &h, out);
        }
    }
}

pub fn mounts(world: &World) -> Result<Vec<Mount>, FlashError> {
    let p = world.proc.join("self/mountinfo");
    Ok(parse_mountinfo(&read_required(&p)?))
}

pub fn swaps(world: &World) -> Vec<String> {
    read_trim(&world.proc.join("swaps")).map(|t| parse_swaps(&t)).unwrap_or_default()
}

/// Whole disks that hold the running system: (disk, use). Follows device-mapper stacks
/// (dm-verity, LUKS, LVM) down to the partitions they are built on.
pub fn system_disks(world: &World, idx: &Index, mounts: &[Mount], swaps: &[String]) -> Vec<(String, Use)> {
    let mut out = Vec::new();
    let mut add = |what: &str, name: &str| {
        for leaf in leaves(world, name) {
            let via = if leaf == name { leaf.clone() } else { format!("{leaf} (through {name})") };
            out.push((whole_disk(world, &leaf), Use { what: what.to_string(), via }));
        }
    };
    for m in mounts.iter().filter(|m| SYSTEM_MOUNTS.contains(&m.mount_point.as_str())) {
        if let Some(name) = idx.of_mount(m) {
            add(&m.mount_point, name);
        }
    }
    for s in swaps {
        if let Some(name) = idx.by_path(s) {
            add("swap", name);
        }
    }
    out
}

/// Bus from the sysfs device path (`/sys/devices/pci0000:00/.../usb2/.../block/sdb`).
fn bus_of(real: &Path) -> Option<String> {
    let s = real.to_string_lossy();
    for (needle, bus) in [
        ("/usb", "usb"),
        ("/mmc", "mmc"),
        ("/nvme", "nvme"),
        ("/virtio", "virtio"),
        ("/ata", "ata"),
        ("/firewire", "firewire"),
        ("/devices/virtual/", "virtual"),
        ("/host", "scsi"),
    ] {
        if s.contains(needle) {
            return Some(bus.to_string());
        }
    }
    None
}

/// Everything flashing needs to know about block device `name` (`sdb`, `mmcblk0`).
pub fn probe(world: &World, name: &str) -> Result<DeviceFacts, FlashError> {
    let class = class_dir(world, name);
    if !class.exists() {
        return Err(FlashError::NoSuchDevice { name: name.into(), sysfs: world.sys.clone() });
    }
    let real = fs::canonicalize(&class).map_err(|source| FlashError::Sysfs { path: class.clone(), source })?;
    let partition_of = real
        .join("partition")
        .exists()
        .then(|| real.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()))
        .flatten();
    let disk_dir = if partition_of.is_some() { real.parent().unwrap_or(&real).to_path_buf() } else { real.clone() };
    let size = read_u64(&real.join("size"))? * 512;
    let devnum = read_required(&real.join("dev"))?;
    let dev_dir = disk_dir.join("device");
    let model = read_trim(&dev_dir.join("model")).or_else(|| read_trim(&dev_dir.join("name")));
    let partitions: Vec<PartitionFacts> = dir_names(&real)
        .into_iter()
        .filter(|n| real.join(n).join("partition").exists())
        .map(|n| {
            let size = read_trim(&real.join(&n).join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512;
            PartitionFacts { name: n, size }
        })
        .collect();

    let mut family: Vec<String> =
        std::iter::once(name.to_string()).chain(partitions.iter().map(|p| p.name.clone())).collect();
    let mut held = Vec::new();
    for n in &family {
        holders(world, n, &mut held);
    }
    family.extend(held.iter().cloned());

    let idx = Index::read(world);
    let all_mounts = mounts(world)?;
    let all_swaps = swaps(world);
    let in_family = |n: &str| family.iter().any(|f| f == n);
    let mut mount_uses = Vec::new();
    for m in &all_mounts {
        if let Some(n) = idx.of_mount(m).filter(|n| in_family(n)) {
            let u = Use { what: m.mount_point.clone(), via: n.to_string() };
            if !mount_uses.contains(&u) {
                mount_uses.push(u);
            }
        }
    }
    let swap_uses = all_swaps
        .iter()
        .filter_map(|s| idx.by_path(s).filter(|n| in_family(n)).map(|n| Use { what: "swap".into(), via: n.into() }))
        .collect();
    let disk = partition_of.clone().unwrap_or_else(|| name.to_string());
    let mut system = Vec::new();
    for (d, u) in system_disks(world, &idx, &all_mounts, &all_swaps) {
        if d == disk && !system.contains(&u) {
            system.push(u);
        }
    }

    Ok(DeviceFacts {
        name: name.to_string(),
        devnum,
        size,
        removable_flag: read_trim(&disk_dir.join("removable")).as_deref() == Some("1"),
        read_only: read_trim(&real.join("ro")).as_deref() == Some("1"),
        partition_of,
        model,
        vendor: read_trim(&dev_dir.join("vendor")),
        bus: bus_of(&real),
        mmc_type: read_trim(&dev_dir.join("type")).filter(|_| bus_of(&real).as_deref() == Some("mmc")),
        partitions,
        holders: held,
        mounts: mount_uses,
        swaps: swap_uses,
        system,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = parse_mountinfo(
            "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
             90 22 8:17 / /media/my\\040card rw,nosuid shared:5 - vfat /dev/sdb1 rw\n\
             91 22 0:45 / /home rw - btrfs /dev/mapper/home rw\n",
        );
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[1],
            Mount { devnum: "8:17".into(), mount_point: "/media/my card".into(), source: "/dev/sdb1".into() }
        );
        assert_eq!(m[2].source, "/dev/mapper/home");
    }

    #[test]
    fn swaps_skip_header() {
        let s = parse_swaps(
            "Filename\tType\tSize\tUsed\tPriority\n/dev/sda3  partition 1 0 -2\n/swap\\040file file 1 0 -3\n",
        );
        assert_eq!(s, ["/dev/sda3", "/swap file"]);
    }
}
