//! The PostgreSQL schema and its migrations (tracked in `schema_version`).
//!
//! The same tables as the SQLite store: times are BIGINT unix milliseconds, ids BIGINT
//! identities, states and reasons text, bodies the mapped JSON text (sent exactly as stored).
//! Several instances may start at once: the migration runs in one transaction holding a
//! transaction-level advisory lock, so exactly one of them applies each step.

use super::Object;

use super::StoreError;

/// The advisory lock key of the migration (any constant shared by every instance).
const MIGRATION_LOCK: i64 = 0x7265_6c61_795f_7067; // "relay_pg"

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE records (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    received_at     BIGINT  NOT NULL,
    queued_at       BIGINT,
    updated_at      BIGINT  NOT NULL,
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
    original_id     BIGINT,
    transaction_id  TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    claimed_until   BIGINT,
    claim_owner     TEXT,
    last_error      TEXT
);
CREATE INDEX records_due ON records (state, next_attempt_at);
CREATE INDEX records_state_received ON records (state, received_at);
CREATE INDEX records_click ON records (click_id);

CREATE TABLE attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id   BIGINT  NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    at          BIGINT  NOT NULL,
    status      INTEGER,
    answer      TEXT    NOT NULL,
    duration_ms BIGINT  NOT NULL,
    outcome     TEXT    NOT NULL
);
CREATE INDEX attempts_record ON attempts (record_id);

CREATE TABLE dedupe (
    key        TEXT PRIMARY KEY,
    record_id  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dedupe_expires ON dedupe (expires_at);

CREATE TABLE paused (
    scope  TEXT   NOT NULL,
    reason TEXT   NOT NULL,
    since  BIGINT NOT NULL,
    PRIMARY KEY (scope, reason)
);

-- Shared GCRA state of the rate limits that hold across instances: the theoretical
-- arrival time of the next cell, in microseconds of the database clock.
CREATE TABLE rate_limits (
    name   TEXT   PRIMARY KEY,
    tat_us BIGINT NOT NULL
);
"#,
    r#"
-- The conversion lifecycle (as SQLite's migration 2): a dedupe row is also the conversion's
-- memory (kept for the dedupe window, after retention deletes its records), and a change is
-- a record of kind 'update' whose original_id is the record that created the conversion.
ALTER TABLE records ADD COLUMN kind TEXT;            -- 'update' for a change, NULL for a create
ALTER TABLE records ADD COLUMN lead_id TEXT;         -- Scaleo's info.lead_id, JSON text as given
ALTER TABLE dedupe
    ADD COLUMN source TEXT,
    ADD COLUMN click_id TEXT,
    ADD COLUMN order_id TEXT,                        -- adv_order_id, for update-only sources
    ADD COLUMN tracked TEXT,                         -- JSON: conv_status and money as last accepted; NULL: not tracked
    ADD COLUMN lead_id TEXT,                         -- JSON text as Scaleo gave it
    ADD COLUMN transaction_id TEXT;
CREATE INDEX dedupe_order ON dedupe (source, order_id) WHERE order_id IS NOT NULL AND tracked IS NOT NULL;
CREATE INDEX dedupe_click ON dedupe (source, click_id) WHERE tracked IS NOT NULL;
CREATE INDEX records_original ON records (original_id) WHERE original_id IS NOT NULL;

-- One row that /readyz rewrites: a write that really changes the database, so a database
-- that cannot write fails readiness.
CREATE TABLE probe (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL
);

-- The console and the metrics read per source: the time of its last postback and what it
-- sent in the last day, without scanning the table.
CREATE INDEX records_source_received ON records (source, received_at);
"#,
    r#"
-- A sender that retries a rejected postback for days: a repeat of a stored reject (same
-- source, same raw query, within the dedupe window) is counted here instead of stored again.
-- The query is indexed by its md5: a long query would not fit a btree entry.
ALTER TABLE records ADD COLUMN repeats BIGINT NOT NULL DEFAULT 0;
CREATE INDEX records_rejected_query ON records (source, md5(query)) WHERE state = 'rejected';
"#,
    r#"
-- Update-only sources find conversions through one partial index per (source, field) that
-- the loaded rules need (`dedupe_lookup:*`, built CONCURRENTLY by the instances), not
-- through these two, which every insert paid for whether a refund URL pointed at its
-- source or not.
DROP INDEX IF EXISTS dedupe_order;
DROP INDEX IF EXISTS dedupe_click;
"#,
    r#"
-- A conversion's memory without the changes still on their way to Scaleo (JSON as tracked;
-- NULL: none is), so that a change Scaleo refuses is taken back out of `tracked`
-- (see `store::change`; as SQLite's migration 6).
ALTER TABLE dedupe ADD COLUMN settled TEXT;
"#,
];

/// Brings the schema up to date (idempotent, safe when instances start together).
pub(super) async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    // A migration of a large table, or waiting for another instance's, may take longer than
    // store.statement_timeout: lifted for this transaction only.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await?;
    let done: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    let done = usize::try_from(done).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
