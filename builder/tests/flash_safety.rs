//! `edgeimg flash` safety rules, on a fake sysfs/procfs tree: every refusal, what `--force`
//! lifts and what it does not, and that a refused target is not touched.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use edgeimg::flash::device::{self, Index};
use edgeimg::flash::safety::{check, Refusal};
use edgeimg::flash::{FlashError, Plan, Request, TargetInfo, TargetKind, World};

const GIB: u64 = 1 << 30;

/// A fake machine: an internal disk that runs the system (root on dm-verity over sda2+sda3,
/// /boot/efi on sda1, swap on sda4), and a drawer full of other devices.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    fn world(&self) -> World {
        World { sys: self.sys(), proc: self.dir.path().join("proc") }
    }

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{s}\n")).unwrap();
    }

    fn link(&self, real: &Path, name: &str, devnum: &str) {
        for l in [self.sys().join("class/block").join(name), self.sys().join("dev/block").join(devnum)] {
            fs::create_dir_all(l.parent().unwrap()).unwrap();
            symlink(real, l).unwrap();
        }
    }

    fn real(&self, name: &str) -> PathBuf {
        fs::canonicalize(self.sys().join("class/block").join(name)).unwrap()
    }

    /// A whole disk under /sys/devices/<bus_path>/block/<name>.
    fn disk(&self, name: &str, devnum: &str, bus_path: &str, bytes: u64, removable: bool, device: &[(&str, &str)]) {
        let real = self.sys().join("devices").join(bus_path).join("block").join(name);
        Self::write(&real.join("dev"), devnum);
        Self::write(&real.join("size"), &(bytes / 512).to_string());
        Self::write(&real.join("removable"), if removable { "1" } else { "0" });
        Self::write(&real.join("ro"), "0");
        fs::create_dir_all(real.join("holders")).unwrap();
        for (k, v) in device {
            Self::write(&real.join("device").join(k), v);
        }
        self.link(&real, name, devnum);
    }

    fn part(&self, disk: &str, name: &str, devnum: &str, bytes: u64) {
        let real = self.real(disk).join(name);
        Self::write(&real.join("dev"), devnum);
        Self::write(&real.join("size"), &(bytes / 512).to_string());
        Self::write(&real.join("partition"), "1");
        Self::write(&real.join("ro"), "0");
        fs::create_dir_all(real.join("holders")).unwrap();
        self.link(&real, name, devnum);
    }

    /// A device-mapper device stacked on `slaves`.
    fn dm(&self, name: &str, devnum: &str, dm_name: &str, slaves: &[&str]) {
        let real = self.sys().join("devices/virtual/block").join(name);
        Self::write(&real.join("dev"), devnum);
        Self::write(&real.join("size"), "1024");
        Self::write(&real.join("dm/name"), dm_name);
        for s in slaves {
            let sr = self.real(s);
            fs::create_dir_all(real.join("slaves")).unwrap();
            symlink(&sr, real.join("slaves").join(s)).unwrap();
            symlink(&real, sr.join("holders").join(name)).unwrap();
        }
        self.link(&real, name, devnum);
    }

    fn set(&self, name: &str, attr: &str, value: &str) {
        Self::write(&self.real(name).join(attr), value);
    }

    fn new() -> Self {
        let f = Fake { dir: tempfile::tempdir().unwrap() };
        let ata = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";
        f.disk("sda", "8:0", ata, 512 * GIB, false, &[("model", "Samsung SSD 870"), ("vendor", "ATA")]);
        f.part("sda", "sda1", "8:1", 512 << 20);
        f.part("sda", "sda2", "8:2", 2 * GIB);
        f.part("sda", "sda3", "8:3", 32 << 20);
        f.part("sda", "sda4", "8:4", 4 * GIB);
        f.dm("dm-0", "254:0", "root", &["sda2", "sda3"]);

        let usb = |n: u32| format!("pci0000:00/0000:00:14.0/usb2/2-{n}/2-{n}:1.0/host{n}/target{n}:0:0/{n}:0:0:0");
        let stick = [("model", "Ultra"), ("vendor", "SanDisk")];
        f.disk("sdb", "8:16", &usb(1), 32 * GIB, true, &stick);
        f.part("sdb", "sdb1", "8:17", 32 * GIB - (1 << 20));
        f.disk("sdc", "8:32", &usb(2), 8 * GIB, true, &stick);
        f.part("sdc", "sdc1", "8:33", GIB);
        f.disk("sdd", "8:48", "pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0", GIB << 10, false, &[]);
        f.disk("sde", "8:64", &usb(3), 8 * GIB, true, &stick);
        f.set("sde", "ro", "1");
        f.disk("sdf", "8:80", &usb(4), 0, true, &[("model", "Card Reader")]);
        f.disk("sdg", "8:96", &usb(5), 16 * GIB, true, &stick);
        f.part("sdg", "sdg1", "8:97", 16 * GIB - (1 << 20));
        f.dm("dm-1", "254:1", "luks-0f3a", &["sdg1"]);
        f.disk("sdh", "8:112", &usb(6), 16 * GIB, true, &stick);
        f.part("sdh", "sdh1", "8:113", GIB);
        f.part("sdh", "sdh2", "8:114", GIB);
        // A USB SSD that does not call itself removable: external all the same.
        f.disk("sdi", "8:128", &usb(7), 256 * GIB, false, &[("model", "T7"), ("vendor", "Samsung")]);
        f.part("sdi", "sdi1", "8:129", GIB);
        let mmc = |n: u32| format!("platform/fe340000.mmc/mmc_host/mmc{n}/mmc{n}:0001");
        f.disk("mmcblk0", "179:0", &mmc(0), 4 * GIB, false, &[("name", "SD04G"), ("type", "SD")]);
        f.disk("mmcblk1", "179:32", &mmc(1), 32 * GIB, false, &[("name", "BJTD4R"), ("type", "MMC")]);

        Self::write(
            &f.dir.path().join("proc/self/mountinfo"),
            "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro\n\
             23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw\n\
             24 22 8:1 / /boot/efi rw,relatime shared:3 - vfat /dev/sda1 rw\n\
             25 22 0:40 / /data rw,relatime shared:4 - tmpfs tmpfs rw\n\
             90 22 8:17 / /media/x rw,nosuid,nodev shared:5 - vfat /dev/sdb1 rw\n\
             91 22 0:52 / /mnt/weird\\040name rw shared:6 - btrfs /dev/sdc1 rw",
        );
        Self::write(
            &f.dir.path().join("proc/swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
             /dev/sda4                               partition\t4194300\t\t0\t\t-2\n\
             /dev/sdh2                               partition\t1048572\t\t0\t\t-3",
        );
        f
    }

    fn refusals(&self, name: &str, image: u64, force: bool) -> Vec<Refusal> {
        check(&device::probe(&self.world(), name).unwrap(), Some(image), force)
    }

    fn messages(&self, name: &str, image: u64, force: bool) -> Vec<String> {
        self.refusals(name, image, force).iter().map(ToString::to_string).collect()
    }
}

#[test]
fn facts_come_from_sysfs() {
    let f = Fake::new();
    let d = device::probe(&f.world(), "sdc").unwrap();
    assert_eq!(d.size, 8 * GIB);
    assert_eq!(d.devnum, "8:32");
    assert_eq!(d.label(), "SanDisk Ultra (USB, removable)");
    assert_eq!(d.partitions.len(), 1);
    assert_eq!(d.partitions[0].name, "sdc1");
    assert_eq!(Index::read(&f.world()).by_devnum("8:32"), Some("sdc"));
    let e = device::probe(&f.world(), "sdz").unwrap_err();
    assert!(matches!(e, FlashError::NoSuchDevice { .. }), "{e}");
}

#[test]
fn the_disk_of_the_running_system_is_refused_even_with_force() {
    let f = Fake::new();
    let m = f.messages("sda", GIB, true);
    assert!(
        m.contains(&"/dev/sda holds the running system (/ is on sda2 (through dm-0)): refusing".to_string()),
        "{m:?}"
    );
    assert!(m.iter().any(|s| s.contains("(/boot/efi is on sda1)")), "{m:?}");
    assert!(m.iter().any(|s| s.contains("(swap is on sda4)")), "{m:?}");
    // dm-verity's hash partition is part of the root too.
    assert!(m.iter().any(|s| s.contains("sda3 (through dm-0)")), "{m:?}");
}

#[test]
fn a_mounted_card_is_refused_even_with_force() {
    let f = Fake::new();
    assert_eq!(f.messages("sdb", GIB, true), ["/dev/sdb is mounted at /media/x (sdb1): unmount it first"]);
    // btrfs reports an anonymous device number: matched by its source device instead.
    assert_eq!(f.messages("sdc", GIB, false), ["/dev/sdc is mounted at /mnt/weird name (sdc1): unmount it first"]);
}

#[test]
fn swap_and_device_mapper_users_are_refused() {
    let f = Fake::new();
    // Swap is part of the running system, wherever it is.
    assert_eq!(f.messages("sdh", GIB, true), ["/dev/sdh holds the running system (swap is on sdh2): refusing"]);
    let mut facts = device::probe(&f.world(), "sdh").unwrap();
    facts.system.clear();
    let m: Vec<String> = check(&facts, Some(GIB), true).iter().map(ToString::to_string).collect();
    assert_eq!(m, ["/dev/sdh is in use as swap (sdh2): swapoff it first"]);
    let m = f.messages("sdg", GIB, true);
    assert_eq!(m, ["/dev/sdg is in use by dm-1 (device-mapper, LVM or RAID): close or stop it first"]);
}

#[test]
fn an_internal_disk_needs_force() {
    let f = Fake::new();
    assert_eq!(
        f.messages("sdd", GIB, false),
        ["/dev/sdd is not removable (an internal disk?): pass --force if you are sure"]
    );
    assert!(f.refusals("sdd", GIB, true).is_empty());
    // eMMC is soldered on; an SD card in a built-in slot and a USB SSD are not internal.
    assert!(matches!(f.refusals("mmcblk1", GIB, false).as_slice(), [Refusal::NotRemovable { .. }]));
    assert!(f.refusals("mmcblk0", GIB, false).is_empty());
    assert!(f.refusals("sdi", GIB, false).is_empty());
}

#[test]
fn an_image_larger_than_the_card_is_refused_even_with_force() {
    let f = Fake::new();
    let m = f.messages("mmcblk0", 5 * GIB, true);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(m[0].starts_with("the image (5.0 GiB, 5368709120 bytes) is larger than /dev/mmcblk0 (4.0 GiB"), "{m:?}");
    assert!(f.refusals("mmcblk0", 4 * GIB, false).is_empty(), "an image of exactly the card's size fits");
}

#[test]
fn read_only_empty_reader_and_partitions() {
    let f = Fake::new();
    assert_eq!(f.messages("sde", GIB, true), ["/dev/sde is read-only: is the SD card's lock switch on?"]);
    assert_eq!(f.messages("sdf", GIB, true), ["/dev/sdf has no medium (size 0): insert the card"]);
    let m = f.messages("sdi1", GIB, false);
    assert_eq!(m, ["/dev/sdi1 is a partition of /dev/sdi: flash the whole disk, or pass --force if you mean it"]);
    assert!(f.refusals("sdi1", GIB, true).is_empty());
}

/// A zero-filled image of `size` bytes with no block map.
fn image(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.img");
    fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

#[test]
fn a_refused_target_is_not_touched() {
    let f = Fake::new();
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), 4 << 20);
    let stand_in = d.path().join("sdb");
    fs::write(&stand_in, b"the user's photos").unwrap();
    let facts = device::probe(&f.world(), "sdb").unwrap();
    let target =
        TargetInfo { given: stand_in.clone(), path: stand_in.clone(), kind: TargetKind::Block(Box::new(facts)) };
    let req = Request { image: img, target: stand_in.clone(), force: true, ..Default::default() };
    let e = Plan::prepare(&req, target).unwrap_err();
    assert!(matches!(&e, FlashError::Refused(r) if r.len() == 1), "{e}");
    assert_eq!(fs::read(&stand_in).unwrap(), b"the user's photos");
}

#[test]
fn a_clean_usb_stick_passes_and_is_described() {
    let f = Fake::new();
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), 4 << 20);
    let stand_in = d.path().join("sdi");
    fs::write(&stand_in, vec![0u8; 8192]).unwrap();
    let facts = device::probe(&f.world(), "sdi").unwrap();
    let by_id = d.path().join("usb-Samsung_T7");
    let target = TargetInfo { given: by_id, path: stand_in.clone(), kind: TargetKind::Block(Box::new(facts)) };
    let plan = Plan::prepare(&Request { image: img, target: stand_in, ..Default::default() }, target).unwrap();
    assert!(plan.needs_confirmation());
    let text = plan.describe();
    assert!(text.contains("usb-Samsung_T7"), "{text}");
    assert!(text.contains("Samsung T7 (USB, removable)"), "{text}");
    assert!(text.contains("256 GiB (274877906944 bytes)"), "{text}");
    assert!(text.contains("no partition table (starts with zeros)"), "{text}");
    assert!(plan.warnings.iter().any(|w| w.contains("no block map")), "{:?}", plan.warnings);
}

#[test]
fn symlinks_are_resolved_and_regular_files_skip_device_checks() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("card.img");
    fs::write(&real, b"x").unwrap();
    let link = d.path().join("by-id-link");
    symlink(&real, &link).unwrap();
    let world = World { sys: d.path().join("nosys"), proc: d.path().join("noproc") };
    let t = TargetInfo::inspect(&link, &world).unwrap();
    assert_eq!(t.path, fs::canonicalize(&real).unwrap());
    assert_eq!(t.given, link);
    assert!(matches!(t.kind, TargetKind::File { size: Some(1) }));
    let new = TargetInfo::inspect(&d.path().join("new.img"), &world).unwrap();
    assert!(matches!(new.kind, TargetKind::File { size: None }));
    let dir = TargetInfo::inspect(d.path(), &world).unwrap_err().to_string();
    assert!(dir.contains("neither a block device nor a regular file"), "{dir}");
}

#[test]
fn the_image_itself_is_not_a_target() {
    let d = tempfile::tempdir().unwrap();
    let img = image(d.path(), 1 << 20);
    let world = World::default();
    let t = TargetInfo::inspect(&img, &world).unwrap();
    let e = Plan::prepare(&Request { image: img.clone(), target: img, ..Default::default() }, t).unwrap_err();
    assert!(matches!(e, FlashError::TargetIsImage { .. }), "{e}");
}
