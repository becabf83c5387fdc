//! The SQLite store against real files: group commit, dedupe, claims, pauses, replay.
//!
//! The behaviours both backends share are in `support/store_suite.rs`; here they run on a
//! SQLite file in a temp dir, reopened for the restart cases. SQLite has one instance per
//! file, so the suite's "other instance" is the same store.

use crate::support::relay_records as records;
use crate::support::store_suite as suite;

use postback_relay::store::{Inserted, State, Store};
use records::{open, queued};
use suite::Backend;

/// A SQLite store on a temp dir of its own.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Backend for Sqlite {
    async fn open(&self) -> Store {
        open(self.dir.path())
    }

    async fn other(&self, store: &Store) -> Store {
        store.clone()
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

/// A queued row the relay would never write (its body removed by hand) is an error naming
/// the record, not a forward of an empty body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_row_without_a_body_is_an_error_naming_it_not_an_empty_forward() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let Inserted::Stored { id } = store.insert(queued("acme", "c1", None)).await.unwrap() else {
        panic!("not stored")
    };
    let c = rusqlite::Connection::open(dir.path().join("relay.db")).unwrap();
    c.execute("UPDATE records SET body = NULL WHERE id = ?1", [id])
        .unwrap();
    let err = store
        .claim(10, std::time::Duration::from_secs(5), &[])
        .await
        .expect_err("a row without a body is not claimable");
    let text = err.to_string();
    assert!(
        text.contains(&format!("record {id}")) && text.contains("no body"),
        "{text}"
    );
}

#[tokio::test]
async fn body_and_raw_postback_are_stored_exactly() {
    suite::body_and_raw_postback_are_stored_exactly(&Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedupe_holds_within_the_window_across_instances_and_restarts() {
    suite::dedupe_holds_within_the_window_across_instances_and_restarts(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_dead_original_does_not_block_its_key() {
    suite::a_dead_original_does_not_block_its_key(&Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_of_a_crashed_instance_is_reclaimed() {
    suite::an_expired_lease_of_a_crashed_instance_is_reclaimed(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept() {
    suite::a_settle_after_a_lost_lease_is_refused_but_the_attempt_is_kept(&Sqlite::new()).await;
}

#[tokio::test]
async fn every_outcome_is_stored_with_its_attempt() {
    suite::every_outcome_is_stored_with_its_attempt(&Sqlite::new()).await;
}

#[tokio::test]
async fn fresh_records_are_not_starved_by_retries() {
    suite::fresh_records_are_not_starved_by_retries(&Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_share_a_record() {
    suite::concurrent_claims_never_share_a_record(&Sqlite::new()).await;
}

#[tokio::test]
async fn resuming_all_lifts_the_network_pauses_of_sources() {
    suite::resuming_all_lifts_the_network_pauses_of_sources(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_repeat_on_a_source_without_updates_previews_as_a_duplicate() {
    suite::a_repeat_on_a_source_without_updates_previews_as_a_duplicate(&Sqlite::new()).await;
}

#[tokio::test]
async fn an_outage_extends_the_age_of_its_own_sources() {
    suite::an_outage_extends_the_age_of_its_own_sources(&Sqlite::new()).await;
}

#[tokio::test]
async fn pauses_persist_and_stop_claims() {
    suite::pauses_persist_and_stop_claims(&Sqlite::new()).await;
}

#[tokio::test]
async fn requeue_replays_rejected_and_dedupe_applies() {
    suite::requeue_replays_rejected_and_dedupe_applies(&Sqlite::new()).await;
}

#[tokio::test]
async fn purge_removes_only_finished_records_past_retention() {
    suite::purge_removes_only_finished_records_past_retention(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_plain_resend_of_a_conversion_is_a_duplicate() {
    suite::a_plain_resend_of_a_conversion_is_a_duplicate(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_status_change_after_delivery_is_queued_with_the_lead_id() {
    suite::a_status_change_after_delivery_is_queued_with_the_lead_id(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_status_that_would_move_the_conversion_back_is_stale() {
    suite::a_status_that_would_move_the_conversion_back_is_stale(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_change_of_an_unsent_original_is_folded_into_it() {
    suite::a_change_of_an_unsent_original_is_folded_into_it(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_change_of_an_original_in_flight_waits_and_is_folded_on_retry() {
    suite::a_change_of_an_original_in_flight_waits_and_is_folded_on_retry(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_change_waiting_for_its_original_goes_once_it_is_delivered() {
    suite::a_change_waiting_for_its_original_goes_once_it_is_delivered(&Sqlite::new()).await;
}

#[tokio::test]
async fn two_quick_changes_after_delivery_collapse_into_one() {
    suite::two_quick_changes_after_delivery_collapse_into_one(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_change_of_an_original_scaleo_refused_is_dead_naming_it() {
    suite::a_change_of_an_original_scaleo_refused_is_dead_naming_it(&Sqlite::new()).await;
}

#[tokio::test]
async fn an_update_only_postback_finds_its_conversion_by_order_id() {
    suite::an_update_only_postback_finds_its_conversion_by_order_id(&Sqlite::new()).await;
}

#[tokio::test]
async fn the_conversion_memory_outlives_retention() {
    suite::the_conversion_memory_outlives_retention(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_dead_change_replayed_after_its_original_is_delivered_is_queued() {
    suite::a_dead_change_replayed_after_its_original_is_delivered_is_queued(&Sqlite::new()).await;
}

#[tokio::test]
async fn an_unmatched_update_only_postback_is_replayed_once_the_conversion_exists() {
    suite::an_unmatched_update_only_postback_is_replayed_once_the_conversion_exists(&Sqlite::new())
        .await;
}

#[tokio::test]
async fn a_repeat_of_a_stored_reject_is_counted_on_it_within_the_window() {
    suite::a_repeat_of_a_stored_reject_is_counted_on_it_within_the_window(&Sqlite::new()).await;
}

#[tokio::test]
async fn an_original_refused_after_a_fold_takes_the_folded_change_back() {
    suite::an_original_refused_after_a_fold_takes_the_folded_change_back(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_change_scaleo_refused_is_taken_back_out_of_the_memory() {
    suite::a_change_scaleo_refused_is_taken_back_out_of_the_memory(&Sqlite::new()).await;
}

#[tokio::test]
async fn a_repeat_of_an_unmatched_update_only_postback_is_counted_on_it() {
    suite::a_repeat_of_an_unmatched_update_only_postback_is_counted_on_it(&Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ends_keep_each_conversion_memory() {
    suite::concurrent_ends_keep_each_conversion_memory(&Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_inserts_dedupe_exactly_and_every_answer_is_stored() {
    suite::many_concurrent_inserts_dedupe_exactly_and_every_answer_is_stored(&Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settles_all_land() {
    suite::concurrent_settles_all_land(&Sqlite::new()).await;
}
