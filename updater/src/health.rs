//! Health checks after a trial boot: K3s node Ready (with a heartbeat from this boot), listed
//! units active, HTTP probes, commands. Each check is retried until it passes or the
//! deadline ends, except a command that exits with [`FINAL_EXIT`]: that fails the trial at
//! once (a check that knows it will never pass should not hold a device on a bad release
//! for the whole deadline). The result says which passed and why the others did not.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use edgeimg_proto::report::HealthResult;

use crate::config::Settings;

#[derive(Debug, Clone)]
pub enum Check {
    /// `k3s kubectl get node` reports Ready=True with a heartbeat newer than `since` (unix).
    K3sReady {
        kubectl: Vec<String>,
        node: String,
        since: i64,
    },
    Unit(String),
    Http(String),
    Command(Vec<String>),
}

impl Check {
    pub fn name(&self) -> String {
        match self {
            Check::K3sReady { node, .. } => format!("k3s-node-ready:{node}"),
            Check::Unit(u) => format!("unit:{u}"),
            Check::Http(u) => format!("http:{u}"),
            Check::Command(c) => format!("command:{}", c.join(" ")),
        }
    }
}

/// Boot time (unix seconds) from /proc/uptime under `root`.
pub fn boot_time(root: &Path) -> i64 {
    let up: f64 = std::fs::read_to_string(root.join("proc/uptime"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0);
    crate::state::now() - up as i64
}

/// The checks the configuration asks for. K3s readiness is on by default when the image
/// has K3s.
pub fn checks(s: &Settings, root: &Path) -> Vec<Check> {
    let mut v = Vec::new();
    let k3s: PathBuf = root.join("usr/local/bin/k3s");
    if s.k3s_node_ready.unwrap_or_else(|| k3s.exists()) {
        let node = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        v.push(Check::K3sReady {
            kubectl: vec![k3s.display().to_string(), "kubectl".into()],
            node,
            since: boot_time(root),
        });
    }
    v.extend(s.health_units.iter().cloned().map(Check::Unit));
    v.extend(s.health_http.iter().cloned().map(Check::Http));
    v.extend(s.health_commands.iter().cloned().map(Check::Command));
    v
}

/// Exit status with which a health command says "this will not get better": the trial fails
/// now instead of at the deadline.
pub const FINAL_EXIT: i32 = 100;

/// Why one attempt of a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub detail: String,
    /// No point retrying: the trial has failed.
    pub is_final: bool,
}

impl From<String> for Failed {
    fn from(detail: String) -> Self {
        Failed { detail, is_final: false }
    }
}

fn run(cmd: &[String]) -> Result<String, Failed> {
    let (prog, args) = cmd.split_first().ok_or_else(|| Failed::from("empty command".to_string()))?;
    let out = Command::new(prog).args(args).output().map_err(|e| Failed::from(format!("{prog}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        Ok(text)
    } else {
        let is_final = out.status.code() == Some(FINAL_EXIT);
        let mut detail: String = format!("{} ({}) {}", out.status, text, String::from_utf8_lossy(&out.stderr).trim())
            .chars()
            .take(300)
            .collect();
        if is_final {
            detail.push_str(" [final: not retried]");
        }
        Err(Failed { detail, is_final })
    }
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// One attempt of a check.
pub async fn attempt(c: &Check, http: &reqwest::Client) -> Result<String, Failed> {
    match c {
        Check::K3sReady { kubectl, node, since } => {
            let mut cmd = kubectl.clone();
            cmd.extend([
                "get".into(),
                "node".into(),
                node.clone(),
                "-o".into(),
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}"#.into(),
            ]);
            let out = run(&cmd)?;
            let mut it = out.split_whitespace();
            let (status, beat) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            if status != "True" {
                return Err(format!("node {node} Ready={status}").into());
            }
            // Right after a reboot the old Ready=True can still show: the heartbeat must be
            // from this boot.
            match parse_rfc3339(beat) {
                Some(t) if t >= *since => Ok(format!("Ready, heartbeat {beat}")),
                _ => Err(format!("Ready, but the heartbeat {beat} is from before this boot").into()),
            }
        }
        Check::Unit(u) => match run(&["systemctl".into(), "is-active".into(), u.clone()]) {
            Ok(s) if s == "active" => Ok("active".into()),
            Ok(s) => Err(s.into()),
            Err(e) => Err(e),
        },
        Check::Http(url) => {
            let r = http.get(url).timeout(Duration::from_secs(10)).send().await.map_err(|e| crate::net::chain(&e))?;
            if r.status().is_success() {
                Ok(format!("HTTP {}", r.status().as_u16()))
            } else {
                Err(format!("HTTP {}", r.status().as_u16()).into())
            }
        }
        Check::Command(cmd) => run(cmd).map(|_| "exit 0".into()),
    }
}

/// The latest results, kept in the state directory for the reports.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    boot_id: String,
    results: Vec<HealthResult>,
}

const SAVED: &str = "health.json";

/// Keep this boot's results (atomically: a power cut leaves the old or the new file).
pub fn save(state_dir: &Path, boot_id: &str, results: &[HealthResult]) -> std::io::Result<()> {
    let s = Saved { boot_id: boot_id.into(), results: results.to_vec() };
    crate::fsutil::atomic_write(&state_dir.join(SAVED), &serde_json::to_vec(&s).unwrap_or_default(), 0o644)
}

/// The results saved in this boot (none from an earlier boot: they say nothing about now).
pub fn load(state_dir: &Path, boot_id: &str) -> Vec<HealthResult> {
    std::fs::read(state_dir.join(SAVED))
        .ok()
        .and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
        .filter(|s| s.boot_id == boot_id)
        .map(|s| s.results)
        .unwrap_or_default()
}

/// Run all checks until each passes, one fails finally, or `deadline` passes.
pub async fn run_all(checks: &[Check], deadline: Duration, http: &reqwest::Client) -> Vec<HealthResult> {
    let end = Instant::now() + deadline;
    let mut results: Vec<Option<HealthResult>> = vec![None; checks.len()];
    loop {
        let mut final_failure = false;
        for (i, c) in checks.iter().enumerate() {
            if results[i].as_ref().is_some_and(|r| r.ok) {
                continue;
            }
            let (ok, detail) = match attempt(c, http).await {
                Ok(d) => (true, d),
                Err(f) => {
                    final_failure |= f.is_final;
                    (false, f.detail)
                }
            };
            results[i] = Some(HealthResult { check: c.name(), ok, detail });
            if final_failure {
                break;
            }
        }
        if final_failure || results.iter().all(|r| r.as_ref().is_some_and(|r| r.ok)) || Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2).min(end.saturating_duration_since(Instant::now()))).await;
    }
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Check {
        Check::Command(vec!["/bin/sh".into(), "-c".into(), script.into()])
    }

    async fn timed(checks: &[Check], deadline: Duration) -> (Vec<HealthResult>, Duration) {
        let t = Instant::now();
        let r = run_all(checks, deadline, &crate::net::client()).await;
        (r, t.elapsed())
    }

    #[test]
    fn saved_results_count_only_in_their_boot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "boot-1").is_empty());
        let r = vec![HealthResult { check: "k3s-node-ready:n".into(), ok: true, detail: "Ready".into() }];
        save(dir.path(), "boot-1", &r).unwrap();
        assert_eq!(load(dir.path(), "boot-1"), r);
        assert!(load(dir.path(), "boot-2").is_empty(), "results of an earlier boot are not reported");
    }

    #[tokio::test]
    async fn a_final_exit_fails_at_once_and_skips_the_rest() {
        let checks = [sh("exit 100"), sh("exit 0")];
        let (r, took) = timed(&checks, Duration::from_secs(60)).await;
        assert!(took < Duration::from_secs(30), "a final failure waited for the deadline: {took:?}");
        assert_eq!(r.len(), 1, "checks after the final failure are not run: {r:?}");
        assert!(!r[0].ok && r[0].detail.contains("final"), "{r:?}");
    }

    #[tokio::test]
    async fn other_failures_are_retried_until_they_pass_or_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("second-try");
        // Fails with 1 the first time, passes the second time.
        let flaky = sh(&format!("[ -e {0} ] || {{ touch {0}; exit 1; }}", flag.display()));
        let (r, _) = timed(&[flaky], Duration::from_secs(60)).await;
        assert!(r[0].ok, "{r:?}");
        let (r, took) = timed(&[sh("exit 1")], Duration::from_secs(3)).await;
        assert!(!r[0].ok && !r[0].detail.contains("final"), "{r:?}");
        assert!(took >= Duration::from_secs(3), "gave up before the deadline: {took:?}");
    }
}
