//! The `[gitops]` recipe section: a GitOps agent baked into the image (Flux), its images
//! pre-pulled, pointed at a repository, branch and path. Credentials never go into the
//! image: they come from each device's provisioning file. Documented in
//! docs/configuration.md.

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gitops {
    /// The agent: "flux" (Flux 2: source-controller + kustomize-controller).
    #[serde(default = "default_agent")]
    pub agent: String,
    /// URL of the agent's install manifest (Flux: the release's `install.yaml`, or the
    /// output of `flux install --export` on your mirror), pinned by `sha256`.
    pub install: String,
    pub sha256: String,
    /// Every image the install manifest runs, pinned by digest (or locked); pre-pulled.
    #[serde(default)]
    pub images: Vec<String>,
    /// The Git repository the agent follows (https:// or ssh://), without credentials.
    pub repository: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Directory in the repository with the manifests (kustomization) for these devices.
    #[serde(default = "default_path")]
    pub path: String,
    /// How often the agent checks the repository.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// "none" (a public repository), "https" (username and password or token) or "ssh"
    /// (a deploy key): which credentials each device's provisioning file supplies.
    #[serde(default = "default_auth")]
    pub auth: String,
    // Credentials in the recipe are refused with an explanation (they would be baked into
    // every device's image and every copy of it).
    #[serde(default, skip_serializing)]
    pub username: Option<String>,
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    #[serde(default, skip_serializing)]
    pub ssh_key: Option<String>,
}

fn default_agent() -> String {
    "flux".into()
}
fn default_branch() -> String {
    "main".into()
}
fn default_path() -> String {
    "./".into()
}
fn default_interval() -> String {
    "5m".into()
}
fn default_auth() -> String {
    "none".into()
}

/// The name of the Secret the agent reads credentials from (namespace flux-system).
pub const AUTH_SECRET: &str = "edgeimg-gitops-auth";

impl Gitops {
    pub fn validate(&self, src: &Source, has_runtime: bool) -> Result<(), ConfigError> {
        if !has_runtime {
            return Err(src.error_at("gitops", "the GitOps agent runs on the cluster: add a [k3s] section"));
        }
        for (key, v) in [
            ("gitops.username", &self.username),
            ("gitops.password", &self.password),
            ("gitops.token", &self.token),
            ("gitops.ssh_key", &self.ssh_key),
        ] {
            if v.is_some() {
                return Err(src.error_at(
                    key,
                    "Git credentials do not belong in the recipe: every image (and every copy of it) would carry \
                     them. Set gitops.auth and put the credentials in each device's provisioning file ([gitops] \
                     username/password or ssh_key; edgeimg flash --provision)",
                ));
            }
        }
        if self.agent != "flux" {
            return Err(src.error_at("gitops.agent", "the supported agent is \"flux\""));
        }
        if !["https://", "http://", "file://"].iter().any(|p| self.install.starts_with(p)) {
            return Err(src
                .error_at("gitops.install", "the URL of the agent's install manifest (https://, http:// or file://)"));
        }
        if !super::is_sha256_hex(&self.sha256) {
            return Err(src.error_at("gitops.sha256", "64 lowercase hex digits: the install manifest's sha256"));
        }
        let (scheme, rest) = self.repository.split_once("://").unwrap_or(("", ""));
        if !["https", "http", "ssh"].contains(&scheme) || rest.is_empty() {
            return Err(src.error_at("gitops.repository", "an https:// or ssh:// Git URL"));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((user, _)) = authority.rsplit_once('@') {
            // ssh://git@host/... names the SSH user, which is no secret; anything else
            // before '@' (user:password, a token) is a credential.
            if scheme != "ssh" || user.contains(':') {
                return Err(src.error_at(
                    "gitops.repository",
                    "the URL carries credentials: give the repository without them and put them in each device's \
                     provisioning file ([gitops] username/password), with gitops.auth = \"https\"",
                ));
            }
        }
        let auth_ok = match self.auth.as_str() {
            "none" => true,
            "https" => scheme != "ssh",
            "ssh" => scheme == "ssh",
            _ => false,
        };
        if !auth_ok {
            return Err(src.error_at(
                "gitops.auth",
                "\"none\", \"https\" (an https:// repository) or \"ssh\" (an ssh:// repository)",
            ));
        }
        if self.branch.is_empty() || self.branch.contains([' ', '\n', '"']) {
            return Err(src.error_at("gitops.branch", "a branch name"));
        }
        if self.path.contains(['\n', '"']) || self.path.starts_with('/') {
            return Err(src.error_at("gitops.path", "a path inside the repository, such as \"./clusters/edge\""));
        }
        if super::updater::parse_secs(&self.interval).is_none() {
            return Err(src.error_at("gitops.interval", "a duration such as 1m, 5m, 1h"));
        }
        for (j, r) in self.images.iter().enumerate() {
            crate::oci::ImageRef::parse(r).map_err(|e| src.error_at(&format!("gitops.images[{j}]"), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Recipe, Source};

    const K3S: &str = "[k3s]\nversion = \"v1.34.2+k3s1\"\nsha256 = { amd64 = \"1111111111111111111111111111111111111111111111111111111111111111\" }\nairgap_images = false\n";

    fn load(gitops: &str) -> Result<(), String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.toml");
        let sha = "b".repeat(64);
        std::fs::write(
            &p,
            format!(
                "[image]\nname = \"x\"\nversion = \"1.0.0\"\n{K3S}\n[gitops]\ninstall = \"https://example.com/install.yaml\"\nsha256 = \"{sha}\"\n{gitops}"
            ),
        )
        .unwrap();
        Recipe::load(&Source::read(&p).unwrap()).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn credentials_in_the_recipe_are_refused() {
        load("repository = \"https://git.example.com/fleet.git\"\n").unwrap();
        load("repository = \"ssh://git@git.example.com/fleet.git\"\nauth = \"ssh\"\n").unwrap();
        for (extra, key) in [
            ("repository = \"https://git.example.com/f.git\"\npassword = \"hunter2\"\n", "gitops.password"),
            ("repository = \"https://git.example.com/f.git\"\ntoken = \"ghp_x\"\n", "gitops.token"),
            ("repository = \"ssh://git@h/f.git\"\nauth = \"ssh\"\nssh_key = \"-----BEGIN\"\n", "gitops.ssh_key"),
        ] {
            let e = load(extra).unwrap_err();
            assert!(e.contains(key) && e.contains("provisioning file"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("ghp_x"), "the error never echoes a secret: {e}");
        }
        for url in ["https://user:pw@git.example.com/f.git", "https://ghp_token@git.example.com/f.git"] {
            let e = load(&format!("repository = \"{url}\"\n")).unwrap_err();
            assert!(e.contains("gitops.repository") && e.contains("carries credentials"), "{e}");
        }
        let e = load("repository = \"https://git.example.com/f.git\"\nauth = \"ssh\"\n").unwrap_err();
        assert!(e.contains("gitops.auth"), "{e}");
        let e = load("repository = \"git.example.com/f\"\n").unwrap_err();
        assert!(e.contains("gitops.repository"), "{e}");
    }
}
