//! Keep the online metadata fresh: re-sign rollout, snapshot and timestamp with the online
//! keys before they expire (the same operation as `edgeimg refresh`).
//!
//! A role is due once less than half of its lifetime is left. The task wakes at least every
//! `--refresh-interval`, and exactly when the next role falls due, so a short timestamp
//! lifetime is honoured whatever the interval.

use std::sync::Arc;
use std::time::Duration;

use edgeimg_release::{KeyDir, Lifetimes};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::repo_view::RepoView;

/// Unix time at which the first online role reaches half of its lifetime.
pub fn due_at(view: &RepoView, lifetimes: &Lifetimes) -> Option<i64> {
    [("timestamp", lifetimes.timestamp), ("snapshot", lifetimes.snapshot), ("rollout", lifetimes.rollout)]
        .iter()
        .filter_map(|(role, life)| view.role(role).map(|r| r.expires - life.as_secs() / 2))
        .min()
}

pub async fn run(app: Arc<App>, keys: KeyDir, cancel: CancellationToken) {
    let interval = app.config.refresh_interval;
    let mut retry: Option<Duration> = None;
    loop {
        let now = app.now();
        let view = app.view.reload(&app.repo, now).await;
        let due = due_at(&view, &app.config.lifetimes);
        if view.error.is_none() && due.is_some_and(|d| d <= now) {
            match refresh(&app, &keys).await {
                Ok(()) => {
                    retry = None;
                    continue;
                }
                Err(e) => {
                    tracing::error!("re-signing the online metadata of {} failed: {e}", app.repo.dir.display());
                    // Back off: 5 s, doubling, at most the interval.
                    let next = retry.map_or(Duration::from_secs(5), |d| (d * 2).min(interval));
                    retry = Some(next);
                }
            }
        }
        let until_due = due.map(|d| Duration::from_secs((d - now).max(1) as u64));
        let wait = [Some(interval), until_due, retry].into_iter().flatten().min().unwrap_or(interval);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait.max(Duration::from_millis(500))) => {}
        }
    }
}

async fn refresh(app: &App, keys: &KeyDir) -> Result<(), String> {
    let now = app.now_ts();
    let (repo, keys, lifetimes) = (app.repo.clone(), keys.clone(), app.config.lifetimes);
    let rt = tokio::runtime::Handle::current();
    let r = tokio::task::spawn_blocking(move || {
        rt.block_on(edgeimg_release::rollout::refresh(&repo, &keys, &lifetimes, now))
    })
    .await
    .map_err(|e| e.to_string())?;
    app.metrics.refreshed(r.is_ok(), now.as_second());
    r.map_err(|e| edgeimg_release::chain(&e))?;
    let view = app.view.reload(&app.repo, now.as_second()).await;
    let ts = view.role("timestamp").map_or(0, |r| r.version);
    tracing::info!("re-signed the online metadata (timestamp version {ts})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo_view::RoleInfo;

    #[test]
    fn due_when_half_the_lifetime_is_gone() {
        let view = RepoView {
            roles: vec![
                RoleInfo { role: "timestamp", version: 3, expires: 1_000 + 86_400 },
                RoleInfo { role: "snapshot", version: 3, expires: 1_000 + 7 * 86_400 },
                RoleInfo { role: "rollout", version: 2, expires: 1_000 + 30 * 86_400 },
                RoleInfo { role: "targets", version: 1, expires: 10 },
            ],
            ..Default::default()
        };
        // Signed at 1000 with the default lifetimes: the timestamp is due 12 h later.
        assert_eq!(due_at(&view, &Lifetimes::default()), Some(1_000 + 43_200));
        assert_eq!(due_at(&RepoView::default(), &Lifetimes::default()), None);
    }
}
