//! Queries for the API, the dashboard, metrics and auto-halt (on the read connection).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::model::*;
use super::DeviceAuth;

const DEVICE_COLUMNS: &str = "id, status, public_key, pending_key, board, image, version, channel, slot, state, \
     security_floor, last_seq, last_seen, last_error, health, enrolled_at, approved_at, tpm, attest_result, \
     attest_detail, attest_version, attest_at, ak_bound_at";

fn device_row(r: &Row<'_>) -> rusqlite::Result<Device> {
    let health: Option<String> = r.get(14)?;
    let tpm: Option<String> = r.get(17)?;
    Ok(Device {
        id: r.get(0)?,
        status: DeviceStatus::parse(&r.get::<_, String>(1)?),
        public_key: r.get(2)?,
        pending_key: r.get(3)?,
        board: r.get(4)?,
        image: r.get(5)?,
        version: r.get(6)?,
        channel: r.get(7)?,
        slot: r.get(8)?,
        state: r.get(9)?,
        security_floor: r.get::<_, i64>(10)?.max(0) as u64,
        last_seq: r.get::<_, i64>(11)?.max(0) as u64,
        last_seen: r.get(12)?,
        last_error: r.get(13)?,
        health: health.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
        enrolled_at: r.get(15)?,
        approved_at: r.get(16)?,
        tpm: tpm.is_some(),
        ak_bound_at: r.get(22)?,
        ek_certificate: tpm
            .and_then(|t| serde_json::from_str::<edgeimg_proto::attest::TpmIdentity>(&t).ok())
            .is_some_and(|t| t.ek_cert.is_some()),
        attestation: match r.get::<_, Option<String>>(18)? {
            Some(result) => Some(AttestationState {
                result,
                detail: r.get::<_, Option<String>>(19)?.unwrap_or_default(),
                version: r.get::<_, Option<String>>(20)?.unwrap_or_default(),
                at: r.get::<_, Option<i64>>(21)?.unwrap_or(0),
            }),
            None => None,
        },
    })
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        device_id: r.get(0)?,
        seq: r.get::<_, i64>(1)?.max(0) as u64,
        received: r.get(2)?,
        sent: r.get(3)?,
        channel: r.get(4)?,
        board: r.get(5)?,
        image: r.get(6)?,
        version: r.get(7)?,
        kind: r.get(8)?,
        detail: r.get(9)?,
    })
}

const EVENT_COLUMNS: &str = "device_id, seq, received, sent, channel, board, image, version, kind, detail";

/// Every device's key and status (loaded once at start into memory).
pub(crate) fn device_keys(c: &Connection) -> rusqlite::Result<HashMap<String, DeviceAuth>> {
    let mut st = c.prepare("SELECT id, public_key, status FROM devices")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            DeviceAuth {
                public_key: Arc::from(r.get::<_, String>(1)?),
                status: DeviceStatus::parse(&r.get::<_, String>(2)?),
            },
        ))
    })?;
    rows.collect()
}

pub fn devices(c: &Connection) -> rusqlite::Result<Vec<Device>> {
    let mut st = c.prepare_cached(&format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY board, id"))?;
    let rows = st.query_map([], device_row)?;
    rows.collect()
}

pub fn device(c: &Connection, id: &str) -> rusqlite::Result<Option<Device>> {
    c.prepare_cached(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"))?
        .query_row(params![id], device_row)
        .optional()
}

/// A device's newest events first.
pub fn device_events(c: &Connection, id: &str, limit: u32) -> rusqlite::Result<Vec<EventRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE device_id = ?1 ORDER BY seq DESC LIMIT ?2"
    ))?;
    let rows = st.query_map(params![id, limit], event_row)?;
    rows.collect()
}

/// The fleet's newest events first.
pub fn recent_events(c: &Connection, limit: u32) -> rusqlite::Result<Vec<EventRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events ORDER BY received DESC, device_id, seq DESC LIMIT ?1"
    ))?;
    let rows = st.query_map(params![limit], event_row)?;
    rows.collect()
}

/// Outcome counts for every release devices have reported about.
pub fn release_stats(c: &Connection) -> rusqlite::Result<BTreeMap<ReleaseKey, ReleaseStats>> {
    let mut st = c.prepare_cached(
        "SELECT channel, board, image, version, last_kind, COUNT(*) FROM release_devices
         GROUP BY channel, board, image, version, last_kind",
    )?;
    let mut out: BTreeMap<ReleaseKey, ReleaseStats> = BTreeMap::new();
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let key = ReleaseKey { channel: r.get(0)?, board: r.get(1)?, image: r.get(2)?, version: r.get(3)? };
        let kind: String = r.get(4)?;
        out.entry(key).or_default().add(&kind, r.get::<_, i64>(5)?.max(0) as u64);
    }
    Ok(out)
}

/// Outcome counts for one release (what auto-halt decides on).
pub fn release_stat(c: &Connection, k: &ReleaseKey) -> rusqlite::Result<ReleaseStats> {
    let mut st = c.prepare_cached(
        "SELECT last_kind, COUNT(*) FROM release_devices
         WHERE channel = ?1 AND board = ?2 AND image = ?3 AND version = ?4 GROUP BY last_kind",
    )?;
    let mut s = ReleaseStats::default();
    let mut rows = st.query(params![k.channel, k.board, k.image, k.version])?;
    while let Some(r) = rows.next()? {
        s.add(&r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64);
    }
    Ok(s)
}

pub fn halts(c: &Connection, limit: u32) -> rusqlite::Result<Vec<Halt>> {
    let mut st = c.prepare_cached(
        "SELECT channel, board, image, version, at, tried, failed, reason, outcome FROM halts
         ORDER BY at DESC LIMIT ?1",
    )?;
    let rows = st.query_map(params![limit], |r| {
        Ok(Halt {
            release: ReleaseKey { channel: r.get(0)?, board: r.get(1)?, image: r.get(2)?, version: r.get(3)? },
            at: r.get(4)?,
            tried: r.get::<_, i64>(5)?.max(0) as u64,
            failed: r.get::<_, i64>(6)?.max(0) as u64,
            reason: r.get(7)?,
            outcome: r.get(8)?,
        })
    })?;
    rows.collect()
}

pub fn device_counts(c: &Connection) -> rusqlite::Result<Vec<DeviceCount>> {
    let mut st = c.prepare_cached(
        "SELECT board, version, COALESCE(state, ''), status, COUNT(*) FROM devices
         GROUP BY board, version, COALESCE(state, ''), status ORDER BY board, version",
    )?;
    let rows = st.query_map([], |r| {
        Ok(DeviceCount {
            board: r.get(0)?,
            version: r.get(1)?,
            state: r.get(2)?,
            status: DeviceStatus::parse(&r.get::<_, String>(3)?),
            count: r.get::<_, i64>(4)?.max(0) as u64,
        })
    })?;
    rows.collect()
}
