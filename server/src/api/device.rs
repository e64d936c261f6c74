//! What devices call: `POST /api/v1/enroll` and `POST /api/v1/report`.
//!
//! Both bodies are signed with the device's own ed25519 key (headers `edgeimg-device` and
//! `edgeimg-signature: ed25519=<base64>` over the exact body bytes). For enrollment that
//! proves the device holds the key it enrolls; for reports it is the authentication.
//! Checks run cheapest and least revealing first, and nothing is written until all pass.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edgeimg_proto::channel::validate_name;
use edgeimg_proto::report::{
    valid_device_id, verify, Enrollment, EventKind, Report, ReportReply, SignatureError, HEADER_DEVICE,
    HEADER_SIGNATURE,
};
use serde::Serialize;

use super::{read_body, ApiError};
use crate::app::App;
use crate::db::{DeviceStatus, EnrollOutcome, EnrollRequest, ReleaseKey, ReportOutcome};

/// Longest board, image, version or state name accepted.
const MAX_NAME: usize = 128;

#[derive(Debug, Serialize)]
pub struct EnrollReply {
    pub device_id: String,
    pub status: DeviceStatus,
    pub message: String,
}

fn signed_headers(h: &HeaderMap) -> Result<(&str, &str), ApiError> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let device = get(HEADER_DEVICE)
        .ok_or_else(|| ApiError::unauthorized("unsigned", format!("the {HEADER_DEVICE} header is missing")))?;
    let sig = get(HEADER_SIGNATURE).ok_or_else(|| {
        ApiError::unauthorized("unsigned", format!("the {HEADER_SIGNATURE} header is missing: sign the body"))
    })?;
    if !valid_device_id(device) {
        return Err(ApiError::bad_request(
            "bad-device-id",
            "device ids are 1-64 lowercase letters, digits and '-'".to_string(),
        ));
    }
    Ok((device, sig))
}

fn name(what: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > MAX_NAME || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid", format!("{what} must be 1-{MAX_NAME} printable characters")));
    }
    Ok(())
}

pub async fn enroll(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match enroll_inner(&app, &headers, body).await {
        Ok((status, result, reply)) => {
            app.metrics.enrollment(result);
            (status, Json(reply)).into_response()
        }
        Err(e) => {
            app.metrics.enrollment(e.code);
            e.into_response()
        }
    }
}

async fn enroll_inner(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, &'static str, EnrollReply), ApiError> {
    let bytes = read_body(headers, body).await?;
    let (device, sig) = signed_headers(headers)?;
    let e: Enrollment = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad_request("malformed", format!("not an enrollment: {err}")))?;
    if e.device_id != device {
        return Err(ApiError::bad_request(
            "device-mismatch",
            format!("the body is for device {} but the {HEADER_DEVICE} header says {device}", e.device_id),
        ));
    }
    match verify(&e.public_key, &bytes, sig) {
        Ok(()) => {}
        Err(SignatureError::Key) => {
            return Err(ApiError::bad_request("bad-key", "public_key must be an ed25519 public key in hex (64 digits)"))
        }
        Err(err) => {
            return Err(ApiError::unauthorized(
                "bad-signature",
                format!("{err}: sign the enrollment body with the key being enrolled"),
            ))
        }
    }
    name("board", &e.board)?;
    name("image", &e.image)?;
    name("version", &e.version)?;
    let approve = match (&e.token, &app.config.enroll_token) {
        (Some(t), Some(s)) if s.matches(t) => true,
        (Some(_), Some(_)) => return Err(ApiError::unauthorized("bad-token", "the enrollment token is not valid")),
        (Some(_), None) => {
            return Err(ApiError::unauthorized(
                "bad-token",
                "this server takes no enrollment tokens: enroll without one and ask an admin to approve the device",
            ))
        }
        (None, _) => app.config.auto_approve,
    };
    let req = EnrollRequest {
        device_id: e.device_id.clone(),
        public_key: e.public_key.to_ascii_lowercase(),
        board: e.board,
        image: e.image,
        version: e.version,
        tpm: e.tpm.map(|t| serde_json::to_string(&t).unwrap_or_default()),
        approve,
        now: app.now(),
    };
    let id = e.device_id;
    let approve_hint = format!("an admin approves it with POST /api/v1/devices/{id}/approve");
    let (status, result, reply) = match app.db.enroll(req).await? {
        EnrollOutcome::Created(DeviceStatus::Approved) => {
            tracing::info!("device {id} enrolled and approved");
            (StatusCode::CREATED, "approved", (DeviceStatus::Approved, "enrolled and approved".to_string()))
        }
        EnrollOutcome::Created(DeviceStatus::Pending) => {
            tracing::info!("device {id} enrolled, waiting for approval");
            (
                StatusCode::ACCEPTED,
                "pending",
                (DeviceStatus::Pending, format!("enrolled; waiting for approval: {approve_hint}")),
            )
        }
        EnrollOutcome::Existing(s) => {
            let msg = match s {
                DeviceStatus::Approved => "already enrolled with this key; approved".to_string(),
                DeviceStatus::Pending => {
                    format!("already enrolled with this key; waiting for approval: {approve_hint}")
                }
            };
            (StatusCode::OK, "existing", (s, msg))
        }
        EnrollOutcome::KeyConflict => {
            tracing::warn!("device {id} enrolled again with another key; the new key waits for an admin");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "key-conflict",
                format!("device {id} is enrolled with another key; the new key is kept until {approve_hint}"),
            ));
        }
    };
    Ok((status, result, EnrollReply { device_id: id, status: reply.0, message: reply.1 }))
}

pub async fn report(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match report_inner(&app, &headers, body).await {
        Ok(reply) => {
            app.metrics.report_accepted();
            Json(reply).into_response()
        }
        Err(e) => {
            app.metrics.report_rejected(e.code);
            tracing::debug!("report refused: {e}");
            e.into_response()
        }
    }
}

fn validate(r: &Report) -> Result<(), ApiError> {
    if r.seq == 0 || r.seq > i64::MAX as u64 {
        return Err(ApiError::bad_request("invalid", format!("seq must be between 1 and {}", i64::MAX)));
    }
    validate_name(&r.channel).map_err(|m| ApiError::bad_request("invalid", m))?;
    name("board", &r.board)?;
    name("image", &r.image)?;
    name("version", &r.version)?;
    name("state", &r.state)?;
    if let Some(ev) = &r.event {
        name("event image", &ev.image)?;
        name("event version", &ev.version)?;
    }
    Ok(())
}

async fn report_inner(app: &App, headers: &HeaderMap, body: Body) -> Result<ReportReply, ApiError> {
    let bytes = read_body(headers, body).await?;
    let (device, sig) = signed_headers(headers)?;
    let auth = app.db.auth(device).ok_or_else(|| {
        ApiError::unauthorized("unknown-device", format!("device {device} is not enrolled: POST /api/v1/enroll first"))
    })?;
    verify(&auth.public_key, &bytes, sig).map_err(|e| {
        ApiError::unauthorized("bad-signature", format!("{e} (device {device} signs with its enrolled key)"))
    })?;
    let pending = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "pending-approval",
            format!("device {device} is waiting for an admin's approval"),
        )
    };
    if auth.status != DeviceStatus::Approved {
        return Err(pending());
    }
    let report: Report =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request("malformed", format!("not a report: {e}")))?;
    if report.device_id != device {
        return Err(ApiError::bad_request(
            "device-mismatch",
            format!("the report is for device {} but the {HEADER_DEVICE} header says {device}", report.device_id),
        ));
    }
    validate(&report)?;
    let failure =
        report.event.as_ref().filter(|e| matches!(e.kind, EventKind::RolledBack | EventKind::Failed)).map(|e| {
            ReleaseKey {
                channel: report.channel.clone(),
                board: report.board.clone(),
                image: e.image.clone(),
                version: e.version.clone(),
            }
        });
    let seq = report.seq;
    let known = if report.attestation.is_some() {
        crate::attest::known_releases(&app.view.get(), &report.board, &report.image)
    } else {
        Vec::new()
    };
    let fresh = crate::db::Fresh::random();
    let (attest_nonce, credential) = match app.db.report(report, auth.public_key, app.now(), known, fresh).await? {
        ReportOutcome::Accepted { attest_nonce, credential, attestation } => {
            match attestation {
                Some(Ok(what)) => {
                    app.metrics.attestation("passed");
                    tracing::info!("device {device} attested: {what}");
                }
                Some(Err(why)) => {
                    app.metrics.attestation("failed");
                    tracing::warn!("device {device} failed attestation: {why}");
                }
                None => {}
            }
            (attest_nonce, credential)
        }
        ReportOutcome::Replayed { last } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "replayed",
                format!("replayed or out of order: seq {seq} is not above the last accepted {last}"),
            ))
        }
        ReportOutcome::KeyChanged => {
            return Err(ApiError::unauthorized("bad-signature", format!("device {device} has a new key now")))
        }
        ReportOutcome::NotApproved => return Err(pending()),
        ReportOutcome::Unknown => {
            return Err(ApiError::unauthorized("unknown-device", format!("device {device} is not enrolled")))
        }
    };
    if let Some(k) = failure {
        app.halt.check(k);
    }
    Ok(ReportReply { attest_nonce, credential })
}
