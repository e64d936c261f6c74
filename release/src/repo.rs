//! A TUF repository on disk (`metadata/`, `targets/`), edited with tough.
//!
//! Writes are staged: tough writes into a temporary directory, then versioned files are
//! moved into `metadata/` and `timestamp.json`, the only name a client starts from, is
//! renamed last. A crash or power cut at any point leaves clients with the previous
//! consistent repository. A lock file serialises editors (a person running `rollout`
//! while the server auto-halts a channel).

use std::fs::File;
use std::path::{Path, PathBuf};

use tough::{ExpirationEnforcement, Repository, RepositoryLoader};
use url::Url;

use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

/// Held while the repository is being changed; released when dropped.
pub struct Lock {
    _lock: nix::fcntl::Flock<File>,
}

impl Repo {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    pub fn exists(&self) -> bool {
        self.metadata_dir().join("timestamp.json").is_file()
    }

    /// Exclusive lock on the repository (blocks until free).
    pub fn lock(&self) -> Result<Lock> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io { path: self.dir.clone(), source })?;
        let path = self.dir.join(".lock");
        let file = File::create(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Io { path: path.clone(), source: e.into() })?;
        Ok(Lock { _lock: lock })
    }

    /// The newest root metadata in the repository (N.root.json with the highest N).
    pub fn latest_root(&self) -> Result<PathBuf> {
        let dir = self.metadata_dir();
        let mut best: Option<(u64, PathBuf)> = None;
        for e in std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".root.json").and_then(|v| v.parse::<u64>().ok()) {
                if best.as_ref().is_none_or(|(b, _)| n > *b) {
                    best = Some((n, e.path()));
                }
            }
        }
        best.map(|(_, p)| p).ok_or_else(|| Error::Invalid(format!("{} has no N.root.json", dir.display())))
    }

    pub fn metadata_url(&self) -> Result<Url> {
        dir_url(&self.metadata_dir())
    }

    pub fn targets_url(&self) -> Result<Url> {
        dir_url(&self.targets_dir())
    }

    /// Load the repository as a TUF client would, trusting its own newest root. Expired
    /// metadata is accepted here: the editor's job is to replace it.
    pub async fn load(&self) -> Result<Repository> {
        let root_path = self.latest_root()?;
        let root = std::fs::read(&root_path).map_err(|source| Error::Io { path: root_path.clone(), source })?;
        let datastore = tempfile::tempdir().map_err(|source| Error::Io { path: std::env::temp_dir(), source })?;
        RepositoryLoader::new(&root, self.metadata_url()?, self.targets_url()?)
            .expiration_enforcement(ExpirationEnforcement::Unsafe)
            .datastore(datastore.path())
            .load()
            .await
            .map_err(|e| Error::Tough {
                what: format!("loading the repository {}", self.dir.display()),
                message: crate::chain(&e),
            })
    }

    /// Move staged metadata into place: versioned files first, timestamp.json last.
    pub fn commit_metadata(&self, staged: &Path) -> Result<()> {
        let dest = self.metadata_dir();
        std::fs::create_dir_all(&dest).map_err(|source| Error::Io { path: dest.clone(), source })?;
        let mut names: Vec<String> = std::fs::read_dir(staged)
            .map_err(|source| Error::Io { path: staged.into(), source })?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| n == "timestamp.json");
        for n in names {
            let (from, to) = (staged.join(&n), dest.join(&n));
            // Write a complete file next to the target and rename it over: never a torn file.
            let tmp = dest.join(format!(".{n}.tmp"));
            std::fs::copy(&from, &tmp).map_err(|source| Error::Io { path: tmp.clone(), source })?;
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(|source| Error::Io { path: tmp.clone(), source })?;
            std::fs::rename(&tmp, &to).map_err(|source| Error::Io { path: to.clone(), source })?;
        }
        File::open(&dest).and_then(|f| f.sync_all()).map_err(|source| Error::Io { path: dest, source })
    }
}

fn dir_url(dir: &Path) -> Result<Url> {
    let abs = std::path::absolute(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    Url::from_directory_path(&abs).map_err(|_| Error::Invalid(format!("{} cannot be a file URL", abs.display())))
}
