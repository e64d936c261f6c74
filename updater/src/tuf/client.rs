//! The update workflow (TUF 1.0 §5.3–§5.7).

use std::collections::{BTreeMap, HashSet};

use super::fetch::Fetcher;
use super::metadata::{
    self, check_hashes, parse, role_matches, verify_threshold, Delegations, Root, Signed, Snapshot, TargetFile,
    Targets, Timestamp,
};
use super::store::Store;
use super::TufError;

/// Size limits (the spec's "X bytes" / "Y bytes").
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub root: u64,
    pub timestamp: u64,
    /// Used when snapshot.json's length is not announced.
    pub snapshot: u64,
    /// Used when a targets role's length is not announced.
    pub targets: u64,
    pub max_root_rotations: u64,
    pub max_delegations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            root: 512 * 1024,
            timestamp: 16 * 1024,
            snapshot: 4 << 20,
            targets: 8 << 20,
            max_root_rotations: 32,
            max_delegations: 32,
        }
    }
}

/// A target as the (delegated) targets metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub name: String,
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    /// Path below the targets base to download it from.
    pub path: String,
}

pub struct Client<F: Fetcher> {
    fetcher: F,
    store: Store,
    limits: Limits,
    root: Signed<Root>,
    timestamp: Option<Signed<Timestamp>>,
    snapshot: Option<Signed<Snapshot>>,
    targets: Option<Signed<Targets>>,
    /// Delegated roles loaded during this refresh (§5.6.7 loads them on demand).
    delegated: BTreeMap<String, Signed<Targets>>,
    now: Option<i64>,
}

fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

fn check_expiry(role: &str, expires: &str, now: Option<i64>) -> Result<(), TufError> {
    let now = now.ok_or(TufError::TimeUnknown)?;
    let exp = parse_time(expires)
        .ok_or_else(|| TufError::Malformed { role: role.into(), message: format!("expires `{expires}`") })?;
    if exp <= now {
        return Err(TufError::Expired { role: role.into(), expires: expires.into() });
    }
    Ok(())
}

fn role_keys<'a>(root: &'a Root, role: &str) -> Result<&'a metadata::RoleKeys, TufError> {
    root.roles
        .get(role)
        .ok_or_else(|| TufError::Malformed { role: "root".into(), message: format!("no `{role}` role") })
}

fn verify_with_root<T>(root: &Root, meta: &Signed<T>, role: &str) -> Result<(), TufError> {
    let rk = role_keys(root, role)?;
    verify_threshold(meta, role, &root.keys, &rk.keyids, rk.threshold)
}

const TOP_LEVEL: [&str; 4] = ["root", "timestamp", "snapshot", "targets"];

/// A role's metadata file name (§5.6.7: delegated role files); the fetcher encodes it.
fn role_file(version: Option<u64>, role: &str) -> String {
    match version {
        Some(v) => format!("{v}.{role}.json"),
        None => format!("{role}.json"),
    }
}

impl<F: Fetcher> Client<F> {
    /// Open with the trusted root from the store. `now` is None when the clock cannot be
    /// trusted: then nothing that depends on expiry is accepted.
    pub fn new(fetcher: F, store: Store, limits: Limits, now: Option<i64>) -> Result<Self, TufError> {
        let bytes = store.load("root")?.ok_or_else(|| TufError::Store {
            path: store.dir.display().to_string(),
            message: "no trusted root.json".into(),
        })?;
        // §5.2: the trusted root came with the image; it must still be signed by a threshold
        // of its own root keys (a damaged or tampered file is not trusted).
        let root: Signed<Root> = parse(&bytes, "root")?;
        verify_with_root(&root.signed, &root, "root")?;
        let mut c = Self {
            fetcher,
            store,
            limits,
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
            delegated: BTreeMap::new(),
            now,
        };
        c.timestamp = c.load_trusted::<Timestamp>("timestamp");
        c.snapshot = c.load_trusted::<Snapshot>("snapshot");
        c.targets = c.load_trusted::<Targets>("targets");
        Ok(c)
    }

    /// Previously trusted metadata is reused only if it still verifies with the current
    /// root (a damaged or stale file is dropped, never fatal).
    fn load_trusted<T: metadata::RoleType>(&self, role: &str) -> Option<Signed<T>> {
        let bytes = self.store.load(role).ok()??;
        let m: Signed<T> = parse(&bytes, role).ok()?;
        verify_with_root(&self.root.signed, &m, role).ok()?;
        Some(m)
    }

    pub fn root_version(&self) -> u64 {
        self.root.signed.version
    }

    pub fn timestamp_version(&self) -> Option<u64> {
        self.timestamp.as_ref().map(|t| t.signed.version)
    }

    /// §5.3–§5.6: bring root, timestamp, snapshot and top-level targets up to date.
    pub async fn refresh(&mut self) -> Result<(), TufError> {
        self.delegated.clear();
        self.update_root().await?;
        self.update_timestamp().await?;
        self.update_snapshot().await?;
        self.update_targets().await
    }

    /// §5.3: walk the root chain N+1, N+2, ... each signed by the old and the new root.
    async fn update_root(&mut self) -> Result<(), TufError> {
        let start = self.root.signed.version;
        for v in start + 1..=start + self.limits.max_root_rotations {
            let bytes = match self.fetcher.fetch(true, &format!("{v}.root.json"), self.limits.root).await {
                Ok(b) => b,
                Err(TufError::NotFound { .. }) => break,
                Err(e) => return Err(e),
            };
            let new: Signed<Root> = parse(&bytes, "root")?;
            // §5.3.4: signed by a threshold of the trusted root's root keys ...
            verify_with_root(&self.root.signed, &new, "root")?;
            // ... and by a threshold of its own root keys.
            verify_with_root(&new.signed, &new, "root")?;
            // §5.3.5: exactly the next version.
            if new.signed.version != v {
                return Err(TufError::VersionMismatch { role: "root".into(), expected: v, actual: new.signed.version });
            }
            let old = std::mem::replace(&mut self.root, new);
            self.store.save("root", &bytes)?;
            // §5.3.11: new timestamp or snapshot keys invalidate what they signed.
            for role in ["timestamp", "snapshot"] {
                let (a, b) = (
                    old.signed.roles.get(role).map(|r| &r.keyids),
                    self.root.signed.roles.get(role).map(|r| &r.keyids),
                );
                if a != b {
                    self.store.remove(role)?;
                    if role == "timestamp" {
                        self.timestamp = None;
                    } else {
                        self.snapshot = None;
                    }
                }
            }
        }
        // §5.3.10: a frozen (expired) root stops the update.
        check_expiry("root", &self.root.signed.expires, self.now)
    }

    /// §5.4
    async fn update_timestamp(&mut self) -> Result<(), TufError> {
        let bytes = self.fetcher.fetch(true, "timestamp.json", self.limits.timestamp).await?;
        let new: Signed<Timestamp> = parse(&bytes, "timestamp")?;
        verify_with_root(&self.root.signed, &new, "timestamp")?;
        let snap = new
            .signed
            .meta
            .get("snapshot.json")
            .ok_or_else(|| TufError::Missing { what: "snapshot.json".into(), role: "timestamp".into() })?;
        if let Some(t) = &self.timestamp {
            // §5.4.3: no rollback of the timestamp ...
            if new.signed.version < t.signed.version {
                return Err(TufError::Rollback {
                    role: "timestamp".into(),
                    trusted: t.signed.version,
                    new: new.signed.version,
                });
            }
            // ... nor of the snapshot it points at.
            let trusted_snap = t.signed.meta.get("snapshot.json").map_or(0, |m| m.version);
            if snap.version < trusted_snap {
                return Err(TufError::Rollback { role: "snapshot".into(), trusted: trusted_snap, new: snap.version });
            }
            // An equal version with other content never replaces the trusted timestamp
            // (it would make the next genuine timestamp look like a rollback).
            if new.signed.version == t.signed.version {
                if new.bytes != t.bytes {
                    tracing::warn!(
                        "ignoring a timestamp with the trusted version {} but different content",
                        new.signed.version
                    );
                }
                return check_expiry("timestamp", &t.signed.expires, self.now);
            }
        }
        // §5.4.4
        check_expiry("timestamp", &new.signed.expires, self.now)?;
        self.store.save("timestamp", &bytes)?;
        self.timestamp = Some(new);
        Ok(())
    }

    /// §5.5
    async fn update_snapshot(&mut self) -> Result<(), TufError> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| TufError::Missing { what: "timestamp".into(), role: "store".into() })?;
        let meta = ts.signed.meta["snapshot.json"].clone();
        if let Some(s) = &self.snapshot {
            // Trusted snapshot still current: reuse it (§5.5 applies to a new one only).
            if s.signed.version == meta.version
                && check_hashes("snapshot", &s.bytes, meta.length, meta.hashes.as_ref()).is_ok()
            {
                return check_expiry("snapshot", &s.signed.expires, self.now);
            }
        }
        let path = if self.root.signed.consistent_snapshot {
            format!("{}.snapshot.json", meta.version)
        } else {
            "snapshot.json".into()
        };
        let bytes = self.fetcher.fetch(true, &path, meta.length.unwrap_or(self.limits.snapshot)).await?;
        // §5.5.2: matches what the timestamp announced.
        check_hashes("snapshot.json", &bytes, meta.length, meta.hashes.as_ref())?;
        let new: Signed<Snapshot> = parse(&bytes, "snapshot")?;
        verify_with_root(&self.root.signed, &new, "snapshot")?;
        // §5.5.4
        if new.signed.version != meta.version {
            return Err(TufError::VersionMismatch {
                role: "snapshot".into(),
                expected: meta.version,
                actual: new.signed.version,
            });
        }
        // §5.5.5: no targets role disappears or goes back in version.
        if let Some(old) = &self.snapshot {
            for (name, m) in &old.signed.meta {
                match new.signed.meta.get(name) {
                    None => return Err(TufError::Missing { what: name.clone(), role: "snapshot".into() }),
                    Some(n) if n.version < m.version => {
                        return Err(TufError::Rollback {
                            role: name.trim_end_matches(".json").into(),
                            trusted: m.version,
                            new: n.version,
                        })
                    }
                    _ => {}
                }
            }
        }
        check_expiry("snapshot", &new.signed.expires, self.now)?;
        self.store.save("snapshot", &bytes)?;
        self.snapshot = Some(new);
        Ok(())
    }

    /// Fetch and verify a targets role (top-level or delegated) as the snapshot lists it.
    async fn fetch_targets_role(
        &self,
        role: &str,
        keys: &BTreeMap<String, metadata::Key>,
        keyids: &[String],
        threshold: u64,
    ) -> Result<Signed<Targets>, TufError> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| TufError::Missing { what: "snapshot".into(), role: "store".into() })?;
        let meta = snap
            .signed
            .meta
            .get(&format!("{role}.json"))
            .ok_or_else(|| TufError::Missing { what: format!("{role}.json"), role: "snapshot".into() })?;
        // The trusted copy is reused while the snapshot still names it (same version and
        // hashes), but always checked again against *this* delegator's keys: a role reached
        // through another path must not lend its trust here.
        // Stored under its URL-encoded name: no role name can reach outside the store.
        let file = super::fetch::encode_component(role);
        if let Some(old) = self.store.load(&file)?.and_then(|b| parse::<Targets>(&b, role).ok()) {
            if old.signed.version == meta.version
                && check_hashes(role, &old.bytes, meta.length, meta.hashes.as_ref()).is_ok()
            {
                verify_threshold(&old, role, keys, keyids, threshold)?;
                check_expiry(role, &old.signed.expires, self.now)?;
                return Ok(old);
            }
        }
        let path = role_file(self.root.signed.consistent_snapshot.then_some(meta.version), role);
        let bytes = self.fetcher.fetch(true, &path, meta.length.unwrap_or(self.limits.targets)).await?;
        check_hashes(&format!("{role}.json"), &bytes, meta.length, meta.hashes.as_ref())?;
        let new: Signed<Targets> = parse(&bytes, role)?;
        verify_threshold(&new, role, keys, keyids, threshold)?;
        if new.signed.version != meta.version {
            return Err(TufError::VersionMismatch {
                role: role.into(),
                expected: meta.version,
                actual: new.signed.version,
            });
        }
        check_expiry(role, &new.signed.expires, self.now)?;
        // §5.6.6 / §5.6.7: persist the newly trusted role.
        self.store.save(&file, &bytes)?;
        Ok(new)
    }

    /// §5.6
    async fn update_targets(&mut self) -> Result<(), TufError> {
        let snap = self
            .snapshot
            .as_ref()
            .ok_or_else(|| TufError::Missing { what: "snapshot".into(), role: "store".into() })?;
        let meta = snap
            .signed
            .meta
            .get("targets.json")
            .cloned()
            .ok_or_else(|| TufError::Missing { what: "targets.json".into(), role: "snapshot".into() })?;
        if let Some(t) = &self.targets {
            if t.signed.version == meta.version
                && check_hashes("targets", &t.bytes, meta.length, meta.hashes.as_ref()).is_ok()
            {
                return check_expiry("targets", &t.signed.expires, self.now);
            }
        }
        let rk = role_keys(&self.root.signed, "targets")?.clone();
        let new = self.fetch_targets_role("targets", &self.root.signed.keys, &rk.keyids, rk.threshold).await?;
        self.targets = Some(new);
        Ok(())
    }

    /// §5.6.7: find a target, searching delegations in pre-order depth-first order,
    /// honouring paths and terminating roles. A broken role off the search path costs
    /// nothing; a broken role on it ends the search for this target only.
    pub async fn target(&mut self, name: &str) -> Result<Option<TargetInfo>, TufError> {
        let top =
            self.targets.as_ref().ok_or_else(|| TufError::Missing { what: "targets".into(), role: "store".into() })?;
        if let Some(t) = top.signed.targets.get(name) {
            return Ok(Some(self.info(name, t)));
        }
        let mut visited: HashSet<String> = HashSet::from(["targets".to_string()]);
        // Stack of (delegations of the parent, index of the next child to visit).
        let mut stack: Vec<(Delegations, usize)> = Vec::new();
        if let Some(d) = &top.signed.delegations {
            stack.push((d.clone(), 0));
        }
        while let Some((dels, i)) = stack.pop() {
            if i >= dels.roles.len() {
                continue;
            }
            let role = dels.roles[i].clone();
            stack.push((dels.clone(), i + 1));
            if !role_matches(&role, name) || !visited.insert(role.name.clone()) {
                continue;
            }
            if visited.len() > self.limits.max_delegations {
                tracing::warn!(
                    "stopping the search for {name}: more than {} delegated roles",
                    self.limits.max_delegations
                );
                return Ok(None);
            }
            let found = match self.delegated.get(&role.name) {
                // Loaded before in this search, possibly through another delegator: its
                // signatures must satisfy this delegation too.
                Some(m) => {
                    verify_threshold(m, &role.name, &dels.keys, &role.keyids, role.threshold).map(|()| m.clone())
                }
                None if TOP_LEVEL.contains(&role.name.as_str()) => Err(TufError::Malformed {
                    role: role.name.clone(),
                    message: "a delegated role cannot have a top-level role's name".into(),
                }),
                None => self.fetch_targets_role(&role.name, &dels.keys, &role.keyids, role.threshold).await,
            };
            let meta = match found {
                Ok(m) => {
                    self.delegated.insert(role.name.clone(), m.clone());
                    m
                }
                Err(e) => {
                    tracing::warn!("delegated role {} is unusable ({e}); {name} is not found through it", role.name);
                    if role.terminating {
                        return Ok(None);
                    }
                    continue;
                }
            };
            if let Some(t) = meta.signed.targets.get(name) {
                return Ok(Some(self.info(name, t)));
            }
            if role.terminating {
                // §5.6.7.2.1: nothing below or after a terminating role is consulted.
                stack.clear();
            }
            if let Some(d) = &meta.signed.delegations {
                stack.push((d.clone(), 0));
            }
        }
        Ok(None)
    }

    fn info(&self, name: &str, t: &TargetFile) -> TargetInfo {
        // §5.7.3: with consistent snapshots the file is <dir>/<hash>.<basename>.
        let path = if self.root.signed.consistent_snapshot {
            let hash = t
                .hashes
                .get("sha256")
                .or_else(|| t.hashes.get("sha512"))
                .or_else(|| t.hashes.values().next())
                .cloned()
                .unwrap_or_default();
            match name.rsplit_once('/') {
                Some((dir, base)) => format!("{dir}/{hash}.{base}"),
                None => format!("{hash}.{name}"),
            }
        } else {
            name.to_string()
        };
        TargetInfo { name: name.into(), length: t.length, hashes: t.hashes.clone(), path }
    }

    /// Download a (small) target fully into memory, checking length and hashes.
    pub async fn fetch_target(&self, info: &TargetInfo) -> Result<Vec<u8>, TufError> {
        let bytes = self.fetcher.fetch(false, &info.path, info.length).await?;
        check_hashes(&info.name, &bytes, Some(info.length), Some(&info.hashes))?;
        Ok(bytes)
    }

    pub fn target_location(&self, info: &TargetInfo) -> String {
        self.fetcher.location(false, &info.path)
    }
}
