//! What the server expects a device's TPM to say: for each published release of a board
//! and image, the value PCR 15 holds after booting it. Taken from the release manifest
//! (`expected_pcrs`, computed at publish time and signed with it); for releases published
//! before manifests carried it, computed the same way from the manifest's verity root hash.

use edgeimg_proto::attest::{release_pcr, RELEASE_PCR};
use edgeimg_proto::release::ReleaseManifest;

use crate::repo_view::RepoView;

/// The expected PCR 15 value after booting the release of `m`.
pub fn expected(m: &ReleaseManifest) -> [u8; 32] {
    m.expected_pcrs
        .get(&RELEASE_PCR.to_string())
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(|| release_pcr(&m.image, &m.version, &m.roothash))
}

/// (version, expected PCR 15) for every readable release of `board` and `image`.
pub fn known_releases(view: &RepoView, board: &str, image: &str) -> Vec<(String, [u8; 32])> {
    view.releases
        .iter()
        .filter(|r| r.board == board && r.image == image)
        .filter_map(|r| r.manifest.as_ref().map(|m| (r.version.clone(), expected(m))))
        .collect()
}
