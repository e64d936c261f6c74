//! The end-to-end scenario on 127.0.0.1: two releases, rolled out to 10% then 100%;
//! every device runs a strict TUF client (tough) against `edgeimg serve` and installs
//! exactly when its bucket allows; a pause stops new installs; failure reports make the
//! server pause the channel by itself, which the devices see through TUF.

use crate::common;

use std::collections::BTreeSet;

use common::*;
use edgeimg_proto::channel::{bucket, HaltPolicy};
use edgeimg_proto::release::{manifest_target, ReleaseManifest};
use edgeimg_proto::report::EventKind;
use edgeimg_release::Lifetimes;

const N: usize = 60;

/// What a device's updater does in one poll: refresh TUF metadata from the server, read
/// its channel, and if the rollout allows it (and it is not on that release yet) download
/// the release (manifest and root image, verified by TUF) and report the install through
/// to commit. Returns whether it installed.
async fn poll(fx: &Fixture, d: &mut Device, store: &std::path::Path, fail: bool) -> bool {
    let tuf = fx.tuf_client(store).await.expect("the device's TUF client loads the repository");
    let ch = read_channel(&tuf, "stable").await;
    let entry = &ch.boards[BOARD];
    if entry.version == d.version || !entry.eligible(&d.id, now().as_second()) {
        d.report(fx, None).await;
        return false;
    }
    let v = entry.version.clone();
    let manifest: ReleaseManifest =
        serde_json::from_slice(&read_target(&tuf, &manifest_target(IMAGE, BOARD, &v)).await.unwrap()).unwrap();
    let root = manifest.artifact_named("root.img").unwrap();
    let bytes = read_target(&tuf, &root.target).await.unwrap();
    assert_eq!(bytes.len() as u64, root.size);
    d.report(fx, Some((EventKind::Downloading, &v))).await;
    d.report(fx, Some((EventKind::Installed, &v))).await;
    d.report(fx, Some((EventKind::Trying, &v))).await;
    if fail {
        d.state = "rolled-back".into();
        d.report(fx, Some((EventKind::RolledBack, &v))).await;
    } else {
        d.version = v.clone();
        d.state = "idle".into();
        d.report(fx, Some((EventKind::Committed, &v))).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_pause_and_auto_halt_seen_by_tuf_clients() {
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 200_000, Lifetimes::default()).await;
    let mut c = change("stable");
    c.version = Some("1.0.0".into());
    c.percent = Some(100);
    rollout(&fx.repo, &fx.keys, c).await;
    publish_version(&fx.repo, &fx.keys, &work, "1.1.0", 200_000, Lifetimes::default()).await;
    fx.start(fx.config()).await;

    // The fleet: N devices on 1.0.0 enrol with the fleet token and report in.
    let mut devices: Vec<Device> = (0..N).map(|i| Device::new(&format!("node-{i:03}"), "stable", "1.0.0")).collect();
    for d in devices.iter_mut() {
        let (s, body) = d.enroll(&fx, Some(ENROLL_TOKEN)).await;
        assert_eq!(s, 201, "{body}");
        d.report(&fx, None).await;
    }
    let stores: Vec<_> = (0..N).map(|i| fx.dir.path().join(format!("device-store-{i}"))).collect();

    // 1.1.0 to 10%: exactly the devices whose bucket is below 1000 install it.
    let mut c = change("stable");
    c.version = Some("1.1.0".into());
    c.percent = Some(10);
    rollout(&fx.repo, &fx.keys, c).await;
    let expected: BTreeSet<String> =
        devices.iter().filter(|d| bucket(&d.id, IMAGE, "1.1.0") < 1000).map(|d| d.id.clone()).collect();
    assert!(!expected.is_empty() && expected.len() < N / 3, "{} of {N} in the first 10%", expected.len());
    let mut installed = BTreeSet::new();
    for (d, store) in devices.iter_mut().zip(&stores) {
        if poll(&fx, d, store, false).await {
            installed.insert(d.id.clone());
        }
    }
    assert_eq!(installed, expected, "10%: the installs are exactly the bucket's");

    // The server counts the same devices as eligible, and the release's outcomes.
    eventually(20, "the server sees 1.1.0 at 10%", || async {
        let (_, ch) = fx.get_json("/api/v1/channels").await;
        ch["channels"][0]["boards"][0]["rollout"]["percent"] == 10
    })
    .await;
    let (_, ch) = fx.get_json("/api/v1/channels").await;
    let b = &ch["channels"][0]["boards"][0];
    assert_eq!(b["devices"], N, "{b}");
    assert_eq!(b["eligible"], expected.len(), "{b}");
    assert_eq!(b["on_release"], expected.len(), "{b}");
    assert_eq!(b["stats"]["committed"], expected.len(), "{b}");

    // Then 100%: everybody else installs it.
    let mut c = change("stable");
    c.percent = Some(100);
    rollout(&fx.repo, &fx.keys, c).await;
    for (d, store) in devices.iter_mut().zip(&stores) {
        let was = installed.contains(&d.id);
        assert_eq!(poll(&fx, d, store, false).await, !was, "100%: {} installs iff it had not yet", d.id);
    }
    assert!(devices.iter().all(|d| d.version == "1.1.0"));

    // A third release at 10% with a pause right away: nobody starts installing.
    publish_version(&fx.repo, &fx.keys, &work, "1.2.0", 200_000, Lifetimes::default()).await;
    let mut c = change("stable");
    c.version = Some("1.2.0".into());
    c.percent = Some(100);
    c.halt = Some(HaltPolicy { max_failures: 2, min_devices: 4 });
    rollout(&fx.repo, &fx.keys, c).await;
    let mut p = change("stable");
    p.pause = Some(true);
    p.reason = Some("waiting for the change window".into());
    rollout(&fx.repo, &fx.keys, p).await;
    for (d, store) in devices.iter_mut().zip(&stores).take(20) {
        assert!(!poll(&fx, d, store, false).await, "{} installed from a paused channel", d.id);
    }

    // Resumed: devices install; 2 fail (not enough to halt: more than 2 of at least 4),
    // then a third failure halts the channel.
    let mut r = change("stable");
    r.pause = Some(false);
    rollout(&fx.repo, &fx.keys, r).await;
    let mut it = devices.iter_mut().zip(&stores);
    for fail in [false, true, false, true] {
        let (d, store) = it.next().unwrap();
        assert!(poll(&fx, d, store, fail).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let tuf = fx.tough_http_client(&fx.dir.path().join("observer")).await.unwrap();
    assert!(!read_channel(&tuf, "stable").await.boards[BOARD].paused, "2 of 4 failures is within the policy");
    let (d, store) = it.next().unwrap();
    assert!(poll(&fx, d, store, true).await);

    eventually(30, "auto-halt pauses the channel", || async {
        let tuf = fx.tough_http_client(&fx.dir.path().join("observer")).await.unwrap();
        read_channel(&tuf, "stable").await.boards[BOARD].paused
    })
    .await;
    let tuf = fx.tough_http_client(&fx.dir.path().join("observer")).await.unwrap();
    let entry = read_channel(&tuf, "stable").await.boards[BOARD].clone();
    assert_eq!(entry.pause_reason.as_deref(), Some("auto-halt: 3 of 5 devices failed 1.2.0"));
    assert_eq!(entry.version, "1.2.0");
    // The devices that have not installed it yet do not start now.
    for (d, store) in it.take(10) {
        assert!(!poll(&fx, d, store, false).await, "{} installed after the auto-halt", d.id);
    }
    // Recorded: metric, API, dashboard.
    assert_eq!(fx.metric("edgeimg_auto_halts_total").await, Some(1.0));
    eventually(20, "the API shows the pause", || async {
        let (_, ch) = fx.get_json("/api/v1/channels").await;
        ch["channels"][0]["boards"][0]["rollout"]["paused"] == true
    })
    .await;
    let (_, rel) = fx.get_json("/api/v1/releases").await;
    let r120 = rel["releases"].as_array().unwrap().iter().find(|r| r["version"] == "1.2.0").unwrap().clone();
    assert_eq!(r120["channels"][0]["tried"], 5, "{r120}");
    assert_eq!(r120["channels"][0]["rolled_back"], 3, "{r120}");
    assert_eq!(r120["channels"][0]["committed"], 2, "{r120}");
    let page = fx.get_text("/").await;
    assert!(page.contains("auto-halt: 3 of 5 devices failed 1.2.0"));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_failures_are_recorded_but_nothing_is_paused() {
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 10_000, Lifetimes::default()).await;
    let mut c = change("stable");
    c.version = Some("1.0.0".into());
    c.percent = Some(100);
    rollout(&fx.repo, &fx.keys, c).await;
    let mut config = fx.config();
    config.keys = None;
    fx.start(config).await;

    let mut d = Device::new("lonely-1", "stable", "0.9.0");
    assert_eq!(d.enroll(&fx, Some(ENROLL_TOKEN)).await.0, 201);
    d.report(&fx, Some((EventKind::Failed, "1.0.0"))).await;
    eventually(20, "the would-be halt is recorded", || async { fx.get_text("/").await.contains("no-keys") }).await;
    let tuf = fx.tough_http_client(&fx.dir.path().join("observer")).await.unwrap();
    assert!(!read_channel(&tuf, "stable").await.boards[BOARD].paused);
    assert_eq!(fx.metric("edgeimg_online_keys").await, Some(0.0));
    assert_eq!(fx.metric("edgeimg_auto_halts_total").await, Some(0.0));
    assert!(fx.get_text("/").await.contains("auto-halt and metadata refresh are off"));
    fx.stop().await;
}
