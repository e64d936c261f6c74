//! The device metrics endpoint: `edgeimg-updater metrics` and the daemon's `metrics_listen`
//! port serve the release that runs, the update state and progress, and this boot's
//! health results in the Prometheus text format, through an update and its commit.

use crate::common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

const BOARD: &str = "qemu-x86_64";

/// The value of the sample `name{labels}` (labels as written, in order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_an_update_and_are_served_on_the_port() {
    let f = fleet(BOARD, 200_000).await;
    let (dir, keys, repo) = (f.dir.clone(), &f.keys, &f.repo);
    let dev = f.device(BOARD, "true");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = std::fs::read_to_string(&dev.config).unwrap();
    std::fs::write(&dev.config, format!("metrics_listen = \"127.0.0.1:{port}\"\n{cfg}")).unwrap();

    dev.ok(&["run", "--once"]);
    let m = dev.ok(&["metrics"]);
    assert!(m.contains("# TYPE edgeimg_device_info gauge"), "{m}");
    let info = format!(
        "edgeimg_device_info{{board=\"{BOARD}\",image=\"{}\",version=\"1.0.0\",slot=\"a\",channel=\"stable\"}}",
        dev.state()["slots"]["a"]["image"].as_str().unwrap_or("edge")
    );
    assert_eq!(sample(&m, &info), Some(1.0), "{m}");
    assert_eq!(sample(&m, "edgeimg_device_update_state{state=\"idle\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "edgeimg_device_update_state{state=\"staged\"}"), Some(0.0));
    assert_eq!(sample(&m, "edgeimg_device_download_total_bytes"), Some(0.0));
    assert!(sample(&m, "edgeimg_device_last_check_timestamp_seconds").unwrap() > 1.7e9, "checked just now");

    // 2.0.0 is installed and staged: progress complete, target named.
    publish_build(repo, keys, &fake_build(&dir, BOARD, "2.0.0", 300_000, 1), 1).await;
    set_channel(repo, keys, BOARD, "2.0.0", 100, false).await;
    assert!(dev.ok(&["run", "--once"]).contains("staged"));
    let m = dev.ok(&["metrics"]);
    assert_eq!(sample(&m, "edgeimg_device_update_state{state=\"staged\"}"), Some(1.0), "{m}");
    assert!(m.contains("edgeimg_device_update_target_info{image=") && m.contains("version=\"2.0.0\",slot=\"b\"} 1"));
    let total = sample(&m, "edgeimg_device_download_total_bytes").unwrap();
    assert!(total >= 300_000.0, "{m}");
    assert_eq!(sample(&m, "edgeimg_device_download_bytes"), Some(total));

    // Rebooted into it: a trial, then the health check passes and commits.
    dev.power_on(BOARD);
    assert_eq!(sample(&dev.ok(&["metrics"]), "edgeimg_device_trial"), Some(1.0));
    dev.ok(&["health"]);
    let m = dev.ok(&["metrics"]);
    assert_eq!(sample(&m, "edgeimg_device_trial"), Some(0.0), "{m}");
    assert!(m.contains("version=\"2.0.0\",slot=\"b\",channel=\"stable\"} 1"), "{m}");
    assert!(
        m.lines().any(|l| l.starts_with("edgeimg_device_health_check_ok{check=\"command:true") && l.ends_with(" 1")),
        "{m}"
    );
    assert_eq!(sample(&m, "edgeimg_device_update_state{state=\"idle\"}"), Some(1.0));

    // The daemon serves the same on its port (and nothing else).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgeimg-updater"))
        .arg("--root")
        .arg(&dev.root)
        .arg("--config")
        .arg(&dev.config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the daemon never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (head, body) = scrape(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("version=\"2.0.0\",slot=\"b\",channel=\"stable\"} 1"), "{body}");
    assert_eq!(sample(&body, "edgeimg_device_state_readable"), Some(1.0));
    let (head, _) = scrape(port, "/admin");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn a_bad_listen_address_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("updater.toml");
    std::fs::write(&cfg, "board = \"x\"\nmetrics_listen = \"localhost\"\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_edgeimg-updater"))
        .arg("--root")
        .arg(d.path())
        .arg("--config")
        .arg(&cfg)
        .arg("metrics")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("metrics_listen = \"localhost\"") && err.contains("127.0.0.1:9101"),
        "{err}"
    );
}
