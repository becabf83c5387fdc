//! The SQLite store against real files: group commit, dedupe, claims, pauses, replay.

#[path = "support/relay_records.rs"]
mod records;

use std::time::Duration;

use jiff::Timestamp;
use postback_relay::store::{
    Attempt, Filter, Inserted, NewRecord, NewState, PauseReason, PauseScope, Requeued, State,
};
use records::{fill, open, queued, raw};

fn attempt(status: Option<u16>, answer: &str) -> Attempt {
    Attempt {
        at: Timestamp::now(),
        status,
        answer: answer.into(),
        duration: Duration::from_millis(3),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_answers_only_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let file = dir.path().join("relay.db");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        let store = store.clone();
        let file = file.clone();
        tasks.spawn(async move {
            let rec = queued("acme", &format!("click-{i}"), None);
            let Inserted::Stored { id } = store.insert(rec).await.unwrap() else {
                panic!("not stored")
            };
            // A separate connection sees the row as soon as the caller is answered.
            let c = rusqlite::Connection::open(&file).unwrap();
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM records WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(n, 1, "record {id} answered before it was committed");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let counts = store.counts_by_state().await.unwrap();
    assert_eq!(counts, vec![(State::Queued, 300)]);
}

#[tokio::test]
async fn body_is_stored_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let Inserted::Stored { id } = store.insert(queued("acme", "abc", None)).await.unwrap() else {
        panic!()
    };
    let claimed = store.claim(10, Duration::from_secs(5), &[]).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].body(), r#"{"click_id":"abc","revenue":19.99}"#);
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.raw.query, "cid=abc&amt=1999");
    assert_eq!(view.raw.client_ip.as_deref(), Some("203.0.113.9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_within_window_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86_400);
    let first_id;
    {
        let store = open(dir.path());
        // Two identical keys racing into the same batch: exactly one is stored.
        let (a, b) = tokio::join!(
            store.insert(queued("acme", "k1", Some(("k1", day)))),
            store.insert(queued("acme", "k1", Some(("k1", day)))),
        );
        let mut answers = [a.unwrap(), b.unwrap()];
        answers.sort_by_key(|i| matches!(i, Inserted::Duplicate { .. }));
        let Inserted::Stored { id } = answers[0] else {
            panic!("{answers:?}")
        };
        first_id = id;
        assert_eq!(
            answers[1],
            Inserted::Duplicate {
                id: match answers[1] {
                    Inserted::Duplicate { id, .. } => id,
                    _ => panic!("{answers:?}"),
                },
                original: id
            }
        );
        // Another source with the same click is another key.
        assert!(matches!(
            store
                .insert(queued("other", "k1", Some(("k1", day))))
                .await
                .unwrap(),
            Inserted::Stored { .. }
        ));
    }
    // After a restart the key still holds.
    let store = open(dir.path());
    let again = store
        .insert(queued("acme", "k1", Some(("k1", day))))
        .await
        .unwrap();
    assert!(matches!(again, Inserted::Duplicate { original, .. } if original == first_id));
    // A key whose window has passed no longer holds.
    let mut old = queued("acme", "k2", Some(("k2", Duration::from_millis(1))));
    old.raw.received_at = Timestamp::now() - jiff::SignedDuration::from_secs(10);
    assert!(matches!(
        store.insert(old).await.unwrap(),
        Inserted::Stored { .. }
    ));
    assert!(matches!(
        store
            .insert(queued("acme", "k2", Some(("k2", day))))
            .await
            .unwrap(),
        Inserted::Stored { .. }
    ));
    // Duplicates are never claimed.
    let claimed = store.claim(100, Duration::from_secs(5), &[]).await.unwrap();
    assert_eq!(claimed.len(), 4);
    assert!(claimed.iter().all(|c| c.state() == State::Queued));
    for c in claimed {
        c.release().await.unwrap();
    }
}

#[tokio::test]
async fn dead_original_does_not_block_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let day = Duration::from_secs(86_400);
    store
        .insert(queued("acme", "k", Some(("k", day))))
        .await
        .unwrap();
    let c = store.claim(1, day, &[]).await.unwrap().pop().unwrap();
    c.dead(attempt(Some(404), "{}"), "HTTP 404".into())
        .await
        .unwrap();
    let again = store
        .insert(queued("acme", "k", Some(("k", day))))
        .await
        .unwrap();
    assert!(matches!(again, Inserted::Stored { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_reclaimed_after_crash() {
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_millis(200);
    let ids = {
        let store = open(dir.path());
        let ids = fill(&store, "acme", 3).await;
        let claimed = store.claim(10, lease, &[]).await.unwrap();
        assert_eq!(claimed.len(), 3);
        // The process "dies": the claims are dropped unsettled.
        drop(claimed);
        ids
    };
    let store = open(dir.path());
    // Still leased right after the restart.
    assert!(store.claim(10, lease, &[]).await.unwrap().is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        let c = store.claim(10, lease, &[]).await.unwrap();
        if !c.is_empty() || tokio::time::Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut got: Vec<i64> = again.iter().map(|c| c.id()).collect();
    got.sort_unstable();
    assert_eq!(got, ids);
    for c in again {
        c.delivered(attempt(Some(200), "ok"), Some("tx".into()))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn settle_after_lost_lease_is_refused_but_attempt_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids = fill(&store, "acme", 1).await;
    let lease = Duration::from_millis(50);
    let first = store.claim(1, lease, &[]).await.unwrap().pop().unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let second = store.claim(1, lease, &[]).await.unwrap().pop().unwrap();
    let err = first
        .delivered(attempt(Some(200), "late"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, postback_relay::store::StoreError::LeaseLost(id) if id == ids[0]));
    second
        .delivered(attempt(Some(200), "ok"), Some("t".into()))
        .await
        .unwrap();
    let view = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(view.attempts.len(), 2);
    assert_eq!(view.summary.state, State::Delivered);
}

#[tokio::test]
async fn fresh_records_are_not_starved_by_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
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
    let fresh = claimed
        .iter()
        .filter(|c| c.state() == State::Queued)
        .count();
    let retries = claimed
        .iter()
        .filter(|c| c.state() == State::Retrying)
        .count();
    assert_eq!((fresh, retries), (6, 2));
}

#[tokio::test]
async fn pauses_persist_and_stop_claims() {
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_secs(30);
    {
        let store = open(dir.path());
        fill(&store, "acme", 2).await;
        fill(&store, "beta", 2).await;
        store
            .pause(PauseScope::Source("acme".into()), PauseReason::Operator)
            .await
            .unwrap();
    }
    let store = open(dir.path());
    let paused = store.paused().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].scope, PauseScope::Source("acme".into()));
    let c = store.claim(10, lease, &[]).await.unwrap();
    assert!(c.iter().all(|c| c.source() == "beta") && c.len() == 2);
    for c in c {
        c.release().await.unwrap();
    }
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
    store.resume(PauseScope::All).await.unwrap();
    store
        .resume(PauseScope::Source("acme".into()))
        .await
        .unwrap();
    assert_eq!(store.claim(10, lease, &[]).await.unwrap().len(), 4);
}

#[tokio::test]
async fn requeue_replays_rejected_and_dedupe_applies() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let day = Duration::from_secs(86_400);
    let rejected = NewRecord {
        source: "acme".into(),
        raw: raw("amt=1"),
        state: NewState::Rejected {
            reason: "click_id: no value".into(),
            click_id: None,
        },
    };
    let Inserted::Stored { id } = store.insert(rejected.clone()).await.unwrap() else {
        panic!()
    };
    let Inserted::Stored { id: id2 } = store.insert(rejected).await.unwrap() else {
        panic!()
    };
    let fixed = queued("acme", "z", Some(("z", day))).state;
    assert_eq!(
        store.requeue(id, fixed.clone()).await.unwrap(),
        Requeued::Queued
    );
    assert_eq!(
        store.requeue(id2, fixed).await.unwrap(),
        Requeued::Duplicate { original: id }
    );
    assert!(
        store
            .requeue(id, queued("acme", "z", None).state)
            .await
            .is_err()
    );
    let (page, next) = store
        .list(
            Filter {
                source: Some("acme".into()),
                ..Filter::default()
            },
            1,
            None,
        )
        .await
        .unwrap();
    assert_eq!(page[0].id, id2);
    let (page, next) = store.list(Filter::default(), 1, next).await.unwrap();
    assert_eq!((page[0].id, page[0].state, next), (id, State::Queued, None));
    assert!(store.oldest_queued().await.unwrap().is_some());
}

#[tokio::test]
async fn purge_removes_only_finished_records_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids = fill(&store, "acme", 3).await;
    let mut claimed = store.claim(3, Duration::from_secs(30), &[]).await.unwrap();
    claimed.sort_by_key(|c| c.id());
    let mut it = claimed.into_iter();
    it.next()
        .unwrap()
        .delivered(attempt(Some(200), "{}"), None)
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
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store
            .purge_delivered(Duration::from_millis(1))
            .await
            .unwrap(),
        1
    );
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert!(store.get(ids[1]).await.unwrap().is_some());
    assert!(store.get(ids[2]).await.unwrap().is_some());
}
