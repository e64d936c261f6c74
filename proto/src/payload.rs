//! The update payload of one build: what the updater writes into an inactive slot.
//!
//! `payload.json` sits next to the artifacts in a build's `payload/` directory; publishing
//! wraps it into a signed release manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slot::Slot;

pub const PAYLOAD_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub format: u32,
    pub board: String,
    pub image: String,
    pub version: String,
    pub arch: String,
    /// Identifies the exact build (hash of all inputs).
    pub build_id: String,
    /// dm-verity root hash of the root image: pins every byte of the root filesystem.
    pub roothash: String,
    /// Security version from the recipe (anti-rollback floor once committed).
    #[serde(default)]
    pub security_version: u64,
    pub artifacts: Vec<Artifact>,
    /// What to put on the boot partition for each slot, and that slot's command line.
    pub slots: BTreeMap<Slot, SlotBoot>,
    /// How the hash tree was made (so a device can compute it instead of downloading it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<crate::verity::VerityParams>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// Raw root filesystem image, written to the slot's root partition.
    RootImage,
    /// dm-verity hash tree, written to the slot's verity partition.
    VerityTree,
    /// A file copied to the boot partition; on a board whose slots have a boot partition
    /// each (Raspberry Pi tryboot), the image of the slot's whole boot partition (its
    /// path is [`crate::tryboot::WHOLE_PARTITION`]).
    BootFile,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name inside the payload directory.
    pub name: String,
    pub kind: ArtifactKind,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotBoot {
    /// Kernel command line that boots this slot (root hash and partition ids included).
    pub cmdline: String,
    pub files: Vec<BootFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    /// Artifact name.
    pub artifact: String,
    /// Absolute path on the boot partition.
    pub path: String,
}

impl Payload {
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }
}
