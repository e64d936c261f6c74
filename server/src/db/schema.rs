//! The fleet schema and its ordered migrations.
//!
//! Portable SQL only, so that a PostgreSQL backend can run the same statements: `TEXT` and
//! `BIGINT` columns (times are unix seconds), natural primary keys instead of
//! auto-increment ids, `INSERT ... ON CONFLICT ... DO UPDATE` for upserts, no SQLite
//! functions. Migrations are applied in order, each in its own transaction, and recorded in
//! `schema_migrations`; a database written by a newer server is refused.

use rusqlite::{Connection, OptionalExtension};

use super::DbError;

/// (version, name, statements). Append only: never edit a migration that has shipped.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "fleet",
        r#"
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    status TEXT NOT NULL,
    pending_key TEXT,
    board TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    channel TEXT,
    slot TEXT,
    state TEXT,
    security_floor BIGINT NOT NULL DEFAULT 0,
    last_seq BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT,
    last_error TEXT,
    health TEXT,
    tpm TEXT,
    enrolled_at BIGINT NOT NULL,
    approved_at BIGINT
);
CREATE INDEX devices_board_channel ON devices (board, channel);

CREATE TABLE events (
    device_id TEXT NOT NULL REFERENCES devices (id),
    seq BIGINT NOT NULL,
    received BIGINT NOT NULL,
    sent BIGINT NOT NULL,
    channel TEXT NOT NULL,
    board TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX events_received ON events (received);

CREATE TABLE release_devices (
    channel TEXT NOT NULL,
    board TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices (id),
    last_kind TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    PRIMARY KEY (channel, board, image, version, device_id)
);

CREATE TABLE halts (
    channel TEXT NOT NULL,
    board TEXT NOT NULL,
    image TEXT NOT NULL,
    version TEXT NOT NULL,
    at BIGINT NOT NULL,
    tried BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (channel, board, image, version, at)
);
"#,
    ),
    (
        2,
        "attestation",
        r#"
ALTER TABLE devices ADD COLUMN attest_nonce TEXT;
ALTER TABLE devices ADD COLUMN attest_nonce_at BIGINT;
ALTER TABLE devices ADD COLUMN attest_result TEXT;
ALTER TABLE devices ADD COLUMN attest_detail TEXT;
ALTER TABLE devices ADD COLUMN attest_version TEXT;
ALTER TABLE devices ADD COLUMN attest_at BIGINT;
"#,
    ),
    (
        3,
        "attestation key bound to the EK",
        r#"
ALTER TABLE devices ADD COLUMN ak_secret TEXT;
ALTER TABLE devices ADD COLUMN ak_secret_at BIGINT;
ALTER TABLE devices ADD COLUMN ak_bound_at BIGINT;
"#,
    ),
];

/// Bring the database up to the newest schema. Returns the schema version.
pub fn migrate(conn: &mut Connection, now: i64) -> Result<i64, DbError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at BIGINT NOT NULL
        )",
    )?;
    let current: i64 = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten()
        .unwrap_or(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(DbError::NewerSchema { found: current, known: newest });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, now],
        )?;
        tx.commit()?;
        tracing::info!("fleet database: applied migration {version} ({name})");
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_newer() {
        let mut c = Connection::open_in_memory().unwrap();
        let newest = MIGRATIONS.len() as i64;
        assert_eq!(migrate(&mut c, 1).unwrap(), newest);
        assert_eq!(migrate(&mut c, 2).unwrap(), newest, "idempotent");
        let n: i64 = c.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0)).unwrap();
        assert_eq!(n, newest);
        c.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)", []).unwrap();
        assert!(matches!(migrate(&mut c, 3), Err(DbError::NewerSchema { found: 99, .. })));
    }

    #[test]
    fn a_version_1_database_gains_the_attestation_and_binding_columns() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .unwrap();
        c.execute_batch(MIGRATIONS[0].2).unwrap();
        c.execute("INSERT INTO schema_migrations VALUES (1, 'fleet', 0)", []).unwrap();
        c.execute(
            "INSERT INTO devices (id, public_key, status, board, image, version, enrolled_at) VALUES ('d', 'k', 'approved', 'b', 'i', '1.0.0', 0)",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut c, 5).unwrap(), 3);
        let (r, bound): (Option<String>, Option<i64>) = c
            .query_row("SELECT attest_result, ak_bound_at FROM devices WHERE id = 'd'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((r, bound), (None, None), "existing devices keep their rows, not yet attested or bound");
    }

    #[test]
    fn versions_are_ordered() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
