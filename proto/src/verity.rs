//! The dm-verity hash device as `veritysetup format` writes it (format 1, sha256, 4 KiB
//! blocks, with superblock), computed from the data. A device that rebuilt a root image
//! from a delta computes its hash tree instead of downloading it: the tree of moved data
//! changes all over, which no block delta captures. The result is checked against the
//! signed sha256 of the published tree, so any difference here means a download, never
//! a wrong tree.
//!
//! Layout: a 4 KiB block with the superblock, then the tree levels from the top (one
//! block) down to the level that hashes the data blocks; each hash is sha256(salt ‖ block),
//! 128 per hash block, zero-padded.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK: usize = BLOCK / DIGEST;

/// What `veritysetup format` was given, enough to compute the same hash device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityParams {
    /// Hex.
    pub salt: String,
    /// The hash device's UUID (in its superblock).
    pub uuid: String,
    pub data_blocks: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("dm-verity parameters: {0}")]
pub struct VerityError(String);

impl VerityParams {
    fn salt_bytes(&self) -> Result<Vec<u8>, VerityError> {
        let s = hex::decode(&self.salt).map_err(|e| VerityError(format!("salt: {e}")))?;
        if s.len() > 256 {
            return Err(VerityError(format!("a salt of {} bytes (at most 256)", s.len())));
        }
        Ok(s)
    }

    fn uuid_bytes(&self) -> Result<[u8; 16], VerityError> {
        let hexed: String = self.uuid.chars().filter(|c| *c != '-').collect();
        hex::decode(&hexed)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| VerityError(format!("uuid {} is not 16 bytes of hex", self.uuid)))
    }

    /// The 4 KiB superblock block.
    pub fn superblock(&self) -> Result<Vec<u8>, VerityError> {
        let salt = self.salt_bytes()?;
        let mut sb = vec![0u8; BLOCK];
        sb[0..8].copy_from_slice(b"verity\0\0");
        sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
        sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
        sb[16..32].copy_from_slice(&self.uuid_bytes()?);
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        sb[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        sb[88..88 + salt.len()].copy_from_slice(&salt);
        Ok(sb)
    }
}

fn hash(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Pack digests into zero-padded hash blocks.
fn pack(digests: &[[u8; DIGEST]]) -> Vec<u8> {
    let mut out = vec![0u8; digests.len().div_ceil(PER_BLOCK).max(1) * BLOCK];
    for (i, d) in digests.iter().enumerate() {
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
    }
    out
}

/// The whole hash device and the root hash, from the data blocks read one by one by
/// `next_block` (called `data_blocks` times, each time filling a 4 KiB buffer).
pub fn hash_device(
    p: &VerityParams,
    mut next_block: impl FnMut(&mut [u8]) -> std::io::Result<()>,
) -> Result<(Vec<u8>, [u8; DIGEST]), VerityError> {
    let salt = p.salt_bytes()?;
    let mut buf = vec![0u8; BLOCK];
    let mut leaves = Vec::with_capacity(p.data_blocks as usize);
    for i in 0..p.data_blocks {
        next_block(&mut buf).map_err(|e| VerityError(format!("reading data block {i}: {e}")))?;
        leaves.push(hash(&salt, &buf));
    }
    // Levels from the data upwards, until one block holds every digest of the level.
    let mut levels = vec![pack(&leaves)];
    while levels.last().is_some_and(|l| l.len() > BLOCK) {
        let below = levels.last().map(|l| l.chunks(BLOCK).map(|b| hash(&salt, b)).collect::<Vec<_>>());
        levels.push(pack(&below.unwrap_or_default()));
    }
    let top = levels.last().map(|l| hash(&salt, l)).unwrap_or_default();
    let mut out = p.superblock()?;
    for l in levels.iter().rev() {
        out.extend_from_slice(l);
    }
    Ok((out, top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_layout_follow_the_levels() {
        let p = VerityParams {
            salt: "ab".repeat(32),
            uuid: "00112233-4455-6677-8899-aabbccddeeff".into(),
            data_blocks: 200,
        };
        let mut n = 0u8;
        let (dev, root) = hash_device(&p, |b| {
            b.fill(n);
            n = n.wrapping_add(1);
            Ok(())
        })
        .unwrap();
        // 200 leaves → 2 hash blocks → 1 top block; plus the superblock.
        assert_eq!(dev.len(), 4 * BLOCK);
        assert_eq!(&dev[0..8], b"verity\0\0");
        assert_eq!(&dev[16..18], &[0x00, 0x11]);
        assert_eq!(root, hash(&[0xab; 32], &dev[BLOCK..2 * BLOCK]));
        // The top block holds the digests of the two leaf-level blocks.
        assert_eq!(&dev[BLOCK..BLOCK + 32], &hash(&[0xab; 32], &dev[2 * BLOCK..3 * BLOCK]));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let p = VerityParams { salt: "zz".into(), uuid: "x".into(), data_blocks: 1 };
        assert!(hash_device(&p, |_| Ok(())).is_err());
    }
}
