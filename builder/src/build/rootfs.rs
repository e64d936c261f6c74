//! The Debian trees an image starts from, in two cached layers, each keyed by the hash of
//! everything that goes into it, including the state of the mirror (its InRelease file), so
//! that "same key" really means "same packages":
//!
//! 1. the **base tree** (mmdebstrap): the recipe's packages, edgeimg's, the kernel. It does
//!    not depend on the board beyond its architecture, kernel package, boot backend and apt
//!    sources, so every board of an architecture that builds the same recipe shares it. For arm64 it is
//!    the slow step (minutes under QEMU user emulation).
//! 2. the **board layer**: a copy of the base tree with the board's firmware packages
//!    installed (mmdebstrap's `custom` variant on the existing tree) and an initrd. dracut
//!    is diverted in the base tree, so package scripts never run it.
//!
//! The initrd is the slow part of a layer for arm64 (dracut under emulation: about two
//! minutes). Its own cache entry, keyed by the base tree, holds a **generic initrd** made
//! from the base tree alone, with the modules and firmware it holds. A layer uses that one
//! when it would come out the same: every driver the board names is in it (or built into
//! the kernel), and the board's packages add nothing dracut would take in (a firmware file
//! one of its modules loads, dracut modules, modprobe or udev configuration, a kernel).
//! Otherwise dracut runs again in the layer, with the board's drivers (the decision is in
//! `generic_initrd.rs`). Debian's kernel boards (qemu-arm64, rpi4) share one initrd this
//! way: measured, the two were the same file for file.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::generic_initrd::{generic_initrd_fits, initrd_files, InitrdSpec};
use crate::config::{Board, BootBackend, LoadedRecipe};
use crate::fsutil::sha256_bytes;
use crate::net::{self, NetError};
use crate::progress::{Reporter, ReporterExt};
use crate::tools::{Cmd, ToolError};

/// Bump when the hooks or the package set edgeimg adds change the resulting tree.
const ROOTFS_FORMAT: u32 = 6;
/// Bump when the board layer or the generic initrd is made differently (the base tree stays).
const LAYER_FORMAT: u32 = 1;
/// How many trees of each kind to keep in the cache.
const KEEP: usize = 3;
/// The base tree's /etc/resolv.conf while mmdebstrap works on the board layer.
const RESOLV_ASIDE: &str = "resolv.conf.edgeimg-base";
/// Where the edgeimg dracut module goes in the tree.
const DRACUT_MODDIR: &str = "/usr/lib/dracut/modules.d/90edgeimg";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("Debian mirror {mirror} (suite {suite}) is not usable: {source}. Check `debian.mirror` and `debian.suite` in the recipe, and the network")]
    Mirror { mirror: String, suite: String, source: NetError },
    // `error`, not `source`: the tool's output is in the message already, and a source
    // would print it a second time.
    #[error("mmdebstrap failed; the tree was not cached. {error}{hint}")]
    Mmdebstrap { error: Box<ToolError>, hint: String },
    #[error("the board layer failed; nothing was cached. {error}. {hint}")]
    BoardLayer { hint: String, error: Box<ToolError> },
    #[error("rootfs cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

/// Everything that determines the base tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootfsSpec {
    pub format: u32,
    pub arch: String,
    pub suite: String,
    pub mirror: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub keyring: PathBuf,
    /// The board's extra apt sources (vendor kernels and firmware).
    pub sources: Vec<ExtraSource>,
    /// The edgeimg dracut module: (file name, content).
    pub dracut_module: Vec<(String, String)>,
    /// sha256 of the suite's InRelease file when the key was computed.
    pub release_sha256: String,
    pub epoch: u64,
}

impl RootfsSpec {
    pub fn key(&self) -> String {
        key_of(self)
    }

    /// mmdebstrap's positional arguments: SUITE, TARGET, the mirror, then the extra sources
    /// as one-line sources.list entries, each trusting only its own key (written into `dir`).
    fn positional(&self, target: &Path, dir: &Path) -> Result<Vec<String>, RootfsError> {
        let mut args = vec![self.suite.clone(), target.display().to_string(), self.mirror.clone()];
        for (i, s) in self.sources.iter().enumerate() {
            let key = dir.join(format!("source-{i}.{}", if s.armored { "asc" } else { "gpg" }));
            fs::write(&key, &s.key).map_err(cache_err(&key))?;
            args.push(format!("deb [signed-by={}] {} {} {}", key.display(), s.url, s.suite, s.components.join(" ")));
        }
        Ok(args)
    }

    /// What to check when mmdebstrap fails on a tree with extra sources.
    fn sources_hint(&self) -> String {
        match self.sources.len() {
            0 => String::new(),
            _ => format!(
                ". The board adds apt sources ({}): is each reachable, and is its InRelease signed by the key the board gives?",
                self.sources.iter().map(|s| format!("{} {}", s.url, s.suite)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// An apt source a board adds (identified by its key's sha256; the key itself is not part
/// of the cache key's text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExtraSource {
    pub url: String,
    pub suite: String,
    pub components: Vec<String>,
    pub key_sha256: String,
    #[serde(skip)]
    pub key: Vec<u8>,
    #[serde(skip)]
    pub armored: bool,
}

/// Everything a board adds to a base tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BoardLayerSpec {
    pub format: u32,
    pub base_key: String,
    /// The board's firmware packages (installed with their dependencies).
    pub packages: Vec<String>,
    /// The base tree's components and the board's.
    pub components: Vec<String>,
    pub dracut_conf: String,
}

impl BoardLayerSpec {
    pub fn key(&self) -> String {
        key_of(self)
    }
}

/// Map an I/O error on `path` in the cache's trees to a `RootfsError`.
fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Cache { path, source }
}

/// The host's architecture, as Debian names it.
fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn key_of(spec: &impl Serialize) -> String {
    sha256_bytes(&serde_json::to_vec(spec).unwrap_or_default())[..32].to_string()
}

/// What edgeimg itself needs in every image, on top of the board's and the recipe's.
fn base_packages(board: &Board) -> Vec<&'static str> {
    let mut v = vec![
        "systemd",
        "systemd-sysv",
        "udev",
        "dbus",
        "kmod",
        "dracut",
        "systemd-cryptsetup",
        "dmsetup",
        "e2fsprogs",
        "dosfstools",
        "systemd-repart",
        "systemd-resolved",
        "systemd-timesyncd",
        // dracut compresses the initrd with zstd only if it is installed (else gzip -9:
        // slower to build and to unpack at every boot).
        "zstd",
    ];
    match board.boot.backend {
        BootBackend::SystemdBoot => v.extend(["systemd-boot", "systemd-boot-efi"]),
        // fw_printenv/fw_setenv: the updater reads and writes the boot state with them.
        BootBackend::UBoot => v.push("libubootenv-tool"),
        // The updater rewrites autoboot.txt and writes boot partitions itself.
        BootBackend::Tryboot => {}
        // The board's L4T packages bring nvbootctrl; the updater writes the APP partitions
        // and NVIDIA's UEFI variables itself.
        BootBackend::L4t => {}
    }
    v
}

/// Kernel modules left out of the generic initrd (dracut regexes).
const OMIT_DRIVERS: &str = "btrfs xfs bcachefs ocfs2 gfs2 smb cifs nfs nfsv4 jfs reiserfs f2fs nilfs2 hfs hfsplus ntfs3 \
     lpfc qla2xxx qla4xxx mpt3sas megaraid_sas hpsa aacraid be2iscsi bnx2fc bnx2i qedf qedi fnic csiostor cxgb3i cxgb4i \
     pm80xx pmcraid arcmsr mpi3mr smartpqi mpt3sas snic ibmvfc zfcp";

/// dracut configuration for `board`'s initrd.
pub fn dracut_conf(board: &Board) -> String {
    dracut_conf_with(&board.kernel.initrd_drivers)
}

/// dracut configuration with the drivers every edgeimg image needs and `extra`.
fn dracut_conf_with(extra: &[String]) -> String {
    let mut drivers = vec!["erofs", "dm-verity", "ext4", "vfat", "nls_cp437", "nls_iso8859_1"];
    drivers.extend(extra.iter().map(String::as_str));
    format!(
        "# Written by edgeimg: a generic initrd that can open a dm-verity root.\n\
         hostonly=\"no\"\n\
         add_dracutmodules+=\" systemd-veritysetup edgeimg \"\n\
         add_drivers+=\" {} \"\n\
         omit_dracutmodules+=\" plymouth i18n btrfs lvm mdraid dmraid multipath nfs iscsi nbd fcoe fcoe-uefi cifs brltty bluetooth biosdevname memstrack network network-legacy kernel-network-modules lunmask dasd dasd_mod zfcp zipl hwdb \"\n\
         # Filesystems and SAN/RAID adapters no edge device boots from.\n\
         omit_drivers+=\" {OMIT_DRIVERS} \"\n\
         compress=\"zstd\"\n\
         reproducible=\"yes\"\n",
        drivers.join(" ")
    )
}

/// The edgeimg dracut module (early boot: persistent machine-id).
pub fn dracut_module() -> Vec<(String, String)> {
    [
        ("module-setup.sh", include_str!("initrd/module-setup.sh")),
        ("edgeimg-machine-id.service", include_str!("initrd/edgeimg-machine-id.service")),
        ("edgeimg-machine-id.sh", include_str!("initrd/edgeimg-machine-id.sh")),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect()
}

/// Fetch the suite's InRelease: proves the mirror is reachable and pins its state.
/// Returns (sha256, Date as a unix time).
pub fn probe_mirror(mirror: &str, suite: &str) -> Result<(String, Option<u64>), RootfsError> {
    let url = format!("{}/dists/{suite}/InRelease", mirror.trim_end_matches('/'));
    let rt = net::runtime();
    let body = rt.block_on(net::get_bytes(&net::client(), &url)).map_err(|source| RootfsError::Mirror {
        mirror: mirror.into(),
        suite: suite.into(),
        source,
    })?;
    let text = String::from_utf8_lossy(&body);
    let date = text
        .lines()
        .find_map(|l| l.strip_prefix("Date: "))
        .and_then(parse_release_date)
        .map(|t| t.unix_timestamp().max(0) as u64);
    Ok((sha256_bytes(&body), date))
}

/// Release files say `Sat, 08 Nov 2025 09:31:35 UTC`; RFC 2822 wants a numeric zone.
fn parse_release_date(d: &str) -> Option<time::OffsetDateTime> {
    let d = d.trim().replace(" UTC", " +0000").replace(" GMT", " +0000");
    time::OffsetDateTime::parse(&d, &time::format_description::well_known::Rfc2822).ok()
}

/// The TCG software stack edgeimg-tpm links (ESAPI and the TCTI loader; the device TCTI
/// comes with them). Debian renamed the libraries for 64-bit time after bookworm.
pub fn tpm_packages(suite: &str) -> [&'static str; 2] {
    if suite == "bookworm" {
        ["libtss2-esys-3.0.2-0", "libtss2-tctildr0"]
    } else {
        ["libtss2-esys-3.0.2-0t64", "libtss2-tctildr0t64"]
    }
}

pub fn spec(board: &Board, recipe: &LoadedRecipe, release_sha256: String, epoch: u64) -> RootfsSpec {
    let d = &recipe.recipe.debian;
    let mut packages: BTreeSet<String> = base_packages(board).into_iter().map(String::from).collect();
    packages.extend(board.kernel_packages());
    packages.extend(d.packages.iter().cloned());
    if recipe.recipe.image.timezone != "Etc/UTC" {
        packages.insert("tzdata".into());
    }
    if recipe.recipe.updater.tpm {
        packages.extend(tpm_packages(&d.suite).iter().map(|p| p.to_string()));
    }
    RootfsSpec {
        format: ROOTFS_FORMAT,
        arch: board.arch.debian().into(),
        suite: d.suite.clone(),
        mirror: d.mirror.trim_end_matches('/').into(),
        components: d.components.clone(),
        packages: packages.into_iter().collect(),
        keyring: d.keyring.clone(),
        sources: board
            .apt
            .sources
            .iter()
            .map(|s| ExtraSource {
                url: s.url.trim_end_matches('/').into(),
                suite: s.suite.clone(),
                components: s.components.clone(),
                key_sha256: sha256_bytes(&s.key_bytes),
                key: s.key_bytes.clone(),
                armored: s.key_is_armored(),
            })
            .collect(),
        dracut_module: dracut_module(),
        release_sha256,
        epoch,
    }
}

/// What `board` adds to the base tree `base`.
pub fn board_layer_spec(board: &Board, base: &RootfsSpec) -> BoardLayerSpec {
    let mut components = base.components.clone();
    for c in &board.firmware.components {
        if !components.contains(c) {
            components.push(c.clone());
        }
    }
    let packages: BTreeSet<String> = board.firmware.packages.iter().cloned().collect();
    BoardLayerSpec {
        format: LAYER_FORMAT,
        base_key: base.key(),
        packages: packages.into_iter().collect(),
        components,
        dracut_conf: dracut_conf(board),
    }
}

/// The options both mmdebstrap runs share: keyring, retries, no documentation.
fn mmdebstrap(spec: &RootfsSpec, variant: &str, components: &[String]) -> Cmd {
    Cmd::new("mmdebstrap")
        .arg(format!("--variant={variant}"))
        .arg("--mode=root")
        .arg(format!("--arch={}", spec.arch))
        .arg(format!("--components={}", components.join(",")))
        .arg(format!("--keyring={}", spec.keyring.display()))
        .arg("--aptopt=Acquire::Retries \"3\"")
        // Documentation is not needed on a device; copyright files are kept for licensing.
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .env("SOURCE_DATE_EPOCH", spec.epoch.to_string())
}

/// A tree in the cache, locked against other builds while this one uses it.
pub struct Tree {
    pub path: PathBuf,
    /// Found in the cache (not built now).
    pub cached: bool,
    /// Anything worth saying about how it was made (empty for most).
    pub note: String,
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Return the cached base tree for `spec`, building it first if needed.
pub fn ensure(cache: &Path, spec: &RootfsSpec, no_cache: bool, rep: &dyn Reporter) -> Result<Tree, RootfsError> {
    cached(&cache.join("rootfs"), &spec.key(), spec, no_cache, |tmp, hookdir| {
        let mut module_hooks = vec![format!("--setup-hook=mkdir -p \"$1{DRACUT_MODDIR}\"")];
        for (name, text) in &spec.dracut_module {
            let p = hookdir.join(name);
            fs::write(&p, text).map_err(cache_err(&p))?;
            module_hooks.push(format!("--setup-hook=upload {} {DRACUT_MODDIR}/{name}", p.display()));
        }
        module_hooks.push(format!("--setup-hook=chmod 755 \"$1{DRACUT_MODDIR}\"/*.sh"));
        // Package scripts ask dracut for an initrd more than once (the kernel's postinst, then
        // triggers of later packages); under emulation each run takes minutes. dracut stays
        // diverted in the base tree; the board layer makes the initrd once.
        let quiet_dracut = "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/bin/dracut \
             && printf '#!/bin/sh\\n# edgeimg: the initrd is made once, in the board layer\\nexit 0\\n' >\"$1/usr/bin/dracut\" \
             && chmod 755 \"$1/usr/bin/dracut\"";
        mmdebstrap(spec, "minbase", &spec.components)
            .arg(format!("--include={}", spec.packages.join(",")))
            .args(&module_hooks)
            .arg(quiet_dracut)
            .args(spec.positional(tmp, hookdir)?)
            .run_streaming(|line| rep.output("rootfs", line))
            .map_err(|e| RootfsError::Mmdebstrap { error: Box::new(e), hint: spec.sources_hint() })
    })
}

/// Return the cached board layer `layer` over the base tree `base_tree` (built from
/// `base`), building it first if needed. The tree's `note` says where its initrd came from.
pub fn ensure_board_layer(
    cache: &Path,
    base_tree: &Path,
    base: &RootfsSpec,
    layer: &BoardLayerSpec,
    no_cache: bool,
    rep: &dyn Reporter,
) -> Result<Tree, RootfsError> {
    let mut note = String::new();
    let mut tree = cached(&cache.join("board-layer"), &layer.key(), layer, no_cache, |tmp, hookdir| {
        crate::fsutil::copy_tree(base_tree, tmp).map_err(|e| cache_err(tmp)(std::io::Error::other(e.to_string())))?;
        // The generic initrd, made in this copy before anything is installed in it.
        let generic = InitrdSpec { format: LAYER_FORMAT, base_key: base.key(), dracut_conf: dracut_conf_with(&[]) };
        let initrd = cached(&cache.join("initrd"), &key_of(&generic), &generic, no_cache, |entry, hookdir| {
            let conf = hookdir.join("90-edgeimg.conf");
            fs::write(&conf, &generic.dracut_conf).map_err(cache_err(&conf))?;
            // dpkg-divert --rename left the real dracut at dracut.distrib.
            let customize = make_initrds(base, "dracut.distrib", true);
            LayerRun { base, tree: tmp, hookdir, rep }.run(&base.components, &[], &conf, &customize, |error| {
                RootfsError::BoardLayer {
                    hint: "dracut failed on the base tree alone (the generic initrd): see its output above".into(),
                    error: Box::new(error),
                }
            })?;
            fs::create_dir_all(entry).map_err(cache_err(entry))?;
            for v in kernel_versions(tmp)? {
                for (i, name) in initrd_files(&v).iter().enumerate() {
                    let from = tmp.join("boot").join(if i == 0 { name.clone() } else { format!("edgeimg-{name}") });
                    let to = entry.join(name);
                    fs::copy(&from, &to).map_err(cache_err(&from))?;
                    fs::remove_file(&from).map_err(cache_err(&from))?;
                }
            }
            Ok(())
        })?;
        let conf = hookdir.join("90-edgeimg.conf");
        fs::write(&conf, &layer.dracut_conf).map_err(cache_err(&conf))?;
        let layer_err = |error| RootfsError::BoardLayer {
            hint: format!(
                "A firmware package name wrong? {:?} must exist in {} for {} in the components {:?}{}",
                layer.packages,
                base.suite,
                base.arch,
                layer.components,
                base.sources_hint()
            ),
            error: Box::new(error),
        };
        // Package scripts find dracut diverted (it would run under emulation, for nothing);
        // the diversion goes at the end.
        let undivert = "rm -f \"$1/usr/bin/dracut\" && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/bin/dracut";
        let runs = LayerRun { base, tree: tmp, hookdir, rep };
        runs.run(&layer.components, &layer.packages, &conf, undivert, layer_err)?;
        match generic_initrd_fits(&initrd.path, base_tree, tmp, &layer.dracut_conf, &generic.dracut_conf, rep) {
            Ok(()) => {
                for v in kernel_versions(tmp)? {
                    let [name, ..] = initrd_files(&v);
                    let (from, to) = (initrd.path.join(&name), tmp.join("boot").join(&name));
                    fs::copy(&from, &to).map_err(cache_err(&to))?;
                }
                note = "the base tree's generic initrd".into();
            }
            Err(why) => {
                rep.output("board-layer", &format!("dracut runs for this board: {why}"));
                let customize = make_initrds(base, "dracut", false);
                runs.run(&layer.components, &[], &conf, &customize, layer_err)?;
                note = format!("its own initrd ({why})");
            }
        }
        Ok(())
    })?;
    tree.note = note;
    Ok(tree)
}

/// mmdebstrap runs (`custom` variant) over the existing tree `tree`.
struct LayerRun<'a> {
    base: &'a RootfsSpec,
    tree: &'a Path,
    hookdir: &'a Path,
    rep: &'a dyn Reporter,
}

impl LayerRun<'_> {
    /// Install `packages` (none: no apt at all) from `components`, with `conf` as dracut's
    /// configuration, then run the customize hook `customize`.
    fn run(
        &self,
        components: &[String],
        packages: &[String],
        conf: &Path,
        customize: &str,
        err: impl FnOnce(ToolError) -> RootfsError,
    ) -> Result<(), RootfsError> {
        let (base, tree, hookdir, rep) = (self.base, self.tree, self.hookdir, self.rep);
        // mmdebstrap makes /dev's nodes itself and refuses to find them there.
        let dev = tree.join("dev");
        for e in fs::read_dir(&dev).map_err(cache_err(&dev))?.flatten() {
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(cache_err(&p))?;
        }
        // mmdebstrap keeps apt sources it finds: let it write this run's (more components, the
        // extra sources with keys where this run has them).
        let sources = tree.join("etc/apt/sources.list");
        if sources.exists() {
            fs::remove_file(&sources).map_err(cache_err(&sources))?;
        }
        let parts = tree.join("etc/apt/sources.list.d");
        for e in fs::read_dir(&parts).into_iter().flatten().flatten() {
            // mmdebstrap names its files 0000main.sources, 0001.list, …
            if e.file_name().to_string_lossy().starts_with(|c: char| c.is_ascii_digit()) {
                fs::remove_file(e.path()).map_err(cache_err(&e.path()))?;
            }
        }
        // mmdebstrap copies the host's resolv.conf in for apt; the tree's own (systemd-resolved's
        // symlink to /run) would make that copy fail. Set it aside and put it back at the end.
        let resolv = tree.join("etc/resolv.conf");
        if fs::symlink_metadata(&resolv).is_ok() {
            let aside = tree.join(format!("etc/{RESOLV_ASIDE}"));
            fs::rename(&resolv, &aside).map_err(cache_err(&aside))?;
        }
        let restore_resolv = format!(
            "--customize-hook=if [ -L \"$1/etc/{RESOLV_ASIDE}\" ] || [ -e \"$1/etc/{RESOLV_ASIDE}\" ]; then \
             rm -f \"$1/etc/resolv.conf\" && mv \"$1/etc/{RESOLV_ASIDE}\" \"$1/etc/resolv.conf\"; fi"
        );
        // mmdebstrap's `custom` variant on the existing tree: apt resolves the packages against
        // what the tree has installed and dpkg installs them inside it (with their maintainer
        // scripts, under emulation for a foreign architecture).
        let mut cmd = mmdebstrap(base, "custom", components).arg("--skip=check/empty");
        if packages.is_empty() {
            cmd = cmd.arg("--skip=update").arg("--skip=download");
        } else {
            cmd = cmd.arg(format!("--include={}", packages.join(",")));
        }
        let positional = base.positional(tree, hookdir)?;
        cmd.arg("--setup-hook=mkdir -p \"$1/etc/dracut.conf.d\"")
            .arg(format!("--setup-hook=upload {} /etc/dracut.conf.d/90-edgeimg.conf", conf.display()))
            .arg(restore_resolv)
            .arg(format!("--customize-hook={customize}"))
            .args(positional)
            .run_streaming(|line| rep.output("board-layer", line))
            .map_err(err)
    }
}

/// A customize hook that makes the initrd of every kernel in the tree with `dracut` (the
/// program's name in /usr/bin). With `inventory`, it also lists the initrd's modules and
/// the firmware files they load into /boot/edgeimg-modules-V and /boot/edgeimg-firmware-V.
fn make_initrds(base: &RootfsSpec, dracut: &str, inventory: bool) -> String {
    // For a foreign architecture, dracut writes the archive uncompressed and the host's
    // zstd compresses it with dracut's settings (`zstd -15 -q -T0`), in a quarter of the
    // time it takes under emulation. (No early-microcode archive to keep apart:
    // that is x86, which runs natively.)
    let make = if base.arch == host_debian_arch() {
        format!("chroot \"$1\" {dracut} -q --force /boot/initrd.img-$v $v")
    } else {
        format!(
            "chroot \"$1\" {dracut} -q --force --no-compress /boot/initrd.img-$v.cpio $v \
             && zstd -15 -q -T0 --rm -f \"$1/boot/initrd.img-$v.cpio\" -o \"$1/boot/initrd.img-$v\""
        )
    };
    // lsinitrd lists module files (`…/sdhci-iproc.ko.xz`); modinfo names what they load.
    let list = if inventory {
        " && chroot \"$1\" lsinitrd \"/boot/initrd.img-$v\" | sed -n 's#.*/\\([^/]*\\)\\.ko\\(\\.[a-z]*\\)\\{0,1\\}$#\\1#p' \
         | sort -u >\"$1/boot/edgeimg-modules-$v\" \
         && { chroot \"$1\" modinfo -k \"$v\" -F firmware $(cat \"$1/boot/edgeimg-modules-$v\") 2>/dev/null; true; } \
         | sort -u >\"$1/boot/edgeimg-firmware-$v\""
    } else {
        ""
    };
    format!("for k in \"$1\"/usr/lib/modules/*; do v=${{k##*/}}; {make}{list} || exit 1; done")
}

/// The kernel versions in `tree` (its /usr/lib/modules directories).
pub(super) fn kernel_versions(tree: &Path) -> Result<Vec<String>, RootfsError> {
    let dir = tree.join("usr/lib/modules");
    let mut v: Vec<String> = fs::read_dir(&dir)
        .map_err(cache_err(&dir))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// The cache protocol both layers share: a hit is a tree with its spec file beside it;
/// a miss builds into a temporary directory (given with a scratch directory for hook
/// files) that is renamed into place only when complete, so an interrupted or failed
/// build never leaves a tree that looks finished. Builds that share the cache (a CI runner
/// building several boards at once) lock a key while they build or use its tree: the
/// second waits for the first and then uses its tree, and no build replaces or prunes a
/// tree another is copying from.
fn cached(
    dir: &Path,
    key: &str,
    spec: &impl Serialize,
    no_cache: bool,
    build: impl FnOnce(&Path, &Path) -> Result<(), RootfsError>,
) -> Result<Tree, RootfsError> {
    let tree = dir.join(key);
    let meta = dir.join(format!("{key}.json"));
    fs::create_dir_all(dir).map_err(cache_err(dir))?;
    let lock_path = dir.join(format!("{key}.lock"));
    let lock_file =
        fs::File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(cache_err(&lock_path))?;
    let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| cache_err(&lock_path)(e.into()))?;
    if !no_cache && tree.is_dir() && meta.is_file() {
        // Touch for least-recently-used pruning.
        let _ = fs::File::options().append(true).open(&meta).and_then(|f| f.set_modified(SystemTime::now()));
        return Ok(Tree { path: tree, cached: true, note: String::new(), _lock: lock });
    }
    let tmp = dir.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let hookdir = tempfile::tempdir_in(dir).map_err(cache_err(dir))?;
    if let Err(e) = build(&tmp, hookdir.path()) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = fs::remove_dir_all(&tree);
    fs::rename(&tmp, &tree).map_err(cache_err(&tree))?;
    fs::write(&meta, serde_json::to_vec_pretty(spec).unwrap_or_default()).map_err(cache_err(&meta))?;
    prune(dir, key);
    Ok(Tree { path: tree, cached: false, note: String::new(), _lock: lock })
}

/// Keep the `KEEP` most recently used trees.
fn prune(dir: &Path, keep_key: &str) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<(SystemTime, String)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(".json")?.to_string();
            Some((e.metadata().ok()?.modified().ok()?, key))
        })
        .collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, key) in entries.into_iter().skip(KEEP) {
        if key != keep_key {
            // Skip a tree another build holds the lock of.
            let Ok(f) =
                fs::File::options().create(true).truncate(false).write(true).open(dir.join(format!("{key}.lock")))
            else {
                continue;
            };
            let Ok(_lock) = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) else { continue };
            let _ = fs::remove_dir_all(dir.join(&key));
            let _ = fs::remove_file(dir.join(format!("{key}.json")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(name: &str) -> Board {
        let (_, text) = crate::config::BUILTIN_BOARDS.iter().find(|(n, _)| *n == name).unwrap();
        Board::load(&crate::config::Source::from_text(name, *text)).unwrap()
    }

    #[test]
    fn boards_of_one_architecture_share_the_base_tree_not_the_layer() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let recipe = crate::config::load_recipe(Path::new(&format!("{dir}/../recipes/k3s-edge.toml"))).unwrap();
        let (virt, pi, x86) = (board("qemu-arm64"), board("rpi4"), board("qemu-x86_64"));
        let base = spec(&virt, &recipe, "r".into(), 1);
        assert_eq!(base, spec(&pi, &recipe, "r".into(), 1), "qemu-arm64 and rpi4 differ in their base tree");
        assert_ne!(base.key(), spec(&x86, &recipe, "r".into(), 1).key());
        // The board's firmware is in its layer only, and so are its initrd drivers.
        assert!(!base.packages.iter().any(|p| p == "raspi-firmware"));
        let (lv, lp) = (board_layer_spec(&virt, &base), board_layer_spec(&pi, &base));
        assert!(lv.packages.is_empty());
        assert!(lp.packages.contains(&"raspi-firmware".to_string()));
        assert!(
            lp.components.contains(&"non-free-firmware".to_string()) && lp.components.contains(&"main".to_string())
        );
        assert!(lp.dracut_conf.contains("sdhci_iproc") && !lv.dracut_conf.contains("sdhci_iproc"));
        assert_ne!(lv.key(), lp.key());
        assert_eq!(lv.base_key, base.key());
        // A new mirror state is a new base tree, and so a new layer.
        let newer = spec(&virt, &recipe, "s".into(), 1);
        assert_ne!(board_layer_spec(&virt, &newer).key(), lv.key());
    }

    #[test]
    fn the_drivers_a_board_adds_are_read_back_from_its_dracut_configuration() {
        let pi = super::super::generic_initrd::dracut_drivers(&dracut_conf(&board("rpi4")));
        let generic = super::super::generic_initrd::dracut_drivers(&dracut_conf_with(&[]));
        assert!(generic.contains(&"erofs".to_string()) && !generic.contains(&"sdhci_iproc".to_string()));
        let extra: Vec<_> = pi.iter().filter(|d| !generic.contains(d)).collect();
        assert_eq!(extra.len(), board("rpi4").kernel.initrd_drivers.len(), "{extra:?}");
    }

    #[test]
    fn raspberry_pi_kernel_boards_take_their_kernel_from_raspberry_pis_repository() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let recipe = crate::config::load_recipe(Path::new(&format!("{dir}/../recipes/k3s-edge.toml"))).unwrap();
        for (name, kernel) in [("rpi5", "linux-image-rpi-2712"), ("rpi4-tryboot", "linux-image-rpi-v8")] {
            let s = spec(&board(name), &recipe, "r".into(), 1);
            assert!(s.packages.iter().any(|p| p == kernel), "{name}: {:?}", s.packages);
            assert!(!s.packages.iter().any(|p| p == "linux-image-arm64" || p == "libubootenv-tool"), "{name}");
            let [src] = s.sources.as_slice() else { panic!("{name}: {:?}", s.sources) };
            assert_eq!((src.url.as_str(), src.suite.as_str()), ("http://archive.raspberrypi.com/debian", "trixie"));
        }
        // Their base trees are their own (another kernel), unlike rpi4's.
        assert_ne!(
            spec(&board("rpi5"), &recipe, "r".into(), 1).key(),
            spec(&board("rpi4"), &recipe, "r".into(), 1).key()
        );
    }

    #[test]
    fn jetson_takes_nvidias_kernel_and_tools_from_nvidias_repositories() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let recipe = crate::config::load_recipe(Path::new(&format!("{dir}/../recipes/k3s-edge.toml"))).unwrap();
        let b = board("jetson-orin-nano");
        let s = spec(&b, &recipe, "r".into(), 1);
        assert!(s.packages.iter().any(|x| x == "nvidia-l4t-kernel"), "{:?}", s.packages);
        // nvbootctrl and the retry-count service, in the board layer.
        for p in ["nvidia-l4t-tools", "nvidia-l4t-init"] {
            assert!(b.firmware.packages.iter().any(|x| x == p), "{p}: {:?}", b.firmware.packages);
        }
        assert!(!s.packages.iter().any(|p| p == "linux-image-arm64" || p == "libubootenv-tool"), "{:?}", s.packages);
        let urls: Vec<(&str, &str)> = s.sources.iter().map(|x| (x.url.as_str(), x.suite.as_str())).collect();
        assert_eq!(
            urls,
            [
                ("https://repo.download.nvidia.com/jetson/common", "r36.4"),
                ("https://repo.download.nvidia.com/jetson/t234", "r36.4")
            ]
        );
    }

    #[test]
    fn release_dates_parse() {
        let t = parse_release_date("Sat, 08 Nov 2025 09:31:35 UTC").unwrap();
        assert_eq!(t.unix_timestamp(), 1_762_594_295);
        assert!(parse_release_date("yesterday").is_none());
    }
}
