//! A group of inserts in one transaction (the [`super::batch`] of `Store::insert`).
//!
//! The common case, a postback that creates a record whose dedupe key nobody holds, costs one
//! statement for the whole group ([`BULK_SQL`]), sent outside `BEGIN`/`COMMIT`: one round trip,
//! in an implicit transaction of its own. Its parts:
//! 1. record ids are taken from the table's sequence, one per postback stored in bulk;
//! 2. the dedupe keys are taken with one `INSERT INTO dedupe ... ON CONFLICT DO NOTHING
//!    RETURNING record_id`, in key order (so two instances' groups take their keys in the
//!    same order); a key twice in the group goes to the first postback, the second conflicts;
//! 3. the records of the winners and of the postbacks without a key (rejects, skips,
//!    postbacks of sources without dedupe) are inserted with one multi-row `INSERT`.
//!
//! (Five round trips before: `BEGIN`, the ids, the keys, the records, `COMMIT`. Measured in
//! alternating runs of the bench's ingest, see `bench/README.md`.)
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
//! the statement fails (a row the database refuses), the group is rolled back and each of
//! its postbacks redone alone; if the connection is lost before its answer, whether it
//! committed is unknown, and nothing is redone (see [`Failed`]).

use super::Pool;

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
    const CANCELLABLE: bool = true;

    async fn run(pool: &Pool, recs: &[NewRecord]) -> Vec<Outcome<(Inserted, bool)>> {
        // Only a lone postback that cannot be stored in bulk goes straight to the
        // one-at-a-time path: a lone new create is still one statement, cheaper than that
        // path's transaction (measured: ~28 against ~130 us of the server's time per
        // postback, by `pg_stat_statements`).
        if let [rec] = recs
            && !in_bulk(rec)
        {
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

/// Whether `rec` can be stored in bulk: a create (queued, with or without a dedupe key),
/// a skip, or a reject that is not looked up as a repeat.
fn in_bulk(rec: &NewRecord) -> bool {
    match &rec.state {
        NewState::Queued { .. } | NewState::Skipped { .. } => true,
        NewState::Rejected { .. } => rec.repeat_window.is_none(),
        NewState::Change { .. } => false,
    }
}

/// Stores what of `recs` can be stored in bulk, in one statement (its own transaction):
/// the answer of each (`None`: to be redone alone once this group has committed).
async fn run(pool: &Pool, recs: &[NewRecord]) -> Result<Vec<Option<(Inserted, bool)>>, Failed> {
    let client = pool.get().await?;
    let mut done: Vec<Option<(Inserted, bool)>> = vec![None; recs.len()];
    for (at, id, state) in bulk(&client, recs).await? {
        done[at] = Some((Inserted::Stored { id }, state == State::Queued));
    }
    Ok(done)
}

/// The whole group in one statement, so one round trip and an implicit transaction:
/// 1. `input`: the rows, numbered in arrival order, each with an id from the records'
///    sequence (named once, not looked up per row);
/// 2. `won`: the dedupe keys taken, in key order then arrival (`ON CONFLICT DO NOTHING`: a
///    key held by a row, or by an earlier postback of the group, is not taken);
/// 3. `stored`: the records of the winners and of the postbacks without a key.
///
/// It answers (arrival number, id) of each stored record.
const BULK_SQL: &str = "
WITH input AS (
    SELECT u.*, nextval((SELECT pg_get_serial_sequence('records', 'id'))::regclass) AS id
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::text[], $15::bigint[], $16::text[], $17::text[], $18::text[])
         WITH ORDINALITY
         AS u(source, state, received_at, queued_at, method, path, query, client_ip,
              user_agent, referer, body, click_id, reason, dedupe_key, expires_at,
              memory_click_id, order_id, tracked, n)
),
won AS (
    INSERT INTO dedupe (key, record_id, expires_at, source, click_id, order_id, tracked)
    SELECT dedupe_key, id, expires_at, source, memory_click_id, order_id, tracked
    FROM input WHERE dedupe_key IS NOT NULL
    ORDER BY dedupe_key, n
    ON CONFLICT (key) DO NOTHING
    RETURNING record_id
),
stored AS (
    INSERT INTO records (id, source, state, received_at, queued_at, updated_at, method, path,
                         query, client_ip, user_agent, referer, body, click_id, reason,
                         dedupe_key, next_attempt_at)
    OVERRIDING SYSTEM VALUE
    SELECT id, source, state, received_at, queued_at, received_at, method, path, query,
           client_ip, user_agent, referer, body, click_id, reason, dedupe_key, queued_at
    FROM input
    WHERE dedupe_key IS NULL OR id IN (SELECT record_id FROM won)
    RETURNING id
)
SELECT input.n, input.id FROM input JOIN stored USING (id)";

/// The columns of a group's rows, one array each (see [`BULK_SQL`]).
#[derive(Default)]
struct GroupColumns<'a> {
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
    body: Vec<Option<String>>,
    click_id: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    key: Vec<Option<String>>,
    expires_at: Vec<Option<i64>>,
    memory_click_id: Vec<Option<&'a str>>,
    order_id: Vec<Option<&'a str>>,
    tracked: Vec<Option<String>>,
    /// Each row's place in the group and its state.
    rows: Vec<(usize, State)>,
}

/// Stores the postbacks of `recs` that can be stored in bulk and whose key (if any) was
/// free: (place in the group, id, state) of each; the others are left to the one-at-a-time
/// path. A statement the server refused rolled back ([`Failed::RolledBack`] or
/// [`Failed::Conflict`]); a connection lost meanwhile leaves the outcome unknown.
async fn bulk(
    client: &super::Object,
    recs: &[NewRecord],
) -> Result<Vec<(usize, i64, State)>, Failed> {
    let mut c = GroupColumns::default();
    for (at, rec) in recs.iter().enumerate().filter(|(_, r)| in_bulk(r)) {
        let cols = Columns::of(rec)?;
        let memory = match (&cols.dedupe, &rec.state) {
            (None, _) => None,
            (
                Some(d),
                NewState::Queued {
                    body,
                    dedupe: Some(_),
                    updates,
                    ..
                },
            ) => Some((
                Memory::of(&rec.source, body, updates.is_some())?,
                ts_plus(rec.raw.received_at, d.window).as_millisecond(),
            )),
            // A key that is not remembered (not a create): decided alone.
            (Some(_), _) => continue,
        };
        let raw = &rec.raw;
        let recv = raw.received_at.as_millisecond();
        c.source.push(&rec.source);
        c.state.push(cols.state.as_str());
        c.received_at.push(recv);
        c.queued_at
            .push((cols.state == State::Queued).then_some(recv));
        c.method.push(&raw.method);
        c.path.push(&raw.path);
        c.query.push(&raw.query);
        c.client_ip.push(raw.client_ip.as_deref());
        c.user_agent.push(raw.user_agent.as_deref());
        c.referer.push(raw.referer.as_deref());
        c.body.push(cols.body);
        c.click_id.push(cols.click_id);
        c.reason.push(cols.reason);
        c.key.push(cols.dedupe.map(|d| d.key.clone()));
        c.expires_at.push(memory.as_ref().map(|m| m.1));
        c.memory_click_id
            .push(memory.as_ref().and_then(|m| m.0.click_id));
        c.order_id.push(memory.as_ref().and_then(|m| m.0.order_id));
        c.tracked.push(memory.and_then(|m| m.0.tracked));
        c.rows.push((at, cols.state));
    }
    if c.rows.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(BULK_SQL).await?;
    let answer = client
        .query(
            &stmt,
            &[
                &c.source,
                &c.state,
                &c.received_at,
                &c.queued_at,
                &c.method,
                &c.path,
                &c.query,
                &c.client_ip,
                &c.user_agent,
                &c.referer,
                &c.body,
                &c.click_id,
                &c.reason,
                &c.key,
                &c.expires_at,
                &c.memory_click_id,
                &c.order_id,
                &c.tracked,
            ],
        )
        .await
        .map_err(Failed::of_commit)?;
    answer
        .iter()
        .map(|r| {
            let n: i64 = r.try_get(0).map_err(Failed::from)?;
            let id: i64 = r.try_get(1).map_err(Failed::from)?;
            let (at, state) = usize::try_from(n - 1)
                .ok()
                .and_then(|i| c.rows.get(i))
                .ok_or_else(|| {
                    Failed::Unknown(StoreError::Corrupt(format!(
                        "a group insert answered row {n} of {}",
                        c.rows.len()
                    )))
                })?;
            Ok((*at, id, *state))
        })
        .collect()
}
