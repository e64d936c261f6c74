//! Trusted metadata on the device: one file per top-level role, replaced atomically.
//! (§5.3.8, §5.4.5, §5.5.7, §5.6.6: "persist the new metadata".)

use std::path::{Path, PathBuf};

use super::TufError;

#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    /// Open a store, seeding `root.json` from the image's trusted root on first use.
    pub fn open(dir: &Path, initial_root: &Path) -> Result<Self, TufError> {
        let err = |m: String| TufError::Store { path: dir.display().to_string(), message: m };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let root = dir.join("root.json");
        if !root.exists() {
            let bytes = std::fs::read(initial_root)
                .map_err(|e| err(format!("reading the trusted root {}: {e}", initial_root.display())))?;
            crate::fsutil::atomic_write(&root, &bytes, 0o644).map_err(|e| err(e.to_string()))?;
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    pub fn load(&self, role: &str) -> Result<Option<Vec<u8>>, TufError> {
        match std::fs::read(self.dir.join(format!("{role}.json"))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TufError::Store { path: self.dir.display().to_string(), message: e.to_string() }),
        }
    }

    pub fn save(&self, role: &str, bytes: &[u8]) -> Result<(), TufError> {
        crate::fsutil::atomic_write(&self.dir.join(format!("{role}.json")), bytes, 0o644)
            .map_err(|e| TufError::Store { path: self.dir.display().to_string(), message: e.to_string() })
    }

    pub fn remove(&self, role: &str) -> Result<(), TufError> {
        match std::fs::remove_file(self.dir.join(format!("{role}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(TufError::Store { path: self.dir.display().to_string(), message: e.to_string() })
            }
            _ => Ok(()),
        }
    }
}
