//! The Debian base tree: mmdebstrap, cached by the hash of everything that goes into it,
//! including the state of the mirror (its InRelease file), so that "same key" really means
//! "same packages".

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{Board, BootBackend, LoadedRecipe};
use crate::fsutil::sha256_bytes;
use crate::net::{self, NetError};
use crate::progress::{Reporter, ReporterExt};
use crate::tools::{Cmd, ToolError};

/// Bump when the hooks or the package set edgeimg adds change the resulting tree.
const ROOTFS_FORMAT: u32 = 5;
/// How many base trees to keep in the cache.
const KEEP: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("Debian mirror {mirror} (suite {suite}) is not usable: {source}. Check `debian.mirror` and `debian.suite` in the recipe, and the network")]
    Mirror { mirror: String, suite: String, source: NetError },
    #[error("mmdebstrap failed; the tree was not cached. {0}")]
    Mmdebstrap(ToolError),
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
    pub dracut_conf: String,
    /// The edgeimg dracut module: (file name, content).
    pub dracut_module: Vec<(String, String)>,
    /// sha256 of the suite's InRelease file when the key was computed.
    pub release_sha256: String,
    pub epoch: u64,
}

impl RootfsSpec {
    pub fn key(&self) -> String {
        sha256_bytes(&serde_json::to_vec(self).unwrap_or_default())[..32].to_string()
    }
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
    }
    v
}

/// Kernel modules left out of the generic initrd (dracut regexes).
const OMIT_DRIVERS: &str = "btrfs xfs bcachefs ocfs2 gfs2 smb cifs nfs nfsv4 jfs reiserfs f2fs nilfs2 hfs hfsplus ntfs3 \
     lpfc qla2xxx qla4xxx mpt3sas megaraid_sas hpsa aacraid be2iscsi bnx2fc bnx2i qedf qedi fnic csiostor cxgb3i cxgb4i \
     pm80xx pmcraid arcmsr mpi3mr smartpqi mpt3sas snic ibmvfc zfcp";

/// dracut configuration; it must exist before the kernel package runs dracut.
pub fn dracut_conf(board: &Board) -> String {
    let mut drivers = vec!["erofs", "dm-verity", "ext4", "vfat", "nls_cp437", "nls_iso8859_1"];
    drivers.extend(board.kernel.initrd_drivers.iter().map(String::as_str));
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
    packages.extend(board.firmware.packages.iter().cloned());
    packages.extend(d.packages.iter().cloned());
    if recipe.recipe.image.timezone != "Etc/UTC" {
        packages.insert("tzdata".into());
    }
    if recipe.recipe.updater.tpm {
        packages.extend(tpm_packages(&d.suite).iter().map(|p| p.to_string()));
    }
    let mut components: Vec<String> = d.components.clone();
    for c in &board.firmware.components {
        if !components.contains(c) {
            components.push(c.clone());
        }
    }
    RootfsSpec {
        format: ROOTFS_FORMAT,
        arch: board.arch.debian().into(),
        suite: d.suite.clone(),
        mirror: d.mirror.trim_end_matches('/').into(),
        components,
        packages: packages.into_iter().collect(),
        keyring: d.keyring.clone(),
        dracut_conf: dracut_conf(board),
        dracut_module: dracut_module(),
        release_sha256,
        epoch,
    }
}

/// Return the cached tree for `spec`, building it first if needed.
pub fn ensure(
    cache: &Path,
    spec: &RootfsSpec,
    no_cache: bool,
    rep: &dyn Reporter,
) -> Result<(PathBuf, bool), RootfsError> {
    let dir = cache.join("rootfs");
    let key = spec.key();
    let tree = dir.join(&key);
    let meta = dir.join(format!("{key}.json"));
    let cerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Cache { path, source }
    };
    if !no_cache && tree.is_dir() && meta.is_file() {
        // Touch for least-recently-used pruning.
        let _ = fs::File::options().append(true).open(&meta).and_then(|f| f.set_modified(SystemTime::now()));
        return Ok((tree, true));
    }
    fs::create_dir_all(&dir).map_err(cerr(&dir))?;
    let tmp = dir.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let hookdir = tempfile::tempdir_in(&dir).map_err(cerr(&dir))?;
    let conf = hookdir.path().join("90-edgeimg.conf");
    fs::write(&conf, &spec.dracut_conf).map_err(cerr(&conf))?;
    const MODDIR: &str = "/usr/lib/dracut/modules.d/90edgeimg";
    let mut module_hooks = vec![format!("--setup-hook=mkdir -p \"$1{MODDIR}\"")];
    for (name, text) in &spec.dracut_module {
        let p = hookdir.path().join(name);
        fs::write(&p, text).map_err(cerr(&p))?;
        module_hooks.push(format!("--setup-hook=upload {} {MODDIR}/{name}", p.display()));
    }
    module_hooks.push(format!("--setup-hook=chmod 755 \"$1{MODDIR}\"/*.sh"));
    // Package scripts ask dracut for an initrd more than once (the kernel's postinst, then
    // triggers of later packages); under emulation each run takes minutes. Divert dracut
    // while packages install and make the initrd once, at the end.
    let quiet_dracut = "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/bin/dracut \
         && printf '#!/bin/sh\\n# edgeimg: the initrd is made once, after all packages\\nexit 0\\n' >\"$1/usr/bin/dracut\" \
         && chmod 755 \"$1/usr/bin/dracut\"";
    let one_dracut = "--customize-hook=rm -f \"$1/usr/bin/dracut\" \
         && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/bin/dracut \
         && for k in \"$1\"/usr/lib/modules/*; do v=${k##*/}; chroot \"$1\" dracut -q --force /boot/initrd.img-$v $v || exit 1; done";

    let cmd = Cmd::new("mmdebstrap")
        .arg("--variant=minbase")
        .arg("--mode=root")
        .arg(format!("--arch={}", spec.arch))
        .arg(format!("--components={}", spec.components.join(",")))
        .arg(format!("--include={}", spec.packages.join(",")))
        .arg(format!("--keyring={}", spec.keyring.display()))
        .arg("--aptopt=Acquire::Retries \"3\"")
        // Documentation is not needed on a device; copyright files are kept for licensing.
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .arg("--setup-hook=mkdir -p \"$1/etc/dracut.conf.d\"")
        .arg(format!("--setup-hook=upload {} /etc/dracut.conf.d/90-edgeimg.conf", conf.display()))
        .args(&module_hooks)
        .arg(quiet_dracut)
        .arg(one_dracut)
        .arg(&spec.suite)
        .arg(&tmp)
        .arg(&spec.mirror)
        .env("SOURCE_DATE_EPOCH", spec.epoch.to_string());
    let result = cmd.run_streaming(|line| rep.output("rootfs", line));
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(RootfsError::Mmdebstrap(e));
    }
    let _ = fs::remove_dir_all(&tree);
    fs::rename(&tmp, &tree).map_err(cerr(&tree))?;
    fs::write(&meta, serde_json::to_vec_pretty(spec).unwrap_or_default()).map_err(cerr(&meta))?;
    prune(&dir, &key);
    Ok((tree, false))
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
            let _ = fs::remove_dir_all(dir.join(&key));
            let _ = fs::remove_file(dir.join(format!("{key}.json")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_dates_parse() {
        let t = parse_release_date("Sat, 08 Nov 2025 09:31:35 UTC").unwrap();
        assert_eq!(t.unix_timestamp(), 1_762_594_295);
        assert!(parse_release_date("yesterday").is_none());
    }
}
