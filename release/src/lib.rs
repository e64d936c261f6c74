//! Release repositories for edgeimg: a TUF repository written with `tough`, holding
//! release artifacts and manifests (top-level targets role, offline key) and rollout
//! channels (delegated `rollout` role, online key).
//!
//! Any conformant TUF 1.0 client can read the repository: target names are flat, every
//! target carries sha256, metadata expiry is in whole seconds, consistent snapshots are on.

pub mod delta;
pub mod keys;
pub mod publish;
pub mod repo;
pub mod rollout;
pub mod rotate;

use std::path::PathBuf;

pub use keys::{KeyDir, KeyName};
pub use repo::Repo;

pub const SPEC_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "{key} is not in {dir}: this step needs it (see the README in the key directory for which keys live where)"
    )]
    MissingKey { key: &'static str, dir: PathBuf },
    #[error("{what}: {message}")]
    Tough { what: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long each kind of metadata stays valid when (re)signed.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub targets: jiff::SignedDuration,
    pub rollout: jiff::SignedDuration,
    pub snapshot: jiff::SignedDuration,
    pub timestamp: jiff::SignedDuration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        let days = |d: i64| jiff::SignedDuration::from_hours(24 * d);
        // Offline-signed targets last a quarter; the online roles are refreshed by the server.
        Self { targets: days(90), rollout: days(30), snapshot: days(7), timestamp: days(1) }
    }
}

/// Metadata times must be whole seconds for other TUF clients to parse them.
pub fn round_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

pub fn expires_in(now: jiff::Timestamp, d: jiff::SignedDuration) -> jiff::Timestamp {
    round_seconds(now.checked_add(d).unwrap_or(now))
}

/// An error with its causes, for messages.
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

pub(crate) fn tough_err<E: std::error::Error>(what: impl Into<String>) -> impl FnOnce(E) -> Error {
    let what = what.into();
    move |e| Error::Tough { what, message: chain(&e) }
}
