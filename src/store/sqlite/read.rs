//! Read-side queries on SQLite for the admin API, the CLI and the metrics (own connections).

use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row};

use super::super::StoreError;
use super::super::read::*;
use super::super::types::{PauseReason, PauseScope, Paused, RawPostback, State};

fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("time {ms}: {e}")))
}

fn state(name: &str) -> Result<State, StoreError> {
    State::parse(name).ok_or_else(|| StoreError::Corrupt(format!("state {name:?}")))
}

pub(crate) fn paused(c: &Connection) -> Result<Vec<Paused>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT scope, reason, since FROM paused ORDER BY since")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (scope, reason, since) = row?;
        out.push(Paused {
            scope: PauseScope::from_key(&scope),
            reason: PauseReason::parse(&reason)
                .ok_or_else(|| StoreError::Corrupt(format!("pause reason {reason:?}")))?,
            since: ts(since)?,
        });
    }
    Ok(out)
}

const SUMMARY_COLS: &str = "id, source, state, click_id, received_at";

fn summary(r: &Row<'_>) -> Result<Summary, StoreError> {
    Ok(Summary {
        id: r.get(0)?,
        source: r.get(1)?,
        state: state(&r.get::<_, String>(2)?)?,
        click_id: r.get(3)?,
        received_at: ts(r.get(4)?)?,
    })
}

pub(crate) fn get(c: &Connection, id: i64) -> Result<Option<RecordView>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {SUMMARY_COLS}, method, path, query, client_ip, user_agent, referer, body, reason,
                transaction_id, original_id, attempts, next_attempt_at, last_error, kind,
                lead_id, dedupe_key, repeats
         FROM records WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let summary = summary(r)?;
    let body = match r.get::<_, Option<String>>(11)? {
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("body: {e}")))?,
        ),
        None => None,
    };
    let next_attempt_at = match r.get::<_, Option<i64>>(16)? {
        Some(ms) => Some(ts(ms)?),
        None => None,
    };
    let raw = RawPostback {
        method: r.get(5)?,
        path: r.get(6)?,
        query: r.get(7)?,
        client_ip: r.get(8)?,
        user_agent: r.get(9)?,
        referer: r.get(10)?,
        received_at: summary.received_at,
    };
    let mut view = RecordView {
        summary,
        raw,
        body,
        reason: r.get(12)?,
        transaction_id: r.get(13)?,
        original_id: r.get(14)?,
        attempt_count: r.get(15)?,
        next_attempt_at,
        last_error: r.get(17)?,
        attempts: Vec::new(),
        is_change: r.get::<_, Option<String>>(18)?.as_deref() == Some("update"),
        lead_id: r.get(19)?,
        conversion: None,
        repeats: u32::try_from(r.get::<_, i64>(21)?).unwrap_or(u32::MAX),
    };
    if let Some(key) = r.get::<_, Option<String>>(20)? {
        view.conversion = conversion(c, &key)?;
    }
    let mut stmt = c.prepare_cached(
        "SELECT at, status, answer, duration_ms, outcome FROM attempts
         WHERE record_id = ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([id])?;
    while let Some(r) = rows.next()? {
        view.attempts.push(AttemptView {
            at: ts(r.get(0)?)?,
            status: r.get(1)?,
            answer: r.get(2)?,
            duration: Duration::from_millis(r.get::<_, i64>(3)?.max(0).unsigned_abs()),
            outcome: r.get(4)?,
        });
    }
    Ok(Some(view))
}

/// The tracked conversion of dedupe `key`, with its chain.
fn conversion(c: &Connection, key: &str) -> Result<Option<ConversionView>, StoreError> {
    let row = c
        .prepare_cached(
            "SELECT record_id, tracked, lead_id, transaction_id, expires_at FROM dedupe
             WHERE key = ?1 AND tracked IS NOT NULL",
        )?
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((original, current, lead_id, transaction_id, expires)) = row else {
        return Ok(None);
    };
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {SUMMARY_COLS} FROM records WHERE original_id = ?1 ORDER BY id LIMIT ?2"
    ))?;
    let mut rows = stmt.query(rusqlite::params![original, CHAIN_MAX as i64])?;
    let mut chain = Vec::new();
    while let Some(r) = rows.next()? {
        chain.push(summary(r)?);
    }
    Ok(Some(ConversionView {
        original,
        current: super::super::change::parse_map(&current, "conversion state")?,
        lead_id,
        transaction_id,
        expires_at: ts(expires)?,
        chain,
    }))
}

pub(crate) fn list(
    c: &Connection,
    f: &Filter,
    limit: usize,
    cursor: Option<Cursor>,
) -> Result<(Vec<Summary>, Option<Cursor>), StoreError> {
    use rusqlite::types::Value;
    let mut sql = format!("SELECT {SUMMARY_COLS} FROM records WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(id) = f.conversion {
        args.push(id.into());
        sql.push_str(" AND (id = ?1 OR original_id = ?1)");
    }
    let mut cond = |sql: &mut String, clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&format!(" AND {clause} ?{}", args.len()));
    };
    if let Some(Cursor(id)) = cursor {
        cond(&mut sql, "id <", id.into());
    }
    if let Some(s) = &f.source {
        cond(&mut sql, "source =", s.clone().into());
    }
    if let Some(s) = f.state {
        cond(&mut sql, "state =", s.as_str().to_string().into());
    }
    if let Some(s) = &f.click_id {
        cond(&mut sql, "click_id =", s.clone().into());
    }

    if let Some(t) = f.since {
        cond(&mut sql, "received_at >=", t.as_millisecond().into());
    }
    if let Some(t) = f.until {
        cond(&mut sql, "received_at <", t.as_millisecond().into());
    }
    let limit = limit.max(1);
    // One more than asked tells whether a next page exists.
    args.push(i64::try_from(limit + 1).unwrap_or(i64::MAX).into());
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
    let mut stmt = c.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(summary(r)?);
    }
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|s| Cursor(s.id))
    } else {
        None
    };
    Ok((out, next))
}

pub(crate) fn counts_by_state(c: &Connection) -> Result<Vec<(State, u64)>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT state, COUNT(*) FROM records GROUP BY state")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push((
            state(&r.get::<_, String>(0)?)?,
            r.get::<_, i64>(1)?.unsigned_abs(),
        ));
    }
    out.sort();
    Ok(out)
}

pub(crate) fn pending_sources(c: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT DISTINCT source FROM records WHERE state = ?1")?;
    let mut out = Vec::new();
    for s in [State::Queued, State::Retrying, State::Paused] {
        for source in stmt.query_map([s.as_str()], |r| r.get::<_, String>(0))? {
            out.push(source?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub(crate) fn oldest_queued(c: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let mut oldest: Option<i64> = None;
    let mut stmt = c.prepare_cached("SELECT MIN(received_at) FROM records WHERE state = ?1")?;
    for s in [State::Queued, State::Retrying, State::Paused] {
        let v: Option<i64> = stmt
            .query_row([s.as_str()], |r| r.get(0))
            .optional()?
            .flatten();
        oldest = match (oldest, v) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    oldest.map(ts).transpose()
}
