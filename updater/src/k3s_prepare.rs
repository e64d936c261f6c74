//! Before K3s starts, at every boot: make its writable state (on /data) match the release
//! that booted (read-only root).
//!
//! - `agent/images/` gets a symlink per archive of this release (the archives stay in the
//!   verity-protected root); links to other releases' archives are removed. K3s stats and
//!   reads through the links.
//! - `.cache.json` exists only if this K3s version handles it safely.
//! - The release's manifests are copied into `server/manifests/` as `edgeimg-<name>`,
//!   only when their content changed (K3s re-applies a file when its mtime changes);
//!   manifests a previous release shipped and this one does not are removed and kept in
//!   `/var/lib/edgeimg/k3s/removed/` (K3s does not delete resources of a removed file).
//! - `/run/edgeimg/k3s.env` carries the join settings from the provisioning file.
//! - The GitOps agent's credentials, when the release's repository needs them, become the
//!   Secret `flux-system/edgeimg-gitops-auth` in `server/manifests/` (mode 0600, on /data):
//!   from the provisioning file, never from the image.
//!
//! Every step is idempotent; a power cut anywhere is repaired by the next boot's run.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use edgeimg_proto::k3s::{DeviceK3s, ARCHIVE_DIR, DEVICE_FILE, MANIFEST_DIR};

use crate::fsutil::{at, atomic_symlink, atomic_write};
use crate::provision::{GITOPS_AUTH, K3S_SERVER, K3S_TOKEN};

pub const STATE: &str = "/var/lib/edgeimg/k3s/manifests.json";
pub const REMOVED: &str = "/var/lib/edgeimg/k3s/removed";
pub const ENV: &str = "/run/edgeimg/k3s.env";
const PREFIX: &str = "edgeimg-";

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("K3s role `{role}` joins a cluster, but the device has no {missing}: put a provisioning file with [k3s] server and token on the boot partition (edgeimg flash --provision)")]
    NotProvisioned { role: String, missing: &'static str },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError {
    let path = path.to_path_buf();
    move |source| PrepareError::Io { path, source }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub linked: Vec<String>,
    pub unlinked: Vec<String>,
    pub manifests_written: Vec<String>,
    pub manifests_removed: Vec<String>,
    pub import_cache: bool,
    /// The GitOps credentials Secret is in place (None: not needed).
    pub gitops_secret: Option<bool>,
}

/// The Secret's file name in K3s's manifests directory.
pub const GITOPS_SECRET_FILE: &str = "edgeimg-gitops-auth.yaml";

/// Write (or remove) the GitOps credentials Secret.
fn gitops_secret(root: &Path, k: &DeviceK3s, r: &mut Report) -> Result<(), PrepareError> {
    let dst = at(root, &format!("{}/server/manifests/{GITOPS_SECRET_FILE}", k.data_dir));
    let auth: Option<edgeimg_proto::provision::GitopsAuth> =
        fs::read(at(root, GITOPS_AUTH)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(kind) = &k.gitops_auth else {
        if dst.exists() {
            fs::remove_file(&dst).map_err(io(&dst))?;
        }
        return Ok(());
    };
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let data = match &auth {
        Some(a) if a.kind() == kind.as_str() => match (&a.username, &a.password, &a.ssh_key, &a.known_hosts) {
            (Some(u), Some(p), _, _) => format!("  username: {}\n  password: {}\n", q(u), q(p)),
            (_, _, Some(key), Some(hosts)) => format!("  identity: {}\n  known_hosts: {}\n", q(key), q(hosts)),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if data.is_empty() {
        tracing::warn!(
            "this release's GitOps repository needs {kind} credentials, but the provisioning file has no matching \
             [gitops] section: the agent cannot fetch until the device is provisioned"
        );
        if dst.exists() {
            fs::remove_file(&dst).map_err(io(&dst))?;
        }
        r.gitops_secret = Some(false);
        return Ok(());
    }
    let text = format!(
        "# Written by edgeimg-updater k3s-prepare from the provisioning file.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: edgeimg-gitops-auth\n  namespace: flux-system\n\
         type: Opaque\nstringData:\n{data}"
    );
    if fs::read_to_string(&dst).ok().as_deref() != Some(text.as_str()) {
        fs::create_dir_all(dst.parent().unwrap_or(Path::new("/"))).map_err(io(&dst))?;
        atomic_write(&dst, text.as_bytes(), 0o600).map_err(io(&dst))?;
    }
    r.gitops_secret = Some(true);
    Ok(())
}

pub fn run(root: &Path) -> Result<Option<Report>, PrepareError> {
    let desc = at(root, DEVICE_FILE);
    let k: DeviceK3s = match fs::read(&desc) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| PrepareError::Bad { path: desc.clone(), message: e.to_string() })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&desc)(e)),
    };
    let mut r = Report { import_cache: k.import_cache, ..Default::default() };
    link_images(root, &k, &mut r)?;
    if k.role != "agent" {
        sync_manifests(root, &k, &mut r)?;
        gitops_secret(root, &k, &mut r)?;
    }
    write_env(root, &k)?;
    Ok(Some(r))
}

fn link_images(root: &Path, k: &DeviceK3s, r: &mut Report) -> Result<(), PrepareError> {
    let dir = at(root, &format!("{}/agent/images", k.data_dir));
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let wanted: BTreeSet<&str> = k.archives.iter().map(String::as_str).collect();
    for e in fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(target) = fs::read_link(e.path()) else { continue };
        if target.starts_with(ARCHIVE_DIR) && !wanted.contains(name.as_str()) {
            fs::remove_file(e.path()).map_err(io(&e.path()))?;
            r.unlinked.push(name);
        }
    }
    for name in &wanted {
        let link = dir.join(name);
        let target = PathBuf::from(format!("{ARCHIVE_DIR}/{name}"));
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            atomic_symlink(&target, &link).map_err(io(&link))?;
            r.linked.push(name.to_string());
        }
    }
    let cache = dir.join(".cache.json");
    if k.import_cache {
        if !cache.exists() {
            atomic_write(&cache, b"", 0o644).map_err(io(&cache))?;
        }
    } else if cache.exists() {
        fs::remove_file(&cache).map_err(io(&cache))?;
    }
    Ok(())
}

fn sync_manifests(root: &Path, k: &DeviceK3s, r: &mut Report) -> Result<(), PrepareError> {
    let dir = at(root, &format!("{}/server/manifests", k.data_dir));
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let state = at(root, STATE);
    let previous: Vec<String> = match fs::read(&state) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let current: Vec<String> = k.manifests.iter().map(|m| format!("{PREFIX}{m}")).collect();
    for (m, name) in k.manifests.iter().zip(&current) {
        let src = at(root, &format!("{MANIFEST_DIR}/{m}"));
        let content = fs::read(&src).map_err(io(&src))?;
        let dst = dir.join(name);
        if fs::read(&dst).ok().as_deref() != Some(content.as_slice()) {
            atomic_write(&dst, &content, 0o600).map_err(io(&dst))?;
            r.manifests_written.push(name.clone());
        }
    }
    let removed_dir = at(root, REMOVED);
    for old in previous.iter().filter(|p| !current.contains(p)) {
        let f = dir.join(old);
        if f.exists() {
            fs::create_dir_all(&removed_dir).map_err(io(&removed_dir))?;
            fs::rename(&f, removed_dir.join(old)).map_err(io(&f))?;
            r.manifests_removed.push(old.clone());
        }
    }
    let json = serde_json::to_vec(&current).unwrap_or_default();
    atomic_write(&state, &json, 0o644).map_err(io(&state))?;
    Ok(())
}

fn write_env(root: &Path, k: &DeviceK3s) -> Result<(), PrepareError> {
    let token = at(root, K3S_TOKEN);
    let server = fs::read_to_string(at(root, K3S_SERVER)).ok().map(|s| s.trim().to_string());
    let mut env = String::from("# Written by edgeimg-updater k3s-prepare from the provisioning file.\n");
    if token.is_file() {
        env.push_str(&format!("K3S_TOKEN_FILE={K3S_TOKEN}\n"));
    }
    if let Some(s) = &server {
        env.push_str(&format!("K3S_URL={s}\n"));
    }
    if k.needs_join() {
        if server.is_none() {
            return Err(PrepareError::NotProvisioned { role: k.role.clone(), missing: "server URL" });
        }
        if !token.is_file() {
            return Err(PrepareError::NotProvisioned { role: k.role.clone(), missing: "join token" });
        }
    }
    let p = at(root, ENV);
    atomic_write(&p, env.as_bytes(), 0o600).map_err(io(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(root: &Path, k: &DeviceK3s, manifests: &[(&str, &str)]) {
        atomic_write(&at(root, DEVICE_FILE), &serde_json::to_vec(k).unwrap(), 0o644).unwrap();
        for (n, c) in manifests {
            atomic_write(&at(root, &format!("{MANIFEST_DIR}/{n}")), c.as_bytes(), 0o644).unwrap();
        }
    }

    fn k3s(archives: &[&str], manifests: &[&str], cache: bool) -> DeviceK3s {
        DeviceK3s {
            version: "v1.34.2+k3s1".into(),
            role: "server".into(),
            data_dir: "/var/lib/rancher/k3s".into(),
            archives: archives.iter().map(|s| s.to_string()).collect(),
            import_cache: cache,
            manifests: manifests.iter().map(|s| s.to_string()).collect(),
            gitops_auth: None,
        }
    }

    #[test]
    fn release_change_relinks_and_resyncs() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        image(
            root,
            &k3s(&["a-1.tar", "airgap-x.tar.zst"], &["app.yaml", "old.yaml"], false),
            &[("app.yaml", "v: 1\n"), ("old.yaml", "x: 1\n")],
        );
        let r = run(root).unwrap().unwrap();
        assert_eq!(r.linked, vec!["a-1.tar", "airgap-x.tar.zst"]);
        let images = at(root, "/var/lib/rancher/k3s/agent/images");
        assert_eq!(fs::read_link(images.join("a-1.tar")).unwrap(), PathBuf::from(format!("{ARCHIVE_DIR}/a-1.tar")));
        let man = at(root, "/var/lib/rancher/k3s/server/manifests");
        assert_eq!(fs::read_to_string(man.join("edgeimg-app.yaml")).unwrap(), "v: 1\n");
        // A user's own file in the images dir is left alone.
        fs::write(images.join("mine.tar"), "x").unwrap();

        // Same release again: nothing rewritten (K3s would re-apply on a new mtime).
        let r = run(root).unwrap().unwrap();
        assert!(r.linked.is_empty() && r.manifests_written.is_empty(), "{r:?}");

        // Next release: new archive name, one manifest changed, one dropped, cache on.
        image(root, &k3s(&["a-2.tar", "airgap-x.tar.zst"], &["app.yaml"], true), &[("app.yaml", "v: 2\n")]);
        let r = run(root).unwrap().unwrap();
        assert_eq!(r.unlinked, vec!["a-1.tar"]);
        assert_eq!(r.linked, vec!["a-2.tar"]);
        assert_eq!(r.manifests_written, vec!["edgeimg-app.yaml"]);
        assert_eq!(r.manifests_removed, vec!["edgeimg-old.yaml"]);
        assert!(!man.join("edgeimg-old.yaml").exists());
        assert!(at(root, REMOVED).join("edgeimg-old.yaml").exists());
        assert!(images.join(".cache.json").exists());
        assert!(images.join("mine.tar").exists());

        // Cache off again (e.g. rolled back to an older K3s): the file goes.
        image(root, &k3s(&["a-2.tar"], &["app.yaml"], false), &[]);
        run(root).unwrap();
        assert!(!images.join(".cache.json").exists());
    }

    #[test]
    fn agent_without_provisioning_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let mut k = k3s(&[], &[], false);
        k.role = "agent".into();
        image(d.path(), &k, &[]);
        let e = run(d.path()).unwrap_err().to_string();
        assert!(e.contains("server URL") && e.contains("provisioning"), "{e}");
        atomic_write(&at(d.path(), K3S_SERVER), b"https://10.0.0.1:6443\n", 0o600).unwrap();
        atomic_write(&at(d.path(), K3S_TOKEN), b"t\n", 0o600).unwrap();
        run(d.path()).unwrap();
        let env = fs::read_to_string(at(d.path(), ENV)).unwrap();
        assert!(env.contains("K3S_URL=https://10.0.0.1:6443") && env.contains("K3S_TOKEN_FILE="), "{env}");
        assert!(!env.contains("t\n\n"), "the token itself is not in the env file");
    }

    #[test]
    fn gitops_credentials_become_a_secret_on_data_only() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let mut k = k3s(&[], &["flux-sync.yaml"], false);
        k.gitops_auth = Some("https".into());
        image(root, &k, &[("flux-sync.yaml", "kind: GitRepository\n")]);
        let secret = at(root, &format!("/var/lib/rancher/k3s/server/manifests/{GITOPS_SECRET_FILE}"));
        // Not provisioned yet: no secret, a warning, K3s still starts.
        assert_eq!(run(root).unwrap().unwrap().gitops_secret, Some(false));
        assert!(!secret.exists());
        // Provisioned (the provisioning step writes the JSON): the Secret appears, 0600.
        let auth = r#"{"username":"edge","password":"pa\"ss"}"#;
        atomic_write(&at(root, GITOPS_AUTH), auth.as_bytes(), 0o600).unwrap();
        assert_eq!(run(root).unwrap().unwrap().gitops_secret, Some(true));
        let text = fs::read_to_string(&secret).unwrap();
        assert!(text.contains("kind: Secret\n") && text.contains("  namespace: flux-system\n"), "{text}");
        assert!(text.contains("username: \"edge\"") && text.contains(r#"password: "pa\"ss""#), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!fs::read_to_string(at(root, STATE)).unwrap().contains("gitops-auth"), "not a release manifest");
        // SSH credentials for an https repository do not match: removed again.
        let ssh = r#"{"ssh_key":"-----BEGIN OPENSSH PRIVATE KEY-----","known_hosts":"h k"}"#;
        atomic_write(&at(root, GITOPS_AUTH), ssh.as_bytes(), 0o600).unwrap();
        assert_eq!(run(root).unwrap().unwrap().gitops_secret, Some(false));
        assert!(!secret.exists());
        // A release without a GitOps repository needing credentials: nothing stays behind.
        atomic_write(&at(root, GITOPS_AUTH), auth.as_bytes(), 0o600).unwrap();
        run(root).unwrap();
        assert!(secret.exists());
        image(root, &k3s(&[], &[], false), &[]);
        assert_eq!(run(root).unwrap().unwrap().gitops_secret, None);
        assert!(!secret.exists());
    }

    #[test]
    fn no_k3s_in_image_is_fine() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(run(d.path()).unwrap(), None);
    }
}
