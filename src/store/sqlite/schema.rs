//! The SQLite schema and its migrations (tracked with `PRAGMA user_version`).
//!
//! Times are integer unix milliseconds (`datetime(received_at/1000, 'unixepoch')` in the
//! `sqlite3` shell), states and reasons are text, bodies are the mapped JSON text.

use rusqlite::Connection;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE records (
    id              INTEGER PRIMARY KEY,
    source          TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,   -- first receive time of the postback
    queued_at       INTEGER,            -- start of the age bound (insert or replay)
    updated_at      INTEGER NOT NULL,
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    query           TEXT    NOT NULL,   -- token already redacted
    client_ip       TEXT,
    user_agent      TEXT,
    referer         TEXT,
    body            TEXT,               -- mapped JSON, exactly as it is sent
    click_id        TEXT,
    reason          TEXT,               -- reject / skip / dead reason
    dedupe_key      TEXT,
    original_id     INTEGER,            -- for state duplicate: the record it repeats
    transaction_id  TEXT,               -- Scaleo's info.transaction_id
    attempts        INTEGER NOT NULL DEFAULT 0,  -- attempts counted by the retry schedule
    next_attempt_at INTEGER,
    claimed_until   INTEGER,
    claim_owner     TEXT,
    last_error      TEXT
);
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_state_received ON records (state, received_at);
CREATE INDEX records_click ON records (click_id);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    record_id   INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    status      INTEGER,                -- HTTP status, NULL when no answer
    answer      TEXT    NOT NULL,       -- first 2 KB, api key redacted
    duration_ms INTEGER NOT NULL,
    outcome     TEXT    NOT NULL
);
CREATE INDEX attempts_record ON attempts (record_id);

CREATE TABLE dedupe (
    key        TEXT PRIMARY KEY,
    record_id  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedupe_expires ON dedupe (expires_at);

CREATE TABLE paused (
    scope  TEXT    NOT NULL,            -- '*' = all, else a source id
    reason TEXT    NOT NULL,            -- operator | upstream_auth
    since  INTEGER NOT NULL,
    PRIMARY KEY (scope, reason)
) WITHOUT ROWID;
"#,
    r#"
-- The conversion lifecycle: a dedupe row is also the conversion's memory (kept for the
-- dedupe window, after retention deletes its records), and a change is a record of kind
-- 'update' whose original_id is the record that created the conversion.
ALTER TABLE records ADD COLUMN kind TEXT;            -- 'update' for a change, NULL for a create
ALTER TABLE records ADD COLUMN lead_id TEXT;         -- Scaleo's info.lead_id, JSON text as given
ALTER TABLE dedupe ADD COLUMN source TEXT;
ALTER TABLE dedupe ADD COLUMN click_id TEXT;
ALTER TABLE dedupe ADD COLUMN order_id TEXT;         -- adv_order_id, for update-only sources
ALTER TABLE dedupe ADD COLUMN tracked TEXT;          -- JSON: conv_status and money as last accepted; NULL: not tracked
ALTER TABLE dedupe ADD COLUMN lead_id TEXT;          -- JSON text as Scaleo gave it
ALTER TABLE dedupe ADD COLUMN transaction_id TEXT;
CREATE INDEX dedupe_order ON dedupe (source, order_id) WHERE order_id IS NOT NULL AND tracked IS NOT NULL;
CREATE INDEX dedupe_click ON dedupe (source, click_id) WHERE tracked IS NOT NULL;
CREATE INDEX records_original ON records (original_id) WHERE original_id IS NOT NULL;
"#,
    r#"
-- Record ids are never reused: without AUTOINCREMENT, SQLite gives the next record the id of
-- the newest one once retention deleted it, and a conversion's memory (dedupe.record_id, a
-- change's original_id) would then point at an unrelated record. The table is rebuilt (with
-- foreign keys off, so the attempts stay) and the sequence starts past every id still named.
CREATE TABLE records_new (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    source          TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    queued_at       INTEGER,
    updated_at      INTEGER NOT NULL,
    method          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    query           TEXT    NOT NULL,
    client_ip       TEXT,
    user_agent      TEXT,
    referer         TEXT,
    body            TEXT,
    click_id        TEXT,
    reason          TEXT,
    dedupe_key      TEXT,
    original_id     INTEGER,
    transaction_id  TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    claimed_until   INTEGER,
    claim_owner     TEXT,
    last_error      TEXT,
    kind            TEXT,
    lead_id         TEXT
);
INSERT INTO records_new (id, source, state, received_at, queued_at, updated_at, method, path,
        query, client_ip, user_agent, referer, body, click_id, reason, dedupe_key, original_id,
        transaction_id, attempts, next_attempt_at, claimed_until, claim_owner, last_error,
        kind, lead_id)
    SELECT id, source, state, received_at, queued_at, updated_at, method, path, query,
        client_ip, user_agent, referer, body, click_id, reason, dedupe_key, original_id,
        transaction_id, attempts, next_attempt_at, claimed_until, claim_owner, last_error,
        kind, lead_id
    FROM records;
DROP TABLE records;
ALTER TABLE records_new RENAME TO records;
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_state_received ON records (state, received_at);
CREATE INDEX records_click ON records (click_id);
CREATE INDEX records_original ON records (original_id) WHERE original_id IS NOT NULL;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'records', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'records');
UPDATE sqlite_sequence SET seq = MAX(seq,
        (SELECT COALESCE(MAX(record_id), 0) FROM dedupe),
        (SELECT COALESCE(MAX(record_id), 0) FROM attempts))
    WHERE name = 'records';

-- One row that /readyz rewrites: a write that really changes the file, so a disk that is
-- full or read-only fails readiness (a write that changes nothing would commit anyway).
CREATE TABLE probe (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL
);

-- The console and the metrics read per source: the time of its last postback and what it
-- sent in the last day, without scanning the table.
CREATE INDEX records_source_received ON records (source, received_at);
"#,
    r#"
-- A sender that retries a rejected postback for days: a repeat of a stored reject (same
-- source, same raw query, within the dedupe window) is counted here instead of stored again.
ALTER TABLE records ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
CREATE INDEX records_rejected_query ON records (source, query) WHERE state = 'rejected';
"#,
    r#"
-- Update-only sources find conversions through one partial index per (source, field) that
-- the loaded rules need (`dedupe_lookup:*`, kept by the writer), not through these two, which
-- every insert paid for whether a refund URL pointed at its source or not.
DROP INDEX IF EXISTS dedupe_order;
DROP INDEX IF EXISTS dedupe_click;
"#,
    r#"
-- A conversion's memory without the changes still on their way to Scaleo (JSON as tracked;
-- NULL: none is), so that a change Scaleo refuses is taken back out of `tracked`
-- (see `store::change`).
ALTER TABLE dedupe ADD COLUMN settled TEXT;
"#,
];

/// Settings every connection gets.
pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Sets the writer's durability settings and brings the schema up to date.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL required"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let done = usize::try_from(version).unwrap_or(0);
    // A table rebuild must not cascade into the attempts (foreign keys can only be switched
    // outside a transaction); they are switched back on after the migrations.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    for (i, sql) in (0_i64..).zip(MIGRATIONS.iter()).skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store at schema version 2 (before ids were AUTOINCREMENT) with one record, its
    /// attempt, and a dedupe row naming a purged, newer record.
    fn version_2(file: &std::path::Path) -> Connection {
        let mut conn = Connection::open(file).unwrap();
        configure(&conn).unwrap();
        for (i, sql) in (1_i64..).zip(MIGRATIONS.iter().take(2)) {
            let tx = conn.transaction().unwrap();
            tx.execute_batch(sql).unwrap();
            tx.pragma_update(None, "user_version", i).unwrap();
            tx.commit().unwrap();
        }
        conn.execute_batch(
            "INSERT INTO records (id, source, state, received_at, updated_at, method, path, query)
                 VALUES (7, 's', 'delivered', 1, 1, 'GET', '/postback/s', 'a=1');
             INSERT INTO attempts (record_id, at, status, answer, duration_ms, outcome)
                 VALUES (7, 1, 200, '{}', 1, 'delivered');
             INSERT INTO dedupe (key, record_id, expires_at) VALUES ('k', 9, 99);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn ids_stop_being_reused_and_the_rebuild_keeps_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.db");
        drop(version_2(&file));
        let mut conn = Connection::open(&file).unwrap();
        configure(&conn).unwrap();
        migrate(&mut conn).unwrap();
        let attempts: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM attempts WHERE record_id = 7",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(attempts, 1, "the rebuild kept the attempts");
        conn.execute(
            "INSERT INTO records (source, state, received_at, updated_at, method, path, query)
             VALUES ('s', 'queued', 2, 2, 'GET', '/postback/s', 'a=2')",
            [],
        )
        .unwrap();
        assert_eq!(
            conn.last_insert_rowid(),
            10,
            "past the purged record 9 that a dedupe row still names"
        );
        conn.execute("DELETE FROM records WHERE id = 10", [])
            .unwrap();
        conn.execute(
            "INSERT INTO records (source, state, received_at, updated_at, method, path, query)
             VALUES ('s', 'queued', 3, 3, 'GET', '/postback/s', 'a=3')",
            [],
        )
        .unwrap();
        assert_eq!(
            conn.last_insert_rowid(),
            11,
            "a deleted newest id is not reused"
        );
        let fk: bool = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(fk, "foreign keys are on again after the migrations");
    }
}
