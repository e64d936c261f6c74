//! Making deltas and block indexes (format in `edgeimg_proto::delta`).
//!
//! A target block becomes, in this order of preference: the source block at the same
//! place, the source block after the one the previous target block copied (runs stay
//! long), any source block with the same content (found by hash, confirmed byte for
//! byte), zeros, or new data. New data is cut into zstd frames of at most 4 MiB.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use edgeimg_proto::delta::{
    block_hash, prefix, Blob, DeltaHeader, IndexHeader, Op, BLOCK, DELTA_FORMAT, DELTA_MAGIC, INDEX_HASH_LEN,
    INDEX_MAGIC,
};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// zstd level of new data: deltas are made once and downloaded by many devices.
pub const LEVEL: i32 = 19;
const MAX_FRAME_BLOCKS: u64 = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeltaStats {
    pub ops: usize,
    pub copied_blocks: u64,
    pub zero_blocks: u64,
    pub new_blocks: u64,
    /// Compressed new data.
    pub data_bytes: u64,
    /// The whole delta file.
    pub file_bytes: u64,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })
}

fn blob(bytes: &[u8]) -> Blob {
    Blob { size: bytes.len() as u64, sha256: hex::encode(Sha256::digest(bytes)) }
}

fn block(bytes: &[u8], i: u64) -> &[u8] {
    let start = (i * BLOCK) as usize;
    &bytes[start.min(bytes.len())..((i + 1) * BLOCK).min(bytes.len() as u64) as usize]
}

/// Two blocks are the same if their bytes are, the shorter one zero-padded.
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n] && a[n..].iter().all(|&x| x == 0) && b[n..].iter().all(|&x| x == 0)
}

enum Choice {
    Copy(u64),
    Zero,
    New,
}

/// Delta of `target` against `source`, both whole artifacts in memory.
pub fn make(artifact: &str, source: &[u8], target: &[u8]) -> Result<(Vec<u8>, DeltaStats)> {
    let blocks = |b: &[u8]| (b.len() as u64).div_ceil(BLOCK);
    let (nsrc, ntgt) = (blocks(source), blocks(target));
    let mut by_hash: HashMap<[u8; INDEX_HASH_LEN], u64> = HashMap::with_capacity(nsrc as usize);
    for i in (0..nsrc).rev() {
        by_hash.insert(block_hash(block(source, i)), i);
    }
    let mut choices = Vec::with_capacity(ntgt as usize);
    let mut prev: Option<u64> = None;
    for i in 0..ntgt {
        let t = block(target, i);
        let next = prev.map(|p| p + 1);
        let c = if i < nsrc && same(block(source, i), t) {
            Choice::Copy(i)
        } else if let Some(n) = next.filter(|&n| n < nsrc && same(block(source, n), t)) {
            Choice::Copy(n)
        } else if t.iter().all(|&b| b == 0) {
            Choice::Zero
        } else if let Some(&j) = by_hash.get(&block_hash(t)).filter(|&&j| same(block(source, j), t)) {
            Choice::Copy(j)
        } else {
            Choice::New
        };
        prev = match c {
            Choice::Copy(j) => Some(j),
            _ => None,
        };
        choices.push(c);
    }

    let mut ops: Vec<Op> = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let mut stats = DeltaStats::default();
    let mut i = 0u64;
    while i < ntgt {
        let start = i;
        match choices[i as usize] {
            Choice::Copy(src) => {
                while i < ntgt && matches!(choices[i as usize], Choice::Copy(j) if j == src + (i - start)) {
                    i += 1;
                }
                ops.push(Op::Copy { src, blocks: i - start });
                stats.copied_blocks += i - start;
            }
            Choice::Zero => {
                while i < ntgt && matches!(choices[i as usize], Choice::Zero) {
                    i += 1;
                }
                ops.push(Op::Zero { blocks: i - start });
                stats.zero_blocks += i - start;
            }
            Choice::New => {
                while i < ntgt && i - start < MAX_FRAME_BLOCKS && matches!(choices[i as usize], Choice::New) {
                    i += 1;
                }
                let mut raw = target[(start * BLOCK) as usize..((i * BLOCK) as usize).min(target.len())].to_vec();
                raw.resize(((i - start) * BLOCK) as usize, 0);
                let frame = zstd::bulk::compress(&raw, LEVEL)
                    .map_err(|e| Error::Invalid(format!("compressing delta data: {e}")))?;
                ops.push(Op::Data { blocks: i - start, offset: data.len() as u64, len: frame.len() as u64 });
                data.extend_from_slice(&frame);
                stats.new_blocks += i - start;
            }
        }
    }
    let header = DeltaHeader {
        format: DELTA_FORMAT,
        artifact: artifact.into(),
        block_size: BLOCK,
        source: blob(source),
        target: blob(target),
        ops,
    };
    stats.ops = header.ops.len();
    stats.data_bytes = data.len() as u64;
    let json = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    let packed =
        zstd::bulk::compress(&json, LEVEL).map_err(|e| Error::Invalid(format!("compressing delta header: {e}")))?;
    let mut out = prefix(DELTA_MAGIC, packed.len());
    out.extend_from_slice(&packed);
    out.extend_from_slice(&data);
    stats.file_bytes = out.len() as u64;
    Ok((out, stats))
}

/// Block index of a whole artifact.
pub fn index(artifact: &str, target: &[u8]) -> Result<Vec<u8>> {
    let header = IndexHeader {
        format: DELTA_FORMAT,
        artifact: artifact.into(),
        block_size: BLOCK,
        hash_len: INDEX_HASH_LEN as u32,
        target: blob(target),
    };
    let json = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    let n = (target.len() as u64).div_ceil(BLOCK);
    let mut out = prefix(INDEX_MAGIC, json.len());
    out.reserve(json.len() + n as usize * INDEX_HASH_LEN);
    out.extend_from_slice(&json);
    for i in 0..n {
        out.extend_from_slice(&block_hash(block(target, i)));
    }
    Ok(out)
}

/// Make the delta of two files into `out`.
pub fn make_files(artifact: &str, source: &Path, target: &Path, out: &Path) -> Result<DeltaStats> {
    let (bytes, stats) = make(artifact, &read(source)?, &read(target)?)?;
    write(out, &bytes)?;
    Ok(stats)
}

pub fn index_file(artifact: &str, target: &Path, out: &Path) -> Result<u64> {
    let bytes = index(artifact, &read(target)?)?;
    write(out, &bytes)?;
    Ok(bytes.len() as u64)
}

fn write(out: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: out.into(), source };
    let mut f = std::fs::File::create(out).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// What a device that has `source` would fetch with the index of `target` (new blocks
/// only, by range: the index itself is counted by the caller).
pub fn index_fetch_bytes(source: &[u8], target: &[u8]) -> u64 {
    let n = (source.len() as u64).div_ceil(BLOCK);
    let have: std::collections::HashSet<[u8; INDEX_HASH_LEN]> = (0..n).map(|i| block_hash(block(source, i))).collect();
    let zero = block_hash(&[]);
    (0..(target.len() as u64).div_ceil(BLOCK))
        .map(|i| block(target, i))
        .filter(|b| {
            let h = block_hash(b);
            h != zero && !have.contains(&h)
        })
        .map(|b| b.len() as u64)
        .sum()
}

/// Apply a delta in memory (for tests and `delta-stats`; the device streams instead).
pub fn apply(delta: &[u8], source: &[u8]) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Invalid(m);
    let (packed, data) = edgeimg_proto::delta::split(delta, DELTA_MAGIC, "delta").map_err(|e| bad(e.to_string()))?;
    let json = zstd::stream::decode_all(packed).map_err(|e| bad(format!("delta header: {e}")))?;
    let h: DeltaHeader = serde_json::from_slice(&json).map_err(|e| bad(format!("delta header: {e}")))?;
    h.check(data.len() as u64).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(h.target.size as usize);
    for op in &h.ops {
        match *op {
            Op::Copy { src, blocks } => {
                for j in src..src + blocks {
                    let b = block(source, j);
                    out.extend_from_slice(b);
                    out.resize(out.len() + BLOCK as usize - b.len(), 0);
                }
            }
            Op::Zero { blocks } => out.resize(out.len() + (blocks * BLOCK) as usize, 0),
            Op::Data { blocks, offset, len } => {
                let raw =
                    zstd::bulk::decompress(&data[offset as usize..(offset + len) as usize], (blocks * BLOCK) as usize)
                        .map_err(|e| bad(format!("delta data: {e}")))?;
                out.extend_from_slice(&raw);
            }
        }
    }
    out.truncate(h.target.size as usize);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of pseudo-random bytes, no two alike across seeds.
    fn image(seed: u8, blocks: usize) -> Vec<u8> {
        (0..blocks * BLOCK as usize / 32)
            .flat_map(|i| Sha256::digest([&[seed][..], &i.to_le_bytes()].concat()))
            .collect()
    }

    #[test]
    fn unchanged_blocks_are_copied_and_changed_ones_carried() {
        let src = image(1, 64);
        let mut tgt = src.clone();
        tgt[5 * 4096 + 7] ^= 0xff; // one changed block
        tgt.splice(10 * 4096..10 * 4096, block(&src, 40).to_vec()); // a moved block shifts the rest
        tgt.extend_from_slice(&[0u8; 3 * 4096]);
        tgt.extend_from_slice(b"tail");
        let (d, s) = make("root.img", &src, &tgt).unwrap();
        assert_eq!(apply(&d, &src).unwrap(), tgt);
        assert_eq!(s.new_blocks, 2, "the changed block and the 4-byte tail: {s:?}");
        assert_eq!(s.zero_blocks, 3);
        assert_eq!(s.copied_blocks, 65 - 1);
        assert!(s.ops <= 8, "{s:?}");
        assert!(d.len() < 3 * 4096, "{} bytes", d.len());
    }

    #[test]
    fn identical_images_need_a_few_bytes_and_unrelated_ones_all_data() {
        let src = image(1, 256);
        let (d, s) = make("root.img", &src, &src).unwrap();
        assert_eq!((s.ops, s.new_blocks), (1, 0));
        assert!(d.len() < 200, "{} bytes", d.len());
        let other = image(2, 256);
        let (d, s) = make("root.img", &src, &other).unwrap();
        assert_eq!(s.new_blocks, 256);
        assert_eq!(apply(&d, &src).unwrap(), other);
        assert_eq!(apply(&d, &[]).unwrap(), other, "all data: no source needed");
    }

    #[test]
    fn index_counts_only_blocks_the_source_lacks() {
        let src = image(1, 16);
        let mut tgt = src.clone();
        tgt[3 * 4096] ^= 1;
        tgt.extend_from_slice(&[0u8; 4096]);
        assert_eq!(index_fetch_bytes(&src, &tgt), 4096);
        let idx = index("root.img", &tgt).unwrap();
        let (h, hashes) = edgeimg_proto::delta::split(&idx, INDEX_MAGIC, "index").unwrap();
        let h: IndexHeader = serde_json::from_slice(h).unwrap();
        assert_eq!(h.target.size, tgt.len() as u64);
        assert_eq!(hashes.len(), 17 * INDEX_HASH_LEN);
    }
}
