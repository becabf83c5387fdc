//! A store that stalls is bounded: with the SQLite write lock held by another process (an
//! operator's `sqlite3` shell left in a write transaction), ingest answers 503 within
//! `store.timeout` instead of hanging, `/readyz` answers within a second and says why, and
//! both recover by themselves once the lock is released, losing nothing acknowledged.

use std::time::{Duration, Instant};

use crate::e2e::support::{Env, SHOP};
use crate::support::wait;

async fn readyz(env: &Env) -> (u16, serde_json::Value, Duration) {
    let start = Instant::now();
    let url = format!("http://{}/readyz", env.relay().admin_addr);
    let resp = env.client.get(url).send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_answers_503_in_bounded_time_and_recovers() {
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.store.timeout = Duration::from_millis(500);
    })
    .await;
    let (status, ok) = env.get("/postback/shop?cid=before&amt=1").await;
    assert_eq!(status, 200, "{ok}");

    // Another process takes the database's write lock and keeps it.
    let db = env.dir.path().join("data/relay.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let start = Instant::now();
    let (status, body) = env.get("/postback/shop?cid=during&amt=1").await;
    let waited = start.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert!(
        waited < Duration::from_secs(4),
        "the answer took {waited:?}: ingest hung on the stalled store"
    );
    let (code, ready, took) = readyz(&env).await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["store"]["ok"], false, "{ready}");
    assert!(took < Duration::from_secs(3), "/readyz took {took:?}");

    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    // One postback every 100 ms until ingest acknowledges again.
    let recovered = wait::value_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || env.get("/postback/shop?cid=after&amt=1").await,
        |(status, _)| *status == 200,
    )
    .await;
    if let Err(last) = recovered {
        panic!("ingest did not recover after the lock was released; last answer: {last:?}");
    }
    wait::expect_value(
        Duration::from_secs(5),
        "/readyz to pass its store check again",
        async || readyz(&env).await,
        |(_, body, _)| body["store"]["ok"] == true,
    )
    .await;
    // The postback acknowledged before the stall is still there and forwarded.
    let id = ok["id"].as_i64().unwrap();
    assert!(env.relay().store.get(id).await.unwrap().is_some());
    env.stop().await;
}

/// `rm data/relay.db` while the relay runs: it must stop acknowledging (every postback would
/// go into an unlinked file and vanish at the next restart), and `/readyz` must say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_file_stops_acknowledging() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, ok) = env.get("/postback/shop?cid=before&amt=1").await;
    assert_eq!(status, 200, "{ok}");

    let db = env.dir.path().join("data/relay.db");
    std::fs::remove_file(&db).unwrap();

    let (status, body) = env.get("/postback/shop?cid=after&amt=1").await;
    assert_eq!(status, 503, "a postback went into the deleted file: {body}");
    let (status, _) = env.get("/postback/shop?cid=again&amt=1").await;
    assert_eq!(status, 503);
    let (code, ready, _) = readyz(&env).await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["store"]["ok"], false, "{ready}");
    let why = ready["store"].to_string();
    assert!(
        why.contains("relay.db") && why.contains("deleted"),
        "/readyz does not name the deleted file: {ready}"
    );
    env.stop().await;
}

/// The file replaced by another one (a restore copied over it, `mv other.db relay.db`): the
/// same, the relay never writes into the file that is no longer at the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_store_file_stops_acknowledging() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, ok) = env.get("/postback/shop?cid=before&amt=1").await;
    assert_eq!(status, 200, "{ok}");

    let db = env.dir.path().join("data/relay.db");
    let other = env.dir.path().join("data/other.db");
    std::fs::copy(&db, &other).unwrap();
    std::fs::rename(&other, &db).unwrap();

    let (status, body) = env.get("/postback/shop?cid=after&amt=1").await;
    assert_eq!(status, 503, "{body}");
    let (code, ready, _) = readyz(&env).await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready["store"].to_string().contains("replaced"), "{ready}");
    env.stop().await;
}
