//! kill -9 right after the answers: on restart every acknowledged postback reaches Scaleo,
//! and only the forwards in flight at the kill can arrive twice.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use postback_relay::sandbox::{Sandbox, SandboxConfig};

use crate::e2e::process::RelayProcess;
use crate::e2e::support::{KEY, SHOP};
use crate::support::wait;

/// A temp directory with `rules/shop.toml`, the sandbox and a client for a relay process.
struct Harness {
    root: tempfile::TempDir,
    sandbox: Sandbox,
    client: reqwest::Client,
}

impl Harness {
    async fn new() -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("rules")).unwrap();
        std::fs::write(root.path().join("rules/shop.toml"), SHOP).unwrap();
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                api_key: KEY.into(),
            },
        )
        .await
        .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Harness {
            root,
            sandbox,
            client,
        }
    }
}

/// The click ids the sandbox accepted, once they cover `acked` or after 30 s.
async fn delivered_within_30s(sandbox: &Sandbox, acked: &HashSet<String>) -> HashSet<String> {
    let probe = async || -> HashSet<String> {
        sandbox
            .accepted()
            .iter()
            .filter_map(|b| b["click_id"].as_str().map(str::to_string))
            .collect()
    };
    // On timeout the caller reports what is missing from the last set seen.
    wait::value(Duration::from_secs(30), probe, |d| acked.is_subset(d))
        .await
        .unwrap_or_else(|last| last)
}

/// The relay process's `postback_relay_queue_depth{state="delivered"}` (read from the store at
/// each scrape), or `None` when `/metrics` does not answer.
async fn delivered_records(client: &reqwest::Client, relay: &RelayProcess) -> Option<f64> {
    let text = client
        .get(relay.admin_url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(r#"postback_relay_queue_depth{state="delivered"}"#)?
            .trim()
            .parse()
            .ok()
    })
}

fn write_config(root: &Path, base_url: &str) -> std::path::PathBuf {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[scaleo]\nbase_url = \"{base_url}\"\napi_key = \"{KEY}\"\ntimeout = \"2s\"\n\
         [forward]\nrate_per_second = 200\nburst = 10\nconcurrency = 4\nretry_schedule = [\"100ms\"]\nlease = \"3s\"\n\
         [store]\npath = \"{data}\"\n[rules]\ndir = \"{rules}\"\n",
        data = root.join("data").display(),
        rules = root.join("rules").display(),
    );
    let path = root.join("relay.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn spawn_relay(root: &Path, base_url: &str) -> RelayProcess {
    RelayProcess::serve(&write_config(root, base_url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_postback() {
    let Harness {
        root,
        sandbox,
        client,
    } = Harness::new().await;
    let mut relay = spawn_relay(root.path(), &sandbox.base_url());

    // A burst from 16 concurrent senders; remember every postback answered 200 accepted.
    let ingest = relay.ingest;
    let total = 400;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (worker..total).step_by(16) {
                let url = format!("http://{ingest}/postback/shop?cid=crash{i}&amt={i}");
                if let Ok(r) = client.get(url).send().await
                    && r.status().as_u16() == 200
                {
                    acked.push(format!("crash{i}"));
                }
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    relay.kill();
    assert_eq!(
        acked.len(),
        total,
        "every postback of the burst was acknowledged before the kill"
    );
    let before_restart = sandbox.received().len();

    let mut relay = spawn_relay(root.path(), &sandbox.base_url());
    let delivered = delivered_within_30s(&sandbox, &acked).await;
    relay.kill();
    let missing: Vec<_> = acked.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "lost after kill -9: {} of {} (sent before the kill: {before_restart})",
        missing.len(),
        acked.len()
    );
    // Re-sent forwards (in flight at the kill) meet Scaleo's "Multiple Conversions" answer;
    // at most forward.concurrency of them.
    let calls = sandbox.received().len();
    assert!(
        calls <= total + 4,
        "{calls} calls for {total} postbacks: more duplicates than in-flight forwards"
    );
}

/// Starts the relay with a file-size limit (SIGXFSZ ignored), so that SQLite's writes fail
/// once the database reaches it: a real "store cannot persist" condition.
fn spawn_relay_with_file_limit(root: &Path, base_url: &str, kib: u32) -> RelayProcess {
    let config = write_config(root, base_url);
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {kib}; exec \"$0\" serve --config \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_postback-relay"))
        .arg(&config);
    RelayProcess::start(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_that_cannot_persist_answers_503_and_never_200() {
    let Harness {
        root,
        sandbox,
        client,
    } = Harness::new().await;
    // Scaleo answers 500 for a while: records stay in the store and it keeps growing.
    sandbox.script((0..100_000).map(|_| postback_relay::sandbox::Step::status(500)));
    let mut relay = spawn_relay_with_file_limit(root.path(), &sandbox.base_url(), 256);

    let mut acked = Vec::new();
    let mut unavailable = 0;
    let pad = "p".repeat(2000);
    for i in 0..3000 {
        let url = relay.url(&format!("/postback/shop?cid=full{i}&amt=1&oid={pad}"));
        let status = client
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        match status {
            200 => acked.push(format!("full{i}")),
            503 => {
                unavailable += 1;
                if unavailable >= 20 {
                    break;
                }
            }
            other => panic!("unexpected answer {other} for postback {i}"),
        }
    }
    assert!(
        unavailable > 0,
        "the store never filled up ({} accepted)",
        acked.len()
    );
    let health = client.get(relay.url("/healthz")).send().await.unwrap();
    assert!(
        health.status().is_success(),
        "the process keeps serving while the store is full"
    );
    relay.kill();

    // Without the limit, every postback that was answered 200 is still there and delivered.
    sandbox.set_script([]);
    let mut relay = spawn_relay(root.path(), &sandbox.base_url());
    let acked: HashSet<String> = acked.into_iter().collect();
    let delivered = delivered_within_30s(&sandbox, &acked).await;
    relay.kill();
    let missing = acked.difference(&delivered).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged postbacks were lost",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_cleanly() {
    let Harness {
        root,
        sandbox,
        client,
    } = Harness::new().await;
    // The forward is in flight (Scaleo answers after 1 s) when SIGTERM arrives.
    sandbox.script([postback_relay::sandbox::Step::Hang(Duration::from_millis(
        1000,
    ))]);
    let mut relay = spawn_relay(root.path(), &sandbox.base_url());
    let r = client
        .get(relay.url("/postback/shop?cid=term1&amt=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait::expect(
        Duration::from_secs(10),
        "the forward to reach Scaleo before SIGTERM",
        async || !sandbox.received().is_empty(),
    )
    .await;
    let term = Command::new("kill")
        .args(["-TERM", &relay.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exited = wait::value(
        Duration::from_secs(10),
        async || relay.child.try_wait().unwrap(),
        Option::is_some,
    )
    .await;
    let Ok(Some(status)) = exited else {
        relay.kill();
        panic!("the relay did not exit within 10 s of SIGTERM")
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(
        client.get(relay.url("/healthz")).send().await.is_err(),
        "no longer accepting"
    );
    // The in-flight forward finished inside the grace period: a restart sends nothing again.
    let mut relay = spawn_relay(root.path(), &sandbox.base_url());
    assert_eq!(
        delivered_records(&client, &relay).await,
        Some(1.0),
        "the restarted relay sees the forward delivered"
    );
    // No second send: 500 ms is many forwarder polls (it looks for due work every few tens
    // of ms), so a re-send of the record would show in that window.
    wait::quiet(Duration::from_millis(500)).await;
    relay.kill();
    assert_eq!(
        sandbox.received().len(),
        1,
        "the delivered postback was not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_a_change_and_its_send_loses_nothing_and_sends_it_once() {
    let Harness {
        root,
        sandbox,
        client,
    } = Harness::new().await;
    let update_calls = |sandbox: &Sandbox| -> Vec<(u16, serde_json::Value)> {
        sandbox
            .received()
            .into_iter()
            .filter(|r| r.path == "/api/v2/network/leads/update")
            .map(|r| (r.status, r.body.unwrap_or_default()))
            .collect()
    };
    let mut relay = spawn_relay(root.path(), &sandbox.base_url());
    let get = async |query: &str| -> serde_json::Value {
        let r = client
            .get(relay.url(&format!("/postback/shop?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    };
    // The lead is delivered (Scaleo's lead_id stored) ...
    assert_eq!(
        get("cid=kc1&oid=O-1&amt=0&st=2").await["status"],
        "accepted"
    );
    assert!(sandbox.wait_for_accepted(1, Duration::from_secs(10)).await);
    wait::expect_value(
        Duration::from_secs(10),
        "the lead's delivery (and Scaleo's lead_id) committed",
        async || delivered_records(&client, &relay).await,
        |n| *n == Some(1.0),
    )
    .await;
    // ... then Scaleo stops answering, the sale is acknowledged, and the relay is killed
    // before any attempt of the change got through.
    sandbox.set_script((0..100_000).map(|_| postback_relay::sandbox::Step::Drop));
    let sale = get("cid=kc1&oid=O-1&amt=2500&st=1").await;
    assert_eq!(sale["status"], "update", "{sale}");
    wait::expect(
        Duration::from_secs(10),
        "an attempt of the change (dropped by Scaleo) before the kill",
        async || !update_calls(&sandbox).is_empty(),
    )
    .await;
    relay.kill();
    assert!(
        update_calls(&sandbox)
            .iter()
            .all(|(status, _)| *status == 0),
        "no attempt of the change was answered before the kill"
    );

    sandbox.set_script([]);
    let mut relay = spawn_relay(root.path(), &sandbox.base_url());
    wait::expect_value(
        Duration::from_secs(10),
        "the change answered by Scaleo after the restart",
        async || update_calls(&sandbox),
        |calls| calls.iter().any(|(status, _)| *status == 200),
    )
    .await;
    // No second send of the change: 500 ms is many forwarder polls, so a re-send (the record
    // not marked delivered, or the lease of the killed relay taken again) would show.
    wait::quiet(Duration::from_millis(500)).await;
    relay.kill();
    let answered: Vec<_> = update_calls(&sandbox)
        .into_iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(answered.len(), 1, "sent exactly once: {answered:?}");
    assert_eq!(answered[0]["conv_status"], "approved");
    assert_eq!(answered[0]["revenue"], serde_json::json!(25));
    assert!(answered[0]["lead_id"].is_string() || answered[0]["lead_id"].is_number());
}
