//! The device's TUF client (TUF specification 1.0, §5 "Detailed client workflow").
//!
//! Written here rather than taken from `tough` because a device needs it to keep working
//! when something *unrelated* is wrong (tough rejects a whole repository for an expired
//! or out-of-scope delegated role, lets an equal-version timestamp replace the trusted
//! one, refuses to run after the clock steps back) and because it must be small. Every
//! step cites the section it implements.

pub mod client;
pub mod conformance;
pub mod fetch;
pub mod metadata;
pub mod store;

pub use client::{Client, Limits, TargetInfo};
pub use fetch::{DirFetcher, Fetcher, HttpFetcher};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TufError {
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url} was not found")]
    NotFound { url: String },
    #[error("{what} is longer than the {max} bytes allowed (endless data?)")]
    TooLarge { what: String, max: u64 },
    #[error("{role} metadata is malformed: {message}")]
    Malformed { role: String, message: String },
    #[error("{role} metadata: {valid} valid signature(s) from authorised keys, {threshold} needed")]
    Signature { role: String, valid: u64, threshold: u64 },
    #[error("{role} metadata expired at {expires} (freeze attack, or the repository was not refreshed)")]
    Expired { role: String, expires: String },
    #[error("{role} metadata version {new} is older than the trusted {trusted} (rollback attack)")]
    Rollback { role: String, trusted: u64, new: u64 },
    #[error("{role} metadata has version {actual}, but {expected} was announced (mix-and-match attack?)")]
    VersionMismatch { role: String, expected: u64, actual: u64 },
    #[error("{what}: {algorithm} hash does not match")]
    Hash { what: String, algorithm: String },
    #[error("{what}: length {actual}, expected {expected}")]
    Length { what: String, expected: u64, actual: u64 },
    #[error("{what} is not listed in the {role} metadata")]
    Missing { what: String, role: String },
    #[error("the system clock is not trustworthy yet (not synchronised); metadata expiry cannot be checked")]
    TimeUnknown,
    #[error("trusted metadata store {path}: {message}")]
    Store { path: String, message: String },
}
