//! `edgeimg serve` flags and the validated server configuration they turn into.
//!
//! Secrets (the fleet enrollment token, the admin token) never come from the command line,
//! where every user of the machine can read them: they are read from a file or from the
//! environment, and their `Debug` form is redacted so they cannot end up in a log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeimg_release::Lifetimes;
use sha2::{Digest, Sha256};

/// Environment variable holding the fleet enrollment token (when no file is given).
pub const ENV_ENROLL_TOKEN: &str = "EDGEIMG_ENROLL_TOKEN";
/// Environment variable holding the admin token (when no file is given).
pub const ENV_ADMIN_TOKEN: &str = "EDGEIMG_ADMIN_TOKEN";

/// Arguments of `edgeimg serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The TUF repository directory (made by `edgeimg publish`).
    #[arg(long)]
    pub repo: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the fleet database (fleet.sqlite); default: `<repo>.state` beside the
    /// repository (never inside it: the repository may be synced to a CDN).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Directory with the ONLINE keys (rollout.pk8, snapshot.pk8, timestamp.pk8). Without
    /// it the server cannot pause a failing rollout (auto-halt) nor refresh the metadata.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// File holding the fleet enrollment token (default: $EDGEIMG_ENROLL_TOKEN). Devices
    /// that present it are approved at once; without a token they wait for an admin.
    #[arg(long)]
    pub enroll_token_file: Option<PathBuf>,
    /// File holding the admin token for the write API (default: $EDGEIMG_ADMIN_TOKEN).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Approve every enrolling device without a token (labs and tests only).
    #[arg(long)]
    pub auto_approve: bool,
    /// How often to check whether the online metadata needs re-signing (a role is
    /// re-signed when less than half of its lifetime is left), e.g. 1h, 10m, 30s.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// Lifetime of the timestamp metadata when re-signed.
    #[arg(long, default_value = "1d", value_parser = parse_duration)]
    pub timestamp_lifetime: Duration,
    /// Lifetime of the snapshot metadata when re-signed.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub snapshot_lifetime: Duration,
    /// Lifetime of the rollout (channels) metadata when re-signed.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    pub rollout_lifetime: Duration,
    /// How often the server looks for repository changes made by others
    /// (`edgeimg publish`, `edgeimg rollout`).
    #[arg(long, default_value = "2s", value_parser = parse_duration, hide = true)]
    pub repo_poll: Duration,
}

/// A secret token. Compared in constant time; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Constant-time comparison (of the SHA-256 digests, so the length leaks nothing either).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (Sha256::digest(self.0.as_bytes()), Sha256::digest(candidate.as_bytes()));
        a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the {what} from {path}: {source}")]
    ReadSecret { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the {what} in {from} is empty")]
    EmptySecret { what: &'static str, from: String },
    #[error("{path} has no file name: give --state-dir")]
    NoStateDir { path: PathBuf },
}

/// The validated configuration of a server (built from [`ServeArgs`], or directly by tests).
#[derive(Debug, Clone)]
pub struct Config {
    pub repo: PathBuf,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub keys: Option<PathBuf>,
    pub enroll_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub auto_approve: bool,
    pub refresh_interval: Duration,
    pub lifetimes: Lifetimes,
    pub repo_poll: Duration,
}

impl Config {
    /// Defaults for a repository, as `edgeimg serve --repo DIR` would have them.
    pub fn new(repo: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            repo: repo.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state_dir: state_dir.into(),
            keys: None,
            enroll_token: None,
            admin_token: None,
            auto_approve: false,
            refresh_interval: Duration::from_secs(3600),
            lifetimes: Lifetimes::default(),
            repo_poll: Duration::from_secs(2),
        }
    }

    pub fn from_args(a: ServeArgs) -> Result<Self, ConfigError> {
        let state_dir = match a.state_dir {
            Some(d) => d,
            None => default_state_dir(&a.repo)?,
        };
        let enroll_token = secret("enrollment token", a.enroll_token_file.as_deref(), ENV_ENROLL_TOKEN)?;
        let admin_token = secret("admin token", a.admin_token_file.as_deref(), ENV_ADMIN_TOKEN)?;
        let sd = |d: Duration| jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
        Ok(Self {
            repo: a.repo,
            listen: a.listen,
            state_dir,
            keys: a.keys,
            enroll_token,
            admin_token,
            auto_approve: a.auto_approve,
            refresh_interval: a.refresh_interval,
            lifetimes: Lifetimes {
                targets: Lifetimes::default().targets,
                rollout: sd(a.rollout_lifetime),
                snapshot: sd(a.snapshot_lifetime),
                timestamp: sd(a.timestamp_lifetime),
            },
            repo_poll: a.repo_poll,
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("fleet.sqlite")
    }
}

/// `<repo>.state` beside the repository directory.
fn default_state_dir(repo: &Path) -> Result<PathBuf, ConfigError> {
    let abs = std::path::absolute(repo).unwrap_or_else(|_| repo.to_path_buf());
    let name = abs.file_name().ok_or_else(|| ConfigError::NoStateDir { path: repo.into() })?;
    let mut n = name.to_os_string();
    n.push(".state");
    Ok(abs.with_file_name(n))
}

fn secret(what: &'static str, file: Option<&Path>, env: &str) -> Result<Option<Secret>, ConfigError> {
    let (value, from) = match file {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| ConfigError::ReadSecret { what, path: p.into(), source })?,
            p.display().to_string(),
        ),
        None => match std::env::var(env) {
            Ok(v) => (v, format!("${env}")),
            Err(_) => return Ok(None),
        },
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(ConfigError::EmptySecret { what, from });
    }
    Ok(Some(Secret::new(v)))
}

/// Durations like 90s, 30m, 12h, 4d (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: expected a number and a unit, e.g. 1h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}`: units are s, m, h, d")),
    };
    if secs == 0 {
        return Err(format!("`{s}`: must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1w").is_err());
    }

    #[test]
    fn secrets_are_redacted_and_compared() {
        let s = Secret::new("hunter2-fleet-token");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(s.matches("hunter2-fleet-token"));
        assert!(!s.matches("hunter2-fleet-tokeN"));
        assert!(!s.matches(""));
    }

    #[test]
    fn state_dir_is_beside_the_repo() {
        assert_eq!(default_state_dir(Path::new("/srv/tuf-repo")).unwrap(), PathBuf::from("/srv/tuf-repo.state"));
        assert_eq!(default_state_dir(Path::new("/srv/tuf-repo/")).unwrap(), PathBuf::from("/srv/tuf-repo.state"));
    }
}
