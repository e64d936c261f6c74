//! Device ↔ server messages: enrollment and state reports.
//!
//! Every device has its own ed25519 key, made on the device. Requests carry the device id
//! and a signature over the exact body bytes in headers; reports carry a sequence number
//! that must grow, so a captured report cannot be replayed.

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::slot::Slot;

pub const HEADER_DEVICE: &str = "edgeimg-device";
pub const HEADER_SIGNATURE: &str = "edgeimg-signature";
/// Largest request body the server reads.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub device_id: String,
    /// ed25519 public key, hex.
    pub public_key: String,
    pub board: String,
    pub image: String,
    pub version: String,
    /// Fleet enrollment token; without one the device waits for approval on the server.
    #[serde(default)]
    pub token: Option<String>,
    /// TPM endorsement key (public part) and certificate, and the attestation key.
    #[serde(default)]
    pub tpm: Option<crate::attest::TpmIdentity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A new release was found and its download started.
    Downloading,
    /// The inactive slot holds the release, verified.
    Installed,
    /// Rebooting into the release for its one try.
    Trying,
    /// The release passed its health checks and is now the default.
    Committed,
    /// The release failed (health checks, boot, or install) and the device is back on the
    /// previous release.
    RolledBack,
    /// Something failed before the release was tried (download, verification, space).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub kind: EventKind,
    pub image: String,
    pub version: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthResult {
    pub check: String,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub device_id: String,
    /// Strictly increasing per device.
    pub seq: u64,
    /// Device clock (unix seconds); informational only.
    pub sent: i64,
    pub board: String,
    /// The rollout channel the device follows.
    pub channel: String,
    pub image: String,
    /// Version running now.
    pub version: String,
    pub slot: Slot,
    /// Updater state name.
    pub state: String,
    /// Highest security version committed on this device.
    #[serde(default)]
    pub security_floor: u64,
    #[serde(default)]
    pub event: Option<Event>,
    #[serde(default)]
    pub health: Vec<HealthResult>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// TPM quote for the server's latest nonce.
    #[serde(default)]
    pub attestation: Option<crate::attest::Attestation>,
    /// The secret recovered from the server's credential challenge (hex): proof that the
    /// attestation key is in the TPM of the enrolled EK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret: Option<String>,
}

/// What the server answers to a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportReply {
    /// A fresh nonce the device should quote with its TPM in its next report.
    #[serde(default)]
    pub attest_nonce: Option<String>,
    /// Bind the attestation key first: activate this credential, send the secret back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::attest::CredentialChallenge>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature header is not `ed25519=<base64>`")]
    Format,
    #[error("the public key is not a valid ed25519 key")]
    Key,
    #[error("the signature does not match the body and the device's key")]
    Mismatch,
}

/// Header value for a body signed with the device key.
pub fn sign(key: &SigningKey, body: &[u8]) -> String {
    let sig = key.sign(body);
    format!("ed25519={}", base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()))
}

/// Check a signature header against a body and a hex public key.
pub fn verify(public_key_hex: &str, body: &[u8], header: &str) -> Result<(), SignatureError> {
    let b64 = header.strip_prefix("ed25519=").ok_or(SignatureError::Format)?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| SignatureError::Format)?;
    let sig = Signature::from_slice(&raw).map_err(|_| SignatureError::Format)?;
    let pk: [u8; 32] = hex::decode(public_key_hex).ok().and_then(|v| v.try_into().ok()).ok_or(SignatureError::Key)?;
    let key = VerifyingKey::from_bytes(&pk).map_err(|_| SignatureError::Key)?;
    key.verify(body, &sig).map_err(|_| SignatureError::Mismatch)
}

/// Device ids: lowercase hex or names with '-' (no spaces, no path characters).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pk = hex::encode(key.verifying_key().to_bytes());
        let body = br#"{"device_id":"d1","seq":1}"#;
        let h = sign(&key, body);
        assert_eq!(verify(&pk, body, &h), Ok(()));
        assert_eq!(verify(&pk, br#"{"device_id":"d1","seq":2}"#, &h), Err(SignatureError::Mismatch));
        let other = hex::encode(SigningKey::from_bytes(&[8u8; 32]).verifying_key().to_bytes());
        assert_eq!(verify(&other, body, &h), Err(SignatureError::Mismatch));
        assert_eq!(verify(&pk, body, "rsa=abc"), Err(SignatureError::Format));
        assert_eq!(verify("zz", body, &h), Err(SignatureError::Key));
    }

    #[test]
    fn device_ids() {
        assert!(valid_device_id("3f2a-node-1"));
        assert!(!valid_device_id("../etc"));
        assert!(!valid_device_id(""));
    }
}
