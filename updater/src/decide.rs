//! What to do with what the channel says: pure functions, tested without I/O.

use edgeimg_proto::channel::BoardRollout;
use edgeimg_proto::release::{compare_versions, ReleaseManifest, RELEASE_FORMAT};

use crate::state::ReleaseRef;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The channel has nothing for this board.
    NoRelease,
    UpToDate,
    Paused {
        reason: String,
    },
    /// Not in the rollout yet (bucket ≥ percent).
    NotYet {
        percent: u8,
    },
    /// Failed here before: never tried again.
    FailedBefore,
    /// Older than what runs, and the channel does not say rollback.
    Older,
    Install {
        image: String,
        version: String,
    },
}

pub fn decide(
    entry: Option<&BoardRollout>,
    running: &ReleaseRef,
    failed: &[ReleaseRef],
    device_id: &str,
    now: i64,
) -> Decision {
    let Some(e) = entry else { return Decision::NoRelease };
    if e.image == running.image && e.version == running.version {
        return Decision::UpToDate;
    }
    if failed.iter().any(|f| f.image == e.image && f.version == e.version) {
        return Decision::FailedBefore;
    }
    if e.paused {
        return Decision::Paused { reason: e.pause_reason.clone().unwrap_or_default() };
    }
    if e.image == running.image && compare_versions(&e.version, &running.version).is_lt() && !e.rollback {
        return Decision::Older;
    }
    if !e.eligible(device_id, now) {
        return Decision::NotYet { percent: e.percent_at(now) };
    }
    Decision::Install { image: e.image.clone(), version: e.version.clone() }
}

/// Reasons a signed manifest is still refused on this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("release is for board {theirs}, this device is {ours}")]
    WrongBoard { ours: String, theirs: String },
    #[error("release manifest format {0} is newer than this updater understands; update the updater first")]
    Format(u32),
    #[error("release needs updater {needed} or newer; this is {ours}")]
    UpdaterTooOld { needed: String, ours: String },
    #[error("release has security version {theirs}, below this device's floor {floor} (anti-rollback)")]
    BelowFloor { theirs: u64, floor: u64 },
    #[error("release downloads {size} bytes, over the limit of {limit}")]
    TooBig { size: u64, limit: u64 },
    #[error("release manifest is incomplete: {0}")]
    Incomplete(String),
}

pub fn check_manifest(
    m: &ReleaseManifest,
    board: &str,
    updater_version: &str,
    floor: u64,
    max_download: u64,
) -> Result<(), Refusal> {
    if m.board != board {
        return Err(Refusal::WrongBoard { ours: board.into(), theirs: m.board.clone() });
    }
    if m.format > RELEASE_FORMAT {
        return Err(Refusal::Format(m.format));
    }
    if compare_versions(updater_version, &m.min_updater_version).is_lt() {
        return Err(Refusal::UpdaterTooOld { needed: m.min_updater_version.clone(), ours: updater_version.into() });
    }
    if m.security_version < floor {
        return Err(Refusal::BelowFloor { theirs: m.security_version, floor });
    }
    if m.download_size() > max_download {
        return Err(Refusal::TooBig { size: m.download_size(), limit: max_download });
    }
    use edgeimg_proto::payload::ArtifactKind;
    for k in [ArtifactKind::RootImage, ArtifactKind::VerityTree] {
        if m.artifact(k).is_none() {
            return Err(Refusal::Incomplete(format!("no {k:?} artifact")));
        }
    }
    for s in edgeimg_proto::Slot::ALL {
        let sb = m.slots.get(&s).ok_or_else(|| Refusal::Incomplete(format!("no boot files for slot {s}")))?;
        for f in &sb.files {
            if m.artifact_named(&f.artifact).is_none() || f.path.contains("..") || !f.path.starts_with('/') {
                return Err(Refusal::Incomplete(format!("boot file {} -> {}", f.artifact, f.path)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeimg_proto::channel::HaltPolicy;

    fn entry(version: &str, percent: u8) -> BoardRollout {
        BoardRollout {
            image: "edge".into(),
            version: version.into(),
            percent,
            waves: None,
            paused: false,
            pause_reason: None,
            rollback: false,
            require_attestation: false,
            halt: HaltPolicy::default(),
        }
    }
    fn running(v: &str) -> ReleaseRef {
        ReleaseRef { image: "edge".into(), version: v.into(), security_version: 0 }
    }

    #[test]
    fn decisions() {
        let r = running("1.0.0");
        assert_eq!(decide(None, &r, &[], "d", 0), Decision::NoRelease);
        assert_eq!(decide(Some(&entry("1.0.0", 100)), &r, &[], "d", 0), Decision::UpToDate);
        assert!(matches!(decide(Some(&entry("1.1.0", 100)), &r, &[], "d", 0), Decision::Install { .. }));
        assert_eq!(decide(Some(&entry("1.1.0", 0)), &r, &[], "d", 0), Decision::NotYet { percent: 0 });
        assert_eq!(decide(Some(&entry("1.1.0", 100)), &r, &[running("1.1.0")], "d", 0), Decision::FailedBefore);
        assert_eq!(decide(Some(&entry("0.9.0", 100)), &r, &[], "d", 0), Decision::Older);
        let mut rb = entry("0.9.0", 100);
        rb.rollback = true;
        assert!(matches!(decide(Some(&rb), &r, &[], "d", 0), Decision::Install { .. }));
        let mut p = entry("1.1.0", 100);
        p.paused = true;
        assert!(matches!(decide(Some(&p), &r, &[], "d", 0), Decision::Paused { .. }));
    }
}
