//! Board definitions: what the hardware needs (architecture, boot chain, kernel, disk).
//! Every key is documented with its default in docs/configuration.md.

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name used on the command line and in output paths.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Debian architecture of the root filesystem.
    pub arch: Arch,
    pub boot: Boot,
    #[serde(default)]
    pub kernel: Kernel,
    #[serde(default)]
    pub firmware: Firmware,
    #[serde(default)]
    pub apt: Apt,
    #[serde(default)]
    pub disk: Disk,
}

/// Package repositories the board adds to the recipe's Debian mirror (a vendor's kernel or
/// firmware: Raspberry Pi's, NVIDIA's L4T).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apt {
    #[serde(default)]
    pub sources: Vec<AptSource>,
}

/// One apt repository, trusted only with its own key (`signed-by`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AptSource {
    /// Repository URL (http or https), e.g. `http://archive.raspberrypi.com/debian`.
    pub url: String,
    /// Suite (codename), e.g. `trixie`.
    pub suite: String,
    /// Components; default `["main"]`.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// The OpenPGP public key that signs the repository's InRelease: a file (binary or
    /// ASCII-armored; relative paths are relative to the board file) or the armored key
    /// itself. An absolute path is a keyring installed on the build host (e.g. by the
    /// vendor's keyring package); it need only exist when the board is built.
    pub key: String,
    /// The key as read when the board was loaded (empty: a host keyring not installed).
    #[serde(skip)]
    pub key_bytes: Vec<u8>,
}

const ARMORED_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

impl AptSource {
    /// A key on the build host that is not there: building needs it.
    pub fn missing_host_key(&self) -> Option<&str> {
        self.key_bytes.is_empty().then_some(self.key.as_str())
    }

    /// Is the key ASCII-armored (apt wants such a file to end in `.asc`)?
    pub fn key_is_armored(&self) -> bool {
        self.key_bytes.starts_with(ARMORED_KEY.as_bytes())
    }
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The OCI platform architecture name.
    pub fn oci(self) -> &'static str {
        self.debian()
    }

    /// Discoverable Partitions Specification type GUIDs: (root, root verity).
    pub fn root_type_guids(self) -> (&'static str, &'static str) {
        match self {
            Arch::Amd64 => ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"),
            Arch::Arm64 => ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "DF3300CE-D69F-4C92-978C-9BFB0F38D820"),
        }
    }

    pub fn default_kernel_package(self) -> &'static str {
        match self {
            Arch::Amd64 => "linux-image-amd64",
            Arch::Arm64 => "linux-image-arm64",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// How the device picks a slot and falls back: see docs/configuration.md.
    pub backend: BootBackend,
    /// Seconds the boot menu waits (0 = boot at once; a key press still shows the menu).
    #[serde(default)]
    pub menu_timeout: u32,
    /// Tries a newly installed slot gets before the loader falls back.
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// Files the boot partition gets from the root tree: firmware, the board's loader,
    /// device trees.
    #[serde(default)]
    pub files: Vec<BootFileCopy>,
    /// Files written onto the boot partition as given (e.g. the Raspberry Pi's config.txt):
    /// path on the boot partition → content.
    #[serde(default)]
    pub write: std::collections::BTreeMap<String, String>,
}

/// A file copied from the root tree to the boot partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFileCopy {
    /// Absolute path in the root tree. `*` matches within one path component (e.g. the
    /// kernel version in `/usr/lib/linux-image-*/broadcom/bcm2711-rpi-4-b.dtb`).
    pub from: String,
    /// Absolute path on the boot partition; a path ending in `/` is a directory that takes
    /// every match under its own name.
    pub to: String,
}

/// Paths on the boot partition that edgeimg itself writes: boards may not claim them.
pub const RESERVED_BOOT_PATHS: [&str; 14] = [
    "/edgeimg",
    "/loader",
    "/EFI",
    "/boot.scr",
    "/boot.cmd",
    "/uboot.env",
    "/uboot-redund.env",
    "/autoboot.txt",
    "/cmdline.txt",
    "/vmlinuz",
    "/initrd.img",
    "/boot/extlinux",
    "/boot/Image",
    "/boot/initrd",
];

fn default_tries() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootBackend {
    /// UEFI + systemd-boot with boot counting (x86 NUC, qemu-x86_64).
    SystemdBoot,
    /// U-Boot + edgeimg's boot script: A/B with a try counter kept in two copies of
    /// `uboot.env` on the boot partition, which Linux reaches with `fw_setenv` (qemu-arm64,
    /// Raspberry Pi 4 with Debian's kernel).
    UBoot,
    /// The Raspberry Pi firmware's own A/B (`autoboot.txt` with `tryboot_a_b=1`): each slot
    /// has a boot partition of its own and is tried once after `reboot "0 tryboot"`. Needs
    /// Raspberry Pi's kernel (Debian's cannot ask the firmware for a tryboot).
    Tryboot,
    /// NVIDIA Jetson, JetPack 6 / L4T r36 (UEFI): NVIDIA's L4TLauncher boots the rootfs slot
    /// of the firmware's boot chain, reading extlinux.conf from the slot's `APP` / `APP_b`
    /// partition (a small FAT filesystem per slot); NVIDIA's retry count falls back, the
    /// updater arms a slot with `nvbootctrl` (edgeimg_proto::l4t).
    L4t,
}

impl BootBackend {
    pub fn name(self) -> &'static str {
        match self {
            BootBackend::SystemdBoot => "systemd-boot",
            BootBackend::UBoot => "u-boot",
            BootBackend::Tryboot => "tryboot",
            BootBackend::L4t => "l4t",
        }
    }

    /// Each slot boots from a partition of its own, written whole by an update (the
    /// firmware picks the partition; there is no shared loader configuration).
    pub fn boot_partition_per_slot(self) -> bool {
        self.slot_boot_label(edgeimg_proto::Slot::A).is_some()
    }

    /// GPT name of a slot's own boot partition, where the firmware looks for it: `boot-a`
    /// (tryboot, found by partition number), `APP` / `APP_b` (l4t, found by name).
    pub fn slot_boot_label(self, slot: edgeimg_proto::Slot) -> Option<String> {
        match self {
            BootBackend::Tryboot => Some(edgeimg_proto::tryboot::boot_label(slot)),
            BootBackend::L4t => Some(edgeimg_proto::l4t::app_label(slot).to_string()),
            BootBackend::SystemdBoot | BootBackend::UBoot => None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Kernel packages; empty means the architecture's Debian default.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Kernel console device, e.g. `ttyS0,115200`. A getty runs on it.
    #[serde(default)]
    pub console: Option<String>,
    /// Extra kernel command line arguments for every slot.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Extra drivers the initrd must carry to find the root disk.
    #[serde(default)]
    pub initrd_drivers: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// Firmware and microcode packages the hardware needs.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Archive components those packages come from (added to the recipe's).
    #[serde(default)]
    pub components: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// EFI system partition (holds the loader and each slot's kernel + initrd). With
    /// `boot.backend = "tryboot"` it holds only autoboot.txt; with `"l4t"` only edgeimg's
    /// record of the committed slot.
    #[serde(default = "default_esp")]
    pub esp_mib: u64,
    /// Each slot's own boot partition (firmware, device trees, kernel, initrd): only with
    /// `boot.backend = "tryboot"` or `"l4t"`, which need it.
    #[serde(default)]
    pub boot_mib: u64,
    /// Each root slot (A and B).
    #[serde(default = "default_root")]
    pub root_mib: u64,
    /// Each slot's dm-verity hash partition.
    #[serde(default = "default_verity")]
    pub verity_mib: u64,
    /// Data partition as shipped in the image; it grows to fill the medium on first boot.
    #[serde(default = "default_data")]
    pub data_mib: u64,
    /// Grow the data partition and its filesystem to the end of the medium on first boot.
    #[serde(default = "default_true")]
    pub grow_data: bool,
}

fn default_esp() -> u64 {
    256
}
fn default_root() -> u64 {
    1024
}
fn default_verity() -> u64 {
    16
}
fn default_data() -> u64 {
    256
}
fn default_true() -> bool {
    true
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            esp_mib: default_esp(),
            boot_mib: 0,
            root_mib: default_root(),
            verity_mib: default_verity(),
            data_mib: default_data(),
            grow_data: true,
        }
    }
}

impl Board {
    pub fn load(src: &Source) -> Result<Self, ConfigError> {
        let mut board: Board = src.parse()?;
        board.validate(src)?;
        for (i, s) in board.apt.sources.iter_mut().enumerate() {
            s.key_bytes = read_key(src, &format!("apt.sources[{i}].key"), &s.key)?;
        }
        Ok(board)
    }

    fn validate(&self, src: &Source) -> Result<(), ConfigError> {
        if !is_name(&self.name) {
            return Err(src.error_at("name", "use lowercase letters, digits and '-' (it becomes part of paths)"));
        }
        let d = &self.disk;
        if d.esp_mib < 64 {
            return Err(src.error_at("disk.esp_mib", "the ESP needs at least 64 MiB (two kernels + initrds)"));
        }
        if d.root_mib < 64 {
            return Err(src.error_at("disk.root_mib", "a root slot needs at least 64 MiB"));
        }
        // A SHA-256 dm-verity tree with 4 KiB blocks is ~1/127 of the data plus one block per level.
        let need = d.root_mib.div_ceil(120) + 1;
        if d.verity_mib < need {
            return Err(src.error_at(
                "disk.verity_mib",
                format!(
                    "{} MiB cannot hold the hash tree of a {} MiB root slot; use at least {need}",
                    d.verity_mib, d.root_mib
                ),
            ));
        }
        if d.data_mib < 32 {
            return Err(src.error_at("disk.data_mib", "the data partition needs at least 32 MiB"));
        }
        if self.boot.tries == 0 || self.boot.tries > 9 {
            return Err(src.error_at("boot.tries", "must be between 1 and 9"));
        }
        let per_slot = self.boot.backend.boot_partition_per_slot();
        if self.boot.backend == BootBackend::Tryboot && self.boot.tries != 1 {
            return Err(src.error_at(
                "boot.tries",
                "the firmware tries a slot exactly once with tryboot: set tries = 1 (or leave it out)",
            ));
        }
        if self.boot.backend == BootBackend::L4t && self.boot.tries != 1 {
            return Err(src.error_at(
                "boot.tries",
                "with l4t NVIDIA's firmware counts the tries (RootfsRetryCountMax, a UEFI variable, 3 by default): \
                 leave tries out",
            ));
        }
        if per_slot && self.arch != Arch::Arm64 {
            let whose = match self.boot.backend {
                BootBackend::L4t => "NVIDIA's Jetson firmware",
                _ => "the Raspberry Pi firmware",
            };
            return Err(
                src.error_at("boot.backend", format!("{} is {whose}: use arch = \"arm64\"", self.boot.backend.name()))
            );
        }
        if per_slot && d.boot_mib < 64 {
            return Err(src.error_at(
                "disk.boot_mib",
                format!(
                    "{} gives each slot a boot partition of its own: set boot_mib to at least 64 \
                     (kernel, initrd and the board's boot files; 256 is safe)",
                    self.boot.backend.name()
                ),
            ));
        }
        if !per_slot && d.boot_mib != 0 {
            return Err(src.error_at(
                "disk.boot_mib",
                format!(
                    "only boot.backend = \"tryboot\" or \"l4t\" has a boot partition per slot; with {} the slots \
                     share the ESP (disk.esp_mib): remove boot_mib",
                    self.boot.backend.name()
                ),
            ));
        }
        let boot_path = |key: &str, p: &str| -> Result<(), ConfigError> {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(src.error_at(key, format!("`{p}`: use an absolute path without `..`")));
            }
            if let Some(r) = RESERVED_BOOT_PATHS.iter().find(|r| p == **r || p.starts_with(&format!("{r}/"))) {
                return Err(src.error_at(key, format!("`{p}`: {r} on the boot partition belongs to edgeimg")));
            }
            Ok(())
        };
        for (i, f) in self.boot.files.iter().enumerate() {
            if !f.from.starts_with('/') || f.from.split('/').any(|c| c == "..") {
                return Err(src.error_at(
                    &format!("boot.files[{i}].from"),
                    format!("`{}`: use an absolute path in the root tree, without `..`", f.from),
                ));
            }
            if f.to != "/" {
                boot_path(&format!("boot.files[{i}].to"), f.to.trim_end_matches('/'))?;
            }
        }
        for path in self.boot.write.keys() {
            boot_path(&format!("boot.write.\"{path}\""), path)?;
        }
        for (i, a) in self.apt.sources.iter().enumerate() {
            let key = |k: &str| format!("apt.sources[{i}].{k}");
            if !(a.url.starts_with("http://") || a.url.starts_with("https://")) || a.url.contains(char::is_whitespace) {
                return Err(
                    src.error_at(&key("url"), format!("`{}`: give the repository's http:// or https:// URL", a.url))
                );
            }
            let word = |w: &str| !w.is_empty() && !w.contains(char::is_whitespace) && !w.contains(['[', ']', '#']);
            if !word(&a.suite) {
                return Err(src.error_at(&key("suite"), "give one suite (codename), e.g. \"trixie\""));
            }
            if a.components.is_empty() || !a.components.iter().all(|c| word(c)) {
                return Err(src.error_at(&key("components"), "give the components as words, e.g. [\"main\"]"));
            }
        }
        if let Some(c) = &self.kernel.console {
            if c.contains(char::is_whitespace) || c.starts_with("console=") {
                return Err(src.error_at("kernel.console", "give the device only, e.g. \"ttyS0,115200\""));
            }
        }
        Ok(())
    }

    pub fn kernel_packages(&self) -> Vec<String> {
        if self.kernel.packages.is_empty() {
            vec![self.arch.default_kernel_package().to_string()]
        } else {
            self.kernel.packages.clone()
        }
    }
}

/// An apt source's key: the armored key itself, or a file (relative to the board file).
fn read_key(src: &Source, at: &str, key: &str) -> Result<Vec<u8>, ConfigError> {
    if key.trim_start().starts_with(ARMORED_KEY) {
        return Ok(key.trim_start().as_bytes().to_vec());
    }
    let path = src.path.parent().unwrap_or(std::path::Path::new(".")).join(key);
    if key.starts_with('/') && !path.exists() {
        // A keyring the build host provides; `edgeimg build` says how to get it.
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(&path).map_err(|e| {
        src.error_at(
            at,
            format!(
                "cannot read the key file {}: {e}. Give a path relative to the board file, or paste the \
                 ASCII-armored key itself",
                path.display()
            ),
        )
    })?;
    // An armored key, or a binary OpenPGP packet (the tag byte has its top bit set).
    if !(bytes.starts_with(ARMORED_KEY.as_bytes()) || bytes.first().is_some_and(|b| b & 0x80 != 0)) {
        return Err(
            src.error_at(at, format!("{} is not an OpenPGP public key (binary or ASCII-armored)", path.display()))
        );
    }
    Ok(bytes)
}

/// Names that end up in file names: lowercase ASCII, digits, '-', '_' and '.'.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !s.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"vendor\"\narch = \"arm64\"\n[boot]\nbackend = \"u-boot\"\n";

    fn load(dir: &std::path::Path, extra: &str) -> Result<Board, ConfigError> {
        let path = dir.join("vendor.toml");
        std::fs::write(&path, format!("{BASE}{extra}")).unwrap();
        Board::load(&Source::read(&path)?)
    }

    #[test]
    fn apt_sources_read_their_keys_from_a_file_or_inline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::write(dir.path().join("keys/vendor.gpg"), [0x99, 0x01, 0x0d]).unwrap();
        let b = load(
            dir.path(),
            "[[apt.sources]]\nurl = \"http://repo.example.com/debian\"\nsuite = \"trixie\"\nkey = \"keys/vendor.gpg\"\n\
             [[apt.sources]]\nurl = \"https://l4t.example.com\"\nsuite = \"r36.4\"\ncomponents = [\"common\", \"t234\"]\n\
             key = \"\"\"\n-----BEGIN PGP PUBLIC KEY BLOCK-----\nxyz\n-----END PGP PUBLIC KEY BLOCK-----\n\"\"\"\n",
        )
        .unwrap();
        let (a, b) = (&b.apt.sources[0], &b.apt.sources[1]);
        assert_eq!((a.key_bytes.as_slice(), a.key_is_armored()), (&[0x99, 0x01, 0x0d][..], false));
        assert!(a.missing_host_key().is_none() && b.missing_host_key().is_none());
        assert_eq!(a.components, ["main"]);
        assert!(b.key_is_armored() && b.key_bytes.ends_with(b"-----END PGP PUBLIC KEY BLOCK-----\n"));
    }

    #[test]
    fn a_host_keyring_may_be_missing_until_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let b = load(
            dir.path(),
            "[[apt.sources]]\nurl = \"http://archive.raspberrypi.com/debian\"\nsuite = \"trixie\"\n\
             key = \"/usr/share/keyrings/edgeimg-test-no-such-keyring.gpg\"\n",
        )
        .unwrap();
        assert_eq!(b.apt.sources[0].missing_host_key(), Some("/usr/share/keyrings/edgeimg-test-no-such-keyring.gpg"));
        // A relative path is the board author's file: missing is an error at once.
        let e = load(dir.path(), "[[apt.sources]]\nurl = \"http://x.example\"\nsuite = \"s\"\nkey = \"k.gpg\"\n");
        assert!(e.unwrap_err().to_string().contains("cannot read the key file"));
    }

    #[test]
    fn tryboot_and_l4t_need_a_boot_partition_per_slot_and_one_try() {
        let dir = tempfile::tempdir().unwrap();
        let board = |text: &str| {
            let path = dir.path().join("pi.toml");
            std::fs::write(&path, format!("name = \"pi\"\narch = \"arm64\"\n{text}")).unwrap();
            Board::load(&Source::read(&path).unwrap())
        };
        let ok = board("[boot]\nbackend = \"tryboot\"\n[disk]\nboot_mib = 256\n").unwrap();
        assert_eq!((ok.boot.backend.name(), ok.boot.tries, ok.disk.boot_mib), ("tryboot", 1, 256));
        let ok = board("[boot]\nbackend = \"l4t\"\n[disk]\nboot_mib = 128\n").unwrap();
        assert!(ok.boot.backend.boot_partition_per_slot() && ok.boot.backend.name() == "l4t");
        for (text, key, want) in [
            ("[boot]\nbackend = \"tryboot\"\n", "disk.boot_mib", "at least 64"),
            ("[boot]\nbackend = \"tryboot\"\ntries = 2\n[disk]\nboot_mib = 256\n", "boot.tries", "exactly once"),
            ("[boot]\nbackend = \"u-boot\"\n[disk]\nboot_mib = 256\n", "disk.boot_mib", "remove boot_mib"),
            ("[boot]\nbackend = \"l4t\"\n", "disk.boot_mib", "l4t gives each slot"),
            ("[boot]\nbackend = \"l4t\"\ntries = 3\n[disk]\nboot_mib = 128\n", "boot.tries", "RootfsRetryCountMax"),
            (
                "[boot]\nbackend = \"tryboot\"\n[boot.write]\n\"/cmdline.txt\" = \"x\"\n[disk]\nboot_mib = 256\n",
                "boot.write.\"/cmdline.txt\"",
                "belongs to edgeimg",
            ),
        ] {
            let e = board(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn bad_apt_sources_are_refused_with_the_key_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notakey.txt"), "hello").unwrap();
        let src = |k: &str, v: &str| {
            let mut t = std::collections::BTreeMap::from([
                ("url", "\"http://repo.example.com/debian\""),
                ("suite", "\"trixie\""),
                ("key", "\"missing.asc\""),
            ]);
            t.insert(k, v);
            format!("[[apt.sources]]\n{}", t.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>())
        };
        for (k, v, want) in [
            ("key", "\"missing.asc\"", "cannot read the key file"),
            ("key", "\"notakey.txt\"", "is not an OpenPGP public key"),
            ("url", "\"ftp://repo.example.com\"", "http:// or https://"),
            ("suite", "\"trixie main\"", "one suite"),
            ("components", "[]", "components"),
        ] {
            let e = load(dir.path(), &src(k, v)).unwrap_err();
            assert!(e.to_string().contains(want), "{k} = {v}: {e}");
            assert!(e.to_string().contains(&format!("apt.sources[0].{k}")), "{k} = {v}: {e}");
        }
    }
}
