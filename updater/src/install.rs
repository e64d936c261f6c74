//! Writing one artifact into the inactive slot (or a staging file): streaming download →
//! size limit → sha256 → write, resumable, then a read-back verification from the medium.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what} is {size} bytes but {dest} holds only {capacity}")]
    TooBig { what: String, size: u64, dest: String, capacity: u64 },
    #[error("downloading {url}: {message}")]
    Network { url: String, message: String },
    #[error("{url} sent more than the {expected} bytes the signed metadata allows (endless data)")]
    TooLong { url: String, expected: u64 },
    #[error("{what}: sha256 {actual} does not match the signed {expected}")]
    Hash { what: String, expected: String, actual: String },
    #[error("{what}: read back from {dest}, sha256 {actual} instead of {expected}: the medium did not keep what was written")]
    ReadBack { what: String, dest: String, expected: String, actual: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { path, source }
}

/// What to fetch and where it goes.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub what: &'a str,
    pub url: &'a str,
    pub dest: &'a Path,
    pub size: u64,
    pub sha256: &'a str,
    /// Bytes already written by an earlier run (re-hashed from `dest`, not downloaded).
    pub start: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Bytes per second, or unlimited.
    pub rate_limit: Option<u64>,
    /// Reconnect attempts after a dropped connection.
    pub retries: u32,
}

/// Statistics of one artifact, for reports and the flaky-link test.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub received: u64,
    pub written: u64,
    pub reconnects: u32,
}

const BUF: usize = 1 << 20;

fn capacity(f: &mut File, dest: &Path) -> Result<Option<u64>, InstallError> {
    let meta = f.metadata().map_err(io(dest))?;
    use std::os::unix::fs::FileTypeExt;
    if meta.file_type().is_block_device() {
        return Ok(Some(f.seek(SeekFrom::End(0)).map_err(io(dest))?));
    }
    Ok(None)
}

fn open_dest(dest: &Path) -> Result<File, InstallError> {
    if let Some(parent) = dest.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
    }
    File::options().read(true).write(true).create(true).truncate(false).open(dest).map_err(io(dest))
}

/// Re-hash what an earlier run wrote (a power cut loses the hasher, not the bytes).
fn hash_prefix(f: &mut File, dest: &Path, len: u64) -> Result<Sha256, InstallError> {
    let mut h = Sha256::new();
    f.seek(SeekFrom::Start(0)).map_err(io(dest))?;
    let mut buf = vec![0u8; BUF];
    let mut left = len;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        f.read_exact(&mut buf[..n]).map_err(io(dest))?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

/// sha256 (hex) of the first `len` bytes of `path`.
pub fn sha256_prefix(path: &Path, len: u64) -> Result<String, InstallError> {
    let mut f = File::open(path).map_err(io(path))?;
    Ok(hex::encode(hash_prefix(&mut f, path, len)?.finalize()))
}

/// Download `job` into its destination. `progress(offset)` is called about every 16 MiB
/// with the number of bytes durably written (for the persisted resume point).
pub async fn download(
    client: &reqwest::Client,
    job: &Job<'_>,
    opts: &Options,
    mut progress: impl FnMut(u64),
) -> Result<Stats, InstallError> {
    let mut f = open_dest(job.dest)?;
    if let Some(cap) = capacity(&mut f, job.dest)? {
        if job.size > cap {
            return Err(InstallError::TooBig {
                what: job.what.into(),
                size: job.size,
                dest: job.dest.display().to_string(),
                capacity: cap,
            });
        }
    }
    let start = job.start.min(job.size);
    let mut hasher = hash_prefix(&mut f, job.dest, start)?;
    let mut pos = start;
    let mut stats = Stats::default();
    let mut buf: Vec<u8> = Vec::with_capacity(BUF);
    let mut last_progress = pos;
    // Quarters of the artifact already logged (so the journal shows where a write stands).
    let mut quarter = quarter_of(pos, job.size);
    let began = Instant::now();
    let net = |m: String| InstallError::Network { url: job.url.into(), message: m };
    // Consecutive failures without progress; a reconnect that moves on resets it, so a link
    // that drops every few MB still finishes.
    let mut attempt = 0u32;
    while pos < job.size {
        let before = pos;
        let mut req = client.get(job.url);
        if pos > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={pos}-"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                attempt += 1;
                if attempt > opts.retries {
                    return Err(net(crate::net::chain(&e)));
                }
                stats.reconnects += 1;
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        let status = resp.status();
        // A server that ignores Range sends the whole file: skip what we already have.
        let mut skip = match status.as_u16() {
            206 => 0,
            200 => pos,
            416 if pos >= job.size => 0,
            s => return Err(net(format!("HTTP {s}"))),
        };
        let mut body = resp.bytes_stream();
        let mut broke = false;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!("connection dropped at byte {pos} of {}: {}", job.what, crate::net::chain(&e));
                    broke = true;
                    break;
                }
            };
            stats.received += chunk.len() as u64;
            let mut data = &chunk[..];
            if skip > 0 {
                let n = (skip as usize).min(data.len());
                data = &data[n..];
                skip -= n as u64;
            }
            if pos + (buf.len() + data.len()) as u64 > job.size {
                return Err(InstallError::TooLong { url: job.url.into(), expected: job.size });
            }
            buf.extend_from_slice(data);
            if buf.len() >= BUF {
                pos = flush(&mut f, job.dest, &mut hasher, &mut buf, pos, &mut stats)?;
                if pos - last_progress >= 16 << 20 {
                    f.sync_data().map_err(io(job.dest))?;
                    progress(pos);
                    last_progress = pos;
                    if quarter_of(pos, job.size) > quarter {
                        quarter = quarter_of(pos, job.size);
                        tracing::info!(
                            "{}: {} of {} MiB written and synced ({}%)",
                            job.what,
                            pos >> 20,
                            job.size >> 20,
                            quarter * 25
                        );
                    }
                }
                if let Some(rate) = opts.rate_limit {
                    let should = Duration::from_secs_f64((pos - start) as f64 / rate as f64);
                    if let Some(wait) = should.checked_sub(began.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        pos = flush(&mut f, job.dest, &mut hasher, &mut buf, pos, &mut stats)?;
        if broke || pos < job.size {
            if pos > before {
                attempt = 0;
            }
            attempt += 1;
            if attempt > opts.retries {
                return Err(net(format!(
                    "connection lost at byte {pos} of {} after {} reconnects",
                    job.size, stats.reconnects
                )));
            }
            stats.reconnects += 1;
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    f.sync_all().map_err(io(job.dest))?;
    let actual = hex::encode(hasher.finalize());
    if actual != job.sha256 {
        return Err(InstallError::Hash { what: job.what.into(), expected: job.sha256.into(), actual });
    }
    progress(pos);
    Ok(stats)
}

/// 0..=4: how many quarters of `size` lie below `pos`.
fn quarter_of(pos: u64, size: u64) -> u64 {
    (pos.saturating_mul(4)).checked_div(size).unwrap_or(4).min(4)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(7)).min(30_000))
}

fn flush(
    f: &mut File,
    dest: &Path,
    h: &mut Sha256,
    buf: &mut Vec<u8>,
    pos: u64,
    stats: &mut Stats,
) -> Result<u64, InstallError> {
    if buf.is_empty() {
        return Ok(pos);
    }
    f.seek(SeekFrom::Start(pos)).map_err(io(dest))?;
    f.write_all(buf).map_err(io(dest))?;
    h.update(&buf[..]);
    let new = pos + buf.len() as u64;
    stats.written += buf.len() as u64;
    buf.clear();
    crate::crashpoint::bytes(new);
    Ok(new)
}

/// Read the first `size` bytes back from the medium (not the page cache) and compare.
pub fn verify(what: &str, dest: &Path, size: u64, sha256: &str) -> Result<(), InstallError> {
    let mut f = File::open(dest).map_err(io(dest))?;
    // Drop cached pages so the read comes from the device.
    let _ = nix::fcntl::posix_fadvise(f.as_fd(), 0, size as i64, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    let h = hash_prefix(&mut f, dest, size)?;
    let actual = hex::encode(h.finalize());
    if actual != sha256 {
        return Err(InstallError::ReadBack {
            what: what.into(),
            dest: dest.display().to_string(),
            expected: sha256.into(),
            actual,
        });
    }
    Ok(())
}
