//! A group of inserts in one transaction (the [`super::batch`] of `Store::insert`).
//!
//! The common case, a postback that creates a record whose dedupe key nobody holds, costs a
//! few statements for the whole group:
//! 1. record ids are taken from the table's sequence, one per postback stored in bulk;
//! 2. the dedupe keys are taken with one `INSERT INTO dedupe ... SELECT FROM unnest(...)
//!    ON CONFLICT DO NOTHING RETURNING record_id`, in key order (so two instances' groups
//!    take their keys in the same order); a key twice in the group goes to the first
//!    postback, the second conflicts;
//! 3. the records of the winners and of the postbacks without a key (rejects, skips,
//!    postbacks of sources without dedupe) are inserted with one multi-row
//!    `INSERT ... SELECT FROM unnest(...)`.
//!
//! Everything else is not decided in the group: a postback whose key is held (by an earlier
//! record: a duplicate, a change, a stale one, a takeover of an expired or dead holder; or
//! by an earlier postback of the group), a change of an update-only source, a reject that
//! may be a repeat. Once the group has committed, each of those takes the one-at-a-time path
//! ([`super::write::insert_alone`]) in a transaction of its own, so it sees the group's
//! records (a repeat within the group is a duplicate of its first postback).
//!
//! Why not in the group's transaction: deciding a held key locks that key's row, and a
//! transaction holding the fresh keys of a group while waiting for such a lock could wait
//! in a cycle with another group (of this instance or another one) doing the same in another
//! order. A group only ever takes fresh keys, all in one statement in key order, and never
//! waits for a row lock while holding one; the one-at-a-time path holds one conversion's
//! locks in the documented order (see [`super::change`]). So no two writers deadlock. If
//! any statement of a group fails (a row the database refuses), the group is rolled back and
//! each of its postbacks redone alone.

use deadpool_postgres::{Pool, Transaction};

use super::super::change::Memory;
use super::super::ops::Columns;
use super::super::types::{Inserted, NewRecord, NewState, State};
use super::super::{StoreError, ts_plus};
use super::batch::{Failed, Group, Outcome};
use super::write::insert_alone;

/// The inserts of `Store::insert`, grouped.
pub(super) struct Inserts;

impl Group for Inserts {
    type Req = NewRecord;
    type Out = (Inserted, bool);

    async fn run(pool: &Pool, recs: &[NewRecord]) -> Vec<Outcome<(Inserted, bool)>> {
        if let [rec] = recs {
            return vec![Outcome::Done(insert_alone(pool, rec).await)];
        }
        if !recs.iter().any(in_bulk) {
            return recs.iter().map(|_| Outcome::Alone).collect();
        }
        match run(pool, recs).await {
            Ok(done) => done
                .into_iter()
                .map(|d| d.map_or(Outcome::Alone, |d| Outcome::Done(Ok(d))))
                .collect(),
            Err(failed) => failed.outcomes(recs.len()),
        }
    }
}

/// One postback stored in bulk: its columns.
struct Row {
    /// Its place in the group.
    at: usize,
    state: State,
    body: Option<String>,
    click_id: Option<String>,
    reason: Option<String>,
    key: Option<String>,
}

/// Whether `rec` can be stored in bulk: a create (queued, with or without a dedupe key),
/// a skip, or a reject that is not looked up as a repeat.
fn in_bulk(rec: &NewRecord) -> bool {
    match &rec.state {
        NewState::Queued { .. } | NewState::Skipped { .. } => true,
        NewState::Rejected { .. } => rec.repeat_window.is_none(),
        NewState::Change { .. } => false,
    }
}

/// Stores what of `recs` can be stored in bulk, in one transaction: the answer of each
/// (`None`: to be redone alone once this group has committed).
async fn run(pool: &Pool, recs: &[NewRecord]) -> Result<Vec<Option<(Inserted, bool)>>, Failed> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut done: Vec<Option<(Inserted, bool)>> = vec![None; recs.len()];
    for row in bulk(&tx, recs).await? {
        let wakes = row.state == State::Queued;
        done[row.at] = Some((Inserted::Stored { id: row.id }, wakes));
    }
    tx.commit().await.map_err(Failed::of_commit)?;
    Ok(done)
}

/// A record stored in bulk: where it is in the group, its id, its state.
struct Stored {
    at: usize,
    id: i64,
    state: State,
}

/// Stores the postbacks of `recs` that can be stored in bulk and whose key (if any) was
/// free; the others are left to the one-at-a-time path.
async fn bulk(tx: &Transaction<'_>, recs: &[NewRecord]) -> Result<Vec<Stored>, StoreError> {
    let mut rows = Vec::new();
    for (at, rec) in recs.iter().enumerate().filter(|(_, r)| in_bulk(r)) {
        let cols = Columns::of(rec)?;
        rows.push(Row {
            at,
            state: cols.state,
            body: cols.body,
            click_id: cols.click_id.map(str::to_string),
            reason: cols.reason.map(str::to_string),
            key: cols.dedupe.map(|d| d.key.clone()),
        });
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let n = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let stmt = tx
        .prepare_cached(
            "SELECT nextval(pg_get_serial_sequence('records', 'id'))
             FROM generate_series(1, $1::bigint)",
        )
        .await?;
    let mut ids: Vec<i64> = tx
        .query(&stmt, &[&n])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    ids.sort_unstable();
    if ids.len() != rows.len() {
        return Err(StoreError::Corrupt(format!(
            "asked the sequence for {} ids, got {}",
            rows.len(),
            ids.len()
        )));
    }
    let won = take_keys(tx, recs, &rows, &ids).await?;
    // The winners of their key and the postbacks without one.
    let mut stored = Vec::with_capacity(rows.len());
    let mut cols = RecordColumns::default();
    for (row, id) in rows.iter().zip(&ids) {
        if row.key.is_some() && !won.contains(id) {
            continue;
        }
        let rec = &recs[row.at];
        let raw = &rec.raw;
        let recv = raw.received_at.as_millisecond();
        cols.id.push(*id);
        cols.source.push(&rec.source);
        cols.state.push(row.state.as_str());
        cols.received_at.push(recv);
        cols.queued_at
            .push((row.state == State::Queued).then_some(recv));
        cols.method.push(&raw.method);
        cols.path.push(&raw.path);
        cols.query.push(&raw.query);
        cols.client_ip.push(raw.client_ip.as_deref());
        cols.user_agent.push(raw.user_agent.as_deref());
        cols.referer.push(raw.referer.as_deref());
        cols.body.push(row.body.as_deref());
        cols.click_id.push(row.click_id.as_deref());
        cols.reason.push(row.reason.as_deref());
        cols.key.push(row.key.as_deref());
        stored.push(Stored {
            at: row.at,
            id: *id,
            state: row.state,
        });
    }
    if stored.is_empty() {
        return Ok(stored);
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO records (id, source, state, received_at, queued_at, updated_at, method,
                 path, query, client_ip, user_agent, referer, body, click_id, reason,
                 dedupe_key, next_attempt_at)
             OVERRIDING SYSTEM VALUE
             SELECT id, source, state, received_at, queued_at, received_at, method, path,
                    query, client_ip, user_agent, referer, body, click_id, reason, dedupe_key,
                    queued_at
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::text[], $13::text[], $14::text[], $15::text[])
                  AS u(id, source, state, received_at, queued_at, method, path, query,
                       client_ip, user_agent, referer, body, click_id, reason, dedupe_key)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &cols.id,
            &cols.source,
            &cols.state,
            &cols.received_at,
            &cols.queued_at,
            &cols.method,
            &cols.path,
            &cols.query,
            &cols.client_ip,
            &cols.user_agent,
            &cols.referer,
            &cols.body,
            &cols.click_id,
            &cols.reason,
            &cols.key,
        ],
    )
    .await?;
    Ok(stored)
}

/// The records columns of a bulk insert, one array each.
#[derive(Default)]
struct RecordColumns<'a> {
    id: Vec<i64>,
    source: Vec<&'a str>,
    state: Vec<&'a str>,
    received_at: Vec<i64>,
    queued_at: Vec<Option<i64>>,
    method: Vec<&'a str>,
    path: Vec<&'a str>,
    query: Vec<&'a str>,
    client_ip: Vec<Option<&'a str>>,
    user_agent: Vec<Option<&'a str>>,
    referer: Vec<Option<&'a str>>,
    body: Vec<Option<&'a str>>,
    click_id: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    key: Vec<Option<&'a str>>,
}

/// Takes the dedupe keys of `rows` (with their ids) that no row holds yet, in key order;
/// the ids of the records that got theirs.
async fn take_keys(
    tx: &Transaction<'_>,
    recs: &[NewRecord],
    rows: &[Row],
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>, StoreError> {
    let mut keys = Vec::new();
    for (row, id) in rows.iter().zip(ids) {
        let (
            Some(key),
            NewState::Queued {
                body,
                dedupe: Some(d),
                updates,
                ..
            },
        ) = (&row.key, &recs[row.at].state)
        else {
            continue;
        };
        let rec = &recs[row.at];
        let memory = Memory::of(&rec.source, body, updates.is_some())?;
        let expires = ts_plus(rec.raw.received_at, d.window).as_millisecond();
        keys.push((key.as_str(), *id, expires, memory));
    }
    if keys.is_empty() {
        return Ok(Default::default());
    }
    // Key order, then arrival: every group takes its keys in the same order, and the first
    // postback of a key repeated in the group wins it.
    keys.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let key: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let id: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let expires: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let source: Vec<&str> = keys.iter().map(|k| k.3.source).collect();
    let click: Vec<Option<&str>> = keys.iter().map(|k| k.3.click_id).collect();
    let order: Vec<Option<&str>> = keys.iter().map(|k| k.3.order_id).collect();
    let tracked: Vec<Option<&str>> = keys.iter().map(|k| k.3.tracked.as_deref()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO dedupe (key, record_id, expires_at, source, click_id, order_id, tracked)
             SELECT key, record_id, expires_at, source, click_id, order_id, tracked
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[]) WITH ORDINALITY
                  AS u(key, record_id, expires_at, source, click_id, order_id, tracked, n)
             ORDER BY n
             ON CONFLICT (key) DO NOTHING
             RETURNING record_id",
        )
        .await?;
    tx.query(
        &stmt,
        &[&key, &id, &expires, &source, &click, &order, &tracked],
    )
    .await?
    .iter()
    .map(|r| r.try_get(0).map_err(StoreError::from))
    .collect()
}
