//! Rollout channels: which release each board should run, for which share of the fleet,
//! and when. A channel file (`channel~<name>.json`) is a target of the delegated
//! `rollout` TUF role, signed with the online key: it decides *who gets what when*, never
//! *what exists* (it can only name releases the offline targets role signed).
//!
//! Eligibility is a pure function of (device id, release, policy, now), shared by the
//! server (to show who is eligible) and the device (to decide).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const CHANNEL_FORMAT: u32 = 1;

/// TUF target name of a channel file.
pub fn channel_target(channel: &str) -> String {
    format!("channel{}{channel}.json", crate::release::SEP)
}

/// The glob the delegated `rollout` role is limited to.
pub const CHANNEL_PATTERN: &str = "channel~*";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub format: u32,
    pub name: String,
    /// Board name → what that board runs on this channel.
    #[serde(default)]
    pub boards: BTreeMap<String, BoardRollout>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardRollout {
    pub image: String,
    /// Version of the release (its manifest is `<image>~<board>~<version>~release.json`).
    pub version: String,
    /// Share of devices that may install it, in percent (ignored when `waves` is set).
    #[serde(default = "hundred")]
    pub percent: u8,
    /// Time-based waves, e.g. 1, 5, 25, 100 percent over a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
    /// No device starts installing while paused (set by hand or by the server's auto-halt).
    #[serde(default)]
    pub paused: bool,
    /// Why it was paused, for the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// Allow devices on a newer version to go down to this one (an explicit rollback).
    /// Never below a device's security floor.
    #[serde(default)]
    pub rollback: bool,
    /// Count a device as healthy only with a passing TPM attestation.
    #[serde(default)]
    pub require_attestation: bool,
    /// Auto-halt: pause when at least `min_devices` have tried the release and more than
    /// `max_failures` of them failed.
    #[serde(default)]
    pub halt: HaltPolicy,
}

fn hundred() -> u8 {
    100
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waves {
    /// Percent per wave, non-decreasing, last one usually 100.
    pub percents: Vec<u8>,
    /// Start of the first wave (unix seconds).
    pub start: i64,
    /// Length of each wave in seconds.
    pub interval: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltPolicy {
    pub max_failures: u32,
    pub min_devices: u32,
}

impl Default for HaltPolicy {
    fn default() -> Self {
        Self { max_failures: 0, min_devices: 1 }
    }
}

impl BoardRollout {
    /// Percent of the fleet allowed at `now` (0 while paused).
    pub fn percent_at(&self, now: i64) -> u8 {
        if self.paused {
            return 0;
        }
        match &self.waves {
            None => self.percent.min(100),
            Some(w) => {
                if now < w.start || w.percents.is_empty() || w.interval <= 0 {
                    return 0;
                }
                let i = ((now - w.start) / w.interval) as usize;
                w.percents[i.min(w.percents.len() - 1)].min(100)
            }
        }
    }

    /// Whether `device_id` may install this release at `now`.
    pub fn eligible(&self, device_id: &str, now: i64) -> bool {
        let pct = self.percent_at(now) as u32;
        pct > 0 && (pct >= 100 || bucket(device_id, &self.image, &self.version) < pct * 100)
    }
}

/// A device's place in a release's rollout, 0..10000 (basis points). Stable for a device
/// and release; independent between releases, so the same devices are not always first.
pub fn bucket(device_id: &str, image: &str, version: &str) -> u32 {
    let h = Sha256::digest(format!("edgeimg-rollout-v1\0{device_id}\0{image}\0{version}").as_bytes());
    let v = u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8]));
    (v % 10_000) as u32
}

/// Validate a channel or a board rollout before it is signed.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    ok.then_some(()).ok_or_else(|| format!("`{name}`: channel names are lowercase letters, digits, '-' and '_'"))
}

impl Waves {
    pub fn validate(&self) -> Result<(), String> {
        if self.percents.is_empty() {
            return Err("waves need at least one percentage".into());
        }
        if self.percents.iter().any(|&p| p > 100) || self.percents.windows(2).any(|w| w[0] > w[1]) {
            return Err("wave percentages must be 0-100 and non-decreasing".into());
        }
        if self.interval <= 0 {
            return Err("the wave interval must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(percent: u8) -> BoardRollout {
        BoardRollout {
            image: "k3s-edge".into(),
            version: "1.4.0".into(),
            percent,
            waves: None,
            paused: false,
            pause_reason: None,
            rollback: false,
            require_attestation: false,
            halt: HaltPolicy::default(),
        }
    }

    #[test]
    fn bucket_is_stable() {
        // Fixed vectors: changing the function would reshuffle every fleet mid-rollout.
        assert_eq!(bucket("device-0001", "k3s-edge", "1.4.0"), bucket("device-0001", "k3s-edge", "1.4.0"));
        let known = [bucket("a", "img", "1.0.0"), bucket("b", "img", "1.0.0"), bucket("a", "img", "1.0.1")];
        let again = [bucket("a", "img", "1.0.0"), bucket("b", "img", "1.0.0"), bucket("a", "img", "1.0.1")];
        assert_eq!(known, again);
        assert!(known.iter().all(|&b| b < 10_000));
        // Computed independently: python3 -c "import hashlib; h = hashlib.sha256(b'edgeimg-rollout-v1\\0device-0001\\0k3s-edge\\01.4.0').digest(); print(int.from_bytes(h[:8], 'big') % 10000)"
        assert_eq!(bucket("device-0001", "k3s-edge", "1.4.0"), 7_732);
    }

    #[test]
    fn bucket_spreads_evenly() {
        let n = 20_000;
        let ids: Vec<String> = (0..n).map(|i| format!("dev-{i:06}")).collect();
        let r = rollout(10);
        let in10 = ids.iter().filter(|d| r.eligible(d, 0)).count();
        // 10% ± 1% of 20,000 (binomial sd ≈ 42, so this bound is > 4 sd).
        assert!((1_800..=2_200).contains(&in10), "{in10}");
        let mut deciles = [0usize; 10];
        for d in &ids {
            deciles[(bucket(d, "k3s-edge", "1.4.0") / 1000) as usize] += 1;
        }
        assert!(deciles.iter().all(|&c| (1_800..=2_200).contains(&c)), "{deciles:?}");
    }

    #[test]
    fn releases_are_independent() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("dev-{i:06}")).collect();
        let a: Vec<bool> = ids.iter().map(|d| bucket(d, "k3s-edge", "1.4.0") < 1000).collect();
        let b: Vec<bool> = ids.iter().map(|d| bucket(d, "k3s-edge", "1.5.0") < 1000).collect();
        let both = a.iter().zip(&b).filter(|(x, y)| **x && **y).count();
        // Independent 10% sets overlap in ~1% (200); a correlated function would give ~2,000.
        assert!((120..=300).contains(&both), "{both}");
    }

    #[test]
    fn percent_is_monotonic_in_devices() {
        let ids: Vec<String> = (0..2_000).map(|i| format!("dev-{i}")).collect();
        let at = |p| ids.iter().filter(|d| rollout(p).eligible(d, 0)).cloned().collect::<Vec<_>>();
        let (p10, p50) = (at(10), at(50));
        assert!(p10.iter().all(|d| p50.contains(d)), "raising the percentage never drops a device");
        assert_eq!(at(100).len(), ids.len());
        assert!(at(0).is_empty());
    }

    #[test]
    fn waves_and_pause() {
        let mut r = rollout(100);
        r.waves = Some(Waves { percents: vec![1, 5, 25, 100], start: 1_000, interval: 100 });
        assert_eq!(r.percent_at(999), 0);
        assert_eq!(r.percent_at(1_000), 1);
        assert_eq!(r.percent_at(1_150), 5);
        assert_eq!(r.percent_at(1_399), 100);
        assert_eq!(r.percent_at(9_999), 100);
        r.paused = true;
        assert_eq!(r.percent_at(9_999), 0);
        assert!(!r.eligible("anything", 9_999));
        assert!(Waves { percents: vec![5, 1], start: 0, interval: 1 }.validate().is_err());
    }
}
