//! The fleet database: devices, their reports and events, per-release outcomes, halts.
//!
//! Everything SQL lives under this module; the rest of the server calls typed methods.
//! SQLite (embedded, WAL, `synchronous=NORMAL`) with one writer: a dedicated thread owns
//! the write connection and commits whatever jobs are queued in one transaction (group
//! commit), so thousands of reports a second cost a handful of transactions. Reads use a
//! separate connection and never wait for the writer (WAL).
//!
//! Device keys are also kept in memory (`auth`) so that checking a report's signature needs
//! no query; the writer updates that cache after each commit, in commit order, and every
//! report write is conditional on the key it was verified with, so a stale cache entry can
//! never let a report through.

mod model;
mod read;
mod schema;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

pub use model::*;
pub use read::*;
pub use write::{ApproveOutcome, EnrollOutcome, EnrollRequest, Fresh, ReportOutcome};

use write::Job;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("fleet database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("fleet database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("fleet database directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(
        "the fleet database has schema version {found}, newer than this server knows ({known}): run a newer edgeimg"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("the fleet database writer has stopped")]
    WriterGone,
    #[error("the fleet database writer answered a job with the result of another kind (a bug)")]
    Mismatch,
}

/// What the report path needs to know about a device, from memory.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub public_key: Arc<str>,
    pub status: DeviceStatus,
}

pub(crate) type AuthCache = Arc<RwLock<HashMap<String, DeviceAuth>>>;

pub struct Db {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    auth: AuthCache,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn open_conn(path: &Path) -> Result<Connection, DbError> {
    let open = |e| DbError::Open { path: path.into(), source: e };
    let conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(open)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(open)?;
    Ok(conn)
}

impl Db {
    /// Open (or create) the database at `path` and bring its schema up to date.
    pub fn open(path: &Path, now: i64) -> Result<Self, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Dir { path: dir.into(), source })?;
        }
        let mut writer = open_conn(path)?;
        schema::migrate(&mut writer, now)?;
        let reader = open_conn(path)?;
        reader.pragma_update(None, "query_only", "ON")?;

        let auth: AuthCache = Arc::new(RwLock::new(read::device_keys(&reader)?));
        let (tx, rx) = mpsc::channel(8192);
        let cache = auth.clone();
        let handle = std::thread::Builder::new()
            .name("fleet-db-writer".into())
            .spawn(move || write::writer_loop(writer, rx, cache))
            .map_err(|source| DbError::Dir { path: path.into(), source })?;
        Ok(Self {
            path: path.into(),
            jobs: tx,
            reader: Arc::new(Mutex::new(reader)),
            auth,
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's key and status, without touching the database.
    pub fn auth(&self, id: &str) -> Option<DeviceAuth> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, DbError>>) -> Job) -> Result<T, DbError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(make(tx)).await.map_err(|_| DbError::WriterGone)?;
        rx.await.map_err(|_| DbError::WriterGone)?
    }

    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollOutcome, DbError> {
        self.submit(|tx| Job::Enroll(req, tx)).await
    }

    /// Approve a device (and the new key it enrolled with, if any). `expect_key`: approve
    /// only if that is the key that would become active.
    pub async fn approve(&self, id: &str, expect_key: Option<String>, now: i64) -> Result<ApproveOutcome, DbError> {
        let req = write::ApproveRequest { id: id.into(), expect_key, now };
        self.submit(|tx| Job::Approve(req, tx)).await
    }

    /// Store a verified report (state and event) if its sequence number is new and the
    /// device still has the key it was verified with.
    /// `known`: expected PCR values of the board's releases (needed when the report carries
    /// an attestation); `fresh`: random values for a nonce or a credential challenge.
    pub async fn report(
        &self,
        report: edgeimg_proto::report::Report,
        key: Arc<str>,
        now: i64,
        known: Vec<(String, [u8; 32])>,
        fresh: Fresh,
    ) -> Result<ReportOutcome, DbError> {
        let req = Box::new(write::ReportRequest { report, key, now, known, fresh });
        self.submit(|tx| Job::Report(req, tx)).await
    }

    pub async fn record_halt(&self, halt: Halt) -> Result<(), DbError> {
        self.submit(|tx| Job::Halt(halt, tx)).await
    }

    /// Run a query on the read connection (off the async threads).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(DbError::from)
        })
        .await
        .map_err(|_| DbError::WriterGone)?
    }

    /// Finish queued writes and stop the writer thread.
    pub async fn close(&self) {
        let _ = self.jobs.send(Job::Shutdown).await;
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}
