//! The device's TUF client against repositories written by edgeimg-release (tough).

use crate::common;

use common::*;
use edgeimg_proto::channel::{channel_target, Channel};
use edgeimg_proto::release::{manifest_target, ReleaseManifest};
use edgeimg_release::{Lifetimes, Repo};
use edgeimg_updater::tuf::{store::Store, Client, DirFetcher, Limits, TufError};

fn client(repo: &Repo, store: &std::path::Path, root: &std::path::Path) -> Client<DirFetcher> {
    let store = Store::open(store, root).unwrap();
    Client::new(DirFetcher { dir: repo.dir.clone() }, store, Limits::default(), Some(now().as_second())).unwrap()
}

#[tokio::test]
async fn reads_channel_through_the_delegation_and_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    publish_build(&repo, &keys, &fake_build(d.path(), "b", "1.0.0", 50_000, 1), 1).await;
    set_channel(&repo, &keys, "b", "1.0.0", 100, false).await;
    let mut c = client(&repo, &d.path().join("store"), &keys.dir.join("root.json"));
    c.refresh().await.unwrap();
    let ch = c.target(&channel_target("stable")).await.unwrap().expect("the channel is found through the rollout role");
    let ch: Channel = serde_json::from_slice(&c.fetch_target(&ch).await.unwrap()).unwrap();
    assert_eq!(ch.boards["b"].version, "1.0.0");
    let m = c.target(&manifest_target("edge", "b", "1.0.0")).await.unwrap().unwrap();
    let m: ReleaseManifest = serde_json::from_slice(&c.fetch_target(&m).await.unwrap()).unwrap();
    assert_eq!(m.artifacts.len(), 4);
    assert!(c.target("edge~b~9.9.9~release.json").await.unwrap().is_none());

    // A second refresh after a rollout and a refresh: versions move forward.
    let before = c.timestamp_version().unwrap();
    edgeimg_release::rollout::refresh(&repo, &keys, &Lifetimes::default(), now()).await.unwrap();
    c.refresh().await.unwrap();
    assert!(c.timestamp_version().unwrap() > before);
}

#[tokio::test]
async fn follows_root_rotation_and_rejects_the_revoked_key() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    publish_build(&repo, &keys, &fake_build(d.path(), "b", "1.0.0", 1000, 1), 1).await;
    let root_v1 = d.path().join("root-v1.json");
    std::fs::copy(keys.dir.join("root.json"), &root_v1).unwrap();
    let mut c = client(&repo, &d.path().join("store"), &root_v1);
    c.refresh().await.unwrap();
    edgeimg_release::rotate::rotate_online_key(
        &repo,
        &keys,
        edgeimg_release::KeyName::Timestamp,
        &Lifetimes::default(),
        now(),
    )
    .await
    .unwrap();
    c.refresh().await.unwrap();
    assert_eq!(c.root_version(), 2);
}

#[tokio::test]
async fn expired_metadata_and_unknown_time() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    publish_build(&repo, &keys, &fake_build(d.path(), "b", "1.0.0", 1000, 1), 1).await;
    let store = Store::open(&d.path().join("store"), &keys.dir.join("root.json")).unwrap();
    // No trustworthy clock: refuse rather than guess.
    let mut c = Client::new(DirFetcher { dir: repo.dir.clone() }, store.clone(), Limits::default(), None).unwrap();
    assert!(matches!(c.refresh().await, Err(TufError::TimeUnknown)));
    // A clock far in the future: everything has expired.
    let later = now().as_second() + 400 * 86_400;
    let mut c =
        Client::new(DirFetcher { dir: repo.dir.clone() }, store.clone(), Limits::default(), Some(later)).unwrap();
    assert!(matches!(c.refresh().await, Err(TufError::Expired { .. })), "expired");
    // The clock comes back: nothing was wedged by having seen the future.
    let mut c =
        Client::new(DirFetcher { dir: repo.dir.clone() }, store, Limits::default(), Some(now().as_second())).unwrap();
    c.refresh().await.unwrap();
}
