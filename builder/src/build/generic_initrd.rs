//! The generic initrd of a base tree, and whether a board layer may take it instead of
//! running dracut again (module docs of `rootfs`: the cache layers).
//!
//! dracut puts in an initrd the kernel modules it is told to (and what they depend on), the
//! firmware those modules load, and what its own modules, modprobe and udev configuration
//! pull in. A board layer gets the same initrd as the base tree's generic one when all of
//! the board's drivers are in it (or built into the kernel) and the board's packages add
//! none of those inputs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rootfs::kernel_versions;
use crate::progress::{Reporter, ReporterExt};

/// Everything that determines the generic initrd of a base tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InitrdSpec {
    pub format: u32,
    pub base_key: String,
    /// dracut's configuration without any board's drivers.
    pub dracut_conf: String,
}

/// Where the generic initrd's files of kernel `v` are in its cache entry: the initrd, the
/// names of the modules in it, the firmware files those modules load (`modinfo -F firmware`).
pub(super) fn initrd_files(v: &str) -> [String; 3] {
    [format!("initrd.img-{v}"), format!("modules-{v}"), format!("firmware-{v}")]
}

/// Would dracut make the generic initrd again for the layer `layer` (a base tree
/// `base_tree` with the board's packages installed and `board_conf` as dracut's
/// configuration)? Err says why not.
pub(super) fn generic_initrd_fits(
    entry: &Path,
    base_tree: &Path,
    layer: &Path,
    board_conf: &str,
    generic_conf: &str,
    rep: &dyn Reporter,
) -> Result<(), String> {
    let read = |p: PathBuf| fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
    let generic = dracut_drivers(generic_conf);
    let extra: Vec<String> = dracut_drivers(board_conf).into_iter().filter(|d| !generic.contains(d)).collect();
    let mut inventory = Vec::new();
    for v in kernel_versions(layer).map_err(|e| e.to_string())? {
        let [initrd, modules, firmware] = initrd_files(&v);
        if !entry.join(&initrd).is_file() {
            return Err(format!("kernel {v} is not the base tree's"));
        }
        let kernel = layer.join(format!("usr/lib/modules/{v}"));
        let builtin = fs::read_to_string(kernel.join("modules.builtin")).unwrap_or_default();
        // modules.dep: `kernel/drivers/…/x.ko.xz: dependencies…`, one line per module.
        let dep = fs::read_to_string(kernel.join("modules.dep")).unwrap_or_default();
        let dep = dep.lines().filter_map(|l| l.split(':').next());
        inventory.push(KernelInventory {
            version: v.clone(),
            modules: read(entry.join(&modules))?.lines().chain(builtin.lines()).map(module_name).collect(),
            known: dep.chain(builtin.lines()).map(module_name).collect(),
            firmware: read(entry.join(&firmware))?.lines().map(str::to_string).collect(),
        });
    }
    let unknown = unknown_drivers(&extra, &inventory);
    if !unknown.is_empty() {
        rep.warn(format!(
            "the board's kernel.initrd_drivers name {}, which the kernel has neither as a module nor built in: \
             dracut leaves them out. A misspelt name, or another kernel's?",
            unknown.join(", ")
        ));
    }
    let added = package_files_added(base_tree, layer).map_err(|e| format!("reading dpkg's file lists: {e}"))?;
    initrd_unchanged(&extra, &inventory, &added)
}

/// What the generic initrd of one kernel holds.
struct KernelInventory {
    version: String,
    /// Module names (`-` as `_`), with the kernel's built-in ones.
    modules: BTreeSet<String>,
    /// Every module the kernel has, built in or not.
    known: BTreeSet<String>,
    /// Firmware files its modules load, relative to /usr/lib/firmware.
    firmware: BTreeSet<String>,
}

/// Where dracut looks for what it puts in an initrd, beyond firmware and the kernel modules.
const INITRD_INPUTS: &[&str] = &[
    "/usr/lib/dracut/",
    "/etc/dracut.conf.d/",
    "/usr/lib/modules/",
    "/lib/modules/",
    "/usr/lib/modprobe.d/",
    "/lib/modprobe.d/",
    "/etc/modprobe.d/",
    "/usr/lib/udev/",
    "/lib/udev/",
    "/etc/udev/",
];

/// The generic initrd stands for the board's when it holds the board's extra drivers
/// (`extra`) and none of the files the board's packages add (`added`, as (package, path))
/// would change what dracut puts in.
fn initrd_unchanged(extra: &[String], inventory: &[KernelInventory], added: &[(String, String)]) -> Result<(), String> {
    for k in inventory {
        // A name the kernel does not have, dracut skips (`unknown_drivers` warns of it).
        let missing = extra.iter().map(|d| module_name(d)).find(|d| k.known.contains(d) && !k.modules.contains(d));
        if let Some(d) = missing {
            return Err(format!("driver {d} is not in kernel {}'s generic initrd", k.version));
        }
    }
    for (package, path) in added {
        if let Some(dir) = INITRD_INPUTS.iter().find(|d| path.starts_with(*d)) {
            return Err(format!("package {package} adds {path}, and dracut reads {dir}"));
        }
        let fw = path.strip_prefix("/usr/lib/firmware/").or_else(|| path.strip_prefix("/lib/firmware/"));
        if let Some(fw) = fw {
            let fw = fw.strip_prefix("updates/").unwrap_or(fw);
            let fw = fw.strip_suffix(".xz").or_else(|| fw.strip_suffix(".zst")).unwrap_or(fw);
            if let Some(k) = inventory.iter().find(|k| k.firmware.contains(fw)) {
                return Err(format!(
                    "package {package} adds {path}, which a module in kernel {}'s initrd loads",
                    k.version
                ));
            }
        }
    }
    Ok(())
}

/// The drivers in `extra` that some kernel in `inventory` has neither as a module nor
/// built in, as "driver (kernel)": dracut leaves them out with no error, so a misspelt name
/// (or another kernel's) would go unnoticed.
fn unknown_drivers(extra: &[String], inventory: &[KernelInventory]) -> Vec<String> {
    let mut out = Vec::new();
    for k in inventory {
        for d in extra.iter().filter(|d| !k.known.contains(&module_name(d))) {
            out.push(format!("{d} (kernel {})", k.version));
        }
    }
    out
}

/// A module's name as the kernel knows it: `kernel/drivers/mmc/host/sdhci-iproc.ko.xz` and
/// `sdhci-iproc` are both `sdhci_iproc`.
fn module_name(s: &str) -> String {
    let base = s.trim().rsplit('/').next().unwrap_or_default();
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The drivers an edgeimg dracut configuration adds.
pub(super) fn dracut_drivers(conf: &str) -> Vec<String> {
    conf.lines()
        .find_map(|l| l.strip_prefix("add_drivers+=\""))
        .map(|l| l.trim_end_matches('"').split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The files of the packages installed in `layer` and not (or not the same) in `base`:
/// (package, path) from dpkg's file lists.
fn package_files_added(base: &Path, layer: &Path) -> std::io::Result<Vec<(String, String)>> {
    let info = Path::new("var/lib/dpkg/info");
    let mut out = Vec::new();
    for e in fs::read_dir(layer.join(info))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(package) = name.strip_suffix(".list") else { continue };
        let text = fs::read_to_string(e.path())?;
        if fs::read_to_string(base.join(info).join(&name)).is_ok_and(|b| b == text) {
            continue;
        }
        let package = package.split(':').next().unwrap_or(package);
        out.extend(
            text.lines()
                .filter(|l| !layer.join(l.trim_start_matches('/')).is_dir())
                .map(|l| (package.to_string(), l.to_string())),
        );
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(modules: &[&str], firmware: &[&str]) -> KernelInventory {
        KernelInventory {
            version: "6.12.1-arm64".into(),
            modules: modules.iter().map(|m| module_name(m)).collect(),
            known: modules.iter().chain(&["broadcom", "pcie-brcmstb"]).map(|m| module_name(m)).collect(),
            firmware: firmware.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn the_generic_initrd_stands_in_only_when_dracut_would_make_the_same() {
        let k = [inventory(
            &["kernel/drivers/mmc/host/sdhci-iproc.ko.xz", "mmc_block", "xhci-pci-renesas"],
            &["renesas_usb_fw.mem", "brcm/brcmfmac43455-sdio.bin"],
        )];
        let added = |p: &str| vec![("pkg".to_string(), p.to_string())];
        // Drivers are matched by module name, `-` or `_`, file or name.
        assert_eq!(initrd_unchanged(&["sdhci_iproc".into(), "mmc-block".into()], &k, &[]), Ok(()));
        let e = initrd_unchanged(&["pcie_brcmstb".into()], &k, &[]).unwrap_err();
        assert!(e.contains("driver pcie_brcmstb is not in kernel 6.12.1-arm64's generic initrd"), "{e}");
        // A name the kernel does not have at all, dracut skips: no difference, but a warning.
        assert_eq!(initrd_unchanged(&["bcm2835_mmc".into()], &k, &[]), Ok(()));
        let names = ["bcm2835_mmc".to_string(), "broadcom".into(), "sdhci_iproc".into()];
        assert_eq!(unknown_drivers(&names, &k), ["bcm2835_mmc (kernel 6.12.1-arm64)"]);
        // Firmware: only files the initrd's modules load matter, compressed or not.
        assert_eq!(
            initrd_unchanged(&[], &k, &added("/usr/lib/firmware/brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt")),
            Ok(())
        );
        assert_eq!(initrd_unchanged(&[], &k, &added("/usr/lib/u-boot/rpi_arm64/u-boot.bin")), Ok(()));
        for p in ["/usr/lib/firmware/renesas_usb_fw.mem.xz", "/lib/firmware/updates/brcm/brcmfmac43455-sdio.bin"] {
            let e = initrd_unchanged(&[], &k, &added(p)).unwrap_err();
            assert!(e.contains(&format!("package pkg adds {p}, which a module")), "{e}");
        }
        // What dracut reads besides: its modules and configuration, modprobe and udev, kernels.
        for p in [
            "/usr/lib/dracut/modules.d/99x/module-setup.sh",
            "/etc/modprobe.d/x.conf",
            "/usr/lib/udev/rules.d/9.rules",
            "/usr/lib/modules/6.13/kernel/a.ko",
        ] {
            assert!(initrd_unchanged(&[], &k, &added(p)).unwrap_err().contains("dracut reads"), "{p}");
        }
    }

    #[test]
    fn added_package_files_are_those_of_new_or_changed_file_lists() {
        let (base, layer) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for t in [base.path(), layer.path()] {
            fs::create_dir_all(t.join("var/lib/dpkg/info")).unwrap();
            fs::create_dir_all(t.join("usr/lib/firmware")).unwrap();
            fs::write(t.join("var/lib/dpkg/info/kmod.list"), "/usr/lib/firmware\n/usr/bin/kmod\n").unwrap();
        }
        fs::write(
            layer.path().join("var/lib/dpkg/info/firmware-brcm80211.list"),
            "/usr/lib/firmware\n/usr/lib/firmware/b.bin\n",
        )
        .unwrap();
        fs::write(layer.path().join("var/lib/dpkg/info/libx:arm64.list"), "/usr/lib/x.so\n").unwrap();
        let added = package_files_added(base.path(), layer.path()).unwrap();
        assert_eq!(
            added,
            [
                ("firmware-brcm80211".to_string(), "/usr/lib/firmware/b.bin".to_string()),
                ("libx".into(), "/usr/lib/x.so".into())
            ]
        );
    }
}
