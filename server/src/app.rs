//! The shared state of a running server and its routes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edgeimg_release::{KeyDir, Repo};

use crate::api::{self, ApiError};
use crate::config::Config;
use crate::db::{self, Db};
use crate::halt::HaltQueue;
use crate::metrics::{self, Metrics};
use crate::repo_view::ViewCell;
use crate::{dashboard, files, fleet};

/// The clock, passed in so tests can move it.
pub type Clock = fn() -> jiff::Timestamp;

pub struct App {
    pub config: Config,
    pub repo: Repo,
    /// The online keys, if the server holds them (auto-halt and refresh need them).
    pub keys: Option<KeyDir>,
    pub db: Db,
    pub view: ViewCell,
    pub metrics: Metrics,
    pub halt: HaltQueue,
    pub clock: Clock,
}

impl App {
    pub fn now_ts(&self) -> jiff::Timestamp {
        (self.clock)()
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_ts().as_second()
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_page))
        .route("/tuf/metadata/{file}", get(files::metadata))
        .route("/tuf/targets/{file}", get(files::targets))
        .route("/api/v1/enroll", post(api::device::enroll))
        .route("/api/v1/report", post(api::device::report))
        .route("/api/v1/devices", get(api::fleet::devices))
        .route("/api/v1/devices/{id}", get(api::fleet::device))
        .route("/api/v1/devices/{id}/approve", post(api::fleet::approve))
        .route("/api/v1/channels", get(api::fleet::channels))
        .route("/api/v1/releases", get(api::fleet::releases))
        .fallback(|| async { ApiError::not_found("no such endpoint (see docs/server.md)") })
        .with_state(app)
}

async fn metrics_page(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let view = app.view.get();
    let (counts, releases, devices) =
        app.db.read(|c| Ok((db::device_counts(c)?, db::release_stats(c)?, db::devices(c)?))).await?;
    let now = app.now();
    let boards = fleet::summaries(&view, &devices, &releases, now);
    let text = metrics::render(&metrics::Snapshot {
        metrics: &app.metrics,
        view: &view,
        devices: &counts,
        releases: &releases,
        boards: &boards,
        online_keys: app.keys.is_some(),
        now,
    });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
