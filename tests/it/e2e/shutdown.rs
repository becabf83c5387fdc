//! The graceful stop closes the store: once `Running::stop` returns, the SQLite writer has
//! committed what it was given and closed the file (its WAL checkpointed and removed), even
//! while a store handle is still held, and every acknowledged postback is in the file.

use std::time::Duration;

use postback_relay::store::{Store, StoreError};

use crate::e2e::support::{Env, SHOP};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_graceful_stop_the_store_is_closed_and_holds_every_acknowledged_postback() {
    let mut env = Env::start(&[("shop", SHOP)], |_| {}).await;
    // Held past the stop, as a claim or a console request may hold one: it must not keep
    // the writer (and the file) open.
    let kept = env.relay().store.clone();
    let mut senders = Vec::new();
    for task in 0..4 {
        let client = env.client.clone();
        let base = env.url("/postback/shop");
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                let url = format!("{base}?cid=stop-{task}-{i}&amt=100");
                let Ok(resp) = client.get(url).send().await else {
                    break;
                };
                if resp.status().as_u16() != 200 {
                    break;
                }
                let body: serde_json::Value = resp.json().await.expect("json answer");
                acked.push(body["id"].as_i64().expect("record id"));
            }
            acked
        }));
    }
    // Stop while postbacks are still arriving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let relay = env.relay.take().expect("relay running");
    let store_dir = env.dir.path().join("data");
    relay.stop().await;

    let wal = store_dir.join("relay.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        wal_len,
        0,
        "{} is still there after the stop",
        wal.display()
    );
    assert!(
        matches!(kept.probe_write().await, Err(StoreError::Closed)),
        "a closed store takes no more writes"
    );

    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.expect("sender task"));
    }
    assert!(
        acked.len() >= 4,
        "too few postbacks before the stop: {acked:?}"
    );
    // A new writer opens the file at once and finds every acknowledged postback.
    let cfg = postback_relay::config::Config::for_local("http://127.0.0.1:9", "k").store;
    let reopened = Store::open(&postback_relay::config::StoreConfig {
        path: store_dir,
        ..cfg
    })
    .expect("the store opens again");
    for id in &acked {
        assert!(
            reopened.get(*id).await.expect("read").is_some(),
            "acknowledged record {id} is missing"
        );
    }
    env.sandbox.shutdown();
}
