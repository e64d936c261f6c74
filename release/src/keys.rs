//! Release keys and the trusted root.
//!
//! A key set is a directory:
//!
//! | file | role | where it lives |
//! |---|---|---|
//! | `root-N.pk8` | root (threshold of N) | offline, ideally each with another person |
//! | `targets.pk8` | targets: what software exists | offline (release CI) |
//! | `rollout.pk8` | delegated `rollout`: who gets it when | online (update server) |
//! | `snapshot.pk8`, `timestamp.pk8` | freshness | online (update server) |
//! | `root.json` | the signed root, version 1 | baked into every image |
//!
//! Keys are ed25519, PKCS#8 DER (what tough's `LocalKeySource` reads).

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root};

use crate::{Error, Result};

pub const ROLLOUT_ROLE: &str = "rollout";

/// Which keys an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyName {
    Targets,
    Rollout,
    Snapshot,
    Timestamp,
}

impl KeyName {
    pub fn file(self) -> &'static str {
        match self {
            KeyName::Targets => "targets.pk8",
            KeyName::Rollout => "rollout.pk8",
            KeyName::Snapshot => "snapshot.pk8",
            KeyName::Timestamp => "timestamp.pk8",
        }
    }
}

/// A directory of keys (not all need to be present: the server holds only online ones).
#[derive(Debug, Clone)]
pub struct KeyDir {
    pub dir: PathBuf,
}

impl KeyDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, k: KeyName) -> PathBuf {
        self.dir.join(k.file())
    }

    /// Key sources for the named keys; a missing file is a clear error.
    pub fn sources(&self, names: &[KeyName]) -> Result<Vec<Box<dyn KeySource>>> {
        names
            .iter()
            .map(|&k| {
                let path = self.path(k);
                if path.is_file() {
                    Ok(Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
                } else {
                    Err(Error::MissingKey { key: k.file(), dir: self.dir.clone() })
                }
            })
            .collect()
    }

    pub fn root_key_paths(&self) -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|source| Error::Io { path: self.dir.clone(), source })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("root-") && n.ends_with(".pk8"))
            })
            .collect();
        v.sort();
        Ok(v)
    }
}

/// Options of `edgeimg keys init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub root_keys: usize,
    pub root_threshold: usize,
    /// Root metadata lifetime.
    pub root_expires: jiff::Timestamp,
    /// Mark every file as an insecure example (keys-example/).
    pub insecure_example: bool,
}

pub(crate) fn write_new_key(path: &Path) -> Result<()> {
    write_key(path)
}

fn write_key(path: &Path) -> Result<()> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let der = key.to_pkcs8_der().map_err(|e| Error::Key { path: path.into(), message: e.to_string() })?;
    write_private(path, der.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Io { path: path.into(), source })?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|source| Error::Io { path: path.into(), source })
}

pub(crate) async fn tuf_key(path: &Path) -> Result<tough::schema::key::Key> {
    let s = LocalKeySource { path: path.into() }
        .as_sign()
        .await
        .map_err(|e| Error::Key { path: path.into(), message: e.to_string() })?;
    Ok(s.tuf_key())
}

pub(crate) fn key_id(key: &tough::schema::key::Key) -> Result<Decoded<Hex>> {
    key.key_id().map_err(|e| Error::Tough { what: "computing a key id".into(), message: e.to_string() })
}

/// Key ids of the keys in `paths`, adding the keys to `keys`.
async fn role_ids(
    paths: &[PathBuf],
    keys: &mut HashMap<Decoded<Hex>, tough::schema::key::Key>,
) -> Result<Vec<Decoded<Hex>>> {
    let mut ids = Vec::new();
    for p in paths {
        let k = tuf_key(p).await?;
        let id = key_id(&k)?;
        keys.insert(id.clone(), k);
        ids.push(id);
    }
    Ok(ids)
}

/// Generate a key set and its signed root.json. Refuses to overwrite existing keys.
pub async fn init(dir: &Path, opts: &InitOptions) -> Result<PathBuf> {
    if opts.root_keys == 0 || opts.root_threshold == 0 || opts.root_threshold > opts.root_keys {
        return Err(Error::Invalid(format!(
            "root threshold {} of {} keys: need 1 <= threshold <= keys",
            opts.root_threshold, opts.root_keys
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    if dir.join("root.json").exists() || dir.join(KeyName::Targets.file()).exists() {
        return Err(Error::Invalid(format!("{} already holds keys; refusing to overwrite them", dir.display())));
    }
    let kd = KeyDir::new(dir);
    let mut root_paths = Vec::new();
    for i in 1..=opts.root_keys {
        let p = dir.join(format!("root-{i}.pk8"));
        write_key(&p)?;
        root_paths.push(p);
    }
    for k in [KeyName::Targets, KeyName::Rollout, KeyName::Snapshot, KeyName::Timestamp] {
        write_key(&kd.path(k))?;
    }

    let mut keys = HashMap::new();
    let root_ids = role_ids(&root_paths, &mut keys).await?;
    let mut roles = HashMap::new();
    let nz = |n: usize| NonZeroU64::new(n as u64).expect("checked above");
    roles.insert(
        RoleType::Root,
        RoleKeys { keyids: root_ids, threshold: nz(opts.root_threshold), _extra: HashMap::new() },
    );
    for (role, k) in [
        (RoleType::Targets, KeyName::Targets),
        (RoleType::Snapshot, KeyName::Snapshot),
        (RoleType::Timestamp, KeyName::Timestamp),
    ] {
        let ids = role_ids(&[kd.path(k)], &mut keys).await?;
        roles.insert(role, RoleKeys { keyids: ids, threshold: nz(1), _extra: HashMap::new() });
    }
    let root = Root {
        spec_version: crate::SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: crate::round_seconds(opts.root_expires),
        keys,
        roles,
        _extra: HashMap::new(),
    };
    let sources: Vec<Box<dyn KeySource>> =
        root_paths.iter().map(|p| Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>).collect();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = tough::editor::signed::SignedRole::new(root.clone(), &KeyHolder::Root(root), &sources, &rng)
        .await
        .map_err(|e| Error::Tough { what: "signing root.json".into(), message: e.to_string() })?;
    let path = dir.join("root.json");
    std::fs::write(&path, signed.buffer()).map_err(|source| Error::Io { path: path.clone(), source })?;
    let readme = if opts.insecure_example {
        "INSECURE EXAMPLE KEYS: these private keys are published in the edgeimg repository.\n\
         Anybody can sign releases with them. Use them only for tests and the quickstart.\n\
         Make real keys with `edgeimg keys init --out <dir>` and keep root-*.pk8 and targets.pk8 offline.\n"
    } else {
        "edgeimg release keys (made by `edgeimg keys init`).\n\n\
         OFFLINE (never on the update server): root-*.pk8 (give each to a different person),\n\
         targets.pk8 (release CI: decides what software exists).\n\
         ONLINE (the update server holds them): rollout.pk8 (who gets which release when),\n\
         snapshot.pk8, timestamp.pk8 (freshness).\n\
         root.json goes into every image (recipe: updater.root) and is public.\n"
    };
    std::fs::write(dir.join("README"), readme).map_err(|source| Error::Io { path: dir.join("README"), source })?;
    Ok(path)
}
