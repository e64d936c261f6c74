//! A link that drops the connection every 512 KiB: the update still completes, resuming
//! with HTTP Range, and almost nothing is downloaded twice.

use crate::common;

use std::sync::atomic::Ordering;

use common::device::Device;
use common::*;
use edgeimg_release::Repo;

const BOARD: &str = "qemu-x86_64";

#[tokio::test(flavor = "multi_thread")]
async fn resumes_after_every_drop() {
    let d = tempfile::tempdir().unwrap();
    let keys = keyset(&d.path().join("keys")).await;
    let repo = Repo::new(d.path().join("repo"));
    publish_build(&repo, &keys, &fake_build(d.path(), BOARD, "1.0.0", 10_000, 1), 1).await;
    let b2 = fake_build(d.path(), BOARD, "2.0.0", 3_900_000, 1);
    publish_build(&repo, &keys, &b2, 1).await;
    set_channel(&repo, &keys, BOARD, "2.0.0", 100, false).await;
    let server = server::start(repo.dir.clone());
    let dev = Device::new(d.path(), &server.url(), &keys.dir.join("root.json"), BOARD, "1.0.0", &[&["true"]]);
    dev.ok(&["check"]);
    let payload: u64 = ["root.img", "root.verity", "linux", "initrd"]
        .iter()
        .map(|n| std::fs::metadata(b2.join("payload").join(n)).unwrap().len())
        .sum();
    server.faults.sent.store(0, Ordering::SeqCst);
    server.faults.requests.store(0, Ordering::SeqCst);
    server.faults.cut_every.store(512 * 1024, Ordering::SeqCst);
    dev.ok(&["run", "--once"]);
    let sent = server.faults.sent.load(Ordering::SeqCst);
    let requests = server.faults.requests.load(Ordering::SeqCst);
    assert_eq!(dev.state()["state"]["state"], "staged");
    let want = std::fs::read(b2.join("payload/root.img")).unwrap();
    assert_eq!(&std::fs::read(dev.root.join("slots/root-b")).unwrap()[..want.len()], &want[..]);
    // Metadata is small; count everything the server sent against the payload.
    let twice = sent.saturating_sub(payload);
    let pct = twice as f64 * 100.0 / payload as f64;
    eprintln!("payload {payload} bytes, sent {sent} bytes in {requests} requests: {twice} extra ({pct:.2}%)");
    assert!(requests > 8, "the link really dropped ({requests} requests)");
    assert!(pct <= 5.0, "{pct:.2}% downloaded twice");
}
