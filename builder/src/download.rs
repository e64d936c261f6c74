//! Downloads pinned by sha256, cached by that hash: a file is fetched once, checked, and
//! only a file with the right hash ever enters the cache.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::fsutil::sha256_file;
use crate::net;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{what}: cannot download {url}: {reason}")]
    Fetch { what: String, url: String, reason: String },
    #[error("{what}: {url} has sha256 {actual} ({size} bytes) but the recipe pins {expected}. If the new file is the one you want, update the pin; otherwise the download was tampered with or is not the release you meant")]
    Mismatch { what: String, url: String, expected: String, actual: String, size: u64 },
    #[error("download cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

/// Return the path of a cached file with the given sha256, downloading it if needed.
/// `progress(done, total)` is called as bytes arrive.
pub async fn fetch(
    client: &reqwest::Client,
    what: &str,
    url: &str,
    sha256: &str,
    cache: &Path,
    mut progress: impl FnMut(u64, Option<u64>),
) -> Result<(PathBuf, bool), DownloadError> {
    let dir = cache.join("downloads");
    let path = dir.join(sha256);
    let cerr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| DownloadError::Cache { path: p, source }
    };
    if path.is_file() && sha256_file(&path).map_err(cerr(&path))? == sha256 {
        return Ok((path, true));
    }
    fs::create_dir_all(&dir).map_err(cerr(&dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(cerr(&dir))?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let fetch_err = |reason: String| DownloadError::Fetch { what: what.into(), url: url.into(), reason };
    if let Some(local) = url.strip_prefix("file://") {
        let bytes = fs::read(local).map_err(|e| fetch_err(e.to_string()))?;
        h.update(&bytes);
        n = bytes.len() as u64;
        tmp.write_all(&bytes).map_err(cerr(tmp.path()))?;
    } else {
        let resp = client.get(url).send().await.map_err(|e| fetch_err(net::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fetch_err(format!("HTTP {}", resp.status())));
        }
        let total = resp.content_length();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| fetch_err(net::chain(&e)))?;
            h.update(&chunk);
            n += chunk.len() as u64;
            tmp.write_all(&chunk).map_err(cerr(tmp.path()))?;
            progress(n, total);
        }
    }
    let actual = hex::encode(h.finalize());
    if actual != sha256 {
        return Err(DownloadError::Mismatch {
            what: what.into(),
            url: url.into(),
            expected: sha256.into(),
            actual,
            size: n,
        });
    }
    tmp.as_file().sync_all().map_err(cerr(&path))?;
    tmp.persist(&path).map_err(|e| DownloadError::Cache { path: path.clone(), source: e.error })?;
    Ok((path, false))
}
