//! The HTML dashboard at `/`: channels, releases, devices, halts and recent events,
//! rendered on the server (no scripts, no external assets), reloading itself every 15 s.
//! Every string that comes from a device or the repository is escaped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::fleet::per_channel;
use crate::api::ApiError;
use crate::app::App;
use edgeimg_proto::channel::{BoardRollout, HaltPolicy};

use crate::db::{self, Device, DeviceStatus, EventRow, Halt, ReleaseKey, ReleaseStats};
use crate::fleet::{summaries, BoardSummary};
use crate::html::{ago, esc, size, span, utc};
use crate::repo_view::RepoView;

const STYLE: &str = include_str!("dashboard.css");

/// What the page shows, gathered by the handler.
pub struct Data<'a> {
    pub view: &'a RepoView,
    pub devices: &'a [Device],
    pub stats: &'a BTreeMap<ReleaseKey, ReleaseStats>,
    pub boards: &'a [BoardSummary],
    pub halts: &'a [Halt],
    pub events: &'a [EventRow],
    pub online_keys: bool,
    pub reports_accepted: u64,
    pub repo: &'a str,
    pub now: i64,
}

pub async fn page(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let view = app.view.get();
    let (devices, stats, halts, events) = app
        .db
        .read(|c| Ok((db::devices(c)?, db::release_stats(c)?, db::halts(c, 10)?, db::recent_events(c, 15)?)))
        .await?;
    let now = app.now();
    let boards = summaries(&view, &devices, &stats, now);
    let repo = app.repo.dir.display().to_string();
    let html = render(&Data {
        view: &view,
        devices: &devices,
        stats: &stats,
        boards: &boards,
        halts: &halts,
        events: &events,
        online_keys: app.keys.is_some(),
        reports_accepted: app.metrics.reports_accepted(),
        repo: &repo,
        now,
    });
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], html)
        .into_response())
}

fn badge(class: &str, text: &str) -> String {
    format!(r#"<span class="badge {class}">{}</span>"#, esc(text))
}

/// A stacked bar of outcomes, with the counts underneath.
fn outcome_bar(s: &ReleaseStats) -> String {
    if s.tried == 0 {
        return r#"<span class="muted">no reports yet</span>"#.into();
    }
    let pct = |n: u64| n as f64 * 100.0 / s.tried as f64;
    let mut o = String::from(r#"<div class="bar">"#);
    for (n, class) in [(s.committed, "ok"), (s.in_progress, "busy"), (s.rolled_back, "warn"), (s.failed, "bad")] {
        if n > 0 {
            let _ = write!(o, r#"<i class="{class}" style="width:{:.1}%"></i>"#, pct(n));
        }
    }
    o.push_str(r#"</div><div class="small">"#);
    let _ = write!(o, "{} tried · <b class=\"t-ok\">{}</b> committed", s.tried, s.committed);
    if s.in_progress > 0 {
        let _ = write!(o, " · {} in progress", s.in_progress);
    }
    if s.rolled_back > 0 {
        let _ = write!(o, r#" · <b class="t-warn">{}</b> rolled back"#, s.rolled_back);
    }
    if s.failed > 0 {
        let _ = write!(o, r#" · <b class="t-bad">{}</b> failed"#, s.failed);
    }
    o.push_str("</div>");
    o
}

/// RFC 3339 from the manifest, shown like the other times.
fn published_at(s: &str) -> String {
    s.parse::<jiff::Timestamp>().map(|t| utc(t.as_second())).unwrap_or_else(|_| s.to_string())
}

/// How far the rollout goes now. A paused one lets nobody in, but shows where it resumes.
fn rollout_bar(r: &BoardRollout, now: i64) -> String {
    if r.paused {
        let resumes = BoardRollout { paused: false, ..r.clone() }.percent_at(now);
        return format!(
            r#"<div class="bar thin"><i class="held" style="width:{resumes}%"></i></div><div class="small">{resumes}% on resume</div>"#
        );
    }
    let pct = r.percent_at(now);
    format!(
        r#"<div class="bar thin"><i class="busy" style="width:{pct}%"></i></div><div class="small">{pct}% of devices</div>"#
    )
}

/// The auto-halt policy in words.
fn halt_policy(h: &HaltPolicy) -> String {
    let after = if h.min_devices > 1 { format!(", once ≥ {} tried", h.min_devices) } else { String::new() };
    if h.max_failures == 0 {
        format!("pause at the first failure{after}")
    } else {
        format!("pause when &gt; {} fail{after}", h.max_failures)
    }
}

pub fn render(d: &Data<'_>) -> String {
    let mut o = String::with_capacity(32 * 1024);
    let _ = write!(
        o,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="15">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgeimg fleet</title><style>{STYLE}</style></head><body>
<header><div><h1>edgeimg fleet</h1><div class="sub">repository <code>{}</code> · {} · reloads every 15 s</div></div>"#,
        esc(d.repo),
        utc(d.now)
    );
    o.push_str(r#"<div class="pills">"#);
    o.push_str(&if d.online_keys {
        badge("ok", "online keys: auto-halt + refresh on")
    } else {
        badge("bad", "no online keys")
    });
    for r in &d.view.roles {
        let left = r.expires - d.now;
        let class = if left <= 0 {
            "bad"
        } else if r.role == "targets" && left < 14 * 86_400 || left < 3600 {
            "warn"
        } else {
            "plain"
        };
        let text = if left <= 0 {
            format!("{} EXPIRED", r.role)
        } else {
            format!("{} v{} · {}", r.role, r.version, span(left))
        };
        o.push_str(&badge(class, &text));
    }
    o.push_str("</div></header><main>");

    if !d.online_keys {
        o.push_str(r#"<div class="banner warn">The server has no online keys (<code>--keys</code>): <b>auto-halt and metadata refresh are off</b>. Failing rollouts are shown here but not paused.</div>"#);
    }
    if let Some(e) = &d.view.error {
        let _ = write!(o, r#"<div class="banner bad">The repository could not be read completely: {}</div>"#, esc(e));
    }

    let approved = d.devices.iter().filter(|x| x.status == DeviceStatus::Approved).count();
    let pending = d.devices.len() - approved;
    let paused = d.boards.iter().filter(|b| b.rollout.paused).count();
    let unhealthy = d.devices.iter().filter(|x| x.health.iter().any(|h| !h.ok) || x.last_error.is_some()).count();
    o.push_str(r#"<section class="cards">"#);
    for (label, value, class) in [
        ("approved devices", format!("{approved}"), "plain"),
        ("awaiting approval", format!("{pending}"), if pending > 0 { "warn" } else { "plain" }),
        ("with errors", format!("{unhealthy}"), if unhealthy > 0 { "bad" } else { "plain" }),
        ("releases", format!("{}", d.view.releases.len()), "plain"),
        ("paused rollouts", format!("{paused}"), if paused > 0 { "bad" } else { "plain" }),
        ("reports accepted", format!("{}", d.reports_accepted), "plain"),
    ] {
        let _ = write!(
            o,
            r#"<div class="card {class}"><div class="num">{value}</div><div class="label">{label}</div></div>"#
        );
    }
    o.push_str("</section>");

    channels(&mut o, d);
    releases(&mut o, d);
    devices(&mut o, d);
    activity(&mut o, d);
    o.push_str("</main></body></html>\n");
    o
}

fn channels(o: &mut String, d: &Data<'_>) {
    o.push_str(r#"<section><h2>Channels</h2>"#);
    if d.boards.is_empty() {
        o.push_str(r#"<p class="muted">No channel yet: <code>edgeimg rollout CHANNEL --board B --release V --percent N</code>.</p></section>"#);
        return;
    }
    o.push_str(r#"<table><thead><tr><th>Channel</th><th>Board</th><th>Release</th><th>Rollout</th><th>State</th><th>Auto-halt</th><th>Devices</th><th>Outcome of the release</th></tr></thead><tbody>"#);
    for b in d.boards {
        let r = &b.rollout;
        let state = if r.paused {
            format!(
                r#"{}<div class="small reason">{}</div>"#,
                badge("bad", "paused"),
                esc(r.pause_reason.as_deref().unwrap_or("paused"))
            )
        } else {
            badge("ok", "rolling out")
        };
        let waves = r.waves.as_ref().map_or(String::new(), |w| {
            let steps: Vec<String> = w.percents.iter().map(|p| format!("{p}%")).collect();
            format!(r#"<div class="small">waves {} every {}</div>"#, esc(&steps.join(" → ")), span(w.interval))
        });
        let _ = write!(
            o,
            r#"<tr><td><b>{}</b></td><td class="nw">{}</td><td><code>{} {}</code>{}</td><td class="nw">{}{}</td><td>{}</td><td class="small">{}</td><td class="nw"><b>{}</b> following<div class="small">{} eligible now<br>{} on release<br>{} healthy{}</div></td><td class="outcome">{}</td></tr>"#,
            esc(&b.channel),
            esc(&b.board),
            esc(&r.image),
            esc(&r.version),
            if r.rollback { r#" <span class="badge warn">rollback</span>"# } else { "" },
            rollout_bar(r, d.now),
            waves,
            state,
            halt_policy(&r.halt),
            b.devices,
            b.eligible,
            b.on_release,
            b.healthy,
            if r.require_attestation { format!(" ({} attested, required)", b.attested) } else { String::new() },
            outcome_bar(&b.stats)
        );
    }
    o.push_str("</tbody></table></section>");
}

fn releases(o: &mut String, d: &Data<'_>) {
    o.push_str(r#"<section><h2>Releases</h2>"#);
    if d.view.releases.is_empty() {
        o.push_str(r#"<p class="muted">Nothing published yet: <code>edgeimg publish out/BOARD/IMAGE/VERSION --repo …</code>.</p></section>"#);
        return;
    }
    o.push_str(r#"<table><thead><tr><th>Release</th><th>Board</th><th>Security</th><th>Published</th><th>Download</th><th>Running it</th><th>Reported outcome by channel</th></tr></thead><tbody>"#);
    for r in d.view.releases.iter().rev() {
        let running =
            d.devices.iter().filter(|x| x.board == r.board && x.image == r.image && x.version == r.version).count();
        let (sv, published, dl) = match &r.manifest {
            Some(m) => (m.security_version.to_string(), published_at(&m.published), size(m.download_size())),
            None => ("?".into(), "?".into(), "?".into()),
        };
        let mut outcome = String::new();
        let chans = per_channel(d.stats, r);
        if chans.is_empty() {
            outcome.push_str(r#"<span class="muted">no reports yet</span>"#);
        }
        for (ch, s) in chans {
            let _ = write!(
                outcome,
                r#"<div class="per-channel"><span class="chan">{}</span>{}</div>"#,
                esc(&ch),
                outcome_bar(&s)
            );
        }
        let _ = write!(
            o,
            r#"<tr><td><code>{} {}</code></td><td class="nw">{}</td><td>{}</td><td class="small nw">{}</td><td class="nw">{}</td><td>{running}</td><td class="outcome">{outcome}</td></tr>"#,
            esc(&r.image),
            esc(&r.version),
            esc(&r.board),
            esc(&sv),
            esc(&published),
            esc(&dl),
        );
    }
    o.push_str("</tbody></table></section>");
}

fn devices(o: &mut String, d: &Data<'_>) {
    let _ = write!(o, r#"<section><h2>Devices <span class="count">{}</span></h2>"#, d.devices.len());
    if d.devices.is_empty() {
        o.push_str(r#"<p class="muted">No device has enrolled yet.</p></section>"#);
        return;
    }
    o.push_str(r#"<table><thead><tr><th>Device</th><th>Board</th><th>Channel</th><th>Version</th><th>Slot</th><th>State</th><th>Health</th><th>TPM</th><th>Last error</th><th>Last seen</th></tr></thead><tbody>"#);
    for x in d.devices {
        let status = match x.status {
            DeviceStatus::Approved => String::new(),
            DeviceStatus::Pending => badge("warn", "awaiting approval"),
        };
        let key = if x.pending_key.is_some() { badge("bad", "new key awaiting approval") } else { String::new() };
        let health = if x.health.is_empty() {
            r#"<span class="muted">–</span>"#.to_string()
        } else {
            x.health
                .iter()
                .map(|h| {
                    let title =
                        if h.detail.is_empty() { String::new() } else { format!(r#" title="{}""#, esc(&h.detail)) };
                    format!(
                        r#"<span class="badge {}"{title}>{}</span>"#,
                        if h.ok { "ok" } else { "bad" },
                        esc(&h.check)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        // A device that rolled back runs its previous release: amber, like the outcome bars.
        let state = match x.state.as_deref() {
            None => r#"<span class="muted">–</span>"#.to_string(),
            Some(s @ ("idle" | "committed")) => badge("ok", s),
            Some(s) if s.contains("fail") => badge("bad", s),
            Some(s) if s.contains("rolled") => badge("warn", s),
            Some(s) => badge("busy", s),
        };
        // The latest attestation: green only when it vouches for the version running now.
        let tpm = match &x.attestation {
            None if x.tpm => badge("busy", "not attested yet"),
            None => r#"<span class="muted">no TPM</span>"#.to_string(),
            Some(a) => {
                let (class, text) = if a.passed_for(&x.version) {
                    ("ok", "attested".to_string())
                } else if a.result == "passed" {
                    ("warn", format!("attested {}", a.version))
                } else {
                    ("bad", "attestation failed".to_string())
                };
                format!(r#"<span class="badge {class}" title="{}">{}</span>"#, esc(&a.detail), esc(&text))
            }
        };
        let stale = x.last_seen.is_none_or(|t| d.now - t > 86_400);
        let _ = write!(
            o,
            r#"<tr><td><code>{}</code> {status}{key}</td><td class="nw">{}</td><td>{}</td><td><code>{} {}</code></td><td>{}</td><td>{}</td><td>{health}</td><td class="nw">{tpm}</td><td class="err">{}</td><td class="nw {}">{}</td></tr>"#,
            esc(&x.id),
            esc(&x.board),
            esc(x.channel.as_deref().unwrap_or("–")),
            esc(&x.image),
            esc(&x.version),
            esc(x.slot.as_deref().unwrap_or("–")),
            state,
            esc(x.last_error.as_deref().unwrap_or("")),
            if stale { "muted" } else { "" },
            ago(d.now, x.last_seen),
        );
    }
    o.push_str("</tbody></table></section>");
}

fn activity(o: &mut String, d: &Data<'_>) {
    o.push_str(r#"<section class="two"><div><h2>Auto-halts</h2>"#);
    if d.halts.is_empty() {
        o.push_str(r#"<p class="muted">None.</p>"#);
    } else {
        o.push_str("<table><tbody>");
        for h in d.halts {
            let _ = write!(
                o,
                r#"<tr><td class="small nw">{}</td><td class="nw"><b>{}</b> / {}</td><td class="grow">{}</td><td>{}</td></tr>"#,
                ago(d.now, Some(h.at)),
                esc(&h.release.channel),
                esc(&h.release.board),
                esc(&h.reason),
                badge(if h.outcome == "paused" { "bad" } else { "warn" }, &h.outcome)
            );
        }
        o.push_str("</tbody></table>");
    }
    o.push_str(r#"</div><div><h2>Recent events</h2>"#);
    if d.events.is_empty() {
        o.push_str(r#"<p class="muted">None.</p>"#);
    } else {
        o.push_str("<table><tbody>");
        for e in d.events {
            let class = match e.kind.as_str() {
                "committed" => "ok",
                "rolled-back" => "warn",
                "failed" => "bad",
                _ => "busy",
            };
            let _ = write!(
                o,
                r#"<tr><td class="small nw">{}</td><td><code>{}</code></td><td>{}</td><td><code>{} {}</code></td><td class="small grow">{}</td></tr>"#,
                ago(d.now, Some(e.received)),
                esc(&e.device_id),
                badge(class, &e.kind),
                esc(&e.image),
                esc(&e.version),
                esc(&e.detail)
            );
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("</div></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_strings_are_escaped() {
        let dev = Device {
            id: "d-1".into(),
            status: DeviceStatus::Approved,
            public_key: String::new(),
            pending_key: None,
            board: "<b>".into(),
            image: "img".into(),
            version: "1.0.0".into(),
            channel: Some("stable".into()),
            slot: Some("a".into()),
            state: Some("<script>alert(1)</script>".into()),
            security_floor: 0,
            last_seq: 1,
            last_seen: Some(0),
            last_error: Some("disk \"full\" & <gone>".into()),
            health: vec![edgeimg_proto::report::HealthResult {
                check: "<img src=x>".into(),
                ok: false,
                detail: "\"><script>".into(),
            }],
            enrolled_at: 0,
            approved_at: None,
            tpm: true,
            ak_bound_at: Some(0),
            ek_certificate: false,
            attestation: Some(crate::db::AttestationState {
                result: "failed".into(),
                detail: "<b>forged</b>".into(),
                version: "1.0.0".into(),
                at: 0,
            }),
        };
        let view = RepoView::default();
        let html = render(&Data {
            view: &view,
            devices: &[dev],
            stats: &BTreeMap::new(),
            boards: &[],
            halts: &[],
            events: &[],
            online_keys: false,
            reports_accepted: 0,
            repo: "/srv/<repo>",
            now: 10,
        });
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x>"));
        assert!(!html.contains("\"><script>"));
        assert!(!html.contains("<b>forged</b>") && html.contains("attestation failed"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("disk &quot;full&quot; &amp; &lt;gone&gt;"));
        assert!(html.contains("/srv/&lt;repo&gt;"));
        assert!(html.contains("auto-halt and metadata refresh are off"));
    }
}
