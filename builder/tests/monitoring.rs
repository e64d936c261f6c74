//! monitoring/: the Prometheus scrape example, the alert rules and the Grafana dashboard
//! query only metrics that the update server or the device updater emit, and Prometheus's
//! own promtool accepts them: config, rules, the rules' unit tests, and every dashboard
//! query (checked as a recording rule, so a PromQL syntax error fails here).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `edgeimg_*` name in `text` (ignoring a trailing `_` of a prefix).
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("edgeimg_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_') {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('_');
        if name.len() > "edgeimg_".len() {
            out.insert(name.to_string());
        }
        i = end;
    }
    out
}

/// Metric names the server and the updater emit: the string literals of their metrics
/// modules, which name every family.
fn emitted() -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for f in ["server/src/metrics.rs", "updater/src/metrics.rs"] {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        for (i, _) in text.match_indices("\"edgeimg_") {
            let rest = &text[i + 1..];
            let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(0);
            s.insert(rest[..end].to_string());
        }
    }
    assert!(s.len() > 25, "{s:?}");
    s
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("promtool: {e}: install Prometheus's tools (apt-get install prometheus; ci/setup does)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("monitoring/grafana/edgeimg-fleet.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("every panel has a title").to_string();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: use the dashboard's datasource variable");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no queries"));
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().unwrap().to_string()));
        }
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_emitted_metrics() {
    let emitted = emitted();
    for (title, expr) in dashboard_exprs() {
        let used = names(&expr);
        assert!(!used.is_empty(), "{title}: {expr}");
        for n in used {
            assert!(emitted.contains(&n), "panel {title:?} queries {n}, which nothing emits");
        }
    }
    let alerts = std::fs::read_to_string(repo().join("monitoring/alerts.yml")).unwrap();
    for line in alerts.lines().filter(|l| l.trim_start().starts_with("expr:")) {
        for n in names(line) {
            assert!(emitted.contains(&n), "alerts.yml uses {n}, which nothing emits");
        }
    }
}

#[test]
fn promtool_accepts_config_rules_and_every_dashboard_query() {
    let dir = repo().join("monitoring");
    promtool(&["check", "config", "prometheus.yml"], &dir);
    promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(promtool(&["test", "rules", "alerts.test.yml"], &dir).contains("SUCCESS"));

    // The dashboard's queries, with Grafana's variables filled in, as recording rules.
    let t = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        let e = expr.replace("$__rate_interval", "5m").replace("$channel", ".*").replace("$board", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    std::fs::write(t.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], t.path());
    // A query with a syntax error is caught the same way.
    std::fs::write(
        t.path().join("bad.yml"),
        "groups:\n  - name: x\n    rules:\n      - record: x\n        expr: \"sum(edgeimg_devices\"\n",
    )
    .unwrap();
    let bad = Command::new("promtool").args(["check", "rules", "bad.yml"]).current_dir(t.path()).output().unwrap();
    assert!(
        !bad.status.success()
            && format!("{}{}", String::from_utf8_lossy(&bad.stdout), String::from_utf8_lossy(&bad.stderr))
                .contains("unclosed left parenthesis")
    );
}
