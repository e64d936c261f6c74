//! The `[k3s]` recipe section: the Kubernetes runtime baked into the image.
//! Every key is documented with its default in docs/configuration.md.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::source::{ConfigError, Source};

pub const DEFAULT_URL: &str = "https://github.com/k3s-io/k3s/releases/download/{version}/{asset}";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3s {
    /// Release tag, e.g. "v1.34.2+k3s1".
    pub version: String,
    /// Where the binary and the airgap archive are downloaded from; `{version}` (URL-encoded)
    /// and `{asset}` are replaced.
    #[serde(default = "default_url")]
    pub url: String,
    /// sha256 of the `k3s` binary per Debian architecture.
    pub sha256: BTreeMap<String, String>,
    /// Also bake the upstream airgap image archive (pause, coredns, ... for offline start).
    #[serde(default = "default_true")]
    pub airgap_images: bool,
    /// sha256 of `k3s-airgap-images-<arch>.tar.zst` per architecture (required when
    /// `airgap_images` is true).
    #[serde(default)]
    pub airgap_sha256: BTreeMap<String, String>,
    /// server (a new cluster), agent (joins a server), or server-join (an additional
    /// server of an HA cluster). Joining needs the server URL and token from the device's
    /// provisioning file.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Content of /etc/rancher/k3s/config.yaml (YAML).
    #[serde(default)]
    pub config: String,
    /// Content of /etc/rancher/k3s/registries.yaml (YAML), e.g. mirrors to a fleet registry.
    #[serde(default)]
    pub registries: String,
    /// Extra command line arguments for `k3s server|agent`.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Auto-deploy manifests (files relative to the recipe), kept in sync with K3s's
    /// manifests directory at every boot.
    #[serde(default)]
    pub manifests: Vec<PathBuf>,
    /// Container images to pre-pull, pinned by digest (`name:tag@sha256:...`) or locked in
    /// the recipe's lock file (`edgeimg lock`).
    #[serde(default)]
    pub images: Vec<String>,
    /// K3s's `.cache.json` (skip re-importing unchanged archives at start): `auto` enables
    /// it only for K3s releases with the fixes that keep skipped images pinned against GC.
    #[serde(default)]
    pub import_cache: ImportCache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Server,
    Agent,
    ServerJoin,
}

impl Role {
    pub fn subcommand(self) -> &'static str {
        match self {
            Role::Server | Role::ServerJoin => "server",
            Role::Agent => "agent",
        }
    }
    pub fn needs_join(self) -> bool {
        !matches!(self, Role::Server)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportCache {
    #[default]
    Auto,
    On,
    Off,
}

fn default_url() -> String {
    DEFAULT_URL.into()
}
fn default_true() -> bool {
    true
}
fn default_role() -> Role {
    Role::Server
}

/// A parsed K3s release version `vMAJOR.MINOR.PATCH+k3sN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct K3sVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl K3sVersion {
    pub fn parse(v: &str) -> Option<Self> {
        let core = v.strip_prefix('v')?.split(['+', '-']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor, patch) = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(Self { major, minor, patch })
    }

    /// First patch release of each minor line whose `.cache.json` keeps skipped images
    /// pinned against GC and re-imports a same-size replacement (k3s-io/k3s #14266 and
    /// #14288, backported July 2026: validated on release-branch builds v1.33.13,
    /// v1.34.9, v1.35.6 and after v1.36.2).
    pub fn import_cache_is_safe(self) -> bool {
        let fixed = match (self.major, self.minor) {
            (1, 33) => 13,
            (1, 34) => 9,
            (1, 35) => 6,
            (1, 36) => 3,
            (1, m) if m > 36 => 0,
            (m, _) if m > 1 => 0,
            _ => return false,
        };
        self.patch >= fixed
    }
}

impl K3s {
    pub fn validate(&self, src: &Source) -> Result<(), ConfigError> {
        if K3sVersion::parse(&self.version).is_none() {
            return Err(src.error_at("k3s.version", "expected a K3s release tag such as \"v1.34.2+k3s1\""));
        }
        if !self.url.contains("{asset}") {
            return Err(src.error_at("k3s.url", "the URL template must contain {asset} (and usually {version})"));
        }
        for (key, map) in [("k3s.sha256", &self.sha256), ("k3s.airgap_sha256", &self.airgap_sha256)] {
            for (arch, sum) in map {
                if !["amd64", "arm64"].contains(&arch.as_str()) {
                    return Err(src.error_at(&format!("{key}.{arch}"), "architectures are amd64 and arm64"));
                }
                if !super::is_sha256_hex(sum) {
                    return Err(src.error_at(&format!("{key}.{arch}"), "expected 64 lowercase hex digits (a sha256)"));
                }
            }
        }
        if self.sha256.is_empty() {
            return Err(src.error_at("k3s.sha256", "pin the binary: sha256 = { amd64 = \"...\", arm64 = \"...\" }"));
        }
        for (key, text) in [("k3s.config", &self.config), ("k3s.registries", &self.registries)] {
            if let Err(e) = check_yaml_mapping(text) {
                return Err(src.error_at(key, e));
            }
        }
        if self
            .config
            .lines()
            .any(|l| l.trim_start().starts_with("token:") || l.trim_start().starts_with("agent-token:"))
        {
            return Err(src.error_at(
                "k3s.config",
                "a join token does not belong in the image (every device would carry it): put it in the device's provisioning file",
            ));
        }
        for (i, a) in self.extra_args.iter().enumerate() {
            if a.starts_with("--token") || a.starts_with("--agent-token") {
                return Err(src.error_at(
                    &format!("k3s.extra_args[{i}]"),
                    "tokens come from the provisioning file, not the image",
                ));
            }
        }
        for (i, r) in self.images.iter().enumerate() {
            if let Err(e) = crate::oci::ImageRef::parse(r) {
                return Err(src.error_at(&format!("k3s.images[{i}]"), e));
            }
        }
        Ok(())
    }

    /// Whether `.cache.json` is used for this K3s version.
    pub fn import_cache_enabled(&self) -> bool {
        match self.import_cache {
            ImportCache::On => true,
            ImportCache::Off => false,
            ImportCache::Auto => K3sVersion::parse(&self.version).is_some_and(K3sVersion::import_cache_is_safe),
        }
    }

    pub fn binary_asset(arch: &str) -> String {
        if arch == "amd64" {
            "k3s".into()
        } else {
            format!("k3s-{arch}")
        }
    }

    pub fn airgap_asset(arch: &str) -> String {
        format!("k3s-airgap-images-{arch}.tar.zst")
    }

    pub fn asset_url(&self, asset: &str) -> String {
        self.url.replace("{version}", &self.version.replace('+', "%2B")).replace("{asset}", asset)
    }
}

/// Accept empty text or a YAML mapping; say what is wrong otherwise.
pub fn check_yaml_mapping(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Ok(());
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    match docs.as_slice() {
        [yaml_rust2::Yaml::Hash(_)] => Ok(()),
        [] => Ok(()),
        [_] => Err("must be a YAML mapping (key: value lines)".into()),
        _ => Err("must be a single YAML document".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_cache_gate() {
        let v = K3sVersion::parse("v1.34.2+k3s1").unwrap();
        assert_eq!(v, K3sVersion { major: 1, minor: 34, patch: 2 });
        assert!(!v.import_cache_is_safe());
        assert!(K3sVersion::parse("v1.34.9+k3s1").unwrap().import_cache_is_safe());
        assert!(K3sVersion::parse("v1.35.6+k3s2").unwrap().import_cache_is_safe());
        assert!(!K3sVersion::parse("v1.35.5+k3s1").unwrap().import_cache_is_safe());
        assert!(K3sVersion::parse("v1.37.0+k3s1").unwrap().import_cache_is_safe());
        assert!(!K3sVersion::parse("v1.32.9+k3s1").unwrap().import_cache_is_safe());
        assert!(K3sVersion::parse("1.34.2").is_none());
        assert!(K3sVersion::parse("v1.34").is_none());
    }

    #[test]
    fn yaml_checks() {
        assert!(check_yaml_mapping("").is_ok());
        assert!(check_yaml_mapping("write-kubeconfig-mode: \"0600\"\ndisable:\n  - traefik\n").is_ok());
        assert!(check_yaml_mapping("- a\n- b\n").unwrap_err().contains("mapping"));
        assert!(check_yaml_mapping("a: [1, 2\n").unwrap_err().contains("not valid YAML"));
    }

    #[test]
    fn asset_urls() {
        assert_eq!(K3s::binary_asset("amd64"), "k3s");
        assert_eq!(K3s::binary_asset("arm64"), "k3s-arm64");
        let k = K3s {
            version: "v1.34.2+k3s1".into(),
            url: DEFAULT_URL.into(),
            sha256: BTreeMap::new(),
            airgap_images: true,
            airgap_sha256: BTreeMap::new(),
            role: Role::Server,
            config: String::new(),
            registries: String::new(),
            extra_args: vec![],
            manifests: vec![],
            images: vec![],
            import_cache: ImportCache::Auto,
        };
        assert_eq!(
            k.asset_url("k3s-airgap-images-arm64.tar.zst"),
            "https://github.com/k3s-io/k3s/releases/download/v1.34.2%2Bk3s1/k3s-airgap-images-arm64.tar.zst"
        );
        assert!(!k.import_cache_enabled());
    }
}
