//! Hot rule reload through the real watcher: new, edited, broken and removed rule files,
//! and postbacks that keep flowing while the rules change under them.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use postback_relay::reload::Trigger;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::e2e::admin_client::{admin_call, metric, poll, scrape, with_admin, write_rule};
use crate::e2e::support::{Env, SHOP};
use crate::support::wait;

const RELOAD_WAIT: Duration = Duration::from_secs(10);

fn shop_with_goal(goal: u32) -> String {
    SHOP.replace(
        "goal_id      = { value = 7 }",
        &format!("goal_id      = {{ value = {goal} }}"),
    )
}

async fn status_of(env: &Env, path: &str) -> u16 {
    env.get(path).await.0
}

#[tokio::test]
async fn a_new_rule_file_starts_working_without_restart() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    assert_eq!(status_of(&env, "/postback/fresh?cid=a&amt=1").await, 404);
    write_rule(&env.dir.path().join("rules"), "fresh", SHOP);
    let mut n = 0;
    let live = poll(RELOAD_WAIT, || {
        n += 1;
        let path = format!("/postback/fresh?cid=a{n}&amt=1");
        let env = &env;
        async move { status_of(env, &path).await == 200 }
    })
    .await;
    assert!(live, "the new source never answered 200");
    env.stop().await;
}

#[tokio::test]
async fn an_edited_rule_takes_effect_without_restart() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    write_rule(&env.dir.path().join("rules"), "shop", &shop_with_goal(9));
    let edited = maps_goal_9(&env, "").await;
    assert!(edited, "the edited goal_id never showed up");
    env.stop().await;
}

#[tokio::test]
async fn an_edited_rule_loads_while_a_log_beside_the_rules_directory_keeps_growing() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    // The layout of the bench and of many installs: `relay.log` next to `rules/`. It is
    // written far more often than the debounce's quiet period, as a busy relay's log is.
    let log = env.dir.path().join("relay.log");
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&log).unwrap();
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "a postback line").unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    write_rule(&env.dir.path().join("rules"), "shop", &shop_with_goal(9));
    let edited = maps_goal_9(&env, "").await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        edited,
        "the edited goal_id never loaded while the log beside the rules grew"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_broken_rule_file_is_refused_the_old_rules_keep_working_and_readyz_says_where() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let failures_before = metric(
        &scrape(&env).await,
        r#"postback_relay_rule_reloads_total{result="error"}"#,
    );
    let rules = env.dir.path().join("rules");
    // Line 3 names a field Scaleo does not have.
    write_rule(
        &rules,
        "broken",
        "[fields]\nclick_id = \"cid\"\nno_such_field = \"x\"\n",
    );
    let seen = RefCell::new(Value::Null);
    let unready = poll(RELOAD_WAIT, || {
        let (env, seen) = (&env, &seen);
        async move {
            let (status, body) = admin_call(env, Method::GET, "/readyz", None, None).await;
            *seen.borrow_mut() = body;
            status == 503
        }
    })
    .await;
    let last = seen.into_inner();
    assert!(unready, "readyz never reported the broken file: {last}");
    assert_eq!(last["rules"]["ok"], false, "{last}");
    let problem = last["rules"]["problems"][0].as_str().unwrap();
    assert!(problem.contains("broken.toml:3:"), "file:line in {problem}");
    assert_eq!(last["store"]["ok"], true, "{last}");

    let (status, body) = env.get("/postback/shop?cid=still&amt=1").await;
    assert_eq!(status, 200, "the old rules keep working: {body}");
    assert_eq!(
        status_of(&env, "/postback/broken?cid=x").await,
        404,
        "nothing of the broken set is in force"
    );
    let text = scrape(&env).await;
    assert!(
        metric(
            &text,
            r#"postback_relay_rule_reloads_total{result="error"}"#
        ) > failures_before,
        "the failure is counted"
    );

    std::fs::remove_file(rules.join("broken.toml")).unwrap();
    let ready = poll(RELOAD_WAIT, || {
        let env = &env;
        async move { admin_call(env, Method::GET, "/readyz", None, None).await.0 == 200 }
    })
    .await;
    assert!(ready, "readyz recovers once the directory loads again");
    env.stop().await;
}

#[tokio::test]
async fn a_removed_rule_file_makes_its_source_404_and_keeps_its_records() {
    let env = Env::start(&[("shop", SHOP), ("gone", SHOP)], with_admin).await;
    let (status, body) = env.get("/postback/gone?cid=kept&amt=1").await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_i64().unwrap();
    std::fs::remove_file(env.dir.path().join("rules/gone.toml")).unwrap();
    let removed = poll(RELOAD_WAIT, || {
        let env = &env;
        async move { status_of(env, "/postback/gone?cid=x&amt=1").await == 404 }
    })
    .await;
    assert!(removed, "the removed source still answers");
    let rec = env
        .relay()
        .store
        .get(id)
        .await
        .unwrap()
        .expect("record kept");
    assert_eq!(rec.summary.source, "gone");
    assert!(rec.body.is_some());
    assert_eq!(status_of(&env, "/postback/shop?cid=y&amt=1").await, 200);
    env.stop().await;
}

#[tokio::test]
async fn postbacks_during_reloads_all_succeed() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let rules = env.dir.path().join("rules");
    let reloader = env.relay().reloader.clone();
    let churn = tokio::spawn(async move {
        for i in 0..30u32 {
            write_rule(&rules, "shop", &shop_with_goal(7 + i % 2));
            let r = reloader.clone();
            let result = tokio::task::spawn_blocking(move || r.reload(Trigger::Signal))
                .await
                .unwrap();
            assert!(result.is_ok(), "{result:?}");
            // Pacing: the 30 reloads spread over the whole burst of postbacks.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    let env = Arc::new(env);
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let env = env.clone();
        let permit = gate.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let answer = env.get(&format!("/postback/shop?cid=c{i}&amt=1")).await;
            drop(permit);
            answer
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "accepted", "{body}");
    }
    churn.await.unwrap();
    match Arc::try_unwrap(env) {
        Ok(env) => env.stop().await,
        Err(_) => panic!("every task has ended"),
    }
}

/// A source of another network: its own base URL (a second sandbox) and key.
fn other_network_rule(base_url: &str) -> String {
    format!(
        "[forward]\nbase_url = \"{base_url}\"\napi_key = \"{}\"\n{SHOP}",
        crate::e2e::support::KEY
    )
}

#[tokio::test]
async fn records_of_a_removed_rule_still_go_to_their_own_network() {
    use postback_relay::sandbox::{Sandbox, SandboxConfig};
    use postback_relay::store::PauseScope;
    let other = Sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            api_key: crate::e2e::support::KEY.into(),
        },
    )
    .await
    .unwrap();
    let mut env = Env::start(
        &[("other", &other_network_rule(&other.base_url()))],
        with_admin,
    )
    .await;
    let store = env.relay().store.clone();
    store
        .pause(
            PauseScope::Source("other".into()),
            postback_relay::store::PauseReason::Operator,
        )
        .await
        .unwrap();
    assert_eq!(status_of(&env, "/postback/other?cid=o1&amt=1").await, 200);

    // Removed while its record waits: the source answers 404, the record keeps its route.
    std::fs::remove_file(env.dir.path().join("rules/other.toml")).unwrap();
    env.relay()
        .reload()
        .expect("an empty rule set is a valid set");
    assert_eq!(status_of(&env, "/postback/other?cid=o2&amt=1").await, 404);
    store
        .resume(PauseScope::Source("other".into()))
        .await
        .unwrap();
    assert!(
        other.wait_for_accepted(1, Duration::from_secs(10)).await,
        "sent to its own network"
    );
    assert!(
        env.sandbox.received().is_empty(),
        "never to the global network"
    );

    // Restarted without the file, a waiting record is held, not sent to the global network.
    store
        .pause(
            PauseScope::Source("other".into()),
            postback_relay::store::PauseReason::Operator,
        )
        .await
        .unwrap();
    write_rule(
        &env.dir.path().join("rules"),
        "other",
        &other_network_rule(&other.base_url()),
    );
    env.relay().reload().unwrap();
    assert_eq!(status_of(&env, "/postback/other?cid=o3&amt=1").await, 200);
    std::fs::remove_file(env.dir.path().join("rules/other.toml")).unwrap();
    env.restart(with_admin).await;
    let store = env.relay().store.clone();
    store
        .resume_reason(
            PauseScope::Source("other".into()),
            postback_relay::store::PauseReason::Operator,
        )
        .await
        .unwrap();
    let paused = store.paused().await.unwrap();
    assert!(
        paused
            .iter()
            .any(|p| p.reason == postback_relay::store::PauseReason::MissingRule),
        "{paused:?}"
    );
    let (status, ready) = admin_call(&env, Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.to_string().contains("rule file is missing"),
        "{ready}"
    );
    // Nothing may be sent while the rule is missing; 400 ms is several retry rounds (50 ms
    // schedule) and pause probes (200 ms), so a send that slips through the hold would show.
    wait::quiet(Duration::from_millis(400)).await;
    assert!(
        env.sandbox.received().is_empty(),
        "held while its destination is unknown"
    );

    // The file returns: the hold lifts and the record goes to its own network.
    write_rule(
        &env.dir.path().join("rules"),
        "other",
        &other_network_rule(&other.base_url()),
    );
    env.relay().reload().unwrap();
    assert!(other.wait_for_accepted(2, Duration::from_secs(10)).await);
    assert!(env.sandbox.received().is_empty());
    env.stop().await;
}

/// `mv rules old; cp -r new rules`, a common deploy: the watcher follows the new directory,
/// `/readyz` recovers and the new files load, without SIGHUP.
#[tokio::test]
async fn a_replaced_rules_directory_is_watched_again() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let rules = env.dir.path().join("rules");
    std::fs::rename(&rules, env.dir.path().join("old")).unwrap();
    // The gap a real `cp -r` leaves between the two steps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::create_dir(&rules).unwrap();
    write_rule(&rules, "shop", SHOP);
    write_rule(&rules, "fresh", SHOP);
    let mut n = 0;
    let live = poll(RELOAD_WAIT, || {
        n += 1;
        let path = format!("/postback/fresh?cid=r{n}&amt=1");
        let env = &env;
        async move { status_of(env, &path).await == 200 }
    })
    .await;
    assert!(live, "a file of the new rules directory never loaded");
    let ready = poll(RELOAD_WAIT, || {
        let env = &env;
        async move { admin_call(env, Method::GET, "/readyz", None, None).await.0 == 200 }
    })
    .await;
    let (_, body) = admin_call(&env, Method::GET, "/readyz", None, None).await;
    assert!(ready, "readyz never recovered: {body}");

    // And it keeps watching the new directory.
    write_rule(&rules, "later", SHOP);
    let later = poll(RELOAD_WAIT, || {
        let env = &env;
        async move { status_of(env, "/postback/later?cid=l&amt=1").await == 200 }
    })
    .await;
    assert!(later, "a file added after the swap never loaded");
    env.stop().await;
}

fn shop_with_auth(goal: u32) -> String {
    format!(
        "{}\n[auth]\ntoken_param = \"tok\"\ntoken = \"s3cret\"\n",
        shop_with_goal(goal)
    )
}

/// A rule file rewritten in place, pausing mid-write longer than the debounce, with its
/// `[auth]` last: the valid prefix must not load (it would drop the token check).
#[tokio::test]
async fn a_half_written_rule_file_never_loads() {
    use std::io::Write;
    let env = Env::start(&[("shop", &shop_with_auth(7))], with_admin).await;
    assert_eq!(status_of(&env, "/postback/shop?cid=a&amt=1").await, 401);
    assert_eq!(
        status_of(&env, "/postback/shop?cid=b&amt=1&tok=s3cret").await,
        200
    );

    let path = env.dir.path().join("rules/shop.toml");
    let full = shop_with_auth(9);
    let half = full.find("[auth]").unwrap();
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&full.as_bytes()[..half]).unwrap();
    f.flush().unwrap();
    // The half-written file must not load: the window is longer than the debounce, so the
    // watcher has looked at it by the end.
    wait::quiet(postback_relay::reload::DEBOUNCE + Duration::from_millis(300)).await;
    for i in 0..5 {
        assert_eq!(
            status_of(&env, &format!("/postback/shop?cid=h{i}&amt=1")).await,
            401,
            "a postback without the token was accepted: the half-written file loaded"
        );
        // Pacing: the five checks spread over 100 ms more.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.write_all(&full.as_bytes()[half..]).unwrap();
    drop(f);

    let edited = maps_goal_9(&env, "&tok=s3cret").await;
    assert!(edited, "the completed file never loaded");
    assert_eq!(status_of(&env, "/postback/shop?cid=z&amt=1").await, 401);
    env.stop().await;
}

/// A FIFO named `x.toml` in the rules directory, then a real SIGHUP to the real binary: the
/// reload must not block anything. `/readyz`, `/healthz` and ingest keep answering, the FIFO
/// is skipped and reported, and SIGTERM still stops the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_rules_directory_never_freezes_the_process() {
    use postback_relay::sandbox::{Sandbox, SandboxConfig};
    use std::process::Command;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let rules = root.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("shop.toml"), SHOP).unwrap();
    let sandbox = Sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            api_key: crate::e2e::support::KEY.into(),
        },
    )
    .await
    .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[scaleo]\nbase_url = \"{}\"\napi_key = \"{}\"\n\
         [store]\npath = \"{}\"\n[rules]\ndir = \"{}\"\n",
        sandbox.base_url(),
        crate::e2e::support::KEY,
        root.path().join("data").display(),
        rules.display(),
    );
    let config_path = root.path().join("relay.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut relay = crate::e2e::process::RelayProcess::serve(&config_path);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();

    let made = Command::new("mkfifo")
        .arg(rules.join("x.toml"))
        .status()
        .unwrap();
    assert!(made.success());
    let reloads = async || {
        let text = match client.get(relay.admin_url("/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        ["ok", "error"]
            .map(|r| {
                metric(
                    &text,
                    &format!("postback_relay_rule_reloads_total{{result=\"{r}\"}}"),
                )
            })
            .iter()
            .sum::<f64>()
    };
    let before = reloads().await;
    let hup = Command::new("kill")
        .args(["-HUP", &relay.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let hup_at = std::time::Instant::now();
    // A reload looked at the FIFO and finished ...
    wait::expect_value(
        Duration::from_secs(10),
        "a rule reload after SIGHUP counted in /metrics",
        reloads,
        |n| *n > before,
    )
    .await;
    // ... and, past the debounce, the watcher has had its look too (it may skip a FIFO
    // event, so there is no second reload to wait for).
    tokio::time::sleep(Duration::from_millis(800).saturating_sub(hup_at.elapsed())).await;

    let get = |url: String| {
        let client = client.clone();
        async move {
            match client.get(&url).send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    (code, r.text().await.unwrap_or_default())
                }
                Err(e) => (0, format!("no answer: {e}")),
            }
        }
    };
    let (code, body) = get(relay.admin_url("/readyz")).await;
    let (health, _) = get(relay.url("/healthz")).await;
    let (ingest, answer) = get(relay.url("/postback/shop?cid=f&amt=1")).await;
    let term = Command::new("kill")
        .args(["-TERM", &relay.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exited = wait::until(Duration::from_secs(5), async || {
        relay.child.try_wait().unwrap().is_some()
    })
    .await;
    if !exited {
        relay.kill();
    }
    // Unblock any reader still stuck on the FIFO before failing.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(rules.join("x.toml"));
    assert_eq!(code, 200, "/readyz: {body}");
    assert!(body.contains("x.toml"), "the FIFO is not reported: {body}");
    assert_eq!(health, 200);
    assert_eq!(ingest, 200, "{answer}");
    assert!(exited, "SIGTERM did not stop the process");
    sandbox.shutdown();
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// Sends fresh `shop` postbacks (with `extra` appended to the query) until one is stored
/// mapped with `goal_id` 9, the edited rule's; false if none is within [`RELOAD_WAIT`].
async fn maps_goal_9(env: &Env, extra: &str) -> bool {
    let mut n = 0;
    poll(RELOAD_WAIT, || {
        n += 1;
        let path = format!("/postback/shop?cid=e{n}&amt=1{extra}");
        async move {
            let (_, body) = env.get(&path).await;
            let Some(id) = body["id"].as_i64() else {
                return false;
            };
            let rec = env.relay().store.get(id).await.unwrap().unwrap();
            rec.body.is_some_and(|b| b["goal_id"] == 9)
        }
    })
    .await
}
