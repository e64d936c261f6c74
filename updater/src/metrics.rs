//! Device metrics in the Prometheus text format: what runs, what the updater is doing, the
//! health checks of this boot. Served on a local port when `metrics_listen` is set (off by
//! default), and printed by `edgeimg-updater metrics` (for node-exporter's textfile
//! collector). Every value is read from the state files at scrape time, so a scrape never
//! waits for the update loop and never sees a half-written state (the files are replaced
//! atomically). The series are documented in docs/updater.md.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use edgeimg_proto::prometheus::Text as Out;

use crate::agent::Agent;
use crate::state::{self, State};

const STATES: [&str; 5] = ["idle", "downloading", "verified", "staged", "rolled-back"];

/// The metrics text for the device `agent` manages.
pub fn render(agent: &Agent) -> String {
    let mut o = Out::default();
    let p = match agent.dir.load() {
        Ok(p) => p,
        Err(e) => {
            o.family("edgeimg_device_state_readable", "gauge", "1 if the updater's state file could be read.");
            o.sample("edgeimg_device_state_readable", &[], 0);
            tracing::warn!("metrics: {e}");
            return o.0;
        }
    };
    let running = agent.running(&p);
    let slot = agent.boot.booted_slot().map(|s| s.letter().to_string()).unwrap_or_default();
    let s = &agent.settings;
    o.family("edgeimg_device_state_readable", "gauge", "1 if the updater's state file could be read.");
    o.sample("edgeimg_device_state_readable", &[], 1);
    o.family("edgeimg_device_info", "gauge", "The release running now (always 1).");
    o.sample(
        "edgeimg_device_info",
        &[
            ("board", &s.board),
            ("image", &running.image),
            ("version", &running.version),
            ("slot", &slot),
            ("channel", &s.channel),
        ],
        1,
    );
    o.family("edgeimg_device_update_state", "gauge", "The updater's state: 1 for the current one.");
    for st in STATES {
        o.sample("edgeimg_device_update_state", &[("state", st)], u8::from(p.state.name() == st));
    }
    o.family("edgeimg_device_trial", "gauge", "1 while the running slot is on trial (booted once, not committed).");
    o.sample("edgeimg_device_trial", &[], u8::from(agent.boot.is_trial().unwrap_or(false)));
    let target = match &p.state {
        State::Downloading { manifest, target, .. }
        | State::Verified { manifest, target }
        | State::Staged { manifest, target, .. } => Some((manifest, target)),
        _ => None,
    };
    o.family("edgeimg_device_update_target_info", "gauge", "The release being installed, and into which slot.");
    if let Some((m, t)) = target {
        o.sample(
            "edgeimg_device_update_target_info",
            &[("image", &m.image), ("version", &m.version), ("slot", t.letter())],
            1,
        );
    }
    let (done, total) = match &p.state {
        State::Downloading { manifest, artifact, offset, target, via } => {
            let needed = |a: &&edgeimg_proto::release::ReleaseArtifact| manifest.needed_for(*target, a);
            let before: u64 = manifest.artifacts.iter().take(*artifact).filter(needed).map(|a| a.size).sum();
            // Through a delta, what counts is the slot written, not the delta downloaded.
            let size = manifest.artifacts.get(*artifact).map_or(0, |a| a.size);
            let here = via.as_ref().map_or(*offset, |v| (v.applied * edgeimg_proto::delta::BLOCK).min(size));
            (before + here, manifest.download_size_for(*target))
        }
        State::Verified { manifest, target } | State::Staged { manifest, target, .. } => {
            let t = manifest.download_size_for(*target);
            (t, t)
        }
        _ => (0, 0),
    };
    o.family(
        "edgeimg_device_download_bytes",
        "gauge",
        "Bytes of the release being installed written into the slot and synced (as last persisted).",
    );
    o.sample("edgeimg_device_download_bytes", &[], done);
    o.family("edgeimg_device_download_total_bytes", "gauge", "Size of the release being installed (0: none).");
    o.sample("edgeimg_device_download_total_bytes", &[], total);
    o.family("edgeimg_device_last_check_timestamp_seconds", "gauge", "When the channel was last checked (0: never).");
    o.sample("edgeimg_device_last_check_timestamp_seconds", &[], p.last_check.unwrap_or(0));
    o.family("edgeimg_device_security_floor", "gauge", "Lowest security version this device still installs.");
    o.sample("edgeimg_device_security_floor", &[], p.security_floor);
    o.family("edgeimg_device_failed_releases", "gauge", "Releases that failed here (never retried).");
    o.sample("edgeimg_device_failed_releases", &[], p.failed.len());
    o.family("edgeimg_device_pending_reports", "gauge", "Events not yet accepted by the update server.");
    o.sample("edgeimg_device_pending_reports", &[], p.pending_events.len());
    o.family("edgeimg_device_last_error", "gauge", "1 if the last attempt ended in an error (see `status`).");
    o.sample("edgeimg_device_last_error", &[], u8::from(p.last_error.is_some()));
    let health = crate::health::load(&s.state_dir, &state::boot_id(&agent.root));
    o.family(
        "edgeimg_device_health_check_ok",
        "gauge",
        "Health checks of this boot's trial: 1 passed, 0 failed (none before a trial ran in this boot).",
    );
    for h in &health {
        o.sample("edgeimg_device_health_check_ok", &[("check", &h.check)], u8::from(h.ok));
    }
    o.0
}

/// Serve `GET /metrics` on `addr` until the process ends. One request per connection; the
/// body is rendered from the state files for each request.
pub async fn serve(listener: tokio::net::TcpListener, settings: crate::config::Settings, root: std::path::PathBuf) {
    let agent = std::sync::Arc::new(std::sync::Mutex::new(Agent::new(settings, &root)));
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded; slow clients get 5 s).
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    let m = conn.read(&mut buf[n..]).await.unwrap_or(0);
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, kind, body) = if head.starts_with("GET ") && (path == "/metrics" || path == "/") {
                let body = match agent.lock() {
                    Ok(a) => render(&a),
                    Err(_) => String::new(),
                };
                ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
            } else {
                ("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics is served here\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Bind and serve in the background; a port that cannot be bound is logged, and the
/// updater goes on without metrics.
pub async fn spawn(addr: SocketAddr, settings: crate::config::Settings, root: std::path::PathBuf) {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!("metrics on http://{addr}/metrics");
            tokio::spawn(serve(l, settings, root));
        }
        Err(e) => tracing::warn!("metrics_listen = \"{addr}\": cannot listen ({e}); running without metrics"),
    }
}
