//! Checking a device's TPM quote on the server, in plain Rust (the server needs no TPM
//! stack): the TPMS_ATTEST structure (TPM 2.0 Part 2 §10.12.12), its ECDSA P-256 signature
//! by the device's attestation key, the server's nonce, and the PCR digest against the
//! value expected for a release.
//!
//! Each failure has its own reason, so the fleet view can tell a replay from a forgery from
//! a device that runs something else.

use p256::ecdsa::signature::Verifier;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The PCR the booted release is measured into (why 15: the module documentation of the
/// `edgeimg-tpm` crate, tpm/src/lib.rs).
pub const RELEASE_PCR: u8 = 15;

/// A device's TPM identity, sent at enrollment (signed with the device key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmIdentity {
    /// Endorsement key (TCG template L-2, ECC P-256): uncompressed point, hex.
    pub ek: String,
    /// Attestation key: uncompressed P-256 point, hex.
    pub ak: String,
    /// The AK's marshalled TPMT_PUBLIC (hex): its hash is the AK's TPM name, which the
    /// server's credential is made for (see `credential`). Devices from before AK binding
    /// send none and stay unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_public: Option<String>,
    /// EK certificate (hex DER) where the TPM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
}

/// The server's challenge that binds a device's AK to its EK: the device runs
/// TPM2_ActivateCredential and sends the recovered secret back in its next report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialChallenge {
    /// TPM2B_ID_OBJECT contents (hex).
    pub id_object: String,
    /// TPM2B_ENCRYPTED_SECRET contents (hex).
    pub encrypted_secret: String,
}

/// A quote answering the server's nonce, carried in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// The nonce (hex) the server handed out, as the device understood it.
    pub nonce: String,
    /// TPMS_ATTEST as the TPM signed it (hex).
    pub attest: String,
    /// ECDSA P-256 signature r||s (hex, 64 bytes).
    pub signature: String,
}

/// TPM_GENERATED_VALUE: only the TPM puts this in front of what it signs.
const TPM_GENERATED: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_SHA256: u16 = 0x000b;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("the quote is malformed: {0}")]
    Malformed(String),
    #[error("the quote is not signed by this device's attestation key")]
    Signature,
    #[error("the quote answers another nonce (replayed or stale)")]
    Nonce,
    #[error("the quote covers PCRs {actual:?}, not {expected:?} of the SHA-256 bank")]
    Selection { expected: Vec<u8>, actual: Vec<u8> },
    #[error("the device runs release {0}, not the one it reports")]
    OtherRelease(String),
    #[error("the PCR values match no published release (measured something else, or tampered)")]
    Unknown,
}

/// What a verified quote says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// SHA-256 PCRs covered, ascending.
    pub pcrs: Vec<u8>,
    pub pcr_digest: [u8; 32],
    /// TPM reset count: changes on every power cycle (a reboot is visible).
    pub reset_count: u32,
    pub firmware_version: u64,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuoteError> {
        if self.b.len() < n {
            return Err(QuoteError::Malformed("truncated".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, QuoteError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, QuoteError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    fn u32(&mut self) -> Result<u32, QuoteError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, QuoteError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn sized(&mut self) -> Result<&'a [u8], QuoteError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// PCR value after extending a reset SHA-256 PCR with these events (each hashed) in order.
pub fn expected_pcr(events: &[&str]) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    for e in events {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(Sha256::digest(e.as_bytes()));
        pcr = h.finalize().into();
    }
    pcr
}

/// The quote's PCR digest for these PCR values (in ascending PCR order).
pub fn pcr_digest(values: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

/// [`RELEASE_PCR`] on a device that booted this release: what the server expects a quote to
/// show, computed once at publish time into the release manifest.
pub fn release_pcr(image: &str, version: &str, verity_root_hash: &str) -> [u8; 32] {
    expected_pcr(&[&release_event(image, version, verity_root_hash)])
}

/// The event a device measures for its booted release.
pub fn release_event(image: &str, version: &str, verity_root_hash: &str) -> String {
    format!("edgeimg-release:v1:{image}:{version}:{verity_root_hash}")
}

/// Check signature (by `ak_sec1`, an uncompressed P-256 point), structure and nonce.
pub fn verify_quote(ak_sec1: &[u8], nonce: &[u8], attest: &[u8], signature: &[u8]) -> Result<QuoteInfo, QuoteError> {
    // The signature first: nothing in an unsigned structure is worth reading.
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(ak_sec1)
        .map_err(|_| QuoteError::Malformed("the attestation key is not a P-256 point".into()))?;
    let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|_| QuoteError::Signature)?;
    key.verify(attest, &sig).map_err(|_| QuoteError::Signature)?;

    let mut r = Reader { b: attest };
    if r.u32()? != TPM_GENERATED {
        return Err(QuoteError::Malformed("not generated by a TPM (magic)".into()));
    }
    if r.u16()? != TPM_ST_ATTEST_QUOTE {
        return Err(QuoteError::Malformed("not a quote".into()));
    }
    let _qualified_signer = r.sized()?;
    let extra = r.sized()?;
    let _clock = r.u64()?;
    let reset_count = r.u32()?;
    let _restart_count = r.u32()?;
    let _safe = r.u8()?;
    let firmware_version = r.u64()?;
    let mut pcrs = Vec::new();
    for _ in 0..r.u32()? {
        let alg = r.u16()?;
        let n = r.u8()? as usize;
        let bits = r.take(n)?;
        if alg != TPM_ALG_SHA256 {
            continue;
        }
        for (i, byte) in bits.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    pcrs.push((i * 8 + bit) as u8);
                }
            }
        }
    }
    let digest: [u8; 32] =
        r.sized()?.try_into().map_err(|_| QuoteError::Malformed("the PCR digest is not SHA-256".into()))?;
    if !r.b.is_empty() {
        return Err(QuoteError::Malformed("trailing bytes".into()));
    }
    // Constant-time compare is not needed: the nonce is public, only freshness matters.
    if extra != nonce {
        return Err(QuoteError::Nonce);
    }
    pcrs.sort_unstable();
    Ok(QuoteInfo { pcrs, pcr_digest: digest, reset_count, firmware_version })
}

/// The whole server-side check of a report's attestation: the attestation key enrolled for
/// the device (`ak_hex`), the nonce the server issued (`nonce_hex`), and `known` as in
/// [`check_release`]. Returns what the quote says when the device runs `claimed`.
pub fn verify_attestation(
    ak_hex: &str,
    nonce_hex: &str,
    a: &Attestation,
    claimed: &str,
    known: &[(String, [u8; 32])],
) -> Result<QuoteInfo, QuoteError> {
    let unhex = |what: &str, v: &str| hex::decode(v).map_err(|_| QuoteError::Malformed(format!("{what} is not hex")));
    if !a.nonce.eq_ignore_ascii_case(nonce_hex) {
        return Err(QuoteError::Nonce);
    }
    let info = verify_quote(
        &unhex("the attestation key", ak_hex)?,
        &unhex("the nonce", nonce_hex)?,
        &unhex("attest", &a.attest)?,
        &unhex("signature", &a.signature)?,
    )?;
    check_release(&info, RELEASE_PCR, claimed, known)?;
    Ok(info)
}

/// Check that a verified quote of `pcr` says the device booted `claimed`: `known` lists
/// (release, expected PCR value) for the releases of this board, so that a device running
/// another published release is told apart from one that measured something unknown.
pub fn check_release(info: &QuoteInfo, pcr: u8, claimed: &str, known: &[(String, [u8; 32])]) -> Result<(), QuoteError> {
    if info.pcrs != [pcr] {
        return Err(QuoteError::Selection { expected: vec![pcr], actual: info.pcrs.clone() });
    }
    let matching = known.iter().find(|(_, v)| pcr_digest(&[*v]) == info.pcr_digest).map(|(r, _)| r.as_str());
    match matching {
        Some(r) if r == claimed => Ok(()),
        Some(r) => Err(QuoteError::OtherRelease(r.to_string())),
        None => Err(QuoteError::Unknown),
    }
}
