//! The GitOps agent in the image (Flux): its pinned install manifest, checked so that every
//! image it runs is pre-pulled, and a sync manifest (GitRepository + Kustomization) pointing
//! it at the recipe's repository, branch and path. When the repository needs credentials,
//! the sync manifest names a Secret that `edgeimg-updater k3s-prepare` writes on each
//! device from its provisioning file: no credential is ever in the image.

use std::path::{Path, PathBuf};

use crate::config::gitops::{Gitops, AUTH_SECRET};

#[derive(Debug, thiserror::Error)]
pub enum GitopsError {
    #[error("the GitOps install manifest runs image {image} ({path}) but gitops.images does not list it: add it, pinned by digest, so the device has it offline")]
    MissingImage { image: String, path: String },
    #[error("the GitOps install manifest is not valid YAML: {0}")]
    Yaml(String),
    #[error("the GitOps install manifest {0}: {1}")]
    Read(String, std::io::Error),
}

/// The install manifest, downloaded and checked.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub gitops: Gitops,
    pub install: PathBuf,
    pub images_found: Vec<String>,
}

pub fn check(g: &Gitops, install: &Path) -> Result<Fetched, GitopsError> {
    let text = std::fs::read_to_string(install).map_err(|e| GitopsError::Read(install.display().to_string(), e))?;
    let found =
        super::helm::images_in_manifest("gitops install", &text).map_err(|e| GitopsError::Yaml(e.to_string()))?;
    if let Some((image, path)) = super::helm::first_unlisted(&g.images, &found) {
        return Err(GitopsError::MissingImage { image: image.clone(), path: path.clone() });
    }
    Ok(Fetched {
        gitops: g.clone(),
        install: install.to_path_buf(),
        images_found: found.into_iter().map(|(i, _)| i).collect(),
    })
}

/// Flux's GitRepository and Kustomization for the recipe's repository.
pub fn sync_manifest(g: &Gitops) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let secret = if g.auth == "none" { String::new() } else { format!("  secretRef:\n    name: {AUTH_SECRET}\n") };
    format!(
        "# Written by edgeimg: the GitOps agent follows this repository. Credentials, if any,\n\
         # are in the Secret {AUTH_SECRET}, written on each device from its provisioning file.\n\
         apiVersion: source.toolkit.fluxcd.io/v1\n\
         kind: GitRepository\n\
         metadata:\n  name: edgeimg\n  namespace: flux-system\n\
         spec:\n  interval: {interval}\n  url: {url}\n  ref:\n    branch: {branch}\n{secret}\
         ---\n\
         apiVersion: kustomize.toolkit.fluxcd.io/v1\n\
         kind: Kustomization\n\
         metadata:\n  name: edgeimg\n  namespace: flux-system\n\
         spec:\n  interval: {interval}\n  path: {path}\n  prune: true\n  sourceRef:\n    kind: GitRepository\n    name: edgeimg\n",
        interval = q(&g.interval),
        url = q(&g.repository),
        branch = q(&g.branch),
        path = q(&g.path),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::YamlLoader;

    fn gitops(images: &[&str], auth: &str) -> Gitops {
        Gitops {
            agent: "flux".into(),
            install: "http://127.0.0.1:1/install.yaml".into(),
            sha256: "c".repeat(64),
            images: images.iter().map(|s| s.to_string()).collect(),
            repository: "https://git.example.com/fleet.git".into(),
            branch: "main".into(),
            path: "./clusters/edge".into(),
            interval: "5m".into(),
            auth: auth.into(),
            username: None,
            password: None,
            token: None,
            ssh_key: None,
        }
    }

    const INSTALL: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: flux-system\n---\n\
        apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: source-controller\n  namespace: flux-system\n\
        spec:\n  template:\n    spec:\n      containers:\n      - name: manager\n        image: ghcr.io/fluxcd/source-controller:v1.7.3\n";
    const PIN: &str = "@sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn install_images_must_be_pulled() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("install.yaml");
        std::fs::write(&p, INSTALL).unwrap();
        let f = check(&gitops(&[&format!("ghcr.io/fluxcd/source-controller:v1.7.3{PIN}")], "none"), &p).unwrap();
        assert_eq!(f.images_found, vec!["ghcr.io/fluxcd/source-controller:v1.7.3".to_string()]);
        let e = check(&gitops(&[], "none"), &p).unwrap_err().to_string();
        assert!(e.contains("source-controller:v1.7.3") && e.contains("Deployment source-controller"), "{e}");
    }

    #[test]
    fn sync_manifest_points_at_the_repository() {
        let m = sync_manifest(&gitops(&[], "https"));
        let docs = YamlLoader::load_from_str(&m).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"].as_str(), Some("GitRepository"));
        assert_eq!(docs[0]["spec"]["url"].as_str(), Some("https://git.example.com/fleet.git"));
        assert_eq!(docs[0]["spec"]["ref"]["branch"].as_str(), Some("main"));
        assert_eq!(docs[0]["spec"]["secretRef"]["name"].as_str(), Some(AUTH_SECRET));
        assert_eq!(docs[1]["kind"].as_str(), Some("Kustomization"));
        assert_eq!(docs[1]["spec"]["path"].as_str(), Some("./clusters/edge"));
        let public = YamlLoader::load_from_str(&sync_manifest(&gitops(&[], "none"))).unwrap();
        assert!(public[0]["spec"]["secretRef"].is_badvalue(), "a public repository needs no secret");
    }
}
