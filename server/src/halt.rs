//! Auto-halt: pause a channel by itself when too many devices fail its release.
//!
//! A failure report (rolled back or failed) queues a check of that (channel, board, image,
//! version); a background task runs the checks, so reports stay fast and a burst of
//! failures for one release costs one check. The check reads the channel fresh from the
//! repository: if its entry for the board is still that release and not paused, and at
//! least `halt.min_devices` devices tried the release on the channel while more than
//! `halt.max_failures` of them last reported a failure, the channel is paused with the
//! online rollout key (`edgeimg_release::rollout::apply`, which locks the repository
//! against a concurrent `edgeimg rollout`). Every halt is logged, counted and recorded.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use edgeimg_release::rollout::{self, Change};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::db::{self, Halt, ReleaseKey};

#[derive(Default)]
pub struct HaltQueue {
    pending: Mutex<BTreeSet<ReleaseKey>>,
    wake: Notify,
    /// Halts that could not be applied (no keys): warn and record once each.
    reported: Mutex<HashSet<ReleaseKey>>,
}

impl HaltQueue {
    /// Queue a check of a release after a failure report.
    pub fn check(&self, k: ReleaseKey) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(k);
        self.wake.notify_one();
    }

    fn take(&self) -> BTreeSet<ReleaseKey> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The background task.
pub async fn run(app: Arc<App>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = app.halt.wake.notified() => {}
        }
        for k in app.halt.take() {
            if let Err(e) = check(&app, &k).await {
                tracing::error!(
                    "auto-halt check of {} {} {} on channel {}: {e}",
                    k.image,
                    k.version,
                    k.board,
                    k.channel
                );
            }
        }
    }
}

async fn check(app: &App, k: &ReleaseKey) -> Result<(), String> {
    let channel = rollout::channel(&app.repo, &k.channel).await.map_err(|e| edgeimg_release::chain(&e))?;
    let Some(entry) = channel.and_then(|c| c.boards.get(&k.board).cloned()) else { return Ok(()) };
    if entry.image != k.image || entry.version != k.version || entry.paused {
        return Ok(());
    }
    let q = k.clone();
    let stats = app.db.read(move |c| db::release_stat(c, &q)).await.map_err(|e| e.to_string())?;
    let (tried, failed) = (stats.tried, stats.failures());
    if tried < u64::from(entry.halt.min_devices) || failed <= u64::from(entry.halt.max_failures) {
        tracing::debug!("auto-halt: {failed} of {tried} failed {} on {}: below the threshold", k.version, k.channel);
        return Ok(());
    }
    let reason = format!("auto-halt: {failed} of {tried} devices failed {}", k.version);
    let now = app.now_ts();
    let outcome = match &app.keys {
        None => {
            if !app.halt.reported.lock().unwrap_or_else(|p| p.into_inner()).insert(k.clone()) {
                return Ok(());
            }
            tracing::warn!(
                "{reason} on channel {} ({}), but the server has no online keys (--keys): pause it by hand with \
                 `edgeimg rollout {} --board {} --pause`",
                k.channel,
                k.board,
                k.channel,
                k.board
            );
            "no-keys".to_string()
        }
        Some(keys) => {
            let change = Change {
                channel: k.channel.clone(),
                board: k.board.clone(),
                pause: Some(true),
                reason: Some(reason.clone()),
                ..Default::default()
            };
            let (repo, keys, lifetimes) = (app.repo.clone(), keys.clone(), app.config.lifetimes);
            let rt = tokio::runtime::Handle::current();
            // The repository lock is a blocking flock: keep it off the async threads.
            let applied = tokio::task::spawn_blocking(move || {
                rt.block_on(rollout::apply(&repo, &keys, &change, &lifetimes, now))
            })
            .await
            .map_err(|e| e.to_string())?;
            match applied {
                Ok(_) => {
                    app.metrics.auto_halt();
                    tracing::warn!("{reason}: paused channel {} for {}", k.channel, k.board);
                    "paused".to_string()
                }
                Err(e) => {
                    let e = edgeimg_release::chain(&e);
                    tracing::error!("{reason}, but pausing channel {} failed: {e}", k.channel);
                    format!("error: {e}")
                }
            }
        }
    };
    let halt = Halt { release: k.clone(), at: now.as_second(), tried, failed, reason, outcome };
    app.db.record_halt(halt).await.map_err(|e| e.to_string())?;
    app.view.reload(&app.repo, now.as_second()).await;
    Ok(())
}
