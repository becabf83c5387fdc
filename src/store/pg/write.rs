//! Writes on PostgreSQL: insert with cross-instance dedupe, replay, pauses, purge.
//!
//! Inserts are grouped (see [`super::bulk`]): a group's free keys are taken in one statement
//! and its new records inserted in another. A postback whose key is held, a change, and each
//! insert of a group that failed take the one-at-a-time path here ([`insert_alone`]), one
//! transaction each, as every other operation of this file. On that path a dedupe key is
//! taken with
//! `INSERT ... ON CONFLICT DO NOTHING`; when another record holds it, the key's row is
//! locked (`FOR UPDATE`) and decided as the SQLite store does: a later postback of a tracked
//! conversion is a change, stale or a duplicate (see [`super::change`]); otherwise a live
//! holder (key not expired, record neither rejected nor dead) makes this record a
//! `duplicate`, else this record takes the key over. Two instances inserting the same new key
//! at once serialise on the key's unique index, so exactly one of them stores it.

use deadpool_postgres::Transaction;
use jiff::Timestamp;

use super::super::change::{Memory, Target};
use super::super::ops::{Columns, PURGE_CHUNK, body_text};
use super::super::types::{Inserted, NewRecord, NewState, PauseReason, PauseScope, Requeued};
use super::super::{State, StoreError, ts_plus};
use super::PgStore;
use super::Pool;
use super::batch::Reply;
use super::change::{self, lock_key, remember, take_key};

/// The columns a replay starts afresh (`$1` is now).
pub(super) const REPLAY_RESET: &str = "attempts = 0, claimed_until = NULL, claim_owner = NULL,
    last_error = NULL, transaction_id = NULL, updated_at = $1";

impl PgStore {
    /// Stores `rec`; the flag says whether it made work due. Concurrent inserts share one
    /// transaction (see [`super::bulk`]); a request whose group failed is redone alone.
    pub(crate) async fn insert(&self, rec: NewRecord) -> Result<(Inserted, bool), StoreError> {
        match self.inserts.call(rec).await? {
            Reply::Done(result) => result,
            Reply::Alone(rec) => insert_alone(&self.pool, &rec).await,
        }
    }

    /// Replays record `id` (`rejected` or `dead`) into `new` (see `Store::requeue`); the flag
    /// says whether it made work due.
    pub(crate) async fn requeue(
        &self,
        id: i64,
        new: &NewState,
    ) -> Result<(Requeued, bool), StoreError> {
        let now = Timestamp::now();
        let now_ms = now.as_millisecond();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let mut wakes = false;
        // The conversion's dedupe row is locked before the record: the order every writer
        // takes (see `change`).
        // `target`: the conversion an update-only postback changes (only read for one).
        let (target, held) = match new {
            NewState::Change { lookup, .. } => (
                change::replay_target(&tx, Some(lookup), None, now_ms).await?,
                None,
            ),
            NewState::Queued {
                dedupe: Some(d), ..
            } => (Err(String::new()), lock_key(&tx, &d.key).await?),
            _ => (Err(String::new()), None),
        };
        let row = tx
            .query_opt(
                "SELECT state, kind, source FROM records WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or(StoreError::NotFound(id))?;
        let (current, kind, source): (String, Option<String>, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let state = State::parse(&current).ok_or_else(|| StoreError::Corrupt(current.clone()))?;
        if !matches!(state, State::Rejected | State::Dead) {
            return Err(StoreError::NotReplayable { id, state });
        }
        let is_change = kind.as_deref() == Some("update");
        let answer = match new {
            NewState::Change {
                body,
                click_id,
                transitions,
                ..
            } => match target {
                Ok(conv) => {
                    let click_id = click_id.as_deref();
                    change::requeue(
                        &tx,
                        id,
                        state,
                        body,
                        click_id,
                        conv,
                        transitions,
                        now,
                        &mut wakes,
                    )
                    .await?
                }
                Err(why) => {
                    replay_unqueued(&tx, id, now_ms, State::Rejected, &why, click_id.as_deref())
                        .await?;
                    Requeued::Rejected { reason: why }
                }
            },
            NewState::Queued {
                body,
                click_id,
                dedupe,
                updates,
            } => {
                let memory = Memory::of(&source, body, updates.is_some())?;
                let expires = dedupe
                    .as_ref()
                    .map(|d| ts_plus(now, d.window).as_millisecond());
                // The key's row: locked above, or, when none held the key, taken now.
                let (held, fresh) = match (held, dedupe, expires) {
                    (Some(h), _, _) => (Some(h), false),
                    (None, Some(d), Some(expires)) => {
                        let h = take_key(&tx, &d.key, id, expires, &memory).await?;
                        let fresh = h.is_none();
                        (h, fresh)
                    }
                    _ => (None, false),
                };
                let conv = match (&held, updates) {
                    (Some(h), Some(_)) => h.conversion(now_ms)?,
                    _ => None,
                };
                match (conv, updates) {
                    (Some(conv), Some(transitions))
                        if conv.record_id != id && (is_change || state == State::Rejected) =>
                    {
                        change::requeue(
                            &tx,
                            id,
                            state,
                            body,
                            Some(click_id),
                            conv,
                            transitions,
                            now,
                            &mut wakes,
                        )
                        .await?
                    }
                    _ => {
                        let key = dedupe.as_ref().map(|d| d.key.as_str());
                        let original = held.as_ref().and_then(|h| h.live(now_ms, Some(id)));
                        let (state, next) = match original {
                            Some(_) => (State::Duplicate, None),
                            None => (State::Queued, Some(now_ms)),
                        };
                        tx.execute(
                            &format!(
                                "UPDATE records SET state = $2, body = $3, click_id = $4,
                                   reason = NULL, dedupe_key = $5, original_id = $6,
                                   next_attempt_at = $7, queued_at = $7, kind = NULL,
                                   lead_id = NULL, {REPLAY_RESET}
                                 WHERE id = $8"
                            ),
                            &[
                                &now_ms,
                                &state.as_str(),
                                &body_text(body)?,
                                click_id,
                                &key,
                                &original,
                                &next,
                                &id,
                            ],
                        )
                        .await?;
                        match original {
                            Some(original) => Requeued::Duplicate { original },
                            None => {
                                if let (Some(h), Some(expires), false) = (&held, expires, fresh) {
                                    remember(&tx, &h.key, id, expires, &memory).await?;
                                }
                                wakes = true;
                                Requeued::Queued
                            }
                        }
                    }
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
        };
        tx.commit().await?;
        Ok((answer, wakes))
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
            // An operator's resume of all forwarding also lifts the pauses the relay set on a
            // network's sources (a refused key, an outage): see `Store::resume`.
            None => {
                client
                    .execute(
                        "DELETE FROM paused
                         WHERE scope = $1 OR ($1 = '*' AND reason IN ('upstream_auth', 'outage'))",
                        &[&scope.key()],
                    )
                    .await?
            }
        };
        Ok(n)
    }

    /// See `Store::probe_write`.
    pub(crate) async fn probe_write(&self, now_ms: i64) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO probe (id, at) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                &[&now_ms],
            )
            .await?;
        Ok(())
    }

    /// See `Store::extend_age`.
    pub(crate) async fn extend_age(
        &self,
        ms: i64,
        sources: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .execute(
                "UPDATE records SET queued_at = queued_at + $1
                 WHERE state IN ('queued', 'retrying', 'paused') AND queued_at IS NOT NULL
                   AND ($2::text[] IS NULL OR source = ANY($2))",
                &[&ms, &sources],
            )
            .await?)
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

/// Stores `rec` in a transaction of its own; the flag says whether it made work due.
pub(super) async fn insert_alone(
    pool: &Pool,
    rec: &NewRecord,
) -> Result<(Inserted, bool), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut wakes = false;
    let inserted = insert_in(&tx, rec, &mut wakes).await?;
    tx.commit().await?;
    Ok((inserted, wakes))
}

/// Stores `rec` inside `tx`: a change of a conversion, or a create deciding its dedupe key
/// under the key's lock.
async fn insert_in(
    tx: &Transaction<'_>,
    rec: &NewRecord,
    wakes: &mut bool,
) -> Result<Inserted, StoreError> {
    match &rec.state {
        NewState::Change {
            body,
            click_id,
            lookup,
            transitions,
        } => {
            change::insert_change(
                tx,
                rec,
                body,
                click_id.as_deref(),
                lookup,
                transitions,
                wakes,
            )
            .await
        }
        _ => insert_create(tx, rec, wakes).await,
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
        &format!(
            "UPDATE records SET state = $2, body = NULL, reason = $3,
               click_id = COALESCE($4, click_id), next_attempt_at = NULL, {REPLAY_RESET}
             WHERE id = $5"
        ),
        &[&now_ms, &state.as_str(), &reason, &click_id, &id],
    )
    .await?;
    Ok(())
}

/// Stores a postback that creates a conversion (or a repeat, a reject, a skip). A dedupe
/// key is taken with `INSERT ... ON CONFLICT DO NOTHING`; when another record holds it, its
/// row is locked and the postback decided as the SQLite store does (`ops::insert`).
async fn insert_create(
    tx: &Transaction<'_>,
    rec: &NewRecord,
    wakes: &mut bool,
) -> Result<Inserted, StoreError> {
    let recv = rec.raw.received_at.as_millisecond();
    if let (NewState::Rejected { .. }, Some(window)) = (&rec.state, rec.repeat_window)
        && let Some(repeat) = repeat_of_reject(tx, rec, window).await?
    {
        return Ok(repeat);
    }
    let cols = Columns::of(rec)?;
    let key = cols.dedupe.map(|d| d.key.as_str());
    let body = cols.body.as_deref();
    let id = insert_plain(
        tx,
        rec,
        cols.state,
        body,
        cols.click_id,
        cols.reason,
        key,
        None,
    )
    .await?;
    let (
        Some(d),
        NewState::Queued {
            body: mapped,
            click_id,
            updates,
            ..
        },
    ) = (cols.dedupe, &rec.state)
    else {
        *wakes |= cols.state == State::Queued;
        return Ok(Inserted::Stored { id });
    };
    let memory = Memory::of(&rec.source, mapped, updates.is_some())?;
    let expires = ts_plus(rec.raw.received_at, d.window).as_millisecond();
    let Some(held) = take_key(tx, &d.key, id, expires, &memory).await? else {
        *wakes = true;
        return Ok(Inserted::Stored { id });
    };
    // Another record holds the key and its row is locked now. This postback's record is
    // written afresh under the lock, so the changes of a conversion get ids in the order
    // they were decided in.
    let stmt = tx
        .prepare_cached("DELETE FROM records WHERE id = $1")
        .await?;
    tx.execute(&stmt, &[&id]).await?;
    if let Some(transitions) = updates
        && let Some(conv) = held.conversion(recv)?
    {
        // A later postback of a tracked conversion: a change, a stale one, or (a plain
        // resend) a duplicate as below. A change of a dead original is dead too.
        let target = Target::New(rec);
        let later = change::later(
            tx,
            &conv,
            mapped,
            Some(click_id),
            transitions,
            target,
            recv,
            wakes,
        )
        .await?;
        if let Some(inserted) = later.inserted(conv.record_id) {
            return Ok(inserted);
        }
    }
    Ok(match held.live(recv, None) {
        Some(original) => {
            let id = insert_plain(
                tx,
                rec,
                State::Duplicate,
                body,
                cols.click_id,
                cols.reason,
                key,
                Some(original),
            )
            .await?;
            Inserted::Duplicate { id, original }
        }
        None => {
            let id = insert_plain(
                tx,
                rec,
                State::Queued,
                body,
                cols.click_id,
                cols.reason,
                key,
                None,
            )
            .await?;
            remember(tx, &held.key, id, expires, &memory).await?;
            *wakes = true;
            Inserted::Stored { id }
        }
    })
}

/// The newest rejected record of the same source with the same raw query received within
/// `window` before `rec`: its `repeats` counted up, instead of a new record (as
/// `sqlite::ops::repeat_of_reject`).
pub(super) async fn repeat_of_reject(
    tx: &Transaction<'_>,
    rec: &NewRecord,
    window: std::time::Duration,
) -> Result<Option<Inserted>, StoreError> {
    let recv = rec.raw.received_at.as_millisecond();
    let since = recv.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    let stmt = tx
        .prepare_cached(
            "UPDATE records SET repeats = repeats + 1
             WHERE id = (SELECT id FROM records
                         WHERE source = $1 AND md5(query) = md5($2) AND query = $2
                           AND state = 'rejected' AND received_at >= $3
                         ORDER BY id DESC LIMIT 1)
             RETURNING id, COALESCE(reason, ''), repeats",
        )
        .await?;
    let Some(row) = tx
        .query_opt(&stmt, &[&rec.source, &rec.raw.query, &since])
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Inserted::Repeat {
        id: row.try_get(0)?,
        reason: row.try_get(1)?,
        repeats: row.try_get(2)?,
    }))
}

/// Inserts a record of kind create (or a duplicate or reject) as it arrived.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_plain(
    tx: &Transaction<'_>,
    rec: &NewRecord,
    state: State,
    body: Option<&str>,
    click_id: Option<&str>,
    reason: Option<&str>,
    key: Option<&str>,
    original: Option<i64>,
) -> Result<i64, StoreError> {
    let recv = rec.raw.received_at.as_millisecond();
    let queued_at = (state == State::Queued).then_some(recv);
    let raw = &rec.raw;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO records (source, state, received_at, queued_at, updated_at, method,
                 path, query, client_ip, user_agent, referer, body, click_id, reason,
                 dedupe_key, original_id, next_attempt_at)
             VALUES ($1, $2, $3, $4, $3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $4)
             RETURNING id",
        )
        .await?;
    Ok(tx
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
                &original,
            ],
        )
        .await?
        .try_get(0)?)
}
