//! A/B slots and the names the disk layout gives them. The builder writes these names and
//! the updater finds partitions and boot entries by them, so they live here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// GPT partition label of the EFI system / boot partition.
pub const ESP_LABEL: &str = "esp";
/// GPT partition label of the persistent data partition.
pub const DATA_LABEL: &str = "data";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// PARTLABEL of the slot's root filesystem partition.
    pub fn root_label(self) -> String {
        format!("root-{}", self.letter())
    }

    /// PARTLABEL of the slot's dm-verity hash partition.
    pub fn verity_label(self) -> String {
        format!("verity-{}", self.letter())
    }

    /// Directory on the boot partition that holds this slot's kernel and initrd.
    pub fn boot_dir(self) -> String {
        format!("/edgeimg/slot-{}", self.letter())
    }

    /// systemd-boot entry id (the entry file name without counter and `.conf`).
    pub fn entry_id(self) -> String {
        format!("slot-{}", self.letter())
    }
}

/// What a loader entry starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryImage<'a> {
    /// A kernel and initrd; the entry carries the command line.
    Linux { linux: &'a str, initrd: &'a str, options: &'a str },
    /// A unified kernel image: its command line is inside it, covered by its Secure Boot
    /// signature, so the entry gives none (the stub would ignore it under Secure Boot).
    Uki { efi: &'a str },
}

/// systemd-boot type #1 entry for a slot (the builder writes slot A's, the updater the
/// staged ones). All entries share a sort key; the highest `version` boots first.
pub fn systemd_boot_entry(slot: Slot, title: &str, version: u64, image: &EntryImage<'_>) -> String {
    let head = format!(
        "title      {title} (slot {slot})\n\
         sort-key   edgeimg\n\
         version    {version}\n"
    );
    match image {
        EntryImage::Linux { linux, initrd, options } => {
            format!("{head}linux      {linux}\ninitrd     {initrd}\noptions    {options}\n")
        }
        EntryImage::Uki { efi } => format!("{head}efi        {efi}\n"),
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

impl FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            _ => Err(format!("`{s}` is not a slot (a or b)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.root_label(), "root-b");
        assert_eq!(Slot::A.verity_label(), "verity-a");
        assert_eq!("B".parse::<Slot>().unwrap(), Slot::B);
        assert!("c".parse::<Slot>().is_err());
        assert_eq!(serde_json::to_string(&Slot::A).unwrap(), "\"a\"");
    }
}
