//! The per-device provisioning file: what differs between devices flashed from the same
//! image (hostname, join token, server URL). It never goes into an image: the user drops
//! it on the boot partition after flashing (`edgeimg flash --provision`), and the device
//! moves it to /data on the next boot.

use serde::{Deserialize, Serialize};

/// File name on the boot partition (and under /data/edgeimg/ once moved).
pub const FILE_NAME: &str = "edgeimg-provision.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// Hostname for this device (also its Kubernetes node name).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub k3s: Option<K3sJoin>,
    #[serde(default)]
    pub updater: Option<UpdaterJoin>,
    /// Credentials of the GitOps agent's repository (images with `[gitops] auth`).
    #[serde(default)]
    pub gitops: Option<GitopsAuth>,
}

/// Git credentials (secret): HTTPS username and password (or token), or an SSH deploy key
/// with the server's known_hosts line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitopsAuth {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// OpenSSH private key (PEM text).
    #[serde(default)]
    pub ssh_key: Option<String>,
    #[serde(default)]
    pub known_hosts: Option<String>,
}

impl GitopsAuth {
    /// "https" or "ssh": which kind of credentials these are.
    pub fn kind(&self) -> &'static str {
        if self.ssh_key.is_some() {
            "ssh"
        } else {
            "https"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdaterJoin {
    /// Fleet enrollment token for the update server (secret): a device that presents it is
    /// approved at once instead of waiting for an admin.
    #[serde(default)]
    pub enroll_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sJoin {
    /// Cluster join token (secret).
    #[serde(default)]
    pub token: Option<String>,
    /// URL of an existing server to join, e.g. https://10.0.0.1:6443.
    #[serde(default)]
    pub server: Option<String>,
}

impl Provision {
    pub fn parse(text: &str) -> Result<Self, String> {
        let p: Provision = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate()?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !h.starts_with('-')
                && !h.ends_with('-');
            if !ok {
                return Err(format!("hostname `{h}`: use 1-63 letters, digits and '-'"));
            }
        }
        if let Some(k) = &self.k3s {
            if let Some(s) = &k.server {
                if !s.starts_with("https://") {
                    return Err(format!("k3s.server `{s}` must be an https:// URL"));
                }
            }
            if let Some(t) = &k.token {
                if t.is_empty() || t.contains(['\n', '\r']) {
                    return Err("k3s.token must be one line".into());
                }
            }
        }
        if let Some(t) = self.updater.as_ref().and_then(|u| u.enroll_token.as_ref()) {
            if t.is_empty() || t.contains(['\n', '\r']) {
                return Err("updater.enroll_token must be one line".into());
            }
        }
        if let Some(g) = &self.gitops {
            match (&g.username, &g.password, &g.ssh_key, &g.known_hosts) {
                (Some(u), Some(p), None, None) => {
                    if u.is_empty() || p.is_empty() || u.contains(['\n', '\r']) || p.contains(['\n', '\r']) {
                        return Err("gitops.username and gitops.password must be one line each".into());
                    }
                }
                (None, None, Some(k), Some(h)) => {
                    if !k.contains("PRIVATE KEY-----") {
                        return Err("gitops.ssh_key must be an OpenSSH private key (the whole PEM text)".into());
                    }
                    if h.trim().is_empty() {
                        return Err("gitops.known_hosts must name the Git server's host key".into());
                    }
                }
                _ => {
                    return Err("[gitops] takes username and password (HTTPS), or ssh_key and known_hosts (SSH)".into())
                }
            }
        }
        Ok(())
    }
}

/// Redacted Debug for logs: the token never appears.
impl Provision {
    pub fn summary(&self) -> String {
        format!(
            "hostname={} k3s.server={} k3s.token={}",
            self.hostname.as_deref().unwrap_or("-"),
            self.k3s.as_ref().and_then(|k| k.server.as_deref()).unwrap_or("-"),
            if self.k3s.as_ref().and_then(|k| k.token.as_ref()).is_some() { "(set)" } else { "-" }
        ) + if self.updater.as_ref().and_then(|u| u.enroll_token.as_ref()).is_some() {
            " updater.enroll_token=(set)"
        } else {
            ""
        } + match &self.gitops {
            Some(g) => {
                if g.kind() == "ssh" {
                    " gitops=(ssh key set)"
                } else {
                    " gitops=(https credentials set)"
                }
            }
            None => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitops_credentials_are_checked_and_redacted() {
        let p = Provision::parse("[gitops]\nusername = \"edge\"\npassword = \"s3cret-pat\"\n").unwrap();
        assert_eq!(p.gitops.as_ref().unwrap().kind(), "https");
        assert!(p.summary().ends_with(" gitops=(https credentials set)") && !p.summary().contains("s3cret"));
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n";
        let p = Provision::parse(&format!(
            "[gitops]\nssh_key = '''\n{key}'''\nknown_hosts = \"git.example.com ssh-ed25519 AAAA\"\n"
        ))
        .unwrap();
        assert_eq!(p.gitops.as_ref().unwrap().kind(), "ssh");
        assert!(!p.summary().contains("abc"));
        assert!(Provision::parse("[gitops]\nusername = \"edge\"\n").unwrap_err().contains("username and password"));
        assert!(Provision::parse("[gitops]\nssh_key = \"-----BEGIN OPENSSH PRIVATE KEY-----\"\n").is_err());
        assert!(Provision::parse("[gitops]\nssh_key = \"nope\"\nknown_hosts = \"h k\"\n")
            .unwrap_err()
            .contains("private key"));
    }

    #[test]
    fn parse_validate_and_redact() {
        let p = Provision::parse(
            "hostname = \"shop-042\"\n[k3s]\ntoken = \"K10abc::server:secret\"\nserver = \"https://10.0.0.1:6443\"\n",
        )
        .unwrap();
        assert_eq!(p.hostname.as_deref(), Some("shop-042"));
        assert!(!p.summary().contains("secret"));
        let p = Provision::parse("[updater]\nenroll_token = \"fleet-s3cret\"\n").unwrap();
        assert!(p.summary().ends_with(" updater.enroll_token=(set)") && !p.summary().contains("s3cret"));
        assert!(Provision::parse("[updater]\nenroll_token = \"a\\nb\"\n").is_err());
        assert!(Provision::parse("hostname = \"bad name\"\n").is_err());
        assert!(Provision::parse("[k3s]\nserver = \"http://x\"\n").is_err());
        assert!(Provision::parse("wifi = 1\n").is_err());
    }
}
