//! python-tuf (an independent TUF 1.0 client) reads the repository from the server: the
//! release manifest, a release artifact, and the channel file behind the delegated
//! `rollout` role. The client is tests/tuf-interop/client.py.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use edgeimg_proto::channel::{channel_target, Channel};
use edgeimg_proto::release::{manifest_target, ReleaseManifest};
use edgeimg_release::Lifetimes;
use serde_json::Value;

fn python() -> String {
    std::env::var("EDGEIMG_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// python3 with python-tuf, or a failure that says how to get it (never a skip: a missing
/// interop check must not look like a passing one).
fn require_python_tuf() {
    let out = Command::new(python()).args(["-c", "import tuf.ngclient, tuf; print(tuf.__version__)"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            panic!("python-tuf is missing for {}: pip install tuf\n{}", python(), String::from_utf8_lossy(&o.stderr))
        }
        Err(e) => panic!("{} cannot run ({e}): install python3, then pip install tuf", python()),
    }
}

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tuf-interop/client.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_reads_releases_and_channels() {
    require_python_tuf();
    let mut fx = Fixture::new().await;
    let work = fx.dir.path().join("builds");
    publish_version(&fx.repo, &fx.keys, &work, "1.0.0", 50_000, Lifetimes::default()).await;
    let mut c = change("stable");
    c.version = Some("1.0.0".into());
    c.percent = Some(30);
    let channel = rollout(&fx.repo, &fx.keys, c).await;
    fx.start(fx.config()).await;

    let manifest = manifest_target(IMAGE, BOARD, "1.0.0");
    let root_img = format!("{IMAGE}~{BOARD}~1.0.0~root.img");
    let chan = channel_target("stable");
    let client_dir = fx.dir.path().join("python-client");
    let (url, root) = (fx.url.clone(), fx.root_json());
    // The client blocks: run it off the server's threads.
    let run = move |names: Vec<String>| {
        let (url, root, dir) = (url.clone(), root.clone(), client_dir.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(python())
                .arg(client_script())
                .arg("--root")
                .arg(root)
                .args(["--metadata-url", &format!("{url}/tuf/metadata/")])
                .args(["--targets-url", &format!("{url}/tuf/targets/")])
                .arg("--dir")
                .arg(dir)
                .args(names)
                .output()
                .unwrap()
        })
    };
    let out = run(vec![manifest.clone(), root_img.clone(), chan.clone()]).await.unwrap();
    assert!(out.status.success(), "python-tuf client failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let path = |name: &str| PathBuf::from(got["targets"][name]["path"].as_str().unwrap());

    let m: ReleaseManifest = serde_json::from_slice(&std::fs::read(path(&manifest)).unwrap()).unwrap();
    assert_eq!((m.image.as_str(), m.board.as_str(), m.version.as_str()), (IMAGE, BOARD, "1.0.0"));
    let art = m.artifact_named("root.img").unwrap();
    assert_eq!(got["targets"][&root_img]["sha256"], art.sha256.as_str());
    let disk = std::fs::read(work.join(format!("{BOARD}-{IMAGE}-1.0.0/payload/root.img"))).unwrap();
    assert_eq!(std::fs::read(path(&root_img)).unwrap(), disk);
    let seen: Channel = serde_json::from_slice(&std::fs::read(path(&chan)).unwrap()).unwrap();
    assert_eq!(seen, channel, "python-tuf sees the channel the rollout role signed");
    assert_eq!(seen.boards[BOARD].percent, 30);

    // It follows updates too: a pause is a new channel file, new snapshot and timestamp.
    let mut p = change("stable");
    p.pause = Some(true);
    rollout(&fx.repo, &fx.keys, p).await;
    let out = run(vec![chan.clone()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(again["timestamp_version"].as_u64() > got["timestamp_version"].as_u64(), "{again}");
    let p = PathBuf::from(again["targets"][channel_target("stable")]["path"].as_str().unwrap());
    let seen: Channel = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    assert!(seen.boards[BOARD].paused);
    fx.stop().await;
}
