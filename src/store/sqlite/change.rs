//! The conversion lifecycle on SQLite: later postbacks of a conversion, run by the writer
//! inside a group's transaction (so a conversion's changes are decided one at a time).
//!
//! This file reads and writes the rows: the conversion's memory in its dedupe row, the
//! change's record (`kind = 'update'`, `original_id` = the record that created the
//! conversion), the fold of a change into an unsent original and the collapse of waiting
//! changes into the newest.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use super::super::StoreError;
use super::super::change::*;
use super::super::ops::body_text;
use super::super::types::{ChangeRoute, Inserted, NewRecord, NewState, Requeued, State};
use super::lookup;
use super::ops::REPLAY_RESET;
use crate::lifecycle::{self, Decision, Lookup, Original, Route, Transitions};

/// The tracked conversion of dedupe `key` whose window is still open at `at_ms` (`None`:
/// unknown, expired, or changes not tracked).
pub(crate) fn conversion(
    c: &Connection,
    key: &str,
    at_ms: i64,
) -> Result<Option<Conversion>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT record_id, tracked, lead_id FROM dedupe WHERE key = ?1 AND expires_at > ?2",
        )?
        .query_row(params![key, at_ms], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .optional()?;
    match row {
        Some((record_id, tracked, lead_id)) => {
            Conversion::of(key, record_id, tracked.as_deref(), lead_id)
        }
        None => Ok(None),
    }
}

/// The newest live conversion of `lookup.of` with the lookup's click id and order id.
fn find(c: &Connection, lookup: &Lookup, now_ms: i64) -> Result<Option<Conversion>, StoreError> {
    let mut params: Vec<&dyn rusqlite::ToSql> = vec![&now_ms];
    params.extend(lookup::find_params(lookup).map(|v| v as &dyn rusqlite::ToSql));
    let key: Option<String> = c
        .prepare_cached(&lookup::find_sql(lookup))?
        .query_row(params.as_slice(), |r| r.get(0))
        .optional()?;
    match key {
        Some(k) => conversion(c, &k, now_ms),
        None => Ok(None),
    }
}

fn write(
    c: &Connection,
    target: Target<'_>,
    row: &Row<'_>,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let next = (row.state == State::Queued).then_some(now_ms);
    match target {
        Target::New(rec) => {
            let raw = &rec.raw;
            let recv = raw.received_at.as_millisecond();
            c.prepare_cached(
                "INSERT INTO records (source, state, received_at, queued_at, updated_at, method,
                     path, query, client_ip, user_agent, referer, body, click_id, reason,
                     dedupe_key, original_id, next_attempt_at, kind)
                 VALUES (?1, ?2, ?3, ?4, ?3, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                         ?4, 'update')",
            )?
            .execute(params![
                rec.source,
                row.state.as_str(),
                recv,
                next.map(|_| recv),
                raw.method,
                raw.path,
                raw.query,
                raw.client_ip,
                raw.user_agent,
                raw.referer,
                row.body,
                row.click_id,
                row.reason,
                row.key,
                row.original,
            ])?;
            Ok(c.last_insert_rowid())
        }
        Target::Existing(id) => {
            c.execute(
                &format!(
                    "UPDATE records SET state = ?2, body = ?3, click_id = COALESCE(?4, click_id),
                       reason = ?5, dedupe_key = ?6, original_id = ?7, kind = 'update',
                       next_attempt_at = ?8, queued_at = ?8, lead_id = NULL, {REPLAY_RESET}
                     WHERE id = ?9"
                ),
                params![
                    now_ms,
                    row.state.as_str(),
                    row.body,
                    row.click_id,
                    row.reason,
                    row.key,
                    row.original,
                    next,
                    id
                ],
            )?;
            Ok(id)
        }
    }
}

/// Decides what `body` (a later postback of `conv`) is and stores it accordingly.
#[allow(clippy::too_many_arguments)]
pub(crate) fn later(
    c: &Connection,
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
            let id = write(c, target, &row, now_ms)?;
            Ok(Later::Stale { id, reason })
        }
        Decision::Update { change } => {
            let (id, route) = apply(c, conv, &change, click_id, target, now_ms, wakes)?;
            Ok(Later::Update { id, route })
        }
    }
}

/// Stores `change` of `conv`: folded into the unsent original, queued (collapsing the
/// waiting changes into it), or dead when Scaleo's `lead_id` cannot be known.
fn apply(
    c: &Connection,
    conv: &Conversion,
    change: &Map<String, Value>,
    click_id: Option<&str>,
    target: Target<'_>,
    now_ms: i64,
    wakes: &mut bool,
) -> Result<(i64, ChangeRoute), StoreError> {
    let orig = conv.record_id;
    let row: Option<(String, Option<i64>)> = c
        .prepare_cached("SELECT state, claimed_until FROM records WHERE id = ?1")?
        .query_row([orig], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let original = Original {
        id: orig,
        state: row.as_ref().map(|(s, _)| s.as_str()),
        in_flight: row
            .as_ref()
            .and_then(|(_, until)| *until)
            .is_some_and(|until| until > now_ms),
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
        c.prepare_cached(
            "UPDATE dedupe SET tracked = ?2, settled = COALESCE(settled, ?3) WHERE key = ?1",
        )?
        .execute(params![
            conv.key,
            body_text(&tracked)?,
            body_text(&conv.tracked)?
        ])?;
    }
    match route {
        Route::Fold => {
            let reason = merged_reason(orig);
            row.state = State::Merged;
            row.reason = Some(&reason);
            let id = write(c, target, &row, now_ms)?;
            fold(c, orig, std::slice::from_ref(change), now_ms)?;
            Ok((id, ChangeRoute::Merged))
        }
        Route::Dead(reason) => {
            row.state = State::Dead;
            row.reason = Some(&reason);
            let id = write(c, target, &row, now_ms)?;
            Ok((id, ChangeRoute::Dead(reason)))
        }
        Route::Queue => {
            let waiting = waiting(c, orig, now_ms)?;
            let collapsed = collapsed(&waiting, change)?;
            row.body = &collapsed;
            let id = write(c, target, &row, now_ms)?;
            let ids: Vec<i64> = waiting
                .iter()
                .map(|(w, _)| *w)
                .filter(|w| *w != id)
                .collect();
            merged(c, &ids, &collapsed_reason(id), now_ms)?;
            *wakes = true;
            Ok((id, ChangeRoute::Queued))
        }
    }
}

/// The changes of `original` waiting to be sent and not in flight, oldest first.
fn waiting(c: &Connection, original: i64, now_ms: i64) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, body FROM records
         WHERE original_id = ?1 AND kind = 'update' AND state IN ('queued', 'retrying', 'paused')
           AND (claimed_until IS NULL OR claimed_until <= ?2)
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![original, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn merged(c: &Connection, ids: &[i64], reason: &str, now_ms: i64) -> Result<(), StoreError> {
    let mut stmt = c.prepare_cached(
        "UPDATE records SET state = 'merged', reason = ?2, next_attempt_at = NULL,
           updated_at = ?3 WHERE id = ?1",
    )?;
    for id in ids {
        stmt.execute(params![id, reason, now_ms])?;
    }
    Ok(())
}

/// Sets `changes` (in order) over the body of the unsent record `original`.
fn fold(
    c: &Connection,
    original: i64,
    changes: &[Map<String, Value>],
    now_ms: i64,
) -> Result<(), StoreError> {
    let body: Option<String> = c
        .prepare_cached("SELECT body FROM records WHERE id = ?1")?
        .query_row([original], |r| r.get(0))?;
    let folded = folded(body.as_deref(), changes)?;
    c.prepare_cached("UPDATE records SET body = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![original, folded, now_ms])?;
    Ok(())
}

/// After an unsent create is given back (retry, pause, release): folds the changes that
/// waited for its attempt into it, so the next try sends the latest state in one create.
pub(crate) fn fold_waiting(c: &Connection, original: i64, now_ms: i64) -> Result<(), StoreError> {
    let waiting = waiting(c, original, now_ms)?;
    if waiting.is_empty() {
        return Ok(());
    }
    fold(c, original, &bodies(&waiting)?, now_ms)?;
    let ids: Vec<i64> = waiting.iter().map(|(id, _)| *id).collect();
    merged(c, &ids, &merged_reason(original), now_ms)
}

/// The changes of `original` on their way to Scaleo (in flight or not), oldest first.
fn pending(c: &Connection, original: i64) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, body FROM records
         WHERE original_id = ?1 AND kind = 'update' AND state IN ('queued', 'retrying', 'paused')
         ORDER BY id",
    )?;
    let rows = stmt.query_map([original], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// After record `id` (a create or a change) was settled as `ended`: the records that depended
/// on it and its conversion's memory follow (see `store::change`).
pub(crate) fn ended(c: &Connection, id: i64, ended: Ended, now_ms: i64) -> Result<(), StoreError> {
    type Row = (
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<String>,
        String,
    );
    let row: Option<Row> = c
        .prepare_cached(
            "SELECT kind, original_id, dedupe_key, body, state FROM records WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((kind, original_id, key, body, state)) = row else {
        return Ok(());
    };
    let is_change = kind.as_deref() == Some("update");
    let orig = match (is_change, original_id) {
        (false, _) => id,
        (true, Some(o)) => o,
        (true, None) => return Ok(()),
    };
    if ended == Ended::Refused {
        let mut stmt = c.prepare_cached(
            "UPDATE records SET state = 'dead', reason = ?3, next_attempt_at = NULL,
               updated_at = ?4
             WHERE original_id = ?1 AND kind = 'update'
               AND (?2 = 0 AND state IN ('queued', 'retrying', 'paused', 'merged')
                    OR ?2 = 1 AND state = 'merged' AND reason = ?5)",
        )?;
        let (reason, merged) = if is_change {
            (collapsed_dead_reason(id), collapsed_reason(id))
        } else {
            (refused_original_reason(id, &state), String::new())
        };
        stmt.execute(params![orig, is_change, reason, now_ms, merged])?;
    }
    let Some(key) = key else {
        return Ok(());
    };
    let memory: Option<(String, Option<String>)> = c
        .prepare_cached(
            "SELECT tracked, settled FROM dedupe
             WHERE key = ?1 AND record_id = ?2 AND tracked IS NOT NULL",
        )?
        .query_row(params![key, orig], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((tracked, settled)) = memory else {
        return Ok(());
    };
    // Nothing was on its way when nothing was folded or queued.
    if settled.is_none() && ended == Ended::Delivered && !is_change {
        return Ok(());
    }
    let pending = pending(c, orig)?;
    if let Some((tracked, settled)) = memory_after(
        ended,
        is_change,
        body.as_deref(),
        &tracked,
        settled.as_deref(),
        &pending,
    )? {
        c.prepare_cached("UPDATE dedupe SET tracked = ?2, settled = ?3 WHERE key = ?1")?
            .execute(params![key, tracked, settled])?;
    }
    Ok(())
}

/// The bodies of the changes of `original` that arrived after record `id` and that Scaleo
/// took or will take.
fn later_changes(c: &Connection, original: i64, id: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT body FROM records
         WHERE original_id = ?1 AND kind = 'update' AND id > ?2 AND body IS NOT NULL
           AND state IN ('delivered', 'queued', 'retrying', 'paused', 'merged')
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![original, id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Stores a postback of an update-only source: a change of the conversion it finds, or
/// `rejected` when it finds none.
pub(crate) fn insert_change(
    c: &Connection,
    rec: &NewRecord,
    body: &Map<String, Value>,
    click_id: Option<&str>,
    lookup: &Lookup,
    transitions: &Transitions,
    wakes: &mut bool,
) -> Result<Inserted, StoreError> {
    let now_ms = rec.raw.received_at.as_millisecond();
    let Some(conv) = find(c, lookup, now_ms)? else {
        // A sender retrying a postback of an order nobody knows: counted on the stored one.
        if let Some(window) = rec.repeat_window
            && let Some(repeat) = super::ops::repeat_of_reject(c, rec, window)?
        {
            return Ok(repeat);
        }
        let reason = unmatched(lookup);
        let id = super::ops::insert_plain(
            c,
            rec,
            State::Rejected,
            None,
            click_id,
            Some(&reason),
            None,
            None,
        )?;
        return Ok(Inserted::Unmatched { id, reason });
    };
    let target = Target::New(rec);
    match later(c, &conv, body, click_id, transitions, target, now_ms, wakes)?
        .inserted(conv.record_id)
    {
        Some(inserted) => Ok(inserted),
        None => {
            let text = body_text(body)?;
            let id = super::ops::insert_plain(
                c,
                rec,
                State::Duplicate,
                Some(&text),
                click_id,
                None,
                Some(&conv.key),
                Some(conv.record_id),
            )?;
            Ok(Inserted::Duplicate {
                id,
                original: conv.record_id,
            })
        }
    }
}

/// Replays record `id` (a rejected update-only postback or a dead change) as a change. The
/// fields that the changes which arrived after it set are left out of its re-mapped body
/// (arrival order). A rejected postback is then decided like a new one; a dead change is sent
/// again with the tracked fields left (Scaleo never took them; a memory written before dead
/// changes were taken back out of it may still claim them), unless it would move the
/// conversion back (`stale`) or nothing is left (`duplicate`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn requeue(
    c: &Connection,
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
    let body = &without(body, &superseded(&later_changes(c, original, id)?)?);
    let decided = match resend(current, &conv, body, transitions) {
        Some(change) => {
            let (id, route) = apply(c, &conv, &change, click_id, target, now_ms, wakes)?;
            Later::Update { id, route }
        }
        None => later(c, &conv, body, click_id, transitions, target, now_ms, wakes)?,
    };
    Ok(match decided {
        Later::Duplicate => {
            c.execute(
                &format!(
                    "UPDATE records SET state = 'duplicate', body = ?2, reason = NULL,
                       dedupe_key = ?3, original_id = ?4, next_attempt_at = NULL, {REPLAY_RESET}
                     WHERE id = ?5"
                ),
                params![now_ms, body_text(body)?, conv.key, original, id],
            )?;
            Requeued::Duplicate { original }
        }
        Later::Stale { reason, .. } => Requeued::Stale { original, reason },
        Later::Update { route, .. } => Requeued::Update { original, route },
    })
}

/// The conversion a replayed change belongs to: found by `lookup` (update-only source) or
/// by the record's own dedupe key.
pub(crate) fn replay_target(
    c: &Connection,
    lookup: Option<&Lookup>,
    key: Option<&str>,
    now_ms: i64,
) -> Result<Result<Conversion, String>, StoreError> {
    if let Some(l) = lookup {
        return Ok(find(c, l, now_ms)?.ok_or_else(|| unmatched(l)));
    }
    match key {
        Some(k) => Ok(conversion(c, k, now_ms)?.ok_or_else(|| key_gone(k))),
        None => Ok(Err(NO_KEY.into())),
    }
}

/// What `state` would be to the conversions stored now, without storing anything (for
/// `explain`): `None` when it would create a new conversion (or changes are not tracked).
pub(crate) fn preview(c: &Connection, state: &NewState) -> Result<Option<Preview>, StoreError> {
    let now_ms = Timestamp::now().as_millisecond();
    let (conv, body, transitions) = match state {
        NewState::Queued {
            dedupe: Some(d),
            updates: None,
            ..
        } => {
            let (original, _) = super::ops::live_original(c, &d.key, now_ms, None)?;
            return Ok(original.map(Preview::duplicate_of));
        }
        NewState::Queued {
            body,
            dedupe: Some(d),
            updates: Some(transitions),
            ..
        } => (conversion(c, &d.key, now_ms)?, body, transitions),
        NewState::Change {
            body,
            lookup,
            transitions,
            ..
        } => match find(c, lookup, now_ms)? {
            Some(conv) => (Some(conv), body, transitions),
            None => return Ok(Some(Preview::unmatched(lookup))),
        },
        _ => return Ok(None),
    };
    let Some(conv) = conv else {
        return Ok(None);
    };
    Ok(Some(Preview::of(&conv, body, transitions)))
}
