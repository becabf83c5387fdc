//! The store behaviours both backends share, written once as generic async functions over a
//! [`Backend`] that opens (or, for a restart, reopens) the same store and gives a second
//! instance on it where the backend has several.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use postback_relay::lifecycle::{Lookup, Transitions};
use postback_relay::store::{
    Attempt, ChangeRoute, Claimed, DedupeKey, Filter, Inserted, NewRecord, NewState, PauseReason,
    PauseScope, Requeued, State, Store, StoreError,
};
use serde_json::{Map, Value, json};

use super::relay_records::{fill, queued, raw};
use super::wait::until;

pub const DAY: Duration = Duration::from_secs(86_400);

/// What differs between the backends for the shared behaviours.
pub trait Backend {
    /// Opens the store; once every handle of an earlier open is dropped, reopens the same
    /// store (a restart).
    async fn open(&self) -> Store;
    /// Another instance on the same data as `store` where the backend has several (one
    /// database, many instances); `store` itself where there is only one (one file, one
    /// process).
    async fn other(&self, store: &Store) -> Store;
}

pub fn attempt(status: Option<u16>, answer: &str) -> Attempt {
    Attempt {
        at: Timestamp::now(),
        status,
        answer: answer.into(),
        duration: Duration::from_millis(3),
    }
}

pub fn stored_id(i: Inserted) -> i64 {
    match i {
        Inserted::Stored { id } => id,
        other => panic!("not stored: {other:?}"),
    }
}

pub async fn body_and_raw_postback_are_stored_exactly(b: &impl Backend) {
    let store = b.open().await;
    let id = stored_id(store.insert(queued("acme", "abc", None)).await.unwrap());
    let claimed = store.claim(10, Duration::from_secs(5), &[]).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].body(), r#"{"click_id":"abc","revenue":19.99}"#);
    assert_eq!(claimed[0].click_id(), Some("abc"));
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.raw.query, "cid=abc&amt=1999");
    assert_eq!(view.raw.client_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(view.raw.user_agent.as_deref(), Some("test"));
    for c in claimed {
        c.release().await.unwrap();
    }
}

/// Wants a multi-thread runtime: the inserts race.
pub async fn dedupe_holds_within_the_window_across_instances_and_restarts(b: &impl Backend) {
    let k1;
    {
        let a = b.open().await;
        let other = b.other(&a).await;
        // Two identical keys sent together (into the same batch where there is a batch):
        // exactly one is stored, the other is a duplicate of it.
        let pair = || queued("acme", "pair", Some(("pair", DAY)));
        let (x, y) = tokio::join!(a.insert(pair()), other.insert(pair()));
        let mut answers = [x.unwrap(), y.unwrap()];
        answers.sort_by_key(|i| matches!(i, Inserted::Duplicate { .. }));
        let stored = stored_id(answers[0].clone());
        assert!(
            matches!(answers[1], Inserted::Duplicate { id, original } if original == stored && id != stored),
            "{answers:?}"
        );
        // The same keys racing into the instances at once: exactly one record stores each
        // key, every other answer is a duplicate of it.
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..20 {
            for store in [&a, &other, &a, &other] {
                let store = store.clone();
                tasks.spawn(async move {
                    let key = format!("k{k}");
                    let got = store.insert(queued("acme", &key, Some((&key, DAY)))).await;
                    (k, got.unwrap())
                });
            }
        }
        let mut by_key: Vec<Vec<Inserted>> = vec![Vec::new(); 20];
        while let Some(r) = tasks.join_next().await {
            let (k, got) = r.unwrap();
            by_key[k].push(got);
        }
        let mut first = Vec::new();
        for (k, answers) in by_key.iter().enumerate() {
            let stored: Vec<i64> = answers
                .iter()
                .filter_map(|i| match i {
                    Inserted::Stored { id } => Some(*id),
                    _ => None,
                })
                .collect();
            assert_eq!(stored.len(), 1, "key k{k}: {answers:?}");
            for i in answers {
                match i {
                    Inserted::Stored { .. } => {}
                    Inserted::Duplicate { id, original } => {
                        assert_eq!(*original, stored[0], "key k{k}: {answers:?}");
                        assert_ne!(id, original, "key k{k}: {answers:?}");
                    }
                    other => panic!("key k{k}: a plain resend became {other:?}"),
                }
            }
            first.push(stored[0]);
        }
        k1 = first[1];
        // Another source with the same click is another key.
        assert!(matches!(
            other
                .insert(queued("other", "k1", Some(("k1", DAY))))
                .await
                .unwrap(),
            Inserted::Stored { .. }
        ));
    }
    // After a restart the key still holds, for the same original.
    let c = b.open().await;
    let again = c
        .insert(queued("acme", "k1", Some(("k1", DAY))))
        .await
        .unwrap();
    assert!(
        matches!(again, Inserted::Duplicate { original, .. } if original == k1),
        "{again:?}"
    );
    // A key whose window has passed no longer holds.
    let d = b.other(&c).await;
    let mut old = queued("acme", "old", Some(("old", Duration::from_millis(1))));
    old.raw.received_at = Timestamp::now() - jiff::SignedDuration::from_secs(10);
    stored_id(c.insert(old).await.unwrap());
    stored_id(
        d.insert(queued("acme", "old", Some(("old", DAY))))
            .await
            .unwrap(),
    );
    // Duplicates are never claimed.
    let claimed = c.claim(100, Duration::from_secs(5), &[]).await.unwrap();
    assert_eq!(claimed.len(), 1 + 20 + 1 + 2);
    assert!(claimed.iter().all(|c| c.state() == State::Queued));
    assert_eq!(
        c.counts_by_state().await.unwrap(),
        vec![(State::Queued, 24), (State::Duplicate, 1 + 60 + 1)]
    );
    for cl in claimed {
        cl.release().await.unwrap();
    }
}

pub async fn a_dead_original_does_not_block_its_key(b: &impl Backend) {
    let a = b.open().await;
    let other = b.other(&a).await;
    a.insert(queued("acme", "k", Some(("k", DAY))))
        .await
        .unwrap();
    let c = a.claim(1, DAY, &[]).await.unwrap().pop().unwrap();
    c.dead(attempt(Some(404), "{}"), "HTTP 404".into())
        .await
        .unwrap();
    let again = stored_id(
        other
            .insert(queued("acme", "k", Some(("k", DAY))))
            .await
            .unwrap(),
    );
    // The new record holds the key now.
    let third = a
        .insert(queued("acme", "k", Some(("k", DAY))))
        .await
        .unwrap();
    assert!(matches!(third, Inserted::Duplicate { original, .. } if original == again));
}

/// Wants a multi-thread runtime.
pub async fn an_expired_lease_of_a_crashed_instance_is_reclaimed(b: &impl Backend) {
    let lease = Duration::from_millis(300);
    let ids = {
        let crashed = b.open().await;
        let ids = fill(&crashed, "acme", 3).await;
        let claimed = crashed.claim(10, lease, &[]).await.unwrap();
        assert_eq!(claimed.len(), 3);
        // The instance "dies": its claims are dropped unsettled.
        drop(claimed);
        ids
    };
    let store = b.open().await;
    // Still leased right after the restart.
    assert!(store.claim(10, lease, &[]).await.unwrap().is_empty());
    let mut again = Vec::new();
    let reclaimed = until(Duration::from_secs(10), async || {
        again = store.claim(10, lease, &[]).await.unwrap();
        !again.is_empty()
    })
    .await;
    assert!(reclaimed, "the expired claims never came back");
    let mut got: Vec<i64> = again.iter().map(|c| c.id()).collect();
    got.sort_unstable();
    assert_eq!(got, ids);
    for c in again {
        c.delivered(attempt(Some(200), "ok"), Some("tx".into()), None)
            .await
            .unwrap();
    }
    assert_eq!(
        store.counts_by_state().await.unwrap(),
        vec![(State::Delivered, 3)]
    );
}

pub async fn a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept(b: &impl Backend) {
    let a = b.open().await;
    let other = b.other(&a).await;
    let ids = fill(&a, "acme", 1).await;
    let lease = Duration::from_millis(100);
    let first = a.claim(1, lease, &[]).await.unwrap().pop().unwrap();
    let mut second = None;
    let taken = until(Duration::from_secs(10), async || {
        second = other.claim(1, lease, &[]).await.unwrap().pop();
        second.is_some()
    })
    .await;
    assert!(taken, "the lease never ran out");
    let err = first
        .delivered(attempt(Some(200), "late"), None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseLost(id) if id == ids[0]),
        "{err}"
    );
    second
        .unwrap()
        .delivered(attempt(Some(200), "ok"), Some("t".into()), None)
        .await
        .unwrap();
    let view = a.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(view.attempts.len(), 2);
    assert_eq!(view.attempts[0].answer, "late");
    assert_eq!(view.summary.state, State::Delivered);
    assert_eq!(view.transaction_id.as_deref(), Some("t"));
    assert_eq!(view.attempt_count, 1);
}

pub async fn every_outcome_is_stored_with_its_attempt(b: &impl Backend) {
    let store = b.open().await;
    let ids = fill(&store, "acme", 4).await;
    let mut claimed = store.claim(4, Duration::from_secs(30), &[]).await.unwrap();
    claimed.sort_by_key(|c| c.id());
    let mut it = claimed.into_iter();
    let later = Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    it.next()
        .unwrap()
        .retry(
            attempt(Some(503), "busy api-key=SECRET"),
            later,
            "HTTP 503".into(),
        )
        .await
        .unwrap();
    it.next()
        .unwrap()
        .duplicate_upstream(attempt(Some(400), "Multiple Conversions"))
        .await
        .unwrap();
    it.next()
        .unwrap()
        .paused(attempt(Some(401), "no"), "HTTP 401".into())
        .await
        .unwrap();
    it.next()
        .unwrap()
        .dead(attempt(None, "timeout"), "gave up".into())
        .await
        .unwrap();
    let get = async |id| store.get(id).await.unwrap().unwrap();
    let retry = get(ids[0]).await;
    assert_eq!(retry.summary.state, State::Retrying);
    assert_eq!(retry.attempt_count, 1);
    assert_eq!(
        retry.next_attempt_at.map(|t| t.as_second()),
        Some(later.as_second())
    );
    assert_eq!(retry.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(retry.attempts[0].answer, "busy api-key=[redacted]");
    assert_eq!(retry.attempts[0].outcome, "retry");
    assert_eq!(get(ids[1]).await.summary.state, State::DuplicateUpstream);
    let paused = get(ids[2]).await;
    assert_eq!(
        (paused.summary.state, paused.attempt_count),
        (State::Paused, 0)
    );
    let dead = get(ids[3]).await;
    assert_eq!(dead.summary.state, State::Dead);
    assert_eq!(dead.reason.as_deref(), Some("gave up"));
    assert_eq!(dead.attempts[0].status, None);
    // The paused record is claimable again at once; the retry only at its time.
    let again = store.claim(10, Duration::from_secs(30), &[]).await.unwrap();
    assert_eq!(again.iter().map(|c| c.id()).collect::<Vec<_>>(), [ids[2]]);
    for c in again {
        c.release().await.unwrap();
    }
}

pub async fn fresh_records_are_not_starved_by_retries(b: &impl Backend) {
    let store = b.open().await;
    fill(&store, "acme", 8).await;
    let lease = Duration::from_secs(30);
    let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    for c in store.claim(8, lease, &[]).await.unwrap() {
        c.retry(attempt(Some(500), "x"), past, "HTTP 500".into())
            .await
            .unwrap();
    }
    fill(&store, "acme", 8).await;
    let claimed = store.claim(8, lease, &[]).await.unwrap();
    let count = |s: State| claimed.iter().filter(|c| c.state() == s).count();
    assert_eq!((count(State::Queued), count(State::Retrying)), (6, 2));
}

/// Wants a multi-thread runtime: the claims race.
pub async fn concurrent_claims_never_share_a_record(b: &impl Backend) {
    let a = b.open().await;
    let other = b.other(&a).await;
    let mut ids = fill(&a, "acme", 150).await;
    ids.extend(fill(&other, "beta", 150).await);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = if n % 2 == 0 { a.clone() } else { other.clone() };
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let claimed = store.claim(7, Duration::from_secs(60), &[]).await.unwrap();
                if claimed.is_empty() {
                    return got;
                }
                got.extend(claimed);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    let unique: HashSet<i64> = all.iter().map(|c| c.id()).collect();
    assert_eq!(all.len(), unique.len(), "a record was claimed twice");
    assert_eq!(unique, ids.iter().copied().collect::<HashSet<_>>());
    // Every claim settles under its own lease.
    for c in all {
        c.delivered(attempt(Some(200), "ok"), None, None)
            .await
            .unwrap();
    }
    assert_eq!(
        other.counts_by_state().await.unwrap(),
        vec![(State::Delivered, 300)]
    );
}

/// An operator's resume of all forwarding lifts the pauses of a network's sources (a refused
/// key, an outage) with the global one, and leaves an operator's pause of one source and a
/// missing rule file's.
pub async fn resuming_all_lifts_the_network_pauses_of_sources(b: &impl Backend) {
    let store = b.open().await;
    for (scope, reason) in [
        (PauseScope::All, PauseReason::Operator),
        (PauseScope::Source("acme".into()), PauseReason::Operator),
        (PauseScope::Source("beta".into()), PauseReason::UpstreamAuth),
        (PauseScope::Source("gamma".into()), PauseReason::Outage),
        (PauseScope::Source("delta".into()), PauseReason::MissingRule),
    ] {
        store.pause(scope, reason).await.unwrap();
    }
    assert_eq!(store.resume(PauseScope::All).await.unwrap(), 3);
    let mut left: Vec<(PauseScope, PauseReason)> = store
        .paused()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.scope, p.reason))
        .collect();
    left.sort_by_key(|(s, _)| format!("{s:?}"));
    assert_eq!(
        left,
        vec![
            (PauseScope::Source("acme".into()), PauseReason::Operator),
            (PauseScope::Source("delta".into()), PauseReason::MissingRule),
        ]
    );
    // Resuming one source lifts only its own pauses.
    store
        .pause(PauseScope::Source("beta".into()), PauseReason::Outage)
        .await
        .unwrap();
    assert_eq!(
        store
            .resume(PauseScope::Source("acme".into()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.paused().await.unwrap().len(), 2);
}

/// On a source that dedupes without tracking changes, `explain`'s preview of a repeat is a
/// `duplicate` of the live record holding the key, as ingest then answers.
pub async fn a_repeat_on_a_source_without_updates_previews_as_a_duplicate(b: &impl Backend) {
    let store = b.open().await;
    let window = Duration::from_secs(3600);
    let rec = queued("acme", "pv1", Some(("pv1", window)));
    assert_eq!(
        store.preview(rec.state.clone()).await.unwrap(),
        None,
        "a new key"
    );
    let Inserted::Stored { id } = store.insert(rec.clone()).await.unwrap() else {
        panic!("not stored")
    };
    let preview = store
        .preview(rec.state.clone())
        .await
        .unwrap()
        .expect("a preview");
    assert_eq!((preview.outcome, preview.original), ("duplicate", Some(id)));
    let then = store.insert(rec).await.unwrap();
    assert!(
        matches!(then, Inserted::Duplicate { original, .. } if original == id),
        "what ingest then does: {then:?}"
    );
}

/// An outage's time goes back on the age bound of the waiting records of the sources given
/// (one network's), or of every source.
pub async fn an_outage_extends_the_age_of_its_own_sources(b: &impl Backend) {
    let store = b.open().await;
    fill(&store, "acme", 2).await;
    fill(&store, "beta", 3).await;
    let hour = Duration::from_secs(3600);
    assert_eq!(
        store
            .extend_age(hour, Some(vec!["acme".into()]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .extend_age(hour, Some(vec!["beta".into(), "gamma".into()]))
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.extend_age(hour, None).await.unwrap(), 5);
}

pub async fn pauses_persist_and_stop_claims(b: &impl Backend) {
    let lease = Duration::from_secs(30);
    {
        let a = b.open().await;
        fill(&a, "acme", 2).await;
        fill(&a, "beta", 2).await;
        a.pause(PauseScope::Source("acme".into()), PauseReason::Operator)
            .await
            .unwrap();
        // Idempotent.
        a.pause(PauseScope::Source("acme".into()), PauseReason::Operator)
            .await
            .unwrap();
    }
    let store = b.open().await;
    let paused = store.paused().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].scope, PauseScope::Source("acme".into()));
    assert_eq!(paused[0].reason, PauseReason::Operator);
    let c = store.claim(10, lease, &[]).await.unwrap();
    assert!(c.iter().all(|c| c.source() == "beta") && c.len() == 2);
    for c in c {
        c.release().await.unwrap();
    }
    // An exclude leaves a source out too.
    assert!(
        store
            .claim(10, lease, &["beta".into()])
            .await
            .unwrap()
            .is_empty()
    );
    store
        .pause(PauseScope::All, PauseReason::UpstreamAuth)
        .await
        .unwrap();
    assert!(store.claim(10, lease, &[]).await.unwrap().is_empty());
    // The probe ignores the upstream-auth pause but not the operator's pause of acme.
    let probe = store
        .claim_probe(PauseScope::All, lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(probe.source(), "beta");
    probe.release().await.unwrap();
    assert_eq!(
        store
            .resume_reason(PauseScope::All, PauseReason::Operator)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.resume(PauseScope::All).await.unwrap(), 1);
    store
        .resume(PauseScope::Source("acme".into()))
        .await
        .unwrap();
    assert!(store.paused().await.unwrap().is_empty());
    assert_eq!(store.claim(10, lease, &[]).await.unwrap().len(), 4);
    let mut pending = store.pending_sources().await.unwrap();
    pending.sort();
    assert_eq!(pending, ["acme", "beta"]);
}

pub async fn requeue_replays_rejected_and_dedupe_applies(b: &impl Backend) {
    let store = b.open().await;
    let rejected = NewRecord {
        source: "acme".into(),
        raw: raw("amt=1"),
        state: NewState::Rejected {
            reason: "click_id: no value".into(),
            click_id: None,
        },
        repeat_window: None,
    };
    let id = stored_id(store.insert(rejected.clone()).await.unwrap());
    let id2 = stored_id(store.insert(rejected.clone()).await.unwrap());
    let id3 = stored_id(store.insert(rejected).await.unwrap());
    let fixed = queued("acme", "z", Some(("z", DAY))).state;
    assert_eq!(
        store.requeue(id, fixed.clone()).await.unwrap(),
        Requeued::Queued
    );
    assert_eq!(
        store.requeue(id2, fixed).await.unwrap(),
        Requeued::Duplicate { original: id }
    );
    let again = NewState::Rejected {
        reason: "still no click".into(),
        click_id: Some("c".into()),
    };
    assert_eq!(
        store.requeue(id3, again).await.unwrap(),
        Requeued::Rejected {
            reason: "still no click".into()
        }
    );
    assert!(matches!(
        store.requeue(id, queued("acme", "z", None).state).await,
        Err(StoreError::NotReplayable {
            state: State::Queued,
            ..
        })
    ));
    assert!(matches!(
        store
            .requeue(999_999, queued("acme", "z", None).state)
            .await,
        Err(StoreError::NotFound(999_999))
    ));
    let view = store.get(id3).await.unwrap().unwrap();
    assert_eq!(view.reason.as_deref(), Some("still no click"));
    assert_eq!(view.summary.click_id.as_deref(), Some("c"));
    // Listing: newest first, filtered, paged.
    let acme = Filter {
        source: Some("acme".into()),
        ..Filter::default()
    };
    let (page, next) = store.list(acme.clone(), 2, None).await.unwrap();
    assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), [id3, id2]);
    let (page, next) = store.list(acme.clone(), 2, next).await.unwrap();
    assert_eq!((page[0].id, page[0].state, next), (id, State::Queued, None));
    // One at a time, and a page's cursor carries over to another filter.
    let (page, next) = store.list(acme, 1, None).await.unwrap();
    assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), [id3]);
    let (page, next) = store.list(Filter::default(), 1, next).await.unwrap();
    assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), [id2]);
    let (page, next) = store.list(Filter::default(), 1, next).await.unwrap();
    assert_eq!((page[0].id, page[0].state, next), (id, State::Queued, None));
    let queued_only = Filter {
        state: Some(State::Queued),
        click_id: Some("z".into()),
        ..Filter::default()
    };
    let (page, _) = store.list(queued_only, 10, None).await.unwrap();
    assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
    let future = Filter {
        since: Some(Timestamp::now() + jiff::SignedDuration::from_secs(60)),
        ..Filter::default()
    };
    assert!(store.list(future, 10, None).await.unwrap().0.is_empty());
    assert!(store.oldest_queued().await.unwrap().is_some());
}

pub async fn purge_removes_only_finished_records_past_retention(b: &impl Backend) {
    let store = b.open().await;
    let ids = fill(&store, "acme", 3).await;
    let mut claimed = store.claim(3, Duration::from_secs(30), &[]).await.unwrap();
    claimed.sort_by_key(|c| c.id());
    let mut it = claimed.into_iter();
    it.next()
        .unwrap()
        .delivered(attempt(Some(200), "{}"), None, None)
        .await
        .unwrap();
    it.next()
        .unwrap()
        .dead(attempt(Some(400), "{}"), "HTTP 400".into())
        .await
        .unwrap();
    it.next().unwrap().release().await.unwrap();
    assert_eq!(
        store
            .purge_delivered(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    let mut purged = 0;
    let done = until(Duration::from_secs(5), async || {
        purged += store
            .purge_delivered(Duration::from_millis(1))
            .await
            .unwrap();
        purged == 1
    })
    .await;
    assert!(done, "purged {purged}");
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert!(store.get(ids[1]).await.unwrap().is_some());
    assert!(store.get(ids[2]).await.unwrap().is_some());
}

// The conversion lifecycle: later postbacks of a conversion (same dedupe key) are
// duplicates, changes or stale; changes are folded, queued, collapsed or dead.

/// A postback of conversion `click` of acme, whose changes are tracked with the default
/// transitions, with `fields` (status, money, order id) in its mapped body.
pub fn conversion(click: &str, fields: Value) -> NewRecord {
    let mut body = Map::new();
    body.insert("click_id".into(), click.into());
    if let Value::Object(fields) = fields {
        body.extend(fields);
    }
    NewRecord {
        source: "acme".into(),
        raw: raw(&format!("cid={click}")),
        state: NewState::Queued {
            body,
            click_id: click.into(),
            dedupe: Some(DedupeKey {
                key: format!("acme|{click}"),
                window: DAY,
            }),
            updates: Some(Arc::new(Transitions::default())),
        },
        repeat_window: None,
    }
}

/// A postback of the update-only source `refunds`, changing the acme conversion with
/// `adv_order_id` `order`.
pub fn refund(order: &str, fields: Value) -> NewRecord {
    let Value::Object(body) = fields else {
        panic!("fields must be an object")
    };
    NewRecord {
        source: "refunds".into(),
        raw: raw(&format!("order={order}")),
        state: NewState::Change {
            body,
            click_id: None,
            lookup: Lookup {
                of: "acme".into(),
                click_id: None,
                order_id: Some(order.into()),
            },
            transitions: Arc::new(Transitions::default()),
        },
        repeat_window: None,
    }
}

/// Every due record, leased for a minute.
pub async fn claim_all(store: &Store) -> Vec<Claimed> {
    store
        .claim(100, Duration::from_secs(60), &[])
        .await
        .unwrap()
}

/// Claims the only due record, which must be `id`.
async fn claim_only(store: &Store, id: i64) -> Claimed {
    let mut claimed = claim_all(store).await;
    assert_eq!(
        claimed.iter().map(|c| c.id()).collect::<Vec<_>>(),
        [id],
        "exactly record {id} is due"
    );
    claimed.pop().unwrap()
}

/// Claims record `id` (the only due one) and settles it delivered with Scaleo's `lead_id`.
async fn deliver(store: &Store, id: i64, lead_id: Option<&str>) {
    claim_only(store, id)
        .await
        .delivered(
            attempt(Some(200), "{}"),
            Some(format!("tx-{id}")),
            lead_id.map(String::from),
        )
        .await
        .unwrap();
}

async fn state_of(store: &Store, id: i64) -> State {
    store.get(id).await.unwrap().unwrap().summary.state
}

async fn body_of(store: &Store, id: i64) -> Value {
    Value::Object(store.get(id).await.unwrap().unwrap().body.unwrap())
}

fn body(c: &Claimed) -> Value {
    serde_json::from_str(c.body()).unwrap()
}

/// The id of a change queued (or gone where `route` says) for `original`.
fn change_id(i: Inserted, original: i64, route: ChangeRoute) -> i64 {
    match i {
        Inserted::Update {
            id,
            original: o,
            route: r,
        } if o == original && r == route => id,
        other => panic!("not a change of {original} {route:?}: {other:?}"),
    }
}

pub async fn a_plain_resend_of_a_conversion_is_a_duplicate(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending", "revenue": 10});
    let id = stored_id(
        store
            .insert(conversion("c1", pending.clone()))
            .await
            .unwrap(),
    );
    let again = store.insert(conversion("c1", pending)).await.unwrap();
    assert!(
        matches!(again, Inserted::Duplicate { original, .. } if original == id),
        "{again:?}"
    );
    // Leaving the money out is no change either, nor is the same amount written otherwise.
    let omits = json!({"conv_status": "pending"});
    let same = json!({"conv_status": "pending", "revenue": 10.00});
    for fields in [omits, same] {
        let again = store.insert(conversion("c1", fields)).await.unwrap();
        assert!(
            matches!(again, Inserted::Duplicate { original, .. } if original == id),
            "{again:?}"
        );
    }
    claim_only(&store, id).await.release().await.unwrap();
}

pub async fn a_status_change_after_delivery_is_queued_with_the_lead_id(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending", "revenue": 0});
    let id = stored_id(store.insert(conversion("c1", pending)).await.unwrap());
    deliver(&store, id, Some("\"L-1\"")).await;
    let approved = json!({"conv_status": "approved", "revenue": 25, "payout": 5});
    let other = b.other(&store).await;
    let inserted = other.insert(conversion("c1", approved)).await.unwrap();
    let change = change_id(inserted, id, ChangeRoute::Queued);
    let c = claim_only(&store, change).await;
    let of = c.change().expect("a change of a conversion");
    assert_eq!(of.original, id);
    assert_eq!(of.lead_id.as_deref(), Some("\"L-1\""));
    // Only what changes is sent (the payout was not known before, so it changes too).
    assert_eq!(
        body(&c),
        json!({"conv_status": "approved", "revenue": 25, "payout": 5})
    );
    c.delivered(attempt(Some(200), "{}"), None, None)
        .await
        .unwrap();
    assert_eq!(state_of(&store, change).await, State::Delivered);
    assert_eq!(
        store.get(change).await.unwrap().unwrap().original_id,
        Some(id)
    );
    // The create is not a change.
    let next = store.insert(conversion("c2", json!({}))).await.unwrap();
    assert!(claim_only(&store, stored_id(next)).await.change().is_none());
}

pub async fn a_status_that_would_move_the_conversion_back_is_stale(b: &impl Backend) {
    let store = b.open().await;
    let id = stored_id(
        store
            .insert(conversion("c1", json!({"conv_status": "pending"})))
            .await
            .unwrap(),
    );
    deliver(&store, id, Some("1")).await;
    let approved = store
        .insert(conversion("c1", json!({"conv_status": "approved"})))
        .await;
    let change = change_id(approved.unwrap(), id, ChangeRoute::Queued);
    // The late `pending` arrives after `approved`.
    let late = store
        .insert(conversion("c1", json!({"conv_status": "pending"})))
        .await
        .unwrap();
    let Inserted::Stale {
        id: stale,
        original,
        reason,
    } = late
    else {
        panic!("not stale: {late:?}")
    };
    assert_eq!(original, id);
    assert!(
        reason.contains("pending") && reason.contains("approved"),
        "{reason}"
    );
    let view = store.get(stale).await.unwrap().unwrap();
    assert_eq!(view.summary.state, State::Stale);
    assert_eq!(view.reason.as_deref(), Some(reason.as_str()));
    // Never sent: only the approved change is due.
    claim_only(&store, change).await.release().await.unwrap();
}

pub async fn a_change_of_an_unsent_original_is_folded_into_it(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending", "revenue": 0});
    let id = stored_id(store.insert(conversion("c1", pending)).await.unwrap());
    let approved = json!({"conv_status": "approved", "revenue": 25});
    let inserted = store.insert(conversion("c1", approved)).await.unwrap();
    let change = change_id(inserted, id, ChangeRoute::Merged);
    assert_eq!(state_of(&store, change).await, State::Merged);
    let latest = json!({"click_id": "c1", "conv_status": "approved", "revenue": 25});
    assert_eq!(body_of(&store, id).await, latest);
    // One create with the latest state, nothing else to send.
    let c = claim_only(&store, id).await;
    assert!(c.change().is_none());
    assert_eq!(
        body(&c),
        json!({"click_id": "c1", "conv_status": "approved", "revenue": 25})
    );
    c.release().await.unwrap();
    // A resend of the latest state is a duplicate.
    let again = store
        .insert(conversion("c1", json!({"conv_status": "approved"})))
        .await
        .unwrap();
    assert!(matches!(again, Inserted::Duplicate { original, .. } if original == id));
}

pub async fn a_change_of_an_original_in_flight_waits_and_is_folded_on_retry(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending", "revenue": 0});
    let id = stored_id(store.insert(conversion("c1", pending)).await.unwrap());
    let in_flight = claim_only(&store, id).await;
    let approved = json!({"conv_status": "approved", "revenue": 25});
    let other = b.other(&store).await;
    let inserted = other.insert(conversion("c1", approved)).await.unwrap();
    let change = change_id(inserted, id, ChangeRoute::Queued);
    assert_eq!(state_of(&store, change).await, State::Queued);
    // It waits for the original's attempt.
    assert!(claim_all(&store).await.is_empty());
    let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    in_flight
        .retry(attempt(Some(503), "busy"), past, "HTTP 503".into())
        .await
        .unwrap();
    // The original was not sent: the change is folded into its next try.
    assert_eq!(state_of(&store, change).await, State::Merged);
    let c = claim_only(&store, id).await;
    assert_eq!(
        body(&c),
        json!({"click_id": "c1", "conv_status": "approved", "revenue": 25})
    );
    c.delivered(attempt(Some(200), "{}"), None, Some("7".into()))
        .await
        .unwrap();
    assert!(claim_all(&store).await.is_empty());
}

pub async fn a_change_waiting_for_its_original_goes_once_it_is_delivered(b: &impl Backend) {
    let store = b.open().await;
    let id = stored_id(
        store
            .insert(conversion("c1", json!({"conv_status": "pending"})))
            .await
            .unwrap(),
    );
    let in_flight = claim_only(&store, id).await;
    let approved = store
        .insert(conversion("c1", json!({"conv_status": "approved"})))
        .await;
    let change = change_id(approved.unwrap(), id, ChangeRoute::Queued);
    in_flight
        .delivered(
            attempt(Some(200), "{}"),
            Some("t".into()),
            Some("\"L\"".into()),
        )
        .await
        .unwrap();
    let c = claim_only(&store, change).await;
    assert_eq!(c.change().unwrap().lead_id.as_deref(), Some("\"L\""));
    assert_eq!(body(&c), json!({"conv_status": "approved"}));
    c.release().await.unwrap();
}

pub async fn two_quick_changes_after_delivery_collapse_into_one(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending", "revenue": 0});
    let id = stored_id(store.insert(conversion("c1", pending)).await.unwrap());
    deliver(&store, id, Some("\"L-1\"")).await;
    let approved = json!({"conv_status": "approved", "revenue": 25});
    let first = store.insert(conversion("c1", approved)).await.unwrap();
    let first = change_id(first, id, ChangeRoute::Queued);
    let chargeback = json!({"conv_status": "rejected"});
    let other = b.other(&store).await;
    let second = other.insert(conversion("c1", chargeback)).await.unwrap();
    let second = change_id(second, id, ChangeRoute::Queued);
    let older = store.get(first).await.unwrap().unwrap();
    assert_eq!(older.summary.state, State::Merged);
    assert!(
        older
            .reason
            .as_deref()
            .is_some_and(|r| r.contains(&second.to_string())),
        "{:?}",
        older.reason
    );
    // One leads/update with the latest state: the revenue of the first, the status of the
    // second.
    let c = claim_only(&store, second).await;
    assert_eq!(body(&c), json!({"conv_status": "rejected", "revenue": 25}));
    assert_eq!(c.change().unwrap().lead_id.as_deref(), Some("\"L-1\""));
    c.release().await.unwrap();
}

pub async fn a_change_of_an_original_scaleo_refused_is_dead_naming_it(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending"});
    let upstream = stored_id(
        store
            .insert(conversion("c1", pending.clone()))
            .await
            .unwrap(),
    );
    claim_only(&store, upstream)
        .await
        .duplicate_upstream(attempt(Some(400), "Multiple Conversions"))
        .await
        .unwrap();
    let dead = stored_id(store.insert(conversion("c2", pending)).await.unwrap());
    claim_only(&store, dead)
        .await
        .dead(attempt(Some(400), "{}"), "HTTP 400".into())
        .await
        .unwrap();
    for (click, original) in [("c1", upstream), ("c2", dead)] {
        let approved = json!({"conv_status": "approved"});
        let inserted = store.insert(conversion(click, approved)).await.unwrap();
        let Inserted::Update {
            id,
            original: o,
            route: ChangeRoute::Dead(reason),
        } = inserted
        else {
            panic!("not dead: {inserted:?}")
        };
        assert_eq!(o, original);
        assert!(reason.contains(&format!("record {original}")), "{reason}");
        let view = store.get(id).await.unwrap().unwrap();
        assert_eq!(view.summary.state, State::Dead);
        assert_eq!(view.reason.as_deref(), Some(reason.as_str()));
    }
    assert!(claim_all(&store).await.is_empty());
}

pub async fn an_update_only_postback_finds_its_conversion_by_order_id(b: &impl Backend) {
    let store = b.open().await;
    let sale = json!({"conv_status": "approved", "revenue": 40, "adv_order_id": "o-1"});
    let id = stored_id(store.insert(conversion("c1", sale)).await.unwrap());
    deliver(&store, id, Some("\"L-9\"")).await;
    let refunded = json!({"conv_status": "rejected", "revenue": 0});
    let other = b.other(&store).await;
    let change = other.insert(refund("o-1", refunded.clone())).await.unwrap();
    let change = change_id(change, id, ChangeRoute::Queued);
    let c = claim_only(&store, change).await;
    assert_eq!(c.source(), "refunds");
    assert_eq!(c.change().unwrap().lead_id.as_deref(), Some("\"L-9\""));
    assert_eq!(body(&c), refunded);
    c.release().await.unwrap();
    // The same refund again changes nothing.
    let again = other.insert(refund("o-1", refunded)).await.unwrap();
    assert!(
        matches!(again, Inserted::Duplicate { original, .. } if original == id),
        "{again:?}"
    );
    // An order nobody knows: rejected, kept for a replay, never a conversion.
    let unknown = store
        .insert(refund("o-404", json!({"conv_status": "rejected"})))
        .await
        .unwrap();
    let Inserted::Unmatched {
        id: rejected,
        reason,
    } = unknown
    else {
        panic!("not unmatched: {unknown:?}")
    };
    assert!(reason.contains("o-404"), "{reason}");
    assert_eq!(state_of(&store, rejected).await, State::Rejected);
}

pub async fn the_conversion_memory_outlives_retention(b: &impl Backend) {
    let store = b.open().await;
    let sale = json!({"conv_status": "approved", "revenue": 40});
    let id = stored_id(store.insert(conversion("c1", sale)).await.unwrap());
    deliver(&store, id, Some("\"L-1\"")).await;
    let gone = until(Duration::from_secs(5), async || {
        store
            .purge_delivered(Duration::from_millis(1))
            .await
            .unwrap();
        store.get(id).await.unwrap().is_none()
    })
    .await;
    assert!(gone, "the delivered record was never purged");
    // A chargeback weeks later still finds the conversion and Scaleo's lead_id.
    let chargeback = json!({"conv_status": "rejected", "revenue": -40});
    let inserted = store.insert(conversion("c1", chargeback)).await.unwrap();
    let change = change_id(inserted, id, ChangeRoute::Queued);
    // The newest record was purged: its id is never given to another record.
    assert!(change > id, "record id {id} reused by {change}");
    let c = claim_only(&store, change).await;
    assert_eq!(c.change().unwrap().original, id);
    assert_eq!(c.change().unwrap().lead_id.as_deref(), Some("\"L-1\""));
    assert_eq!(body(&c), json!({"conv_status": "rejected", "revenue": -40}));
    c.release().await.unwrap();
}

pub async fn a_dead_change_replayed_after_its_original_is_delivered_is_queued(b: &impl Backend) {
    let store = b.open().await;
    let pending = conversion("c1", json!({"conv_status": "pending"}));
    let id = stored_id(store.insert(pending.clone()).await.unwrap());
    claim_only(&store, id)
        .await
        .dead(attempt(Some(400), "{}"), "HTTP 400".into())
        .await
        .unwrap();
    let approved = conversion("c1", json!({"conv_status": "approved"}));
    let inserted = store.insert(approved.clone()).await.unwrap();
    let Inserted::Update {
        id: change,
        route: ChangeRoute::Dead(_),
        ..
    } = inserted
    else {
        panic!("not dead: {inserted:?}")
    };
    // The operator fixes the original and replays it; Scaleo takes it.
    assert_eq!(
        store.requeue(id, pending.state).await.unwrap(),
        Requeued::Queued
    );
    deliver(&store, id, Some("\"L-2\"")).await;
    // Now the dead change can be sent.
    let other = b.other(&store).await;
    assert_eq!(
        other.requeue(change, approved.state).await.unwrap(),
        Requeued::Update {
            original: id,
            route: ChangeRoute::Queued
        }
    );
    let c = claim_only(&store, change).await;
    assert_eq!(c.change().unwrap().lead_id.as_deref(), Some("\"L-2\""));
    assert_eq!(body(&c), json!({"conv_status": "approved"}));
    c.release().await.unwrap();
}

pub async fn an_unmatched_update_only_postback_is_replayed_once_the_conversion_exists(
    b: &impl Backend,
) {
    let store = b.open().await;
    let refunded = refund("o-1", json!({"conv_status": "rejected"}));
    let early = store.insert(refunded.clone()).await.unwrap();
    let Inserted::Unmatched { id: early, .. } = early else {
        panic!("not unmatched: {early:?}")
    };
    // Still no conversion: rejected again with the reason.
    let again = store.requeue(early, refunded.state.clone()).await.unwrap();
    assert!(
        matches!(&again, Requeued::Rejected { reason } if reason.contains("o-1")),
        "{again:?}"
    );
    let sale = json!({"conv_status": "approved", "adv_order_id": "o-1"});
    let id = stored_id(store.insert(conversion("c1", sale)).await.unwrap());
    deliver(&store, id, Some("3")).await;
    assert_eq!(
        store.requeue(early, refunded.state).await.unwrap(),
        Requeued::Update {
            original: id,
            route: ChangeRoute::Queued
        }
    );
    let c = claim_only(&store, early).await;
    assert_eq!(c.change().unwrap().lead_id.as_deref(), Some("3"));
    c.release().await.unwrap();
}

pub async fn a_repeat_of_a_stored_reject_is_counted_on_it_within_the_window(b: &impl Backend) {
    let store = b.open().await;
    let reject = |source: &str, query: &str, window: Option<Duration>| NewRecord {
        source: source.into(),
        raw: raw(query),
        state: NewState::Rejected {
            reason: "click_id: no value".into(),
            click_id: None,
        },
        repeat_window: window,
    };
    let id = stored_id(
        store
            .insert(reject("acme", "amt=1", Some(DAY)))
            .await
            .unwrap(),
    );
    for n in 1..=3 {
        assert_eq!(
            store
                .insert(reject("acme", "amt=1", Some(DAY)))
                .await
                .unwrap(),
            Inserted::Repeat {
                id,
                reason: "click_id: no value".into(),
                repeats: n
            }
        );
    }
    assert_eq!(store.get(id).await.unwrap().unwrap().repeats, 3);
    // Another query, another source, or no window: stored as its own record.
    let other = stored_id(
        store
            .insert(reject("acme", "amt=2", Some(DAY)))
            .await
            .unwrap(),
    );
    let beta = stored_id(
        store
            .insert(reject("beta", "amt=1", Some(DAY)))
            .await
            .unwrap(),
    );
    let plain = stored_id(store.insert(reject("acme", "amt=1", None)).await.unwrap());
    assert!(other != id && beta != id && plain != id);
    // Outside the window: stored again (and later repeats count on the newest).
    let mut late = reject("acme", "amt=9", Some(DAY));
    late.raw.received_at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
    let old = stored_id(store.insert(late).await.unwrap());
    let fresh = stored_id(
        store
            .insert(reject("acme", "amt=9", Some(Duration::from_secs(3600))))
            .await
            .unwrap(),
    );
    assert_ne!(old, fresh);
    // A replayed (no longer rejected) record is not repeated.
    let fixed = queued("acme", "r", None).state;
    store.requeue(id, fixed).await.unwrap();
    let again = store
        .insert(reject("acme", "amt=1", Some(DAY)))
        .await
        .unwrap();
    assert!(
        matches!(again, Inserted::Repeat { id: r, .. } if r == plain),
        "{again:?}"
    );
}

/// The id of a change that went `dead` at once, checking its reason names `record`.
fn dead_change_id(i: Inserted, original: i64, record: i64) -> i64 {
    match i {
        Inserted::Update {
            id,
            original: o,
            route: ChangeRoute::Dead(reason),
        } if o == original => {
            assert!(reason.contains(&format!("record {record}")), "{reason}");
            id
        }
        other => panic!("not a dead change of {original}: {other:?}"),
    }
}

/// Puts the unsent original `id` back to `retrying` (an attempt that timed out), due now.
async fn timed_out(store: &Store, id: i64) {
    let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    claim_only(store, id)
        .await
        .retry(attempt(None, "timed out"), past, "timeout".into())
        .await
        .unwrap();
}

/// A create that timed out (Scaleo took it), a change folded into its retry, and the retry
/// answered "Multiple Conversions are not Allowed" (or refused for good): the folded change
/// is not lost but `dead` naming the original (replayable), and the memory goes back to what
/// the original itself said, so a resend of the change is not a `duplicate`.
pub async fn an_original_refused_after_a_fold_takes_the_folded_change_back(b: &impl Backend) {
    let store = b.open().await;
    let pending = json!({"conv_status": "pending", "revenue": 1});
    let approved = json!({"conv_status": "approved", "revenue": 50});
    for (click, refused) in [("t1", State::DuplicateUpstream), ("t2", State::Dead)] {
        let id = stored_id(
            store
                .insert(conversion(click, pending.clone()))
                .await
                .unwrap(),
        );
        timed_out(&store, id).await;
        let inserted = store
            .insert(conversion(click, approved.clone()))
            .await
            .unwrap();
        let merged = change_id(inserted, id, ChangeRoute::Merged);
        let c = claim_only(&store, id).await;
        assert_eq!(body(&c)["revenue"], 50, "the retry sends the folded body");
        let answer = attempt(Some(400), "Multiple Conversions are not Allowed");
        match refused {
            State::DuplicateUpstream => c.duplicate_upstream(answer).await.unwrap(),
            _ => c.dead(answer, "HTTP 400".into()).await.unwrap(),
        }
        let view = store.get(merged).await.unwrap().unwrap();
        assert_eq!(view.summary.state, State::Dead, "{click}: {view:?}");
        let reason = view.reason.unwrap();
        assert!(
            reason.contains(&format!("record {id}")) && reason.contains(refused.as_str()),
            "{reason}"
        );
        // Scaleo never took the approval: a resend of it is a change again (dead at once,
        // as the original has no lead_id), not a duplicate.
        let other = b.other(&store).await;
        let again = other
            .insert(conversion(click, approved.clone()))
            .await
            .unwrap();
        dead_change_id(again, id, id);
        // The folded change can be replayed (it is dead again while the original is).
        let replayed = store
            .requeue(merged, conversion(click, approved.clone()).state)
            .await
            .unwrap();
        assert!(
            matches!(&replayed, Requeued::Update { original, route: ChangeRoute::Dead(r) }
                if *original == id && r.contains(&format!("record {id}"))),
            "{replayed:?}"
        );
    }
    // A change that waited for the original's attempt dies with it instead of being sent.
    let id = stored_id(
        store
            .insert(conversion("t3", pending.clone()))
            .await
            .unwrap(),
    );
    let in_flight = claim_only(&store, id).await;
    let inserted = store
        .insert(conversion("t3", approved.clone()))
        .await
        .unwrap();
    let waiting = change_id(inserted, id, ChangeRoute::Queued);
    in_flight
        .duplicate_upstream(attempt(Some(400), "Multiple Conversions are not Allowed"))
        .await
        .unwrap();
    let view = store.get(waiting).await.unwrap().unwrap();
    assert_eq!(view.summary.state, State::Dead);
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains(&format!("record {id}"))),
        "{:?}",
        view.reason
    );
    assert!(claim_all(&store).await.is_empty());
    let again = store.insert(conversion("t3", approved)).await.unwrap();
    dead_change_id(again, id, id);
}

/// A conversion `click` created approved at 10 and delivered (Scaleo's lead `lead`), then a
/// change `change` of it that Scaleo refused (422, dead): (the original's id, the change's).
async fn delivered_then_refused(
    store: &Store,
    click: &str,
    lead: &str,
    change: &Value,
) -> (i64, i64) {
    let id = stored_id(
        store
            .insert(conversion(
                click,
                json!({"conv_status": "approved", "revenue": 10}),
            ))
            .await
            .unwrap(),
    );
    deliver(store, id, Some(&format!("{lead:?}"))).await;
    let dead = store
        .insert(conversion(click, change.clone()))
        .await
        .unwrap();
    let dead = change_id(dead, id, ChangeRoute::Queued);
    claim_only(store, dead)
        .await
        .dead(
            attempt(Some(422), "Conversion is already in an invoice"),
            "HTTP 422".into(),
        )
        .await
        .unwrap();
    (id, dead)
}

/// A `leads/update` Scaleo refuses (422) leaves the memory at what Scaleo holds: the next
/// change is decided against that (so it carries the status again), and a replay of the dead
/// change, older than the changes after it, never overwrites what those set.
pub async fn a_change_scaleo_refused_is_taken_back_out_of_the_memory(b: &impl Backend) {
    let store = b.open().await;
    let chargeback = json!({"conv_status": "rejected", "revenue": 0});
    // The next postback repeats the status: it is sent again, with the new amount.
    let (id, dead) = delivered_then_refused(&store, "c1", "L-1", &chargeback).await;
    let other = b.other(&store).await;
    let next = json!({"conv_status": "rejected", "revenue": -5});
    let next_id = change_id(
        other.insert(conversion("c1", next.clone())).await.unwrap(),
        id,
        ChangeRoute::Queued,
    );
    let c = claim_only(&store, next_id).await;
    assert_eq!(body(&c), json!({"conv_status": "rejected", "revenue": -5}));
    c.delivered(attempt(Some(200), "{}"), None, None)
        .await
        .unwrap();
    // The dead one replayed: everything it says, a newer change said since.
    assert_eq!(
        store
            .requeue(dead, conversion("c1", chargeback.clone()).state)
            .await
            .unwrap(),
        Requeued::Duplicate { original: id }
    );
    assert!(claim_all(&store).await.is_empty());
    let again = store.insert(conversion("c1", next)).await.unwrap();
    assert!(matches!(again, Inserted::Duplicate { .. }), "{again:?}");

    // The next postback changes only the amount: Scaleo is left approved at -5, and the
    // replay sends only the status, not its older amount.
    let (id, dead) = delivered_then_refused(&store, "c2", "L-2", &chargeback).await;
    let money = store
        .insert(conversion("c2", json!({"revenue": -5})))
        .await
        .unwrap();
    let money = change_id(money, id, ChangeRoute::Queued);
    let c = claim_only(&store, money).await;
    assert_eq!(body(&c), json!({"revenue": -5}));
    c.delivered(attempt(Some(200), "{}"), None, None)
        .await
        .unwrap();
    // A resend of the refused chargeback is an update again, not a duplicate.
    let preview = store
        .preview(conversion("c2", chargeback.clone()).state)
        .await
        .unwrap()
        .expect("a change of the conversion");
    assert_eq!(preview.outcome, "update", "{preview:?}");
    assert_eq!(
        other
            .requeue(dead, conversion("c2", chargeback).state)
            .await
            .unwrap(),
        Requeued::Update {
            original: id,
            route: ChangeRoute::Queued
        }
    );
    let c = claim_only(&store, dead).await;
    assert_eq!(body(&c), json!({"conv_status": "rejected"}));
    c.delivered(attempt(Some(200), "{}"), None, None)
        .await
        .unwrap();
    let now = json!({"conv_status": "rejected", "revenue": -5});
    let again = store.insert(conversion("c2", now)).await.unwrap();
    assert!(matches!(again, Inserted::Duplicate { .. }), "{again:?}");

    // Two changes collapsed into one that Scaleo refuses: both are dead, the earlier one
    // naming the later, and the memory holds neither.
    let id = stored_id(
        store
            .insert(conversion(
                "c3",
                json!({"conv_status": "pending", "revenue": 0}),
            ))
            .await
            .unwrap(),
    );
    deliver(&store, id, Some("\"L-3\"")).await;
    let hold = json!({"conv_status": "hold", "revenue": 5});
    let first = store.insert(conversion("c3", hold.clone())).await.unwrap();
    let first = change_id(first, id, ChangeRoute::Queued);
    let second = store
        .insert(conversion("c3", json!({"conv_status": "approved"})))
        .await
        .unwrap();
    let second = change_id(second, id, ChangeRoute::Queued);
    assert_eq!(state_of(&store, first).await, State::Merged);
    claim_only(&store, second)
        .await
        .dead(
            attempt(Some(422), "Conversion is already in an invoice"),
            "HTTP 422".into(),
        )
        .await
        .unwrap();
    let view = store.get(first).await.unwrap().unwrap();
    assert_eq!(view.summary.state, State::Dead);
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains(&format!("change {second}"))),
        "{:?}",
        view.reason
    );
    let again = store.insert(conversion("c3", hold)).await.unwrap();
    let again = change_id(again, id, ChangeRoute::Queued);
    let c = claim_only(&store, again).await;
    assert_eq!(body(&c), json!({"conv_status": "hold", "revenue": 5}));
    c.release().await.unwrap();
}

/// A refund URL retried for an order nobody knows: counted on the stored reject (as a
/// mapping reject is), and a change once the conversion exists.
pub async fn a_repeat_of_an_unmatched_update_only_postback_is_counted_on_it(b: &impl Backend) {
    let store = b.open().await;
    let other = b.other(&store).await;
    let refunded = || NewRecord {
        repeat_window: Some(DAY),
        ..refund("T-9", json!({"conv_status": "rejected", "revenue": -10}))
    };
    let first = store.insert(refunded()).await.unwrap();
    let Inserted::Unmatched { id, reason } = first else {
        panic!("not unmatched: {first:?}")
    };
    for (n, s) in [(1, &store), (2, &other)] {
        assert_eq!(
            s.insert(refunded()).await.unwrap(),
            Inserted::Repeat {
                id,
                reason: reason.clone(),
                repeats: n
            }
        );
    }
    assert_eq!(store.get(id).await.unwrap().unwrap().repeats, 2);
    // Another order is a reject of its own.
    let another = NewRecord {
        repeat_window: Some(DAY),
        ..refund("T-10", json!({"conv_status": "rejected"}))
    };
    let another = store.insert(another).await.unwrap();
    assert!(
        matches!(another, Inserted::Unmatched { id: a, .. } if a != id),
        "{another:?}"
    );
    // Once the conversion exists, the same refund is a change of it.
    let sale = json!({"conv_status": "approved", "revenue": 40, "adv_order_id": "T-9"});
    let original = stored_id(store.insert(conversion("c9", sale)).await.unwrap());
    deliver(&store, original, Some("9")).await;
    let change = store.insert(refunded()).await.unwrap();
    change_id(change, original, ChangeRoute::Queued);
}

/// Many records of tracked conversions ended at once (the PostgreSQL store settles them in
/// one group): each conversion's memory follows its own, as settled one at a time.
pub async fn concurrent_ends_keep_each_conversion_memory(b: &impl Backend) {
    let store = b.open().await;
    let approved = json!({"conv_status": "approved", "revenue": 10});
    let chargeback = json!({"conv_status": "rejected", "revenue": 0});
    let folded = json!({"conv_status": "approved", "revenue": 50});
    const N: usize = 8;
    // k*: a queued chargeback Scaleo refuses; d*: one it takes; f*: an original whose retry
    // carries a folded change and is refused.
    let mut delivered = Vec::new();
    for i in 0..N {
        for click in [format!("k{i}"), format!("d{i}")] {
            let id = stored_id(
                store
                    .insert(conversion(&click, approved.clone()))
                    .await
                    .unwrap(),
            );
            deliver(&store, id, Some(&format!("\"L-{click}\""))).await;
            delivered.push((click, id));
        }
    }
    let pending = json!({"conv_status": "pending", "revenue": 1});
    for i in 0..N {
        let click = format!("f{i}");
        store
            .insert(conversion(&click, pending.clone()))
            .await
            .unwrap();
    }
    let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    for c in claim_all(&store).await {
        c.retry(attempt(None, "timed out"), past, "timeout".into())
            .await
            .unwrap();
    }
    for i in 0..N {
        let change = store
            .insert(conversion(&format!("f{i}"), folded.clone()))
            .await
            .unwrap();
        assert!(
            matches!(
                change,
                Inserted::Update {
                    route: ChangeRoute::Merged,
                    ..
                }
            ),
            "{change:?}"
        );
    }
    for (click, id) in &delivered {
        let change = store
            .insert(conversion(click, chargeback.clone()))
            .await
            .unwrap();
        change_id(change, *id, ChangeRoute::Queued);
    }
    let claimed = claim_all(&store).await;
    assert_eq!(claimed.len(), 3 * N);
    let mut set = tokio::task::JoinSet::new();
    for c in claimed {
        set.spawn(async move {
            let a = attempt(Some(422), "refused");
            match c.change() {
                None => c.duplicate_upstream(a).await.unwrap(),
                Some(_) => {
                    // The chargeback bodies carry no click id: tell them apart by the lead.
                    let lead = c.change().unwrap().lead_id.clone().unwrap();
                    if lead.contains("\"L-d") {
                        c.delivered(attempt(Some(200), "{}"), None, None)
                            .await
                            .unwrap();
                    } else {
                        c.dead(a, "HTTP 422".into()).await.unwrap();
                    }
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    for i in 0..N {
        // Taken, then a later change refused: the memory goes back to what Scaleo took.
        let d = format!("d{i}");
        let later = store
            .insert(conversion(&d, json!({"revenue": -3})))
            .await
            .unwrap();
        let Inserted::Update { id: later, .. } = later else {
            panic!("{d}: {later:?}")
        };
        claim_only(&store, later)
            .await
            .dead(attempt(Some(422), "refused"), "HTTP 422".into())
            .await
            .unwrap();
        let again = store
            .insert(conversion(&d, chargeback.clone()))
            .await
            .unwrap();
        assert!(
            matches!(again, Inserted::Duplicate { .. }),
            "{d}: {again:?}"
        );
    }
    for i in 0..N {
        // Refused: a resend is a change again.
        let k = store
            .insert(conversion(&format!("k{i}"), chargeback.clone()))
            .await
            .unwrap();
        assert!(
            matches!(
                k,
                Inserted::Update {
                    route: ChangeRoute::Queued,
                    ..
                }
            ),
            "k{i}: {k:?}"
        );
        let f = store
            .insert(conversion(&format!("f{i}"), folded.clone()))
            .await
            .unwrap();
        assert!(
            matches!(
                f,
                Inserted::Update {
                    route: ChangeRoute::Dead(_),
                    ..
                }
            ),
            "f{i}: {f:?}"
        );
    }
    let counts = store.counts_by_state().await.unwrap();
    let merged = counts.iter().find(|(s, _)| *s == State::Merged);
    assert_eq!(merged, None, "no folded change is left merged: {counts:?}");
    for c in claim_all(&store).await {
        c.release().await.unwrap();
    }
}

// Many callers at once (the PostgreSQL store groups concurrent inserts and settles into
// shared transactions; the SQLite writer groups everything): every answer is what the
// callers one at a time would have got, and every answered write is stored.

/// The answers of `n` postbacks sent by `tasks` concurrent callers, `make(i)` being the
/// i-th; each with its index.
pub async fn insert_concurrently(
    store: &Store,
    n: usize,
    tasks: usize,
    make: fn(usize) -> NewRecord,
) -> Vec<(usize, Result<Inserted, StoreError>)> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let store = store.clone();
        set.spawn(async move {
            let mut answers = Vec::new();
            for i in (t..n).step_by(tasks) {
                answers.push((i, store.insert(make(i)).await));
            }
            answers
        });
    }
    let mut answers = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        answers.extend(r.unwrap());
    }
    answers.sort_by_key(|(i, _)| *i);
    answers
}

/// For the answers to postbacks of dedupe key `key(i)`: the record that holds each key,
/// after checking that exactly one postback of each key was stored, every other one is a
/// duplicate of it, and every answered record is stored in the state answered.
pub async fn one_holder_per_key(
    store: &Store,
    answers: &[(usize, Inserted)],
    key: impl Fn(usize) -> String,
) -> std::collections::HashMap<String, i64> {
    let mut holder = std::collections::HashMap::new();
    for (i, answer) in answers {
        if let Inserted::Stored { id } = answer {
            let before = holder.insert(key(*i), *id);
            assert!(
                before.is_none(),
                "key {} stored twice: {before:?} and {id}",
                key(*i)
            );
        }
    }
    for (i, answer) in answers {
        match answer {
            Inserted::Stored { id } => assert_eq!(state_of(store, *id).await, State::Queued),
            Inserted::Duplicate { id, original } => {
                assert_eq!(Some(original), holder.get(&key(*i)), "postback {i}");
                assert_eq!(state_of(store, *id).await, State::Duplicate);
            }
            other => panic!("postback {i}: {other:?}"),
        }
    }
    holder
}

pub async fn many_concurrent_inserts_dedupe_exactly_and_every_answer_is_stored(b: &impl Backend) {
    let store = b.open().await;
    // 20 tracked conversions with an order id each, not sent yet.
    let mut convs = Vec::new();
    for c in 0..20 {
        let sale =
            json!({"conv_status": "approved", "revenue": 40, "adv_order_id": format!("o-{c}")});
        let id = store.insert(conversion(&format!("v{c}"), sale)).await;
        convs.push(stored_id(id.unwrap()));
    }
    // 500 postbacks from 64 callers: every 10th refunds one of the conversions (2 or 3
    // times each), the others carry one of 108 dedupe keys, each sent 4 or 5 times (the
    // repeats meet in one group and across groups).
    let answers = insert_concurrently(&store, 500, 64, |i| {
        if i % 10 == 0 {
            refund(
                &format!("o-{}", i / 10 % 20),
                json!({"conv_status": "rejected", "revenue": 0}),
            )
        } else {
            queued(
                "acme",
                &format!("c{i}"),
                Some((&format!("k{}", i % 120), DAY)),
            )
        }
    })
    .await;
    let answers: Vec<(usize, Inserted)> = answers
        .into_iter()
        .map(|(i, a)| (i, a.unwrap_or_else(|e| panic!("postback {i}: {e}"))))
        .collect();
    let (refunds, keyed): (Vec<_>, Vec<_>) = answers.into_iter().partition(|(i, _)| i % 10 == 0);
    let holders = one_holder_per_key(&store, &keyed, |i| format!("k{}", i % 120)).await;
    assert_eq!(holders.len(), 108);
    // Each conversion: its first refund is folded into the unsent original, the later ones
    // are duplicates of it.
    let mut folded = HashSet::new();
    for (i, answer) in &refunds {
        let conv = convs[i / 10 % 20];
        match answer {
            Inserted::Update {
                id,
                original,
                route: ChangeRoute::Merged,
            } if *original == conv => {
                assert!(folded.insert(conv), "conversion {conv} changed twice");
                assert_eq!(state_of(&store, *id).await, State::Merged);
            }
            Inserted::Duplicate { id, original } if *original == conv => {
                assert_eq!(state_of(&store, *id).await, State::Duplicate);
            }
            other => panic!("refund {i} of {conv}: {other:?}"),
        }
    }
    assert_eq!(folded.len(), 20);
    for conv in &convs {
        assert_eq!(body_of(&store, *conv).await["conv_status"], "rejected");
    }
    let mut counts = store.counts_by_state().await.unwrap();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        [
            (State::Duplicate, 372),
            (State::Merged, 20),
            (State::Queued, 128)
        ]
    );
}

pub async fn concurrent_settles_all_land(b: &impl Backend) {
    let store = b.open().await;
    let other = b.other(&store).await;
    // Ten records whose lease runs out and another claim takes: their late settles are
    // refused, their attempts kept.
    fill(&store, "acme", 10).await;
    let lost = store
        .claim(10, Duration::from_millis(100), &[])
        .await
        .unwrap();
    let mut taken = Vec::new();
    let all_taken = until(Duration::from_secs(10), async || {
        taken.extend(other.claim(10, Duration::from_secs(60), &[]).await.unwrap());
        taken.len() == 10
    })
    .await;
    assert!(all_taken, "the leases never ran out");
    let lost_ids: HashSet<i64> = lost.iter().map(Claimed::id).collect();
    fill(&store, "acme", 200).await;
    let claimed = store
        .claim(200, Duration::from_secs(60), &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 200);
    let later = Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    let mut set = tokio::task::JoinSet::new();
    for (n, c) in claimed.into_iter().chain(lost).enumerate() {
        set.spawn(async move {
            let id = c.id();
            let a = attempt(Some(200), &format!("answer {id}"));
            let done = match n % 5 {
                0 => c.delivered(a, Some(format!("tx-{id}")), None).await,
                1 => c.retry(a, later, format!("HTTP 503 for {id}")).await,
                2 => c.dead(a, format!("gave up on {id}")).await,
                3 => c.duplicate_upstream(a).await,
                _ => c.paused(a, "HTTP 401".into()).await,
            };
            (id, n % 5, done)
        });
    }
    let mut settled = 0;
    while let Some(r) = set.join_next().await {
        let (id, how, done) = r.unwrap();
        let view = store.get(id).await.unwrap().unwrap();
        assert_eq!(view.attempts.len(), 1, "record {id}: its attempt is kept");
        assert_eq!(view.attempts[0].answer, format!("answer {id}"));
        if lost_ids.contains(&id) {
            assert!(
                matches!(done, Err(StoreError::LeaseLost(l)) if l == id),
                "{done:?}"
            );
            assert_eq!(view.summary.state, State::Queued, "record {id}");
            assert_eq!(view.attempt_count, 0);
            continue;
        }
        done.unwrap_or_else(|e| panic!("record {id}: {e}"));
        settled += 1;
        let want = [
            State::Delivered,
            State::Retrying,
            State::Dead,
            State::DuplicateUpstream,
            State::Paused,
        ][how];
        assert_eq!(view.summary.state, want, "record {id}");
        assert_eq!(view.attempt_count, u32::from(how != 4), "record {id}");
        match want {
            State::Delivered => {
                assert_eq!(view.transaction_id, Some(format!("tx-{id}")));
            }
            State::Retrying => {
                assert_eq!(view.last_error, Some(format!("HTTP 503 for {id}")));
                assert_eq!(
                    view.next_attempt_at.map(|t| t.as_second()),
                    Some(later.as_second())
                );
            }
            State::Dead => assert_eq!(view.reason, Some(format!("gave up on {id}"))),
            _ => {}
        }
    }
    assert_eq!(settled, 200);
    // The paused ones are due again; the records another claim took are still its own.
    let again = claim_all(&store).await;
    assert_eq!(again.len(), 40);
    for c in again.into_iter().chain(taken) {
        c.release().await.unwrap();
    }
}
