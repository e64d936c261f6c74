//! The `[secure_boot]` recipe section: sign the boot loader and each slot's unified kernel
//! image with a Secure Boot db key, so UEFI firmware with that key enrolled runs only them.
//! Every key is documented in docs/configuration.md.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBoot {
    /// PEM private key of the db signing key (relative to the recipe). Keep real ones out
    /// of the repository: CI can write it from a secret before the build.
    pub key: PathBuf,
    /// PEM X.509 certificate of that key, as enrolled in the firmware's db.
    pub cert: PathBuf,
}

impl SecureBoot {
    pub fn validate(&self, src: &Source, dir: &Path) -> Result<(), ConfigError> {
        for (field, path, marker) in [
            ("secure_boot.key", &self.key, "PRIVATE KEY-----"),
            ("secure_boot.cert", &self.cert, "-----BEGIN CERTIFICATE-----"),
        ] {
            let p = dir.join(path);
            let text = std::fs::read_to_string(&p).map_err(|e| {
                src.error_at(
                    field,
                    format!("{}: {e} (make a db key with `openssl req -x509`, see docs/secure-boot.md)", p.display()),
                )
            })?;
            if !text.contains(marker) {
                return Err(src.error_at(
                    field,
                    format!("{} is not a PEM file with a {}", p.display(), marker.trim_matches('-')),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Recipe, Source};

    fn load(dir: &std::path::Path) -> Result<(), String> {
        let p = dir.join("r.toml");
        std::fs::write(
            &p,
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n\n[secure_boot]\nkey = \"sb/db.key\"\ncert = \"sb/db.crt\"\n",
        )
        .unwrap();
        Recipe::load(&Source::read(&p).map_err(|e| e.to_string())?).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn keys_must_exist_and_be_pem() {
        let d = tempfile::tempdir().unwrap();
        let e = load(d.path()).unwrap_err();
        assert!(e.contains("secure_boot.key") && e.contains("sb/db.key") && e.contains("openssl req"), "{e}");
        std::fs::create_dir_all(d.path().join("sb")).unwrap();
        std::fs::write(d.path().join("sb/db.key"), "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n")
            .unwrap();
        std::fs::write(d.path().join("sb/db.crt"), "not a certificate").unwrap();
        let e = load(d.path()).unwrap_err();
        assert!(e.contains("secure_boot.cert") && e.contains("not a PEM file with a BEGIN CERTIFICATE"), "{e}");
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../keys-example/secureboot");
        std::fs::copy(repo.join("db.crt"), d.path().join("sb/db.crt")).unwrap();
        load(d.path()).unwrap();
    }
}
