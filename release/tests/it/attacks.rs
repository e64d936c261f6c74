//! The repository-level attack matrix: an attacker controls the files the repository
//! serves (a compromised mirror or server). Each attack is played against a client that
//! trusts only root.json and has already seen a good repository; each must be rejected.

use crate::common;

use std::path::Path;

use common::*;
use edgeimg_proto::channel::{channel_target, Channel};
use edgeimg_proto::release::manifest_target;
use edgeimg_release::publish::publish;
use edgeimg_release::rollout::{self, Change};
use edgeimg_release::{KeyDir, KeyName, Lifetimes, Repo};

struct World {
    _d: tempfile::TempDir,
    keys: KeyDir,
    repo: Repo,
    store: std::path::PathBuf,
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
}

async fn world() -> World {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_path_buf();
    let keys = keyset(&dir.join("keys")).await;
    let repo = Repo::new(dir.join("repo"));
    publish(&repo, &keys, &publish_opts(&fake_build(&dir, "b", "edge", "1.0.0"))).await.unwrap();
    let c = Change {
        channel: "stable".into(),
        board: "b".into(),
        version: Some("1.0.0".into()),
        percent: Some(100),
        ..Default::default()
    };
    rollout::apply(&repo, &keys, &c, &Lifetimes::default(), now()).await.unwrap();
    let store = dir.join("store");
    let root = keys.dir.join("root.json");
    client(&repo, &root, &store).await.expect("the good repository loads");
    World { _d: d, keys, repo, store, root, dir }
}

fn snapshot_of(repo: &Repo, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(repo.metadata_dir()).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn restore(repo: &Repo, from: &Path, names: &[&str]) {
    for n in names {
        std::fs::copy(from.join(n), repo.metadata_dir().join(n)).unwrap();
    }
}

async fn rejected(w: &World, what: &str) -> String {
    match client(&w.repo, &w.root, &w.store).await {
        Ok(_) => panic!("{what}: the client accepted the repository"),
        Err(e) => edgeimg_release::chain(&e),
    }
}

#[tokio::test]
async fn expired_timestamp_is_rejected() {
    let w = world().await;
    // A timestamp signed with the right key, but long expired (a freeze attack).
    let old = now() - jiff::SignedDuration::from_hours(72);
    rollout::refresh(&w.repo, &w.keys, &Lifetimes::default(), old).await.unwrap();
    let e = rejected(&w, "expired timestamp").await;
    assert!(e.to_lowercase().contains("expired"), "{e}");
}

#[tokio::test]
async fn rolled_back_metadata_is_rejected() {
    let w = world().await;
    let old = w.dir.join("old-metadata");
    snapshot_of(&w.repo, &old);
    publish(&w.repo, &w.keys, &publish_opts(&fake_build(&w.dir, "b", "edge", "1.1.0"))).await.unwrap();
    client(&w.repo, &w.root, &w.store).await.expect("new release seen");
    // Serve the older (validly signed, unexpired) timestamp again.
    restore(&w.repo, &old, &["timestamp.json"]);
    let e = rejected(&w, "rolled-back timestamp").await;
    assert!(e.contains("version") || e.contains("rollback") || e.contains("older"), "{e}");
}

#[tokio::test]
async fn mixed_metadata_from_two_publishes_is_rejected() {
    let w = world().await;
    publish(&w.repo, &w.keys, &publish_opts(&fake_build(&w.dir, "b", "edge", "1.1.0"))).await.unwrap();
    // The current timestamp names snapshot N; serve the snapshot of the previous publish
    // under that name (both are correctly signed).
    let ts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.repo.metadata_dir().join("timestamp.json")).unwrap()).unwrap();
    let n = ts["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    std::fs::copy(
        w.repo.metadata_dir().join(format!("{}.snapshot.json", n - 1)),
        w.repo.metadata_dir().join(format!("{n}.snapshot.json")),
    )
    .unwrap();
    let e = rejected(&w, "mix-and-match snapshot").await;
    assert!(e.to_lowercase().contains("hash") || e.contains("version") || e.contains("length"), "{e}");
}

#[tokio::test]
async fn target_with_wrong_content_is_rejected() {
    let w = world().await;
    let c = client(&w.repo, &w.root, &w.store).await.unwrap();
    let m = manifest_target("edge", "b", "1.0.0");
    let file = std::fs::read_dir(w.repo.targets_dir())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&format!(".{m}")))
        .unwrap();
    let mut bytes = std::fs::read(file.path()).unwrap();
    bytes[10] ^= 1;
    std::fs::write(file.path(), &bytes).unwrap();
    assert!(read_target(&c, &m).await.is_err(), "a changed byte");
    bytes.extend_from_slice(b"more");
    std::fs::write(file.path(), &bytes).unwrap();
    assert!(read_target(&c, &m).await.is_err(), "a longer file");
}

/// Re-sign timestamp.json (version bumped, so it would win if accepted) with the ed25519
/// key in `key` (PKCS#8 DER), under `keyid` — what an attacker holding that key can do.
fn forge_timestamp(repo: &Repo, key: &Path, keyid: &str) {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::Signer;
    use serde::Serialize;
    let path = repo.metadata_dir().join("timestamp.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let version = v["signed"]["version"].as_u64().unwrap();
    v["signed"]["version"] = (version + 100).into();
    let mut canonical = Vec::new();
    v["signed"]
        .serialize(&mut serde_json::Serializer::with_formatter(&mut canonical, olpc_cjson::CanonicalFormatter::new()))
        .unwrap();
    let sk = ed25519_dalek::SigningKey::from_pkcs8_der(&std::fs::read(key).unwrap()).unwrap();
    let sig = hex::encode(sk.sign(&canonical).to_bytes());
    v["signatures"] = serde_json::json!([{"keyid": keyid, "sig": sig}]);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn timestamp_keyid(root: &Path) -> String {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(root).unwrap()).unwrap();
    r["signed"]["roles"]["timestamp"]["keyids"][0].as_str().unwrap().to_string()
}

#[tokio::test]
async fn metadata_signed_by_a_wrong_or_revoked_key_is_rejected() {
    let w = world().await;
    let good = w.dir.join("good-metadata");
    snapshot_of(&w.repo, &good);
    let trusted_id = timestamp_keyid(&w.root);

    // Wrong key: the attacker signs with their own key, claiming the trusted key's id.
    let attacker = keyset(&w.dir.join("attacker")).await;
    forge_timestamp(&w.repo, &attacker.path(KeyName::Timestamp), &trusted_id);
    let e = rejected(&w, "timestamp signed by another key under the trusted key id").await;
    assert!(e.to_lowercase().contains("signature") || e.contains("threshold"), "{e}");
    // ... or under its own key id.
    restore(&w.repo, &good, &["timestamp.json"]);
    forge_timestamp(&w.repo, &attacker.path(KeyName::Timestamp), &timestamp_keyid(&attacker.dir.join("root.json")));
    let e = rejected(&w, "timestamp signed by an unknown key").await;
    assert!(e.to_lowercase().contains("signature") || e.contains("threshold"), "{e}");

    // Revoked key: rotate the timestamp key (root v2); the old key then signs.
    restore(&w.repo, &good, &["timestamp.json"]);
    let old_key = w.dir.join("old-timestamp.pk8");
    std::fs::copy(w.keys.path(KeyName::Timestamp), &old_key).unwrap();
    let v =
        edgeimg_release::rotate::rotate_online_key(&w.repo, &w.keys, KeyName::Timestamp, &Lifetimes::default(), now())
            .await
            .unwrap();
    assert_eq!(v, 2);
    client(&w.repo, &w.root, &w.store).await.expect("the client follows the root chain to v2");
    forge_timestamp(&w.repo, &old_key, &trusted_id);
    let e = rejected(&w, "timestamp signed by the revoked key").await;
    assert!(e.to_lowercase().contains("signature") || e.contains("threshold"), "{e}");
}

#[tokio::test]
async fn channel_naming_an_unsigned_release_leads_nowhere() {
    let w = world().await;
    // The server's rollout key is all an attacker needs to write a channel file.
    let mut ch: Channel = rollout::channel(&w.repo, "stable").await.unwrap().unwrap();
    ch.boards.get_mut("b").unwrap().version = "6.6.6".into();
    rollout::sign_channel_unchecked(&w.repo, &w.keys, &ch, &Lifetimes::default(), now()).await.unwrap();
    let c = client(&w.repo, &w.root, &w.store).await.unwrap();
    let seen: Channel = serde_json::from_slice(&read_target(&c, &channel_target("stable")).await.unwrap()).unwrap();
    assert_eq!(seen.boards["b"].version, "6.6.6", "the rollout key can say anything about who gets what");
    // ... but what a release is comes only from the offline-signed targets.
    let e = read_target(&c, &manifest_target("edge", "b", "6.6.6")).await.unwrap_err();
    assert!(e.contains("no target"), "{e}");
}
