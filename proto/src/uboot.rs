//! U-Boot A/B boot state: the environment file format that U-Boot (`env export -c`,
//! `env import -c`) and Linux (`fw_printenv`/`fw_setenv`) share, the state edgeimg keeps
//! in it, and the boot script that acts on it.
//!
//! The state lives in two copies on the FAT boot partition, `uboot.env` and
//! `uboot-redund.env`, each a complete environment with its own CRC. Every writer (the
//! boot script and the updater) writes `uboot.env` first and the redundant copy second, and
//! every reader takes `uboot.env` if its CRC holds, else the redundant copy. So a power cut
//! tearing one write leaves the other copy valid: torn first copy → the redundant copy
//! still has the previous state; torn second copy → the first copy already has the new one.

use std::collections::BTreeMap;
use std::fmt;

use crate::Slot;

/// Size of each environment copy (`/etc/fw_env.config`: `<file> 0x0000 0x4000`).
pub const ENV_SIZE: usize = 0x4000;
/// The copy written first and read first.
pub const ENV_FILE: &str = "uboot.env";
/// The copy written second, read when the first one's CRC fails.
pub const ENV_REDUND_FILE: &str = "uboot-redund.env";
/// The boot script U-Boot's distro boot finds on the boot partition.
pub const SCRIPT_FILE: &str = "boot.scr";
/// Per slot, in the slot's boot directory: `bootargs=<command line>` (the slot's verity
/// root hash is in it). Written last when a slot is staged, removed first when it is
/// disarmed: a slot without it is never booted.
pub const CMDLINE_FILE: &str = "cmdline.env";

/// The environment variables edgeimg keeps (the script imports and exports only these).
pub const VARS: [&str; 4] = ["boot_slot", "upgrade_available", "bootcount", "bootlimit"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("the environment is {0} bytes; a U-Boot environment copy is {ENV_SIZE} bytes")]
    Size(usize),
    #[error("CRC mismatch (stored {stored:08x}, computed {computed:08x}): a torn or foreign write")]
    Crc { stored: u32, computed: u32 },
    #[error("variable {0:?}: names may not contain '=' or NUL and values may not contain NUL")]
    Invalid(String),
    #[error("the variables need {0} bytes; they do not fit in {ENV_SIZE}")]
    TooBig(usize),
    #[error("{0}")]
    State(String),
}

/// Encode variables as one environment copy: CRC32 (little endian) of the data area, then
/// `name=value\0` pairs, a final `\0`, zero padding.
pub fn encode(vars: &BTreeMap<String, String>) -> Result<Vec<u8>, EnvError> {
    let mut data = Vec::with_capacity(ENV_SIZE - 4);
    for (k, v) in vars {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(EnvError::Invalid(k.clone()));
        }
        data.extend_from_slice(k.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    data.push(0);
    if data.len() > ENV_SIZE - 4 {
        return Err(EnvError::TooBig(data.len()));
    }
    data.resize(ENV_SIZE - 4, 0);
    let mut out = crc32(&data).to_le_bytes().to_vec();
    out.extend_from_slice(&data);
    Ok(out)
}

/// Decode one environment copy, checking its CRC.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, String>, EnvError> {
    if bytes.len() != ENV_SIZE {
        return Err(EnvError::Size(bytes.len()));
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let computed = crc32(&bytes[4..]);
    if stored != computed {
        return Err(EnvError::Crc { stored, computed });
    }
    let mut vars = BTreeMap::new();
    for entry in bytes[4..].split(|&b| b == 0) {
        if entry.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(entry);
        if let Some((k, v)) = text.split_once('=') {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    Ok(vars)
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// The A/B state the boot script acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// The slot the script boots.
    pub boot_slot: Slot,
    /// `boot_slot` is on trial: it is counted, and falls back once `bootcount` reaches
    /// `bootlimit` without a commit.
    pub upgrade_available: bool,
    /// Tries started for the slot on trial.
    pub bootcount: u32,
    /// Tries a slot on trial gets.
    pub bootlimit: u32,
}

/// Largest `bootlimit`: U-Boot's `setexpr` writes numbers in hex and `test` reads them in
/// decimal, which agree only for single digits.
pub const MAX_TRIES: u32 = 9;

impl BootState {
    /// Slot A installed and committed: what a freshly flashed disk carries.
    pub fn committed(slot: Slot, tries: u32) -> Self {
        Self { boot_slot: slot, upgrade_available: false, bootcount: 0, bootlimit: tries }
    }

    pub fn to_vars(self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("boot_slot".into(), self.boot_slot.letter().into()),
            ("upgrade_available".into(), if self.upgrade_available { "1" } else { "0" }.into()),
            ("bootcount".into(), self.bootcount.to_string()),
            ("bootlimit".into(), self.bootlimit.to_string()),
        ])
    }

    /// One environment copy holding this state (what `env import -c` reads).
    pub fn to_env(self) -> Result<Vec<u8>, EnvError> {
        encode(&self.to_vars())
    }

    /// The state in one environment copy, CRC checked.
    pub fn from_env(bytes: &[u8]) -> Result<Self, EnvError> {
        Self::from_vars(&decode(bytes)?)
    }

    /// `name=value` lines: a `fw_setenv -s` script and libubootenv's default-environment file.
    pub fn to_text(self) -> String {
        self.to_vars().iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }

    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Self, EnvError> {
        let get = |k: &str| vars.get(k).map(String::as_str).ok_or_else(|| EnvError::State(format!("no {k}")));
        let num = |k: &str| -> Result<u32, EnvError> {
            let v = get(k)?;
            // setexpr writes hex without a prefix; below 10 it is the same as decimal.
            u32::from_str_radix(v, 16).map_err(|_| EnvError::State(format!("{k}={v} is not a number")))
        };
        let upgrade_available = match get("upgrade_available")? {
            "0" => false,
            "1" => true,
            v => return Err(EnvError::State(format!("upgrade_available={v} (0 or 1)"))),
        };
        Ok(Self {
            boot_slot: get("boot_slot")?.parse().map_err(EnvError::State)?,
            upgrade_available,
            bootcount: num("bootcount")?,
            bootlimit: num("bootlimit")?,
        })
    }

    /// What the boot script does with this state at power-up: the slot it boots and the
    /// state it writes back (None: it writes nothing). Tests use it as the script's model;
    /// the QEMU tests run the script itself.
    pub fn boot(self) -> (Slot, Option<BootState>) {
        if !self.upgrade_available {
            return (self.boot_slot, None);
        }
        if self.bootcount >= self.bootlimit {
            let back = BootState::committed(self.boot_slot.other(), self.bootlimit);
            return (back.boot_slot, Some(back));
        }
        let next = BootState { bootcount: self.bootcount + 1, ..self };
        (self.boot_slot, Some(next))
    }
}

impl fmt::Display for BootState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.upgrade_available {
            write!(f, "slot {} on trial ({} of {} tries used)", self.boot_slot, self.bootcount, self.bootlimit)
        } else {
            write!(f, "slot {} committed", self.boot_slot)
        }
    }
}

/// Which copy a reader takes: the first whose CRC holds and whose edgeimg variables parse.
/// Returns the state and the index of the copy (0 = `uboot.env`), or why neither is usable.
pub fn pick(copies: [Option<&[u8]>; 2]) -> Result<(BootState, usize), String> {
    let mut why = Vec::new();
    for (i, (name, bytes)) in [ENV_FILE, ENV_REDUND_FILE].iter().zip(copies).enumerate() {
        let Some(bytes) = bytes else {
            why.push(format!("{name}: missing"));
            continue;
        };
        match BootState::from_env(bytes) {
            Ok(s) => return Ok((s, i)),
            Err(e) => why.push(format!("{name}: {e}")),
        }
    }
    Err(why.join("; "))
}

/// The boot script (U-Boot hush), compiled into `boot.scr` with `mkimage -T script`.
/// U-Boot's distro boot runs it with `devtype`, `devnum` and `distro_bootpart` set to the
/// partition it came from; the board's U-Boot provides `kernel_addr_r`, `ramdisk_addr_r`
/// and `fdt_addr` (the device tree QEMU or the Raspberry Pi firmware handed over).
pub fn boot_script(default_tries: u32) -> String {
    format!(
        r#"# edgeimg A/B boot script. Written by `edgeimg build`; a device never changes it.
# State: boot_slot, upgrade_available, bootcount, bootlimit in two environment copies,
# {ENV_FILE} (written first, read first) and {ENV_REDUND_FILE} (used when the first fails its CRC).
setenv ei_part "${{devtype}} ${{devnum}}:${{distro_bootpart}}"
setenv boot_slot a
setenv upgrade_available 0
setenv bootcount 0
setenv bootlimit {default_tries}
setenv ei_from defaults
if load ${{ei_part}} ${{kernel_addr_r}} {ENV_FILE} && env import -c ${{kernel_addr_r}} {ENV_SIZE:#x} {vars}; then
    setenv ei_from {ENV_FILE}
elif load ${{ei_part}} ${{kernel_addr_r}} {ENV_REDUND_FILE} && env import -c ${{kernel_addr_r}} {ENV_SIZE:#x} {vars}; then
    setenv ei_from {ENV_REDUND_FILE}
fi
setenv ei_save 'env export -c -s {ENV_SIZE:#x} ${{kernel_addr_r}} {vars}; fatwrite ${{ei_part}} ${{kernel_addr_r}} {ENV_FILE} {ENV_SIZE:#x}; fatwrite ${{ei_part}} ${{kernel_addr_r}} {ENV_REDUND_FILE} {ENV_SIZE:#x}'
setenv ei_fallback 'if test "${{boot_slot}}" = a; then setenv boot_slot b; else setenv boot_slot a; fi; setenv upgrade_available 0; setenv bootcount 0; run ei_save'
echo "edgeimg: state from ${{ei_from}}: boot_slot=${{boot_slot}} upgrade_available=${{upgrade_available}} bootcount=${{bootcount}} bootlimit=${{bootlimit}}"
if test "${{upgrade_available}}" = 1; then
    if test ${{bootcount}} -ge ${{bootlimit}}; then
        echo "edgeimg: slot ${{boot_slot}} used its ${{bootlimit}} tries without a commit: falling back"
        run ei_fallback
    else
        setexpr bootcount ${{bootcount}} + 1
        run ei_save
        echo "edgeimg: trying slot ${{boot_slot}} (try ${{bootcount}} of ${{bootlimit}})"
    fi
fi
setenv ei_boot 'setenv ei_dir edgeimg/slot-${{boot_slot}}; load ${{ei_part}} ${{kernel_addr_r}} ${{ei_dir}}/{CMDLINE_FILE} && env import -t ${{kernel_addr_r}} ${{filesize}} bootargs && load ${{ei_part}} ${{ramdisk_addr_r}} ${{ei_dir}}/initrd && setenv ei_rd ${{filesize}} && load ${{ei_part}} ${{kernel_addr_r}} ${{ei_dir}}/linux && echo "edgeimg: booting slot ${{boot_slot}}" && booti ${{kernel_addr_r}} ${{ramdisk_addr_r}}:${{ei_rd}} ${{fdt_addr}}'
run ei_boot
echo "edgeimg: slot ${{boot_slot}} cannot be booted"
if test "${{upgrade_available}}" = 1; then
    run ei_fallback
    run ei_boot
fi
echo "edgeimg: no slot could be booted"
"#,
        vars = VARS.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc() {
        let s = BootState { boot_slot: Slot::B, upgrade_available: true, bootcount: 1, bootlimit: 1 };
        let bytes = s.to_env().unwrap();
        assert_eq!(bytes.len(), ENV_SIZE);
        assert_eq!(&bytes[4..16], b"boot_slot=b\0");
        assert_eq!(BootState::from_env(&bytes).unwrap(), s);
        assert_eq!(s.to_text(), "boot_slot=b\nbootcount=1\nbootlimit=1\nupgrade_available=1\n");
        let mut torn = bytes.clone();
        torn[100..].fill(0xff);
        torn[20] ^= 1;
        assert!(matches!(decode(&torn), Err(EnvError::Crc { .. })));
        assert!(matches!(decode(&bytes[..100]), Err(EnvError::Size(100))));
    }

    #[test]
    fn reader_prefers_the_first_valid_copy() {
        let old = BootState::committed(Slot::A, 1).to_env().unwrap();
        let new =
            encode(&BootState { boot_slot: Slot::B, upgrade_available: true, bootcount: 0, bootlimit: 1 }.to_vars())
                .unwrap();
        // Power cut while writing the first copy: the second still has the old state.
        let mut torn = new.clone();
        torn[8..].fill(0);
        assert_eq!(pick([Some(&torn), Some(&old)]).unwrap(), (BootState::committed(Slot::A, 1), 1));
        // Power cut while writing the second copy: the first has the new state.
        let (s, i) = pick([Some(&new), Some(&torn)]).unwrap();
        assert_eq!((s.boot_slot, s.upgrade_available, i), (Slot::B, true, 0));
        let err = pick([None, Some(&torn)]).unwrap_err();
        assert!(err.contains("uboot.env: missing") && err.contains("CRC mismatch"), "{err}");
    }

    #[test]
    fn script_model_tries_then_falls_back() {
        let staged = BootState { boot_slot: Slot::B, upgrade_available: true, bootcount: 0, bootlimit: 2 };
        let (slot, s1) = staged.boot();
        assert_eq!((slot, s1.unwrap().bootcount), (Slot::B, 1));
        let (slot, s2) = s1.unwrap().boot();
        assert_eq!((slot, s2.unwrap().bootcount), (Slot::B, 2));
        let (slot, s3) = s2.unwrap().boot();
        assert_eq!((slot, s3), (Slot::A, Some(BootState::committed(Slot::A, 2))));
        assert_eq!(BootState::committed(Slot::A, 2).boot(), (Slot::A, None));
    }

    #[test]
    fn hex_counts_from_setexpr() {
        let mut v = BootState::committed(Slot::A, 3).to_vars();
        v.insert("bootcount".into(), "a".into());
        assert_eq!(BootState::from_vars(&v).unwrap().bootcount, 10);
        v.insert("upgrade_available".into(), "yes".into());
        assert!(BootState::from_vars(&v).is_err());
    }

    #[test]
    fn script_names_every_variable_and_both_copies() {
        let s = boot_script(1);
        assert!(s.contains("env import -c ${kernel_addr_r} 0x4000 boot_slot upgrade_available bootcount bootlimit"));
        assert!(s.contains("fatwrite ${ei_part} ${kernel_addr_r} uboot.env 0x4000; fatwrite"));
        assert!(s.contains("setenv bootlimit 1\n"));
        assert!(!s.contains("{{"), "unexpanded format braces");
    }
}
