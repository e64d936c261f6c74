//! The dashboard, rendered by headless Chromium: a screenshot (target/tmp/dashboard.png)
//! and assertions on the DOM Chromium built from the page.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Run headless Chromium with the flags that keep it off the network and quick.
fn headless(extra: &[String], url: &str, profile: &Path) -> std::process::Output {
    Command::new("timeout")
        .arg("120")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{} cannot run ({e}): install chromium", chromium()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_chromium() {
    let mut fx = Fixture::new().await;
    seed::repo(&fx.repo, &fx.keys, &fx.dir.path().join("builds")).await;
    fx.start(fx.config()).await;
    let enrolled = seed::devices(&fx).await;
    eventually(30, "canary auto-halted", || async {
        let (_, ch) = fx.get_json("/api/v1/channels").await;
        ch["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "canary" && c["boards"][0]["rollout"]["paused"] == true)
    })
    .await;

    let url = format!("{}/", fx.url);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let png = out_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    let (u1, p1, u2, p2) =
        (url.clone(), fx.dir.path().join("chromium-1"), url.clone(), fx.dir.path().join("chromium-2"));
    let shot = png.clone();
    let (dom, screenshot) = tokio::task::spawn_blocking(move || {
        let dom = headless(&["--dump-dom".into()], &u1, &p1);
        let screenshot =
            headless(&["--window-size=1400,1000".into(), format!("--screenshot={}", shot.display())], &u2, &p2);
        (dom, screenshot)
    })
    .await
    .unwrap();
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&dom.stderr));
    assert!(
        screenshot.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&screenshot.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();

    for want in [
        "<title>edgeimg fleet</title>",
        "auto-halt: 2 of 3 devices failed 1.2.0",
        "waiting for the change window (CHG-1234)",
        "edge-qemu-01",
        "nuc-04",
        "lab-bench-7",
        "awaiting approval",
        "new key awaiting approval",
        "k3s-node-ready",
        "online keys: auto-halt + refresh on",
        // Device text arrives escaped, so Chromium shows it as text, not markup.
        "&lt;disk \"data\" at 100% &amp; rising&gt;",
    ] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    assert!(!dom.contains("<disk"), "device text became markup");
    assert!(dom.matches("<tr><td><code>").count() >= enrolled, "a row per device");
    assert!(!dom.contains("<script"), "the dashboard runs no scripts");

    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(bytes.len() > 20_000, "a real page, not a blank one ({} bytes)", bytes.len());
    eprintln!("dashboard screenshot: {}", png.display());
    fx.stop().await;
}
