//! The recipe lock file (`<recipe>.lock`, beside the recipe, like Cargo.lock): the digest
//! each image tag resolved to when `edgeimg lock` ran. Builds use it for every image the
//! recipe does not pin itself, and refuse an image that is in neither.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ImageRef;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    /// `registry/repository:tag` → `sha256:…`
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("image `{image}` is not pinned: add @sha256:<digest> to it in the recipe, or run `edgeimg lock --recipe {recipe}` to resolve and record its digest")]
    Unpinned { image: String, recipe: String },
}

/// Where the lock file of a recipe lives: `k3s-edge.toml` → `k3s-edge.lock`.
pub fn path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

impl LockFile {
    pub fn load(path: &Path) -> Result<Option<Self>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LockError::Bad { path: path.into(), message: e.to_string() }),
        };
        let lock: LockFile =
            toml::from_str(&text).map_err(|e| LockError::Bad { path: path.into(), message: e.to_string() })?;
        if lock.version != LOCK_VERSION {
            return Err(LockError::Bad {
                path: path.into(),
                message: format!(
                    "lock file version {} (this edgeimg writes {LOCK_VERSION}); run `edgeimg lock` again",
                    lock.version
                ),
            });
        }
        for (k, d) in &lock.images {
            ImageRef::parse(&format!("{k}@{d}")).map_err(|m| LockError::Bad { path: path.into(), message: m })?;
        }
        Ok(Some(lock))
    }

    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let mut text = String::from(
            "# Written by `edgeimg lock`: the digest each image tag resolved to.\n\
             # Commit this file; `edgeimg build` pulls exactly these digests.\n",
        );
        text.push_str(
            &toml::to_string(self).map_err(|e| LockError::Bad { path: path.into(), message: e.to_string() })?,
        );
        crate::fsutil::atomic_write(path, text.as_bytes())
            .map_err(|source| LockError::Write { path: path.into(), source })
    }

    /// Pin every image: the recipe's digest if it has one, else the lock's.
    pub fn pin(lock: Option<&LockFile>, images: &[ImageRef], recipe: &Path) -> Result<Vec<ImageRef>, LockError> {
        images
            .iter()
            .map(|i| {
                if i.digest.is_some() {
                    return Ok(i.clone());
                }
                lock.and_then(|l| l.images.get(&i.unpinned()))
                    .map(|d| i.with_digest(d))
                    .ok_or_else(|| LockError::Unpinned { image: i.to_string(), recipe: recipe.display().to_string() })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pin_uses_recipe_digest_then_lock() {
        let mut lock = LockFile { version: 1, images: BTreeMap::new() };
        lock.images.insert("docker.io/library/nginx:1.27".into(), D.into());
        let imgs =
            vec![ImageRef::parse("nginx:1.27").unwrap(), ImageRef::parse(&format!("ghcr.io/a/b:1@{D}")).unwrap()];
        let pinned = LockFile::pin(Some(&lock), &imgs, Path::new("r.toml")).unwrap();
        assert_eq!(pinned[0].digest.as_deref(), Some(D));
        let e = LockFile::pin(None, &imgs, Path::new("r.toml")).unwrap_err().to_string();
        assert!(e.contains("docker.io/library/nginx:1.27") && e.contains("edgeimg lock --recipe r.toml"), "{e}");
    }

    #[test]
    fn save_load_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = path_for(&d.path().join("x.toml"));
        assert_eq!(p.file_name().unwrap(), "x.lock");
        let mut lock = LockFile { version: 1, images: BTreeMap::new() };
        lock.images.insert("docker.io/library/nginx:1.27".into(), D.into());
        lock.save(&p).unwrap();
        assert_eq!(LockFile::load(&p).unwrap(), Some(lock));
        std::fs::write(&p, "version = 1\n[images]\n\"x:1\" = \"sha256:bad\"\n").unwrap();
        assert!(LockFile::load(&p).is_err());
    }
}

#[derive(Debug, serde::Serialize)]
pub struct LockEntry {
    pub image: String,
    pub digest: String,
    /// "kept", "resolved" or "changed".
    pub status: &'static str,
}

#[derive(Debug, serde::Serialize)]
pub struct LockChanges {
    pub lock_file: PathBuf,
    pub entries: Vec<LockEntry>,
}

/// `edgeimg lock`: resolve the recipe's unpinned images and write the lock file. Entries
/// for images the recipe no longer lists are dropped.
pub fn lock_recipe(recipe_path: &Path, update: bool, insecure: &[String], cache: &Path) -> anyhow::Result<LockChanges> {
    use anyhow::Context;
    let recipe = crate::config::load_recipe(recipe_path)?;
    // K3s's images and the charts' (each once).
    let images: Vec<ImageRef> = recipe
        .recipe
        .k3s
        .as_ref()
        .map(|k| {
            crate::build::k3s::all_images(k, &recipe).iter().map(|r| ImageRef::parse(r).expect("validated")).collect()
        })
        .unwrap_or_default();
    let path = path_for(recipe_path);
    let old = LockFile::load(&path)?.unwrap_or(LockFile { version: LOCK_VERSION, images: BTreeMap::new() });
    let mut new = LockFile { version: LOCK_VERSION, images: BTreeMap::new() };
    let puller = super::pull::Puller::new(cache, &super::pull::Puller::insecure_list(insecure, &images))?;
    let rt = crate::net::runtime();
    let mut entries = Vec::new();
    for i in images.iter().filter(|i| i.digest.is_none()) {
        let key = i.unpinned();
        let (digest, status) = match (old.images.get(&key), update) {
            (Some(d), false) => (d.clone(), "kept"),
            (prev, _) => {
                let d = rt.block_on(puller.resolve_tag(i)).with_context(|| format!("resolving {i}"))?;
                let status = match prev {
                    Some(p) if *p != d => "changed",
                    Some(_) => "kept",
                    None => "resolved",
                };
                (d, status)
            }
        };
        new.images.insert(key.clone(), digest.clone());
        entries.push(LockEntry { image: key, digest, status });
    }
    new.save(&path)?;
    Ok(LockChanges { lock_file: path, entries })
}
