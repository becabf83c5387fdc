//! Relays sharing one PostgreSQL store (`store.url`), no balancer: postbacks split between
//! two of them (repeats sent to the other one, a Scaleo that fails twice first) reach Scaleo
//! exactly once within the shared global rate limit; a relay process killed with claims in
//! hand has them taken over by another; the operator CLI works on the shared database.

use std::collections::HashMap;
use std::time::Duration;

use postback_relay::sandbox::{Sandbox, SandboxConfig, Step};
use postback_relay::serve::{self, Running};
use postback_relay::store::State;

use crate::e2e::pg;
use crate::e2e::support::{KEY, SHOP, config};
use crate::e2e::wait::{self, until};

const POSTBACKS: usize = 60;
const RATE: u32 = 40;
const BURST: u32 = 5;

async fn relay(sandbox: &Sandbox, url: &str, root: &tempfile::TempDir) -> Running {
    std::fs::create_dir_all(root.path().join("rules")).unwrap();
    std::fs::write(root.path().join("rules/shop.toml"), SHOP).unwrap();
    let cfg = config(sandbox, root.path().to_path_buf(), |c| {
        c.store.url = Some(url.to_string());
        c.forward.rate_per_second = RATE;
        c.forward.burst = BURST;
    });
    serve::start(cfg).await.expect("relay starts on PostgreSQL")
}

/// A fresh database on the test server and a Scaleo sandbox for the relays under test.
async fn bed() -> (String, Sandbox) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = pg::fresh_db().await;
    let sandbox = Sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            api_key: KEY.into(),
        },
    )
    .await
    .unwrap();
    (url, sandbox)
}

async fn send(client: &reqwest::Client, relay: &Running, query: &str) -> serde_json::Value {
    let url = format!("http://{}/postback/shop?{query}", relay.ingest_addr);
    let resp = client.get(url).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("JSON answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_on_one_database_forward_every_postback_exactly_once() {
    let (url, sandbox) = bed().await;
    sandbox.script([Step::status(503), Step::status(503)]);
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relays = [
        relay(&sandbox, &url, &root_a).await,
        relay(&sandbox, &url, &root_b).await,
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = jiff::Timestamp::now();
    for i in 0..POSTBACKS {
        let answer = send(
            &client,
            &relays[i % 2],
            &format!("cid=c{i}&amt=100&oid=O{i}"),
        )
        .await;
        assert_eq!(answer["status"], "accepted", "{answer}");
    }
    // Repeats sent to the other instance are duplicates there: dedupe is shared.
    for i in 0..10 {
        let answer = send(
            &client,
            &relays[(i + 1) % 2],
            &format!("cid=c{i}&amt=100&oid=O{i}"),
        )
        .await;
        assert_eq!(answer["status"], "duplicate", "{answer}");
    }
    let store = relays[0].store.clone();
    let mut counts = Vec::new();
    let done = until(Duration::from_secs(30), async || {
        counts = store.counts_by_state().await.unwrap();
        counts == [(State::Delivered, POSTBACKS as u64), (State::Duplicate, 10)]
    })
    .await;
    assert!(done, "not all delivered: {counts:?}");
    for r in relays {
        r.stop().await;
    }
    let calls = sandbox.received();
    let mut per_click: HashMap<String, usize> = HashMap::new();
    for body in sandbox.accepted() {
        let click = body["click_id"].as_str().unwrap_or_default().to_string();
        *per_click.entry(click).or_default() += 1;
    }
    assert_eq!(per_click.len(), POSTBACKS);
    assert!(per_click.values().all(|n| *n == 1), "{per_click:?}");
    // Only the two scripted failures were sent again.
    assert_eq!(calls.len(), POSTBACKS + 2);
    // The global limit holds for both relays together: a call never goes before its slot,
    // so the k-th call (counting from 0) comes at least (k + 1 - burst) intervals after the
    // first postback was sent (a slow machine only makes calls later). Two instances each
    // with its own limit could send twice as fast.
    let interval = jiff::SignedDuration::from_micros(1_000_000 / i64::from(RATE));
    let mut times: Vec<jiff::Timestamp> = calls.iter().map(|c| c.at).collect();
    times.sort();
    for (k, at) in times.iter().enumerate() {
        let slots = (k as i32 + 1 - BURST as i32).max(0);
        let earliest = started + interval * slots - jiff::SignedDuration::from_millis(5);
        assert!(*at >= earliest, "call {k} at {at}, not before {earliest}");
    }
    sandbox.shutdown();
}

/// Runs `postback-relay ARGS` with `RELAY__STORE__URL` set, off the async runtime.
async fn cli_on(url: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_postback-relay"))
            .args(&args)
            .env("RELAY__STORE__URL", url)
            .env_remove("RUST_LOG")
            .output()
            .expect("run the binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_works_on_the_shared_database() {
    let (url, sandbox) = bed().await;
    let root = tempfile::tempdir().unwrap();
    let running = relay(&sandbox, &url, &root).await;
    let client = reqwest::Client::new();
    let answer = send(&client, &running, "cid=cli1&amt=1999").await;
    let id = answer["id"].as_i64().expect("id");

    let (code, list, err) = cli_on(&url, &["records", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(list["records"][0]["id"], id);
    let (code, rec, err) = cli_on(&url, &["record", &id.to_string(), "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(rec["raw"]["query"], "cid=cli1&amt=1999");

    // A pause from the CLI is seen by the running relay (and every other instance).
    let (code, _, err) = cli_on(&url, &["pause", "--source", "shop", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let paused = running.store.paused().await.unwrap();
    assert_eq!(paused.len(), 1, "{paused:?}");
    let (code, answer, err) = cli_on(&url, &["resume", "--source", "shop", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(answer["removed"], 1);
    assert!(running.store.paused().await.unwrap().is_empty());
    running.stop().await;
    sandbox.shutdown();
}

/// A relay process that is killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_a_killed_instance_are_taken_over_by_the_other() {
    let (url, sandbox) = bed().await;
    // The first four forwards land at Scaleo but their answers never come in time.
    sandbox.script(vec![Step::Hang(Duration::from_secs(30)); 4]);
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("rules")).unwrap();
    std::fs::write(root.path().join("rules/shop.toml"), SHOP).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut doomed = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_postback-relay"))
            .arg("serve")
            .env("RELAY__STORE__URL", &url)
            .env("RELAY__STORE__PATH", root.path().join("data"))
            .env("RELAY__RULES__DIR", root.path().join("rules"))
            .env("RELAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("RELAY__ADMIN__LISTEN", "127.0.0.1:0")
            .env("RELAY__SCALEO__BASE_URL", sandbox.base_url())
            .env("RELAY__SCALEO__API_KEY", KEY)
            .env("RELAY__SCALEO__TIMEOUT", "2s")
            .env("RELAY__FORWARD__LEASE", "3s")
            .env("RELAY__FORWARD__CONCURRENCY", "4")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the relay binary"),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let up = until(Duration::from_secs(20), async || {
        client
            .get(&healthz)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "the relay process did not come up");
    let total = 20;
    for i in 0..total {
        let url = format!("http://127.0.0.1:{port}/postback/shop?cid=k{i}&amt=100");
        let answer: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "accepted", "{answer}");
    }
    // Kill -9 while its four forwards hang (and more records are leased to it).
    let hanging = until(Duration::from_secs(10), async || {
        sandbox.received().len() >= 4
    })
    .await;
    doomed.0.kill().expect("kill -9");
    let _ = doomed.0.wait();
    assert!(hanging, "the doomed relay never forwarded");

    let other_root = tempfile::tempdir().unwrap();
    let survivor = relay(&sandbox, &url, &other_root).await;
    let store = survivor.store.clone();
    let mut counts = Vec::new();
    let done = until(Duration::from_secs(30), async || {
        counts = store.counts_by_state().await.unwrap();
        counts
            .iter()
            .filter(|(s, _)| matches!(s, State::Delivered | State::DuplicateUpstream))
            .map(|(_, n)| *n)
            .sum::<u64>()
            == total
    })
    .await;
    survivor.stop().await;
    assert!(done, "not all taken over: {counts:?}");
    // The four that landed before the kill were sent again and met "Multiple Conversions";
    // every conversion landed exactly once.
    assert!(
        counts.contains(&(State::DuplicateUpstream, 4)),
        "{counts:?}"
    );
    let mut landed: Vec<String> = sandbox
        .accepted()
        .iter()
        .filter_map(|b| b["click_id"].as_str().map(str::to_string))
        .collect();
    landed.sort();
    let before = landed.len();
    landed.dedup();
    assert_eq!((before, landed.len()), (total as usize, total as usize));
    sandbox.shutdown();
}

/// What the senders saw during [`a_database_restart_costs_only_503s_and_loses_nothing_acknowledged`].
#[derive(Default)]
struct Seen {
    /// Click ids answered 200 `accepted`.
    acked: Vec<String>,
    unavailable: usize,
    /// Anything but 200 or 503: (status, body).
    other: Vec<(u16, String)>,
    slowest: Duration,
}

/// PostgreSQL stopped (`pg_ctl stop -m fast`) for about ten seconds and started again while
/// postbacks keep coming: ingest answers 503 within `store.timeout` while it is down (never
/// 200), `/readyz` says the store cannot commit and why, forwarding waits, and both recover
/// by themselves once it is back (the pool replaces its broken connections); every
/// acknowledged postback reaches Scaleo exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_costs_only_503s_and_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = pg::PrivateServer::new(pg::Options::default()).await;
    let url = server.fresh_db().await;
    let sandbox = Sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            api_key: KEY.into(),
        },
    )
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("rules")).unwrap();
    std::fs::write(root.path().join("rules/shop.toml"), SHOP).unwrap();
    let store_timeout = Duration::from_secs(1);
    let cfg = config(&sandbox, root.path().to_path_buf(), |c| {
        c.store.url = Some(url.clone());
        c.store.timeout = store_timeout;
        c.store.connect_timeout = Duration::from_secs(1);
    });
    let relay = serve::start(cfg).await.expect("relay starts on PostgreSQL");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..4 {
        let (client, seen, stop) = (client.clone(), seen.clone(), stop.clone());
        let base = format!("http://{}/postback/shop", relay.ingest_addr);
        senders.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let cid = format!("r{s}x{n}");
                let start = Instant::now();
                let resp = client
                    .get(format!("{base}?cid={cid}&amt=100"))
                    .send()
                    .await
                    .expect("the relay answers");
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                let took = start.elapsed();
                {
                    let mut seen = seen.lock().unwrap();
                    seen.slowest = seen.slowest.max(took);
                    match status {
                        200 if body.contains("\"accepted\"") => seen.acked.push(cid),
                        503 => seen.unavailable += 1,
                        _ => seen.other.push((status, body)),
                    }
                }
                // Pacing: a steady trickle of postbacks through the outage, not a flood.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let readyz = async || {
        let resp = client
            .get(format!("http://{}/readyz", relay.admin_addr))
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        (code, resp.json::<serde_json::Value>().await.unwrap())
    };

    wait::expect(
        Duration::from_secs(10),
        "a postback accepted before the outage",
        async || !seen.lock().unwrap().acked.is_empty(),
    )
    .await;
    server.stop().await;
    let down_at = Instant::now();

    // Down: not ready, saying why.
    let mut body = serde_json::Value::Null;
    let unready = until(Duration::from_secs(5), async || {
        let (code, b) = readyz().await;
        body = b;
        code == 503 && body["store"]["ok"] == false
    })
    .await;
    assert!(unready, "/readyz while the database is down: {body}");
    let why = body["store"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("cannot commit") && why.contains("connect"),
        "/readyz does not say why: {why}"
    );
    // Scenario: 3 s into the outage, forwards and answers started before it have settled
    // (store.timeout is 1 s); from there on nothing may change.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
    // Forwarding waits: nothing goes to Scaleo while the database is down, and no postback
    // is answered 200, for the rest of a 10 s outage.
    let calls_down = sandbox.received().len();
    let acked_down = seen.lock().unwrap().acked.len();
    wait::quiet(Duration::from_secs(10).saturating_sub(down_at.elapsed())).await;
    assert_eq!(sandbox.received().len(), calls_down, "forwarded while down");
    assert_eq!(
        seen.lock().unwrap().acked.len(),
        acked_down,
        "200 while the database was down"
    );

    server.start().await;
    let back_at = Instant::now();
    // Both recover by themselves.
    let recovered = until(Duration::from_secs(15), async || {
        seen.lock().unwrap().acked.len() > acked_down
    })
    .await;
    assert!(
        recovered,
        "ingest did not recover once the database was back"
    );
    let ready = until(Duration::from_secs(15), async || {
        let (code, b) = readyz().await;
        body = b;
        code == 200
    })
    .await;
    assert!(ready, "/readyz after the restart: {body}");
    let recovery = back_at.elapsed();
    // Scenario: a second more of traffic after the recovery, to be delivered too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.other.is_empty(),
        "neither 200 nor 503: {:?}",
        seen.other
    );
    assert!(seen.unavailable > 0, "no 503 while the database was down");
    assert!(
        seen.slowest < store_timeout + Duration::from_millis(1500),
        "an answer took {:?}: ingest hung past store.timeout",
        seen.slowest
    );
    // Every acknowledged postback lands at Scaleo exactly once.
    let mut landed: Vec<String> = Vec::new();
    let all = until(Duration::from_secs(30), async || {
        landed = sandbox
            .accepted()
            .iter()
            .filter_map(|b| b["click_id"].as_str().map(str::to_string))
            .collect();
        seen.acked.iter().all(|c| landed.contains(c))
    })
    .await;
    let missing: Vec<&String> = seen.acked.iter().filter(|c| !landed.contains(c)).collect();
    assert!(all, "acknowledged but never forwarded: {missing:?}");
    let mut unique = landed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), landed.len(), "a conversion landed twice");
    eprintln!(
        "database restart: {} accepted, {} answered 503, slowest answer {:?}, ingest and \
         readiness back {recovery:?} after the start; /readyz while down: {why}",
        seen.acked.len(),
        seen.unavailable,
        seen.slowest
    );
    relay.stop().await;
    sandbox.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_send_a_conversions_changes_in_order_and_once() {
    let (url, sandbox) = bed().await;
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let relays = [
        relay(&sandbox, &url, &root_a).await,
        relay(&sandbox, &url, &root_b).await,
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // The lead through one relay; once Scaleo has it, its later postbacks alternate
    // between the relays, a resend and a late one among them.
    let lead = send(&client, &relays[0], "cid=life1&oid=L-1&amt=0&st=2").await;
    assert_eq!(lead["status"], "accepted", "{lead}");
    assert!(sandbox.wait_for_accepted(1, Duration::from_secs(10)).await);
    let lead = lead["id"].as_i64().unwrap();
    let delivered = until(Duration::from_secs(10), async || {
        let rec = relays[0].store.get(lead).await.unwrap().unwrap();
        rec.summary.state == State::Delivered
    })
    .await;
    assert!(delivered);
    let later = [
        ("cid=life1&oid=L-1&amt=2500&st=1", "update"),
        ("cid=life1&oid=L-1&amt=2500&st=1", "duplicate"),
        ("cid=life1&oid=L-1&amt=0&st=2", "stale"),
        ("cid=life1&oid=L-1&amt=-2500&st=0", "update"),
    ];
    for (i, (query, want)) in later.iter().enumerate() {
        let answer = send(&client, &relays[(i + 1) % 2], query).await;
        assert_eq!(answer["status"], *want, "{query}: {answer}");
    }
    let sent = until(Duration::from_secs(15), async || {
        let conv = sandbox.conversions();
        conv.len() == 1 && conv[0].conv_status() == "rejected"
    })
    .await;
    assert!(sent, "{:?}", sandbox.conversions());
    // No change sent twice or out of order after the last one: 500 ms is many forwarder
    // polls of both relays, so a late duplicate would show.
    wait::quiet(Duration::from_millis(500)).await;
    let conv = &sandbox.conversions()[0];
    let statuses: Vec<&str> = conv
        .changes
        .iter()
        .map(|c| c.body["conv_status"].as_str().unwrap_or("-"))
        .collect();
    // Either both changes went one after the other, or the second one collapsed the first
    // (it arrived while the first was still waiting): never out of order, never twice.
    assert!(
        statuses == ["approved", "rejected"] || statuses == ["rejected"],
        "{statuses:?}"
    );
    assert_eq!(conv.current["revenue"], serde_json::json!(-25));
    for r in relays {
        r.stop().await;
    }
}
