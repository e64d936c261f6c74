//! Full update cycles on a device tree: slots are sparse files, the loader is systemd-boot's
//! on-disk entries, the repository is served over HTTP on 127.0.0.1.

use crate::common;

use common::device::Device;
use common::*;

const BOARD: &str = "qemu-x86_64";

type Env = Fleet;

async fn env() -> Env {
    fleet(BOARD, 600_000).await
}

fn device(e: &Env, health: &str) -> Device {
    e.device(BOARD, health)
}

#[tokio::test(flavor = "multi_thread")]
async fn full_update_commit() {
    let e = env().await;
    let dev = device(&e, "true");
    assert!(dev.ok(&["run", "--once"]).contains("up to date"), "1.0.0 runs already");

    let b2 = fake_build(&e.dir, BOARD, "2.0.0", 3_000_000, 2);
    publish_build(&e.repo, &e.keys, &b2, 2).await;
    set_channel(&e.repo, &e.keys, BOARD, "2.0.0", 100, false).await;
    let out = dev.ok(&["run", "--once"]);
    assert!(out.contains("staged"), "{out}");
    assert_eq!(dev.state()["state"]["state"], "staged");
    // Slot B holds the release bit for bit; slot A was never touched.
    let want = std::fs::read(b2.join("payload/root.img")).unwrap();
    assert_eq!(&std::fs::read(dev.root.join("slots/root-b")).unwrap()[..want.len()], &want[..]);
    assert!(dev.slot_a_untouched());
    assert_eq!(dev.entries(), vec!["slot-a.conf", "slot-b+1.conf"]);
    assert_eq!(
        std::fs::read(dev.root.join("efi/edgeimg/slot-b/linux")).unwrap(),
        std::fs::read(b2.join("payload/linux")).unwrap()
    );

    // Reboot: the loader tries B once; health passes; committed.
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::B);
    assert!(dev.status()["trial"].as_bool().unwrap());
    dev.ok(&["health"]);
    let st = dev.status();
    assert_eq!(st["trial"], false);
    assert_eq!(st["state"]["state"], "idle");
    assert_eq!(st["running"]["version"], "2.0.0");
    assert_eq!(st["security_floor"], 2);
    assert_eq!(dev.entries(), vec!["slot-a.conf", "slot-b.conf"]);
    // It stays on B.
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::B);
    assert!(dev.ok(&["run", "--once"]).contains("up to date"));
    let hist = dev.ok(&["history"]);
    for s in ["downloading", "verified", "staged", "committed"] {
        assert!(hist.contains(s), "history lacks {s}: {hist}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_health_rolls_back_and_is_never_retried() {
    let e = env().await;
    let dev = device(&e, "false");
    publish_build(&e.repo, &e.keys, &fake_build(&e.dir, BOARD, "2.0.0", 1_000_000, 1), 1).await;
    set_channel(&e.repo, &e.keys, BOARD, "2.0.0", 100, false).await;
    dev.ok(&["run", "--once"]);
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::B);
    let o = dev.run(&["health"], &[]);
    assert!(!o.status.success(), "failing health exits non-zero so the unit reboots");
    assert_eq!(dev.state()["state"]["state"], "rolled-back");
    // The unit's FailureAction reboots: the entry has no tries left, A boots.
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::A);
    let out = dev.ok(&["run", "--once"]);
    assert!(out.contains("failed on this device before"), "2.0.0 is never tried again: {out}");
    let st = dev.status();
    assert_eq!(st["running"]["version"], "1.0.0");
    assert_eq!(st["failed"][0]["version"], "2.0.0");
    assert!(dev.slot_a_untouched());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_that_never_boots_is_detected_after_the_fallback() {
    let e = env().await;
    let dev = device(&e, "true");
    publish_build(&e.repo, &e.keys, &fake_build(&e.dir, BOARD, "2.0.0", 1_000_000, 1), 1).await;
    set_channel(&e.repo, &e.keys, BOARD, "2.0.0", 100, false).await;
    dev.ok(&["run", "--once"]);
    // B panics at boot (the loader counted its try down), then A boots.
    edgeimg_updater::boot::systemd_boot::simulate_boot(&dev.root.join("efi"));
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::A);
    let out = dev.ok(&["run", "--once"]);
    assert!(out.contains("did not boot") || dev.status()["failed"][0]["version"] == "2.0.0", "{out}");
    assert_eq!(dev.status()["failed"][0]["version"], "2.0.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn security_floor_and_older_releases() {
    let e = env().await;
    let dev = device(&e, "true");
    publish_build(&e.repo, &e.keys, &fake_build(&e.dir, BOARD, "3.0.0", 1_000_000, 5), 5).await;
    set_channel(&e.repo, &e.keys, BOARD, "3.0.0", 100, false).await;
    dev.ok(&["run", "--once"]);
    dev.power_on(BOARD);
    dev.ok(&["health"]);
    assert_eq!(dev.status()["security_floor"], 5);
    // An older release without rollback: ignored.
    set_channel(&e.repo, &e.keys, BOARD, "1.0.0", 100, true).await;
    let out = dev.run(&["run", "--once"], &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("below this device's floor 5"), "{text}");
    assert_eq!(dev.status()["running"]["version"], "3.0.0");
    assert_eq!(dev.entries(), vec!["slot-a.conf", "slot-b.conf"], "nothing was staged");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_updates_alternate_slots() {
    let e = env().await;
    let dev = device(&e, "true");
    for (version, slot) in [("2.0.0", edgeimg_proto::Slot::B), ("3.0.0", edgeimg_proto::Slot::A)] {
        publish_build(&e.repo, &e.keys, &fake_build(&e.dir, BOARD, version, 500_000, 1), 1).await;
        set_channel(&e.repo, &e.keys, BOARD, version, 100, false).await;
        dev.ok(&["run", "--once"]);
        assert_eq!(dev.power_on(BOARD), slot, "{version}");
        dev.ok(&["health"]);
        assert_eq!(dev.status()["running"]["version"], version);
    }
    // 3.0.0 replaced 1.0.0 in A; 2.0.0 stays in B as the fallback.
    assert_eq!(dev.entries(), vec!["slot-a.conf", "slot-b.conf"]);
    let st = dev.status();
    assert_eq!(st["installed"]["a"]["version"], "3.0.0");
    assert_eq!(st["installed"]["b"]["version"], "2.0.0");
    // The operator goes back to 2.0.0 by hand.
    dev.ok(&["rollback", "--no-reboot"]);
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::B);
}

/// A Secure Boot release carries one signed UKI per slot: an install downloads only the
/// target slot's, boots it through an `efi` entry, and commits as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_secure_boot_release_downloads_only_the_target_slots_uki() {
    let e = env().await;
    let dev = device(&e, "true");
    dev.ok(&["run", "--once"]);
    const UKI: u64 = 1_000_000;
    let b = fake_build_uki(&e.dir, BOARD, "2.0.0", 300_000, UKI as usize);
    publish_build(&e.repo, &e.keys, &b, 1).await;
    set_channel(&e.repo, &e.keys, BOARD, "2.0.0", 100, false).await;
    let before = e.server.faults.sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(dev.ok(&["run", "--once"]).contains("staged"));
    let sent = e.server.faults.sent.load(std::sync::atomic::Ordering::SeqCst) - before;
    let needed = 300_000 + 8192 + UKI;
    assert!(sent >= needed && sent < needed + UKI / 2, "sent {sent} bytes; slot B needs {needed}, not slot A's UKI");
    let entry = std::fs::read_to_string(dev.root.join("efi/loader/entries/slot-b+1.conf")).unwrap();
    assert!(entry.contains("efi        /edgeimg/slot-b/uki.efi\n") && !entry.contains("options"), "{entry}");
    assert_eq!(std::fs::metadata(dev.root.join("efi/edgeimg/slot-b/uki.efi")).unwrap().len(), UKI);
    assert!(!dev.root.join("efi/edgeimg/slot-a/uki.efi").exists());
    assert_eq!(dev.power_on(BOARD), edgeimg_proto::Slot::B);
    dev.ok(&["health"]);
    assert_eq!(dev.status()["running"]["version"], "2.0.0");
}
