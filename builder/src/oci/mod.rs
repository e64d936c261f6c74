//! Container images: references, digest-verified pulls into a blob cache, the lock file,
//! and OCI archives that K3s imports at startup.

pub mod archive;
pub mod lock;
pub mod pull;

use std::fmt;

/// A parsed image reference in canonical form (`docker.io/library/busybox:1.36@sha256:…`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when pinned.
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(format!("`{s}` is not an image reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hexpart =
                    d.strip_prefix("sha256:").ok_or_else(|| format!("`{s}`: only sha256 digests are supported"))?;
                if !crate::config::is_sha256_hex(hexpart) {
                    return Err(format!("`{s}`: the digest must be sha256: and 64 lowercase hex digits"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(format!("`{s}`: bad tag `{t}`"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            Some(_) => ("docker.io".to_string(), name.to_string()),
            None => ("docker.io".to_string(), format!("library/{name}")),
        };
        if repository.is_empty()
            || !repository.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            return Err(format!("`{s}`: repository names are lowercase letters, digits, '.', '_', '-' and '/'"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "`{s}` has neither a tag nor a digest; write `{s}:<tag>` (then lock it) or `{s}@sha256:...`"
            ));
        }
        Ok(Self { registry, repository, tag, digest })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` (or `@digest` when there is no tag): the name K3s and
    /// containerd show for the imported image.
    pub fn display_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.name()),
            (None, Some(d)) => format!("{}@{d}", self.name()),
            (None, None) => self.name(),
        }
    }

    /// The reference without its digest: the key in the lock file.
    pub fn unpinned(&self) -> String {
        format!("{}:{}", self.name(), self.tag.as_deref().unwrap_or("latest"))
    }

    pub fn with_digest(&self, digest: &str) -> Self {
        Self { digest: Some(digest.to_string()), ..self.clone() }
    }

    /// The registry host oci-client talks to (docker.io's API lives elsewhere).
    pub fn api_registry(&self) -> &str {
        if self.registry == "docker.io" {
            "index.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_canonicalizes() {
        let r = ImageRef::parse("busybox:1.36").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:1.36");
        let r = ImageRef::parse(&format!("ghcr.io/org/app:2.0@{D}")).unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/app");
        assert_eq!(r.tag.as_deref(), Some("2.0"));
        assert_eq!(r.digest.as_deref(), Some(D));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/test/img@{D}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.tag, None);
        assert_eq!(r.display_name(), format!("127.0.0.1:5000/test/img@{D}"));
        assert_eq!(ImageRef::parse("rancher/pause:3.6").unwrap().name(), "docker.io/rancher/pause");
    }

    #[test]
    fn rejects_bad_refs() {
        assert!(ImageRef::parse("busybox").unwrap_err().contains("neither a tag nor a digest"));
        assert!(ImageRef::parse("busybox@sha256:abc").unwrap_err().contains("64"));
        assert!(ImageRef::parse("Busybox:1").is_err());
        assert!(ImageRef::parse("busybox@md5:0123").is_err());
    }
}
