//! What the fleet database holds, as the API and the dashboard see it.

use edgeimg_proto::report::{EventKind, HealthResult};
use serde::Serialize;

/// Whether a device may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceStatus {
    /// Enrolled without a token: waits for an admin.
    Pending,
    Approved,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "approved" {
            DeviceStatus::Approved
        } else {
            DeviceStatus::Pending
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub status: DeviceStatus,
    /// ed25519 public key (hex) the device signs its reports with.
    pub public_key: String,
    /// A different key the device enrolled with later, waiting for an admin's approval.
    pub pending_key: Option<String>,
    pub board: String,
    pub image: String,
    pub version: String,
    pub channel: Option<String>,
    pub slot: Option<String>,
    pub state: Option<String>,
    pub security_floor: u64,
    pub last_seq: u64,
    /// Unix seconds of the last accepted report.
    pub last_seen: Option<i64>,
    pub last_error: Option<String>,
    pub health: Vec<HealthResult>,
    pub enrolled_at: i64,
    pub approved_at: Option<i64>,
    /// The device enrolled a TPM attestation key.
    pub tpm: bool,
    /// When the device proved its attestation key is in the TPM of its EK (credential
    /// activation); None: not bound, and no quote of it counts.
    pub ak_bound_at: Option<i64>,
    /// The device sent its TPM's EK certificate.
    pub ek_certificate: bool,
    /// The latest attestation (None: never attested).
    pub attestation: Option<AttestationState>,
}

/// The server's verdict on a device's latest TPM quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttestationState {
    /// `passed` or `failed`.
    pub result: String,
    /// Why it failed, or what passed (release and TPM reset count).
    pub detail: String,
    /// The version the device claimed when it attested.
    pub version: String,
    /// Unix seconds.
    pub at: i64,
}

impl AttestationState {
    /// A passing attestation of `version`.
    pub fn passed_for(&self, version: &str) -> bool {
        self.result == "passed" && self.version == version
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub device_id: String,
    pub seq: u64,
    pub received: i64,
    pub sent: i64,
    pub channel: String,
    pub board: String,
    pub image: String,
    pub version: String,
    pub kind: String,
    pub detail: String,
}

/// One release on one channel and board.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ReleaseKey {
    pub channel: String,
    pub board: String,
    pub image: String,
    pub version: String,
}

/// Devices that reported about a release, by the latest thing each said about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReleaseStats {
    /// Devices with any event for the release.
    pub tried: u64,
    pub committed: u64,
    pub rolled_back: u64,
    pub failed: u64,
    /// Downloading, installed or trying.
    pub in_progress: u64,
}

impl ReleaseStats {
    pub fn add(&mut self, kind: &str, n: u64) {
        self.tried += n;
        match kind {
            "committed" => self.committed += n,
            "rolled-back" => self.rolled_back += n,
            "failed" => self.failed += n,
            _ => self.in_progress += n,
        }
    }

    /// Devices whose latest word on the release is a failure.
    pub fn failures(&self) -> u64 {
        self.rolled_back + self.failed
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Halt {
    #[serde(flatten)]
    pub release: ReleaseKey,
    pub at: i64,
    pub tried: u64,
    pub failed: u64,
    pub reason: String,
    /// `paused`, or why the channel could not be paused (e.g. `no-keys`).
    pub outcome: String,
}

/// Devices grouped for metrics.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceCount {
    pub board: String,
    pub version: String,
    pub state: String,
    pub status: DeviceStatus,
    pub count: u64,
}

/// The wire name of an event kind (as in the report JSON).
pub fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::Downloading => "downloading",
        EventKind::Installed => "installed",
        EventKind::Trying => "trying",
        EventKind::Committed => "committed",
        EventKind::RolledBack => "rolled-back",
        EventKind::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_match_the_wire() {
        for k in [
            EventKind::Downloading,
            EventKind::Installed,
            EventKind::Trying,
            EventKind::Committed,
            EventKind::RolledBack,
            EventKind::Failed,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), kind_name(k));
        }
    }
}
