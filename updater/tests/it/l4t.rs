//! NVIDIA Jetson (L4T r36) on a device tree: the ESP is a directory, each slot's APP
//! partition a file, efivarfs a directory of NVIDIA's variables, and `nvbootctrl` and
//! `systemctl` small scripts on PATH that do what the real ones do to that state (arm a
//! boot chain; run L4T's retry-count service). `power_on` plays the firmware as
//! edk2-nvidia's L4TLauncher does (L4TRootfsValidation.c): switch to `BootChainFwNext` if
//! set, give each slot its retry count on a cold boot, count the booted slot's down, and at
//! 0 mark it unbootable and switch to the other chain. The updater binary is the one that
//! ships; the releases carry real FAT images (mkfs.vfat) per slot.

use crate::common;

use std::cell::Cell;
use std::path::{Path, PathBuf};

use common::device::Device;
use common::*;
use edgeimg_proto::l4t::{self, BOOT_CHAIN_FW_NEXT};
use edgeimg_proto::Slot;

const BOARD: &str = "jetson-orin-nano";
const PART: u64 = 8 << 20;
/// RootfsRetryCountMax's default.
const RETRY_MAX: u32 = 3;

struct Jetson {
    dev: Device,
    /// The firmware's boot chain (kept in the BR-BCT: survives power cuts).
    chain: Cell<Slot>,
    /// The scratch register's retry counts (A, B); None after a cold boot.
    counts: Cell<Option<[u32; 2]>>,
    /// PATH with the fake nvbootctrl and systemctl first.
    path: String,
}

fn idx(s: Slot) -> usize {
    match s {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Jetson {
    fn new(e: &Fleet, first: &Path) -> Self {
        let dev = e.device(BOARD, "true");
        let r = dev.root.clone();
        std::fs::create_dir_all(r.join("efi/edgeimg")).unwrap();
        std::fs::write(r.join("efi").join(l4t::COMMITTED_FILE), "a\n").unwrap();
        for s in Slot::ALL {
            std::fs::File::create(part_file(&r, s)).unwrap().set_len(PART).unwrap();
        }
        // As flashed: slot A's APP partition holds the first release's image, APP_b is empty.
        let img = std::fs::read(first.join("payload/boot-a.vfat")).unwrap();
        let mut a = std::fs::read(part_file(&r, Slot::A)).unwrap();
        a[..img.len()].copy_from_slice(&img);
        std::fs::write(part_file(&r, Slot::A), a).unwrap();
        // What NVIDIA's flashing leaves: both slots normal.
        let efivars = r.join("efivars");
        std::fs::create_dir_all(&efivars).unwrap();
        for s in Slot::ALL {
            std::fs::write(
                efivars.join(l4t::efivar_name(&l4t::status_var(s))),
                l4t::efivar_u32(l4t::NV_ATTRIBUTES, l4t::STATUS_NORMAL),
            )
            .unwrap();
        }
        // L4T's unit is installed (the updater starts it after a commit).
        let unit = r.join("etc/systemd/system").join(l4t::RETRY_SERVICE);
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();

        let bin = e.dir.join("l4t-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = |name: &str, body: String| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\necho \"$@\" >> {}/{name}.log\n{body}", r.display())).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // nvbootctrl -t rootfs set-active-boot-slot N: the firmware switches at the next boot.
        script(
            "nvbootctrl",
            format!(
                "[ \"$1 $2 $3\" = \"-t rootfs set-active-boot-slot\" ] || {{ echo \"unexpected: $*\" >&2; exit 2; }}\n\
                 case \"$4\" in 0|1) ;; *) exit 2;; esac\n\
                 printf '\\007\\000\\000\\000\\00'\"$4\"'\\000\\000\\000' > {}/{}\n",
                efivars.display(),
                l4t::efivar_name(BOOT_CHAIN_FW_NEXT)
            ),
        );
        script("systemctl", String::new());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

        let cfg = std::fs::read_to_string(&dev.config).unwrap();
        let cfg = cfg.replace("backend = \"systemd-boot\"", "backend = \"l4t\"").replace(
            "[slots]\n",
            &format!(
                "[slots]\nboot_a = \"{}\"\nboot_b = \"{}\"\n",
                part_file(&r, Slot::A).display(),
                part_file(&r, Slot::B).display()
            ),
        );
        assert!(cfg.contains("\"l4t\"") && cfg.contains("boot_a"), "{cfg}");
        std::fs::write(&dev.config, cfg).unwrap();
        Jetson { dev, chain: Cell::new(Slot::A), counts: Cell::new(None), path }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.dev.run(args, &[("PATH", &self.path)])
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "edgeimg-updater {args:?} failed:\n{text}");
        text
    }

    fn part(&self, s: Slot) -> Vec<u8> {
        std::fs::read(part_file(&self.dev.root, s)).unwrap()
    }

    fn efivar(&self, name: &str) -> Option<u32> {
        l4t::parse_efivar_u32(&std::fs::read(self.dev.root.join("efivars").join(l4t::efivar_name(name))).ok()?)
    }

    fn set_efivar(&self, name: &str, value: Option<u32>) {
        let p = self.dev.root.join("efivars").join(l4t::efivar_name(name));
        match value {
            Some(v) => std::fs::write(p, l4t::efivar_u32(l4t::NV_ATTRIBUTES, v)).unwrap(),
            None => {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn committed(&self) -> String {
        std::fs::read_to_string(self.dev.root.join("efi").join(l4t::COMMITTED_FILE)).unwrap().trim().to_string()
    }

    fn log(&self, tool: &str) -> String {
        std::fs::read_to_string(self.dev.root.join(format!("{tool}.log"))).unwrap_or_default()
    }

    /// Power-up (`cold`) or reset: the firmware and L4TLauncher choose; `reaches_linux`
    /// says whether the chosen slot's kernel gets to userspace (else: a panic or hang, and
    /// the watchdog resets the board). Returns the slot that ran.
    fn power_on(&self, cold: bool, reaches_linux: impl Fn(Slot) -> bool) -> Slot {
        if cold {
            self.counts.set(None);
        }
        for _ in 0..20 {
            // UEFI: a pending chain switch happens first (and the scratch register is cleared).
            if let Some(next) = self.efivar(BOOT_CHAIN_FW_NEXT).and_then(l4t::slot_of_chain) {
                self.set_efivar(BOOT_CHAIN_FW_NEXT, None);
                if next != self.chain.get() {
                    self.chain.set(next);
                    self.counts.set(None);
                }
            }
            let unbootable = |s: Slot| self.efivar(&l4t::status_var(s)) == Some(l4t::STATUS_UNBOOTABLE);
            let mut counts =
                self.counts.get().unwrap_or_else(|| Slot::ALL.map(|s| if unbootable(s) { 0 } else { RETRY_MAX }));
            let cur = self.chain.get();
            if counts[idx(cur)] == 0 {
                // Out of tries: marked unbootable, switch chain, reset.
                self.set_efivar(&l4t::status_var(cur), Some(l4t::STATUS_UNBOOTABLE));
                assert!(counts[idx(cur.other())] > 0, "both slots out of tries: L4T would boot recovery");
                self.set_efivar(BOOT_CHAIN_FW_NEXT, Some(l4t::chain_of(cur.other())));
                self.counts.set(None);
                continue;
            }
            counts[idx(cur)] -= 1;
            self.counts.set(Some(counts));
            // L4TLauncher reads extlinux.conf from the chain's APP partition.
            let b = self.part(cur);
            let fat = b[510..512] == [0x55, 0xaa]
                && (&b[82..87] == b"FAT32" || [&b"FAT16"[..], b"FAT12"].contains(&&b[54..59]));
            if !fat || !reaches_linux(cur) {
                continue; // no kernel, or it died: the watchdog resets (warm)
            }
            let version = self.dev.state()["slots"][cur.letter()]["version"].as_str().unwrap_or("1.0.0").to_string();
            self.dev.set_running(cur, &version, BOARD);
            // L4TLauncher tells Linux the chain it booted (volatile).
            self.set_efivar(l4t::BOOT_CHAIN_OS_CURRENT, Some(l4t::chain_of(cur)));
            // L4T's retry-count service, behind edgeimg's ExecCondition drop-in.
            if self.run(&["committed"]).status.success() {
                self.retry_service_ran();
            }
            return cur;
        }
        panic!("no slot came up in 20 resets");
    }

    /// nv-l4t-bootloader-config.service: the booted slot's count back to the maximum.
    fn retry_service_ran(&self) {
        let mut c = self.counts.get().expect("a boot happened");
        c[idx(self.chain.get())] = RETRY_MAX;
        self.counts.set(Some(c));
    }

    fn health(&self) -> bool {
        let before = self.log("systemctl").lines().count();
        let ok = self.run(&["health"]).status.success();
        if self.log("systemctl").lines().count() > before {
            assert!(self.log("systemctl").ends_with(&format!("start --no-block {}\n", l4t::RETRY_SERVICE)));
            self.retry_service_ran();
        }
        ok
    }
}

fn part_file(root: &Path, s: Slot) -> PathBuf {
    root.join(format!("slots/{}", l4t::app_label(s)))
}

async fn ship(e: &Fleet, version: &str) -> PathBuf {
    let b = crate::tryboot::whole_partition_build(&e.dir, BOARD, version);
    publish_build(&e.repo, &e.keys, &b, 1).await;
    set_channel(&e.repo, &e.keys, BOARD, version, 100, false).await;
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn l4t_stage_try_commit_give_up_and_firmware_fallback() {
    let e = crate::tryboot::empty_fleet().await;
    let b1 = ship(&e, "1.0.0").await;
    let j = Jetson::new(&e, &b1);
    let always = |_: Slot| true;
    assert_eq!(j.power_on(true, always), Slot::A);
    assert!(j.ok(&["run", "--once"]).contains("up to date"));
    let slot_a = j.part(Slot::A);

    // 2.0.0 is staged into APP_b and armed; APP and the record stay.
    let b2 = ship(&e, "2.0.0").await;
    let out = j.ok(&["run", "--once"]);
    assert!(out.contains("staged"), "{out}");
    let want = std::fs::read(b2.join("payload/boot-b.vfat")).unwrap();
    assert_eq!(&j.part(Slot::B)[..want.len()], &want[..], "APP_b holds the release's image");
    assert_eq!(j.part(Slot::A), slot_a, "APP untouched");
    assert_eq!(j.efivar(BOOT_CHAIN_FW_NEXT), Some(1), "chain 1 armed");
    assert!(j.log("nvbootctrl").ends_with("-t rootfs set-active-boot-slot 1\n"), "{}", j.log("nvbootctrl"));
    assert_eq!(j.committed(), "a");

    // The trial: B runs; L4T's count stays held until the health checks pass.
    assert_eq!(j.power_on(true, always), Slot::B);
    let st = j.dev.status();
    assert_eq!(st["trial"], true, "{st}");
    assert_eq!(j.counts.get().unwrap()[1], RETRY_MAX - 1, "retry count held on the trial boot");
    assert!(!j.run(&["committed"]).status.success());
    assert!(j.health());
    assert_eq!(j.committed(), "b");
    assert_eq!(j.counts.get().unwrap()[1], RETRY_MAX, "L4T's service ran after the commit");
    assert!(j.run(&["committed"]).status.success());
    for _ in 0..5 {
        assert_eq!(j.power_on(false, always), Slot::B, "a committed slot survives any number of resets");
    }
    assert_eq!(j.dev.status()["running"]["version"], "2.0.0");

    // 3.0.0 fails its health checks: the updater arms chain 0 (B) again before the reboot.
    let b3 = ship(&e, "3.0.0").await;
    j.dev.set_health("false");
    j.ok(&["run", "--once"]);
    let want = std::fs::read(b3.join("payload/boot-a.vfat")).unwrap();
    assert_eq!(&j.part(Slot::A)[..want.len()], &want[..]);
    assert_eq!(j.efivar(BOOT_CHAIN_FW_NEXT), Some(0));
    assert_eq!(j.power_on(false, always), Slot::A);
    assert!(!j.health(), "health fails");
    assert_eq!(j.efivar(BOOT_CHAIN_FW_NEXT), Some(1), "given up: the committed slot's chain armed again");
    assert_eq!(j.committed(), "b");
    assert_eq!(j.power_on(false, always), Slot::B);
    j.ok(&["run", "--once"]);
    let st = j.dev.status();
    assert_eq!(st["running"]["version"], "2.0.0");
    assert_eq!(st["failed"][0]["version"], "3.0.0", "{st}");

    // 4.0.0 reaches Linux and then hangs before its health checks, every time: L4T's count
    // (held back on trial boots) runs out after 3 boots, the firmware marks slot A
    // unbootable and switches back to B.
    ship(&e, "4.0.0").await;
    j.dev.set_health("true");
    j.ok(&["run", "--once"]);
    assert_eq!(j.power_on(false, always), Slot::A);
    assert_eq!(j.power_on(false, always), Slot::A);
    assert_eq!(j.power_on(false, always), Slot::A);
    assert_eq!(j.power_on(false, always), Slot::B, "out of tries: back on B");
    assert_eq!(j.efivar(&l4t::status_var(Slot::A)), Some(l4t::STATUS_UNBOOTABLE));
    let out = j.ok(&["run", "--once"]);
    let st = j.dev.status();
    assert!(st["failed"].as_array().unwrap().iter().any(|f| f["version"] == "4.0.0"), "{out}\n{st}");
    let a = &st["slots"].as_array().unwrap().iter().find(|s| s["slot"] == "a").unwrap().clone();
    assert!(a["detail"].as_str().unwrap().contains("marked unbootable"), "{st}");

    // 5.0.0 to the slot the firmware gave up on: staging marks it normal again (nothing else
    // would), and its kernel panics once before it comes up: one try spent, not all.
    ship(&e, "5.0.0").await;
    j.ok(&["run", "--once"]);
    assert_eq!(j.efivar(&l4t::status_var(Slot::A)), Some(l4t::STATUS_NORMAL), "status reset before arming");
    let panicked = Cell::new(false);
    let once = |_: Slot| panicked.replace(true);
    assert_eq!(j.power_on(false, once), Slot::A);
    assert!(j.health());
    assert_eq!(j.committed(), "a");
    assert_eq!(j.power_on(true, always), Slot::A);
    assert_eq!(j.dev.status()["running"]["version"], "5.0.0");
}

/// A power cut at each step of staging: what boots next, and what the updater makes of it.
#[tokio::test(flavor = "multi_thread")]
async fn l4t_power_cut_while_staging() {
    let e = crate::tryboot::empty_fleet().await;
    let b1 = ship(&e, "1.0.0").await;
    let j = Jetson::new(&e, &b1);
    let always = |_: Slot| true;
    assert_eq!(j.power_on(true, always), Slot::A);
    let b2 = ship(&e, "2.0.0").await;

    // Cut after the root slot was written and read back, while APP_b was being written (its
    // boot sector, written last, still zero) and before the arming: chain 0 boots, APP_b is
    // no filesystem.
    let o = j.dev.run(&["run", "--once"], &[("PATH", &j.path), ("EDGEIMG_TEST_CRASH_AT", "verified")]);
    assert!(!o.status.success(), "the simulated cut aborts the updater");
    let img = std::fs::read(b2.join("payload/boot-b.vfat")).unwrap();
    let mut b = j.part(Slot::B);
    b[4096..img.len() / 2].copy_from_slice(&img[4096..img.len() / 2]);
    std::fs::write(part_file(&j.dev.root, Slot::B), &b).unwrap();
    assert_eq!(j.efivar(BOOT_CHAIN_FW_NEXT), None);
    assert_eq!(j.power_on(true, always), Slot::A);
    let st = j.dev.status();
    let slot_b = st["slots"].as_array().unwrap().iter().find(|s| s["slot"] == "b").unwrap().clone();
    assert_eq!(slot_b["bootable"], false, "{st}");
    assert!(slot_b["detail"].as_str().unwrap().contains("no FAT"), "{st}");

    // Even armed, a chain whose APP has no filesystem never runs: L4TLauncher finds no
    // extlinux.conf, and after the tries the firmware goes back to chain 0.
    j.set_efivar(BOOT_CHAIN_FW_NEXT, Some(1));
    assert_eq!(j.power_on(false, always), Slot::A);
    assert_eq!(j.efivar(&l4t::status_var(Slot::B)), Some(l4t::STATUS_UNBOOTABLE));

    // The update is installed again, the firmware's mark cleared, and it commits.
    let out = j.ok(&["run", "--once"]);
    assert_eq!(j.dev.state()["state"]["state"], "staged", "{out}");
    assert_eq!(j.efivar(&l4t::status_var(Slot::B)), Some(l4t::STATUS_NORMAL));
    assert_eq!(j.power_on(false, always), Slot::B);
    assert!(j.health());
    assert_eq!(j.committed(), "b");
}
