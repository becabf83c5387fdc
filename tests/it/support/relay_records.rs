//! Builders for store records and configs shared by the store and forward tests.

use std::path::Path;
use std::time::Duration;

use postback_relay::config::{ForwardConfig, ScaleoConfig, StoreConfig};
use postback_relay::forward::retry::RetryPolicy;
use postback_relay::store::{DedupeKey, NewRecord, NewState, RawPostback, Store};

/// A store config on `dir` with a small group-commit batch.
pub fn store_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        url: None,
        retention: Duration::from_secs(30 * 86_400),
        commit_batch: 64,
        timeout: Duration::from_secs(2),
        pool_size: 16,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(3),
        ca_file: None,
    }
}

/// Scaleo at `base_url` with `api_key`, a short timeout.
pub fn scaleo_config(base_url: String, api_key: &str) -> ScaleoConfig {
    ScaleoConfig {
        base_url,
        api_key: api_key.into(),
        timezone: jiff::tz::TimeZone::UTC,
        timeout: Duration::from_millis(400),
        sandbox: false,
    }
}

/// Fast forwarding for tests: no rate limit, 50 ms retries, short lease, distant probes.
pub fn forward_config() -> ForwardConfig {
    ForwardConfig {
        rate_per_second: 0,
        burst: 0,
        concurrency: 4,
        retry: RetryPolicy::new(
            vec![Duration::from_millis(50)],
            Duration::from_secs(3600),
            100,
        )
        .expect("a valid retry policy"),
        lease: Duration::from_secs(3),
        pause_probe: Duration::from_secs(3600),
        grace: Duration::from_secs(2),
        outage_after: 20,
        max_retry_after: Duration::from_secs(600),
    }
}

/// Opens a store on `dir`.
pub fn open(dir: &Path) -> Store {
    Store::open(&store_config(dir)).expect("store opens")
}

/// The raw postback of a test record.
pub fn raw(query: &str) -> RawPostback {
    RawPostback {
        method: "GET".into(),
        path: "/postback/acme".into(),
        query: query.into(),
        client_ip: Some("203.0.113.9".into()),
        user_agent: Some("test".into()),
        referer: None,
        received_at: jiff::Timestamp::now(),
    }
}

/// A queued record for `source` with click id `click` and an exact decimal revenue.
pub fn queued(source: &str, click: &str, dedupe: Option<(&str, Duration)>) -> NewRecord {
    let body = serde_json::json!({ "click_id": click, "revenue": serde_json::from_str::<serde_json::Value>("19.99").unwrap() });
    let serde_json::Value::Object(body) = body else {
        unreachable!()
    };
    NewRecord {
        source: source.into(),
        raw: raw(&format!("cid={click}&amt=1999")),
        state: NewState::Queued {
            body,
            click_id: click.into(),
            dedupe: dedupe.map(|(k, window)| DedupeKey {
                key: format!("{source}|{k}"),
                window,
            }),
            updates: None,
        },
        repeat_window: None,
    }
}

/// Inserts `n` queued records without dedupe; returns their ids.
pub async fn fill(store: &Store, source: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        match store
            .insert(queued(source, &format!("c{i}"), None))
            .await
            .expect("insert")
        {
            postback_relay::store::Inserted::Stored { id } => ids.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    ids
}
