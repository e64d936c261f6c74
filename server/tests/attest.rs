//! Attestation against a software TPM (swtpm): the device enrolls its attestation key,
//! measures the booted release into PCR 15, and answers the server's nonce with a quote;
//! the server checks signature, nonce, and PCR against the release manifest, shows the
//! verdict in the fleet view and the metrics, and counts a device as healthy on a channel
//! that requires attestation only when it passed. Every wrong case fails with its reason.

mod common;

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

async fn verdict(fx: &Fixture, id: &str) -> serde_json::Value {
    let (_, d) = fx.get_json(&format!("/api/v1/devices/{id}")).await;
    d["attestation"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn quotes_are_checked_against_the_release_and_gate_health() {
    let mut fx = Fixture::new().await;
    let root1 = publish_release(&fx, "1.0.0").await;
    publish_release(&fx, "2.0.0").await;
    let mut ch = change("stable");
    ch.image = Some(IMAGE.into());
    ch.version = Some("1.0.0".into());
    ch.percent = Some(100);
    ch.require_attestation = Some(true);
    rollout(&fx.repo, &fx.keys, ch).await;
    fx.start(fx.config()).await;

    let sw = Swtpm::start(&fx.dir.path().join("tpm-state"));
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let ak_dir = fx.dir.path().join("ak");
    std::fs::create_dir_all(&ak_dir).unwrap();
    let ak = tpm.attestation_key(&ak_dir).unwrap();
    let identity =
        TpmIdentity { ek: hex::encode(tpm.endorsement_public().unwrap()), ak: hex::encode(&ak.sec1), ek_cert: None };

    let mut dev = Device::new("tpm-dev", "stable", "1.0.0");
    let mut e = dev.enrollment(Some(ENROLL_TOKEN));
    e.tpm = Some(identity);
    let (status, body) = dev.post_signed(&fx, "/api/v1/enroll", serde_json::to_vec(&e).unwrap()).await;
    assert_eq!(status, 201, "{body}");

    // Booted 1.0.0 and measured it. The first report gets a nonce; the quote passes.
    tpm.measure(&release_event(IMAGE, "1.0.0", &root1)).unwrap();
    let nonce = report(&fx, &mut dev, None).await.expect("a device with an AK is asked to attest");
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

    // A device without an AK is never asked, and an attestation from it is refused.
    let mut plain = Device::new("plain-dev", "stable", "1.0.0");
    assert_eq!(plain.enroll(&fx, Some(ENROLL_TOKEN)).await.0, 201);
    assert_eq!(report(&fx, &mut plain, None).await, None);
    let nonce = "11".repeat(32);
    report(&fx, &mut plain, Some(quote(&mut tpm, &ak_dir, &nonce))).await;
    assert!(verdict(&fx, "plain-dev").await["detail"].as_str().unwrap().contains("no TPM attestation key"));
    fx.stop().await;
}
