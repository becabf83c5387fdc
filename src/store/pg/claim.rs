//! Claims and settles on PostgreSQL.
//!
//! The claim policy is the SQLite store's (`ops::claim`): pauses, excludes, the probe, the
//! retry share, oldest due first. Rows are taken with `FOR UPDATE SKIP LOCKED`, so instances
//! claiming at the same moment never get the same record and never wait on each other; a
//! lease (`claimed_until`) is set and compared with the database clock, so a crashed
//! instance's claims are claimable again once it has passed. A settle checks the lease owner
//! exactly as SQLite does: after a lost lease the record is left alone but the attempt row is
//! kept.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use jiff::Timestamp;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::super::change::Ended;
use super::super::claim::{ANSWER_EXCERPT_BYTES, ChangeOf, ClaimRow, Settle, SettleRequest};
use super::super::ops::ClaimRequest;
use super::super::{State, StoreError, excerpt, redact_api_key};
use super::Pool;
use super::batch::Reply;
use super::{DB_NOW_MS, PgStore, change};

/// A change (`kind = 'update'`) is due only when no earlier record of its conversion (the
/// original or an earlier change) is waiting to be sent or in flight, as on SQLite.
const CLAIM_SQL: &str = "UPDATE records SET claimed_until = $1, claim_owner = $2 WHERE id IN (
       SELECT id FROM records r WHERE state = $3 AND next_attempt_at <= $4
         AND (claimed_until IS NULL OR claimed_until <= $4)
         AND ($5::text IS NULL OR source = $5)
         AND NOT (source = ANY($6))
         AND (kind IS NULL OR NOT EXISTS (SELECT 1 FROM records o
                WHERE o.original_id = r.original_id AND o.id < r.id AND o.kind = 'update'
                  AND o.state IN ('queued', 'retrying', 'paused'))
              AND NOT EXISTS (SELECT 1 FROM records o WHERE o.id = r.original_id
                  AND o.state IN ('queued', 'retrying', 'paused')))
       ORDER BY next_attempt_at LIMIT $7
       FOR UPDATE SKIP LOCKED)
     RETURNING id, source, click_id, body, attempts, queued_at, received_at, state,
               kind, original_id, dedupe_key";

impl PgStore {
    /// Claims due records for `req.lease` (see `Store::claim` for the policy).
    pub(crate) async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimRow>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The due records are always read through `records_due` in order, stopping at the
        // limit. Right after a burst of inserts the planner's statistics still describe a
        // small table and it would scan and sort every due row instead (measured: 27 ms per
        // claim of 32 on a 50,000-record backlog until autovacuum's ANALYZE, forwarding at
        // ~1,100/s instead of ~3,800/s), so for this transaction only, it may not.
        // Nor may it compile the claim: on a backlog of 150,000 the plan's estimated cost is
        // past `jit_above_cost`, and PostgreSQL spent ~20 ms compiling each claim that then ran
        // in 0.3 ms (measured with `EXPLAIN ANALYZE` and `pg_stat_statements`).
        tx.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off",
        )
        .await?;
        let pauses = tx
            .prepare_cached("SELECT scope, reason FROM paused")
            .await?;
        let pauses = tx.query(&pauses, &[]).await?;
        let Some(exclude) = req.excluded(pauses.iter().map(|r| (r.get(0), r.get(1)))) else {
            return Ok(Vec::new());
        };
        let only = req.only();
        let now = tx.prepare_cached(&format!("SELECT {DB_NOW_MS}")).await?;
        let now: i64 = tx.query_one(&now, &[]).await?.try_get(0)?;
        let lease = i64::try_from(req.lease.as_millis()).unwrap_or(i64::MAX);
        let until = now.saturating_add(lease);
        let stmt = tx.prepare_cached(CLAIM_SQL).await?;
        let take = async |state: State, limit: usize| -> Result<Vec<ClaimRow>, StoreError> {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = tx
                .query(
                    &stmt,
                    &[
                        &until,
                        &req.owner,
                        &state.as_str(),
                        &now,
                        &only,
                        &exclude,
                        &limit,
                    ],
                )
                .await?;
            rows.iter().map(claim_row).collect()
        };
        let mut rows = Vec::new();
        for (state, fill) in ClaimRequest::FILL {
            rows.extend(take(state, req.most(fill, rows.len())).await?);
        }
        // A claimed change is sent with its conversion's `lead_id`.
        let keys: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.change.as_ref().map(|c| c.key.as_str()))
            .collect();
        if !keys.is_empty() {
            let stmt = tx
                .prepare_cached("SELECT key, lead_id FROM dedupe WHERE key = ANY($1)")
                .await?;
            let leads: HashMap<String, Option<String>> = tx
                .query(&stmt, &[&keys])
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, StoreError>>()?;
            for change in rows.iter_mut().filter_map(|r| r.change.as_mut()) {
                change.lead_id = leads.get(&change.key).cloned().flatten();
            }
        }
        tx.commit().await?;
        Ok(rows)
    }

    /// Records the attempt and moves the record if this claim still owns it. Returns
    /// (applied, made work due); the attempt is committed either way. Concurrent settles
    /// share one transaction (see [`super::settles`]); a request whose group failed is redone
    /// alone.
    pub(crate) async fn settle(&self, req: SettleRequest) -> Result<(bool, bool), StoreError> {
        match self.settles.call(req).await? {
            Reply::Done(result) => result,
            Reply::Alone(req) => settle_alone(&self.pool, &req).await,
        }
    }
}

/// Settles `req` in a transaction of its own (see [`PgStore::settle`]).
pub(super) async fn settle_alone(
    pool: &Pool,
    req: &SettleRequest,
) -> Result<(bool, bool), StoreError> {
    let now = Timestamp::now().as_millisecond();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let done = settle_in(&tx, req, now).await?;
    tx.commit().await?;
    Ok(done)
}

/// Settles `req` inside `tx` at `now` (unix ms): (applied, made work due).
pub(super) async fn settle_in(
    tx: &Transaction<'_>,
    req: &SettleRequest,
    now: i64,
) -> Result<(bool, bool), StoreError> {
    if ends(&req.settle).is_some() {
        // A record's end writes its conversion's dedupe row (Scaleo's ids, the memory)
        // after the record: that row is locked first, the order every writer takes (see
        // `change`), so a postback of the conversion deciding meanwhile never waits on this
        // settle in a cycle.
        let stmt = tx
            .prepare_cached(
                "SELECT 1 FROM dedupe WHERE key = (SELECT dedupe_key FROM records WHERE id = $1)
                     FOR UPDATE",
            )
            .await?;
        tx.query_opt(&stmt, &[&req.id]).await?;
    }
    if let Some(a) = &req.attempt {
        let answer = redact_api_key(excerpt(&a.answer, ANSWER_EXCERPT_BYTES));
        let stmt = tx
            .prepare_cached(
                "INSERT INTO attempts (record_id, at, status, answer, duration_ms, outcome)
                     VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        tx.execute(
            &stmt,
            &[
                &req.id,
                &a.at.as_millisecond(),
                &a.status.map(i32::from),
                &answer,
                &i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX),
                &req.settle.outcome(),
            ],
        )
        .await?;
    }
    let done = "attempts = attempts + 1, next_attempt_at = NULL, claimed_until = NULL,
                    claim_owner = NULL, updated_at = $1";
    let free = "claimed_until = NULL, claim_owner = NULL, updated_at = $1";
    let (text, int, lead): (Option<String>, Option<i64>, Option<String>);
    let set = match &req.settle {
        Settle::Delivered {
            transaction_id,
            lead_id,
        } => {
            (text, int, lead) = (transaction_id.clone(), None, lead_id.clone());
            format!(
                "state = 'delivered', transaction_id = $4, lead_id = $5, last_error = NULL,
                     {done}"
            )
        }
        Settle::DuplicateUpstream => {
            (text, int, lead) = (None, None, None);
            format!("state = 'duplicate_upstream', last_error = NULL, {done}")
        }
        Settle::Dead { reason } => {
            (text, int, lead) = (Some(reason.clone()), None, None);
            format!("state = 'dead', reason = $4, last_error = $4, {done}")
        }
        Settle::Retry { at, error } => {
            (text, int, lead) = (Some(error.clone()), Some(at.as_millisecond()), None);
            format!(
                "state = 'retrying', attempts = attempts + 1, next_attempt_at = $5,
                     last_error = $4, {free}"
            )
        }
        // Given back without counting: it waits for the resume, first in line.
        Settle::Paused { error } => {
            (text, int, lead) = (Some(error.clone()), None, None);
            format!("state = 'paused', next_attempt_at = $1, last_error = $4, {free}")
        }
        Settle::Release => {
            (text, int, lead) = (None, None, None);
            free.to_string()
        }
    };
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now, &req.id, &req.owner];
    if set.contains("$4") {
        params.push(&text);
    }
    if set.contains("lead_id = $5") {
        params.push(&lead);
    } else if set.contains("$5") {
        params.push(&int);
    }
    let stmt = tx
        .prepare_cached(&format!(
            "UPDATE records SET {set} WHERE id = $2 AND claim_owner = $3
             RETURNING kind IS NOT DISTINCT FROM 'update'"
        ))
        .await?;
    // `Some(whether it is a change of a conversion)` when the claim still owned it.
    let moved: Option<bool> = tx
        .query_opt(&stmt, &params)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    let n = u64::from(moved.is_some());
    let mut wakes = n > 0 && matches!(req.settle, Settle::Release | Settle::Paused { .. });
    if let Some(is_change) = moved {
        match &req.settle {
            // The conversion learns Scaleo's ids from its create; its waiting changes
            // may go now.
            Settle::Delivered {
                transaction_id,
                lead_id,
            } => {
                let stmt = tx
                    .prepare_cached(
                        "UPDATE dedupe SET lead_id = $2, transaction_id = $3
                             WHERE record_id = $1 AND tracked IS NOT NULL
                               AND key = (SELECT dedupe_key FROM records
                                          WHERE id = $1 AND kind IS NULL)
                             RETURNING settled IS NOT NULL",
                    )
                    .await?;
                let learned = tx
                    .query_opt(&stmt, &[&req.id, lead_id, transaction_id])
                    .await?;
                wakes |= learned.is_some();
                // A create with changes on its way, or a change: the memory follows (see
                // `change::ended`); a create of a conversion with none costs nothing more.
                let unsettled = learned.map(|r| r.try_get(0)).transpose()?;
                if is_change || unsettled == Some(true) {
                    change::ended(tx, req.id, Ended::Delivered, now).await?;
                }
            }
            Settle::Retry { .. } | Settle::Paused { .. } | Settle::Release => {
                change::fold_waiting(tx, req.id, now).await?;
            }
            // What was on its way with it is taken back (see `store::change`).
            Settle::DuplicateUpstream | Settle::Dead { .. } => {
                wakes = true;
                change::ended(tx, req.id, Ended::Refused, now).await?;
            }
        }
    }
    Ok((n > 0, wakes))
}

/// How a settle ends its record, for the conversion (`None`: it does not end it).
pub(super) fn ends(settle: &Settle) -> Option<Ended> {
    match settle {
        Settle::Delivered { .. } => Some(Ended::Delivered),
        Settle::DuplicateUpstream | Settle::Dead { .. } => Some(Ended::Refused),
        Settle::Retry { .. } | Settle::Paused { .. } | Settle::Release => None,
    }
}

/// A claimed row as the claim's `RETURNING` gives it. A row the relay did not write as it
/// would (an unknown state, an impossible time, a create without a body) is an error naming
/// the record, never sent as a guess (as on SQLite).
fn claim_row(r: &Row) -> Result<ClaimRow, StoreError> {
    let id: i64 = r.try_get(0)?;
    let corrupt = |what: String| StoreError::Corrupt(format!("record {id}: {what}"));
    let ts =
        |ms: i64| Timestamp::from_millisecond(ms).map_err(|e| corrupt(format!("time {ms}: {e}")));
    let received_at = ts(r.try_get(6)?)?;
    let queued_at: Option<i64> = r.try_get(5)?;
    let state: String = r.try_get(7)?;
    let attempts: i32 = r.try_get(4)?;
    let kind: Option<&str> = r.try_get(8)?;
    let change = match (kind, r.try_get(9)?, r.try_get(10)?) {
        (Some("update"), Some(original), Some(key)) => Some(ChangeOf {
            original,
            key,
            lead_id: None,
        }),
        _ => None,
    };
    Ok(ClaimRow {
        change,
        id,
        source: r.try_get(1)?,
        click_id: r.try_get(2)?,
        body: r
            .try_get::<_, Option<String>>(3)?
            .ok_or_else(|| corrupt("no body to send".into()))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("attempts {attempts}")))?,
        received_at,
        // Rows stored before `queued_at` existed count their age from their receipt.
        queued_at: queued_at.map_or(Ok(received_at), ts)?,
        state: State::parse(&state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
    })
}
