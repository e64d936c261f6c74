//! Raspberry Pi tryboot on a device tree: partition 1 is a directory holding autoboot.txt,
//! each slot's boot partition is a file, the releases carry real FAT images (mkfs.vfat) of
//! a slot's boot partition, and `power_on` plays the firmware: it boots autoboot.txt's
//! `[tryboot]` partition once when the last reboot asked for it and that partition holds a
//! FAT filesystem, else the `[all]` one. The updater binary is the one that ships.

use crate::common;

use std::path::{Path, PathBuf};

use common::device::Device;
use common::*;
use edgeimg_proto::payload::{ArtifactKind, Payload};
use edgeimg_proto::{tryboot, Slot};

const BOARD: &str = "rpi5";
const PART: u64 = 8 << 20;

/// A release whose slots each boot from a FAT image of their whole boot partition, as
/// `edgeimg build` makes for a tryboot or an L4T board.
pub fn whole_partition_build(dir: &Path, board: &str, version: &str) -> PathBuf {
    let fat = |slot: Slot| {
        let img = dir.join(format!("boot-{}-{version}.vfat", slot.letter()));
        std::fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
        let out = std::process::Command::new("mkfs.vfat")
            .args(["-n", "BOOT"])
            .arg(&img)
            .output()
            .expect("this test runs the real mkfs.vfat: apt-get install dosfstools");
        assert!(out.status.success());
        let mut b = std::fs::read(&img).unwrap();
        let note = format!("{version} slot {slot}");
        b[2 << 20..(2 << 20) + note.len()].copy_from_slice(note.as_bytes());
        b
    };
    let root: Vec<u8> = (0..500_000u32).map(|i| (i as u8) ^ version.as_bytes()[0]).collect();
    let files = [
        ("root.img", ArtifactKind::RootImage, root),
        ("root.verity", ArtifactKind::VerityTree, vec![7u8; 8192]),
        ("boot-a.vfat", ArtifactKind::BootFile, fat(Slot::A)),
        ("boot-b.vfat", ArtifactKind::BootFile, fat(Slot::B)),
    ];
    let b = fake_build_files(dir, board, version, 1, &format!("{:0>64}", version.replace('.', "")), false, &files);
    let pj = b.join("payload/payload.json");
    let mut p: Payload = serde_json::from_slice(&std::fs::read(&pj).unwrap()).unwrap();
    for (slot, boot) in p.slots.iter_mut() {
        boot.files = vec![edgeimg_proto::BootFile {
            artifact: format!("{}.vfat", tryboot::boot_label(*slot)),
            path: tryboot::WHOLE_PARTITION.into(),
        }];
    }
    std::fs::write(&pj, serde_json::to_vec_pretty(&p).unwrap()).unwrap();
    b
}

struct Pi {
    dev: Device,
}

impl Pi {
    fn new(e: &Fleet, first: &Path) -> Self {
        let dev = e.device(BOARD, "true");
        let r = &dev.root;
        std::fs::write(r.join("efi").join(tryboot::AUTOBOOT_FILE), tryboot::autoboot(Slot::A)).unwrap();
        for s in Slot::ALL {
            std::fs::File::create(part_file(r, s)).unwrap().set_len(PART).unwrap();
        }
        // As flashed: slot A's boot partition holds the first release's image, B's is empty.
        let img = std::fs::read(first.join("payload/boot-a.vfat")).unwrap();
        let mut a = std::fs::read(part_file(r, Slot::A)).unwrap();
        a[..img.len()].copy_from_slice(&img);
        std::fs::write(part_file(r, Slot::A), a).unwrap();

        let cfg = std::fs::read_to_string(&dev.config).unwrap();
        let cfg = cfg
            .replace("backend = \"systemd-boot\"", "backend = \"tryboot\"")
            .replace(
                "[reboot]\npolicy = \"manual\"\ncommand = [\"true\"]\n",
                &format!(
                    "[reboot]\npolicy = \"manual\"\ncommand = [\"sh\", \"-c\", \"printf '%s' \\\"$0\\\" > {}\"]\n",
                    r.join("reboot-arg").display()
                ),
            )
            .replace(
                "[slots]\n",
                &format!(
                    "[slots]\nboot_a = \"{}\"\nboot_b = \"{}\"\n",
                    part_file(r, Slot::A).display(),
                    part_file(r, Slot::B).display()
                ),
            );
        assert!(cfg.contains("\"tryboot\"") && cfg.contains("boot_a") && cfg.contains("reboot-arg"), "{cfg}");
        std::fs::write(&dev.config, cfg).unwrap();
        Pi { dev }
    }

    fn part(&self, s: Slot) -> Vec<u8> {
        std::fs::read(part_file(&self.dev.root, s)).unwrap()
    }

    fn autoboot(&self) -> tryboot::Autoboot {
        tryboot::parse(&std::fs::read_to_string(self.dev.root.join("efi/autoboot.txt")).unwrap()).unwrap()
    }

    /// What the last reboot passed to reboot(2), and forget it (the flag is one-shot).
    fn take_reboot_arg(&self) -> Option<String> {
        let p = self.dev.root.join("reboot-arg");
        let arg = std::fs::read_to_string(&p).ok();
        let _ = std::fs::remove_file(&p);
        arg
    }

    /// Power-up or reset: the firmware's choice.
    fn power_on(&self, tryboot_flag: bool) -> Slot {
        let a = self.autoboot();
        let fat = |s: Slot| {
            let b = self.part(s);
            b[510..512] == [0x55, 0xaa] && (&b[82..87] == b"FAT32" || &b[54..59] == b"FAT16" || &b[54..59] == b"FAT12")
        };
        // A tryboot of a partition with no filesystem fails; the reset that follows has no flag.
        let slot = if tryboot_flag && fat(a.tryboot) { a.tryboot } else { a.default };
        let version = self.dev.state()["slots"][slot.letter()]["version"].as_str().unwrap_or("1.0.0").to_string();
        self.dev.set_running(slot, &version, BOARD);
        slot
    }

    fn set_policy(&self, policy: &str) {
        let cfg = std::fs::read_to_string(&self.dev.config).unwrap();
        let cfg = cfg.replace("policy = \"manual\"", "policy = \"X\"").replace("policy = \"auto\"", "policy = \"X\"");
        std::fs::write(&self.dev.config, cfg.replace("policy = \"X\"", &format!("policy = \"{policy}\""))).unwrap();
    }
}

fn part_file(root: &Path, s: Slot) -> PathBuf {
    root.join(format!("slots/{}", tryboot::boot_label(s)))
}

/// Keys, an empty repository and its server on 127.0.0.1; the test ships what it needs.
pub async fn empty_fleet() -> Fleet {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = edgeimg_release::Repo::new(d.path().join("repo"));
    std::fs::create_dir_all(&repo.dir).unwrap();
    let server = server::start(repo.dir.clone());
    Fleet { dir: d.path().to_path_buf(), _d: d, keys, repo, server }
}

/// Build, publish and roll out `version` to the whole fleet.
async fn ship(e: &Fleet, version: &str) -> PathBuf {
    let b = whole_partition_build(&e.dir, BOARD, version);
    publish_build(&e.repo, &e.keys, &b, 1).await;
    set_channel(&e.repo, &e.keys, BOARD, version, 100, false).await;
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn tryboot_stage_power_cut_try_commit_and_roll_back() {
    let e = empty_fleet().await;
    let b1 = ship(&e, "1.0.0").await;
    let pi = Pi::new(&e, &b1);
    let slot_a = pi.part(Slot::A);
    assert!(pi.dev.ok(&["run", "--once"]).contains("up to date"));

    // 2.0.0 is staged: only slot B's image is downloaded and written; nothing else changes.
    let b2 = ship(&e, "2.0.0").await;
    let out = pi.dev.ok(&["run", "--once"]);
    assert!(out.contains("staged"), "{out}");
    let want = std::fs::read(b2.join("payload/boot-b.vfat")).unwrap();
    assert_eq!(&pi.part(Slot::B)[..want.len()], &want[..], "slot B's boot partition holds the release's image");
    assert_eq!(pi.part(Slot::A), slot_a, "slot A's boot partition untouched");
    assert_eq!(pi.autoboot(), tryboot::Autoboot { default: Slot::A, tryboot: Slot::B });
    assert!(!pi.dev.root.join("data/edgeimg/updater/staging/boot-a.vfat").exists());

    // Power cut before the reboot (policy manual: nobody rebooted): the firmware boots A,
    // and the update is still staged, not counted as a failed trial.
    assert_eq!(pi.power_on(false), Slot::A);
    let out = pi.dev.ok(&["run", "--once"]);
    assert!(out.contains("did not happen") || pi.dev.state()["state"]["state"] == "staged", "{out}");
    assert_eq!(pi.dev.state()["state"]["state"], "staged");
    assert!(pi.dev.status()["failed"].as_array().is_none_or(|f| f.is_empty()));

    // The updater's reboot asks for one tryboot.
    pi.set_policy("auto");
    pi.dev.ok(&["run", "--once"]);
    assert_eq!(pi.take_reboot_arg().as_deref(), Some("0 tryboot"));
    assert_eq!(pi.power_on(true), Slot::B);
    assert_eq!(pi.dev.status()["trial"], true);
    pi.dev.ok(&["health"]);
    assert_eq!(pi.autoboot(), tryboot::Autoboot { default: Slot::B, tryboot: Slot::A }, "committed");
    let st = pi.dev.status();
    assert_eq!((st["trial"].as_bool(), st["running"]["version"].as_str()), (Some(false), Some("2.0.0")));
    assert_eq!(pi.power_on(false), Slot::B, "B stays");

    // 3.0.0 fails its health check: the trial reboots without the flag, back to B.
    let b3 = ship(&e, "3.0.0").await;
    pi.dev.set_health("false");
    pi.dev.ok(&["run", "--once"]);
    assert_eq!(pi.take_reboot_arg().as_deref(), Some("0 tryboot"));
    let want = std::fs::read(b3.join("payload/boot-a.vfat")).unwrap();
    assert_eq!(&pi.part(Slot::A)[..want.len()], &want[..]);
    assert_eq!(pi.power_on(true), Slot::A);
    assert!(!pi.dev.run(&["health"], &[]).status.success(), "health fails");
    assert_eq!(pi.autoboot().default, Slot::B, "a failed trial never commits");
    assert_eq!(pi.power_on(false), Slot::B);
    pi.dev.ok(&["run", "--once"]);
    let st = pi.dev.status();
    assert_eq!(st["running"]["version"], "2.0.0");
    assert_eq!(st["failed"][0]["version"], "3.0.0", "{st}");

    // 4.0.0's trial panics before userspace: the watchdog reset has no flag, B boots, and
    // the release counts as failed (its reboot had started).
    ship(&e, "4.0.0").await;
    pi.dev.set_health("true");
    pi.dev.ok(&["run", "--once"]);
    assert_eq!(pi.take_reboot_arg().as_deref(), Some("0 tryboot"));
    assert_eq!(pi.power_on(false), Slot::B);
    let out = pi.dev.ok(&["run", "--once"]);
    let st = pi.dev.status();
    assert!(st["failed"].as_array().unwrap().iter().any(|f| f["version"] == "4.0.0"), "{out}\n{st}");
    assert_eq!(pi.autoboot().default, Slot::B);
}
