//! TPM2_MakeCredential in software, for the server: it binds a device's attestation key to
//! its endorsement key. The server encrypts a fresh secret to the EK so that only the TPM
//! holding that EK can decrypt it, and only for a loaded object whose name is the AK's
//! (TPM2_ActivateCredential checks the name). A device that answers with the secret has
//! proved that its AK lives in the same TPM as its EK; a quote from any other key, even one
//! the device made in software, is then worthless.
//!
//! TPM 2.0 Part 1 §24 (credential protection) and Annex C (ECDH seed, KDFe, KDFa), for the
//! TCG EK template L-2 (ECC NIST P-256, SHA-256 name, AES-128-CFB); checked against swtpm in
//! the edgeimg-tpm tests.

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the endorsement key is not a P-256 point")]
    BadEk,
    #[error("the attestation key's public area is malformed: {0}")]
    BadAk(String),
    #[error("the attestation key is not a restricted, fixed-TPM signing key made in the TPM (attributes {0:#010x})")]
    AkAttributes(u32),
    #[error("the attestation key's public area is not the key the device enrolled")]
    AkMismatch,
    #[error("the credential secret must be 1 to 32 bytes")]
    Secret,
    #[error("the ephemeral key is not a valid P-256 scalar")]
    Ephemeral,
}

/// What the device hands to TPM2_ActivateCredential: the contents of TPM2B_ID_OBJECT and
/// TPM2B_ENCRYPTED_SECRET (without their size prefixes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id_object: Vec<u8>,
    pub encrypted_secret: Vec<u8>,
}

const TPM_ALG_SHA256: u16 = 0x000b;
const TPM_ALG_ECC: u16 = 0x0023;
// TPMA_OBJECT bits an attestation key must have (Part 2 §8.3).
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN: u32 = 1 << 18;

/// The TPM name of an object: nameAlg || SHA-256(TPMT_PUBLIC).
pub fn name(tpmt_public: &[u8]) -> Vec<u8> {
    let mut n = TPM_ALG_SHA256.to_be_bytes().to_vec();
    n.extend_from_slice(&Sha256::digest(tpmt_public));
    n
}

/// Check that `tpmt_public` is an attestation key worth binding (ECC, SHA-256 name,
/// restricted signing, fixedTPM, fixedParent, generated in the TPM) whose point is
/// `ak_sec1`, the key the device enrolled.
pub fn check_ak_public(tpmt_public: &[u8], ak_sec1: &[u8]) -> Result<(), CredentialError> {
    let bad = |m: &str| CredentialError::BadAk(m.into());
    let u16_at = |o: usize| tpmt_public.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let (Some(kind), Some(name_alg)) = (u16_at(0), u16_at(2)) else { return Err(bad("too short")) };
    if kind != TPM_ALG_ECC || name_alg != TPM_ALG_SHA256 {
        return Err(bad("not an ECC key with a SHA-256 name"));
    }
    let attrs =
        tpmt_public.get(4..8).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(|| bad("too short"))?;
    let need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN;
    if attrs & need != need || attrs & DECRYPT != 0 {
        return Err(CredentialError::AkAttributes(attrs));
    }
    // The unique field (TPMS_ECC_POINT: TPM2B x, TPM2B y) closes the structure.
    let len = tpmt_public.len();
    if len < 2 * (2 + 32) {
        return Err(bad("too short for a P-256 point"));
    }
    let (x, y) = (&tpmt_public[len - 68..len - 34], &tpmt_public[len - 34..]);
    if x[..2] != [0, 32] || y[..2] != [0, 32] {
        return Err(bad("the unique field is not a P-256 point"));
    }
    let mut point = vec![4u8];
    point.extend_from_slice(&x[2..]);
    point.extend_from_slice(&y[2..]);
    if point != ak_sec1 {
        return Err(CredentialError::AkMismatch);
    }
    Ok(())
}

/// KDFa (Part 1 §11.4.10.2) with SHA-256: HMAC(key, i || label || 0 || u || v || bits).
fn kdfa(key: &[u8], label: &str, u: &[u8], v: &[u8], bits: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 1u32;
    while out.len() * 8 < bits as usize {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(&i.to_be_bytes());
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(u);
        m.update(v);
        m.update(&bits.to_be_bytes());
        out.extend_from_slice(&m.finalize().into_bytes());
        i += 1;
    }
    out.truncate(bits as usize / 8);
    out
}

/// KDFe (Part 1 §11.4.10.3) with SHA-256: H(i || Z || label || 0 || u || v).
fn kdfe(z: &[u8], label: &str, u: &[u8], v: &[u8], bits: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 1u32;
    while out.len() * 8 < bits as usize {
        let mut h = Sha256::new();
        h.update(i.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(u);
        h.update(v);
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(bits as usize / 8);
    out
}

fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// Encrypt `secret` to the EK (`ek_sec1`, an uncompressed P-256 point) for the object named
/// `ak_name`. `ephemeral` is a fresh random P-256 scalar: never reuse one.
pub fn make_credential(
    ek_sec1: &[u8],
    ak_name: &[u8],
    secret: &[u8],
    ephemeral: &[u8; 32],
) -> Result<Credential, CredentialError> {
    if secret.is_empty() || secret.len() > 32 {
        return Err(CredentialError::Secret);
    }
    let ep = p256::EncodedPoint::from_bytes(ek_sec1).map_err(|_| CredentialError::BadEk)?;
    let ek: p256::PublicKey = Option::from(p256::PublicKey::from_encoded_point(&ep)).ok_or(CredentialError::BadEk)?;
    let d = p256::NonZeroScalar::try_from(&ephemeral[..]).map_err(|_| CredentialError::Ephemeral)?;
    let qe = p256::PublicKey::from_secret_scalar(&d).to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(d, ek.as_affine());
    let (qe_x, qe_y) = (qe.x().ok_or(CredentialError::Ephemeral)?, qe.y().ok_or(CredentialError::Ephemeral)?);
    let ek_point = ek.to_encoded_point(false);
    let ek_x = ek_point.x().ok_or(CredentialError::BadEk)?;
    let seed = kdfe(shared.raw_secret_bytes(), "IDENTITY", qe_x, ek_x, 256);

    let sym = kdfa(&seed, "STORAGE", ak_name, &[], 128);
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut enc_identity = tpm2b(secret);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym, &[0u8; 16])
        .expect("AES-128 key and IV lengths")
        .encrypt(&mut enc_identity);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key).expect("HMAC takes any key length");
    m.update(&enc_identity);
    m.update(ak_name);
    let outer = m.finalize().into_bytes();

    let mut id_object = tpm2b(&outer);
    id_object.extend_from_slice(&enc_identity);
    let mut encrypted_secret = tpm2b(qe_x);
    encrypted_secret.extend_from_slice(&tpm2b(qe_y));
    Ok(Credential { id_object, encrypted_secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_matches_the_reference_vector() {
        // KDFa(SHA-256) with a 32-byte key, label "STORAGE", context "name", 128 bits,
        // computed independently with Python's hmac module.
        let key = [0x11u8; 32];
        let got = hex::encode(kdfa(&key, "STORAGE", b"name", b"", 128));
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        m.update(b"\x00\x00\x00\x01STORAGE\x00name\x00\x00\x00\x80");
        assert_eq!(got, hex::encode(&m.finalize().into_bytes()[..16]));
    }

    #[test]
    fn refuses_bad_inputs() {
        let ek = p256::PublicKey::from_secret_scalar(&p256::NonZeroScalar::try_from(&[7u8; 32][..]).unwrap())
            .to_encoded_point(false);
        assert!(make_credential(ek.as_bytes(), b"n", &[1; 32], &[9; 32]).is_ok());
        assert_eq!(make_credential(b"\x04junk", b"n", &[1; 32], &[9; 32]), Err(CredentialError::BadEk));
        assert_eq!(make_credential(ek.as_bytes(), b"n", &[], &[9; 32]), Err(CredentialError::Secret));
        assert_eq!(make_credential(ek.as_bytes(), b"n", &[1; 33], &[9; 32]), Err(CredentialError::Secret));
        assert_eq!(make_credential(ek.as_bytes(), b"n", &[1; 32], &[0; 32]), Err(CredentialError::Ephemeral));
    }
}
