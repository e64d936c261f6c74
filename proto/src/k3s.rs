//! What the builder tells the device about the K3s it baked in
//! (`/usr/lib/edgeimg/k3s/k3s.json`), read by `edgeimg-updater k3s-prepare` at every boot.

use serde::{Deserialize, Serialize};

pub const DEVICE_FILE: &str = "/usr/lib/edgeimg/k3s/k3s.json";
/// Image archives in the (read-only, verity-protected) root.
pub const ARCHIVE_DIR: &str = "/usr/lib/edgeimg/k3s/images";
/// Auto-deploy manifests of this release.
pub const MANIFEST_DIR: &str = "/usr/lib/edgeimg/k3s/manifests";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceK3s {
    pub version: String,
    /// server, agent or server-join.
    pub role: String,
    /// K3s data directory (on the data partition).
    pub data_dir: String,
    /// Archive file names in ARCHIVE_DIR, linked into `<data_dir>/agent/images`.
    pub archives: Vec<String>,
    /// Keep `.cache.json` in the images directory (skip re-importing unchanged archives).
    pub import_cache: bool,
    /// Manifest file names in MANIFEST_DIR, synced into `<data_dir>/server/manifests`.
    pub manifests: Vec<String>,
    /// The GitOps agent's repository needs credentials of this kind ("https" or "ssh"):
    /// k3s-prepare writes them from the provisioning file into a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops_auth: Option<String>,
}

impl DeviceK3s {
    pub fn needs_join(&self) -> bool {
        self.role != "server"
    }
}
