//! The device's TPM 2.0, through `tss-esapi` (TCG ESAPI, the kernel resource manager
//! `/dev/tpmrm0`, or `swtpm` in tests):
//!
//! - **Measure** the booted release into PCR 15 ([`RELEASE_PCR`]) early in boot, before the
//!   network is up: one extend with the SHA-256 of [`release_event`].
//! - **Attestation key**: an ECDSA P-256 signing key created under the endorsement key
//!   (TCG EK template), kept across reboots as its public/private blobs on /data (the
//!   private part is wrapped by the TPM: useless anywhere else).
//! - **Quote** PCRs with a server nonce; [`edgeimg_proto::attest`] verifies it on the server.
//! - **Security floor** in TPM NV storage: an 8-byte index that edgeimg only ever raises.
//! - **AK binding**: TPM2_ActivateCredential recovers the server's secret, encrypted to the
//!   EK for the AK's name ([`edgeimg_proto::credential`]): proof that the AK is in this TPM.
//! - **EK certificate** from the TCG NV index where the TPM maker put one.
//!
//! PCR 15: PCRs 0–7 belong to the firmware, 8–9 to the boot loader and initrd, 10 to IMA,
//! 11 to systemd-stub (the UKI), 12–14 to the kernel command line, system extensions and
//! shim, 16 and 23 can be reset by anyone. systemd also extends 15 with the machine-id and
//! file system identities, which differ per device and per boot on a read-only root, so
//! edgeimg images mask those units (`systemd-pcrmachine`, `systemd-pcrfs*`) and 15 carries
//! only the release: its expected value is known at publish time.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use tss_esapi::abstraction::{ak, ek, AsymmetricAlgorithmSelection};
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, PcrHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    Data, Digest, DigestValues, EncryptedSecret, IdObject, MaxNvBuffer, NvPublicBuilder, PcrSelectionListBuilder,
    PcrSlot, Private, Public, Signature, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

/// The NV index of the security floor (owner range, "ED6" + 0x16).
pub const FLOOR_NV_INDEX: u32 = 0x0145_4416;
/// Where TPM makers store the certificate of the ECC P-256 EK (TCG EK Credential Profile
/// 2.0 §2.2.1.4, low range).
pub const EK_CERT_ECC_NV_INDEX: u32 = 0x01c0_000a;

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("no TPM at {tcti}: {message} (without a TPM the device cannot attest, and its security floor is kept only on /data)")]
    Unavailable { tcti: String, message: String },
    #[error("TPM {what}: {source}")]
    Tpm {
        what: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("attestation key files in {dir}: {message}")]
    KeyFiles { dir: String, message: String },
    #[error("security version {0} cannot be kept in the TPM floor (maximum {max})", max = u64::MAX)]
    Floor(u64),
}

fn tpm(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Tpm { what, source }
}

pub mod swtpm;

/// The PCR that carries the booted release (see the module documentation).
pub use edgeimg_proto::attest::RELEASE_PCR;
pub use edgeimg_proto::attest::{expected_pcr, release_event};

/// A quote as it travels to the server: the TPM's TPMS_ATTEST bytes and the ECDSA
/// signature (r and s, 32 bytes each) over their SHA-256.
#[derive(Debug, Clone)]
pub struct Quote {
    pub attest: Vec<u8>,
    pub signature: [u8; 64],
    /// The same signature as a marshalled TPMT_SIGNATURE (what `tpm2_checkquote -s` reads).
    pub signature_tpmt: Vec<u8>,
}

/// The attestation key's public parts, sent at enrollment.
#[derive(Debug, Clone)]
pub struct AkPublic {
    /// Uncompressed SEC1 point (0x04 || x || y).
    pub sec1: Vec<u8>,
    /// The marshalled TPMT_PUBLIC (its hash is the AK's TPM name).
    pub tpmt_public: Vec<u8>,
}

pub struct Tpm {
    ctx: Context,
}

fn point(p: &Public) -> Option<Vec<u8>> {
    match p {
        Public::Ecc { unique, .. } => {
            let (x, y) = (unique.x().value(), unique.y().value());
            if x.len() > 32 || y.len() > 32 {
                return None;
            }
            let mut out = vec![4u8; 65];
            out[1 + 32 - x.len()..33].copy_from_slice(x);
            out[33 + 32 - y.len()..].copy_from_slice(y);
            Some(out)
        }
        _ => None,
    }
}

fn fixed32(v: &[u8]) -> Option<[u8; 32]> {
    if v.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Some(out)
}

impl Tpm {
    /// Open a TPM: `device:/dev/tpmrm0` on a device, `swtpm:host=127.0.0.1,port=2321` in tests.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let unavailable = |m: String| TpmError::Unavailable { tcti: tcti.into(), message: m };
        if let Some(dev) = tcti.strip_prefix("device:") {
            if !Path::new(dev).exists() {
                return Err(unavailable(format!("{dev} does not exist")));
            }
        }
        let conf: TctiNameConf = tcti.parse().map_err(|e: tss_esapi::Error| unavailable(e.to_string()))?;
        let ctx = Context::new(conf).map_err(|e| unavailable(e.to_string()))?;
        Ok(Self { ctx })
    }

    /// Extend [`RELEASE_PCR`] with the SHA-256 of `event`.
    pub fn measure(&mut self, event: &str) -> Result<(), TpmError> {
        let mut d = DigestValues::new();
        let digest = Digest::try_from(Sha256::digest(event.as_bytes()).to_vec()).map_err(tpm("digest"))?;
        d.set(HashingAlgorithm::Sha256, digest);
        let pcr = PcrHandle::Pcr15;
        self.ctx.execute_with_nullauth_session(|ctx| ctx.pcr_extend(pcr, d)).map_err(tpm("extending PCR 15"))
    }

    /// The SHA-256 bank value of one PCR.
    pub fn pcr(&mut self, index: u8) -> Result<[u8; 32], TpmError> {
        let slot = pcr_slot(index)?;
        let sel = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &[slot])
            .build()
            .map_err(tpm("PCR selection"))?;
        let (_, _, values) = self.ctx.pcr_read(sel).map_err(tpm("reading PCRs"))?;
        values.value().first().and_then(|d| fixed32(d.value())).ok_or(TpmError::Tpm {
            what: "reading PCRs",
            source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
        })
    }

    fn endorsement_key(&mut self) -> Result<KeyHandle, TpmError> {
        ek::create_ek_object_2(&mut self.ctx, AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256), None)
            .map_err(tpm("creating the endorsement key (TCG ECC P-256 template)"))
    }

    /// The EK's public key (uncompressed SEC1), the same on every call for this TPM.
    pub fn endorsement_public(&mut self) -> Result<Vec<u8>, TpmError> {
        let ek = self.endorsement_key()?;
        let r = self.ctx.read_public(ek).map_err(tpm("reading the endorsement key"));
        let _ = self.ctx.flush_context(ek.into());
        let (public, _, _) = r?;
        point(&public).ok_or(TpmError::KeyFiles { dir: String::new(), message: "the EK is not an ECC key".into() })
    }

    /// Load the attestation key from `dir` (`ak.pub`, `ak.priv`), creating it on first use.
    /// Files are written atomically; a damaged pair is replaced by a new key (the server then
    /// sees a new AK and must re-enroll the device).
    fn load_ak(&mut self, dir: &Path) -> Result<(KeyHandle, Public), TpmError> {
        let kf = |m: String| TpmError::KeyFiles { dir: dir.display().to_string(), message: m };
        let (pub_path, priv_path) = (dir.join("ak.pub"), dir.join("ak.priv"));
        let ek = self.endorsement_key()?;
        let existing = match (std::fs::read(&pub_path), std::fs::read(&priv_path)) {
            (Ok(p), Ok(k)) => Public::unmarshall(&p).ok().zip(Private::try_from(k).ok()),
            _ => None,
        };
        let (public, private) = match existing {
            Some(pk) => pk,
            None => {
                let created = ak::create_ak_2(
                    &mut self.ctx,
                    ek,
                    HashingAlgorithm::Sha256,
                    AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                    SignatureSchemeAlgorithm::EcDsa,
                    None,
                    None,
                )
                .map_err(tpm("creating the attestation key"))?;
                std::fs::create_dir_all(dir).map_err(|e| kf(e.to_string()))?;
                let p = created.out_public.marshall().map_err(tpm("marshalling the AK"))?;
                write_atomic(&priv_path, created.out_private.value()).map_err(|e| kf(e.to_string()))?;
                write_atomic(&pub_path, &p).map_err(|e| kf(e.to_string()))?;
                (created.out_public, created.out_private)
            }
        };
        let handle = ak::load_ak(&mut self.ctx, ek, None, private, public.clone());
        let _ = self.ctx.flush_context(ek.into());
        Ok((handle.map_err(tpm("loading the attestation key"))?, public))
    }

    /// The attestation key's public parts (creating the key on first use).
    pub fn attestation_key(&mut self, dir: &Path) -> Result<AkPublic, TpmError> {
        let (h, public) = self.load_ak(dir)?;
        let _ = self.ctx.flush_context(h.into());
        let tpmt_public = public.marshall().map_err(tpm("marshalling the AK"))?;
        let sec1 = point(&public).ok_or(TpmError::KeyFiles {
            dir: dir.display().to_string(),
            message: "the attestation key is not an ECC key".into(),
        })?;
        Ok(AkPublic { sec1, tpmt_public })
    }

    /// Quote the SHA-256 bank of `pcrs` with the server's `nonce` (at most 64 bytes).
    pub fn quote(&mut self, dir: &Path, nonce: &[u8], pcrs: &[u8]) -> Result<Quote, TpmError> {
        let slots = pcrs.iter().map(|&p| pcr_slot(p)).collect::<Result<Vec<_>, _>>()?;
        let sel = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tpm("PCR selection"))?;
        let data = Data::try_from(nonce.to_vec()).map_err(tpm("the nonce (at most 64 bytes)"))?;
        let (ak, _) = self.load_ak(dir)?;
        let r = self.ctx.execute_with_nullauth_session(|ctx| ctx.quote(ak, data, SignatureScheme::Null, sel));
        let _ = self.ctx.flush_context(ak.into());
        let (attest, sig) = r.map_err(tpm("quoting"))?;
        let signature_tpmt = sig.marshall().map_err(tpm("marshalling the signature"))?;
        let Signature::EcDsa(ecc) = sig else {
            return Err(TpmError::KeyFiles {
                dir: dir.display().to_string(),
                message: "not an ECDSA signature".into(),
            });
        };
        let (r, s) = (fixed32(ecc.signature_r().value()), fixed32(ecc.signature_s().value()));
        let (Some(r), Some(s)) = (r, s) else {
            return Err(TpmError::KeyFiles { dir: dir.display().to_string(), message: "signature too long".into() });
        };
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(&s);
        Ok(Quote { attest: attest.marshall().map_err(tpm("marshalling the quote"))?, signature, signature_tpmt })
    }

    /// TPM2_ActivateCredential: recover the secret the server encrypted to this TPM's EK for
    /// the attestation key's name. Fails (integrity error) if the credential was made for
    /// another EK or another key.
    pub fn activate_credential(
        &mut self,
        dir: &Path,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let blob = IdObject::try_from(id_object.to_vec()).map_err(tpm("the credential blob"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(tpm("the encrypted secret"))?;
        let (ak, _) = self.load_ak(dir)?;
        let ek = match self.endorsement_key() {
            Ok(ek) => ek,
            Err(e) => {
                let _ = self.ctx.flush_context(ak.into());
                return Err(e);
            }
        };
        let r = self.activate(ak, ek, blob, secret);
        let _ = self.ctx.flush_context(ak.into());
        let _ = self.ctx.flush_context(ek.into());
        r.map(|d| d.value().to_vec())
    }

    /// The EK's policy is PolicySecret(endorsement hierarchy): the AK is used with a plain
    /// HMAC session (empty auth), the EK with a policy session that satisfies it.
    fn activate(
        &mut self,
        ak: KeyHandle,
        ek: KeyHandle,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Digest, TpmError> {
        let (attrs, mask) = SessionAttributesBuilder::new().build();
        let mut sessions = Vec::new();
        for kind in [SessionType::Hmac, SessionType::Policy] {
            let s = self
                .ctx
                .start_auth_session(None, None, None, kind, SymmetricDefinition::AES_128_CFB, HashingAlgorithm::Sha256)
                .map_err(tpm("starting a session"))?
                .ok_or(TpmError::Tpm {
                    what: "starting a session",
                    source: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
                })?;
            self.ctx.tr_sess_set_attributes(s, attrs, mask).map_err(tpm("session attributes"))?;
            sessions.push(s);
        }
        let (hmac, policy) = (sessions[0], sessions[1]);
        let r = (|| {
            let ps = PolicySession::try_from(policy).map_err(tpm("policy session"))?;
            self.ctx
                .execute_with_session(Some(hmac), |ctx| {
                    ctx.policy_secret(
                        ps,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(tpm("satisfying the EK policy"))?;
            self.ctx
                .execute_with_sessions((Some(hmac), Some(policy), None), |ctx| {
                    ctx.activate_credential(ak, ek, blob, secret)
                })
                .map_err(tpm("activating the credential (made for another TPM or key?)"))
        })();
        for s in sessions {
            let _ = self.ctx.flush_context(tss_esapi::handles::SessionHandle::from(s).into());
        }
        r
    }

    /// Whether an NV index exists. Listed (a capability query) rather than opened: opening
    /// an undefined index is an error that the TSS also logs, and any other error must not
    /// read as "not there".
    fn nv_defined(&mut self, index: NvIndexTpmHandle) -> Result<bool, TpmError> {
        Ok(tss_esapi::abstraction::nv::list(&mut self.ctx)
            .map_err(tpm("listing NV indices"))?
            .iter()
            .any(|(public, _)| public.nv_index() == index))
    }

    /// The EK certificate (DER) from the TPM maker's NV index, if the TPM has one.
    pub fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmError> {
        let index = NvIndexTpmHandle::new(EK_CERT_ECC_NV_INDEX).map_err(tpm("NV index"))?;
        if !self.nv_defined(index)? {
            return Ok(None);
        }
        let der = self
            .ctx
            .execute_with_nullauth_session(|ctx| tss_esapi::abstraction::nv::read_full(ctx, NvAuth::Owner, index))
            .map_err(tpm("reading the EK certificate"))?;
        // Some makers pad the index; a DER SEQUENCE says its own length.
        Ok(Some(der_prefix(&der).to_vec()))
    }

    fn floor_handle(&mut self) -> Result<Option<NvIndexHandle>, TpmError> {
        let index = NvIndexTpmHandle::new(FLOOR_NV_INDEX).map_err(tpm("NV index"))?;
        if !self.nv_defined(index)? {
            return Ok(None);
        }
        let h = self
            .ctx
            .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(index)))
            .map_err(tpm("opening the security floor index"))?;
        Ok(Some(h.into()))
    }

    /// The security floor kept in the TPM (0 when it was never raised).
    pub fn floor(&mut self) -> Result<u64, TpmError> {
        let Some(h) = self.floor_handle()? else { return Ok(0) };
        let buf = self
            .ctx
            .execute_with_nullauth_session(|ctx| ctx.nv_read(NvAuth::Owner, h, 8, 0))
            .map_err(tpm("reading the security floor"))?;
        Ok(buf.value().try_into().map(u64::from_be_bytes).unwrap_or(0))
    }

    /// Raise the floor to `version` (never lowers it). Returns the floor now in force.
    /// One TPM write: a power cut leaves the old or the new value, and the updater raises
    /// it again from its state file at the next start.
    pub fn raise_floor(&mut self, version: u64) -> Result<u64, TpmError> {
        let current = self.floor()?;
        if version <= current {
            return Ok(current);
        }
        let h = match self.floor_handle()? {
            Some(h) => h,
            None => {
                let attrs = NvIndexAttributesBuilder::new()
                    .with_owner_write(true)
                    .with_owner_read(true)
                    .with_no_da(true)
                    .build()
                    .map_err(tpm("NV attributes"))?;
                let public = NvPublicBuilder::new()
                    .with_nv_index(NvIndexTpmHandle::new(FLOOR_NV_INDEX).map_err(tpm("NV index"))?)
                    .with_index_name_algorithm(HashingAlgorithm::Sha256)
                    .with_index_attributes(attrs)
                    .with_data_area_size(8)
                    .build()
                    .map_err(tpm("NV public area"))?;
                self.ctx
                    .execute_with_nullauth_session(|ctx| ctx.nv_define_space(Provision::Owner, None, public))
                    .map_err(tpm("defining the security floor index"))?
            }
        };
        let data = MaxNvBuffer::try_from(version.to_be_bytes().to_vec()).map_err(tpm("NV data"))?;
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.nv_write(NvAuth::Owner, h, data, 0))
            .map_err(tpm("writing the security floor"))?;
        Ok(version)
    }
}

/// The DER object at the start of `b` (the whole of `b` if its header does not parse).
fn der_prefix(b: &[u8]) -> &[u8] {
    let len = match (b.first(), b.get(1)) {
        (Some(0x30), Some(&l)) if l < 0x80 => Some(2 + l as usize),
        (Some(0x30), Some(&l)) if (0x81..=0x84).contains(&l) => {
            let n = (l & 0x7f) as usize;
            b.get(2..2 + n).map(|x| 2 + n + x.iter().fold(0usize, |a, &d| (a << 8) | d as usize))
        }
        _ => None,
    };
    match len {
        Some(n) if n <= b.len() => &b[..n],
        _ => b,
    }
}

fn pcr_slot(index: u8) -> Result<PcrSlot, TpmError> {
    PcrSlot::try_from(1u32 << index).map_err(tpm("PCR index"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
