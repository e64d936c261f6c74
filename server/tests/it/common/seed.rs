//! A small demo fleet: releases and channels in a repository, then devices that enrol and
//! report (some commit, some are still downloading, two roll back and trip the canary's
//! auto-halt, one waits for approval, one re-enrolled with a new key). Used by the dashboard
//! test and by `examples/fleet-sim.rs` (tests/dashboard/screenshot.sh).

use std::path::Path;

use edgeimg_proto::channel::HaltPolicy;
use edgeimg_proto::report::{EventKind, HealthResult};
use edgeimg_release::rollout::Change;
use edgeimg_release::{KeyDir, Lifetimes, Repo};

use super::*;

async fn publish_demo(repo: &Repo, keys: &KeyDir, work: &Path, board: &str, version: &str) {
    publish_for(repo, keys, work, board, version, 20_000, Lifetimes::default()).await;
}

fn on(channel: &str, board: &str, version: &str, percent: u8) -> Change {
    Change {
        channel: channel.into(),
        board: board.into(),
        version: Some(version.into()),
        percent: Some(percent),
        ..Default::default()
    }
}

/// Releases 1.0.0-1.2.0 of `edge` for qemu-x86_64 and 1.1.0 for nuc; channels stable
/// (1.1.0; requiring attestation on nuc), canary (1.2.0 at 50%, halting after more than one failure of three devices),
/// beta (1.2.0, paused by hand).
pub async fn repo(repo: &Repo, keys: &KeyDir, work: &Path) {
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        publish_demo(repo, keys, work, BOARD, v).await;
    }
    publish_demo(repo, keys, work, "nuc", "1.1.0").await;
    rollout(repo, keys, on("stable", BOARD, "1.1.0", 100)).await;
    // NUCs have TPMs: their channel counts a device healthy only when it attested.
    let mut nuc = on("stable", "nuc", "1.1.0", 50);
    nuc.require_attestation = Some(true);
    rollout(repo, keys, nuc).await;
    let mut canary = on("canary", BOARD, "1.2.0", 50);
    canary.halt = Some(HaltPolicy { max_failures: 1, min_devices: 3 });
    rollout(repo, keys, canary).await;
    let mut beta = on("beta", BOARD, "1.2.0", 10);
    beta.pause = Some(true);
    beta.reason = Some("waiting for the change window (CHG-1234)".into());
    rollout(repo, keys, beta).await;
}

async fn install(ep: &impl Endpoint, d: &mut Device, version: &str, outcome: Option<EventKind>) {
    d.state = "downloading".into();
    d.report(ep, Some((EventKind::Downloading, version))).await;
    let Some(outcome) = outcome else { return };
    d.state = "trying".into();
    d.report(ep, Some((EventKind::Installed, version))).await;
    d.report(ep, Some((EventKind::Trying, version))).await;
    match outcome {
        EventKind::Committed => {
            d.version = version.into();
            d.state = "idle".into();
        }
        _ => {
            d.state = "rolled-back".into();
        }
    }
    let r = d.next_report(Some((outcome, version)));
    let mut r = r;
    if outcome == EventKind::RolledBack {
        r.health = vec![
            HealthResult { check: "k3s-node-ready".into(), ok: false, detail: "node NotReady after 300 s".into() },
            HealthResult { check: "units".into(), ok: true, detail: String::new() },
        ];
        r.last_error = Some(format!("{version} failed its health checks: k3s-node-ready: node NotReady after 300 s"));
    }
    let (s, body) = d.send(ep, &r).await;
    assert_eq!(s, 200, "{body}");
}

/// The devices. Returns how many enrolled.
pub async fn devices(ep: &impl Endpoint) -> usize {
    let mut n = 0;
    let healthy = |d: &mut Device| d.state = "idle".into();
    // stable on qemu-x86_64: all on 1.1.0.
    for i in 1..=8 {
        let mut d = Device::new(&format!("edge-qemu-{i:02}"), "stable", "1.0.0");
        assert!(matches!(d.enroll(ep, Some(ENROLL_TOKEN)).await.0, 200 | 201));
        install(ep, &mut d, "1.1.0", Some(EventKind::Committed)).await;
        healthy(&mut d);
        n += 1;
    }
    // stable on nuc: half the way.
    for (i, step) in [Some(EventKind::Committed), Some(EventKind::Committed), None, Some(EventKind::Committed)]
        .into_iter()
        .enumerate()
    {
        let mut d = Device::new(&format!("nuc-{:02}", i + 1), "stable", "1.0.0");
        d.board = "nuc".into();
        assert!(matches!(d.enroll(ep, Some(ENROLL_TOKEN)).await.0, 200 | 201));
        if i == 3 {
            d.report(ep, None).await; // not in the 50% yet
        } else {
            install(ep, &mut d, "1.1.0", step).await;
        }
        n += 1;
    }
    // canary: one commits 1.2.0, two roll back (auto-halt), one has not started.
    for (i, outcome) in [Some(EventKind::Committed), Some(EventKind::RolledBack), Some(EventKind::RolledBack), None]
        .into_iter()
        .enumerate()
    {
        let mut d = Device::new(&format!("canary-{:02}", i + 1), "canary", "1.1.0");
        assert!(matches!(d.enroll(ep, Some(ENROLL_TOKEN)).await.0, 200 | 201));
        match outcome {
            Some(o) => install(ep, &mut d, "1.2.0", Some(o)).await,
            None => d.report(ep, None).await,
        }
        n += 1;
    }
    // A device with a full disk (its error text has markup characters: shown escaped).
    let mut d = Device::new("edge-qemu-09", "stable", "1.1.0");
    assert!(matches!(d.enroll(ep, Some(ENROLL_TOKEN)).await.0, 200 | 201));
    let mut r = d.next_report(None);
    r.last_error = Some("write /data/var: no space left on device <disk \"data\" at 100% & rising>".into());
    r.health = vec![HealthResult { check: "data-space".into(), ok: false, detail: "100% used".into() }];
    assert_eq!(d.send(ep, &r).await.0, 200);
    n += 1;
    // Waiting for approval, and a known device that came back with a new key.
    let lab = Device::new("lab-bench-7", "beta", "1.1.0");
    assert!(matches!(lab.enroll(ep, None).await.0, 200 | 202));
    n += 1;
    let reflashed = Device::with_key("edge-qemu-03", "stable", "1.1.0", "reflashed");
    assert_eq!(reflashed.enroll(ep, Some(ENROLL_TOKEN)).await.0, 409);
    n
}
