//! The device's TPM use against a real software TPM (swtpm, socket mode, started here with
//! its own state directory): measure → quote → the server's verification, every way a quote
//! must fail, the attestation key and the security floor across a TPM restart, and a
//! cross-check of the quote with tpm2-tools' `tpm2_checkquote`.

use std::path::PathBuf;
use std::process::Command;

use edgeimg_proto::attest::{check_release, pcr_digest, verify_quote, QuoteError};
use edgeimg_tpm::swtpm::Swtpm;
use edgeimg_tpm::{expected_pcr, release_event, Tpm, TpmError, RELEASE_PCR};

const HASH_V1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const HASH_V2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn known() -> Vec<(String, [u8; 32])> {
    vec![
        ("1.0.0".into(), expected_pcr(&[&release_event("edge", "1.0.0", HASH_V1)])),
        ("2.0.0".into(), expected_pcr(&[&release_event("edge", "2.0.0", HASH_V2)])),
    ]
}

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    ak_dir: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup { state: dir.path().join("tpm-state"), ak_dir: dir.path().join("data/tpm"), _dir: dir }
}

#[test]
fn measure_quote_and_the_server_verifies() {
    let s = setup();
    let sw = Swtpm::start(&s.state);
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let event = release_event("edge", "2.0.0", HASH_V2);
    tpm.measure(&event).unwrap();
    assert_eq!(tpm.pcr(RELEASE_PCR).unwrap(), expected_pcr(&[&event]), "PCR 15 = the value computed at publish time");

    let ak = tpm.attestation_key(&s.ak_dir).unwrap();
    let nonce = b"server nonce 0001".to_vec();
    let q = tpm.quote(&s.ak_dir, &nonce, &[RELEASE_PCR]).unwrap();
    let info = verify_quote(&ak.sec1, &nonce, &q.attest, &q.signature).unwrap();
    assert_eq!(info.pcrs, vec![RELEASE_PCR]);
    assert_eq!(info.pcr_digest, pcr_digest(&[expected_pcr(&[&event])]));
    check_release(&info, RELEASE_PCR, "2.0.0", &known()).unwrap();
}

#[test]
fn every_bad_quote_fails_with_its_own_reason() {
    let s = setup();
    let sw = Swtpm::start(&s.state);
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    tpm.measure(&release_event("edge", "1.0.0", HASH_V1)).unwrap();
    let ak = tpm.attestation_key(&s.ak_dir).unwrap();
    let nonce = b"fresh nonce".to_vec();
    let q = tpm.quote(&s.ak_dir, &nonce, &[RELEASE_PCR]).unwrap();

    // A replayed quote: signed, but for an older nonce.
    assert_eq!(verify_quote(&ak.sec1, b"the nonce asked now", &q.attest, &q.signature), Err(QuoteError::Nonce));
    // A quote from another attestation key (another device, or a key the attacker holds).
    let other_dir = s.ak_dir.with_file_name("other-ak");
    let other = tpm.quote(&other_dir, &nonce, &[RELEASE_PCR]).unwrap();
    assert_eq!(verify_quote(&ak.sec1, &nonce, &other.attest, &other.signature), Err(QuoteError::Signature));
    // Bytes changed after signing.
    let mut attest = q.attest.clone();
    let last = attest.len() - 1;
    attest[last] ^= 1;
    assert_eq!(verify_quote(&ak.sec1, &nonce, &attest, &q.signature), Err(QuoteError::Signature));
    // The device runs 1.0.0 but reports 2.0.0.
    let info = verify_quote(&ak.sec1, &nonce, &q.attest, &q.signature).unwrap();
    assert_eq!(check_release(&info, RELEASE_PCR, "2.0.0", &known()), Err(QuoteError::OtherRelease("1.0.0".into())));
    // Something else was measured into the release PCR.
    tpm.measure("edgeimg-release:v1:edge:9.9.9:forged").unwrap();
    let q = tpm.quote(&s.ak_dir, &nonce, &[RELEASE_PCR]).unwrap();
    let info = verify_quote(&ak.sec1, &nonce, &q.attest, &q.signature).unwrap();
    assert_eq!(check_release(&info, RELEASE_PCR, "1.0.0", &known()), Err(QuoteError::Unknown));
    // A quote of other PCRs proves nothing about the release.
    let q = tpm.quote(&s.ak_dir, &nonce, &[RELEASE_PCR, 16]).unwrap();
    let info = verify_quote(&ak.sec1, &nonce, &q.attest, &q.signature).unwrap();
    assert!(matches!(check_release(&info, RELEASE_PCR, "1.0.0", &known()), Err(QuoteError::Selection { .. })));
}

#[test]
fn attestation_key_and_floor_survive_a_tpm_restart() {
    let s = setup();
    let (ak1, ek1) = {
        let sw = Swtpm::start(&s.state);
        let mut tpm = Tpm::open(&sw.tcti()).unwrap();
        assert_eq!(tpm.floor().unwrap(), 0, "a new TPM has no floor");
        assert_eq!(tpm.raise_floor(3).unwrap(), 3);
        assert_eq!(tpm.raise_floor(2).unwrap(), 3, "the floor never goes down");
        let ak = tpm.attestation_key(&s.ak_dir).unwrap();
        assert_eq!(tpm.attestation_key(&s.ak_dir).unwrap().sec1, ak.sec1, "the key is kept, not re-created");
        (ak, tpm.endorsement_public().unwrap())
    };
    // Power cycle: a new swtpm process on the same state; PCRs are reset, NV is not.
    let sw = Swtpm::start(&s.state);
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert_eq!(tpm.floor().unwrap(), 3);
    assert_eq!(tpm.pcr(RELEASE_PCR).unwrap(), [0; 32]);
    assert_eq!(tpm.endorsement_public().unwrap(), ek1, "the EK is derived from the TPM's seed");
    let ak2 = tpm.attestation_key(&s.ak_dir).unwrap();
    assert_eq!(ak2.sec1, ak1.sec1);
    let q = tpm.quote(&s.ak_dir, b"n", &[RELEASE_PCR]).unwrap();
    verify_quote(&ak1.sec1, b"n", &q.attest, &q.signature).unwrap();
    assert_eq!(tpm.raise_floor(5).unwrap(), 5);
    assert_eq!(tpm.floor().unwrap(), 5);
}

#[test]
fn tpm2_checkquote_accepts_the_quote() {
    use p256::pkcs8::EncodePublicKey;
    let s = setup();
    let sw = Swtpm::start(&s.state);
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    tpm.measure(&release_event("edge", "2.0.0", HASH_V2)).unwrap();
    let ak = tpm.attestation_key(&s.ak_dir).unwrap();
    let nonce = b"0123456789abcdef".to_vec();
    let q = tpm.quote(&s.ak_dir, &nonce, &[RELEASE_PCR]).unwrap();
    let d = s.ak_dir.parent().unwrap();
    let pem = p256::PublicKey::from_sec1_bytes(&ak.sec1).unwrap().to_public_key_pem(Default::default()).unwrap();
    std::fs::write(d.join("ak.pem"), pem).unwrap();
    std::fs::write(d.join("quote.msg"), &q.attest).unwrap();
    std::fs::write(d.join("quote.sig"), &q.signature_tpmt).unwrap();
    let check = |nonce: &[u8]| {
        Command::new("tpm2_checkquote")
            .current_dir(d)
            .args(["-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig", "-g", "sha256", "-q"])
            .arg(hex::encode(nonce))
            .output()
            .expect("tpm2-tools is installed (apt-get install tpm2-tools)")
    };
    let ok = check(&nonce);
    assert!(ok.status.success(), "tpm2_checkquote: {}", String::from_utf8_lossy(&ok.stderr));
    assert!(!check(b"another nonce").status.success(), "tpm2_checkquote must refuse a wrong nonce");
}

#[test]
fn no_tpm_is_a_clear_error() {
    let e = Tpm::open("device:/nonexistent/tpmrm0").err().expect("no TPM there");
    assert!(matches!(e, TpmError::Unavailable { .. }));
    let m = e.to_string();
    assert!(m.contains("/nonexistent/tpmrm0 does not exist") && m.contains("cannot attest"), "{m}");
}

/// The server's software MakeCredential (edgeimg_proto::credential) against the TPM's
/// ActivateCredential: the secret comes back only for this TPM's EK and this AK's name.
#[test]
fn credential_activation_binds_the_ak_to_the_ek() {
    use edgeimg_proto::credential::{check_ak_public, make_credential, name, CredentialError};
    let s = setup();
    let sw = Swtpm::start(&s.state);
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let ek = tpm.endorsement_public().unwrap();
    let ak = tpm.attestation_key(&s.ak_dir).unwrap();
    check_ak_public(&ak.tpmt_public, &ak.sec1).unwrap();
    let secret = *b"0123456789abcdef0123456789abcdef";
    let c = make_credential(&ek, &name(&ak.tpmt_public), &secret, &[0x42; 32]).unwrap();
    assert_eq!(tpm.activate_credential(&s.ak_dir, &c.id_object, &c.encrypted_secret).unwrap(), secret);

    // Made for another key's name (a key the device claims is its AK but is not this one):
    // the TPM refuses (integrity check of the credential fails).
    let other_dir = s.ak_dir.with_file_name("other-ak");
    let other = tpm.attestation_key(&other_dir).unwrap();
    let c2 = make_credential(&ek, &name(&other.tpmt_public), &secret, &[0x43; 32]).unwrap();
    assert!(tpm.activate_credential(&s.ak_dir, &c2.id_object, &c2.encrypted_secret).is_err());

    // Made for another TPM's EK: this TPM cannot decrypt it.
    let s2 = setup();
    let sw2 = Swtpm::start(&s2.state);
    let mut tpm2 = Tpm::open(&sw2.tcti()).unwrap();
    let ek2 = tpm2.endorsement_public().unwrap();
    assert_ne!(ek, ek2);
    let c3 = make_credential(&ek2, &name(&ak.tpmt_public), &secret, &[0x44; 32]).unwrap();
    assert!(tpm.activate_credential(&s.ak_dir, &c3.id_object, &c3.encrypted_secret).is_err());
    // ... while the TPM it was made for recovers it for its own AK of that name only.
    assert!(tpm2.activate_credential(&s2.ak_dir, &c3.id_object, &c3.encrypted_secret).is_err());

    // The server's checks of the AK's public area.
    assert_eq!(check_ak_public(&ak.tpmt_public, &other.sec1), Err(CredentialError::AkMismatch));
    let mut tampered = ak.tpmt_public.clone();
    tampered[7] &= !(1 << 1); // fixedTPM cleared (attributes are bytes 4..8, big-endian)
    assert!(matches!(check_ak_public(&tampered, &ak.sec1), Err(CredentialError::AkAttributes(_))));

    // The EK certificate: swtpm started without swtpm_setup has none.
    assert_eq!(tpm.ek_certificate().unwrap(), None);
}

/// A TPM whose maker stored an EK certificate (written here the way a manufacturer does,
/// at the TCG index for the ECC P-256 EK, padded as some makers do): it is read back whole
/// and without the padding.
#[test]
fn the_ek_certificate_is_read_from_its_nv_index() {
    use tss_esapi::attributes::NvIndexAttributesBuilder;
    use tss_esapi::handles::NvIndexTpmHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
    use tss_esapi::structures::{MaxNvBuffer, NvPublicBuilder};

    let s = setup();
    let sw = Swtpm::start(&s.state);
    let pem =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../keys-example/secureboot/db.crt")).unwrap();
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(pem.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap()
        .stdout;
    assert_eq!(der[0], 0x30, "openssl wrote DER");
    let mut stored = der.clone();
    stored.resize(der.len() + 100, 0xff);
    {
        let mut ctx = tss_esapi::Context::new(sw.tcti().parse().unwrap()).unwrap();
        let attrs = NvIndexAttributesBuilder::new()
            .with_owner_write(true)
            .with_owner_read(true)
            .with_auth_read(true)
            .with_no_da(true)
            .build()
            .unwrap();
        let public = NvPublicBuilder::new()
            .with_nv_index(NvIndexTpmHandle::new(edgeimg_tpm::EK_CERT_ECC_NV_INDEX).unwrap())
            .with_index_name_algorithm(HashingAlgorithm::Sha256)
            .with_index_attributes(attrs)
            .with_data_area_size(stored.len())
            .build()
            .unwrap();
        let h = ctx.execute_with_nullauth_session(|c| c.nv_define_space(Provision::Owner, None, public)).unwrap();
        for (i, chunk) in stored.chunks(512).enumerate() {
            let data = MaxNvBuffer::try_from(chunk.to_vec()).unwrap();
            ctx.execute_with_nullauth_session(|c| c.nv_write(NvAuth::Owner, h, data, (i * 512) as u16)).unwrap();
        }
    }
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert_eq!(tpm.ek_certificate().unwrap(), Some(der));
}
