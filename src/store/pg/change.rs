//! The conversion lifecycle on PostgreSQL: `store::change` (the SQLite store's) ported, run
//! inside the operation's transaction. The decisions are [`crate::lifecycle`]'s and the pure
//! parts of storing them (bodies, reasons) are shared with `store::change`; this file has the
//! SQL.
//!
//! SQLite decides a conversion's postbacks one at a time because one writer runs them all;
//! here several instances write at once, so row locks order them. Every writer takes them in
//! the same order, so two never wait on each other in a cycle:
//! 1. the conversion's dedupe row (`FOR UPDATE`): postbacks, replays and the delivered settle
//!    of its create go one at a time, each seeing the memory the one before left;
//! 2. its original record (`FOR UPDATE`, before deciding fold or queue): a claim, which never
//!    waits (`SKIP LOCKED`), either took the original first, and the change sees it in flight
//!    and queues, or skips it until the fold is committed;
//! 3. its waiting changes, oldest first (`FOR UPDATE`, only those not in flight): a change a
//!    claim took meanwhile is never collapsed into a later one.
//!
//! A change's record is inserted while the dedupe row is locked, so the ids of a
//! conversion's changes follow the order they were decided in (claims send them in id
//! order). Leases are compared with the database clock, which sets them.

use deadpool_postgres::Transaction;
use jiff::Timestamp;
use serde_json::{Map, Value};
use tokio_postgres::types::ToSql;

use super::super::StoreError;
use super::super::change::{
    Conversion, Ended, Later, Memory, NO_KEY, Row, Target, bodies, collapsed,
    collapsed_dead_reason, collapsed_reason, folded, key_gone, memory_after, merged_reason,
    refused_original_reason, resend, superseded, unmatched, without,
};
use super::super::lookup::literal;
use super::super::ops::{body_text, live_holder};
use super::super::types::{ChangeRoute, Inserted, NewRecord, Requeued, State};
use super::DB_NOW_MS;
use super::write::{REPLAY_RESET, insert_plain, repeat_of_reject};
use crate::lifecycle::{self, Decision, Lookup, Original, Route, Transitions};

/// How often a key that changed or vanished between finding and locking it is looked up again.
pub(super) const KEY_TRIES: usize = 3;

/// A dedupe row, locked by this transaction.
pub(super) struct KeyRow {
    pub key: String,
    /// The record holding the key (for a conversion: the record that created it).
    pub record_id: i64,
    pub expires_at: i64,
    source: Option<String>,
    click_id: Option<String>,
    order_id: Option<String>,
    tracked: Option<String>,
    lead_id: Option<String>,
    /// The holder's state (`None`: purged).
    pub state: Option<String>,
}

impl KeyRow {
    /// The tracked conversion of this key whose window is open at `at_ms` (as
    /// `store::change::conversion`).
    pub fn conversion(&self, at_ms: i64) -> Result<Option<Conversion>, StoreError> {
        if self.expires_at <= at_ms {
            return Ok(None);
        }
        Conversion::of(
            &self.key,
            self.record_id,
            self.tracked.as_deref(),
            self.lead_id.clone(),
        )
    }

    /// The live holder at `at_ms` (see `ops::live_holder`).
    pub fn live(&self, at_ms: i64, this: Option<i64>) -> Option<i64> {
        live_holder(
            self.record_id,
            self.expires_at,
            self.state.as_deref(),
            at_ms,
            this,
        )
    }

    /// Whether this row is still what `lookup` finds (the key may have been taken over by
    /// another conversion between the lookup and the lock).
    fn matches(&self, lookup: &Lookup, at_ms: i64) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        self.tracked.is_some()
            && self.expires_at > at_ms
            && self.source.as_deref() == Some(lookup.of.as_str())
            && same(&lookup.order_id, &self.order_id)
            && same(&lookup.click_id, &self.click_id)
    }
}

/// Locks dedupe `key`'s row and reads it with its holder's state; `None`: no such row.
pub(super) async fn lock_key(
    tx: &Transaction<'_>,
    key: &str,
) -> Result<Option<KeyRow>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT record_id, expires_at, source, click_id, order_id, tracked, lead_id
             FROM dedupe WHERE key = $1 FOR UPDATE",
        )
        .await?;
    let Some(r) = tx.query_opt(&stmt, &[&key]).await? else {
        return Ok(None);
    };
    let record_id: i64 = r.try_get(0)?;
    // The holder in a statement of its own: a fresh snapshot, so a holder committed by
    // another instance meanwhile is seen as it is now.
    let stmt = tx
        .prepare_cached("SELECT state FROM records WHERE id = $1")
        .await?;
    let state = tx
        .query_opt(&stmt, &[&record_id])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    Ok(Some(KeyRow {
        key: key.to_string(),
        record_id,
        expires_at: r.try_get(1)?,
        source: r.try_get(2)?,
        click_id: r.try_get(3)?,
        order_id: r.try_get(4)?,
        tracked: r.try_get(5)?,
        lead_id: r.try_get(6)?,
        state,
    }))
}

/// The newest live conversion of `lookup.of` with the lookup's click id and order id, its
/// dedupe row locked.
async fn find(
    tx: &Transaction<'_>,
    lookup: &Lookup,
    now_ms: i64,
) -> Result<Option<Conversion>, StoreError> {
    // Only the given fields are compared, and the source is a literal: a prepared statement
    // soon runs a generic plan, which can use a partial index only when the query itself
    // states the index's condition. So the source's lookup index serves it.
    let mut sql = format!(
        "SELECT key FROM dedupe WHERE source = {} AND tracked IS NOT NULL AND expires_at > $1",
        literal(&lookup.of)
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now_ms];
    if let Some(order) = &lookup.order_id {
        params.push(order);
        sql.push_str(&format!(" AND order_id = ${}", params.len()));
    }
    if let Some(click) = &lookup.click_id {
        params.push(click);
        sql.push_str(&format!(" AND click_id = ${}", params.len()));
    }
    sql.push_str(" ORDER BY expires_at DESC LIMIT 1");
    let stmt = tx.prepare_cached(&sql).await?;
    for _ in 0..KEY_TRIES {
        let Some(row) = tx.query_opt(&stmt, &params).await? else {
            return Ok(None);
        };
        let key: String = row.try_get(0)?;
        if let Some(locked) = lock_key(tx, &key).await?
            && locked.matches(lookup, now_ms)
        {
            return locked.conversion(now_ms);
        }
    }
    Err(StoreError::Corrupt(format!(
        "the conversion of {lookup} changed {KEY_TRIES} times while being locked"
    )))
}

/// Writes a change's record: a new one for `target`'s postback, or a replayed one.
async fn write(
    tx: &Transaction<'_>,
    target: Target<'_>,
    row: &Row<'_>,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let next = (row.state == State::Queued).then_some(now_ms);
    match target {
        Target::New(rec) => {
            let raw = &rec.raw;
            let recv = raw.received_at.as_millisecond();
            let queued_at = next.map(|_| recv);
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO records (source, state, received_at, queued_at, updated_at,
                         method, path, query, client_ip, user_agent, referer, body, click_id,
                         reason, dedupe_key, original_id, next_attempt_at, kind)
                     VALUES ($1, $2, $3, $4, $3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                             $15, $4, 'update')
                     RETURNING id",
                )
                .await?;
            Ok(tx
                .query_one(
                    &stmt,
                    &[
                        &rec.source,
                        &row.state.as_str(),
                        &recv,
                        &queued_at,
                        &raw.method,
                        &raw.path,
                        &raw.query,
                        &raw.client_ip,
                        &raw.user_agent,
                        &raw.referer,
                        &row.body,
                        &row.click_id,
                        &row.reason,
                        &row.key,
                        &row.original,
                    ],
                )
                .await?
                .try_get(0)?)
        }
        Target::Existing(id) => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE records SET state = $2, body = $3, click_id = COALESCE($4, click_id),
                       reason = $5, dedupe_key = $6, original_id = $7, kind = 'update',
                       next_attempt_at = $8, queued_at = $8, lead_id = NULL, {REPLAY_RESET}
                     WHERE id = $9"
                ))
                .await?;
            tx.execute(
                &stmt,
                &[
                    &now_ms,
                    &row.state.as_str(),
                    &row.body,
                    &row.click_id,
                    &row.reason,
                    &row.key,
                    &row.original,
                    &next,
                    &id,
                ],
            )
            .await?;
            Ok(id)
        }
    }
}

/// Decides what `body` (a later postback of `conv`, whose dedupe row this transaction has
/// locked) is and stores it accordingly.
#[allow(clippy::too_many_arguments)]
pub(super) async fn later(
    tx: &Transaction<'_>,
    conv: &Conversion,
    body: &Map<String, Value>,
    click_id: Option<&str>,
    transitions: &Transitions,
    target: Target<'_>,
    now_ms: i64,
    wakes: &mut bool,
) -> Result<Later, StoreError> {
    match lifecycle::decide(&conv.tracked, body, transitions) {
        Decision::Duplicate => Ok(Later::Duplicate),
        Decision::Stale { reason } => {
            let text = body_text(body)?;
            let row = Row {
                state: State::Stale,
                body: &text,
                click_id,
                reason: Some(&reason),
                key: &conv.key,
                original: conv.record_id,
            };
            let id = write(tx, target, &row, now_ms).await?;
            Ok(Later::Stale { id, reason })
        }
        Decision::Update { change } => {
            let (id, route) = apply(tx, conv, &change, click_id, target, now_ms, wakes).await?;
            Ok(Later::Update { id, route })
        }
    }
}

/// Stores `change` of `conv`: folded into the unsent original, queued (collapsing the
/// waiting changes into it), or dead when Scaleo's `lead_id` cannot be known.
async fn apply(
    tx: &Transaction<'_>,
    conv: &Conversion,
    change: &Map<String, Value>,
    click_id: Option<&str>,
    target: Target<'_>,
    now_ms: i64,
    wakes: &mut bool,
) -> Result<(i64, ChangeRoute), StoreError> {
    let orig = conv.record_id;
    // Locked before deciding: a claim on another instance either took it before (it is in
    // flight: the change queues) or skips it until the fold is committed.
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT state, COALESCE(claimed_until > {DB_NOW_MS}, false)
             FROM records WHERE id = $1 FOR UPDATE"
        ))
        .await?;
    let row: Option<(String, bool)> = tx
        .query_opt(&stmt, &[&orig])
        .await?
        .map(|r| Ok::<_, StoreError>((r.try_get(0)?, r.try_get(1)?)))
        .transpose()?;
    let original = Original {
        id: orig,
        state: row.as_ref().map(|(s, _)| s.as_str()),
        in_flight: row.as_ref().is_some_and(|(_, live)| *live),
        has_lead: conv.lead_id.is_some(),
    };
    let text = body_text(change)?;
    let mut row = Row {
        state: State::Queued,
        body: &text,
        click_id,
        reason: None,
        key: &conv.key,
        original: orig,
    };
    let route = lifecycle::route(original);
    if !matches!(route, Route::Dead(_)) {
        // On its way to Scaleo: the memory takes it, and keeps the state before it.
        let tracked = lifecycle::overlay(&conv.tracked, [change]);
        let stmt = tx
            .prepare_cached(
                "UPDATE dedupe SET tracked = $2, settled = COALESCE(settled, $3) WHERE key = $1",
            )
            .await?;
        tx.execute(
            &stmt,
            &[&conv.key, &body_text(&tracked)?, &body_text(&conv.tracked)?],
        )
        .await?;
    }
    match route {
        Route::Fold => {
            let reason = merged_reason(orig);
            row.state = State::Merged;
            row.reason = Some(&reason);
            let id = write(tx, target, &row, now_ms).await?;
            fold(tx, orig, std::slice::from_ref(change), now_ms).await?;
            Ok((id, ChangeRoute::Merged))
        }
        Route::Dead(reason) => {
            row.state = State::Dead;
            row.reason = Some(&reason);
            let id = write(tx, target, &row, now_ms).await?;
            Ok((id, ChangeRoute::Dead(reason)))
        }
        Route::Queue => {
            let waiting = waiting(tx, orig).await?;
            let collapsed = collapsed(&waiting, change)?;
            row.body = &collapsed;
            let id = write(tx, target, &row, now_ms).await?;
            let ids: Vec<i64> = waiting
                .iter()
                .map(|(w, _)| *w)
                .filter(|w| *w != id)
                .collect();
            merged(tx, &ids, &collapsed_reason(id), now_ms).await?;
            *wakes = true;
            Ok((id, ChangeRoute::Queued))
        }
    }
}

/// The changes of `original` waiting to be sent and not in flight, oldest first, locked (a
/// change a claim takes meanwhile is left out once that claim commits).
async fn waiting(tx: &Transaction<'_>, original: i64) -> Result<Vec<(i64, String)>, StoreError> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT id, body FROM records
             WHERE original_id = $1 AND kind = 'update'
               AND state IN ('queued', 'retrying', 'paused')
               AND (claimed_until IS NULL OR claimed_until <= {DB_NOW_MS})
             ORDER BY id FOR UPDATE"
        ))
        .await?;
    tx.query(&stmt, &[&original])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

async fn merged(
    tx: &Transaction<'_>,
    ids: &[i64],
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE records SET state = 'merged', reason = $2, next_attempt_at = NULL,
               updated_at = $3 WHERE id = ANY($1)",
        )
        .await?;
    tx.execute(&stmt, &[&ids, &reason, &now_ms]).await?;
    Ok(())
}

/// Sets `changes` (in order) over the body of the unsent record `original`.
async fn fold(
    tx: &Transaction<'_>,
    original: i64,
    changes: &[Map<String, Value>],
    now_ms: i64,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached("SELECT body FROM records WHERE id = $1")
        .await?;
    let body: Option<String> = tx.query_one(&stmt, &[&original]).await?.try_get(0)?;
    let folded = folded(body.as_deref(), changes)?;
    let stmt = tx
        .prepare_cached("UPDATE records SET body = $2, updated_at = $3 WHERE id = $1")
        .await?;
    tx.execute(&stmt, &[&original, &folded, &now_ms]).await?;
    Ok(())
}

/// After an unsent create is given back (retry, pause, release): folds the changes that
/// waited for its attempt into it, so the next try sends the latest state in one create.
pub(super) async fn fold_waiting(
    tx: &Transaction<'_>,
    original: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    let waiting = waiting(tx, original).await?;
    if waiting.is_empty() {
        return Ok(());
    }
    fold(tx, original, &bodies(&waiting)?, now_ms).await?;
    let ids: Vec<i64> = waiting.iter().map(|(id, _)| *id).collect();
    merged(tx, &ids, &merged_reason(original), now_ms).await
}

/// The changes of `original` on their way to Scaleo (in flight or not), oldest first.
async fn pending(tx: &Transaction<'_>, original: i64) -> Result<Vec<(i64, String)>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT id, body FROM records
             WHERE original_id = $1 AND kind = 'update'
               AND state IN ('queued', 'retrying', 'paused')
             ORDER BY id",
        )
        .await?;
    tx.query(&stmt, &[&original])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// After record `id` (a create or a change) was settled as `ended`: the records that depended
/// on it and its conversion's memory follow (as `sqlite::change::ended`). The caller locked
/// the conversion's dedupe row before the record, as every writer does.
pub(super) async fn ended(
    tx: &Transaction<'_>,
    id: i64,
    ended: Ended,
    now_ms: i64,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT kind, original_id, dedupe_key, body, state FROM records WHERE id = $1",
        )
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&id]).await? else {
        return Ok(());
    };
    let kind: Option<String> = row.try_get(0)?;
    let original_id: Option<i64> = row.try_get(1)?;
    let key: Option<String> = row.try_get(2)?;
    let body: Option<String> = row.try_get(3)?;
    let state: String = row.try_get(4)?;
    let is_change = kind.as_deref() == Some("update");
    let orig = match (is_change, original_id) {
        (false, _) => id,
        (true, Some(o)) => o,
        (true, None) => return Ok(()),
    };
    if ended == Ended::Refused {
        let (reason, merged) = if is_change {
            (collapsed_dead_reason(id), collapsed_reason(id))
        } else {
            (refused_original_reason(id, &state), String::new())
        };
        let stmt = tx
            .prepare_cached(
                "UPDATE records SET state = 'dead', reason = $3, next_attempt_at = NULL,
                   updated_at = $4
                 WHERE original_id = $1 AND kind = 'update'
                   AND (NOT $2 AND state IN ('queued', 'retrying', 'paused', 'merged')
                        OR $2 AND state = 'merged' AND reason = $5)",
            )
            .await?;
        tx.execute(&stmt, &[&orig, &is_change, &reason, &now_ms, &merged])
            .await?;
    }
    let Some(key) = key else {
        return Ok(());
    };
    let stmt = tx
        .prepare_cached(
            "SELECT tracked, settled FROM dedupe
             WHERE key = $1 AND record_id = $2 AND tracked IS NOT NULL",
        )
        .await?;
    let Some(row) = tx.query_opt(&stmt, &[&key, &orig]).await? else {
        return Ok(());
    };
    let tracked: String = row.try_get(0)?;
    let settled: Option<String> = row.try_get(1)?;
    // Nothing was on its way when nothing was folded or queued.
    if settled.is_none() && ended == Ended::Delivered && !is_change {
        return Ok(());
    }
    let pending = pending(tx, orig).await?;
    if let Some((tracked, settled)) = memory_after(
        ended,
        is_change,
        body.as_deref(),
        &tracked,
        settled.as_deref(),
        &pending,
    )? {
        let stmt = tx
            .prepare_cached("UPDATE dedupe SET tracked = $2, settled = $3 WHERE key = $1")
            .await?;
        tx.execute(&stmt, &[&key, &tracked, &settled]).await?;
    }
    Ok(())
}

/// The bodies of the changes of `original` that arrived after record `id` and that Scaleo
/// took or will take.
async fn later_changes(
    tx: &Transaction<'_>,
    original: i64,
    id: i64,
) -> Result<Vec<String>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT body FROM records
             WHERE original_id = $1 AND kind = 'update' AND id > $2 AND body IS NOT NULL
               AND state IN ('delivered', 'queued', 'retrying', 'paused', 'merged')
             ORDER BY id",
        )
        .await?;
    tx.query(&stmt, &[&original, &id])
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(StoreError::from))
        .collect()
}

/// Stores a postback of an update-only source: a change of the conversion it finds, or
/// `rejected` when it finds none.
pub(super) async fn insert_change(
    tx: &Transaction<'_>,
    rec: &NewRecord,
    body: &Map<String, Value>,
    click_id: Option<&str>,
    lookup: &Lookup,
    transitions: &Transitions,
    wakes: &mut bool,
) -> Result<Inserted, StoreError> {
    let now_ms = rec.raw.received_at.as_millisecond();
    let Some(conv) = find(tx, lookup, now_ms).await? else {
        // A sender retrying a postback of an order nobody knows: counted on the stored one.
        if let Some(window) = rec.repeat_window
            && let Some(repeat) = repeat_of_reject(tx, rec, window).await?
        {
            return Ok(repeat);
        }
        let reason = unmatched(lookup);
        let id = insert_plain(
            tx,
            rec,
            State::Rejected,
            None,
            click_id,
            Some(&reason),
            None,
            None,
        )
        .await?;
        return Ok(Inserted::Unmatched { id, reason });
    };
    let target = Target::New(rec);
    match later(
        tx,
        &conv,
        body,
        click_id,
        transitions,
        target,
        now_ms,
        wakes,
    )
    .await?
    .inserted(conv.record_id)
    {
        Some(inserted) => Ok(inserted),
        None => {
            let text = body_text(body)?;
            let id = insert_plain(
                tx,
                rec,
                State::Duplicate,
                Some(&text),
                click_id,
                None,
                Some(&conv.key),
                Some(conv.record_id),
            )
            .await?;
            Ok(Inserted::Duplicate {
                id,
                original: conv.record_id,
            })
        }
    }
}

/// Replays record `id` (a rejected update-only postback or a dead change) as a change of
/// `conv` (its dedupe row locked), as `sqlite::change::requeue`: without the fields that the
/// changes which arrived after it set, a rejected postback is decided like a new one and a
/// dead change is sent again with the tracked fields left.
#[allow(clippy::too_many_arguments)]
pub(super) async fn requeue(
    tx: &Transaction<'_>,
    id: i64,
    current: State,
    body: &Map<String, Value>,
    click_id: Option<&str>,
    conv: Conversion,
    transitions: &Transitions,
    now: Timestamp,
    wakes: &mut bool,
) -> Result<Requeued, StoreError> {
    let now_ms = now.as_millisecond();
    let target = Target::Existing(id);
    let original = conv.record_id;
    let newer = later_changes(tx, original, id).await?;
    let body = &without(body, &superseded(&newer)?);
    let decided = match resend(current, &conv, body, transitions) {
        Some(change) => {
            let (id, route) = apply(tx, &conv, &change, click_id, target, now_ms, wakes).await?;
            Later::Update { id, route }
        }
        None => {
            later(
                tx,
                &conv,
                body,
                click_id,
                transitions,
                target,
                now_ms,
                wakes,
            )
            .await?
        }
    };
    Ok(match decided {
        Later::Duplicate => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE records SET state = 'duplicate', body = $2, reason = NULL,
                           dedupe_key = $3, original_id = $4, next_attempt_at = NULL,
                           {REPLAY_RESET}
                         WHERE id = $5"
                ))
                .await?;
            tx.execute(
                &stmt,
                &[&now_ms, &body_text(body)?, &conv.key, &original, &id],
            )
            .await?;
            Requeued::Duplicate { original }
        }
        Later::Stale { reason, .. } => Requeued::Stale { original, reason },
        Later::Update { route, .. } => Requeued::Update { original, route },
    })
}

/// The conversion a replayed change belongs to, its dedupe row locked: found by `lookup`
/// (update-only source) or by the record's own dedupe key.
pub(super) async fn replay_target(
    tx: &Transaction<'_>,
    lookup: Option<&Lookup>,
    key: Option<&str>,
    now_ms: i64,
) -> Result<Result<Conversion, String>, StoreError> {
    if let Some(l) = lookup {
        return Ok(find(tx, l, now_ms).await?.ok_or_else(|| unmatched(l)));
    }
    let Some(k) = key else {
        return Ok(Err(NO_KEY.into()));
    };
    let conv = match lock_key(tx, k).await? {
        Some(row) => row.conversion(now_ms)?,
        None => None,
    };
    Ok(conv.ok_or_else(|| key_gone(k)))
}

/// Takes dedupe `key` for record `id` until `expires` (unix ms) with the conversion's
/// memory when no row holds it (`None`); else locks the row that does and returns it.
pub(super) async fn take_key(
    tx: &Transaction<'_>,
    key: &str,
    id: i64,
    expires: i64,
    m: &Memory<'_>,
) -> Result<Option<KeyRow>, StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO dedupe (key, record_id, expires_at, source, click_id, order_id, tracked)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (key) DO NOTHING",
        )
        .await?;
    for _ in 0..KEY_TRIES {
        let taken = tx
            .execute(
                &stmt,
                &[
                    &key,
                    &id,
                    &expires,
                    &m.source,
                    &m.click_id,
                    &m.order_id,
                    &m.tracked,
                ],
            )
            .await?;
        if taken == 1 {
            return Ok(None);
        }
        if let Some(row) = lock_key(tx, key).await? {
            return Ok(Some(row));
        }
        // Purged between the conflict and the lock: take it again.
    }
    Err(StoreError::Corrupt(format!(
        "dedupe key {key:?} vanished {KEY_TRIES} times while being taken"
    )))
}

/// Takes the locked dedupe row of `key` over for record `id` (its holder is gone, dead or
/// expired): a new conversion, with no Scaleo ids yet.
pub(super) async fn remember(
    tx: &Transaction<'_>,
    key: &str,
    id: i64,
    expires: i64,
    m: &Memory<'_>,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "UPDATE dedupe SET record_id = $2, expires_at = $3, source = $4, click_id = $5,
               order_id = $6, tracked = $7, settled = NULL, lead_id = NULL,
               transaction_id = NULL
             WHERE key = $1",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &key,
            &id,
            &expires,
            &m.source,
            &m.click_id,
            &m.order_id,
            &m.tracked,
        ],
    )
    .await?;
    Ok(())
}
