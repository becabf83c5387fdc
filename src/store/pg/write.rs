//! Writes on PostgreSQL: insert with cross-instance dedupe, replay, pauses, purge.
//!
//! Each operation is one transaction. A dedupe key is taken with
//! `INSERT ... ON CONFLICT DO NOTHING`; when another record holds it, the key's row is
//! locked (`FOR UPDATE`) and decided as the SQLite store does: a live holder (key not
//! expired, record neither rejected nor dead) makes this record a `duplicate`, otherwise this
//! record takes the key over. Two instances inserting the same new key at once serialise on
//! the key's unique index, so exactly one of them stores it.

use deadpool_postgres::Transaction;
use jiff::Timestamp;

use super::super::ops::{Columns, PURGE_CHUNK, body_text};
use super::super::types::{Inserted, NewRecord, NewState, PauseReason, PauseScope, Requeued};
use super::super::{State, StoreError, ts_plus};
use super::PgStore;

/// How often a key that vanished between the conflict and the lock (a purge) is tried again.
const KEY_TRIES: usize = 3;

impl PgStore {
    /// Stores `rec`; the flag says whether it made work due (a queued record).
    pub(crate) async fn insert(&self, rec: &NewRecord) -> Result<(Inserted, bool), StoreError> {
        let recv = rec.raw.received_at.as_millisecond();
        let Columns {
            state,
            body,
            click_id,
            reason,
            dedupe,
        } = Columns::of(rec)?;
        let queued = state == State::Queued;
        let queued_at = queued.then_some(recv);
        let key = dedupe.map(|d| d.key.as_str());
        let raw = &rec.raw;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO records (source, state, received_at, queued_at, updated_at, method,
                     path, query, client_ip, user_agent, referer, body, click_id, reason,
                     dedupe_key, next_attempt_at)
                 VALUES ($1, $2, $3, $4, $3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $4)
                 RETURNING id",
            )
            .await?;
        let id: i64 = tx
            .query_one(
                &stmt,
                &[
                    &rec.source,
                    &state.as_str(),
                    &recv,
                    &queued_at,
                    &raw.method,
                    &raw.path,
                    &raw.query,
                    &raw.client_ip,
                    &raw.user_agent,
                    &raw.referer,
                    &body,
                    &click_id,
                    &reason,
                    &key,
                ],
            )
            .await?
            .get(0);
        let mut inserted = Inserted::Stored { id };
        if let Some(d) = dedupe {
            let expires = ts_plus(raw.received_at, d.window).as_millisecond();
            if let Some(original) = take_key(&tx, &d.key, id, expires, recv).await? {
                tx.execute(
                    "UPDATE records SET state = 'duplicate', original_id = $2, queued_at = NULL,
                       next_attempt_at = NULL WHERE id = $1",
                    &[&id, &original],
                )
                .await?;
                inserted = Inserted::Duplicate { id, original };
            }
        }
        tx.commit().await?;
        let wakes = queued && matches!(inserted, Inserted::Stored { .. });
        Ok((inserted, wakes))
    }

    /// Replays record `id` (`rejected` or `dead`) into `new` (see `Store::requeue`).
    pub(crate) async fn requeue(&self, id: i64, new: &NewState) -> Result<Requeued, StoreError> {
        let now = Timestamp::now();
        let now_ms = now.as_millisecond();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt("SELECT state FROM records WHERE id = $1 FOR UPDATE", &[&id])
            .await?;
        let current: String = row.ok_or(StoreError::NotFound(id))?.get(0);
        let state = State::parse(&current).ok_or_else(|| StoreError::Corrupt(current.clone()))?;
        if !matches!(state, State::Rejected | State::Dead) {
            return Err(StoreError::NotReplayable { id, state });
        }
        let answer = match new {
            NewState::Queued {
                body,
                click_id,
                dedupe,
                ..
            } => {
                let body = body_text(body)?;
                let original = match dedupe {
                    Some(d) => {
                        let expires = ts_plus(now, d.window).as_millisecond();
                        take_key(&tx, &d.key, id, expires, now_ms).await?
                    }
                    None => None,
                };
                let (state, next) = match original {
                    Some(_) => (State::Duplicate, None),
                    None => (State::Queued, Some(now_ms)),
                };
                tx.execute(
                    "UPDATE records SET state = $2, body = $3, click_id = $4, reason = NULL,
                       dedupe_key = $5, original_id = $6, next_attempt_at = $7, queued_at = $7,
                       attempts = 0, claimed_until = NULL, claim_owner = NULL, last_error = NULL,
                       transaction_id = NULL, updated_at = $1
                     WHERE id = $8",
                    &[
                        &now_ms,
                        &state.as_str(),
                        &body,
                        click_id,
                        &dedupe.as_ref().map(|d| d.key.as_str()),
                        &original,
                        &next,
                        &id,
                    ],
                )
                .await?;
                match original {
                    Some(original) => Requeued::Duplicate { original },
                    None => Requeued::Queued,
                }
            }
            NewState::Rejected { reason, click_id } => {
                replay_unqueued(
                    &tx,
                    id,
                    now_ms,
                    State::Rejected,
                    reason,
                    click_id.as_deref(),
                )
                .await?;
                Requeued::Rejected {
                    reason: reason.clone(),
                }
            }
            NewState::Skipped { reason } => {
                replay_unqueued(&tx, id, now_ms, State::Skipped, reason, None).await?;
                Requeued::Skipped
            }
            NewState::Change { .. } => {
                return Err(StoreError::Corrupt(
                    "update-only sources are not supported on PostgreSQL yet".into(),
                ));
            }
        };
        tx.commit().await?;
        Ok(answer)
    }

    /// Persists a pause (idempotent).
    pub(crate) async fn pause(
        &self,
        scope: &PauseScope,
        reason: PauseReason,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO paused (scope, reason, since) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[
                    &scope.key(),
                    &reason.as_str(),
                    &Timestamp::now().as_millisecond(),
                ],
            )
            .await?;
        Ok(())
    }

    /// Makes retrying record `id` due now; `false` when it is not retrying.
    pub(crate) async fn send_now(&self, id: i64) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "UPDATE records SET next_attempt_at = $2, updated_at = $2
                 WHERE id = $1 AND state = 'retrying'",
                &[&id, &Timestamp::now().as_millisecond()],
            )
            .await?;
        Ok(n > 0)
    }

    /// Removes the pauses of `scope` (only the one with `reason` when given); how many.
    pub(crate) async fn resume(
        &self,
        scope: &PauseScope,
        reason: Option<PauseReason>,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let n = match reason {
            Some(r) => {
                client
                    .execute(
                        "DELETE FROM paused WHERE scope = $1 AND reason = $2",
                        &[&scope.key(), &r.as_str()],
                    )
                    .await?
            }
            None => {
                client
                    .execute("DELETE FROM paused WHERE scope = $1", &[&scope.key()])
                    .await?
            }
        };
        Ok(n)
    }

    /// Deletes one chunk of finished records received before `cutoff` and of expired
    /// dedupe keys; the larger of the two counts (the caller loops while a chunk is full).
    pub(crate) async fn purge(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let chunk = i64::try_from(PURGE_CHUNK).unwrap_or(i64::MAX);
        let client = self.pool.get().await?;
        let records = client
            .execute(
                "DELETE FROM records WHERE id IN (SELECT id FROM records
                   WHERE state IN ('delivered', 'duplicate', 'duplicate_upstream', 'skipped')
                     AND received_at < $1 LIMIT $2)",
                &[&cutoff.as_millisecond(), &chunk],
            )
            .await?;
        let keys = client
            .execute(
                "DELETE FROM dedupe WHERE key IN
                   (SELECT key FROM dedupe WHERE expires_at <= $1 LIMIT $2)",
                &[&Timestamp::now().as_millisecond(), &chunk],
            )
            .await?;
        Ok(records.max(keys))
    }
}

/// A replay whose current rules reject or skip the record again.
async fn replay_unqueued(
    tx: &Transaction<'_>,
    id: i64,
    now_ms: i64,
    state: State,
    reason: &str,
    click_id: Option<&str>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE records SET state = $2, body = NULL, reason = $3,
           click_id = COALESCE($4, click_id), next_attempt_at = NULL, attempts = 0,
           claimed_until = NULL, claim_owner = NULL, last_error = NULL, transaction_id = NULL,
           updated_at = $1
         WHERE id = $5",
        &[&now_ms, &state.as_str(), &reason, &click_id, &id],
    )
    .await?;
    Ok(())
}

/// Takes dedupe `key` for record `id` until `expires` (unix ms), unless a live record holds
/// it at `at_ms`: then that record's id is returned and the key is left alone.
async fn take_key(
    tx: &Transaction<'_>,
    key: &str,
    id: i64,
    expires: i64,
    at_ms: i64,
) -> Result<Option<i64>, StoreError> {
    for _ in 0..KEY_TRIES {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO dedupe (key, record_id, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO NOTHING",
            )
            .await?;
        let taken = tx.execute(&stmt, &[&key, &id, &expires]).await?;
        if taken == 1 {
            return Ok(None);
        }
        // Lock the key, then read its record in a statement of its own (a fresh snapshot, so
        // a holder committed by another instance meanwhile is seen as it is now).
        let Some(row) = tx
            .query_opt(
                "SELECT record_id, expires_at FROM dedupe WHERE key = $1 FOR UPDATE",
                &[&key],
            )
            .await?
        else {
            // Purged between the conflict and the lock: take it again.
            continue;
        };
        let (holder, holder_expires): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let state: Option<String> = tx
            .query_opt("SELECT state FROM records WHERE id = $1", &[&holder])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let dead = matches!(state.as_deref(), Some("rejected" | "dead"));
        if holder_expires > at_ms && !dead && holder != id {
            return Ok(Some(holder));
        }
        tx.execute(
            "UPDATE dedupe SET record_id = $2, expires_at = $3 WHERE key = $1",
            &[&key, &id, &expires],
        )
        .await?;
        return Ok(None);
    }
    Err(StoreError::Corrupt(format!(
        "dedupe key {key:?} vanished {KEY_TRIES} times while being taken"
    )))
}
