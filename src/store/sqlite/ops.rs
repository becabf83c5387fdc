//! The SQL of each write operation on SQLite, run by the writer inside a group's transaction.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::super::change;
use super::super::claim::ClaimRow;
use super::super::ops::{ClaimRequest, Columns, PURGE_CHUNK, body_text, live_holder};
use super::super::types::{
    DedupeKey, Inserted, NewRecord, NewState, PauseReason, PauseScope, Requeued, State,
};
use super::super::{StoreError, ts_plus};
use super::change as sql_change;

pub(crate) fn insert(
    c: &Connection,
    rec: &NewRecord,
    wakes: &mut bool,
) -> Result<Inserted, StoreError> {
    if let NewState::Change {
        body,
        click_id,
        lookup,
        transitions,
    } = &rec.state
    {
        return sql_change::insert_change(
            c,
            rec,
            body,
            click_id.as_deref(),
            lookup,
            transitions,
            wakes,
        );
    }
    let recv = rec.raw.received_at.as_millisecond();
    if let (NewState::Rejected { .. }, Some(window)) = (&rec.state, rec.repeat_window)
        && let Some(repeat) = repeat_of_reject(c, rec, window)?
    {
        return Ok(repeat);
    }
    let cols = Columns::of(rec)?;
    let key = cols.dedupe.map(|d| d.key.as_str());
    // `held`: a dedupe row exists for the key (live or not); a fresh key, the common case,
    // needs no second look for a conversion.
    let (original, held) = match key {
        Some(k) => live_original(c, k, recv, None)?,
        None => (None, false),
    };
    if let (
        true,
        Some(key),
        NewState::Queued {
            body,
            click_id,
            updates: Some(transitions),
            ..
        },
    ) = (held, key, &rec.state)
        && let Some(conv) = sql_change::conversion(c, key, recv)?
    {
        // A later postback of a tracked conversion: a change, a stale one, or (a plain
        // resend) a duplicate as below. A change of a dead original is dead too.
        let target = change::Target::New(rec);
        let later = sql_change::later(
            c,
            &conv,
            body,
            Some(click_id),
            transitions,
            target,
            recv,
            wakes,
        )?;
        if let Some(inserted) = later.inserted(conv.record_id) {
            return Ok(inserted);
        }
    }
    let state = match original {
        Some(_) => State::Duplicate,
        None => cols.state,
    };
    let queued = state == State::Queued;
    let id = insert_plain(
        c,
        rec,
        state,
        cols.body.as_deref(),
        cols.click_id,
        cols.reason,
        key,
        original,
    )?;
    if let Some(original) = original {
        return Ok(Inserted::Duplicate { id, original });
    }
    if let (Some(d), true, NewState::Queued { body, updates, .. }) =
        (cols.dedupe, queued, &rec.state)
    {
        let memory = change::Memory::of(&rec.source, body, updates.is_some())?;
        remember(
            c,
            &d.key,
            id,
            ts_plus(rec.raw.received_at, d.window),
            &memory,
        )?;
    }
    *wakes |= queued;
    Ok(Inserted::Stored { id })
}

/// The newest rejected record of the same source with the same raw query received within
/// `window` before `rec`: its `repeats` counted up, instead of a new record.
pub(crate) fn repeat_of_reject(
    c: &Connection,
    rec: &NewRecord,
    window: std::time::Duration,
) -> Result<Option<Inserted>, StoreError> {
    let recv = rec.raw.received_at.as_millisecond();
    let since = recv.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    let mut stmt = c.prepare_cached(
        "UPDATE records SET repeats = repeats + 1
         WHERE id = (SELECT id FROM records
                     WHERE source = ?1 AND query = ?2 AND state = 'rejected'
                       AND received_at >= ?3
                     ORDER BY id DESC LIMIT 1)
         RETURNING id, COALESCE(reason, ''), repeats",
    )?;
    let mut rows = stmt.query(params![rec.source, rec.raw.query, since])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    Ok(Some(Inserted::Repeat {
        id: row.get(0)?,
        reason: row.get(1)?,
        repeats: row.get(2)?,
    }))
}

/// Inserts a record of kind create (or a duplicate or reject) as it arrived.
#[allow(clippy::too_many_arguments)]
pub(crate) fn insert_plain(
    c: &Connection,
    rec: &NewRecord,
    state: State,
    body: Option<&str>,
    click_id: Option<&str>,
    reason: Option<&str>,
    key: Option<&str>,
    original: Option<i64>,
) -> Result<i64, StoreError> {
    let recv = rec.raw.received_at.as_millisecond();
    let queued = state == State::Queued;
    let raw = &rec.raw;
    // `last_insert_rowid` rather than RETURNING, which costs about 1 us more per insert.
    c.prepare_cached(
        "INSERT INTO records (source, state, received_at, queued_at, updated_at, method, path,
                 query, client_ip, user_agent, referer, body, click_id, reason, dedupe_key,
                 original_id, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, ?3, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?4)",
    )?
    .execute(params![
        rec.source,
        state.as_str(),
        recv,
        queued.then_some(recv),
        raw.method,
        raw.path,
        raw.query,
        raw.client_ip,
        raw.user_agent,
        raw.referer,
        body,
        click_id,
        reason,
        key,
        original,
    ])?;
    Ok(c.last_insert_rowid())
}

/// The live record holding dedupe `key` at `at_ms`: the key has not expired and its record
/// is neither rejected nor dead (a purged original still counts while the key lives); and
/// whether the key has a row at all.
pub(crate) fn live_original(
    c: &Connection,
    key: &str,
    at_ms: i64,
    this: Option<i64>,
) -> Result<(Option<i64>, bool), StoreError> {
    // A correlated subquery, not a LEFT JOIN: with STAT4 the join form is re-prepared on
    // every run (measured: 7 us a lookup against 1 us), and this runs once per postback.
    let mut stmt = c.prepare_cached(
        "SELECT d.record_id, d.expires_at,
                (SELECT r.state FROM records r WHERE r.id = d.record_id)
         FROM dedupe d WHERE d.key = ?1",
    )?;
    let mut rows = stmt.query([key])?;
    let Some(row) = rows.next()? else {
        return Ok((None, false));
    };
    let (id, expires, state): (i64, i64, Option<String>) = (row.get(0)?, row.get(1)?, row.get(2)?);
    Ok((
        live_holder(id, expires, state.as_deref(), at_ms, this),
        true,
    ))
}

/// Takes dedupe `key` for record `id` with the conversion's memory (a new conversion: no
/// `lead_id` yet).
fn remember(
    c: &Connection,
    key: &str,
    id: i64,
    expires: Timestamp,
    m: &change::Memory<'_>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO dedupe (key, record_id, expires_at, source, click_id, order_id, tracked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (key) DO UPDATE SET record_id = excluded.record_id,
             expires_at = excluded.expires_at, source = excluded.source,
             click_id = excluded.click_id, order_id = excluded.order_id,
             tracked = excluded.tracked, settled = NULL, lead_id = NULL,
             transaction_id = NULL",
    )?
    .execute(params![
        key,
        id,
        expires.as_millisecond(),
        m.source,
        m.click_id,
        m.order_id,
        m.tracked
    ])?;
    Ok(())
}

/// Persists a pause (idempotent).
pub(crate) fn pause(
    (scope, reason): &(PauseScope, PauseReason),
    c: &Connection,
    now: Timestamp,
    _: &mut bool,
) -> Result<(), StoreError> {
    c.prepare_cached("INSERT OR IGNORE INTO paused (scope, reason, since) VALUES (?1, ?2, ?3)")?
        .execute(params![scope.key(), reason.as_str(), now.as_millisecond()])?;
    Ok(())
}

/// Makes retrying record `id` due now (an operator's "send now"); `false` when it is not
/// retrying. The retry count and the age bound are unchanged.
pub(crate) fn send_now(
    id: &i64,
    c: &Connection,
    now: Timestamp,
    wakes: &mut bool,
) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE records SET next_attempt_at = ?2, updated_at = ?2 WHERE id = ?1 AND state = 'retrying'",
        )?
        .execute(params![id, now.as_millisecond()])?;
    *wakes |= n > 0;
    Ok(n > 0)
}

/// Removes the pauses of `scope` (only the one with `reason` when given); returns how many.
pub(crate) fn resume(
    (scope, reason): &(PauseScope, Option<PauseReason>),
    c: &Connection,
    _: Timestamp,
    wakes: &mut bool,
) -> Result<u64, StoreError> {
    let n = match reason {
        Some(r) => c
            .prepare_cached("DELETE FROM paused WHERE scope = ?1 AND reason = ?2")?
            .execute(params![scope.key(), r.as_str()])?,
        // An operator's resume of all forwarding also lifts the pauses the relay set on a
        // network's sources (a refused key, an outage): see `Store::resume`.
        None => c
            .prepare_cached(
                "DELETE FROM paused
                 WHERE scope = ?1 OR (?1 = '*' AND reason IN ('upstream_auth', 'outage'))",
            )?
            .execute([scope.key()])?,
    };
    *wakes |= n > 0;
    Ok(n as u64)
}

pub(crate) fn claim(
    c: &Connection,
    req: &ClaimRequest,
    now: Timestamp,
) -> Result<Vec<ClaimRow>, StoreError> {
    let pauses = {
        let mut stmt = c.prepare_cached("SELECT scope, reason FROM paused")?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<(String, String)>, _>>()?
    };
    let Some(exclude) = req.excluded(pauses) else {
        return Ok(Vec::new());
    };
    let q = ClaimQuery {
        now: now.as_millisecond(),
        until: ts_plus(now, req.lease).as_millisecond(),
        owner: &req.owner,
        exclude: &exclude,
        only: req.only(),
    };
    let mut rows = Vec::new();
    for (state, fill) in ClaimRequest::FILL {
        let n = req.most(fill, rows.len());
        if n > 0 {
            rows.extend(q.run(c, state, n)?);
        }
    }
    Ok(rows)
}

struct ClaimQuery<'a> {
    now: i64,
    until: i64,
    owner: &'a str,
    exclude: &'a [String],
    only: Option<&'a str>,
}

impl ClaimQuery<'_> {
    fn run(&self, c: &Connection, state: State, limit: usize) -> Result<Vec<ClaimRow>, StoreError> {
        use rusqlite::types::Value;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut sql = String::from(
            "UPDATE records SET claimed_until = ?1, claim_owner = ?2 WHERE id IN (
               SELECT id FROM records r WHERE state = ?3 AND next_attempt_at <= ?4
                 AND (claimed_until IS NULL OR claimed_until <= ?4)
                 AND (kind IS NULL OR NOT EXISTS (SELECT 1 FROM records o
                        WHERE o.original_id = r.original_id AND o.id < r.id AND o.kind = 'update'
                          AND o.state IN ('queued', 'retrying', 'paused'))
                      AND NOT EXISTS (SELECT 1 FROM records o WHERE o.id = r.original_id
                          AND o.state IN ('queued', 'retrying', 'paused')))",
        );
        let mut args: Vec<Value> = vec![
            self.until.into(),
            self.owner.to_string().into(),
            state.as_str().to_string().into(),
            self.now.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ];
        if let Some(s) = self.only {
            args.push(s.to_string().into());
            sql.push_str(&format!(" AND source = ?{}", args.len()));
        }
        if !self.exclude.is_empty() {
            sql.push_str(" AND source NOT IN (");
            for (i, s) in self.exclude.iter().enumerate() {
                args.push(s.clone().into());
                let sep = if i == 0 { "" } else { ", " };
                sql.push_str(&format!("{sep}?{}", args.len()));
            }
            sql.push(')');
        }
        sql.push_str(
            " ORDER BY next_attempt_at LIMIT ?5)
             RETURNING id, source, click_id, body, attempts, queued_at, received_at, state,
                       kind, original_id, dedupe_key",
        );
        let mut stmt = c.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), ClaimRow::from_row)?;
        let mut rows = rows.collect::<Result<Vec<_>, _>>()?;
        for row in &mut rows {
            if let Some(change) = &mut row.change {
                change.lead_id = c
                    .prepare_cached("SELECT lead_id FROM dedupe WHERE key = ?1")?
                    .query_row([&change.key], |r| r.get(0))
                    .optional()?
                    .flatten();
            }
        }
        Ok(rows)
    }
}

/// See `Store::probe_write`.
pub(crate) fn probe_write(c: &Connection, now_ms: i64) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )?
    .execute([now_ms])?;
    Ok(())
}

/// See `Store::extend_age`.
pub(crate) fn extend_age(
    c: &Connection,
    ms: i64,
    sources: Option<&[String]>,
) -> Result<u64, StoreError> {
    // The sources as a JSON array (NULL: every source), read with json_each.
    let sources = sources.map(|s| serde_json::Value::from(s.to_vec()).to_string());
    let n = c
        .prepare_cached(
            "UPDATE records SET queued_at = queued_at + ?1
             WHERE state IN ('queued', 'retrying', 'paused') AND queued_at IS NOT NULL
               AND (?2 IS NULL OR source IN (SELECT value FROM json_each(?2)))",
        )?
        .execute(params![ms, sources])?;
    Ok(n as u64)
}

pub(crate) fn purge(c: &Connection, cutoff: Timestamp, now: Timestamp) -> Result<u64, StoreError> {
    let records = c
        .prepare_cached(
            "DELETE FROM records WHERE id IN (SELECT id FROM records
               WHERE state IN ('delivered', 'duplicate', 'duplicate_upstream', 'skipped')
                 AND received_at < ?1 LIMIT ?2)",
        )?
        .execute(params![cutoff.as_millisecond(), PURGE_CHUNK as i64])?;
    let keys = c
        .prepare_cached(
            "DELETE FROM dedupe WHERE key IN
               (SELECT key FROM dedupe WHERE expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now.as_millisecond(), PURGE_CHUNK as i64])?;
    // The caller loops while a chunk came back full, whichever table filled it.
    Ok(records.max(keys) as u64)
}

pub(crate) fn requeue(
    c: &Connection,
    id: i64,
    new: &NewState,
    now: Timestamp,
    wakes: &mut bool,
) -> Result<Requeued, StoreError> {
    let current: Option<(String, Option<String>)> = c
        .prepare_cached("SELECT state, kind FROM records WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (current, kind) = current.ok_or(StoreError::NotFound(id))?;
    let state = State::parse(&current).ok_or_else(|| StoreError::Corrupt(current.clone()))?;
    if !matches!(state, State::Rejected | State::Dead) {
        return Err(StoreError::NotReplayable { id, state });
    }
    let now_ms = now.as_millisecond();
    let is_change = kind.as_deref() == Some("update");
    let unmatched;
    let (state, reason, click_id) = match new {
        NewState::Change {
            body,
            click_id,
            lookup,
            transitions,
        } => match sql_change::replay_target(c, Some(lookup), None, now_ms)? {
            Ok(conv) => {
                let click_id = click_id.as_deref();
                return sql_change::requeue(
                    c,
                    id,
                    state,
                    body,
                    click_id,
                    conv,
                    transitions,
                    now,
                    wakes,
                );
            }
            Err(why) => {
                unmatched = why;
                (State::Rejected, &unmatched, click_id.as_deref())
            }
        },
        NewState::Queued {
            body,
            click_id,
            dedupe,
            updates,
        } => {
            if let (Some(d), Some(transitions)) = (dedupe, updates)
                && let Some(conv) = sql_change::conversion(c, &d.key, now_ms)?
                && conv.record_id != id
                && (is_change || state == State::Rejected)
            {
                return sql_change::requeue(
                    c,
                    id,
                    state,
                    body,
                    Some(click_id),
                    conv,
                    transitions,
                    now,
                    wakes,
                );
            }
            return requeue_queued(
                c,
                id,
                body,
                click_id,
                dedupe.as_ref(),
                updates.is_some(),
                now,
                wakes,
            );
        }
        NewState::Rejected { reason, click_id } => (State::Rejected, reason, click_id.as_deref()),
        NewState::Skipped { reason } => (State::Skipped, reason, None),
    };
    c.execute(
        &format!(
            "UPDATE records SET state = ?2, body = NULL, reason = ?3,
               click_id = COALESCE(?4, click_id), next_attempt_at = NULL, {REPLAY_RESET}
             WHERE id = ?5"
        ),
        params![now.as_millisecond(), state.as_str(), reason, click_id, id],
    )?;
    Ok(match state {
        State::Rejected => Requeued::Rejected {
            reason: reason.clone(),
        },
        _ => Requeued::Skipped,
    })
}

fn source_of(c: &Connection, id: i64) -> Result<String, StoreError> {
    Ok(
        c.prepare_cached("SELECT source FROM records WHERE id = ?1")?
            .query_row([id], |r| r.get(0))?,
    )
}

/// The columns a replay starts afresh (`?1` is now).
pub(crate) const REPLAY_RESET: &str = "attempts = 0, claimed_until = NULL, claim_owner = NULL,
    last_error = NULL, transaction_id = NULL, updated_at = ?1";

#[allow(clippy::too_many_arguments)]
fn requeue_queued(
    c: &Connection,
    id: i64,
    body: &serde_json::Map<String, serde_json::Value>,
    click_id: &str,
    dedupe: Option<&DedupeKey>,
    tracks: bool,
    now: Timestamp,
    wakes: &mut bool,
) -> Result<Requeued, StoreError> {
    let now_ms = now.as_millisecond();
    let source = source_of(c, id)?;
    let memory = change::Memory::of(&source, body, tracks)?;
    let body = body_text(body)?;
    let key = dedupe.map(|d| d.key.as_str());
    let original = match key {
        Some(k) => live_original(c, k, now_ms, Some(id))?.0,
        None => None,
    };
    let (state, next) = match original {
        Some(_) => (State::Duplicate, None),
        None => (State::Queued, Some(now_ms)),
    };
    c.execute(
        &format!(
            "UPDATE records SET state = ?2, body = ?3, click_id = ?4, reason = NULL,
               dedupe_key = ?5, original_id = ?6, next_attempt_at = ?7, queued_at = ?7,
               kind = NULL, lead_id = NULL, {REPLAY_RESET} WHERE id = ?8"
        ),
        params![
            now_ms,
            state.as_str(),
            body,
            click_id,
            key,
            original,
            next,
            id
        ],
    )?;
    if let Some(original) = original {
        return Ok(Requeued::Duplicate { original });
    }
    if let Some(d) = dedupe {
        remember(c, &d.key, id, ts_plus(now, d.window), &memory)?;
    }
    *wakes = true;
    Ok(Requeued::Queued)
}
