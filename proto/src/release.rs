//! Release manifests: what the offline release keys vouch for. One per (image, board,
//! version), published as a TUF target of the top-level targets role next to its
//! artifacts. The device trusts an artifact only through this manifest, and the manifest
//! only through TUF.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::payload::{ArtifactKind, SlotBoot};
use crate::slot::Slot;

/// Newer formats are refused by older updaters (they say "update the updater first").
pub const RELEASE_FORMAT: u32 = 1;

/// Separator of the parts of a TUF target name. Target names are flat (no '/'), so that
/// every TUF client finds them at the same URL; '~' appears in no board, image or version
/// name and needs no escaping in a URL.
pub const SEP: char = '~';

/// TUF target name of a release's file: `<image>~<board>~<version>~<file>`.
pub fn target_name(image: &str, board: &str, version: &str, file: &str) -> String {
    format!("{image}{SEP}{board}{SEP}{version}{SEP}{file}")
}

/// TUF target name of a release manifest.
pub fn manifest_target(image: &str, board: &str, version: &str) -> String {
    target_name(image, board, version, "release.json")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseManifest {
    pub format: u32,
    pub image: String,
    pub board: String,
    pub arch: String,
    /// Semantic version of the release.
    pub version: String,
    /// Monotonic security version: devices never install a release below the highest
    /// security version they have committed (anti-rollback), whatever a channel says.
    pub security_version: u64,
    /// Oldest updater that understands this release.
    pub min_updater_version: String,
    pub build_id: String,
    /// dm-verity root hash of the root image.
    pub roothash: String,
    /// When the release was published (RFC 3339).
    pub published: String,
    pub artifacts: Vec<ReleaseArtifact>,
    /// Boot files and command line for each slot.
    pub slots: BTreeMap<Slot, SlotBoot>,
    /// PCR index → expected value (hex) after booting this release, for attestation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expected_pcrs: BTreeMap<String, String>,
    /// Cheaper ways to the root image and hash tree: deltas from earlier releases and
    /// block indexes (see `delta`). Older updaters ignore them and download in full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaRef>,
    /// How the hash tree was made: a device that rebuilt the root image computes the tree
    /// and downloads it only if the result differs from the signed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<crate::verity::VerityParams>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaKind {
    /// Operations from one earlier release's artifact (`from`).
    Delta,
    /// A block-hash index of this artifact, usable from any version.
    Index,
}

/// One delta or index file of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The artifact it rebuilds (root.img, root.verity).
    pub artifact: String,
    pub kind: DeltaKind,
    /// For a delta: the release it starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DeltaSource>,
    /// TUF target name.
    pub target: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaSource {
    pub version: String,
    /// That release's dm-verity root hash: what a device on it has on its kernel command
    /// line, so it knows the delta is for what it runs.
    pub roothash: String,
    /// Size and sha256 of that release's artifact.
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseArtifact {
    /// Name in the build's payload directory (e.g. root.img).
    pub name: String,
    pub kind: ArtifactKind,
    /// TUF target name to download.
    pub target: String,
    pub size: u64,
    pub sha256: String,
}

impl ReleaseManifest {
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&ReleaseArtifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }

    /// The delta from the release with root hash `roothash` for `artifact`, if published.
    pub fn delta_from(&self, artifact: &str, roothash: &str) -> Option<&DeltaRef> {
        self.deltas.iter().find(|d| {
            d.artifact == artifact
                && d.kind == DeltaKind::Delta
                && d.from.as_ref().is_some_and(|f| f.roothash == roothash)
        })
    }

    pub fn index_for(&self, artifact: &str) -> Option<&DeltaRef> {
        self.deltas.iter().find(|d| d.artifact == artifact && d.kind == DeltaKind::Index)
    }

    pub fn artifact_named(&self, name: &str) -> Option<&ReleaseArtifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// Does an install into `slot` need this artifact? Root image and hash tree always;
    /// a boot file only if that slot's boot files name it (with Secure Boot each slot has
    /// its own signed UKI: the other slot's is never downloaded).
    pub fn needed_for(&self, slot: Slot, a: &ReleaseArtifact) -> bool {
        a.kind != ArtifactKind::BootFile
            || self.slots.get(&slot).is_some_and(|s| s.files.iter().any(|f| f.artifact == a.name))
    }

    /// Bytes an install into `slot` downloads.
    pub fn download_size_for(&self, slot: Slot) -> u64 {
        self.artifacts.iter().filter(|a| self.needed_for(slot, a)).map(|a| a.size).sum()
    }

    /// Most bytes a full install downloads (into either slot).
    pub fn download_size(&self) -> u64 {
        Slot::ALL.iter().map(|&s| self.download_size_for(s)).max().unwrap_or(0)
    }
}

/// Compare two semantic versions; unparsable versions sort first.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
        (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn names_are_flat() {
        let n = target_name("k3s-edge", "rpi4", "1.4.0-rc.1", "root.img");
        assert_eq!(n, "k3s-edge~rpi4~1.4.0-rc.1~root.img");
        assert!(!n.contains('/'));
        assert_eq!(manifest_target("a", "b", "1.0.0"), "a~b~1.0.0~release.json");
    }

    #[test]
    fn versions() {
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.0-rc.1", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("2.0.0", "2.0.0"), Ordering::Equal);
    }
}
