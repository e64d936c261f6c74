//! Starting and stopping a server: open the database, read the repository, bind, spawn the
//! background tasks (repository watcher, auto-halt, refresh).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use edgeimg_release::{KeyDir, KeyName, Repo};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::{self, App, Clock};
use crate::config::Config;
use crate::db::{Db, DbError};
use crate::{halt, refresh};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("--keys {dir}: {key} is missing; the server needs rollout.pk8, snapshot.pk8 and timestamp.pk8 (the ONLINE keys only)")]
    MissingKey { dir: PathBuf, key: &'static str },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    app: Arc<App>,
    cancel: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Start with the system clock.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with_clock(config, jiff::Timestamp::now).await
    }

    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<Self, StartError> {
        let keys = match &config.keys {
            None => None,
            Some(dir) => {
                for k in [KeyName::Rollout, KeyName::Snapshot, KeyName::Timestamp] {
                    if !dir.join(k.file()).is_file() {
                        return Err(StartError::MissingKey { dir: dir.clone(), key: k.file() });
                    }
                }
                if dir.join(KeyName::Targets.file()).exists() {
                    tracing::warn!(
                        "{} holds targets.pk8, an OFFLINE key: the update server needs only the online keys",
                        dir.display()
                    );
                }
                Some(KeyDir::new(dir))
            }
        };
        let now = clock().as_second();
        let db = Db::open(&config.db_path(), now)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;

        let repo = Repo::new(&config.repo);
        if !repo.exists() {
            tracing::warn!(
                "{} holds no TUF repository yet (run `edgeimg publish`); serving it when it appears",
                repo.dir.display()
            );
        }
        let app = Arc::new(App {
            repo,
            keys,
            db,
            view: Default::default(),
            metrics: Default::default(),
            halt: Default::default(),
            clock,
            config,
        });
        let view = app.view.reload(&app.repo, now).await;
        tracing::info!(
            "serving {} on http://{addr}: {} channels, {} releases; fleet database {}",
            app.repo.dir.display(),
            view.channels.len(),
            view.releases.len(),
            app.db.path().display()
        );
        if app.keys.is_none() {
            tracing::warn!("no --keys: auto-halt and metadata refresh are OFF (failing rollouts are only reported)");
        }
        if app.config.enroll_token.is_none() && !app.config.auto_approve {
            tracing::info!("no enrollment token: new devices wait for an admin's approval");
        }

        let cancel = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(watch_repo(app.clone(), cancel.clone())),
            tokio::spawn(halt::run(app.clone(), cancel.clone())),
        ];
        if let Some(keys) = app.keys.clone() {
            tasks.push(tokio::spawn(refresh::run(app.clone(), keys, cancel.clone())));
        }
        let stop = cancel.clone();
        let router = app::router(app.clone());
        let http = tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }).await
        });
        Ok(Self { addr, app, cancel, http, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stop accepting, let requests in flight finish, flush the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let served = self.http.await;
        for t in self.tasks {
            let _ = t.await;
        }
        self.app.db.close().await;
        served??;
        Ok(())
    }

    /// Run until `signal` resolves, then shut down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {}
            _ = self.cancel.cancelled() => {}
        }
        self.shutdown().await
    }
}

/// Pick up repository changes made by others (`edgeimg publish`, `edgeimg rollout`).
async fn watch_repo(app: Arc<App>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(app.config.repo_poll) => {}
        }
        app.view.reload_if_changed(&app.repo, app.now()).await;
    }
}
