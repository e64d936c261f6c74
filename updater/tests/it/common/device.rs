//! A device as a directory tree: os-release, /proc files, an ESP with systemd-boot entries,
//! slots as sparse files, the updater's config. `power_on` plays the firmware and the
//! loader: pick the entry systemd-boot would pick, count the try down, and make the
//! "running system" the one in that slot.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgeimg_proto::slot::{systemd_boot_entry, EntryImage};
use edgeimg_proto::Slot;
use sha2::{Digest, Sha256};

pub const SLOT_BYTES: u64 = 4 << 20;

pub struct Device {
    pub root: PathBuf,
    pub config: PathBuf,
    pub boots: std::cell::Cell<u32>,
}

fn write(p: &Path, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

impl Device {
    /// A device running `version` of image `edge` in slot A, for board `board`.
    pub fn new(
        base: &Path,
        repository: &str,
        trusted_root: &Path,
        board: &str,
        version: &str,
        health: &[&[&str]],
    ) -> Self {
        let root = base.join("device");
        write(&root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n");
        write(&root.join("proc/uptime"), "100.00 100.00\n");
        let d = Self { root: root.clone(), config: base.join("updater.toml"), boots: std::cell::Cell::new(0) };
        d.set_running(Slot::A, version, board);
        write(
            &root.join("efi/loader/entries/slot-a.conf"),
            systemd_boot_entry(
                Slot::A,
                "edge",
                1,
                &EntryImage::Linux {
                    linux: "/edgeimg/slot-a/linux",
                    initrd: "/edgeimg/slot-a/initrd",
                    options: "ro edgeimg.slot=a",
                },
            ),
        );
        std::fs::create_dir_all(root.join("slots")).unwrap();
        for name in ["root-a", "root-b", "verity-a", "verity-b"] {
            std::fs::File::create(root.join(format!("slots/{name}"))).unwrap().set_len(SLOT_BYTES).unwrap();
        }
        // Slot A holds the running system: give it content to prove nothing touches it.
        std::fs::write(root.join("slots/root-a"), vec![0xA5u8; SLOT_BYTES as usize]).unwrap();
        let commands: Vec<String> = health
            .iter()
            .map(|c| format!("[{}]", c.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")))
            .collect();
        let cfg = format!(
            "repository = \"{repository}\"\nboard = \"{board}\"\ntrusted_root = \"{}\"\nstate_dir = \"{}\"\ntime = \"system\"\nchannel = \"stable\"\n\
             [boot]\nbackend = \"systemd-boot\"\nboot_dir = \"{}\"\nefivars = \"{}\"\ntries = 1\n\
             [slots]\nroot_a = \"{s}/root-a\"\nroot_b = \"{s}/root-b\"\nverity_a = \"{s}/verity-a\"\nverity_b = \"{s}/verity-b\"\n\
             [reboot]\npolicy = \"manual\"\ncommand = [\"true\"]\n\
             [health]\ndeadline = \"6s\"\nk3s_node_ready = false\ncommands = [{}]\n",
            trusted_root.display(),
            root.join("data/edgeimg/updater").display(),
            root.join("efi").display(),
            root.join("efivars").display(),
            commands.join(", "),
            s = root.join("slots").display(),
        );
        std::fs::write(&d.config, cfg).unwrap();
        d
    }

    pub fn set_running(&self, slot: Slot, version: &str, board: &str) {
        write(
            &self.root.join("usr/lib/os-release"),
            format!("ID=debian\nIMAGE_ID=edge\nIMAGE_VERSION={version}\nEDGEIMG_BOARD={board}\n"),
        );
        write(&self.root.join("proc/cmdline"), format!("ro edgeimg.slot={}\n", slot.letter()));
        self.boots.set(self.boots.get() + 1);
        write(&self.root.join("proc/sys/kernel/random/boot_id"), format!("boot-{}\n", self.boots.get()));
    }

    pub fn set_health(&self, command: &str) {
        let cfg = std::fs::read_to_string(&self.config).unwrap();
        let i = cfg.find("commands = ").unwrap();
        std::fs::write(&self.config, format!("{}commands = [[\"{command}\"]]\n", &cfg[..i])).unwrap();
    }

    /// Run the updater binary on this device.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edgeimg-updater"));
        c.arg("--root").arg(&self.root).arg("--config").arg(&self.config).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.env("RUST_LOG", "info");
        c.output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, &[]);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "edgeimg-updater {args:?} failed:\n{text}");
        text
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(self.root.join("data/edgeimg/updater/state.json")).unwrap_or_else(|_| b"{}".to_vec()),
        )
        .unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--json", "status"])).unwrap()
    }

    /// Power on: systemd-boot picks an entry; the OS of that slot runs.
    pub fn power_on(&self, board: &str) -> Slot {
        let slot =
            edgeimg_updater::boot::systemd_boot::simulate_boot(&self.root.join("efi")).expect("a bootable entry");
        let installed = self.state()["slots"][slot.letter()]["version"].as_str().map(String::from);
        let version = match (slot, installed) {
            (_, Some(v)) => v,
            (Slot::A, None) => self.original_version(),
            (Slot::B, None) => panic!("booted slot B but nothing is recorded in it"),
        };
        self.set_running(slot, &version, board);
        slot
    }

    fn original_version(&self) -> String {
        std::fs::read_to_string(self.root.join("original-version"))
            .unwrap_or_else(|_| "1.0.0".into())
            .trim()
            .to_string()
    }

    pub fn sha(&self, rel: &str, len: u64) -> String {
        let b = std::fs::read(self.root.join(rel)).unwrap();
        hex::encode(Sha256::digest(&b[..len as usize]))
    }

    pub fn slot_a_untouched(&self) -> bool {
        std::fs::read(self.root.join("slots/root-a")).unwrap().iter().all(|&b| b == 0xA5)
    }

    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("efi/loader/entries"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}
