//! Getting repository files: over HTTP(S) from the update server, or from a directory
//! (a copy of the repository on a USB stick, for offline installs). Every read is bounded.

use std::future::Future;
use std::path::PathBuf;

use futures_util::StreamExt;

use super::TufError;

pub trait Fetcher {
    /// Fetch `path` below the metadata (`metadata = true`) or targets base, at most `max`
    /// bytes; more is an error (endless-data attack).
    fn fetch(&self, metadata: bool, path: &str, max: u64) -> impl Future<Output = Result<Vec<u8>, TufError>>;
    /// The full URL or path of a file, for messages and for streaming downloads.
    fn location(&self, metadata: bool, path: &str) -> String;
}

/// Percent-encode a path for a URL (keeping `/`).
pub fn encode_path(path: &str) -> String {
    encode(path, b"-._~/")
}

/// Percent-encode one path component (also `/`): metadata file names, which are flat even
/// when a delegated role's name has a `/` in it, and local file names.
pub fn encode_component(name: &str) -> String {
    encode(name, b"-._~")
}

fn encode(path: &str, keep: &[u8]) -> String {
    let mut s = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[derive(Clone)]
pub struct HttpFetcher {
    pub client: reqwest::Client,
    pub metadata_base: String,
    pub targets_base: String,
}

impl HttpFetcher {
    /// `base` is the repository URL (with `/metadata/` and `/targets/` below it).
    pub fn new(client: reqwest::Client, base: &str) -> Self {
        let b = base.trim_end_matches('/');
        Self { client, metadata_base: format!("{b}/metadata/"), targets_base: format!("{b}/targets/") }
    }
}

impl Fetcher for HttpFetcher {
    fn location(&self, metadata: bool, path: &str) -> String {
        if metadata {
            format!("{}{}", self.metadata_base, encode_component(path))
        } else {
            format!("{}{}", self.targets_base, encode_path(path))
        }
    }

    async fn fetch(&self, metadata: bool, path: &str, max: u64) -> Result<Vec<u8>, TufError> {
        let url = self.location(metadata, path);
        let err = |m: String| TufError::Fetch { url: url.clone(), message: m };
        let resp = self.client.get(&url).send().await.map_err(|e| err(crate::net::chain(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND || resp.status() == reqwest::StatusCode::FORBIDDEN {
            return Err(TufError::NotFound { url });
        }
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|l| l > max) {
            return Err(TufError::TooLarge { what: url, max });
        }
        let mut out = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| err(crate::net::chain(&e)))?;
            if out.len() as u64 + chunk.len() as u64 > max {
                return Err(TufError::TooLarge { what: url, max });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// A repository in a local directory (`<dir>/metadata`, `<dir>/targets`).
#[derive(Clone)]
pub struct DirFetcher {
    pub dir: PathBuf,
}

impl Fetcher for DirFetcher {
    fn location(&self, metadata: bool, path: &str) -> String {
        if metadata {
            self.dir.join("metadata").join(encode_component(path)).display().to_string()
        } else {
            self.dir.join("targets").join(path).display().to_string()
        }
    }

    async fn fetch(&self, metadata: bool, path: &str, max: u64) -> Result<Vec<u8>, TufError> {
        use std::io::Read;
        // Metadata names are one encoded component; target paths must stay inside.
        if !metadata && path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(TufError::NotFound { url: path.into() });
        }
        let loc = self.location(metadata, path);
        let f = match std::fs::File::open(&loc) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TufError::NotFound { url: loc }),
            Err(e) => return Err(TufError::Fetch { url: loc, message: e.to_string() }),
        };
        let mut out = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| TufError::Fetch { url: loc.clone(), message: e.to_string() })?;
        if out.len() as u64 > max {
            return Err(TufError::TooLarge { what: loc, max });
        }
        Ok(out)
    }
}
