//! The PostgreSQL store against a real server started by the harness: the behaviours of the
//! SQLite store (dedupe, leases, settles, fairness, pauses, replay, purge) and what several
//! instances sharing one database add (dedupe and claims across instances, the shared rate
//! limit). Two `Store` handles connected to the same database stand for two instances.
//!
//! The behaviours both backends share are in `support/store_suite.rs`; here they run on a
//! fresh database, the suite's "other instance" being a second `Store` connected to it.

#[path = "support/pg.rs"]
mod pg;
#[path = "support/relay_records.rs"]
mod records;
#[path = "support/store_suite.rs"]
mod suite;
#[path = "support/wait.rs"]
mod wait;

use std::time::Duration;

use postback_relay::store::{State, Store, StoreError};
use records::{queued, store_config};
use suite::{Backend, stored_id};

/// One instance on the database at `url`.
async fn instance(url: &str) -> Store {
    let dir = std::env::temp_dir();
    let mut cfg = store_config(&dir);
    cfg.url = Some(url.to_string());
    Store::connect(&cfg).await.expect("store connects")
}

/// A fresh database of its own; every open is another instance on it.
struct Postgres {
    url: String,
}

impl Postgres {
    async fn new() -> Postgres {
        Postgres {
            url: pg::fresh_db().await,
        }
    }
}

impl Backend for Postgres {
    async fn open(&self) -> Store {
        instance(&self.url).await
    }

    async fn other(&self, _store: &Store) -> Store {
        instance(&self.url).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_is_committed_when_answered_and_seen_by_other_instances() {
    let url = pg::fresh_db().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (a, b) = (a.clone(), b.clone());
        tasks.spawn(async move {
            let id = stored_id(
                a.insert(queued("acme", &format!("c{i}"), None))
                    .await
                    .unwrap(),
            );
            // The other instance sees the record as soon as the caller is answered.
            let seen = b.get(id).await.unwrap();
            assert!(
                seen.is_some(),
                "record {id} answered before it was committed"
            );
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        b.counts_by_state().await.unwrap(),
        vec![(State::Queued, 100)]
    );
}

#[tokio::test]
async fn body_and_raw_postback_are_stored_exactly() {
    suite::body_and_raw_postback_are_stored_exactly(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedupe_holds_within_the_window_across_instances_and_restarts() {
    suite::dedupe_holds_within_the_window_across_instances_and_restarts(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn a_dead_original_does_not_block_its_key() {
    suite::a_dead_original_does_not_block_its_key(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_of_a_crashed_instance_is_reclaimed() {
    suite::an_expired_lease_of_a_crashed_instance_is_reclaimed(&Postgres::new().await).await;
}

#[tokio::test]
async fn a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept() {
    suite::a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept(&Postgres::new().await)
        .await;
}

#[tokio::test]
async fn every_outcome_is_stored_with_its_attempt() {
    suite::every_outcome_is_stored_with_its_attempt(&Postgres::new().await).await;
}

#[tokio::test]
async fn fresh_records_are_not_starved_by_retries() {
    suite::fresh_records_are_not_starved_by_retries(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_share_a_record() {
    suite::concurrent_claims_never_share_a_record(&Postgres::new().await).await;
}

#[tokio::test]
async fn pauses_persist_and_stop_claims() {
    suite::pauses_persist_and_stop_claims(&Postgres::new().await).await;
}

#[tokio::test]
async fn requeue_replays_rejected_and_dedupe_applies() {
    suite::requeue_replays_rejected_and_dedupe_applies(&Postgres::new().await).await;
}

#[tokio::test]
async fn purge_removes_only_finished_records_past_retention() {
    suite::purge_removes_only_finished_records_past_retention(&Postgres::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_rate_limit_holds_across_two_instances() {
    let url = pg::fresh_db().await;
    let (a, b) = (instance(&url).await, instance(&url).await);
    let (per_second, burst) = (20, 5);
    let window = Duration::from_millis(1500);
    let limits = [
        a.shared_limit("scaleo.global", per_second, burst).unwrap(),
        b.shared_limit("scaleo.global", per_second, burst).unwrap(),
    ];
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for limit in limits.iter().chain(limits.iter()) {
        let limit = limit.clone();
        tasks.spawn(async move {
            let mut granted = 0;
            loop {
                limit.acquire().await.unwrap();
                if start.elapsed() >= window {
                    return granted;
                }
                granted += 1;
            }
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap();
    }
    // Together never more than the burst plus the rate over the window (one cell of slack
    // for the database's clock starting a hair before ours), and clearly more than one
    // instance's share.
    let ceiling = burst as usize + (per_second as usize * 3 / 2) + 1;
    assert!(
        total <= ceiling,
        "{total} cells in {window:?}, at most {ceiling}"
    );
    assert!(total >= 15, "only {total} cells in {window:?}");
}

#[tokio::test]
async fn a_connect_error_names_the_url_without_its_password() {
    let mut cfg = store_config(&std::env::temp_dir());
    cfg.url = Some("postgres://relay:s3cret-pw@127.0.0.1:1/relay".into());
    let err = Store::connect(&cfg)
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = format!("{err:#} {err:?}");
    assert!(!text.contains("s3cret-pw"), "{text}");
    assert!(text.contains("relay:***@127.0.0.1:1"), "{text}");
    cfg.url = Some("mysql://relay@127.0.0.1/relay".into());
    assert!(matches!(
        Store::connect(&cfg).await,
        Err(StoreError::Url { .. })
    ));
}
