//! The updater's persisted state machine (DESIGN §7).
//!
//! ```text
//! Idle ─▶ Downloading ─▶ Verified ─▶ Staged ─[reboot]─▶ (trial) ─▶ Idle (committed)
//!              │              │           │                  └──▶ RolledBack ─▶ Idle
//!              └──────────────┴───────────┴─ errors: back to Idle, target slot disarmed
//! ```
//!
//! The whole state is one JSON file on /data, replaced atomically (temp file, fsync,
//! rename, fsync dir) *before* the action it announces; after a power cut the updater
//! reads it and resumes or cleans up. The active slot is never the target of a write.

use std::io::Write;
use std::path::{Path, PathBuf};

use edgeimg_proto::release::{DeltaKind, ReleaseManifest};
use edgeimg_proto::report::{Event, EventKind};
use edgeimg_proto::Slot;
use serde::{Deserialize, Serialize};

use crate::fsutil::atomic_write;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub image: String,
    pub version: String,
    #[serde(default)]
    pub security_version: u64,
}

impl ReleaseRef {
    pub fn of(m: &ReleaseManifest) -> Self {
        Self { image: m.image.clone(), version: m.version.clone(), security_version: m.security_version }
    }
}

impl std::fmt::Display for ReleaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.image, self.version)
    }
}

/// The artifact being written is built from the running slot plus this delta or index
/// (a TUF target named in the manifest's `deltas`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Via {
    pub kind: DeltaKind,
    pub file: String,
    /// Target blocks written and synced.
    pub applied: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    Idle,
    /// Writing `manifest`'s artifacts into `target`: artifact index and bytes done (of
    /// the artifact, or with `via` of its delta or block index).
    Downloading {
        manifest: Box<ReleaseManifest>,
        target: Slot,
        artifact: usize,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<Via>,
    },
    /// Every artifact written and read back from the slot with the right hash.
    Verified {
        manifest: Box<ReleaseManifest>,
        target: Slot,
    },
    /// Boot files installed and the slot armed to be tried once; waiting for the reboot.
    Staged {
        manifest: Box<ReleaseManifest>,
        target: Slot,
        boot_id: String,
        staged_at: i64,
        /// The reboot into the trial was started (persisted just before it). Tells a power
        /// cut before the reboot from a failed trial, for loaders whose trial is armed by
        /// the reboot itself (tryboot).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reboot_started: bool,
    },
    /// The release failed its trial; the device is (or will be, after the reboot) back on
    /// the other slot.
    RolledBack {
        release: ReleaseRef,
        target: Slot,
        reason: String,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Downloading { .. } => "downloading",
            State::Verified { .. } => "verified",
            State::Staged { .. } => "staged",
            State::RolledBack { .. } => "rolled-back",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persistent {
    pub state: State,
    /// What each slot holds, as far as the updater knows.
    #[serde(default)]
    pub slots: std::collections::BTreeMap<Slot, ReleaseRef>,
    /// Highest security version committed (anti-rollback floor without a TPM).
    #[serde(default)]
    pub security_floor: u64,
    /// Releases that failed here: never tried again.
    #[serde(default)]
    pub failed: Vec<ReleaseRef>,
    #[serde(default)]
    pub last_check: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Reports not yet accepted by the server (oldest first).
    #[serde(default)]
    pub pending_events: Vec<Event>,
    #[serde(default)]
    pub report_seq: u64,
}

impl Default for Persistent {
    fn default() -> Self {
        Self {
            state: State::Idle,
            slots: Default::default(),
            security_floor: 0,
            failed: Vec::new(),
            last_check: None,
            last_error: None,
            pending_events: Vec::new(),
            report_seq: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is damaged ({message}); move it away to start over (the slots are untouched)")]
    Damaged { path: PathBuf, message: String },
}

/// The state file and the history log in the updater's directory on /data.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    pub time: i64,
    pub state: String,
    pub detail: String,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load(&self) -> Result<Persistent, StateError> {
        let p = self.file();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StateError::Damaged { path: p, message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persistent::default()),
            Err(source) => Err(StateError::Io { path: p, source }),
        }
    }

    /// Persist atomically; then the action the new state announces may begin.
    pub fn save(&self, p: &Persistent) -> Result<(), StateError> {
        let path = self.file();
        let mut json = serde_json::to_vec_pretty(p)
            .map_err(|e| StateError::Damaged { path: path.clone(), message: e.to_string() })?;
        json.push(b'\n');
        atomic_write(&path, &json, 0o600).map_err(|source| StateError::Io { path, source })?;
        crate::crashpoint::hit(p.state.name());
        Ok(())
    }

    /// Append one line to the history (a torn last line after a power cut is skipped by
    /// the reader).
    pub fn log(&self, state: &str, detail: &str) {
        let e = HistoryEntry { time: now(), state: state.into(), detail: detail.into() };
        let path = self.dir.join("history.jsonl");
        let line = serde_json::to_string(&e).unwrap_or_default();
        let res = std::fs::create_dir_all(&self.dir).and_then(|_| {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            writeln!(f, "{line}")?;
            f.sync_data()
        });
        if let Err(err) = res {
            tracing::warn!("could not write the history log {}: {err}", path.display());
        }
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        let text = std::fs::read_to_string(self.dir.join("history.jsonl")).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Record an event for the server (kept until reported).
pub fn event(p: &mut Persistent, kind: EventKind, release: &ReleaseRef, detail: impl Into<String>) {
    p.pending_events.push(Event {
        kind,
        image: release.image.clone(),
        version: release.version.clone(),
        detail: detail.into(),
    });
    // Bounded: a device offline for months keeps the newest events.
    if p.pending_events.len() > 64 {
        let drop = p.pending_events.len() - 64;
        p.pending_events.drain(..drop);
    }
}

/// Identity of the current boot (changes at every boot).
pub fn boot_id(root: &Path) -> String {
    std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_history() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let mut p = s.load().unwrap();
        assert_eq!(p.state, State::Idle);
        p.security_floor = 3;
        p.state = State::RolledBack {
            release: ReleaseRef { image: "e".into(), version: "1.0.0".into(), security_version: 1 },
            target: Slot::B,
            reason: "x".into(),
        };
        s.save(&p).unwrap();
        assert_eq!(s.load().unwrap(), p);
        s.log("idle", "one");
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("history.jsonl"))
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        assert_eq!(s.history().len(), 1);
        std::fs::write(s.file(), b"{ not json").unwrap();
        assert!(matches!(s.load(), Err(StateError::Damaged { .. })));
    }
}
