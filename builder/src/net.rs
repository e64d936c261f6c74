//! HTTP for the builder: one client, clear errors, and a small runtime for sync callers.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("reading {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// Full error chain of a reqwest error (its Display alone hides the cause).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("edgeimg/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A current-thread runtime for the builder's synchronous pipeline.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime can always be built")
}

/// GET a small document (or read it, for file:// URLs).
pub async fn get_bytes(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, NetError> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).map_err(|source| NetError::File { path: path.to_string(), source });
    }
    let resp =
        client.get(url).send().await.map_err(|e| NetError::Unreachable { url: url.to_string(), reason: chain(&e) })?;
    if !resp.status().is_success() {
        return Err(NetError::Status { url: url.to_string(), status: resp.status().as_u16() });
    }
    let b = resp.bytes().await.map_err(|e| NetError::Unreachable { url: url.to_string(), reason: chain(&e) })?;
    Ok(b.to_vec())
}
