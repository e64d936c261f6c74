//! Talking to the update server: this device's identity (an ed25519 key made here, never
//! leaving /data), enrollment, and signed state reports.

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use edgeimg_proto::report::{self, Enrollment, Report, ReportReply, HEADER_DEVICE, HEADER_SIGNATURE};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("device key {path} is damaged: {message}")]
    Key { path: PathBuf, message: String },
    #[error("server {url}: {message}")]
    Server { url: String, message: String },
    #[error("enrollment is waiting for approval on the server")]
    Pending,
}

pub struct Device {
    pub id: String,
    key: SigningKey,
}

impl Device {
    /// The device key lives in `dir/device.key` (made on first use); the id is derived from
    /// the machine-id, so it stays the same if the key is ever replaced.
    pub fn load_or_create(dir: &Path, root: &Path) -> Result<Self, ReportError> {
        let path = dir.join("device.key");
        let key = match std::fs::read(&path) {
            Ok(der) => SigningKey::from_pkcs8_der(&der)
                .map_err(|e| ReportError::Key { path: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = SigningKey::generate(&mut rand_core::OsRng);
                let der =
                    k.to_pkcs8_der().map_err(|e| ReportError::Key { path: path.clone(), message: e.to_string() })?;
                crate::fsutil::atomic_write(&path, der.as_bytes(), 0o600)
                    .map_err(|source| ReportError::Io { path: path.clone(), source })?;
                k
            }
            Err(source) => return Err(ReportError::Io { path, source }),
        };
        let machine_id = std::fs::read_to_string(root.join("etc/machine-id")).unwrap_or_default();
        let seed = if machine_id.trim().is_empty() {
            hex::encode(key.verifying_key().to_bytes())
        } else {
            machine_id.trim().to_string()
        };
        let id = hex::encode(Sha256::digest(format!("edgeimg-device-id\0{seed}").as_bytes()))[..32].to_string();
        Ok(Self { id, key })
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }
}

pub struct Client<'a> {
    pub http: &'a reqwest::Client,
    pub server: &'a str,
    pub device: &'a Device,
}

impl Client<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.trim_end_matches('/'))
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<(u16, String), ReportError> {
        let url = self.url(path);
        let sig = report::sign(&self.device.key, &body);
        let resp = self
            .http
            .post(&url)
            .header(HEADER_DEVICE, &self.device.id)
            .header(HEADER_SIGNATURE, sig)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| ReportError::Server { url: url.clone(), message: crate::net::chain(&e) })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, text))
    }

    /// Enroll (idempotent on the server). Ok(()) once approved.
    pub async fn enroll(&self, e: &Enrollment) -> Result<(), ReportError> {
        let body = serde_json::to_vec(e).unwrap_or_default();
        let (status, text) = self.post("/api/v1/enroll", body).await?;
        match status {
            200 | 201 => Ok(()),
            202 => Err(ReportError::Pending),
            _ => Err(ReportError::Server {
                url: self.url("/api/v1/enroll"),
                message: format!("HTTP {status}: {}", text.trim()),
            }),
        }
    }

    pub async fn report(&self, r: &Report) -> Result<ReportReply, ReportError> {
        let body = serde_json::to_vec(r).unwrap_or_default();
        let (status, text) = self.post("/api/v1/report", body).await?;
        if status == 200 {
            Ok(serde_json::from_str(&text).unwrap_or_default())
        } else {
            Err(ReportError::Server {
                url: self.url("/api/v1/report"),
                message: format!("HTTP {status}: {}", text.trim()),
            })
        }
    }
}
