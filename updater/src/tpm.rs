//! The TPM, through the `edgeimg-tpm` program (crate `tpm/`). Kept out of this binary so
//! that boards without a TPM (most Raspberry Pis) carry neither it nor the TCG software
//! stack; with it, the security floor lives in TPM NV storage and the booted release is
//! measured into PCR 15.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeimg_proto::attest::{Attestation, CredentialChallenge, TpmIdentity};

use crate::config::Settings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSetting {
    Auto,
    Off,
    Tcti(String),
}

impl TpmSetting {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            t if ["device:", "swtpm:", "mssim:", "tabrmd:"].iter().any(|p| t.starts_with(p)) => Ok(Self::Tcti(t.into())),
            other => Err(format!(
                "tpm = \"{other}\": use \"auto\", \"off\" or a TCTI such as \"device:/dev/tpmrm0\" or \"swtpm:host=127.0.0.1,port=2321\""
            )),
        }
    }
}

/// A TPM the updater can use.
#[derive(Debug, Clone)]
pub struct TpmTool {
    pub program: PathBuf,
    pub tcti: String,
}

/// The TPM to use, or why there is none (said in `status`; the updater works either way).
pub fn open(s: &Settings, root: &Path) -> Result<TpmTool, String> {
    let tcti = match &s.tpm {
        TpmSetting::Off => return Err("TPM use is off (updater.tpm = \"off\")".into()),
        TpmSetting::Auto => {
            if !root.join("dev/tpmrm0").exists() {
                return Err("no TPM on this device (/dev/tpmrm0)".into());
            }
            "device:/dev/tpmrm0".to_string()
        }
        TpmSetting::Tcti(t) => t.clone(),
    };
    if !s.tpm_tool.exists() {
        return Err(format!("{} is not in this image (recipe [updater] tpm = true adds it)", s.tpm_tool.display()));
    }
    Ok(TpmTool { program: s.tpm_tool.clone(), tcti })
}

impl TpmTool {
    fn call(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(&self.program)
            .arg("--tcti")
            .arg(&self.tcti)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", self.program.display()))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{} printed no JSON: {e}", self.program.display()))
    }

    pub fn floor(&self) -> Result<u64, String> {
        self.call(&["floor"])?["floor"].as_u64().ok_or_else(|| "edgeimg-tpm floor: no number".into())
    }

    /// Raise the TPM floor (never lowers it); returns the floor in force.
    pub fn raise_floor(&self, version: u64) -> Result<u64, String> {
        self.call(&["raise-floor", &version.to_string()])?["floor"]
            .as_u64()
            .ok_or_else(|| "edgeimg-tpm raise-floor: no number".into())
    }

    /// The TPM's identity for enrollment: EK public part and the attestation key (made on
    /// first use; its TPM-wrapped blobs are kept in `dir`).
    pub fn identity(&self, dir: &Path) -> Result<TpmIdentity, String> {
        let v = self.call(&["keys", "--dir", &dir.display().to_string()])?;
        Ok(TpmIdentity {
            ek: text(&v, "keys", "ek")?,
            ak: text(&v, "keys", "ak")?,
            ak_public: Some(text(&v, "keys", "ak_public")?),
            ek_cert: v["ek_cert"].as_str().map(str::to_string),
        })
    }

    /// Answer the server's credential challenge (TPM2_ActivateCredential); the secret, hex.
    pub fn activate(&self, dir: &Path, c: &CredentialChallenge) -> Result<String, String> {
        let v = self.call(&[
            "activate",
            "--dir",
            &dir.display().to_string(),
            "--id-object",
            &c.id_object,
            "--secret",
            &c.encrypted_secret,
        ])?;
        text(&v, "activate", "secret")
    }

    /// Quote PCR 15 with the server's nonce (hex).
    pub fn quote(&self, dir: &Path, nonce: &str) -> Result<Attestation, String> {
        let v = self.call(&["quote", "--dir", &dir.display().to_string(), "--nonce", nonce])?;
        Ok(Attestation {
            nonce: nonce.to_string(),
            attest: text(&v, "quote", "attest")?,
            signature: text(&v, "quote", "signature")?,
        })
    }

    /// Extend PCR 15 with the booted release; returns the PCR value (hex).
    pub fn measure(&self, image: &str, version: &str, root_hash: &str) -> Result<String, String> {
        let v = self.call(&["measure", "--image", image, "--release", version, "--root-hash", root_hash])?;
        Ok(v["value"].as_str().unwrap_or_default().to_string())
    }
}

/// A text field of `edgeimg-tpm <command>`'s JSON output.
fn text(v: &serde_json::Value, command: &str, key: &str) -> Result<String, String> {
    v[key].as_str().map(str::to_string).ok_or_else(|| format!("edgeimg-tpm {command}: no {key}"))
}
