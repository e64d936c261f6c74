//! Boot files: per-slot kernel command lines and the boot partition for the board's backend.
//!
//! systemd-boot (x86 UEFI): the ESP carries the loader, one kernel + initrd per slot and a
//! type #1 entry per slot. A newly installed slot gets an entry named `slot-b+1.conf`;
//! systemd-boot decrements the counter before starting it, and an entry with no tries left
//! sorts last, so an unblessed slot falls back to the other one on the next boot.
//!
//! With `[secure_boot]` each slot boots one signed unified kernel image instead (kernel,
//! initrd and that slot's command line, which carries the verity root hash), and the loader
//! is signed too: firmware → loader → UKI → root hash → every block of the root filesystem.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use edgeimg_proto::slot::EntryImage;
use edgeimg_proto::Slot;

use crate::config::secure_boot::SecureBoot;
use crate::config::{Arch, Board, BootBackend};
use crate::fsutil::{clamp_mtimes, in_root, write_file};
use crate::gpt::Guid;
use crate::tools::{Cmd, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("the root filesystem has no {0}; is the board's kernel package installed?")]
    Missing(String),
    #[error("the boot files need {need} MiB but the boot partition has {have} MiB ({key} in {board})")]
    TooBig { need: u64, have: u64, key: &'static str, board: String },
    #[error("making the unified kernel image: {0}")]
    Uki(#[from] super::uki::PeError),
}

/// Kernel and initrd taken out of the root tree (they live on the boot partition, not in
/// the root image).
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub version: String,
}

/// Move /boot/vmlinuz-* and /boot/initrd.img-* out of the tree into `dest`. A kernel
/// package that installs /boot/Image without a version in its name (NVIDIA's L4T kernel)
/// goes with the one initrd dracut made.
pub fn take_kernel(tree: &Path, dest: &Path) -> Result<KernelFiles, BootError> {
    let boot = in_root(tree, "/boot");
    let named = |prefix: &str| -> Result<Vec<String>, BootError> {
        let mut v: Vec<String> = fs::read_dir(&boot)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix).map(String::from))
            .collect();
        v.sort();
        Ok(v)
    };
    let (version, kernel_src) = match named("vmlinuz-")?.pop() {
        Some(v) => (v.clone(), boot.join(format!("vmlinuz-{v}"))),
        None if boot.join("Image").is_file() => match named("initrd.img-")?.as_slice() {
            [v] => (v.clone(), boot.join("Image")),
            [] => return Err(BootError::Missing("/boot/initrd.img-* for /boot/Image (dracut did not run?)".into())),
            many => {
                return Err(BootError::Missing(format!(
                    "one kernel version for /boot/Image, but /usr/lib/modules has {} ({}): install one kernel",
                    many.len(),
                    many.join(", ")
                )))
            }
        },
        None => return Err(BootError::Missing("/boot/vmlinuz-* (or /boot/Image)".into())),
    };
    let initrd_src = boot.join(format!("initrd.img-{version}"));
    if !initrd_src.exists() {
        return Err(BootError::Missing(format!("/boot/initrd.img-{version} (dracut did not run?)")));
    }
    fs::create_dir_all(dest)?;
    let kernel = dest.join("linux");
    let initrd = dest.join("initrd");
    fs::copy(&kernel_src, &kernel)?;
    fs::copy(&initrd_src, &initrd)?;
    // The root image does not need them; they would only cost space in every slot.
    for e in fs::read_dir(&boot)?.flatten() {
        let p = e.path();
        if p.is_dir() {
            fs::remove_dir_all(p)?;
        } else {
            fs::remove_file(p)?;
        }
    }
    Ok(KernelFiles { kernel, initrd, version })
}

/// Stable partition GUIDs: the same for every release of a board, so that a release built
/// later boots from the partitions of a disk flashed earlier.
pub fn partition_guid(board: &str, label: &str) -> Guid {
    Guid::derive("edgeimg-partition", &format!("{board}/{label}"))
}

/// The command line that boots `slot` with the root image whose verity root hash is given.
pub fn cmdline(board: &Board, slot: Slot, roothash: &str) -> String {
    let data = partition_guid(&board.name, &slot.root_label()).to_string().to_lowercase();
    let hash = partition_guid(&board.name, &slot.verity_label()).to_string().to_lowercase();
    let mut args = vec![
        "ro".to_string(),
        "rootfstype=erofs".into(),
        "root=/dev/mapper/root".into(),
        format!("roothash={roothash}"),
        format!("systemd.verity_root_data=PARTUUID={data}"),
        format!("systemd.verity_root_hash=PARTUUID={hash}"),
        // A corrupt block panics the kernel (then reboots, and the loader's try counter
        // falls back) instead of hanging the initrd or returning I/O errors.
        "systemd.verity_root_options=panic-on-corruption".into(),
        "panic=5".into(),
        // An initrd that cannot find or open the root reboots instead of waiting for a
        // person at the console; the boot counter then falls back to the other slot.
        "rd.emergency=reboot".into(),
        "rd.shell=0".into(),
        format!("edgeimg.slot={}", slot.letter()),
    ];
    if let Some(c) = &board.kernel.console {
        args.push(format!("console={c}"));
    }
    args.extend(board.kernel.cmdline.iter().cloned());
    args.join(" ")
}

/// systemd-boot loader entry for a slot (the format lives in the shared crate: the updater
/// writes the same entries).
pub fn sd_boot_entry(slot: Slot, title: &str, generation: u64, set: &BootSet, cmdline: &str) -> String {
    let path_of = |suffix: &str| {
        set.slots[&slot].iter().map(|(_, d)| d.as_str()).find(|d| d.ends_with(suffix)).unwrap_or_default().to_string()
    };
    let (linux, initrd, uki) = (path_of("/linux"), path_of("/initrd"), path_of(".efi"));
    let image = if set.uki {
        EntryImage::Uki { efi: &uki }
    } else {
        EntryImage::Linux { linux: &linux, initrd: &initrd, options: cmdline }
    };
    edgeimg_proto::slot::systemd_boot_entry(slot, title, generation, &image)
}

/// The files that boot each slot: the payload's boot artifacts and where each slot puts them.
#[derive(Debug, Clone)]
pub struct BootSet {
    /// Payload artifact name → file.
    pub artifacts: Vec<(String, PathBuf)>,
    /// Per slot: (artifact, absolute path on the boot partition).
    pub slots: BTreeMap<Slot, Vec<(String, String)>>,
    /// Each slot boots a signed unified kernel image.
    pub uki: bool,
}

/// The kernel, initrd and command line of each slot, as the boot partition holds them:
/// one kernel + initrd pair shared by both slots (each entry carries its command line), or
/// with Secure Boot one signed UKI per slot (the command line is inside, under the signature).
pub fn boot_set(
    work: &Path,
    tree: &Path,
    board: &Board,
    kernel: &KernelFiles,
    cmdlines: &BTreeMap<Slot, String>,
    os_release: &[u8],
    secure_boot: Option<(&SecureBoot, &Path)>,
) -> Result<BootSet, BootError> {
    let Some((sb, recipe_dir)) = secure_boot else {
        let artifacts =
            vec![("linux".to_string(), kernel.kernel.clone()), ("initrd".to_string(), kernel.initrd.clone())];
        let slots = Slot::ALL
            .iter()
            .map(|&s| {
                let d = s.boot_dir();
                (s, vec![("linux".into(), format!("{d}/linux")), ("initrd".into(), format!("{d}/initrd"))])
            })
            .collect();
        return Ok(BootSet { artifacts, slots, uki: false });
    };
    let stub_name = match board.arch {
        Arch::Amd64 => "linuxx64.efi.stub",
        Arch::Arm64 => "linuxaa64.efi.stub",
    };
    let stub = in_root(tree, &format!("/usr/lib/systemd/boot/efi/{stub_name}"));
    if !stub.exists() {
        return Err(BootError::Missing(format!("/usr/lib/systemd/boot/efi/{stub_name} (package systemd-boot-efi)")));
    }
    let dir = work.join("uki");
    fs::create_dir_all(&dir)?;
    let mut set = BootSet { artifacts: Vec::new(), slots: BTreeMap::new(), uki: true };
    for &slot in &Slot::ALL {
        let name = format!("uki-{}.efi", slot.letter());
        let unsigned = dir.join(format!("{name}.unsigned"));
        super::uki::assemble(
            &super::uki::UkiInput {
                stub: &stub,
                kernel: &kernel.kernel,
                initrd: &kernel.initrd,
                cmdline: &cmdlines[&slot],
                os_release,
                uname: &kernel.version,
            },
            &unsigned,
        )?;
        let signed = dir.join(&name);
        sign(sb, recipe_dir, &unsigned, &signed)?;
        fs::remove_file(&unsigned)?;
        set.artifacts.push((name.clone(), signed));
        set.slots.insert(slot, vec![(name, format!("{}/uki.efi", slot.boot_dir()))]);
    }
    Ok(set)
}

/// Sign an EFI image with the recipe's db key (sbsign; deterministic for the same input).
pub fn sign(sb: &SecureBoot, recipe_dir: &Path, input: &Path, output: &Path) -> Result<(), BootError> {
    Cmd::new("sbsign")
        .arg("--key")
        .arg(recipe_dir.join(&sb.key))
        .arg("--cert")
        .arg(recipe_dir.join(&sb.cert))
        .arg("--output")
        .arg(output)
        .arg(input)
        .run()?;
    Ok(())
}

fn efi_names(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("systemd-bootx64.efi", "BOOTX64.EFI"),
        Arch::Arm64 => ("systemd-bootaa64.efi", "BOOTAA64.EFI"),
    }
}

/// Where the loader goes on the ESP: systemd-boot's own path and the removable-media
/// fallback path that firmware boots without any boot variable.
pub fn loader_paths(arch: Arch) -> [String; 2] {
    let (loader, fallback) = efi_names(arch);
    [format!("/EFI/systemd/{loader}"), format!("/EFI/BOOT/{fallback}")]
}

pub struct EspInput<'a> {
    pub board: &'a Board,
    pub board_file: &'a str,
    pub tree: &'a Path,
    pub boot: &'a BootSet,
    pub title: &'a str,
    pub cmdline_a: &'a str,
    pub epoch: u64,
    /// Sign the loader for Secure Boot with this key (recipe directory for its paths).
    pub secure_boot: Option<(&'a SecureBoot, &'a Path)>,
}

/// Build the boot partition as a FAT32 image file with slot A installed and committed: the
/// board's loader and its state, then slot A's boot files.
pub fn esp_image(out: &Path, input: &EspInput<'_>) -> Result<PathBuf, BootError> {
    let staging = out.join("esp-staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    match input.board.boot.backend {
        BootBackend::SystemdBoot => systemd_boot_files(out, &staging, input)?,
        BootBackend::UBoot => uboot_files(out, &staging, input)?,
        BootBackend::Tryboot => {
            // Partition 1 holds only the firmware's A/B choice; each slot's files are on
            // the slot's own boot partition (`tryboot_partitions`).
            let autoboot = edgeimg_proto::tryboot::autoboot(Slot::A);
            write_file(&staging, &format!("/{}", edgeimg_proto::tryboot::AUTOBOOT_FILE), autoboot, 0o644)?;
            return fat_image(&out.join("esp.img"), &staging, input.board.disk.esp_mib, "ESP", input.epoch);
        }
        BootBackend::L4t => {
            // L4TLauncher runs from the firmware and boots each slot from its own APP
            // partition (`slot_partitions`); the ESP holds which slot edgeimg committed.
            write_file(&staging, &format!("/{}", edgeimg_proto::l4t::COMMITTED_FILE), "a\n", 0o644)?;
            return fat_image(&out.join("esp.img"), &staging, input.board.disk.esp_mib, "ESP", input.epoch);
        }
    }
    board_files(&staging, input.board, input.board_file, input.tree)?;
    let file_of = |artifact: &str| {
        input.boot.artifacts.iter().find(|(n, _)| n == artifact).map(|(_, p)| p.clone()).unwrap_or_default()
    };
    let mut slot_bytes = 0;
    for (artifact, dest) in &input.boot.slots[&Slot::A] {
        let dest = in_root(&staging, dest);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        slot_bytes += fs::copy(file_of(artifact), dest)?;
    }
    fs::create_dir_all(in_root(&staging, &Slot::B.boot_dir()))?;
    clamp_mtimes(&staging, input.epoch as i64)?;

    // An update writes the other slot's files while these stay: room for two more sets
    // (the new files are written beside the old before they replace them), plus 10% slack
    // for FAT overhead.
    let used = crate::fsutil::tree_size(&staging)?;
    let need = (used + 2 * slot_bytes) * 11 / 10;
    let have = input.board.disk.esp_mib << 20;
    if need > have {
        return Err(BootError::TooBig {
            key: "disk.esp_mib",
            need: need.div_ceil(1 << 20),
            have: input.board.disk.esp_mib,
            board: input.board_file.into(),
        });
    }

    fat_image(&out.join("esp.img"), &staging, input.board.disk.esp_mib, "ESP", input.epoch)
}

/// A FAT32 image of `mib` MiB holding the staging tree (which is removed), reproducibly.
fn fat_image(img: &Path, staging: &Path, mib: u64, label: &str, epoch: u64) -> Result<PathBuf, BootError> {
    let _ = fs::remove_file(img);
    fs::File::create(img)?.set_len(mib << 20)?;
    Cmd::new("mkfs.vfat").args(["-F", "32", "-n", label, "--invariant"]).arg(img).run()?;
    mcopy_tree(img, staging, epoch)?;
    fs::remove_dir_all(staging)?;
    Ok(img.to_path_buf())
}

pub struct SlotBootInput<'a> {
    pub board: &'a Board,
    pub board_file: &'a str,
    pub tree: &'a Path,
    pub kernel: &'a KernelFiles,
    pub cmdlines: &'a BTreeMap<Slot, String>,
    /// Shown in boot menus, e.g. "k3s-edge 1.4.0".
    pub title: &'a str,
    pub epoch: u64,
}

/// Boards whose firmware boots each slot from a partition of its own: that partition as a
/// FAT image per slot, holding the board's boot files, the kernel, the initrd and what
/// points the firmware at them with the slot's command line:
/// - Raspberry Pi tryboot: firmware, device trees and config.txt, `vmlinuz`, `initrd.img`
///   and `cmdline.txt`;
/// - NVIDIA L4T: `/boot/Image`, `/boot/initrd` and `/boot/extlinux/extlinux.conf`, which
///   L4TLauncher reads (edgeimg_proto::l4t).
///
/// The two images differ only in the command line. An update writes the image of its slot
/// to that slot's partition, whole; the other slot's is never downloaded. The image is as
/// large as its files need (plus room for FAT and a little growth), not as large as the
/// partition: an update downloads it.
pub fn slot_partitions(work: &Path, input: &SlotBootInput<'_>) -> Result<BootSet, BootError> {
    use edgeimg_proto::{l4t, tryboot};
    let mut set = BootSet { artifacts: Vec::new(), slots: BTreeMap::new(), uki: false };
    for slot in Slot::ALL {
        let staging = work.join(format!("boot-{}-staging", slot.letter()));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging)?;
        board_files(&staging, input.board, input.board_file, input.tree)?;
        let cmdline = &input.cmdlines[&slot];
        let (kernel, initrd) = match input.board.boot.backend {
            BootBackend::L4t => {
                write_file(&staging, l4t::EXTLINUX_FILE, l4t::extlinux_conf(input.title, cmdline), 0o644)?;
                (l4t::KERNEL_FILE.to_string(), l4t::INITRD_FILE.to_string())
            }
            _ => {
                let config = in_root(&staging, "/config.txt");
                let mut text = fs::read_to_string(&config).unwrap_or_default();
                text.push_str(&tryboot::config_txt_tail());
                write_file(&staging, "/config.txt", text, 0o644)?;
                write_file(&staging, &format!("/{}", tryboot::CMDLINE_FILE), format!("{cmdline}\n"), 0o644)?;
                (format!("/{}", tryboot::KERNEL_FILE), format!("/{}", tryboot::INITRD_FILE))
            }
        };
        write_file(&staging, &kernel, fs::read(&input.kernel.kernel)?, 0o644)?;
        write_file(&staging, &initrd, fs::read(&input.kernel.initrd)?, 0o644)?;
        clamp_mtimes(&staging, input.epoch as i64)?;

        let used = crate::fsutil::tree_size(&staging)?;
        // FAT32 needs 65525 clusters (32 MiB of 512-byte clusters) at the least.
        let mib = ((used * 11 / 10) >> 20).max(60) + 4;
        let have = input.board.disk.boot_mib;
        if mib > have {
            return Err(BootError::TooBig { need: mib, have, key: "disk.boot_mib", board: input.board_file.into() });
        }
        // The payload artifact keeps tryboot's name for every such board: "the image of
        // slot X's boot partition".
        let name = format!("{}.vfat", tryboot::boot_label(slot));
        let label = format!("BOOT-{}", slot.letter().to_uppercase());
        let img = fat_image(&work.join(&name), &staging, mib, &label, input.epoch)?;
        set.artifacts.push((name.clone(), img));
        set.slots.insert(slot, vec![(name, tryboot::WHOLE_PARTITION.to_string())]);
    }
    Ok(set)
}

/// The board's own boot files: copies from the root tree (firmware, loader, device trees)
/// and files written as given (e.g. config.txt).
fn board_files(staging: &Path, board: &Board, board_file: &str, tree: &Path) -> Result<(), BootError> {
    for f in &board.boot.files {
        let matches = glob_tree(tree, &f.from)?;
        if matches.is_empty() {
            return Err(BootError::Missing(format!(
                "{} (boot.files in {}: is the package that has it in firmware.packages?)",
                f.from, board_file
            )));
        }
        let into_dir = f.to.ends_with('/');
        if !into_dir && matches.len() > 1 {
            return Err(BootError::Missing(format!(
                "{} matches {} files but boot.files.to = {:?} names one (end it with / for a directory)",
                f.from,
                matches.len(),
                f.to
            )));
        }
        for m in matches {
            let name = m.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let dest = if into_dir { format!("{}{name}", f.to) } else { f.to.clone() };
            write_file(staging, &dest, fs::read(&m)?, 0o644)?;
        }
    }
    for (path, content) in &board.boot.write {
        write_file(staging, path, content, 0o644)?;
    }
    Ok(())
}

/// Files of the tree under `root` matching an absolute `pattern` whose components may
/// hold `*` (any run of characters within that component), sorted.
pub fn glob_tree(root: &Path, pattern: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = vec![root.to_path_buf()];
    for comp in pattern.trim_start_matches('/').split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in found {
            if !comp.contains('*') {
                let p = dir.join(comp);
                if p.symlink_metadata().is_ok() {
                    next.push(p);
                }
                continue;
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if wildcard(comp, &e.file_name().to_string_lossy()) {
                    next.push(e.path());
                }
            }
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found.sort();
    Ok(found)
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == name;
    }
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// U-Boot: the A/B boot script (source and compiled), both copies of the boot state with
/// slot A committed, and slot A's command line next to its kernel.
fn uboot_files(out: &Path, staging: &Path, input: &EspInput<'_>) -> Result<(), BootError> {
    use edgeimg_proto::uboot::{self, BootState, CMDLINE_FILE, ENV_FILE, ENV_REDUND_FILE, SCRIPT_FILE};
    let script = uboot::boot_script(input.board.boot.tries);
    write_file(staging, "/boot.cmd", &script, 0o644)?;
    let src = out.join("boot.cmd");
    fs::write(&src, &script)?;
    Cmd::new("mkimage")
        .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "edgeimg A/B boot", "-d"])
        .arg(&src)
        .arg(in_root(staging, &format!("/{SCRIPT_FILE}")))
        .env("SOURCE_DATE_EPOCH", input.epoch.to_string())
        .run()?;
    fs::remove_file(&src)?;
    let env = BootState::committed(Slot::A, input.board.boot.tries)
        .to_env()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for name in [ENV_FILE, ENV_REDUND_FILE] {
        write_file(staging, &format!("/{name}"), &env, 0o644)?;
    }
    write_file(
        staging,
        &format!("{}/{CMDLINE_FILE}", Slot::A.boot_dir()),
        format!("bootargs={}\n", input.cmdline_a),
        0o644,
    )?;
    Ok(())
}

/// systemd-boot: the loader (signed for Secure Boot) at both ESP paths, loader.conf and
/// slot A's entry.
fn systemd_boot_files(out: &Path, staging: &Path, input: &EspInput<'_>) -> Result<(), BootError> {
    let (loader, _) = efi_names(input.board.arch);
    let loader_src = in_root(input.tree, &format!("/usr/lib/systemd/boot/efi/{loader}"));
    if !loader_src.exists() {
        return Err(BootError::Missing(format!("/usr/lib/systemd/boot/efi/{loader} (package systemd-boot-efi)")));
    }
    let loader_bytes = match input.secure_boot {
        Some((sb, dir)) => {
            let signed = out.join(loader);
            sign(sb, dir, &loader_src, &signed)?;
            let b = fs::read(&signed)?;
            fs::remove_file(&signed)?;
            b
        }
        None => fs::read(&loader_src)?,
    };
    for path in loader_paths(input.board.arch) {
        write_file(staging, &path, &loader_bytes, 0o644)?;
    }
    write_file(
        staging,
        "/loader/loader.conf",
        format!(
            "# Written by edgeimg. Never pin `default` to one slot: boot counting needs the\n\
             # loader free to pick the other slot when a tried one runs out of tries.\n\
             timeout {}\n\
             default slot-*\n\
             editor no\n\
             auto-entries no\n\
             auto-firmware no\n\
             console-mode keep\n",
            input.board.boot.menu_timeout
        ),
        0o644,
    )?;
    write_file(
        staging,
        &format!("/loader/entries/{}.conf", Slot::A.entry_id()),
        sd_boot_entry(Slot::A, input.title, 1, input.boot, input.cmdline_a),
        0o644,
    )?;
    Ok(())
}

/// Copy a staging tree into a FAT image with mtools, reproducibly (fixed timestamps).
pub fn mcopy_tree(img: &Path, staging: &Path, epoch: u64) -> Result<(), BootError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![staging.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let rel = format!("::/{}", p.strip_prefix(staging).unwrap_or(&p).display());
            if p.is_dir() {
                dirs.push(rel);
                stack.push(p);
            } else {
                files.push((p, rel));
            }
        }
    }
    dirs.sort();
    let env = |c: Cmd| c.env("SOURCE_DATE_EPOCH", epoch.to_string()).env("MTOOLS_SKIP_CHECK", "1");
    if !dirs.is_empty() {
        env(Cmd::new("mmd").arg("-i").arg(img)).args(&dirs).run()?;
    }
    files.sort();
    for (src, dst) in files {
        env(Cmd::new("mcopy").args(["-m", "-o", "-i"]).arg(img)).arg(&src).arg(&dst).run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("bcm2711-*.dtb", "bcm2711-rpi-4-b.dtb"));
        assert!(wildcard("linux-image-*", "linux-image-6.12.117+deb13-arm64"));
        assert!(wildcard("*", "x"));
        assert!(wildcard("a*b*c", "aXbYc"));
        assert!(!wildcard("a*b*c", "aXcYb"));
        assert!(!wildcard("bcm2711-*.dtb", "bcm2712-rpi-5-b.dtb"));
        assert!(!wildcard("ab*ba", "aba"), "prefix and suffix may not overlap");
        assert!(wildcard("start4.elf", "start4.elf") && !wildcard("start4.elf", "start4x.elf"));
    }

    #[test]
    fn take_kernel_finds_debians_and_nvidias_kernel() {
        let put = |t: &Path, files: &[&str]| {
            fs::create_dir_all(t.join("boot")).unwrap();
            for f in files {
                fs::write(t.join("boot").join(f), f).unwrap();
            }
        };
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("out");
        // Debian: the version is in the kernel's name; the newest wins.
        let deb = t.path().join("deb");
        put(&deb, &["vmlinuz-6.1.0", "initrd.img-6.1.0", "vmlinuz-6.12.1", "initrd.img-6.12.1", "config-6.12.1"]);
        let k = take_kernel(&deb, &dest).unwrap();
        assert_eq!((k.version.as_str(), fs::read_to_string(&k.kernel).unwrap().as_str()), ("6.12.1", "vmlinuz-6.12.1"));
        assert_eq!(fs::read_dir(deb.join("boot")).unwrap().count(), 0, "/boot is emptied");
        // NVIDIA's L4T kernel package: /boot/Image, and the one initrd dracut made.
        let l4t = t.path().join("l4t");
        put(&l4t, &["Image", "initrd.img-5.15.148-tegra"]);
        let k = take_kernel(&l4t, &dest).unwrap();
        assert_eq!((k.version.as_str(), fs::read_to_string(&k.kernel).unwrap().as_str()), ("5.15.148-tegra", "Image"));
        assert_eq!(fs::read_to_string(&k.initrd).unwrap(), "initrd.img-5.15.148-tegra");
        let two = t.path().join("two");
        put(&two, &["Image", "initrd.img-5.15.1-tegra", "initrd.img-5.15.2-tegra"]);
        assert!(take_kernel(&two, &dest).unwrap_err().to_string().contains("install one kernel"));
        let none = t.path().join("none");
        put(&none, &["Image"]);
        assert!(take_kernel(&none, &dest).unwrap_err().to_string().contains("dracut did not run"));
        let empty = t.path().join("empty");
        put(&empty, &[]);
        assert!(take_kernel(&empty, &dest).unwrap_err().to_string().contains("/boot/vmlinuz-* (or /boot/Image)"));
    }

    #[test]
    fn l4t_slot_partitions_hold_extlinux_kernel_and_initrd() {
        let t = tempfile::tempdir().unwrap();
        let src = crate::config::source::Source::from_text(
            "test board",
            "name = \"jet\"\narch = \"arm64\"\n[boot]\nbackend = \"l4t\"\n[disk]\nboot_mib = 64\n",
        );
        let board = Board::load(&src).unwrap();
        let (kernel, initrd) = (t.path().join("Image"), t.path().join("initrd"));
        fs::write(&kernel, vec![1u8; 3 << 20]).unwrap();
        fs::write(&initrd, vec![2u8; 1 << 20]).unwrap();
        let k = KernelFiles { kernel, initrd, version: "5.15.148-tegra".into() };
        let cmdlines: BTreeMap<Slot, String> =
            Slot::ALL.iter().map(|&s| (s, format!("ro roothash=00 edgeimg.slot={}", s.letter()))).collect();
        let work = t.path().join("work");
        fs::create_dir_all(&work).unwrap();
        let input = SlotBootInput {
            board: &board,
            board_file: "jet.toml",
            tree: t.path(),
            kernel: &k,
            cmdlines: &cmdlines,
            title: "edge 1.0",
            epoch: 1_700_000_000,
        };
        let set = slot_partitions(&work, &input).unwrap();
        assert_eq!(set.artifacts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["boot-a.vfat", "boot-b.vfat"]);
        for (slot, (_, img)) in Slot::ALL.iter().zip(&set.artifacts) {
            assert_eq!(set.slots[slot], [(format!("boot-{}.vfat", slot.letter()), "/".to_string())]);
            let read = |path: &str| {
                let o = std::process::Command::new("mtype")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .args(["-i"])
                    .arg(img)
                    .arg(format!("::{path}"))
                    .output()
                    .expect("mtools");
                assert!(o.status.success(), "{path} in {}", img.display());
                o.stdout
            };
            let e =
                edgeimg_proto::l4t::parse_extlinux(&String::from_utf8(read("/boot/extlinux/extlinux.conf")).unwrap())
                    .unwrap();
            assert_eq!(e.append, cmdlines[slot]);
            assert_eq!(read(&e.linux).len(), 3 << 20);
            assert_eq!(read(e.initrd.as_deref().unwrap()), vec![2u8; 1 << 20]);
        }
        // Too small a partition for the files: refused with the key to change.
        let small = Board { disk: crate::config::board::Disk { boot_mib: 8, ..board.disk.clone() }, ..board.clone() };
        let e = slot_partitions(&work, &SlotBootInput { board: &small, ..input }).unwrap_err().to_string();
        assert!(e.contains("disk.boot_mib"), "{e}");
    }

    #[test]
    fn glob_in_a_tree() {
        let t = tempfile::tempdir().unwrap();
        for p in [
            "usr/lib/linux-image-6.12/broadcom/bcm2711-rpi-4-b.dtb",
            "usr/lib/linux-image-6.12/broadcom/bcm2711-rpi-400.dtb",
            "usr/lib/linux-image-6.12/broadcom/bcm2712-rpi-5-b.dtb",
            "usr/lib/raspi-firmware/start4.elf",
        ] {
            let f = t.path().join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, p).unwrap();
        }
        let names = |pat: &str| -> Vec<String> {
            glob_tree(t.path(), pat)
                .unwrap()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names("/usr/lib/linux-image-*/broadcom/bcm2711-*.dtb"),
            ["bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb"]
        );
        assert_eq!(names("/usr/lib/raspi-firmware/start4.elf"), ["start4.elf"]);
        assert!(names("/usr/lib/raspi-firmware/start5.elf").is_empty());
        assert!(names("/usr/lib/*").is_empty(), "directories are not files");
    }
}
