//! Attestation against a software TPM (swtpm): the device enrolls its attestation key,
//! proves it lives in the TPM of its endorsement key (the server's credential challenge,
//! TPM2_ActivateCredential), measures the booted release into PCR 15, and answers the
//! server's nonce with a quote;
//! the server checks signature, nonce, and PCR against the release manifest, shows the
//! verdict in the fleet view and the metrics, and counts a device as healthy on a channel
//! that requires attestation only when it passed. Every wrong case fails with its reason.

use crate::common;

use common::*;
use edgeimg_proto::attest::{Attestation, TpmIdentity};
use edgeimg_release::Lifetimes;
use edgeimg_tpm::swtpm::Swtpm;
use edgeimg_tpm::{release_event, Tpm, RELEASE_PCR};

/// Publish `version`; returns its verity root hash (what the device measures with it).
async fn publish_release(fx: &Fixture, version: &str) -> String {
    let work = fx.dir.path().join("work");
    let build = publish_for(&fx.repo, &fx.keys, &work, BOARD, version, 4096, Lifetimes::default()).await;
    let payload: serde_json::Value =
        serde_json::from_slice(&std::fs::read(build.join("payload/payload.json")).unwrap()).unwrap();
    payload["roothash"].as_str().unwrap().to_string()
}

/// A server whose stable channel runs 1.0.0 at 100% and requires attestation; `more`
/// versions are published too. Returns it with 1.0.0's verity root hash.
async fn attesting_fleet(more: &[&str]) -> (Fixture, String) {
    let mut fx = Fixture::new().await;
    let root1 = publish_release(&fx, "1.0.0").await;
    for v in more {
        publish_release(&fx, v).await;
    }
    let mut ch = change("stable");
    ch.image = Some(IMAGE.into());
    ch.version = Some("1.0.0".into());
    ch.percent = Some(100);
    ch.require_attestation = Some(true);
    rollout(&fx.repo, &fx.keys, ch).await;
    fx.start(fx.config()).await;
    (fx, root1)
}

fn quote(tpm: &mut Tpm, ak_dir: &std::path::Path, nonce: &str) -> Attestation {
    let q = tpm.quote(ak_dir, &hex::decode(nonce).unwrap(), &[RELEASE_PCR]).unwrap();
    Attestation { nonce: nonce.into(), attest: hex::encode(&q.attest), signature: hex::encode(q.signature) }
}

/// Send a report (with an attestation or not); returns the nonce the server asks for next.
async fn report(fx: &Fixture, dev: &mut Device, attestation: Option<Attestation>) -> Option<String> {
    let mut r = dev.next_report(None);
    r.attestation = attestation;
    let (status, body) = dev.send(fx, &r).await;
    assert_eq!(status, 200, "{body}");
    body["attest_nonce"].as_str().map(String::from)
}

/// Send a report carrying a credential answer (or none); returns the server's reply.
async fn report_secret(fx: &Fixture, dev: &mut Device, secret: Option<String>) -> serde_json::Value {
    let mut r = dev.next_report(None);
    r.credential_secret = secret;
    let (status, body) = dev.send(fx, &r).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The TPM's answer to a credential challenge in a reply.
fn activate(tpm: &mut Tpm, ak_dir: &std::path::Path, reply: &serde_json::Value) -> Result<String, String> {
    let c = &reply["credential"];
    let unhex = |k: &str| hex::decode(c[k].as_str().unwrap_or_else(|| panic!("no credential.{k} in {reply}"))).unwrap();
    tpm.activate_credential(ak_dir, &unhex("id_object"), &unhex("encrypted_secret"))
        .map(hex::encode)
        .map_err(|e| e.to_string())
}

fn identity(tpm: &mut Tpm, ek_of: Option<&mut Tpm>, ak_dir: &std::path::Path) -> TpmIdentity {
    let ak = tpm.attestation_key(ak_dir).unwrap();
    let ek = match ek_of {
        Some(other) => other.endorsement_public().unwrap(),
        None => tpm.endorsement_public().unwrap(),
    };
    TpmIdentity {
        ek: hex::encode(ek),
        ak: hex::encode(&ak.sec1),
        ak_public: Some(hex::encode(&ak.tpmt_public)),
        ek_cert: None,
    }
}

async fn verdict(fx: &Fixture, id: &str) -> serde_json::Value {
    let (_, d) = fx.get_json(&format!("/api/v1/devices/{id}")).await;
    d["attestation"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn quotes_are_checked_against_the_release_and_gate_health() {
    let (mut fx, root1) = attesting_fleet(&["2.0.0"]).await;

    let sw = Swtpm::start(&fx.dir.path().join("tpm-state"));
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let ak_dir = fx.dir.path().join("ak");
    std::fs::create_dir_all(&ak_dir).unwrap();
    let identity = identity(&mut tpm, None, &ak_dir);

    let mut dev = Device::new("tpm-dev", "stable", "1.0.0");
    let mut e = dev.enrollment(Some(ENROLL_TOKEN));
    e.tpm = Some(identity);
    let (status, body) = dev.post_signed(&fx, "/api/v1/enroll", serde_json::to_vec(&e).unwrap()).await;
    assert_eq!(status, 201, "{body}");

    // Booted 1.0.0 and measured it. The first report gets a credential challenge (no nonce:
    // a quote means nothing before the AK is known to be in the TPM); the same challenge is
    // not re-issued while it is outstanding.
    tpm.measure(&release_event(IMAGE, "1.0.0", &root1)).unwrap();
    let reply = report_secret(&fx, &mut dev, None).await;
    assert!(reply["attest_nonce"].is_null() && reply["credential"]["id_object"].is_string(), "{reply}");
    let secret = activate(&mut tpm, &ak_dir, &reply).unwrap();
    assert!(report_secret(&fx, &mut dev, None).await["credential"].is_null(), "one challenge at a time");
    // The answer binds the AK; the same reply asks for a quote.
    let reply = report_secret(&fx, &mut dev, Some(secret.clone())).await;
    assert!(reply["credential"].is_null(), "{reply}");
    let nonce = reply["attest_nonce"].as_str().expect("a bound AK is asked to attest").to_string();
    // A replayed answer: the challenge was used.
    let reply = report_secret(&fx, &mut dev, Some(secret)).await;
    assert!(verdict(&fx, "tpm-dev").await["detail"].as_str().unwrap().contains("no credential challenge"));
    let nonce = reply["attest_nonce"].as_str().map(String::from).unwrap_or(nonce);
    assert_eq!(nonce.len(), 64, "32 random bytes");
    assert_eq!(fx.metric("edgeimg_channel_healthy_devices{").await, Some(0.0), "not attested yet");
    let next = report(&fx, &mut dev, Some(quote(&mut tpm, &ak_dir, &nonce))).await;
    assert_eq!(next, None, "a fresh pass needs no new nonce");
    let v = verdict(&fx, "tpm-dev").await;
    assert_eq!(v["result"], "passed", "{v}");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(report(&fx, &mut dev, None).await, None, "no new nonce while the pass is fresh");
    assert_eq!(fx.metric("edgeimg_attestations_total{result=\"passed\"}").await, Some(1.0));
    assert_eq!(fx.metric("edgeimg_channel_attested_devices{").await, Some(1.0));
    assert_eq!(fx.metric("edgeimg_channel_healthy_devices{").await, Some(1.0), "attested, so healthy");

    // The same quote again: its nonce was used.
    let old = quote(&mut tpm, &ak_dir, &nonce);
    report(&fx, &mut dev, Some(old)).await;
    let v = verdict(&fx, "tpm-dev").await;
    assert_eq!(v["result"], "failed");
    assert!(v["detail"].as_str().unwrap().contains("no nonce is outstanding"), "{v}");
    assert_eq!(fx.metric("edgeimg_channel_healthy_devices{").await, Some(0.0), "required, and failed");

    // A quote for another nonce than the one issued.
    let nonce = report(&fx, &mut dev, None).await.expect("a failed device is asked again");
    let mut other = quote(&mut tpm, &ak_dir, &"00".repeat(32));
    other.nonce = nonce.clone();
    report(&fx, &mut dev, Some(other)).await;
    assert!(verdict(&fx, "tpm-dev").await["detail"].as_str().unwrap().contains("another nonce"));

    // The device says it runs 2.0.0, but its TPM says it booted 1.0.0.
    dev.version = "2.0.0".into();
    let nonce = report(&fx, &mut dev, None).await.expect("a new version is attested anew");
    report(&fx, &mut dev, Some(quote(&mut tpm, &ak_dir, &nonce))).await;
    let v = verdict(&fx, "tpm-dev").await;
    assert_eq!((v["result"].as_str(), v["version"].as_str()), (Some("failed"), Some("2.0.0")));
    assert!(v["detail"].as_str().unwrap().contains("runs release 1.0.0"), "{v}");

    // Measured twice (or anything unknown): matches no release.
    dev.version = "1.0.0".into();
    tpm.measure("something else").unwrap();
    let nonce = report(&fx, &mut dev, None).await.expect("asked again");
    report(&fx, &mut dev, Some(quote(&mut tpm, &ak_dir, &nonce))).await;
    assert!(verdict(&fx, "tpm-dev").await["detail"].as_str().unwrap().contains("match no published release"));

    // Signed by another key than the enrolled AK (a quote from another TPM).
    let sw2 = Swtpm::start(&fx.dir.path().join("tpm-state-2"));
    let mut tpm2 = Tpm::open(&sw2.tcti()).unwrap();
    let ak2_dir = fx.dir.path().join("ak2");
    std::fs::create_dir_all(&ak2_dir).unwrap();
    tpm2.measure(&release_event(IMAGE, "1.0.0", &root1)).unwrap();
    let nonce = report(&fx, &mut dev, None).await.expect("asked again");
    report(&fx, &mut dev, Some(quote(&mut tpm2, &ak2_dir, &nonce))).await;
    assert!(verdict(&fx, "tpm-dev").await["detail"].as_str().unwrap().contains("not signed by this device"));
    assert!(fx.metric("edgeimg_attestations_total{result=\"failed\"}").await >= Some(5.0));

    // Binding survives: no new challenge for this device.
    assert!(report_secret(&fx, &mut dev, None).await["credential"].is_null());

    // A device without an AK is never asked, and an attestation from it is refused.
    let mut plain = Device::new("plain-dev", "stable", "1.0.0");
    assert_eq!(plain.enroll(&fx, Some(ENROLL_TOKEN)).await.0, 201);
    assert_eq!(report(&fx, &mut plain, None).await, None);
    let nonce = "11".repeat(32);
    report(&fx, &mut plain, Some(quote(&mut tpm, &ak_dir, &nonce))).await;
    assert!(verdict(&fx, "plain-dev").await["detail"].as_str().unwrap().contains("no TPM attestation key"));
    fx.stop().await;
}

/// The AK binding's failure cases: an AK from another TPM than the enrolled EK (the device
/// cannot recover the secret), a wrong answer, a quote before binding, and a device whose
/// updater sends no AK public area.
#[tokio::test(flavor = "multi_thread")]
async fn an_ak_that_is_not_in_the_eks_tpm_is_never_bound() {
    let (mut fx, root1) = attesting_fleet(&[]).await;

    // The EK of one TPM (a genuine device's), the AK of another (the attacker's).
    let sw = Swtpm::start(&fx.dir.path().join("tpm-genuine"));
    let mut genuine = Tpm::open(&sw.tcti()).unwrap();
    let sw2 = Swtpm::start(&fx.dir.path().join("tpm-attacker"));
    let mut attacker = Tpm::open(&sw2.tcti()).unwrap();
    let ak_dir = fx.dir.path().join("attacker-ak");
    std::fs::create_dir_all(&ak_dir).unwrap();
    let mut dev = Device::new("forged-dev", "stable", "1.0.0");
    let mut e = dev.enrollment(Some(ENROLL_TOKEN));
    e.tpm = Some(identity(&mut attacker, Some(&mut genuine), &ak_dir));
    assert_eq!(dev.post_signed(&fx, "/api/v1/enroll", serde_json::to_vec(&e).unwrap()).await.0, 201);

    let reply = report_secret(&fx, &mut dev, None).await;
    // Neither TPM can answer: the attacker's has another EK, the genuine one has no such AK.
    let err = activate(&mut attacker, &ak_dir, &reply).unwrap_err();
    assert!(err.contains("activating the credential"), "{err}");
    let genuine_dir = fx.dir.path().join("genuine-ak");
    std::fs::create_dir_all(&genuine_dir).unwrap();
    assert!(activate(&mut genuine, &genuine_dir, &reply).is_err());
    // A guessed answer fails with its reason, and the next report gets a new challenge.
    let reply = report_secret(&fx, &mut dev, Some("00".repeat(32))).await;
    let v = verdict(&fx, "forged-dev").await;
    assert_eq!(v["result"], "failed");
    assert!(v["detail"].as_str().unwrap().contains("not in the TPM of its enrolled endorsement key"), "{v}");
    assert!(reply["credential"].is_null() && reply["attest_nonce"].is_null(), "{reply}");
    let again = report_secret(&fx, &mut dev, None).await;
    assert!(again["credential"]["id_object"].is_string(), "a failed binding is challenged again: {again}");
    // A quote from the unbound AK is refused, however good it is.
    attacker.measure(&release_event(IMAGE, "1.0.0", &root1)).unwrap();
    let q = quote(&mut attacker, &ak_dir, &"22".repeat(32));
    report(&fx, &mut dev, Some(q)).await;
    let v = verdict(&fx, "forged-dev").await;
    assert!(v["detail"].as_str().unwrap().contains("not bound to the TPM's endorsement key"), "{v}");
    assert_eq!(fx.metric("edgeimg_channel_attested_devices{").await, Some(0.0));

    // An identity without the AK public area (an updater from before AK binding).
    let mut old = Device::new("old-dev", "stable", "1.0.0");
    let mut e = old.enrollment(Some(ENROLL_TOKEN));
    let mut id = identity(&mut genuine, None, &genuine_dir);
    id.ak_public = None;
    e.tpm = Some(id);
    assert_eq!(old.post_signed(&fx, "/api/v1/enroll", serde_json::to_vec(&e).unwrap()).await.0, 201);
    let reply = report_secret(&fx, &mut old, None).await;
    assert!(reply["credential"].is_null() && reply["attest_nonce"].is_null(), "{reply}");
    let v = verdict(&fx, "old-dev").await;
    assert!(v["detail"].as_str().unwrap().contains("predates AK binding"), "{v}");
    fx.stop().await;
}
