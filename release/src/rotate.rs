//! Replacing a compromised or retiring online key (snapshot or timestamp): a new root
//! version lists the new key instead of the old one, signed by the root keys, and the
//! role is re-signed with the new key. Clients walk the root chain (N.root.json) and from
//! then on reject anything the old key signs.

use std::collections::HashMap;
use std::num::NonZeroU64;

use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleType, Root, Signed};

use crate::keys::{key_id, tuf_key, KeyDir, KeyName};
use crate::{tough_err, Error, Lifetimes, Repo, Result};

/// Rotate `role` (Snapshot or Timestamp). The old key file is kept as
/// `<role>.pk8.revoked-<root version>`; root and the role are re-signed.
pub async fn rotate_online_key(
    repo: &Repo,
    keys: &KeyDir,
    role: KeyName,
    lifetimes: &Lifetimes,
    now: jiff::Timestamp,
) -> Result<u64> {
    let role_type = match role {
        KeyName::Snapshot => RoleType::Snapshot,
        KeyName::Timestamp => RoleType::Timestamp,
        other => {
            return Err(Error::Invalid(format!(
                "rotating {} is not supported here (only snapshot and timestamp)",
                other.file()
            )))
        }
    };
    let lock = repo.lock()?;
    let root_path = repo.latest_root()?;
    let bytes = std::fs::read(&root_path).map_err(|source| Error::Io { path: root_path.clone(), source })?;
    let old: Signed<Root> =
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("{}: {e}", root_path.display())))?;
    let mut root = old.signed.clone();
    let new_version = root.version.get() + 1;

    let key_path = keys.path(role);
    let revoked = keys.dir.join(format!("{}.revoked-{}", role.file(), root.version));
    std::fs::rename(&key_path, &revoked).map_err(|source| Error::Io { path: key_path.clone(), source })?;
    crate::keys::write_new_key(&key_path)?;
    let new_key = tuf_key(&key_path).await?;
    let new_id = key_id(&new_key)?;
    let old_ids: Vec<_> = root.roles[&role_type].keyids.clone();
    for id in &old_ids {
        // Keep keys other roles still use.
        if !root.roles.iter().any(|(r, k)| *r != role_type && k.keyids.contains(id)) {
            root.keys.remove(id);
        }
    }
    root.keys.insert(new_id.clone(), new_key);
    if let Some(rk) = root.roles.get_mut(&role_type) {
        rk.keyids = vec![new_id];
    }
    root.version = NonZeroU64::new(new_version).unwrap_or(NonZeroU64::MIN);
    root.expires = old.signed.expires;
    root._extra = HashMap::new();

    // The new root is signed by the root keys (the same ones: root keys are not rotated here).
    let root_sources: Vec<Box<dyn KeySource>> = keys
        .root_key_paths()?
        .into_iter()
        .map(|p| Box::new(LocalKeySource { path: p }) as Box<dyn KeySource>)
        .collect();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root), &root_sources, &rng)
        .await
        .map_err(tough_err("signing the new root"))?;
    // Written with the re-signed snapshot and timestamp in one staged commit (N.root.json
    // lands before timestamp.json).
    let staged =
        tempfile::NamedTempFile::new_in(&repo.dir).map_err(|source| Error::Io { path: repo.dir.clone(), source })?;
    std::fs::write(staged.path(), signed.buffer())
        .map_err(|source| Error::Io { path: staged.path().into(), source })?;
    crate::rollout::resign_online(repo, keys, None, lifetimes, now, Some(staged.path())).await?;
    std::fs::write(keys.dir.join("root.json"), signed.buffer())
        .map_err(|source| Error::Io { path: keys.dir.join("root.json"), source })?;
    drop(lock);
    Ok(new_version)
}
