//! Prometheus metrics: counters kept in memory by the server, gauges computed from the
//! database and the repository when `/metrics` is scraped. Text exposition format 0.0.4.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::db::{DeviceCount, ReleaseKey, ReleaseStats};
use crate::fleet::BoardSummary;
use crate::repo_view::RepoView;

#[derive(Default)]
pub struct Metrics {
    reports_accepted: AtomicU64,
    reports_rejected: Mutex<BTreeMap<&'static str, u64>>,
    enrollments: Mutex<BTreeMap<&'static str, u64>>,
    tuf_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    attestations: Mutex<BTreeMap<&'static str, u64>>,
    auto_halts: AtomicU64,
    refresh_ok: AtomicU64,
    refresh_failed: AtomicU64,
    last_refresh: AtomicI64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock().unwrap_or_else(|p| p.into_inner()).entry(k).or_insert(0) += 1;
}

impl Metrics {
    pub fn report_accepted(&self) {
        self.reports_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report_rejected(&self, reason: &'static str) {
        bump(&self.reports_rejected, reason);
    }

    pub fn enrollment(&self, result: &'static str) {
        bump(&self.enrollments, result);
    }

    /// A quote was judged: `passed` or `failed`.
    pub fn attestation(&self, result: &'static str) {
        bump(&self.attestations, result);
    }

    pub fn tuf_request(&self, area: &'static str, status: u16) {
        bump(&self.tuf_requests, (area, status));
    }

    pub fn auto_halt(&self) {
        self.auto_halts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refreshed(&self, ok: bool, now: i64) {
        if ok {
            self.refresh_ok.fetch_add(1, Ordering::Relaxed);
            self.last_refresh.store(now, Ordering::Relaxed);
        } else {
            self.refresh_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn reports_accepted(&self) -> u64 {
        self.reports_accepted.load(Ordering::Relaxed)
    }

    pub fn reports_rejected(&self) -> BTreeMap<&'static str, u64> {
        self.reports_rejected.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn auto_halts(&self) -> u64 {
        self.auto_halts.load(Ordering::Relaxed)
    }

    pub fn last_refresh(&self) -> Option<i64> {
        Some(self.last_refresh.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }
}

/// Everything `/metrics` shows, gathered by the caller.
pub struct Snapshot<'a> {
    pub metrics: &'a Metrics,
    pub view: &'a RepoView,
    pub devices: &'a [DeviceCount],
    pub releases: &'a BTreeMap<ReleaseKey, ReleaseStats>,
    pub boards: &'a [BoardSummary],
    pub online_keys: bool,
    pub now: i64,
}

pub use edgeimg_proto::prometheus::escape_label;
use edgeimg_proto::prometheus::Text as Out;

pub fn render(s: &Snapshot<'_>) -> String {
    let m = s.metrics;
    let mut o = Out::with_capacity(8192);

    o.family(
        "edgeimg_devices",
        "gauge",
        "Known devices by board, running version, updater state and enrollment status.",
    );
    for d in s.devices {
        let labels =
            [("board", &*d.board), ("version", &*d.version), ("state", &*d.state), ("status", d.status.as_str())];
        o.sample("edgeimg_devices", &labels, d.count);
    }

    o.family("edgeimg_reports_accepted_total", "counter", "Device reports accepted since the server started.");
    o.sample("edgeimg_reports_accepted_total", &[], m.reports_accepted());
    o.family(
        "edgeimg_reports_rejected_total",
        "counter",
        "Device reports rejected since the server started, by reason.",
    );
    for (reason, n) in m.reports_rejected() {
        o.sample("edgeimg_reports_rejected_total", &[("reason", reason)], n);
    }
    o.family("edgeimg_enrollments_total", "counter", "Enrollment requests since the server started, by result.");
    for (result, n) in m.enrollments.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        o.sample("edgeimg_enrollments_total", &[("result", result)], n);
    }

    o.family(
        "edgeimg_release_devices",
        "gauge",
        "Devices by the latest outcome they reported for a release (tried counts every device that reported anything).",
    );
    for (k, st) in s.releases {
        for (outcome, n) in [
            ("tried", st.tried),
            ("committed", st.committed),
            ("rolled_back", st.rolled_back),
            ("failed", st.failed),
            ("in_progress", st.in_progress),
        ] {
            let labels = [
                ("channel", &*k.channel),
                ("board", &*k.board),
                ("image", &*k.image),
                ("version", &*k.version),
                ("outcome", outcome),
            ];
            o.sample("edgeimg_release_devices", &labels, n);
        }
    }

    o.family("edgeimg_attestations_total", "counter", "TPM quotes judged since the server started, by result.");
    for (result, n) in m.attestations.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        o.sample("edgeimg_attestations_total", &[("result", result)], n);
    }

    // One gauge per (channel, board) for each of these.
    let per_board: [BoardGauge; 6] = [
        ("edgeimg_channel_paused", "1 if the channel is paused for the board.", |b| u64::from(b.rollout.paused)),
        (
            "edgeimg_channel_percent",
            "Percent of devices the channel's rollout allows now (waves applied).",
            |b| u64::from(b.percent_now),
        ),
        ("edgeimg_channel_devices", "Approved devices following the channel on the board.", |b| b.devices),
        ("edgeimg_channel_eligible_devices", "Of those, devices the rollout allows now.", |b| b.eligible),
        (
            "edgeimg_channel_attested_devices",
            "Devices running the channel's release with a passing TPM attestation of it.",
            |b| b.attested,
        ),
        (
            "edgeimg_channel_healthy_devices",
            "Devices running the channel's release, idle, with passing health checks (and a passing attestation where the channel requires one).",
            |b| b.healthy,
        ),
    ];
    for (name, help, value) in per_board {
        o.family(name, "gauge", help);
        for b in s.boards {
            o.sample(name, &board_labels(b), value(b));
        }
    }

    o.family("edgeimg_metadata_expires_in_seconds", "gauge", "Seconds until each TUF metadata role expires.");
    for r in &s.view.roles {
        o.sample("edgeimg_metadata_expires_in_seconds", &[("role", r.role)], r.expires - s.now);
    }
    o.family("edgeimg_metadata_version", "gauge", "Version of each TUF metadata role.");
    for r in &s.view.roles {
        o.sample("edgeimg_metadata_version", &[("role", r.role)], r.version);
    }
    o.family("edgeimg_repository_readable", "gauge", "1 if the server could read the whole repository.");
    o.sample("edgeimg_repository_readable", &[], u8::from(s.view.error.is_none()));
    o.family("edgeimg_releases", "gauge", "Published releases.");
    o.sample("edgeimg_releases", &[], s.view.releases.len());

    o.family("edgeimg_online_keys", "gauge", "1 if the server holds the online keys (auto-halt and refresh work).");
    o.sample("edgeimg_online_keys", &[], u8::from(s.online_keys));
    o.family("edgeimg_auto_halts_total", "counter", "Channels paused by auto-halt since the server started.");
    o.sample("edgeimg_auto_halts_total", &[], m.auto_halts());
    o.family("edgeimg_refresh_total", "counter", "Re-signings of the online metadata, by result.");
    o.sample("edgeimg_refresh_total", &[("result", "ok")], m.refresh_ok.load(Ordering::Relaxed));
    o.sample("edgeimg_refresh_total", &[("result", "failed")], m.refresh_failed.load(Ordering::Relaxed));
    if let Some(t) = m.last_refresh() {
        o.family("edgeimg_refresh_last_success_timestamp_seconds", "gauge", "Unix time of the last re-signing.");
        o.sample("edgeimg_refresh_last_success_timestamp_seconds", &[], t);
    }

    o.family("edgeimg_tuf_requests_total", "counter", "Repository file requests, by area and HTTP status.");
    for ((area, status), n) in m.tuf_requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        o.sample("edgeimg_tuf_requests_total", &[("area", area), ("status", &status.to_string())], n);
    }
    o.0
}

/// (metric name, help, value) of a per-channel, per-board gauge.
type BoardGauge = (&'static str, &'static str, fn(&BoardSummary) -> u64);

fn board_labels(b: &BoardSummary) -> [(&str, &str); 4] {
    [("channel", &b.channel), ("board", &b.board), ("image", &b.rollout.image), ("version", &b.rollout.version)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let m = Metrics::default();
        m.report_rejected("replayed");
        m.report_rejected("replayed");
        m.report_accepted();
        let view = RepoView::default();
        let devices = vec![DeviceCount {
            board: "x\"y".into(),
            version: "1".into(),
            state: "idle".into(),
            status: crate::db::DeviceStatus::Approved,
            count: 3,
        }];
        let text = render(&Snapshot {
            metrics: &m,
            view: &view,
            devices: &devices,
            releases: &BTreeMap::new(),
            boards: &[],
            online_keys: false,
            now: 0,
        });
        assert!(text.contains("edgeimg_reports_rejected_total{reason=\"replayed\"} 2\n"), "{text}");
        assert!(text.contains("edgeimg_reports_accepted_total 1\n"));
        assert!(text.contains(r#"edgeimg_devices{board="x\"y",version="1",state="idle",status="approved"} 3"#));
        assert!(text.contains("edgeimg_online_keys 0\n"));
    }
}
