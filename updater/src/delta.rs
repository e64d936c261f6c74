//! Building an artifact in the inactive slot from the running slot's blocks: with a delta
//! made for the running release, or with the new artifact's block index (any release).
//!
//! The running slot is only ever opened read-only. Each function writes the target in
//! block order and reports how far it got (`progress(next_block)`, after an fsync), so a
//! power cut resumes from there; the caller then checks the whole artifact against its
//! signed sha256 and falls back to the full download on any mismatch.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use edgeimg_proto::delta::{
    block_hash, header_len, Blob, DeltaHeader, IndexHeader, Op, BLOCK, DELTA_FORMAT, DELTA_MAGIC, INDEX_HASH_LEN,
    INDEX_MAGIC, MAX_HEADER,
};
use edgeimg_proto::release::{DeltaSource, ReleaseArtifact};
use edgeimg_proto::verity::VerityParams;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

/// Why a delta or index could not be used. Every case falls back to the full download,
/// except `Network`, which is retried like any download.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("{0}")]
    Unusable(String),
    #[error("{0}")]
    Network(String),
}

fn unusable(m: impl Into<String>) -> DeltaError {
    DeltaError::Unusable(m.into())
}

fn io(what: &str, path: &Path) -> impl Fn(std::io::Error) -> DeltaError {
    let m = format!("{what} {}", path.display());
    move |e| unusable(format!("{m}: {e}"))
}

/// Sync and report progress about every 16 MiB of target.
const SYNC_BLOCKS: u64 = (16 << 20) / BLOCK;
/// Blocks moved per read or write.
const RUN: u64 = 256;

/// Writes target blocks in order, tracking where it stands.
struct Writer<'a> {
    dest: &'a File,
    path: &'a Path,
    size: u64,
    next: u64,
    synced: u64,
}

impl Writer<'_> {
    /// Write whole blocks at the current position (the part past the target size is cut).
    fn put(&mut self, data: &[u8], progress: &mut impl FnMut(u64)) -> Result<(), DeltaError> {
        let pos = self.next * BLOCK;
        let end = (pos + data.len() as u64).min(self.size);
        if end > pos {
            self.dest.write_all_at(&data[..(end - pos) as usize], pos).map_err(io("writing", self.path))?;
        }
        self.next += (data.len() as u64).div_ceil(BLOCK);
        crate::crashpoint::bytes(self.next * BLOCK);
        if self.next - self.synced >= SYNC_BLOCKS {
            self.dest.sync_data().map_err(io("syncing", self.path))?;
            self.synced = self.next;
            progress(self.next);
        }
        Ok(())
    }

    fn finish(self, progress: &mut impl FnMut(u64)) -> Result<(), DeltaError> {
        self.dest.sync_all().map_err(io("syncing", self.path))?;
        progress(self.next);
        Ok(())
    }
}

fn open_dest(dest: &Path, size: u64) -> Result<File, DeltaError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let f = File::options().write(true).create(true).truncate(false).open(dest).map_err(io("opening", dest))?;
    use std::os::unix::fs::FileTypeExt;
    let meta = f.metadata().map_err(io("reading", dest))?;
    if meta.file_type().is_block_device() {
        let mut g = &f;
        let cap = std::io::Seek::seek(&mut g, std::io::SeekFrom::End(0)).map_err(io("sizing", dest))?;
        if size > cap {
            return Err(unusable(format!(
                "{} is {size} bytes but {} holds only {cap}",
                "the artifact",
                dest.display()
            )));
        }
    }
    Ok(f)
}

/// Read source blocks `first..first + n` (zeros past its end).
fn read_blocks(src: &File, path: &Path, first: u64, n: u64, buf: &mut Vec<u8>) -> Result<(), DeltaError> {
    buf.clear();
    buf.resize((n * BLOCK) as usize, 0);
    let mut done = 0usize;
    while done < buf.len() {
        let r = src.read_at(&mut buf[done..], first * BLOCK + done as u64).map_err(io("reading", path))?;
        if r == 0 {
            break;
        }
        done += r;
    }
    Ok(())
}

fn read_header(f: &File, path: &Path, magic: &[u8; 8], what: &'static str) -> Result<(Vec<u8>, u64), DeltaError> {
    let len = f.metadata().map_err(io("reading", path))?.len();
    let mut first = [0u8; 16];
    f.read_exact_at(&mut first, 0).map_err(|_| unusable(format!("{what} {} is too short", path.display())))?;
    let hlen = header_len(&first, magic, what, len).map_err(|e| unusable(format!("{}: {e}", path.display())))?;
    let mut h = vec![0u8; hlen as usize];
    f.read_exact_at(&mut h, 16).map_err(io("reading", path))?;
    Ok((h, 16 + hlen))
}

fn expect_blob(what: &str, have: &Blob, size: u64, sha256: &str) -> Result<(), DeltaError> {
    if have.size != size || have.sha256 != sha256 {
        return Err(unusable(format!(
            "{what} is {} bytes with sha256 {}, not the {size} bytes with sha256 {sha256} expected",
            have.size, have.sha256
        )));
    }
    Ok(())
}

/// Read and check a delta's header: for `artifact`, from `from`.
pub fn delta_header(
    file: &Path,
    artifact: &ReleaseArtifact,
    from: &DeltaSource,
) -> Result<(DeltaHeader, u64), DeltaError> {
    let f = File::open(file).map_err(io("opening", file))?;
    let (packed, data_start) = read_header(&f, file, DELTA_MAGIC, "delta")?;
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(&packed[..])
        .and_then(|d| d.take(MAX_HEADER).read_to_end(&mut json))
        .map_err(|e| unusable(format!("delta header: {e}")))?;
    let h: DeltaHeader = serde_json::from_slice(&json).map_err(|e| unusable(format!("delta header: {e}")))?;
    let len = f.metadata().map_err(io("reading", file))?.len();
    h.check(len - data_start).map_err(|e| unusable(e.to_string()))?;
    if h.artifact != artifact.name {
        return Err(unusable(format!("the delta rebuilds {}, not {}", h.artifact, artifact.name)));
    }
    expect_blob("the delta's target", &h.target, artifact.size, &artifact.sha256)?;
    expect_blob(&format!("the delta's source (for {})", from.version), &h.source, from.size, &from.sha256)?;
    Ok((h, data_start))
}

/// Apply a downloaded, hash-checked delta: source blocks from `source` (read-only), new
/// data from the file, into `dest`, from target block `start` on.
pub fn apply_delta(
    file: &Path,
    artifact: &ReleaseArtifact,
    from: &DeltaSource,
    source: &Path,
    dest: &Path,
    start: u64,
    mut progress: impl FnMut(u64),
) -> Result<(), DeltaError> {
    let (h, data_start) = delta_header(file, artifact, from)?;
    let delta = File::open(file).map_err(io("opening", file))?;
    let src = File::open(source).map_err(io("opening", source))?;
    let out = open_dest(dest, h.target.size)?;
    let mut w = Writer { dest: &out, path: dest, size: h.target.size, next: start, synced: start };
    let mut buf = Vec::new();
    let mut frame = Vec::new();
    let mut pos = 0u64; // first target block of the current op
    for op in &h.ops {
        let n = op.blocks();
        if pos + n <= start {
            pos += n;
            continue;
        }
        // Resuming inside this op: skip the blocks written before the cut.
        let skip = start.saturating_sub(pos);
        match *op {
            Op::Copy { src: first, .. } => {
                let mut i = skip;
                while i < n {
                    let k = RUN.min(n - i);
                    read_blocks(&src, source, first + i, k, &mut buf)?;
                    w.put(&buf, &mut progress)?;
                    i += k;
                }
            }
            Op::Zero { .. } => {
                let mut i = skip;
                while i < n {
                    let k = RUN.min(n - i);
                    buf.clear();
                    buf.resize((k * BLOCK) as usize, 0);
                    w.put(&buf, &mut progress)?;
                    i += k;
                }
            }
            Op::Data { offset, len, .. } => {
                frame.resize(len as usize, 0);
                delta.read_exact_at(&mut frame, data_start + offset).map_err(io("reading", file))?;
                let raw = zstd::bulk::decompress(&frame, (n * BLOCK) as usize)
                    .map_err(|e| unusable(format!("delta data at byte {offset}: {e}")))?;
                if raw.len() as u64 != n * BLOCK {
                    return Err(unusable(format!(
                        "delta data at byte {offset} holds {} bytes, not {}",
                        raw.len(),
                        n * BLOCK
                    )));
                }
                w.put(&raw[(skip * BLOCK) as usize..], &mut progress)?;
            }
        }
        pos += n;
    }
    w.finish(&mut progress)
}

/// Read the written artifact back from the medium (page cache dropped) and check its
/// sha256; with `verity`, hash its blocks for dm-verity on the way and return the hash
/// device (one read for both), if its root hash is `roothash`.
pub fn verify(
    what: &str,
    dest: &Path,
    size: u64,
    sha256: &str,
    verity: Option<&VerityParams>,
    roothash: Option<&str>,
) -> Result<Option<Vec<u8>>, DeltaError> {
    let Some(p) = verity.filter(|p| p.data_blocks * BLOCK == size) else {
        return crate::install::verify(what, dest, size, sha256).map(|_| None).map_err(|e| unusable(e.to_string()));
    };
    let mut f = File::open(dest).map_err(io("opening", dest))?;
    use std::os::fd::AsFd;
    let _ = nix::fcntl::posix_fadvise(f.as_fd(), 0, size as i64, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    let mut whole = Sha256::new();
    // Read in 1 MiB pieces (a multiple of the block), hand out 4 KiB blocks.
    let mut chunk = vec![0u8; 1 << 20];
    let (mut have, mut at, mut read) = (0usize, 0usize, 0u64);
    let (tree, root) = edgeimg_proto::verity::hash_device(p, |b| {
        if at == have {
            have = ((size - read) as usize).min(chunk.len());
            f.read_exact(&mut chunk[..have])?;
            whole.update(&chunk[..have]);
            read += have as u64;
            at = 0;
        }
        b.copy_from_slice(&chunk[at..at + b.len()]);
        at += b.len();
        Ok(())
    })
    .map_err(|e| unusable(e.to_string()))?;
    let actual = hex::encode(whole.finalize());
    if actual != sha256 {
        return Err(unusable(format!(
            "{what}: read back from {}, sha256 {actual} instead of {sha256}",
            dest.display()
        )));
    }
    if roothash.is_some_and(|h| h != hex::encode(root)) {
        tracing::warn!("{what}: the hash tree computed from it has another root hash than the release; not used");
        return Ok(None);
    }
    Ok(Some(tree))
}

/// Write a computed hash tree if it is the signed one, then read it back.
pub fn write_computed(what: &str, tree: &[u8], dest: &Path, size: u64, sha256: &str) -> Result<(), String> {
    let actual = hex::encode(Sha256::digest(tree));
    if tree.len() as u64 != size || actual != sha256 {
        return Err(format!(
            "the computed hash tree ({} bytes, sha256 {actual}) is not the signed one ({size} bytes, {sha256})",
            tree.len()
        ));
    }
    let f = open_dest(dest, size).map_err(|e| e.to_string())?;
    f.write_all_at(tree, 0).and_then(|_| f.sync_all()).map_err(|e| format!("writing {}: {e}", dest.display()))?;
    crate::install::verify(what, dest, size, sha256).map_err(|e| e.to_string())
}

/// A parsed block index.
pub struct Index {
    pub header: IndexHeader,
    pub hashes: Vec<[u8; INDEX_HASH_LEN]>,
}

pub fn read_index(file: &Path, artifact: &ReleaseArtifact) -> Result<Index, DeltaError> {
    let f = File::open(file).map_err(io("opening", file))?;
    let (json, start) = read_header(&f, file, INDEX_MAGIC, "block index")?;
    let header: IndexHeader =
        serde_json::from_slice(&json).map_err(|e| unusable(format!("block index header: {e}")))?;
    if header.format != DELTA_FORMAT || header.block_size != BLOCK || header.hash_len as usize != INDEX_HASH_LEN {
        return Err(unusable(format!(
            "block index format {} with {}-byte blocks and {}-byte hashes: this updater reads format {DELTA_FORMAT}",
            header.format, header.block_size, header.hash_len
        )));
    }
    if header.artifact != artifact.name {
        return Err(unusable(format!("the block index is for {}, not {}", header.artifact, artifact.name)));
    }
    expect_blob("the block index's artifact", &header.target, artifact.size, &artifact.sha256)?;
    let n = header.target.size.div_ceil(BLOCK);
    let len = f.metadata().map_err(io("reading", file))?.len();
    if len - start != n * INDEX_HASH_LEN as u64 {
        return Err(unusable(format!(
            "the block index holds {} bytes of hashes, not {} for {n} blocks",
            len - start,
            n * 16
        )));
    }
    let mut raw = vec![0u8; (len - start) as usize];
    f.read_exact_at(&mut raw, start).map_err(io("reading", file))?;
    let hashes = raw.chunks_exact(INDEX_HASH_LEN).map(|c| c.try_into().unwrap_or_default()).collect();
    Ok(Index { header, hashes })
}

/// Where each target block comes from under an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Copy(u64),
    Zero,
    Fetch,
}

pub struct IndexPlan {
    from: Vec<From>,
    /// Bytes to fetch (whole blocks, cut at the artifact's end).
    pub fetch_bytes: u64,
    pub fetch_ranges: usize,
}

/// Two missing runs closer than this are fetched as one range (fewer round trips).
const GAP: u64 = 16;

/// Hash every block of the running slot and find each target block in it.
pub fn plan_index(index: &Index, source: &Path) -> Result<IndexPlan, DeltaError> {
    let mut f = File::open(source).map_err(io("opening", source))?;
    let mut have: HashMap<[u8; INDEX_HASH_LEN], u64> = HashMap::new();
    let mut buf = vec![0u8; (RUN * BLOCK) as usize];
    let mut block = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let r = f.read(&mut buf[filled..]).map_err(io("reading", source))?;
            if r == 0 {
                break;
            }
            filled += r;
        }
        for c in buf[..filled].chunks(BLOCK as usize) {
            have.entry(block_hash(c)).or_insert(block);
            block += 1;
        }
        if filled < buf.len() {
            break;
        }
    }
    let zero = block_hash(&[]);
    let from: Vec<From> = index
        .hashes
        .iter()
        .map(|h| match have.get(h) {
            _ if *h == zero => From::Zero,
            Some(&j) => From::Copy(j),
            None => From::Fetch,
        })
        .collect();
    let size = index.header.target.size;
    let ranges = fetch_ranges(&from, size);
    Ok(IndexPlan { fetch_bytes: ranges.iter().map(|(a, b)| b - a).sum(), fetch_ranges: ranges.len(), from })
}

/// Byte ranges (start, end) of the artifact to fetch: missing blocks, nearby runs merged.
fn fetch_ranges(from: &[From], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, f) in from.iter().enumerate() {
        if *f != From::Fetch {
            continue;
        }
        let i = i as u64;
        match out.last_mut() {
            Some((_, end)) if i <= *end + GAP => *end = i + 1,
            _ => out.push((i, i + 1)),
        }
    }
    out.into_iter().map(|(a, b)| (a * BLOCK, (b * BLOCK).min(size))).collect()
}

/// Build the artifact from the running slot plus ranges of the full artifact at `url`.
/// Every fetched block is checked against the index before it is written.
#[allow(clippy::too_many_arguments)]
pub async fn apply_index(
    client: &reqwest::Client,
    url: &str,
    index: &Index,
    plan: &IndexPlan,
    source: &Path,
    dest: &Path,
    start: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, DeltaError> {
    let size = index.header.target.size;
    let src = File::open(source).map_err(io("opening", source))?;
    let out = open_dest(dest, size)?;
    let mut w = Writer { dest: &out, path: dest, size, next: start, synced: start };
    let ranges = fetch_ranges(&plan.from, size);
    let mut fetched = 0u64;
    let mut buf = Vec::new();
    let n = plan.from.len() as u64;
    let mut i = start;
    while i < n {
        if let Some(&(a, b)) = ranges.iter().find(|(a, b)| a / BLOCK <= i && i < b.div_ceil(BLOCK)) {
            // One range, from this block to its end (a resume may start inside it).
            let from = i * BLOCK;
            let data = fetch(client, url, from.max(a), b).await?;
            fetched += data.len() as u64;
            for (k, chunk) in data.chunks(BLOCK as usize).enumerate() {
                let blk = i + k as u64;
                if block_hash(chunk) != index.hashes[blk as usize] {
                    return Err(unusable(format!("block {blk} of {url} does not match the signed block index")));
                }
            }
            let mut data = data;
            data.resize(((b.div_ceil(BLOCK) - i) * BLOCK) as usize, 0);
            w.put(&data, &mut progress)?;
            i = b.div_ceil(BLOCK);
            continue;
        }
        // A run of copies or zeros up to the next range.
        let end = ranges.iter().map(|(a, _)| a / BLOCK).find(|&a| a > i).unwrap_or(n).min(i + RUN);
        let mut k = i;
        while k < end {
            match plan.from[k as usize] {
                From::Copy(j) => {
                    // Consecutive source blocks in one read.
                    let mut m = 1;
                    while k + m < end && plan.from[(k + m) as usize] == From::Copy(j + m) {
                        m += 1;
                    }
                    read_blocks(&src, source, j, m, &mut buf)?;
                    w.put(&buf, &mut progress)?;
                    k += m;
                }
                _ => {
                    buf.clear();
                    buf.resize(BLOCK as usize, 0);
                    w.put(&buf, &mut progress)?;
                    k += 1;
                }
            }
        }
        i = end;
    }
    w.finish(&mut progress)?;
    Ok(fetched)
}

/// GET bytes `a..b` (the server must honour the range and send exactly that much).
async fn fetch(client: &reqwest::Client, url: &str, a: u64, b: u64) -> Result<Vec<u8>, DeltaError> {
    let net = |m: String| DeltaError::Network(format!("{url} bytes {a}-{}: {m}", b - 1));
    let resp = client
        .get(url)
        .header(reqwest::header::RANGE, format!("bytes={a}-{}", b - 1))
        .send()
        .await
        .map_err(|e| net(crate::net::chain(&e)))?;
    if resp.status().as_u16() != 206 {
        return Err(unusable(format!("{url} answered a range request with HTTP {}", resp.status().as_u16())));
    }
    let want = (b - a) as usize;
    let mut out = Vec::with_capacity(want);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| net(crate::net::chain(&e)))?;
        if out.len() + chunk.len() > want {
            return Err(unusable(format!("{url} sent more than the {want} bytes asked for")));
        }
        out.extend_from_slice(&chunk);
    }
    if out.len() != want {
        return Err(net(format!("connection ended after {} of {want} bytes", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_missing_runs_merge_into_one_range() {
        let mut from = vec![From::Copy(0); 100];
        from[3] = From::Fetch;
        from[10] = From::Fetch; // 6 blocks after: merged
        from[60] = From::Fetch; // far: its own range
        from[99] = From::Fetch;
        let r = fetch_ranges(&from, 99 * BLOCK + 10);
        assert_eq!(r, vec![(3 * BLOCK, 11 * BLOCK), (60 * BLOCK, 61 * BLOCK), (99 * BLOCK, 99 * BLOCK + 10)]);
    }
}
