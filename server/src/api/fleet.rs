//! The fleet view (`GET /api/v1/devices`, `/devices/{id}`, `/channels`, `/releases`) and the
//! admin write API (`POST /api/v1/devices/{id}/approve`, bearer token).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeimg_proto::channel::Channel;
use edgeimg_proto::report::valid_device_id;
use serde::{Deserialize, Serialize};

use super::{bearer, read_body, ApiError};
use crate::app::App;
use crate::db::{self, ApproveOutcome, Device, EventRow, ReleaseKey, ReleaseStats};
use crate::fleet::{summaries, BoardSummary};
use crate::repo_view::{Release, RoleInfo};

#[derive(Serialize)]
struct Devices {
    devices: Vec<Device>,
}

pub async fn devices(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let devices = app.db.read(db::devices).await?;
    Ok(Json(Devices { devices }).into_response())
}

#[derive(Serialize)]
struct DeviceDetail {
    #[serde(flatten)]
    device: Device,
    /// Newest first (at most 100).
    events: Vec<EventRow>,
}

pub async fn device(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if !valid_device_id(&id) {
        return Err(ApiError::bad_request("bad-device-id", "device ids are 1-64 lowercase letters, digits and '-'"));
    }
    let q = id.clone();
    let (device, events) = app.db.read(move |c| Ok((db::device(c, &q)?, db::device_events(c, &q, 100)?))).await?;
    let device = device.ok_or_else(|| ApiError::not_found(format!("no device {id}")))?;
    Ok(Json(DeviceDetail { device, events }).into_response())
}

#[derive(Serialize)]
struct ChannelInfo {
    name: String,
    /// The channel file as the repository has it (signed by the rollout role).
    channel: Channel,
    /// Per board: rollout now, known and eligible devices, release outcomes.
    boards: Vec<BoardSummary>,
}

#[derive(Serialize)]
struct Channels {
    channels: Vec<ChannelInfo>,
    repository_error: Option<String>,
    metadata: Vec<RoleInfo>,
}

pub async fn channels(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let view = app.view.get();
    let (devices, stats) = app.db.read(|c| Ok((db::devices(c)?, db::release_stats(c)?))).await?;
    let all = summaries(&view, &devices, &stats, app.now());
    let channels = view
        .channels
        .iter()
        .map(|(name, ch)| ChannelInfo {
            name: name.clone(),
            channel: ch.clone(),
            boards: all.iter().filter(|b| b.channel == *name).cloned().collect(),
        })
        .collect();
    Ok(Json(Channels { channels, repository_error: view.error.clone(), metadata: view.roles.clone() }).into_response())
}

#[derive(Serialize)]
struct ReleaseOnChannel {
    channel: String,
    #[serde(flatten)]
    stats: ReleaseStats,
}

#[derive(Serialize)]
struct ReleaseInfo {
    #[serde(flatten)]
    release: Release,
    /// Outcomes reported by devices, per channel.
    channels: Vec<ReleaseOnChannel>,
}

#[derive(Serialize)]
struct Releases {
    releases: Vec<ReleaseInfo>,
}

/// Outcomes of one release on every channel devices reported it from.
pub fn per_channel(stats: &BTreeMap<ReleaseKey, ReleaseStats>, r: &Release) -> Vec<(String, ReleaseStats)> {
    stats
        .iter()
        .filter(|(k, _)| k.board == r.board && k.image == r.image && k.version == r.version)
        .map(|(k, s)| (k.channel.clone(), s.clone()))
        .collect()
}

pub async fn releases(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let view = app.view.get();
    let stats = app.db.read(db::release_stats).await?;
    let releases = view
        .releases
        .iter()
        .map(|r| ReleaseInfo {
            release: r.clone(),
            channels: per_channel(&stats, r)
                .into_iter()
                .map(|(channel, stats)| ReleaseOnChannel { channel, stats })
                .collect(),
        })
        .collect();
    Ok(Json(Releases { releases }).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// Approve only if this is the key that becomes active (hex).
    #[serde(default)]
    public_key: Option<String>,
}

#[derive(Serialize)]
struct Approved {
    device_id: String,
    status: db::DeviceStatus,
    public_key: String,
    key_changed: bool,
}

/// Check the admin bearer token.
pub fn admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.config.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "the admin API is off: start the server with --admin-token-file (or $EDGEIMG_ADMIN_TOKEN)",
        ));
    };
    match bearer(headers) {
        Some(t) if token.matches(t) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("bad-admin-token", "the admin token is not valid")),
        None => {
            Err(ApiError::unauthorized("bad-admin-token", "send the admin token as `Authorization: Bearer <token>`"))
        }
    }
}

pub async fn approve(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin(&app, &headers)?;
    let bytes = read_body(&headers, body).await?;
    let req: ApproveBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ApproveBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("malformed", format!("bad approval: {e}")))?
    };
    if !valid_device_id(&id) {
        return Err(ApiError::bad_request("bad-device-id", "device ids are 1-64 lowercase letters, digits and '-'"));
    }
    match app.db.approve(&id, req.public_key.map(|k| k.to_ascii_lowercase()), app.now()).await? {
        ApproveOutcome::Approved { key_changed, public_key } => {
            tracing::info!("device {id} approved{}", if key_changed { " with its new key" } else { "" });
            Ok(Json(Approved { device_id: id, status: db::DeviceStatus::Approved, public_key, key_changed })
                .into_response())
        }
        ApproveOutcome::NotFound => Err(ApiError::not_found(format!("no device {id}"))),
        ApproveOutcome::KeyMismatch { actual } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "key-mismatch",
            format!("device {id} would be approved with key {actual}, not the one given"),
        )),
    }
}
