//! A store that cannot write in time answers `StoreError::Timeout` (ingest's 503), and an
//! insert given up that way is not stored afterwards behind the caller's back.

use std::time::Duration;

use postback_relay::store::{Inserted, Store, StoreError};

use crate::support::relay_records::{queued, store_config};

/// Rows of `records` in the store file of `dir` whose click id is `click`.
fn stored(dir: &std::path::Path, click: &str) -> i64 {
    let c = rusqlite::Connection::open(dir.join("relay.db")).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM records WHERE click_id = ?1",
        [click],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_answered_timeout_is_never_stored_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = store_config(dir.path());
    cfg.timeout = Duration::from_millis(300);
    let store = Store::open(&cfg).unwrap();
    store.insert(queued("acme", "before", None)).await.unwrap();

    // Another connection holds the write lock for 1.5 s: the writer waits for it (its busy
    // timeout is 5 s), as it would for a stalled disk.
    let file = dir.path().join("relay.db");
    let holder = std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(file).unwrap();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        tx.rollback().unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let given_up = store.insert(queued("acme", "given-up", None)).await;
    assert!(
        matches!(given_up, Err(StoreError::Timeout(_))),
        "{given_up:?}"
    );
    holder.join().unwrap();
    // Once the lock is gone the writer runs what was waiting: the given-up insert is
    // dropped, a fresh one is stored.
    let Inserted::Stored { .. } = store.insert(queued("acme", "after", None)).await.unwrap() else {
        panic!("not stored")
    };
    assert_eq!(stored(dir.path(), "before"), 1);
    assert_eq!(stored(dir.path(), "after"), 1);
    assert_eq!(
        stored(dir.path(), "given-up"),
        0,
        "an insert answered timeout (503) was stored later"
    );
    store.close().await.unwrap();
}
