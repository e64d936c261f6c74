//! First boot (and any later re-provisioning): move the provisioning file from the boot
//! partition to /data, then apply it. The file is secret-bearing, so it leaves the boot
//! partition (readable by anyone holding the card) as soon as it is safe on /data.
//!
//! Power cut at any step: the copy on /data is written atomically before the boot
//! partition's copy is deleted, so the next boot finds at least one complete copy and
//! repeats the move (it is idempotent).

use std::fs;
use std::path::{Path, PathBuf};

use edgeimg_proto::provision::{Provision, FILE_NAME};

use crate::fsutil::{at, atomic_write, sync_dir};

/// Where the applied provisioning lives on the data partition.
pub const STORED: &str = "/data/edgeimg/provision.toml";
/// The K3s join secrets, for `k3s-prepare`.
pub const K3S_TOKEN: &str = "/var/lib/edgeimg/k3s/token";
pub const K3S_SERVER: &str = "/var/lib/edgeimg/k3s/server";
/// The fleet enrollment token from the provisioning file (read by the report step).
pub const ENROLL_TOKEN: &str = "/var/lib/edgeimg/enroll-token";
/// The GitOps repository's credentials (JSON), for `k3s-prepare`.
pub const GITOPS_AUTH: &str = "/var/lib/edgeimg/gitops-auth.json";

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({message}); remove it or provision the device again")]
    Stored { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProvisionError {
    let path = path.to_path_buf();
    move |source| ProvisionError::Io { path, source }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A new file was taken from the boot partition.
    pub imported: bool,
    /// A file on the boot partition was invalid and renamed to `<name>.invalid`.
    pub rejected: Option<String>,
    pub applied: Option<Provision>,
}

pub fn run(root: &Path, boot_dir: &str, set_hostname: bool) -> Result<Outcome, ProvisionError> {
    let mut out = Outcome::default();
    let incoming = at(root, &format!("{boot_dir}/{FILE_NAME}"));
    let stored = at(root, STORED);
    if incoming.is_file() {
        let text = fs::read_to_string(&incoming).map_err(io(&incoming))?;
        match Provision::parse(&text) {
            Ok(p) => {
                atomic_write(&stored, text.as_bytes(), 0o600).map_err(io(&stored))?;
                fs::remove_file(&incoming).map_err(io(&incoming))?;
                sync_dir(incoming.parent().unwrap_or(root)).map_err(io(&incoming))?;
                tracing::info!("provisioned from the boot partition: {}", p.summary());
                out.imported = true;
            }
            Err(message) => {
                let bad = incoming.with_file_name(format!("{FILE_NAME}.invalid"));
                fs::rename(&incoming, &bad).map_err(io(&incoming))?;
                tracing::error!(
                    "{} is invalid ({message}); renamed it to {}, keeping the previous provisioning",
                    incoming.display(),
                    bad.display()
                );
                out.rejected = Some(message);
            }
        }
    }
    if !stored.is_file() {
        return Ok(out);
    }
    let text = fs::read_to_string(&stored).map_err(io(&stored))?;
    let p = Provision::parse(&text).map_err(|message| ProvisionError::Stored { path: stored.clone(), message })?;
    apply(root, &p, set_hostname)?;
    out.applied = Some(p);
    Ok(out)
}

fn apply(root: &Path, p: &Provision, set_hostname: bool) -> Result<(), ProvisionError> {
    if let (Some(h), true) = (&p.hostname, set_hostname) {
        // Transient hostname: /etc/hostname belongs to the read-only image.
        if let Err(e) = nix::unistd::sethostname(h) {
            tracing::warn!("could not set the hostname to {h}: {e}");
        }
    }
    let k3s = p.k3s.clone().unwrap_or_default();
    let enroll = p.updater.clone().unwrap_or_default().enroll_token;
    let gitops = p.gitops.as_ref().and_then(|g| serde_json::to_string(g).ok());
    for (path, value) in
        [(K3S_TOKEN, k3s.token), (K3S_SERVER, k3s.server), (ENROLL_TOKEN, enroll), (GITOPS_AUTH, gitops)]
    {
        let f = at(root, path);
        match value {
            Some(v) => {
                let new = format!("{v}\n");
                if fs::read_to_string(&f).ok().as_deref() != Some(new.as_str()) {
                    atomic_write(&f, new.as_bytes(), 0o600).map_err(io(&f))?;
                }
            }
            None => match fs::remove_file(&f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&f)(e)),
                _ => {}
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "hostname = \"shop-042\"\n[k3s]\ntoken = \"K10::server:s3cret\"\nserver = \"https://10.0.0.1:6443\"\n\
                        [updater]\nenroll_token = \"fleet-token\"\n";

    #[test]
    fn moves_then_applies() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("efi")).unwrap();
        fs::write(d.path().join("efi").join(FILE_NAME), GOOD).unwrap();
        let o = run(d.path(), "/efi", false).unwrap();
        assert!(o.imported);
        assert!(!d.path().join("efi").join(FILE_NAME).exists(), "the secret left the boot partition");
        assert_eq!(fs::read_to_string(at(d.path(), K3S_TOKEN)).unwrap(), "K10::server:s3cret\n");
        assert_eq!(fs::read_to_string(at(d.path(), ENROLL_TOKEN)).unwrap(), "fleet-token\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(at(d.path(), STORED)).unwrap().permissions().mode() & 0o777, 0o600);
        // Next boot: nothing new, same result.
        let o = run(d.path(), "/efi", false).unwrap();
        assert!(!o.imported);
        assert_eq!(o.applied.unwrap().hostname.as_deref(), Some("shop-042"));
    }

    #[test]
    fn power_cut_after_copy_before_delete_is_repeated_safely() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("efi")).unwrap();
        fs::write(d.path().join("efi").join(FILE_NAME), GOOD).unwrap();
        // State as if power went after the atomic write and before the delete.
        atomic_write(&at(d.path(), STORED), GOOD.as_bytes(), 0o600).unwrap();
        let o = run(d.path(), "/efi", false).unwrap();
        assert!(o.imported);
        assert!(!d.path().join("efi").join(FILE_NAME).exists());
        assert!(at(d.path(), K3S_SERVER).exists());
    }

    #[test]
    fn invalid_file_is_set_aside_and_old_provisioning_kept() {
        let d = tempfile::tempdir().unwrap();
        atomic_write(&at(d.path(), STORED), GOOD.as_bytes(), 0o600).unwrap();
        fs::create_dir_all(d.path().join("efi")).unwrap();
        fs::write(d.path().join("efi").join(FILE_NAME), "hostname = \"no spaces allowed\"\n").unwrap();
        let o = run(d.path(), "/efi", false).unwrap();
        assert!(o.rejected.is_some());
        assert!(d.path().join("efi").join(format!("{FILE_NAME}.invalid")).exists());
        assert_eq!(o.applied.unwrap().hostname.as_deref(), Some("shop-042"));
    }

    #[test]
    fn dropping_the_token_removes_it() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("efi")).unwrap();
        fs::write(d.path().join("efi").join(FILE_NAME), GOOD).unwrap();
        run(d.path(), "/efi", false).unwrap();
        fs::write(d.path().join("efi").join(FILE_NAME), "hostname = \"x1\"\n").unwrap();
        run(d.path(), "/efi", false).unwrap();
        assert!(!at(d.path(), K3S_TOKEN).exists());
        assert!(!at(d.path(), ENROLL_TOKEN).exists());
    }
}
