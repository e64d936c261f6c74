//! Operations: the Prometheus metrics, and the refresh timer that keeps short-lived
//! metadata valid for strict clients.

use crate::common;

use std::time::Duration;

use common::*;
use edgeimg_proto::report::EventKind;
use edgeimg_release::Lifetimes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_describe_the_fleet() {
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 10_000, Lifetimes::default()).await;
    let mut c = change("stable");
    c.version = Some("1.0.0".into());
    c.percent = Some(25);
    rollout(&fx.repo, &fx.keys, c).await;
    let mut p = change("beta");
    p.version = Some("1.0.0".into());
    p.percent = Some(100);
    p.pause = Some(true);
    rollout(&fx.repo, &fx.keys, p).await;
    fx.start(fx.config()).await;

    let mut a = Device::new("m-1", "stable", "0.9.0");
    let mut b = Device::new("m-2", "stable", "0.9.0");
    a.enroll(&fx, Some(ENROLL_TOKEN)).await;
    b.enroll(&fx, Some(ENROLL_TOKEN)).await;
    Device::new("m-3", "stable", "0.9.0").enroll(&fx, None).await;
    a.report(&fx, Some((EventKind::Downloading, "1.0.0"))).await;
    a.version = "1.0.0".into();
    a.report(&fx, Some((EventKind::Committed, "1.0.0"))).await;
    b.state = "rolled-back".into();
    b.report(&fx, Some((EventKind::RolledBack, "1.0.0"))).await;
    let r = b.next_report(None);
    b.seq -= 1;
    let r_again = r.clone();
    assert_eq!(b.send(&fx, &r).await.0, 200);
    assert_eq!(b.send(&fx, &r_again).await.0, 409);

    let text = fx.get_text("/metrics").await;
    for line in [
        "# TYPE edgeimg_devices gauge",
        r#"edgeimg_devices{board="qemu-x86_64",version="1.0.0",state="idle",status="approved"} 1"#,
        r#"edgeimg_devices{board="qemu-x86_64",version="0.9.0",state="rolled-back",status="approved"} 1"#,
        r#"edgeimg_devices{board="qemu-x86_64",version="0.9.0",state="",status="pending"} 1"#,
        "edgeimg_reports_accepted_total 4",
        r#"edgeimg_reports_rejected_total{reason="replayed"} 1"#,
        r#"edgeimg_enrollments_total{result="approved"} 2"#,
        r#"edgeimg_enrollments_total{result="pending"} 1"#,
        r#"edgeimg_release_devices{channel="stable",board="qemu-x86_64",image="edge",version="1.0.0",outcome="tried"} 2"#,
        r#"edgeimg_release_devices{channel="stable",board="qemu-x86_64",image="edge",version="1.0.0",outcome="committed"} 1"#,
        r#"edgeimg_release_devices{channel="stable",board="qemu-x86_64",image="edge",version="1.0.0",outcome="rolled_back"} 1"#,
        r#"edgeimg_channel_percent{channel="stable",board="qemu-x86_64",image="edge",version="1.0.0"} 25"#,
        r#"edgeimg_channel_devices{channel="stable",board="qemu-x86_64",image="edge",version="1.0.0"} 2"#,
        r#"edgeimg_channel_percent{channel="beta",board="qemu-x86_64",image="edge",version="1.0.0"} 0"#,
        "edgeimg_online_keys 1",
        "edgeimg_repository_readable 1",
        "edgeimg_releases 1",
        r#"edgeimg_metadata_version{role="root"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    // The rolled-back report halted stable (default policy: more than 0 failures of at least
    // one device); beta was paused by hand.
    eventually(20, "stable halted", || async {
        fx.get_text("/metrics")
            .await
            .contains(r#"edgeimg_channel_paused{channel="stable",board="qemu-x86_64",image="edge",version="1.0.0"} 1"#)
    })
    .await;
    let text = fx.get_text("/metrics").await;
    assert!(
        text.contains(r#"edgeimg_channel_paused{channel="beta",board="qemu-x86_64",image="edge",version="1.0.0"} 1"#)
    );
    assert!(text.contains("edgeimg_auto_halts_total 1"));
    for role in ["root", "targets", "rollout", "snapshot", "timestamp"] {
        let prefix = format!("edgeimg_metadata_expires_in_seconds{{role=\"{role}\"}} ");
        let secs: i64 = text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().parse().unwrap();
        assert!(secs > 3600, "{role}: {secs}");
    }
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_short_lived_metadata_valid() {
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    let short = Lifetimes { timestamp: jiff::SignedDuration::from_secs(6), ..Lifetimes::default() };
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 10_000, short).await;
    let mut config = fx.config();
    config.refresh_interval = Duration::from_secs(1);
    config.lifetimes = short;
    fx.start(config).await;

    let store = fx.dir.path().join("store");
    let first = fx.tuf_client(&store).await.unwrap().timestamp().signed.version.get();
    // Three lifetimes of the first timestamp later, a strict client still loads, and it has
    // seen several re-signings (each at half the lifetime).
    tokio::time::sleep(Duration::from_secs(13)).await;
    let tuf = fx.tuf_client(&store).await.expect("refreshed metadata is valid");
    let now_v = tuf.timestamp().signed.version.get();
    assert!(now_v >= first + 3, "timestamp {first} → {now_v}");
    assert!(tuf.timestamp().signed.expires > now(), "not expired");
    assert_eq!(tuf.targets().signed.version.get(), 1, "the offline targets role is never touched");
    let refreshed = fx.metric("edgeimg_refresh_total{result=\"ok\"}").await.unwrap();
    assert!(refreshed >= 3.0, "{refreshed}");
    fx.stop().await;

    // Without the server the metadata expires, and a strict client refuses it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut config = fx.config();
    config.keys = None;
    fx.start(config).await;
    let Err(e) = fx.tuf_client(&store).await else { panic!("expired metadata is refused") };
    assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
    assert!(fx.metric("edgeimg_metadata_expires_in_seconds{role=\"timestamp\"}").await.unwrap() < 0.0);
    fx.stop().await;
}
