//! The single writer: jobs queued by request handlers, committed in batches.

use std::sync::Arc;

use edgeimg_proto::attest::{verify_attestation, CredentialChallenge, TpmIdentity};
use edgeimg_proto::credential;
use edgeimg_proto::report::Report;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::model::{kind_name, DeviceStatus, Halt};
use super::{AuthCache, DbError, DeviceAuth};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 1024;

type Reply<T> = oneshot::Sender<Result<T, DbError>>;

pub(crate) enum Job {
    Enroll(EnrollRequest, Reply<EnrollOutcome>),
    Approve(ApproveRequest, Reply<ApproveOutcome>),
    Report(Box<ReportRequest>, Reply<ReportOutcome>),
    Halt(Halt, Reply<()>),
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct EnrollRequest {
    pub device_id: String,
    pub public_key: String,
    pub board: String,
    pub image: String,
    pub version: String,
    pub tpm: Option<String>,
    /// The device presented the fleet token (or the server approves everyone).
    pub approve: bool,
    pub now: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    Created(DeviceStatus),
    /// Enrolled before with the same key; `DeviceStatus` is its status now.
    Existing(DeviceStatus),
    /// Enrolled before with another key; the new key waits for an admin.
    KeyConflict,
}

pub(crate) struct ApproveRequest {
    pub id: String,
    pub expect_key: Option<String>,
    pub now: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    Approved {
        key_changed: bool,
        public_key: String,
    },
    NotFound,
    /// The key that would become active is not the one the admin expected.
    KeyMismatch {
        actual: String,
    },
}

pub(crate) struct ReportRequest {
    pub report: Report,
    /// The key the signature was verified with.
    pub key: Arc<str>,
    pub now: i64,
    /// Releases of the report's board and image with their expected PCR value, when the
    /// report carries an attestation.
    pub known: Vec<(String, [u8; 32])>,
    pub fresh: Fresh,
}

/// Random values a report may need: a nonce to hand out if the device should attest next,
/// or a secret and an ephemeral key for a credential challenge.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub nonce: [u8; 32],
    pub secret: [u8; 32],
    pub ephemeral: [u8; 32],
}

impl Fresh {
    pub fn random() -> Self {
        let mut f = Fresh { nonce: [0; 32], secret: [0; 32], ephemeral: [0; 32] };
        for b in [&mut f.nonce, &mut f.secret, &mut f.ephemeral] {
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, b);
        }
        f
    }
}

/// A nonce is good for this long after it was handed out (the device quotes at once).
pub const NONCE_TTL: i64 = 600;
/// A passing attestation of the running release is renewed after this long; a failing one
/// at the next report (reports are signed and paced by the device's poll interval).
pub const REATTEST_PASSED: i64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    Accepted {
        /// Quote this nonce with the TPM in the next report.
        attest_nonce: Option<String>,
        /// Bind the attestation key first: activate this credential.
        credential: Option<CredentialChallenge>,
        /// The verdict on the attestation this report carried: Ok(detail) or Err(reason).
        attestation: Option<Result<String, String>>,
    },
    /// `seq` is not above the last accepted one.
    Replayed {
        last: u64,
    },
    /// The device's key changed since the signature was checked.
    KeyChanged,
    NotApproved,
    Unknown,
}

enum Done {
    Enroll(EnrollOutcome),
    Approve(ApproveOutcome),
    Report(ReportOutcome),
    Halt,
}

/// The writer thread: take what is queued, run it in one transaction, answer.
pub(crate) fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, auth: AuthCache) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stop = false;
    while !stop {
        match rx.blocking_recv() {
            None | Some(Job::Shutdown) => break,
            Some(job) => batch.push(job),
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Job::Shutdown) => {
                    stop = true;
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, &mut batch, &auth);
    }
    tracing::debug!("fleet database writer stopped");
}

fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>, auth: &AuthCache) {
    match exec_in_tx(conn, batch) {
        Ok(done) => {
            for (job, d) in batch.drain(..).zip(done) {
                finish(job, Ok(d), auth);
            }
        }
        Err(e) => {
            // One failing statement spoils the whole transaction: redo the jobs one by one
            // so that only the faulty one fails.
            tracing::warn!("fleet database: batch of {} failed ({e}); retrying one by one", batch.len());
            for job in batch.drain(..) {
                let r = exec_in_tx(conn, std::slice::from_ref(&job)).map(|mut v| v.remove(0));
                finish(job, r.map_err(DbError::from), auth);
            }
        }
    }
}

fn exec_in_tx(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<Vec<Done>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done = Vec::with_capacity(jobs.len());
    for j in jobs {
        done.push(match j {
            Job::Enroll(r, _) => Done::Enroll(enroll(&tx, r)?),
            Job::Approve(r, _) => Done::Approve(approve(&tx, r)?),
            Job::Report(r, _) => Done::Report(report(&tx, r)?),
            Job::Halt(h, _) => {
                halt(&tx, h)?;
                Done::Halt
            }
            Job::Shutdown => Done::Halt,
        });
    }
    tx.commit()?;
    Ok(done)
}

/// Update the key cache (after the commit) and answer the caller.
fn finish(job: Job, done: Result<Done, DbError>, auth: &AuthCache) {
    let done = match done {
        Ok(d) => d,
        Err(e) => return job.fail(e),
    };
    let set = |id: &str, key: &str, status: DeviceStatus| {
        let mut m = auth.write().unwrap_or_else(|p| p.into_inner());
        m.insert(id.to_string(), DeviceAuth { public_key: Arc::from(key), status });
    };
    match (job, done) {
        (Job::Enroll(r, tx), Done::Enroll(o)) => {
            if let EnrollOutcome::Created(s) | EnrollOutcome::Existing(s) = o {
                set(&r.device_id, &r.public_key, s);
            }
            let _ = tx.send(Ok(o));
        }
        (Job::Approve(r, tx), Done::Approve(o)) => {
            if let ApproveOutcome::Approved { public_key, .. } = &o {
                set(&r.id, public_key, DeviceStatus::Approved);
            }
            let _ = tx.send(Ok(o));
        }
        (Job::Report(_, tx), Done::Report(o)) => {
            let _ = tx.send(Ok(o));
        }
        (Job::Halt(_, tx), Done::Halt) => {
            let _ = tx.send(Ok(()));
        }
        // Each job yields a result of its own kind; anything else is a bug, reported as such.
        (job, _) => job.fail(DbError::Mismatch),
    }
}

impl Job {
    fn fail(self, e: DbError) {
        match self {
            Job::Enroll(_, tx) => drop(tx.send(Err(e))),
            Job::Approve(_, tx) => drop(tx.send(Err(e))),
            Job::Report(_, tx) => drop(tx.send(Err(e))),
            Job::Halt(_, tx) => drop(tx.send(Err(e))),
            Job::Shutdown => {}
        }
    }
}

fn enroll(c: &Connection, r: &EnrollRequest) -> rusqlite::Result<EnrollOutcome> {
    let existing: Option<(String, String)> = c
        .prepare_cached("SELECT public_key, status FROM devices WHERE id = ?1")?
        .query_row(params![r.device_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match existing {
        None => {
            let status = if r.approve { DeviceStatus::Approved } else { DeviceStatus::Pending };
            c.prepare_cached(
                "INSERT INTO devices (id, public_key, status, board, image, version, tpm, enrolled_at, approved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                r.device_id,
                r.public_key,
                status.as_str(),
                r.board,
                r.image,
                r.version,
                r.tpm,
                r.now,
                r.approve.then_some(r.now),
            ])?;
            Ok(EnrollOutcome::Created(status))
        }
        Some((key, status)) if key == r.public_key => {
            let status = DeviceStatus::parse(&status);
            if r.tpm.is_some() {
                // First TPM identity of a device that enrolled without one; an existing
                // attestation key is never replaced by enrolling again.
                c.prepare_cached("UPDATE devices SET tpm = ?2 WHERE id = ?1 AND tpm IS NULL")?
                    .execute(params![r.device_id, r.tpm])?;
            }
            if status == DeviceStatus::Pending && r.approve {
                c.prepare_cached("UPDATE devices SET status = 'approved', approved_at = ?2 WHERE id = ?1")?
                    .execute(params![r.device_id, r.now])?;
                return Ok(EnrollOutcome::Existing(DeviceStatus::Approved));
            }
            Ok(EnrollOutcome::Existing(status))
        }
        Some(_) => {
            c.prepare_cached("UPDATE devices SET pending_key = ?2 WHERE id = ?1")?
                .execute(params![r.device_id, r.public_key])?;
            Ok(EnrollOutcome::KeyConflict)
        }
    }
}

fn approve(c: &Connection, r: &ApproveRequest) -> rusqlite::Result<ApproveOutcome> {
    let row: Option<(String, Option<String>)> = c
        .prepare_cached("SELECT public_key, pending_key FROM devices WHERE id = ?1")?
        .query_row(params![r.id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((key, pending)) = row else { return Ok(ApproveOutcome::NotFound) };
    let new_key = pending.clone().unwrap_or(key);
    if let Some(expect) = &r.expect_key {
        if *expect != new_key {
            return Ok(ApproveOutcome::KeyMismatch { actual: new_key });
        }
    }
    if pending.is_some() {
        // A new key is a new device state: its report sequence starts again.
        c.prepare_cached(
            "UPDATE devices SET public_key = pending_key, pending_key = NULL, status = 'approved',
                approved_at = ?2, last_seq = 0 WHERE id = ?1",
        )?
        .execute(params![r.id, r.now])?;
    } else {
        c.prepare_cached("UPDATE devices SET status = 'approved', approved_at = ?2 WHERE id = ?1")?
            .execute(params![r.id, r.now])?;
    }
    Ok(ApproveOutcome::Approved { key_changed: pending.is_some(), public_key: new_key })
}

fn report(c: &Connection, r: &ReportRequest) -> rusqlite::Result<ReportOutcome> {
    let rep = &r.report;
    let seq = rep.seq as i64; // checked by the handler: seq <= i64::MAX
    let health = serde_json::to_string(&rep.health).unwrap_or_else(|_| "[]".into());
    // The device's attestation columns come back with the update: no second query.
    let updated: Option<AttestRow> = c
        .prepare_cached(
            "UPDATE devices SET last_seq = ?2, last_seen = ?3, board = ?4, image = ?5, version = ?6, channel = ?7,
                slot = ?8, state = ?9, security_floor = ?10, health = ?11, last_error = ?12
             WHERE id = ?1 AND public_key = ?13 AND status = 'approved' AND last_seq < ?2
             RETURNING tpm, attest_nonce, attest_nonce_at, attest_result, attest_version, attest_at,
                ak_secret, ak_secret_at, ak_bound_at",
        )?
        .query_row(
            params![
                rep.device_id,
                seq,
                r.now,
                rep.board,
                rep.image,
                rep.version,
                rep.channel,
                rep.slot.letter(),
                rep.state,
                rep.security_floor.min(i64::MAX as u64) as i64,
                health,
                rep.last_error,
                &*r.key,
            ],
            |row| {
                Ok(AttestRow {
                    tpm: row.get(0)?,
                    nonce: row.get(1)?,
                    nonce_at: row.get(2)?,
                    result: row.get(3)?,
                    version: row.get(4)?,
                    at: row.get(5)?,
                    ak_secret: row.get(6)?,
                    ak_secret_at: row.get(7)?,
                    ak_bound_at: row.get(8)?,
                })
            },
        )
        .optional()?;
    let Some(attest_row) = updated else {
        let row: Option<(i64, String, String)> = c
            .prepare_cached("SELECT last_seq, public_key, status FROM devices WHERE id = ?1")?
            .query_row(params![rep.device_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        return Ok(match row {
            None => ReportOutcome::Unknown,
            Some((_, key, _)) if key != *r.key => ReportOutcome::KeyChanged,
            Some((_, _, status)) if status != "approved" => ReportOutcome::NotApproved,
            Some((last, _, _)) => ReportOutcome::Replayed { last: last.max(0) as u64 },
        });
    };
    if let Some(ev) = &rep.event {
        let kind = kind_name(ev.kind);
        c.prepare_cached(
            "INSERT INTO events (device_id, seq, received, sent, channel, board, image, version, kind, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            rep.device_id,
            seq,
            r.now,
            rep.sent,
            rep.channel,
            rep.board,
            ev.image,
            ev.version,
            kind,
            ev.detail
        ])?;
        c.prepare_cached(
            "INSERT INTO release_devices (channel, board, image, version, device_id, last_kind, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             ON CONFLICT (channel, board, image, version, device_id)
             DO UPDATE SET last_kind = excluded.last_kind, last_seen = excluded.last_seen",
        )?
        .execute(params![rep.channel, rep.board, ev.image, ev.version, rep.device_id, kind, r.now])?;
    }
    attest(c, r, attest_row)
}

/// A device's attestation columns, as the report's UPDATE returns them.
struct AttestRow {
    tpm: Option<String>,
    nonce: Option<String>,
    nonce_at: Option<i64>,
    result: Option<String>,
    version: Option<String>,
    at: Option<i64>,
    /// SHA-256 (hex) of the outstanding credential secret.
    ak_secret: Option<String>,
    ak_secret_at: Option<i64>,
    ak_bound_at: Option<i64>,
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A credential challenge for the device's AK, or why there can be none.
fn challenge(id: &TpmIdentity, fresh: &Fresh) -> Result<CredentialChallenge, String> {
    let bad = |what: &str| format!("the enrolled TPM identity has a malformed {what}");
    let ak_public = id.ak_public.as_deref().ok_or_else(|| {
        "the device enrolled no AK public area (its updater predates AK binding): it cannot prove its AK is in its TPM"
            .to_string()
    })?;
    let ak_public = hex::decode(ak_public).map_err(|_| bad("AK public area"))?;
    let ak = hex::decode(&id.ak).map_err(|_| bad("AK"))?;
    let ek = hex::decode(&id.ek).map_err(|_| bad("EK"))?;
    credential::check_ak_public(&ak_public, &ak).map_err(|e| e.to_string())?;
    let c = credential::make_credential(&ek, &credential::name(&ak_public), &fresh.secret, &fresh.ephemeral)
        .map_err(|e| e.to_string())?;
    Ok(CredentialChallenge { id_object: hex::encode(c.id_object), encrypted_secret: hex::encode(c.encrypted_secret) })
}

/// Judge the report's credential answer and attestation (if any) against what is on record,
/// and decide whether the device should bind its AK or attest next. In the report's
/// transaction: a nonce and a credential are each used once.
fn attest(c: &Connection, r: &ReportRequest, row: AttestRow) -> rusqlite::Result<ReportOutcome> {
    let rep = &r.report;
    let id = row.tpm.as_deref().and_then(|t| serde_json::from_str::<TpmIdentity>(t).ok());
    let ak = id.as_ref().map(|t| t.ak.clone());
    let mut bound = row.ak_bound_at.is_some();
    let record = |res: &str, detail: &str| -> rusqlite::Result<()> {
        c.prepare_cached(
            "UPDATE devices SET attest_result = ?2, attest_detail = ?3, attest_version = ?4, attest_at = ?5
             WHERE id = ?1",
        )?
        .execute(params![rep.device_id, res, detail, rep.version, r.now])?;
        Ok(())
    };
    let mut verdict = None;
    let mut failed_binding = false;
    if let Some(answer) = &rep.credential_secret {
        let v = match (&row.ak_secret, hex::decode(answer)) {
            (None, _) => {
                Err("no credential challenge is outstanding for this device (used or never issued)".to_string())
            }
            (Some(_), _) if row.ak_secret_at.unwrap_or(0) + NONCE_TTL < r.now => {
                Err(format!("the credential challenge expired (good for {NONCE_TTL} s)"))
            }
            (Some(want), Ok(got)) if sha256_hex(&got) == *want => Ok(()),
            _ => Err("the device could not recover the credential secret: its attestation key is not in the TPM of \
                      its enrolled endorsement key"
                .to_string()),
        };
        c.prepare_cached("UPDATE devices SET ak_secret = NULL, ak_secret_at = NULL WHERE id = ?1")?
            .execute(params![rep.device_id])?;
        match v {
            Ok(()) => {
                c.prepare_cached("UPDATE devices SET ak_bound_at = ?2 WHERE id = ?1")?
                    .execute(params![rep.device_id, r.now])?;
                bound = true;
            }
            Err(e) => {
                record("failed", &e)?;
                verdict = Some(Err(e));
                failed_binding = true;
            }
        }
    }
    if let Some(a) = &rep.attestation {
        let v = match (&ak, &row.nonce) {
            (None, _) => Err("the device enrolled no TPM attestation key".to_string()),
            (Some(_), _) if !bound => {
                Err("the attestation key is not bound to the TPM's endorsement key (credential not activated)".into())
            }
            (Some(_), None) => Err("no nonce is outstanding for this device (used or never issued)".to_string()),
            (Some(_), Some(_)) if row.nonce_at.unwrap_or(0) + NONCE_TTL < r.now => {
                Err(format!("the nonce expired (nonces are good for {NONCE_TTL} s)"))
            }
            (Some(ak), Some(n)) => verify_attestation(ak, n, a, &rep.version, &r.known)
                .map(|q| format!("{} {} (TPM reset count {})", rep.image, rep.version, q.reset_count))
                .map_err(|e| e.to_string()),
        };
        match &v {
            Ok(d) => record("passed", d)?,
            Err(e) => record("failed", e)?,
        }
        c.prepare_cached("UPDATE devices SET attest_nonce = NULL, attest_nonce_at = NULL WHERE id = ?1")?
            .execute(params![rep.device_id])?;
        verdict = Some(v);
    }
    // An AK not bound yet gets a credential challenge (unless one is outstanding and fresh,
    // or the answer in this report just failed: the next report asks again).
    let mut credential = None;
    if let (Some(id), false) = (&id, bound) {
        let outstanding = row.ak_secret.is_some()
            && rep.credential_secret.is_none()
            && row.ak_secret_at.unwrap_or(0) + NONCE_TTL >= r.now;
        if !outstanding && !failed_binding {
            match challenge(id, &r.fresh) {
                Ok(ch) => {
                    c.prepare_cached("UPDATE devices SET ak_secret = ?2, ak_secret_at = ?3 WHERE id = ?1")?
                        .execute(params![rep.device_id, sha256_hex(&r.fresh.secret), r.now])?;
                    credential = Some(ch);
                }
                Err(e) if row.result.as_deref() != Some("failed") => record("failed", &e)?,
                Err(_) => {}
            }
        }
    }
    // Ask for a quote when the AK is bound, this report carried none, and the running
    // release has no recent verdict.
    let fresh = match (&row.result, &row.version, row.at) {
        (Some(res), Some(v), Some(at)) => res == "passed" && *v == rep.version && at + REATTEST_PASSED > r.now,
        _ => false,
    };
    let attest_nonce = if ak.is_some() && bound && rep.attestation.is_none() && !fresh {
        let nonce = hex::encode(r.fresh.nonce);
        c.prepare_cached("UPDATE devices SET attest_nonce = ?2, attest_nonce_at = ?3 WHERE id = ?1")?
            .execute(params![rep.device_id, nonce, r.now])?;
        Some(nonce)
    } else {
        None
    };
    Ok(ReportOutcome::Accepted { attest_nonce, credential, attestation: verdict })
}

fn halt(c: &Connection, h: &Halt) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO halts (channel, board, image, version, at, tried, failed, reason, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (channel, board, image, version, at) DO NOTHING",
    )?
    .execute(params![
        h.release.channel,
        h.release.board,
        h.release.image,
        h.release.version,
        h.at,
        h.tried as i64,
        h.failed as i64,
        h.reason,
        h.outcome
    ])?;
    Ok(())
}
