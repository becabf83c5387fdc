//! The Scaleo API key never reaches the store or the logs. Its own test binary, beside
//! `tests/it/`: it installs a process-wide subscriber that captures every log line (`log`
//! crate records included), which no other test of the process may share.

#[allow(dead_code)]
#[path = "it/support/relay_mock.rs"]
mod mock;
#[allow(dead_code)]
#[path = "it/support/relay_records.rs"]
mod records;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock::{Mock, Reply};
use postback_relay::forward::{Forwarder, Routes, SourceForward};
use postback_relay::store::{Inserted, State, Store};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::util::SubscriberInitExt;

const KEY: &str = "KEY-SEKRIT-4242";
const OTHER_KEY: &str = "OTHER-SEKRIT-77";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

async fn insert(store: &Store, source: &str, click: &str) -> i64 {
    match store
        .insert(records::queued(source, click, None))
        .await
        .unwrap()
    {
        Inserted::Stored { id } => id,
        other => panic!("{other:?}"),
    }
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_never_stored_or_logged() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish()
        .try_init()
        .expect("the only subscriber of this binary");

    let mock = Mock::start(Reply::Success("tx".into())).await;
    // An answer that echoes the URL, a dead answer quoting the key, then success.
    mock.script_for("echo", [Reply::EchoQuery]);
    mock.script_for(
        "dead",
        [Reply::error(
            404,
            &format!("unknown click for api-key={KEY}"),
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let store = records::open(dir.path());
    let unreachable = SourceForward {
        base_url: Some("http://127.0.0.1:9".into()),
        api_key: Some(OTHER_KEY.into()),
        ..SourceForward::default()
    };
    let routes = Routes::new(HashMap::from([("other".to_string(), unreachable)]));
    let scaleo = records::scaleo_config(mock.base_url(), KEY);
    let fwd = records::forward_config();
    let shutdown = CancellationToken::new();
    let forwarder = Forwarder::spawn(store.clone(), scaleo, fwd, routes, shutdown.clone()).unwrap();

    let echo = insert(&store, "acme", "echo").await;
    let dead = insert(&store, "acme", "dead").await;
    let other = insert(&store, "other", "conn").await;
    until("echo delivered", async || {
        store.get(echo).await.unwrap().unwrap().summary.state == State::Delivered
    })
    .await;
    until("dead", async || {
        store.get(dead).await.unwrap().unwrap().summary.state == State::Dead
    })
    .await;
    until("connect errors", async || {
        store.get(other).await.unwrap().unwrap().attempts.len() >= 2
    })
    .await;
    // Finally a refused key (logged at error level, persisted as a pause).
    mock.set_default(Reply::EchoQuery);
    mock.script([Reply::Status {
        code: 401,
        body: "bad api-key".into(),
        retry_after: None,
    }]);
    insert(&store, "acme", "auth").await;
    until("paused", async || !store.paused().await.unwrap().is_empty()).await;
    shutdown.cancel();
    forwarder.join().await;

    // The key really travelled, so the checks below are not vacuous.
    assert!(mock.received().iter().any(|r| r.query.contains(KEY)));
    for id in [echo, dead, other] {
        let v = store.get(id).await.unwrap().unwrap();
        let text = format!("{v:?}");
        assert!(!text.contains(KEY) && !text.contains(OTHER_KEY), "{text}");
    }
    let echoed = store.get(echo).await.unwrap().unwrap();
    assert!(
        echoed.attempts[0].answer.contains("api-key=[redacted]"),
        "{echoed:?}"
    );
    // Scanned while the store is open: the WAL still holds the latest commits.
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for key in [KEY, OTHER_KEY] {
            let found = bytes.windows(key.len()).any(|w| w == key.as_bytes());
            assert!(!found, "{key} found in {}", path.display());
        }
    }
    drop(store);
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("forwarding paused"), "the pause is logged");
    // HTTP library logs at trace level are captured too (so their URLs were checked).
    assert!(
        logs.contains("hyper_util::client"),
        "library logs not captured"
    );
    assert!(
        !logs.contains(KEY) && !logs.contains(OTHER_KEY),
        "key in logs:\n{logs}"
    );
}
