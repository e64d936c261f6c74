//! TUF 1.0 metadata (specification §4) and signature verification.
//!
//! Signatures are checked over the canonical JSON (OLPC) of the `signed` object exactly as
//! received, so fields this client does not know still count.

use std::collections::{BTreeMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TufError;

/// Metadata as received: the typed view plus the raw `signed` value the signatures cover.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    pub signed: T,
    pub raw_signed: Value,
    pub signatures: Vec<Signature>,
    /// The bytes as received (stored as-is when trusted).
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Key {
    pub keytype: String,
    pub scheme: String,
    pub keyval: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    #[serde(rename = "_type")]
    pub kind: String,
    pub version: u64,
    pub expires: String,
    pub keys: BTreeMap<String, Key>,
    pub roles: BTreeMap<String, RoleKeys>,
    #[serde(default)]
    pub consistent_snapshot: bool,
    pub spec_version: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MetaFile {
    pub version: u64,
    #[serde(default)]
    pub length: Option<u64>,
    #[serde(default)]
    pub hashes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub kind: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub kind: String,
    pub version: u64,
    pub expires: String,
    pub meta: BTreeMap<String, MetaFile>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(default)]
    pub custom: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DelegatedRole {
    pub name: String,
    pub keyids: Vec<String>,
    pub threshold: u64,
    #[serde(default)]
    pub terminating: bool,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub path_hash_prefixes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Delegations {
    pub keys: BTreeMap<String, Key>,
    pub roles: Vec<DelegatedRole>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub kind: String,
    pub version: u64,
    pub expires: String,
    #[serde(default)]
    pub targets: BTreeMap<String, TargetFile>,
    #[serde(default)]
    pub delegations: Option<Delegations>,
}

pub trait RoleType: DeserializeOwned {
    const TYPE: &'static str;
    fn kind(&self) -> &str;
    fn version(&self) -> u64;
    fn expires(&self) -> &str;
}

macro_rules! role {
    ($t:ty, $name:literal) => {
        impl RoleType for $t {
            const TYPE: &'static str = $name;
            fn kind(&self) -> &str {
                &self.kind
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn expires(&self) -> &str {
                &self.expires
            }
        }
    };
}
role!(Root, "root");
role!(Timestamp, "timestamp");
role!(Snapshot, "snapshot");
role!(Targets, "targets");

/// Parse metadata of a role type, checking `_type` (so e.g. a timestamp file cannot pass
/// for a snapshot).
pub fn parse<T: RoleType>(bytes: &[u8], role: &str) -> Result<Signed<T>, TufError> {
    #[derive(Deserialize)]
    struct Envelope {
        signed: Value,
        signatures: Vec<Signature>,
    }
    let bad = |m: String| TufError::Malformed { role: role.into(), message: m };
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    // §4.2: "The keyid MUST be unique in the signatures array."
    let mut seen = HashSet::new();
    if let Some(s) = env.signatures.iter().find(|s| !seen.insert(s.keyid.as_str())) {
        return Err(bad(format!("two signatures with the key id {}", s.keyid)));
    }
    let signed: T = serde_json::from_value(env.signed.clone()).map_err(|e| bad(e.to_string()))?;
    if signed.kind() != T::TYPE {
        return Err(bad(format!("_type is `{}`, expected `{}`", signed.kind(), T::TYPE)));
    }
    Ok(Signed { signed, raw_signed: env.signed, signatures: env.signatures, bytes: bytes.to_vec() })
}

/// Canonical JSON (OLPC) of a value: what signatures are made over.
pub fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    // Serializing a Value cannot fail.
    let _ = v.serialize(&mut ser);
    out
}

/// The key inside a PEM SubjectPublicKeyInfo (for RSA: the PKCS#1 RSAPublicKey).
fn spki_key(pem: &str) -> Option<Vec<u8>> {
    use spki::der::DecodePem;
    let info = spki::SubjectPublicKeyInfoOwned::from_pem(pem).ok()?;
    info.subject_public_key.as_bytes().map(<[u8]>::to_vec)
}

/// Verify one signature with a key: the key types of the TUF specification (§4.2): ed25519
/// (the keys edgeimg makes), ecdsa-sha2-nistp256 and rsassa-pss-sha256.
fn verify_one(key: &Key, msg: &[u8], sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else { return false };
    let public = key.keyval.get("public").and_then(Value::as_str).unwrap_or("");
    match (key.keytype.as_str(), key.scheme.as_str()) {
        ("ed25519", "ed25519") => {
            let Some(pk) = hex::decode(public).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else { return false };
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else { return false };
            let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else { return false };
            vk.verify_strict(msg, &sig).is_ok()
        }
        ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
            use p256::ecdsa::signature::Verifier;
            use p256::pkcs8::DecodePublicKey;
            let vk = if public.contains("BEGIN PUBLIC KEY") {
                p256::ecdsa::VerifyingKey::from_public_key_pem(public).ok()
            } else {
                hex::decode(public).ok().and_then(|b| p256::ecdsa::VerifyingKey::from_sec1_bytes(&b).ok())
            };
            let Some(vk) = vk else { return false };
            let Ok(sig) = p256::ecdsa::Signature::from_der(&sig) else { return false };
            vk.verify(msg, &sig).is_ok()
        }
        ("rsa", "rsassa-pss-sha256") => {
            let Some(der) = spki_key(public) else { return false };
            ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PSS_2048_8192_SHA256, der)
                .verify(msg, &sig)
                .is_ok()
        }
        _ => false,
    }
}

/// Count distinct authorised keys with a valid signature; require `threshold` of them.
pub fn verify_threshold<T>(
    meta: &Signed<T>,
    role: &str,
    keys: &BTreeMap<String, Key>,
    keyids: &[String],
    threshold: u64,
) -> Result<(), TufError> {
    let msg = canonical(&meta.raw_signed);
    let allowed: HashSet<&str> = keyids.iter().map(String::as_str).collect();
    let mut good: HashSet<&str> = HashSet::new();
    for s in &meta.signatures {
        if !allowed.contains(s.keyid.as_str()) || good.contains(s.keyid.as_str()) {
            continue;
        }
        if let Some(k) = keys.get(&s.keyid) {
            if verify_one(k, &msg, &s.sig) {
                good.insert(s.keyid.as_str());
            }
        }
    }
    if threshold == 0 || (good.len() as u64) < threshold {
        return Err(TufError::Signature { role: role.into(), valid: good.len() as u64, threshold });
    }
    Ok(())
}

/// Check the hashes and length of a received file against metadata that names it.
/// Every hash this client knows (sha256, sha512) must match, and at least one must be known.
pub fn check_hashes(
    what: &str,
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&BTreeMap<String, String>>,
) -> Result<(), TufError> {
    use sha2::Digest;
    if let Some(l) = length {
        if bytes.len() as u64 != l {
            return Err(TufError::Length { what: what.into(), expected: l, actual: bytes.len() as u64 });
        }
    }
    if let Some(h) = hashes {
        let mut known = 0;
        for (alg, want) in h {
            let got = match alg.as_str() {
                "sha256" => hex::encode(sha2::Sha256::digest(bytes)),
                "sha512" => hex::encode(sha2::Sha512::digest(bytes)),
                _ => continue,
            };
            known += 1;
            if !got.eq_ignore_ascii_case(want) {
                return Err(TufError::Hash { what: what.into(), algorithm: alg.clone() });
            }
        }
        if known == 0 && !h.is_empty() {
            return Err(TufError::Hash { what: what.into(), algorithm: "none supported".into() });
        }
    }
    Ok(())
}

/// Whether a delegated role is trusted for a target path (§5.6.7.2): shell-style patterns
/// where `*` does not cross `/`, or hash prefixes of the path's sha256.
pub fn role_matches(role: &DelegatedRole, target: &str) -> bool {
    if let Some(prefixes) = &role.path_hash_prefixes {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(target.as_bytes()));
        return prefixes.iter().any(|p| h.starts_with(&p.to_ascii_lowercase()));
    }
    role.paths.as_ref().is_some_and(|ps| ps.iter().any(|p| glob_match(p, target)))
}

/// fnmatch-like: `*` and `?` never match `/`; the pattern and the path must have the same
/// number of path components.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pp: Vec<&str> = pattern.split('/').collect();
    let tp: Vec<&str> = path.split('/').collect();
    pp.len() == tp.len() && pp.iter().zip(&tp).all(|(p, t)| segment_match(p.as_bytes(), t.as_bytes()))
}

fn segment_match(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (Some(b'*'), _) => segment_match(&p[1..], t) || (!t.is_empty() && segment_match(p, &t[1..])),
        (Some(b'?'), Some(_)) => segment_match(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => segment_match(&p[1..], &t[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("channel~*", "channel~stable.json"));
        assert!(!glob_match("channel~*", "edge~b~1.0.0~release.json"));
        assert!(glob_match("targets/*.tgz", "targets/foo.tgz"));
        assert!(!glob_match("targets/*.tgz", "targets/sub/foo.tgz"));
        assert!(!glob_match("*", "a/b"));
        assert!(glob_match("foo-version-?.tgz", "foo-version-2.tgz"));
        assert!(!glob_match("foo-version-?.tgz", "foo-version-alpha.tgz"));
    }

    #[test]
    fn canonical_json_sorts_and_compacts() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": [true, "x\"y"]}"#).unwrap();
        assert_eq!(canonical(&v), br#"{"a":[true,"x\"y"],"b":1}"#);
    }

    #[test]
    fn hashes_and_lengths() {
        let mut h = BTreeMap::new();
        use sha2::Digest;
        h.insert("sha512".to_string(), hex::encode(sha2::Sha512::digest(b"abc")));
        assert!(check_hashes("t", b"abc", Some(3), Some(&h)).is_ok());
        assert!(check_hashes("t", b"abd", Some(3), Some(&h)).is_err());
        assert!(check_hashes("t", b"abc", Some(4), Some(&h)).is_err());
        let mut unknown = BTreeMap::new();
        unknown.insert("md5".to_string(), "00".to_string());
        assert!(check_hashes("t", b"abc", None, Some(&unknown)).is_err());
    }
}
