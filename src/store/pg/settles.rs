//! A group of settles in one transaction (the [`super::batch`] of the forwarder's settles).
//!
//! The settles that end or reschedule a record, the forwarder's common cases, cost a few
//! statements for the whole group:
//! 1. the dedupe rows of the records being ended (delivered, refused) are locked, in key
//!    order, before their records (the order every writer takes, see [`super::change`]);
//! 2. the attempts are inserted with one multi-row `INSERT ... SELECT FROM unnest(...)`,
//!    whether or not the lease still holds (as a settle alone keeps them);
//! 3. one `UPDATE records ... FROM unnest(...)` moves the delivered, duplicate-upstream and
//!    dead records, one more the retries, each only where the claim still owns the record
//!    (`claim_owner`): a settle after a lost lease is refused;
//! 4. the conversions of the delivered creates learn Scaleo's ids (one `UPDATE dedupe`),
//!    the conversions whose memory follows an ended record are visited one at a time
//!    (refused records, delivered changes, creates delivered with changes on their way: see
//!    `store::change`), and the retried creates with changes waiting get those folded in.
//!
//! Pauses and releases go through the one-at-a-time path inside the same transaction. If
//! any statement fails, the group is rolled back and each settle redone alone.

use std::collections::HashSet;

use deadpool_postgres::Transaction;
use jiff::Timestamp;

use super::super::change::Ended;
use super::super::claim::{ANSWER_EXCERPT_BYTES, Settle, SettleRequest};
use super::super::{StoreError, excerpt, redact_api_key};
use super::Pool;
use super::batch::{Failed, Group, Outcome};
use super::change;
use super::claim::{ends, settle_alone, settle_in};

/// The settles of claimed records, grouped.
pub(super) struct Settles;

impl Group for Settles {
    type Req = SettleRequest;
    type Out = (bool, bool);
    const CANCELLABLE: bool = false;

    async fn run(pool: &Pool, reqs: &[SettleRequest]) -> Vec<Outcome<(bool, bool)>> {
        if let [req] = reqs {
            return vec![Outcome::Done(settle_alone(pool, req).await)];
        }
        match run(pool, reqs).await {
            Ok(done) => done.into_iter().map(|d| Outcome::Done(Ok(d))).collect(),
            Err(failed) => failed.outcomes(reqs.len()),
        }
    }
}

/// Whether `req` is settled in bulk (else alone, inside the group's transaction).
fn in_bulk(req: &SettleRequest) -> bool {
    !matches!(req.settle, Settle::Paused { .. } | Settle::Release)
}

async fn run(pool: &Pool, reqs: &[SettleRequest]) -> Result<Vec<(bool, bool)>, Failed> {
    let now = Timestamp::now().as_millisecond();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut done = vec![(false, false); reqs.len()];
    let bulk: Vec<(usize, &SettleRequest)> = reqs
        .iter()
        .enumerate()
        .filter(|(_, r)| in_bulk(r))
        .collect();
    if !bulk.is_empty() {
        lock_conversions(&tx, &bulk).await?;
        attempts(&tx, &bulk).await?;
        let (applied, changes) = finish(&tx, &bulk, now).await?;
        let (learned, unsettled) = learn(&tx, &bulk, &applied).await?;
        conversions(&tx, &bulk, &applied, &changes, &unsettled, now).await?;
        let retried = retry(&tx, &bulk, now).await?;
        fold_waiting(&tx, &retried, now).await?;
        for (at, req) in &bulk {
            let claim = claim_of(req);
            done[*at] = match &req.settle {
                Settle::Delivered { .. } => (applied.contains(&claim), learned.contains(&req.id)),
                Settle::Retry { .. } => (retried.contains(&claim), false),
                _ => {
                    let applied = applied.contains(&claim);
                    (applied, applied)
                }
            };
        }
    }
    for (at, req) in reqs.iter().enumerate().filter(|(_, r)| !in_bulk(r)) {
        done[at] = settle_in(&tx, req, now).await?;
    }
    tx.commit().await.map_err(Failed::of_commit)?;
    Ok(done)
}

/// A settled claim: the record and the claim's owner.
type Claim = (i64, String);

fn claims(rows: Vec<tokio_postgres::Row>) -> Result<HashSet<Claim>, StoreError> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The claim of `req`, as [`claims`] gives it.
fn claim_of(req: &SettleRequest) -> Claim {
    (req.id, req.owner.clone())
}

/// Locks the dedupe rows of the records being ended (delivered, refused), in key order.
async fn lock_conversions(
    tx: &Transaction<'_>,
    bulk: &[(usize, &SettleRequest)],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = bulk
        .iter()
        .filter(|(_, r)| ends(&r.settle).is_some())
        .map(|(_, r)| r.id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "SELECT 1 FROM dedupe WHERE key IN (SELECT dedupe_key FROM records
                                                WHERE id = ANY($1))
             ORDER BY key FOR UPDATE",
        )
        .await?;
    tx.query(&stmt, &[&ids]).await?;
    Ok(())
}

/// Inserts the attempts of the group in one statement.
async fn attempts(
    tx: &Transaction<'_>,
    bulk: &[(usize, &SettleRequest)],
) -> Result<(), StoreError> {
    let (mut id, mut at, mut status, mut answer, mut duration, mut outcome) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (_, req) in bulk {
        let Some(a) = &req.attempt else {
            continue;
        };
        id.push(req.id);
        at.push(a.at.as_millisecond());
        status.push(a.status.map(i32::from));
        answer.push(redact_api_key(excerpt(&a.answer, ANSWER_EXCERPT_BYTES)));
        duration.push(i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX));
        outcome.push(req.settle.outcome());
    }
    if id.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO attempts (record_id, at, status, answer, duration_ms, outcome)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[],
                                  $5::bigint[], $6::text[])",
        )
        .await?;
    tx.execute(&stmt, &[&id, &at, &status, &answer, &duration, &outcome])
        .await?;
    Ok(())
}

/// Ends the delivered, duplicate-upstream and dead records still owned by their claim; the
/// claims it moved, and the ids of those that are changes of a conversion.
async fn finish(
    tx: &Transaction<'_>,
    bulk: &[(usize, &SettleRequest)],
    now: i64,
) -> Result<(HashSet<Claim>, HashSet<i64>), StoreError> {
    let (mut id, mut owner, mut state, mut text, mut transaction, mut lead) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (_, req) in bulk {
        let (s, t, tr, l) = match &req.settle {
            Settle::Delivered {
                transaction_id,
                lead_id,
            } => (
                "delivered",
                None,
                transaction_id.as_deref(),
                lead_id.as_deref(),
            ),
            Settle::DuplicateUpstream => ("duplicate_upstream", None, None, None),
            Settle::Dead { reason } => ("dead", Some(reason.as_str()), None, None),
            _ => continue,
        };
        id.push(req.id);
        owner.push(req.owner.as_str());
        state.push(s);
        text.push(t);
        transaction.push(tr);
        lead.push(l);
    }
    if id.is_empty() {
        return Ok((HashSet::new(), HashSet::new()));
    }
    // As a settle alone: a delivery keeps Scaleo's ids, a dead record its reason (also as
    // last error); a duplicate upstream or a delivery clears the last error.
    let stmt = tx
        .prepare_cached(
            "UPDATE records r SET state = u.state,
               transaction_id = CASE WHEN u.state = 'delivered' THEN u.transaction_id
                                     ELSE r.transaction_id END,
               lead_id = CASE WHEN u.state = 'delivered' THEN u.lead_id ELSE r.lead_id END,
               reason = CASE WHEN u.state = 'dead' THEN u.text ELSE r.reason END,
               last_error = u.text,
               attempts = r.attempts + 1, next_attempt_at = NULL, claimed_until = NULL,
               claim_owner = NULL, updated_at = $1
             FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[]) AS u(id, owner, state, text, transaction_id, lead_id)
             WHERE r.id = u.id AND r.claim_owner = u.owner
             RETURNING u.id, u.owner, r.kind IS NOT DISTINCT FROM 'update'",
        )
        .await?;
    let rows = tx
        .query(
            &stmt,
            &[&now, &id, &owner, &state, &text, &transaction, &lead],
        )
        .await?;
    let mut changes = HashSet::new();
    for r in &rows {
        if r.try_get(2)? {
            changes.insert(r.try_get(0)?);
        }
    }
    Ok((claims(rows)?, changes))
}

/// The conversions created by the delivered records of `applied` learn Scaleo's ids; the
/// ids of the records whose conversion did (its waiting changes may go now), and of those
/// whose conversion had changes on their way (its memory follows, see [`conversions`]).
async fn learn(
    tx: &Transaction<'_>,
    bulk: &[(usize, &SettleRequest)],
    applied: &HashSet<Claim>,
) -> Result<(HashSet<i64>, HashSet<i64>), StoreError> {
    let (mut id, mut lead, mut transaction) = (vec![], vec![], vec![]);
    for (_, req) in bulk {
        if let Settle::Delivered {
            transaction_id,
            lead_id,
        } = &req.settle
            && applied.contains(&claim_of(req))
        {
            id.push(req.id);
            lead.push(lead_id.as_deref());
            transaction.push(transaction_id.as_deref());
        }
    }
    if id.is_empty() {
        return Ok((HashSet::new(), HashSet::new()));
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE dedupe d SET lead_id = u.lead_id, transaction_id = u.transaction_id
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, lead_id, transaction_id),
                  records r
             WHERE r.id = u.id AND r.kind IS NULL AND d.key = r.dedupe_key
               AND d.record_id = u.id AND d.tracked IS NOT NULL
             RETURNING d.record_id, d.settled IS NOT NULL",
        )
        .await?;
    let (mut learned, mut unsettled) = (HashSet::new(), HashSet::new());
    for r in tx.query(&stmt, &[&id, &lead, &transaction]).await? {
        let id: i64 = r.try_get(0)?;
        learned.insert(id);
        if r.try_get(1)? {
            unsettled.insert(id);
        }
    }
    Ok((learned, unsettled))
}

/// The conversions of the ended records of `applied` follow them, as a settle alone does
/// (`change::ended`): every refused record, every delivered change, and the delivered creates
/// whose conversion had changes on their way (`unsettled`). A delivered create of a
/// conversion with none, the common case, costs nothing here.
async fn conversions(
    tx: &Transaction<'_>,
    bulk: &[(usize, &SettleRequest)],
    applied: &HashSet<Claim>,
    changes: &HashSet<i64>,
    unsettled: &HashSet<i64>,
    now: i64,
) -> Result<(), StoreError> {
    for (_, req) in bulk {
        if !applied.contains(&claim_of(req)) {
            continue;
        }
        let visit = match ends(&req.settle) {
            Some(Ended::Refused) => true,
            Some(Ended::Delivered) => changes.contains(&req.id) || unsettled.contains(&req.id),
            None => false,
        };
        if let (true, Some(ended)) = (visit, ends(&req.settle)) {
            change::ended(tx, req.id, ended, now).await?;
        }
    }
    Ok(())
}

/// Reschedules the retried records still owned by their claim; the ids it moved.
async fn retry(
    tx: &Transaction<'_>,
    bulk: &[(usize, &SettleRequest)],
    now: i64,
) -> Result<HashSet<Claim>, StoreError> {
    let (mut id, mut owner, mut at, mut error) = (vec![], vec![], vec![], vec![]);
    for (_, req) in bulk {
        if let Settle::Retry { at: when, error: e } = &req.settle {
            id.push(req.id);
            owner.push(req.owner.as_str());
            at.push(when.as_millisecond());
            error.push(e.as_str());
        }
    }
    if id.is_empty() {
        return Ok(HashSet::new());
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE records r SET state = 'retrying', attempts = r.attempts + 1,
               next_attempt_at = u.at, last_error = u.error, claimed_until = NULL,
               claim_owner = NULL, updated_at = $1
             FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[])
                  AS u(id, owner, at, error)
             WHERE r.id = u.id AND r.claim_owner = u.owner
             RETURNING u.id, u.owner",
        )
        .await?;
    claims(tx.query(&stmt, &[&now, &id, &owner, &at, &error]).await?)
}

/// Folds the changes that waited for the attempts of the retried creates into them (as a
/// settle alone does); only the creates that have waiting changes are visited.
async fn fold_waiting(
    tx: &Transaction<'_>,
    retried: &HashSet<Claim>,
    now: i64,
) -> Result<(), StoreError> {
    if retried.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = retried.iter().map(|(id, _)| *id).collect();
    let stmt = tx
        .prepare_cached(
            "SELECT DISTINCT original_id FROM records
             WHERE original_id = ANY($1) AND kind = 'update'
               AND state IN ('queued', 'retrying', 'paused')
             ORDER BY original_id",
        )
        .await?;
    let originals: Vec<i64> = tx
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    for original in originals {
        change::fold_waiting(tx, original, now).await?;
    }
    Ok(())
}
