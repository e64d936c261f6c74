//! Delta updates: how a device builds a slot from the blocks it already has plus a little
//! downloaded data, instead of downloading the whole artifact.
//!
//! Two files per artifact (root image, hash tree), both TUF targets named by the release
//! manifest, so they are exactly as trusted as the image itself:
//!
//! - a **delta** from one earlier release: for each run of target blocks, either "copy
//!   these source blocks", "zeros", or "this zstd frame"; made at publish time for the
//!   last few releases of the image (what most of a fleet runs);
//! - a **block index** of the new artifact: a truncated sha256 per 4 KiB block, so that a
//!   device on any other version finds the blocks it already has and fetches only the
//!   others, by HTTP range, from the full artifact.
//!
//! Either way the device checks the whole result against the artifact's signed sha256
//! before the slot can boot, and falls back to the full download on any mismatch.
//!
//! File layout (all integers little-endian):
//!
//! ```text
//! delta:  "EIDELTA1" | u64 header length | zstd(JSON DeltaHeader) | data frames …
//! index:  "EIINDEX1" | u64 header length | JSON IndexHeader       | 16-byte hash per block …
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;
pub const DELTA_MAGIC: &[u8; 8] = b"EIDELTA1";
pub const INDEX_MAGIC: &[u8; 8] = b"EIINDEX1";
pub const DELTA_FORMAT: u32 = 1;
/// Bytes of sha256 kept per block in an index. 128 bits: a collision would only make a
/// device fetch the right data after its whole-artifact check failed.
pub const INDEX_HASH_LEN: usize = 16;
/// Headers larger than this are refused before they are read (a hostile length field).
pub const MAX_HEADER: u64 = 64 << 20;

/// Size and sha256 of a whole artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub size: u64,
    pub sha256: String,
}

/// One run of target blocks, in target order. `blocks` counts whole blocks; the last run
/// may end past the target size (the tail of its last block is cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Op {
    /// Source blocks `src .. src + blocks`.
    Copy {
        src: u64,
        blocks: u64,
    },
    Zero {
        blocks: u64,
    },
    /// A zstd frame at `offset` (from the start of the data section), `len` bytes long,
    /// that decompresses to exactly `blocks` blocks.
    Data {
        blocks: u64,
        offset: u64,
        len: u64,
    },
}

impl Op {
    pub fn blocks(&self) -> u64 {
        match *self {
            Op::Copy { blocks, .. } | Op::Zero { blocks } | Op::Data { blocks, .. } => blocks,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaHeader {
    pub format: u32,
    /// Artifact name in the payload (root.img, root.verity).
    pub artifact: String,
    pub block_size: u64,
    pub source: Blob,
    pub target: Blob,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexHeader {
    pub format: u32,
    pub artifact: String,
    pub block_size: u64,
    pub hash_len: u32,
    pub target: Blob,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaFormatError {
    #[error("not an edgeimg {0} (bad magic)")]
    Magic(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl DeltaHeader {
    /// The header must describe the whole target, in blocks of the one size we use, with
    /// frames inside the data section of `data_len` bytes.
    pub fn check(&self, data_len: u64) -> Result<(), DeltaFormatError> {
        let bad = |m: String| Err(DeltaFormatError::Invalid(m));
        if self.format != DELTA_FORMAT {
            return bad(format!(
                "delta format {} (this updater reads {DELTA_FORMAT}): update the updater",
                self.format
            ));
        }
        if self.block_size != BLOCK {
            return bad(format!("block size {} (expected {BLOCK})", self.block_size));
        }
        let source_blocks = self.source.size.div_ceil(BLOCK);
        let mut covered = 0u64;
        for (i, op) in self.ops.iter().enumerate() {
            if op.blocks() == 0 {
                return bad(format!("operation {i} covers no blocks"));
            }
            match *op {
                Op::Copy { src, blocks } if src.checked_add(blocks).is_none_or(|end| end > source_blocks) => {
                    return bad(format!(
                        "operation {i} copies source blocks {src}..{} but the source has {source_blocks}",
                        src.saturating_add(blocks)
                    ))
                }
                Op::Data { offset, len, .. } if offset.checked_add(len).is_none_or(|end| end > data_len) => {
                    return bad(format!(
                        "operation {i} reads data bytes {offset}..{} but the delta carries {data_len}",
                        offset.saturating_add(len)
                    ))
                }
                _ => {}
            }
            covered = covered.saturating_add(op.blocks());
        }
        if covered != self.target.size.div_ceil(BLOCK) {
            return bad(format!(
                "operations cover {covered} blocks but the target has {}",
                self.target.size.div_ceil(BLOCK)
            ));
        }
        Ok(())
    }
}

/// Check a file's first 16 bytes (magic, header length) and return the header length.
pub fn header_len(first: &[u8], magic: &[u8; 8], what: &'static str, file_len: u64) -> Result<u64, DeltaFormatError> {
    if first.len() < 16 || &first[..8] != magic {
        return Err(DeltaFormatError::Magic(what));
    }
    let len = u64::from_le_bytes(first[8..16].try_into().unwrap_or_default());
    if len > MAX_HEADER || len > file_len.saturating_sub(16) {
        return Err(DeltaFormatError::Invalid(format!("{what} header of {len} bytes does not fit the file")));
    }
    Ok(len)
}

/// Split a whole file into (header bytes, rest).
pub fn split<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), DeltaFormatError> {
    let len = header_len(bytes, magic, what, bytes.len() as u64)?;
    Ok(bytes[16..].split_at(len as usize))
}

/// Index hash of one block (zero-padded to the block size).
pub fn block_hash(block: &[u8]) -> [u8; INDEX_HASH_LEN] {
    let mut h = Sha256::new();
    h.update(block);
    if (block.len() as u64) < BLOCK {
        h.update(vec![0u8; BLOCK as usize - block.len()]);
    }
    let d = h.finalize();
    let mut out = [0u8; INDEX_HASH_LEN];
    out.copy_from_slice(&d[..INDEX_HASH_LEN]);
    out
}

/// Write the fixed prefix (magic and header length).
pub fn prefix(magic: &[u8; 8], header_len: usize) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&(header_len as u64).to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ops: Vec<Op>, source: u64, target: u64) -> DeltaHeader {
        DeltaHeader {
            format: DELTA_FORMAT,
            artifact: "root.img".into(),
            block_size: BLOCK,
            source: Blob { size: source, sha256: String::new() },
            target: Blob { size: target, sha256: String::new() },
            ops,
        }
    }

    #[test]
    fn a_header_must_cover_the_target_and_stay_inside_source_and_data() {
        let ok = header(
            vec![Op::Copy { src: 0, blocks: 2 }, Op::Zero { blocks: 1 }, Op::Data { blocks: 1, offset: 0, len: 10 }],
            2 * BLOCK,
            4 * BLOCK - 5,
        );
        assert_eq!(ok.check(10), Ok(()));
        let short = header(vec![Op::Copy { src: 0, blocks: 1 }], 2 * BLOCK, 2 * BLOCK);
        assert!(short.check(0).unwrap_err().to_string().contains("cover 1 blocks but the target has 2"));
        let outside = header(vec![Op::Copy { src: 1, blocks: 2 }], 2 * BLOCK, 2 * BLOCK);
        assert!(outside.check(0).unwrap_err().to_string().contains("the source has 2"));
        let overflow = header(vec![Op::Copy { src: u64::MAX, blocks: 2 }], 2 * BLOCK, 2 * BLOCK);
        assert!(overflow.check(0).is_err());
        let data = header(vec![Op::Data { blocks: 1, offset: 5, len: 10 }], 0, BLOCK);
        assert!(data.check(14).unwrap_err().to_string().contains("carries 14"));
    }

    #[test]
    fn split_refuses_wrong_magic_and_lengths() {
        let mut f = prefix(DELTA_MAGIC, 3);
        f.extend_from_slice(b"abcdef");
        assert_eq!(split(&f, DELTA_MAGIC, "delta"), Ok((&b"abc"[..], &b"def"[..])));
        assert_eq!(split(&f, INDEX_MAGIC, "index"), Err(DeltaFormatError::Magic("index")));
        let mut long = prefix(DELTA_MAGIC, 100);
        long.extend_from_slice(b"abc");
        assert!(split(&long, DELTA_MAGIC, "delta").is_err());
    }

    #[test]
    fn short_blocks_hash_as_zero_padded() {
        assert_eq!(block_hash(b"x"), block_hash(&[b"x".as_slice(), &[0u8; 4095]].concat()));
        assert_ne!(block_hash(b"x"), block_hash(b"y"));
    }
}
