//! Recipes: what the OS is (Debian suite, packages, users, files, services, version).
//! Every key is documented with its default in docs/configuration.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::board::is_name;
use super::source::{ConfigError, Source};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub image: Image,
    #[serde(default)]
    pub debian: Debian,
    #[serde(default)]
    pub rootfs: Rootfs,
    #[serde(default, rename = "user")]
    pub users: Vec<User>,
    #[serde(default, rename = "file")]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub services: Services,
    #[serde(default)]
    pub journal: Journal,
    /// The Kubernetes runtime (see config/k3s.rs).
    #[serde(default)]
    pub k3s: Option<super::k3s::K3s>,
    /// Helm charts deployed offline by the runtime (see config/helm.rs).
    #[serde(default, rename = "helm")]
    pub helm: Vec<super::helm::Helm>,
    /// A GitOps agent baked in (see config/gitops.rs).
    #[serde(default)]
    pub gitops: Option<super::gitops::Gitops>,
    /// How devices take updates (see config/updater.rs).
    #[serde(default)]
    pub updater: super::updater::Updater,
    /// Sign the boot chain for UEFI Secure Boot (see config/secure_boot.rs).
    #[serde(default)]
    pub secure_boot: Option<super::secure_boot::SecureBoot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Image name: part of the output path and of os-release `IMAGE_ID`.
    pub name: String,
    /// Release version (semantic versioning); `edgeimg build --version` overrides it.
    pub version: String,
    /// Hostname baked into the image (a provisioning file may override it per device).
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Time zone, as a name under /usr/share/zoneinfo.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Security version: raise it when a release fixes a vulnerability. Devices that have
    /// committed a release never install one with a lower security version.
    #[serde(default)]
    pub security_version: u64,
}

fn default_hostname() -> String {
    "edge".into()
}
fn default_timezone() -> String {
    "Etc/UTC".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_mirror")]
    pub mirror: String,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Extra packages (the board adds its kernel and firmware, edgeimg its boot tooling).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Keyring that signs the mirror's Release file.
    #[serde(default = "default_keyring")]
    pub keyring: PathBuf,
}

fn default_suite() -> String {
    "trixie".into()
}
fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_keyring() -> PathBuf {
    "/usr/share/keyrings/debian-archive-keyring.gpg".into()
}

impl Default for Debian {
    fn default() -> Self {
        Self {
            suite: default_suite(),
            mirror: default_mirror(),
            components: default_components(),
            packages: Vec::new(),
            keyring: default_keyring(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    Lz4hc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// EROFS compression of the root image.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Keep file data block-aligned (`-E noinline_data`) so that small changes touch few
    /// blocks and delta updates stay small. Costs a little space.
    #[serde(default = "default_true")]
    pub delta_friendly: bool,
    /// Directories copied over the root filesystem, relative to the recipe.
    #[serde(default)]
    pub overlays: Vec<PathBuf>,
}

fn default_compression() -> Compression {
    Compression::Lz4
}
fn default_true() -> bool {
    true
}

impl Default for Rootfs {
    fn default() -> Self {
        Self { compression: default_compression(), delta_friendly: true, overlays: Vec::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Numeric uid; default 1000 + the user's position in the recipe.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Supplementary groups (must exist in the image).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "default_shell")]
    pub shell: String,
    /// crypt(3) hash (e.g. from `mkpasswd -m yescrypt`); none means password login is locked.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// OpenSSH public keys allowed to log in as this user.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

fn default_shell() -> String {
    "/bin/bash".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path in the image.
    pub path: String,
    /// Literal content; exactly one of `content` and `source` is given.
    #[serde(default)]
    pub content: Option<String>,
    /// A file relative to the recipe whose bytes are copied.
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Octal mode as a string, e.g. "0644".
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_root_name")]
    pub owner: String,
    #[serde(default = "default_root_name")]
    pub group: String,
}

fn default_mode() -> String {
    "0644".into()
}
fn default_root_name() -> String {
    "root".into()
}

impl FileEntry {
    pub fn mode_bits(&self) -> u32 {
        u32::from_str_radix(&self.mode, 8).unwrap_or(0o644)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Services {
    /// systemd units to enable (their [Install] section is honoured).
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units to disable.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Units to mask (linked to /dev/null).
    #[serde(default)]
    pub mask: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Keep the journal on the data partition across reboots.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// Upper bound of the persistent journal (journald `SystemMaxUse=`).
    #[serde(default = "default_max_use")]
    pub max_use: String,
}

fn default_max_use() -> String {
    "128M".into()
}

impl Default for Journal {
    fn default() -> Self {
        Self { persistent: true, max_use: default_max_use() }
    }
}

/// A recipe together with the directory its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct LoadedRecipe {
    pub recipe: Recipe,
    pub dir: PathBuf,
    pub source: Source,
}

impl Recipe {
    pub fn load(src: &Source) -> Result<LoadedRecipe, ConfigError> {
        let recipe: Recipe = src.parse()?;
        let dir = src.path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        recipe.validate(src, &dir)?;
        Ok(LoadedRecipe { recipe, dir, source: src.clone() })
    }

    fn validate(&self, src: &Source, dir: &Path) -> Result<(), ConfigError> {
        if !is_name(&self.image.name) {
            return Err(src.error_at("image.name", "use lowercase letters, digits, '-', '_' and '.'"));
        }
        validate_version(&self.image.version).map_err(|m| src.error_at("image.version", m))?;
        if !is_hostname(&self.image.hostname) {
            return Err(src.error_at(
                "image.hostname",
                "a hostname is 1-63 letters, digits and '-', not starting or ending with '-'",
            ));
        }
        if self.image.timezone.contains("..") || self.image.timezone.starts_with('/') {
            return Err(src.error_at("image.timezone", "give a zone name such as \"Europe/Berlin\""));
        }
        let d = &self.debian;
        if !d.mirror.starts_with("http://") && !d.mirror.starts_with("https://") && !d.mirror.starts_with("file://") {
            return Err(src.error_at("debian.mirror", "must be an http://, https:// or file:// URL"));
        }
        if d.suite.is_empty() || d.suite.contains(['/', ' ']) {
            return Err(src.error_at("debian.suite", "give a suite or codename such as \"trixie\""));
        }
        for (i, p) in d.packages.iter().enumerate() {
            if !is_package_name(p) {
                return Err(
                    src.error_at(&format!("debian.packages[{i}]"), format!("`{p}` is not a Debian package name"))
                );
            }
        }
        for (i, o) in self.rootfs.overlays.iter().enumerate() {
            if !dir.join(o).is_dir() {
                return Err(src.error_at(
                    &format!("rootfs.overlays[{i}]"),
                    format!("overlay directory {} does not exist", dir.join(o).display()),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = format!("user[{i}]");
            if !is_user_name(&u.name) {
                return Err(src.error_at(
                    &format!("{key}.name"),
                    "use lowercase letters, digits, '-' and '_', starting with a letter",
                ));
            }
            if !names.insert(&u.name) {
                return Err(src.error_at(&format!("{key}.name"), format!("user `{}` is defined twice", u.name)));
            }
            if u.name == "root" && u.uid.is_some_and(|x| x != 0) {
                return Err(src.error_at(&format!("{key}.uid"), "root has uid 0"));
            }
            if let Some(uid) = u.uid {
                if (1..1000).contains(&uid) || uid >= 60000 {
                    return Err(src.error_at(
                        &format!("{key}.uid"),
                        "pick a uid in 1000..59999 (system ranges are taken by packages)",
                    ));
                }
            }
            if let Some(h) = &u.password_hash {
                if !h.starts_with('$') || h.contains(':') || h.contains('\n') {
                    return Err(src.error_at(
                        &format!("{key}.password_hash"),
                        "expected a crypt(3) hash such as the output of `mkpasswd -m yescrypt` (never a plain password)",
                    ));
                }
            }
            for (j, k) in u.ssh_authorized_keys.iter().enumerate() {
                let kind = k.split_whitespace().next().unwrap_or("");
                if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
                    || k.contains('\n')
                {
                    return Err(src.error_at(
                        &format!("{key}.ssh_authorized_keys[{j}]"),
                        "expected one OpenSSH public key line such as \"ssh-ed25519 AAAA... comment\"",
                    ));
                }
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let key = format!("file[{i}]");
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                return Err(src.error_at(&format!("{key}.path"), "must be an absolute path without '..'"));
            }
            match (&f.content, &f.source) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(src.error_at(&key, "give exactly one of `content` and `source`"));
                }
                (None, Some(s)) if !dir.join(s).is_file() => {
                    return Err(
                        src.error_at(&format!("{key}.source"), format!("{} is not a file", dir.join(s).display()))
                    );
                }
                _ => {}
            }
            if f.mode.len() < 3 || u32::from_str_radix(&f.mode, 8).map_or(true, |m| m > 0o7777) {
                return Err(src.error_at(&format!("{key}.mode"), "expected an octal mode string such as \"0644\""));
            }
        }
        for (field, list) in
            [("enable", &self.services.enable), ("disable", &self.services.disable), ("mask", &self.services.mask)]
        {
            for (i, u) in list.iter().enumerate() {
                if !is_unit_name(u) {
                    return Err(src.error_at(
                        &format!("services.{field}[{i}]"),
                        format!("`{u}` is not a systemd unit name (e.g. \"ssh.service\")"),
                    ));
                }
            }
        }
        if parse_size(&self.journal.max_use).is_none() {
            return Err(src.error_at("journal.max_use", "expected a size such as \"128M\" or \"1G\""));
        }
        self.updater.validate(src, dir)?;
        if let Some(sb) = &self.secure_boot {
            sb.validate(src, dir)?;
        }
        if let Some(g) = &self.gitops {
            g.validate(src, self.k3s.is_some())?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, h) in self.helm.iter().enumerate() {
            h.validate(i, src, dir, self.k3s.is_some())?;
            if !names.insert(&h.name) {
                return Err(src.error_at(&format!("helm[{i}].name"), format!("chart `{}` is listed twice", h.name)));
            }
        }
        for (key, url) in [("updater.server", &self.updater.server), ("updater.repository", &self.updater.repository)] {
            if url.as_deref().is_some_and(|u| u.starts_with("https://"))
                && !self.debian.packages.iter().any(|p| p == "ca-certificates")
            {
                return Err(src.error_at(
                    key,
                    "an https:// update server needs the CA certificates on the device: \
                     add \"ca-certificates\" to [debian] packages",
                ));
            }
        }
        if let Some(k) = &self.k3s {
            k.validate(src)?;
            for (i, m) in k.manifests.iter().enumerate() {
                let key = format!("k3s.manifests[{i}]");
                let p = dir.join(m);
                let text =
                    std::fs::read_to_string(&p).map_err(|e| src.error_at(&key, format!("{}: {e}", p.display())))?;
                if !m.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json") {
                    return Err(src.error_at(&key, "K3s applies .yaml, .yml and .json files only"));
                }
                if let Err(e) = yaml_rust2::YamlLoader::load_from_str(&text) {
                    return Err(src.error_at(&key, format!("{} is not valid YAML: {e}", p.display())));
                }
            }
        }
        Ok(())
    }
}

pub fn validate_version(v: &str) -> Result<(), String> {
    semver::Version::parse(v).map(|_| ()).map_err(|e| format!("`{v}` is not a semantic version like 1.4.0 ({e})"))
}

fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-')
}

fn is_user_name(n: &str) -> bool {
    n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn is_package_name(p: &str) -> bool {
    // Debian policy 5.6.1 (plus an optional :arch qualifier).
    let name = p.split(':').next().unwrap_or("");
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

fn is_unit_name(u: &str) -> bool {
    const SUFFIXES: [&str; 8] = [".service", ".socket", ".timer", ".target", ".mount", ".path", ".slice", ".automount"];
    SUFFIXES.iter().any(|s| u.ends_with(s))
        && u.len() < 256
        && u.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
}

/// Parse a journald-style size ("128M", "1G", "4096").
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        c if c.is_ascii_digit() => (s, 1),
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}
