//! Attacks on the update path (a hostile or broken server/mirror). Each must be refused
//! with the running slot untouched and nothing staged.

use crate::common;

use std::sync::atomic::Ordering;

use common::device::Device;
use common::*;
use edgeimg_release::{Lifetimes, Repo};

const BOARD: &str = "qemu-x86_64";

struct World {
    _d: tempfile::TempDir,
    dir: std::path::PathBuf,
    keys: edgeimg_release::KeyDir,
    repo: Repo,
    server: server::Server,
    dev: Device,
}

async fn world() -> World {
    let Fleet { _d: d, dir, keys, repo, server } = fleet(BOARD, 100_000).await;
    let dev = Device::new(&dir, &server.url(), &keys.dir.join("root.json"), BOARD, "1.0.0", &[&["true"]]);
    dev.ok(&["run", "--once"]);
    World { _d: d, dir, keys, repo, server, dev }
}

impl World {
    async fn offer(&self, version: &str, security: u64) -> std::path::PathBuf {
        let b = fake_build(&self.dir, BOARD, version, 1_500_000, security);
        publish_build(&self.repo, &self.keys, &b, security).await;
        set_channel(&self.repo, &self.keys, BOARD, version, 100, false).await;
        b
    }

    /// Run one pass; it must not stage anything. Returns what the updater said.
    fn refused(&self, what: &str) -> String {
        let o = self.dev.run(&["run", "--once"], &[]);
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert_ne!(self.dev.state()["state"]["state"], "staged", "{what}: something was staged:\n{text}");
        assert!(self.dev.slot_a_untouched(), "{what}: the running slot was written");
        assert_eq!(self.dev.entries(), vec!["slot-a.conf"], "{what}: a boot entry appeared");
        text
    }

    fn target_file(&self, suffix: &str) -> std::path::PathBuf {
        std::fs::read_dir(self.repo.targets_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_stale_timestamp() {
    let w = world().await;
    w.offer("2.0.0", 1).await;
    // The server keeps serving metadata that expired.
    edgeimg_release::rollout::refresh(
        &w.repo,
        &w.keys,
        &Lifetimes::default(),
        now() - jiff::SignedDuration::from_hours(72),
    )
    .await
    .unwrap();
    let t = w.refused("freeze");
    assert!(t.contains("expired"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_of_metadata() {
    let w = world().await;
    let old = std::fs::read(w.repo.metadata_dir().join("timestamp.json")).unwrap();
    w.offer("2.0.0", 1).await;
    w.dev.ok(&["check"]);
    std::fs::write(w.repo.metadata_dir().join("timestamp.json"), old).unwrap();
    let t = w.refused("rollback");
    assert!(t.contains("rollback"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mix_and_match() {
    let w = world().await;
    w.offer("2.0.0", 1).await;
    let ts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.repo.metadata_dir().join("timestamp.json")).unwrap()).unwrap();
    let n = ts["signed"]["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    std::fs::copy(
        w.repo.metadata_dir().join(format!("{}.snapshot.json", n - 1)),
        w.repo.metadata_dir().join(format!("{n}.snapshot.json")),
    )
    .unwrap();
    let t = w.refused("mix-and-match");
    assert!(t.contains("hash") || t.contains("length") || t.contains("version"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_data() {
    let w = world().await;
    w.offer("2.0.0", 1).await;
    w.server.faults.endless.lock().unwrap().push("~root.img".into());
    let t = w.refused("endless data");
    assert!(t.contains("endless data"), "{t}");
    assert!(w.server.faults.sent.load(Ordering::SeqCst) < 64 << 20, "stopped early");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_target_hash() {
    let w = world().await;
    w.offer("2.0.0", 1).await;
    let f = w.target_file("~2.0.0~root.img");
    let mut b = std::fs::read(&f).unwrap();
    b[1000] ^= 0xff;
    std::fs::write(&f, b).unwrap();
    let t = w.refused("wrong hash");
    assert!(t.contains("does not match the signed"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_payload() {
    let w = world().await;
    w.offer("2.0.0", 1).await;
    let f = w.target_file("~2.0.0~root.img");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    let t = w.refused("truncated");
    assert!(t.contains("connection lost") || t.contains("HTTP 416"), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_board_and_lower_version_and_floor() {
    let w = world().await;
    // A release for another board cannot be reached through this board's names.
    let other = fake_build(&w.dir, "rpi4", "9.0.0", 10_000, 1);
    publish_build(&w.repo, &w.keys, &other, 1).await;
    let o = w.dev.run(&["install", &w.server.url(), "--release", "9.0.0"], &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not listed"), "{}", String::from_utf8_lossy(&o.stderr));
    // A lower version without an explicit rollback on the channel.
    publish_build(&w.repo, &w.keys, &fake_build(&w.dir, BOARD, "0.9.0", 10_000, 1), 1).await;
    set_channel(&w.repo, &w.keys, BOARD, "0.9.0", 100, true).await;
    let mut ch = edgeimg_release::rollout::channel(&w.repo, "stable").await.unwrap().unwrap();
    ch.boards.get_mut(BOARD).unwrap().rollback = false;
    edgeimg_release::rollout::sign_channel_unchecked(&w.repo, &w.keys, &ch, &Lifetimes::default(), now())
        .await
        .unwrap();
    let t = w.refused("lower version");
    assert!(t.contains("older than what runs"), "{t}");
    // Below the security floor, even with rollback allowed.
    let mut p: serde_json::Value = w.dev.state();
    p["security_floor"] = 7.into();
    std::fs::write(w.dev.root.join("data/edgeimg/updater/state.json"), serde_json::to_vec(&p).unwrap()).unwrap();
    w.offer("5.0.0", 3).await;
    let t = w.refused("below floor");
    assert!(t.contains("below this device's floor 7"), "{t}");
}
