//! Pull images by digest into a content-addressed blob cache, verifying every byte.
//!
//! Manifests are fetched raw and hashed here (so the archive carries the exact bytes the
//! digest names); a multi-arch index is kept as the image's top descriptor (so workloads
//! that pin the index digest resolve offline) and only the board's platform is pulled.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ImageRef;

pub const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
pub const MANIFEST_TYPES: [&str; 2] =
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("image {image}: registry {registry} did not answer: {reason}. Is it reachable (for a registry without TLS, pass --insecure-registry {registry})?")]
    Registry { image: String, registry: String, reason: String },
    #[error(
        "image {image}: {what} {digest}: the registry sent content with digest {actual} ({size} bytes); refusing it"
    )]
    DigestMismatch { image: String, what: &'static str, digest: String, actual: String, size: u64 },
    #[error("image {image}: {what} {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { image: String, what: &'static str, digest: String, expected: u64, actual: u64 },
    #[error("image {image}: no linux/{arch} image in its index (platforms: {available})")]
    NoPlatform { image: String, arch: String, available: String },
    #[error("image {image}: {source}")]
    Format {
        image: String,
        #[source]
        source: FormatError,
    },
    #[error("image {image} is not pinned to a digest; add @sha256:... to the recipe or run `edgeimg lock`")]
    Unpinned { image: String },
    #[error("blob cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// A content descriptor (what index.json and manifests point at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// An image whose blobs are all in the cache.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: ImageRef,
    /// What the archive's index.json points at: the index for multi-arch images.
    pub top: Descriptor,
    /// Every blob the archive needs for this image (manifests, config, layers).
    pub blobs: Vec<Descriptor>,
}

impl PulledImage {
    pub fn size(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Registries on the loopback interface speak plain HTTP by default (as with Docker).
fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

pub struct Puller {
    client: Client,
    blobs: PathBuf,
}

/// Credentials from the Docker config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
fn auth_for(registry: &str) -> RegistryAuth {
    use base64::Engine;
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let Some(cfg) = dir.and_then(|d| fs::read(d.join("config.json")).ok()) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&cfg) else {
        return RegistryAuth::Anonymous;
    };
    let keys = [registry.to_string(), format!("https://{registry}"), "https://index.docker.io/v1/".to_string()];
    for k in keys.iter().take(if registry == "index.docker.io" { 3 } else { 2 }) {
        if let Some(a) = v["auths"][k]["auth"].as_str() {
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a) {
                if let Some((u, p)) = String::from_utf8_lossy(&raw).split_once(':') {
                    return RegistryAuth::Basic(u.to_string(), p.to_string());
                }
            }
        }
    }
    RegistryAuth::Anonymous
}

fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn format_err(image: &ImageRef, msg: impl Into<String>) -> PullError {
    PullError::Format { image: image.to_string(), source: FormatError(msg.into()) }
}

impl Puller {
    /// `cache` is the edgeimg cache directory; blobs go to `cache/blobs/sha256/`.
    pub fn new(cache: &Path, insecure: &[String]) -> Result<Self, PullError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let blobs = cache.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|source| PullError::Cache { path: blobs.clone(), source })?;
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure.to_vec()),
            connect_timeout: Some(std::time::Duration::from_secs(20)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..Default::default()
        };
        Ok(Self { client: Client::new(config), blobs })
    }

    /// Registries given insecure on the command line plus every loopback registry.
    pub fn insecure_list(flags: &[String], images: &[ImageRef]) -> Vec<String> {
        let mut v: Vec<String> = flags.to_vec();
        for i in images {
            if is_loopback(&i.registry) && !v.contains(&i.registry) {
                v.push(i.registry.clone());
            }
        }
        v
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs.join(digest.trim_start_matches("sha256:"))
    }

    fn reference(image: &ImageRef, digest: &str) -> Reference {
        Reference::with_digest(image.api_registry().to_string(), image.repository.clone(), digest.to_string())
    }

    fn registry_err(image: &ImageRef, e: impl std::fmt::Display) -> PullError {
        PullError::Registry { image: image.to_string(), registry: image.registry.clone(), reason: e.to_string() }
    }

    /// Resolve a tag to the digest the registry serves for it (for `edgeimg lock`).
    pub async fn resolve_tag(&self, image: &ImageRef) -> Result<String, PullError> {
        let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
        let r = Reference::with_tag(image.api_registry().to_string(), image.repository.clone(), tag);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(
                &r,
                &auth_for(image.api_registry()),
                &[INDEX_TYPES[0], INDEX_TYPES[1], MANIFEST_TYPES[0], MANIFEST_TYPES[1]],
            )
            .await
            .map_err(|e| Self::registry_err(image, crate::net::chain(&e)))?;
        Ok(sha256_hex(&bytes))
    }

    /// Fetch a manifest by digest, verify it, store it as a blob; return its bytes.
    async fn manifest(&self, image: &ImageRef, digest: &str, what: &'static str) -> Result<Vec<u8>, PullError> {
        let path = self.blob_path(digest);
        if let Ok(b) = fs::read(&path) {
            if sha256_hex(&b) == digest {
                return Ok(b);
            }
        }
        let accept = [INDEX_TYPES[0], INDEX_TYPES[1], MANIFEST_TYPES[0], MANIFEST_TYPES[1]];
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&Self::reference(image, digest), &auth_for(image.api_registry()), &accept)
            .await
            .map_err(|e| Self::registry_err(image, crate::net::chain(&e)))?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(PullError::DigestMismatch {
                image: image.to_string(),
                what,
                digest: digest.into(),
                actual,
                size: bytes.len() as u64,
            });
        }
        self.store(&path, &bytes)?;
        Ok(bytes.to_vec())
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> Result<(), PullError> {
        let cerr = |source| PullError::Cache { path: path.to_path_buf(), source };
        let mut tmp = tempfile::NamedTempFile::new_in(&self.blobs).map_err(cerr)?;
        tmp.write_all(bytes).map_err(cerr)?;
        tmp.persist(path).map_err(|e| cerr(e.error))?;
        Ok(())
    }

    /// Download one blob (unless cached), hashing as it streams; only a verified blob
    /// enters the cache.
    async fn blob(&self, image: &ImageRef, d: &Descriptor, what: &'static str) -> Result<(), PullError> {
        let path = self.blob_path(&d.digest);
        if path.metadata().map(|m| m.len() == d.size).unwrap_or(false) {
            return Ok(());
        }
        let cerr = |source| PullError::Cache { path: path.clone(), source };
        let mut stream = self
            .client
            .pull_blob_stream(&Self::reference(image, &d.digest), d.digest.as_str())
            .await
            .map_err(|e| Self::registry_err(image, crate::net::chain(&e)))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.blobs).map_err(cerr)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = stream.stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // oci-client checks the digest itself at the end of the stream; report a
                // mismatch with our own numbers below instead of its message.
                Err(e) if e.to_string().to_lowercase().contains("digest") => break,
                Err(e) => return Err(Self::registry_err(image, e)),
            };
            h.update(&chunk);
            n += chunk.len() as u64;
            if n > d.size {
                break;
            }
            tmp.write_all(&chunk).map_err(cerr)?;
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != d.digest {
            return Err(PullError::DigestMismatch {
                image: image.to_string(),
                what,
                digest: d.digest.clone(),
                actual,
                size: n,
            });
        }
        if n != d.size {
            return Err(PullError::SizeMismatch {
                image: image.to_string(),
                what,
                digest: d.digest.clone(),
                expected: d.size,
                actual: n,
            });
        }
        tmp.as_file().sync_all().map_err(cerr)?;
        tmp.persist(&path).map_err(|e| cerr(e.error))?;
        Ok(())
    }

    /// Pull a Helm chart stored in an OCI registry (`helm push`): the manifest of `chart`'s
    /// tag (the chart version), whose chart layer must have the pinned digest. Returns the
    /// verified archive in the blob cache.
    pub async fn pull_chart(&self, chart: &ImageRef, sha256: &str) -> Result<PathBuf, PullError> {
        const CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
        let want = format!("sha256:{sha256}");
        let known = Descriptor { media_type: CHART_LAYER.into(), digest: want.clone(), size: 0 };
        let cached = self.blob_path(&known.digest);
        if cached.is_file() && crate::fsutil::sha256_file(&cached).ok().as_deref() == Some(sha256) {
            return Ok(cached);
        }
        let tag = chart.tag.clone().unwrap_or_default();
        let r = Reference::with_tag(chart.api_registry().to_string(), chart.repository.clone(), tag);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&r, &auth_for(chart.api_registry()), &[MANIFEST_TYPES[0], MANIFEST_TYPES[1]])
            .await
            .map_err(|e| Self::registry_err(chart, crate::net::chain(&e)))?;
        let m: Value =
            serde_json::from_slice(&bytes).map_err(|e| format_err(chart, format!("manifest is not JSON: {e}")))?;
        let layer = m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["mediaType"] == CHART_LAYER)
            .find_map(descriptor)
            .ok_or_else(|| format_err(chart, "not a Helm chart (no chart layer in its manifest)"))?;
        if layer.digest != want {
            return Err(PullError::DigestMismatch {
                image: chart.to_string(),
                what: "Helm chart",
                digest: want,
                actual: layer.digest,
                size: layer.size,
            });
        }
        self.blob(chart, &layer, "Helm chart").await?;
        Ok(self.blob_path(&layer.digest))
    }

    /// Pull a pinned image for one architecture.
    pub async fn pull(&self, image: &ImageRef, arch: &str) -> Result<PulledImage, PullError> {
        let top_digest = image.digest.clone().ok_or_else(|| PullError::Unpinned { image: image.to_string() })?;
        let top_bytes = self.manifest(image, &top_digest, "manifest").await?;
        let top_json: Value =
            serde_json::from_slice(&top_bytes).map_err(|e| format_err(image, format!("manifest is not JSON: {e}")))?;
        let mut blobs = Vec::new();
        let (top, manifest_bytes, manifest_digest) = if top_json.get("manifests").is_some() {
            let media_type = top_json["mediaType"].as_str().unwrap_or(INDEX_TYPES[0]).to_string();
            let top = Descriptor { media_type, digest: top_digest.clone(), size: top_bytes.len() as u64 };
            let chosen = select_platform(&top_json, arch).map_err(|available| PullError::NoPlatform {
                image: image.to_string(),
                arch: arch.into(),
                available,
            })?;
            blobs.push(top.clone());
            let mb = self.manifest(image, &chosen.digest, "platform manifest").await?;
            if mb.len() as u64 != chosen.size {
                return Err(PullError::SizeMismatch {
                    image: image.to_string(),
                    what: "platform manifest",
                    digest: chosen.digest.clone(),
                    expected: chosen.size,
                    actual: mb.len() as u64,
                });
            }
            blobs.push(chosen.clone());
            (top, mb, chosen.digest)
        } else {
            let media_type = top_json["mediaType"].as_str().unwrap_or(MANIFEST_TYPES[0]).to_string();
            let top = Descriptor { media_type, digest: top_digest.clone(), size: top_bytes.len() as u64 };
            blobs.push(top.clone());
            (top, top_bytes, top_digest)
        };
        let m: Value = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| format_err(image, format!("manifest {manifest_digest} is not JSON: {e}")))?;
        let config = descriptor(&m["config"])
            .ok_or_else(|| format_err(image, format!("manifest {manifest_digest} has no config")))?;
        let layers: Vec<Descriptor> = m["layers"]
            .as_array()
            .ok_or_else(|| format_err(image, format!("manifest {manifest_digest} has no layers")))?
            .iter()
            .map(|l| descriptor(l).ok_or_else(|| format_err(image, "a layer descriptor lacks digest or size")))
            .collect::<Result<_, _>>()?;
        self.blob(image, &config, "config").await?;
        blobs.push(config);
        for l in layers {
            self.blob(image, &l, "layer").await?;
            if !blobs.contains(&l) {
                blobs.push(l);
            }
        }
        Ok(PulledImage { reference: image.clone(), top, blobs })
    }
}

fn descriptor(v: &Value) -> Option<Descriptor> {
    let digest = v["digest"].as_str()?.to_string();
    if !digest.starts_with("sha256:") || digest.len() != 71 {
        return None;
    }
    Some(Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest,
        size: v["size"].as_u64()?,
    })
}

/// Pick linux/<arch> from an index; Err lists what the index offers.
fn select_platform(index: &Value, arch: &str) -> Result<Descriptor, String> {
    let list = index["manifests"].as_array().cloned().unwrap_or_default();
    let fits = |m: &Value| {
        let p = &m["platform"];
        p["os"] == "linux"
            && p["architecture"] == arch
            && (arch != "arm64" || p["variant"].is_null() || p["variant"] == "v8")
    };
    if let Some(d) = list.iter().find(|m| fits(m)).and_then(descriptor) {
        return Ok(d);
    }
    Err(list
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or("?"),
                m["platform"]["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Read a cached blob (it was verified when it entered the cache).
pub fn open_blob(blobs_root: &Path, digest: &str) -> std::io::Result<File> {
    File::open(blobs_root.join(digest.trim_start_matches("sha256:")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_selection() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let idx = serde_json::json!({"manifests": [
            {"digest": d('a'), "size": 10, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d('b'), "size": 11, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": d('c'), "size": 12, "platform": {"os": "unknown", "architecture": "unknown"}},
        ]});
        assert_eq!(select_platform(&idx, "arm64").unwrap().digest, d('b'));
        assert_eq!(select_platform(&idx, "amd64").unwrap().size, 10);
        let e = select_platform(&idx, "riscv64").unwrap_err();
        assert!(e.contains("linux/amd64") && e.contains("linux/arm64"), "{e}");
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(!is_loopback("ghcr.io"));
    }
}
