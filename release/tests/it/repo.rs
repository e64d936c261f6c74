//! Publishing, rollout and refresh, read back by a strict TUF client (tough).

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use edgeimg_proto::channel::{channel_target, Channel};
use edgeimg_proto::release::{manifest_target, ReleaseManifest};
use edgeimg_release::publish::publish;
use edgeimg_release::rollout::{self, Change};
use edgeimg_release::{Error, Lifetimes, Repo};

fn change(version: Option<&str>, percent: Option<u8>) -> Change {
    Change {
        channel: "stable".into(),
        board: "qemu-x86_64".into(),
        version: version.map(String::from),
        percent,
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_rollout_refresh_read_by_a_client() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    let b1 = fake_build(d.path(), "qemu-x86_64", "edge", "1.0.0");
    // As dracut and veritysetup leave them: readable by their owner only.
    for name in ["initrd", "root.verity"] {
        std::fs::set_permissions(b1.join("payload").join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let p = publish(&repo, &keys, &publish_opts(&b1)).await.unwrap();
    assert!(p.created);
    // A web server running as another user can serve every target.
    for e in std::fs::read_dir(repo.targets_dir()).unwrap() {
        let mode = e.as_ref().unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "{:?} is {mode:o}", e.unwrap().file_name());
    }
    assert_eq!(p.manifest_target, manifest_target("edge", "qemu-x86_64", "1.0.0"));

    // A client trusting only root.json reads the manifest and every artifact.
    let store = d.path().join("client-store");
    let c = client(&repo, &keys.dir.join("root.json"), &store).await.unwrap();
    let m: ReleaseManifest = serde_json::from_slice(&read_target(&c, &p.manifest_target).await.unwrap()).unwrap();
    assert_eq!(m.version, "1.0.0");
    for a in &m.artifacts {
        let bytes = read_target(&c, &a.target).await.unwrap();
        assert_eq!(bytes, std::fs::read(b1.join("payload").join(&a.name)).unwrap(), "{}", a.target);
    }

    // Releases are immutable.
    let again = publish(&repo, &keys, &publish_opts(&b1)).await.unwrap_err();
    assert!(matches!(again, Error::Refused(ref m) if m.contains("already published")), "{again}");

    // A channel can only name published releases.
    let e =
        rollout::apply(&repo, &keys, &change(Some("9.9.9"), Some(10)), &Lifetimes::default(), now()).await.unwrap_err();
    assert!(e.to_string().contains("never published"), "{e}");
    let ch =
        rollout::apply(&repo, &keys, &change(Some("1.0.0"), Some(10)), &Lifetimes::default(), now()).await.unwrap();
    assert_eq!(ch.boards["qemu-x86_64"].percent, 10);

    let c = client(&repo, &keys.dir.join("root.json"), &store).await.unwrap();
    let seen: Channel = serde_json::from_slice(&read_target(&c, &channel_target("stable")).await.unwrap()).unwrap();
    assert_eq!(seen, ch);
    // The client's view decides eligibility exactly as the bucket says.
    let r = &seen.boards["qemu-x86_64"];
    let eligible: Vec<_> = (0..1000).map(|i| format!("dev-{i}")).filter(|d| r.eligible(d, 0)).collect();
    assert!((60..=140).contains(&eligible.len()), "{}", eligible.len());
    for dev in &eligible {
        assert!(edgeimg_proto::channel::bucket(dev, "edge", "1.0.0") < 1000);
    }

    // Pause, resume, a newer release, an explicit rollback.
    let mut pause = change(None, None);
    pause.pause = Some(true);
    let ch = rollout::apply(&repo, &keys, &pause, &Lifetimes::default(), now()).await.unwrap();
    assert!(ch.boards["qemu-x86_64"].paused);
    assert!(!ch.boards["qemu-x86_64"].eligible("dev-1", 0));
    let b2 = fake_build(d.path(), "qemu-x86_64", "edge", "1.1.0");
    publish(&repo, &keys, &publish_opts(&b2)).await.unwrap();
    let ch =
        rollout::apply(&repo, &keys, &change(Some("1.1.0"), Some(100)), &Lifetimes::default(), now()).await.unwrap();
    assert!(!ch.boards["qemu-x86_64"].paused, "a new release starts unpaused");
    let back = rollout::apply(&repo, &keys, &change(Some("1.0.0"), Some(100)), &Lifetimes::default(), now())
        .await
        .unwrap_err();
    assert!(back.to_string().contains("--rollback"), "{back}");
    let mut rb = change(Some("1.0.0"), Some(100));
    rb.rollback = true;
    let ch = rollout::apply(&repo, &keys, &rb, &Lifetimes::default(), now()).await.unwrap();
    assert!(ch.boards["qemu-x86_64"].rollback);

    // Refresh: new timestamp, same targets; the client still reads everything.
    let before = client(&repo, &keys.dir.join("root.json"), &store).await.unwrap();
    let (tv, tsv) = (before.targets().signed.version, before.timestamp().signed.version);
    rollout::refresh(&repo, &keys, &Lifetimes::default(), now()).await.unwrap();
    let after = client(&repo, &keys.dir.join("root.json"), &store).await.unwrap();
    assert_eq!(after.targets().signed.version, tv, "refresh never touches the offline targets role");
    assert!(after.timestamp().signed.version > tsv);
}

#[tokio::test]
async fn online_keys_cannot_publish_and_offline_signatures_survive_rollouts() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    publish(&repo, &keys, &publish_opts(&fake_build(d.path(), "b", "edge", "1.0.0"))).await.unwrap();
    let targets_before = std::fs::read(repo.metadata_dir().join("1.targets.json")).unwrap();

    // The server holds only the online keys.
    let online = d.path().join("online");
    std::fs::create_dir_all(&online).unwrap();
    for f in ["rollout.pk8", "snapshot.pk8", "timestamp.pk8", "root.json"] {
        std::fs::copy(keys.dir.join(f), online.join(f)).unwrap();
    }
    let online = edgeimg_release::KeyDir::new(&online);
    let mut c = change(Some("1.0.0"), Some(50));
    c.board = "b".into();
    rollout::apply(&repo, &online, &c, &Lifetimes::default(), now()).await.unwrap();
    rollout::refresh(&repo, &online, &Lifetimes::default(), now()).await.unwrap();
    // tough re-serializes it (its map order varies), so compare content and signatures.
    let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let after = parse(&std::fs::read(repo.metadata_dir().join("1.targets.json")).unwrap());
    let before = parse(&targets_before);
    assert_eq!(after["signed"], before["signed"]);
    assert_eq!(after["signatures"], before["signatures"], "the offline signature is carried over untouched");

    let e = publish(&repo, &online, &publish_opts(&fake_build(d.path(), "b", "edge", "2.0.0"))).await.unwrap_err();
    assert!(e.to_string().contains("targets.pk8"), "{e}");
}
