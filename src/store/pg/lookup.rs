//! The lookup indexes of update-only sources on PostgreSQL (see [`crate::store::lookup`]).
//!
//! Built with `CREATE INDEX CONCURRENTLY`, so ingest goes on while a big table is read, on a
//! connection of its own without the statement timeout (a build can take minutes). Several
//! instances may sync at once: a session advisory lock lets one at a time look and build,
//! so an invalid index found under the lock is the leftover of a build that was interrupted
//! (a crash, a cancelled statement), never one being built right now, and is rebuilt.
//!
//! Indexes no loaded rule wants are kept: during a rollout other instances may still run
//! rules that look them up. An operator drops one by hand once no instance needs it
//! (`DROP INDEX CONCURRENTLY "dedupe_lookup:order_id:shop"`); the next sync that wants it
//! builds it again.

use std::collections::HashMap;

use super::super::StoreError;
use super::super::lookup::{LookupSync, PREFIX, create_sql, ident, index_name};
use super::PgStore;
use crate::lifecycle::LookupIndex;

/// The advisory lock key of a sync (any constant shared by every instance).
const SYNC_LOCK: i64 = 0x7265_6c61_795f_6c6b; // "relay_lk"

impl PgStore {
    /// Builds the indexes in `wanted` that are missing or invalid.
    pub(crate) async fn sync_lookups(
        &self,
        wanted: &[LookupIndex],
    ) -> Result<LookupSync, StoreError> {
        sync(self, wanted).await
    }
}

async fn sync(store: &PgStore, wanted: &[LookupIndex]) -> Result<LookupSync, StoreError> {
    let mut done = LookupSync::default();
    if wanted.is_empty() {
        return Ok(done);
    }
    // Taken out of the pool: closed when this returns, with its settings and its lock.
    let client = super::Object::take(store.pool.get().await?);
    client.batch_execute("SET statement_timeout = 0").await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SYNC_LOCK])
        .await?;
    let have: HashMap<String, bool> = client
        .query(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'dedupe'::regclass AND left(c.relname, length($1)) = $1",
            &[&PREFIX],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, StoreError>>()?;
    for ix in wanted {
        let name = index_name(ix)?;
        match have.get(&name) {
            Some(true) => continue,
            Some(false) => {
                client
                    .batch_execute(&format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {}",
                        ident(&name)
                    ))
                    .await?;
            }
            None => {}
        }
        client
            .batch_execute(&create_sql("CREATE INDEX CONCURRENTLY IF NOT EXISTS", ix)?)
            .await?;
        done.built.push(name);
    }
    Ok(done)
}
