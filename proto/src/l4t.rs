//! NVIDIA Jetson (JetPack 6 / L4T r36, UEFI): the disk layout, the extlinux.conf that
//! NVIDIA's L4TLauncher reads, and the UEFI variables of L4T's rootfs A/B, which the builder
//! writes and the updater reads and sets.
//!
//! How L4T boots a slot (edk2-nvidia, `Silicon/NVIDIA/Application/L4TLauncher`):
//! - The firmware runs on boot chain 0 or 1 (bootloader slot A or B; with rootfs A/B the
//!   rootfs slot always follows the chain). L4TLauncher finds the chain's rootfs partition by
//!   GPT name on the boot disk: `APP` for chain 0, `APP_b` for chain 1, and reads
//!   `/boot/extlinux/extlinux.conf` from it through UEFI's file system drivers (FAT among
//!   them). edgeimg makes each slot's `APP` partition a small FAT filesystem holding
//!   extlinux.conf, the kernel and the initrd; the root filesystem itself is the slot's
//!   EROFS + dm-verity partitions, named by the command line (its root hash included).
//! - Fallback: a retry count per slot lives in a scratch register (set to
//!   `RootfsRetryCountMax`, 3 by default, on a cold boot). L4TLauncher decrements it at
//!   each boot; at 0 it marks the slot unbootable (`RootfsStatusSlotA/B` = 0xFF), switches
//!   to the other chain (`BootChainFwNext`) and resets. L4T's `nv-l4t-bootloader-config`
//!   service clears the count once Linux runs; edgeimg holds that service back on a trial
//!   boot until the health checks pass (a drop-in with `ExecCondition`), so a trial that
//!   hangs after userspace started still falls back.
//! - Nothing resets an unbootable status (`mark-boot-successful` is gone since L4T 35.2):
//!   the updater sets the target slot's status to normal before it arms it again.
//! - L4T has no "committed" state: the active chain is whatever boots. edgeimg keeps the
//!   committed slot in a file on the ESP ([`COMMITTED_FILE`]); a boot of the other slot is
//!   a trial, and giving a trial up arms the committed slot's chain again.

use crate::Slot;

/// GUID of NVIDIA's public UEFI variables (`gNVIDIAPublicVariableGuid`), as efivarfs names
/// them (`RootfsStatusSlotA-781e084c-…`).
pub const NVIDIA_GUID: &str = "781e084c-a330-417c-b678-38e696380cb9";
/// Attributes of the non-volatile rootfs variables: NON_VOLATILE | BOOTSERVICE | RUNTIME.
pub const NV_ATTRIBUTES: u32 = 0x7;
/// `RootfsStatusSlotX` values (NVIDIAConfiguration.h).
pub const STATUS_NORMAL: u32 = 0x0;
pub const STATUS_UNBOOTABLE: u32 = 0xFF;
/// The chain L4TLauncher booted this time (volatile, set at every boot).
pub const BOOT_CHAIN_OS_CURRENT: &str = "BootChainOsCurrent";
/// The chain the firmware switches to at the next boot (absent: no switch pending).
pub const BOOT_CHAIN_FW_NEXT: &str = "BootChainFwNext";
/// L4T's service that clears the retry count once Linux runs.
pub const RETRY_SERVICE: &str = "nv-l4t-bootloader-config.service";

/// Where L4TLauncher reads the boot menu, on the slot's `APP` partition.
pub const EXTLINUX_FILE: &str = "/boot/extlinux/extlinux.conf";
/// The kernel and initrd beside it.
pub const KERNEL_FILE: &str = "/boot/Image";
pub const INITRD_FILE: &str = "/boot/initrd";
/// On the ESP: the slot edgeimg has committed (`a` or `b`).
pub const COMMITTED_FILE: &str = "edgeimg/l4t-committed";

/// GPT name of a slot's `APP` partition, as L4TLauncher looks it up.
pub fn app_label(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "APP",
        Slot::B => "APP_b",
    }
}

/// Boot chain (0 or 1) of a slot: the number `nvbootctrl -t rootfs` takes and prints.
pub fn chain_of(slot: Slot) -> u32 {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

pub fn slot_of_chain(chain: u32) -> Option<Slot> {
    Slot::ALL.into_iter().find(|&s| chain_of(s) == chain)
}

/// efivarfs file name of one of NVIDIA's variables.
pub fn efivar_name(name: &str) -> String {
    format!("{name}-{NVIDIA_GUID}")
}

/// The variable L4TLauncher marks a failed slot unbootable in.
pub fn status_var(slot: Slot) -> String {
    format!("RootfsStatusSlot{}", slot.letter().to_uppercase())
}

/// The extlinux.conf of one slot: one entry, no menu wait. No FDT line: the kernel gets
/// the device tree the firmware carries (L4T r36's default), which matches the module and
/// carrier board it was flashed for.
pub fn extlinux_conf(title: &str, cmdline: &str) -> String {
    format!(
        "# Written by edgeimg: L4TLauncher boots this slot's kernel with its root hash.\n\
         TIMEOUT 0\n\
         DEFAULT edgeimg\n\
         MENU TITLE {title}\n\n\
         LABEL edgeimg\n\
         \x20     MENU LABEL {title}\n\
         \x20     LINUX {KERNEL_FILE}\n\
         \x20     INITRD {INITRD_FILE}\n\
         \x20     APPEND {cmdline}\n"
    )
}

/// The entry L4TLauncher would boot from an extlinux.conf (its `DEFAULT`, else the first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub label: String,
    pub linux: String,
    pub initrd: Option<String>,
    pub fdt: Option<String>,
    pub append: String,
}

/// Parse extlinux.conf as L4TLauncher does: keywords at the start of a trimmed line
/// (`LABEL`, `LINUX`, `INITRD`, `FDT`, `APPEND`, `DEFAULT`), `#` comments.
pub fn parse_extlinux(text: &str) -> Result<Entry, String> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut default = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).map_or((line, ""), |(k, v)| (k, v.trim()));
        match key {
            "DEFAULT" => default = Some(value.to_string()),
            "LABEL" => entries.push(Entry { label: value.to_string(), ..Entry::default() }),
            "LINUX" | "INITRD" | "FDT" | "APPEND" => {
                let e = entries.last_mut().ok_or_else(|| format!("`{line}` before any LABEL"))?;
                match key {
                    "LINUX" => e.linux = value.to_string(),
                    "INITRD" => e.initrd = Some(value.to_string()),
                    "FDT" => e.fdt = Some(value.to_string()),
                    _ => e.append = value.to_string(),
                }
            }
            _ => {}
        }
    }
    let entry = match &default {
        Some(d) => entries.iter().find(|e| &e.label == d).ok_or_else(|| format!("DEFAULT {d} names no LABEL"))?,
        None => entries.first().ok_or("no LABEL")?,
    };
    if entry.linux.is_empty() {
        return Err(format!("entry {} has no LINUX", entry.label));
    }
    Ok(entry.clone())
}

/// An efivarfs file: 4 bytes of attributes, then the value (a little-endian u32 here).
pub fn efivar_u32(attributes: u32, value: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&attributes.to_le_bytes());
    b[4..].copy_from_slice(&value.to_le_bytes());
    b
}

/// The value of an efivarfs file holding a u32 (None: too short).
pub fn parse_efivar_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_chains_as_l4tlauncher_finds_them() {
        assert_eq!((app_label(Slot::A), app_label(Slot::B)), ("APP", "APP_b"));
        for s in Slot::ALL {
            assert_eq!(slot_of_chain(chain_of(s)), Some(s));
        }
        assert_eq!(slot_of_chain(2), None);
        assert_eq!(efivar_name(&status_var(Slot::B)), "RootfsStatusSlotB-781e084c-a330-417c-b678-38e696380cb9");
    }

    #[test]
    fn written_extlinux_parses_back() {
        let text = extlinux_conf("k3s-edge 1.2.0", "ro roothash=ab edgeimg.slot=b");
        let e = parse_extlinux(&text).unwrap();
        assert_eq!(e.linux, KERNEL_FILE);
        assert_eq!(e.initrd.as_deref(), Some(INITRD_FILE));
        assert_eq!(e.append, "ro roothash=ab edgeimg.slot=b");
        assert_eq!(e.fdt, None);
    }

    #[test]
    fn parse_follows_default_and_refuses_what_would_not_boot() {
        let t = "DEFAULT two\nLABEL one\n LINUX /a\nLABEL two\n LINUX /b\n FDT /d.dtb\n APPEND x=1  y\n";
        let e = parse_extlinux(t).unwrap();
        assert_eq!((e.linux.as_str(), e.fdt.as_deref(), e.append.as_str()), ("/b", Some("/d.dtb"), "x=1  y"));
        assert_eq!(parse_extlinux("LABEL one\n LINUX /a\n").unwrap().label, "one");
        assert!(parse_extlinux("DEFAULT x\nLABEL y\n LINUX /a\n").unwrap_err().contains("names no LABEL"));
        assert!(parse_extlinux("LINUX /a\n").unwrap_err().contains("before any LABEL"));
        assert!(parse_extlinux("LABEL y\n").unwrap_err().contains("no LINUX"));
        assert!(parse_extlinux("# nothing\n").unwrap_err().contains("no LABEL"));
    }

    #[test]
    fn efivar_files() {
        let b = efivar_u32(NV_ATTRIBUTES, STATUS_UNBOOTABLE);
        assert_eq!(b, [7, 0, 0, 0, 0xff, 0, 0, 0]);
        assert_eq!(parse_efivar_u32(&b), Some(STATUS_UNBOOTABLE));
        assert_eq!(parse_efivar_u32(&b[..6]), None);
    }
}
