//! Forwarding outcomes through the real relay: retries, Retry-After, dead, duplicates,
//! pause on 401, and the rate limit.

use std::time::Duration;

use postback_relay::sandbox::Step;

use crate::e2e::support::{Env, SHOP, eventually};
use crate::support::wait;

async fn state_of(env: &Env, id: i64) -> String {
    let rec = env.relay().store.get(id).await.unwrap().expect("record");
    rec.summary.state.as_str().to_string()
}

/// Waits (5 s) for record `id` to reach state `want`; panics with `why` and the last state.
async fn wait_state_because(env: &Env, id: i64, want: &str, why: &str) {
    wait::expect_value(
        Duration::from_secs(5),
        &format!("record {id} to be {want}{why}"),
        async || state_of(env, id).await,
        |state| state == want,
    )
    .await;
}

async fn wait_state(env: &Env, id: i64, want: &str) {
    wait_state_because(env, id, want, "").await;
}

async fn accept(env: &Env, query: &str) -> i64 {
    let (status, body) = env.get(&format!("/postback/shop?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_i64().expect("id")
}

#[tokio::test]
async fn retries_on_500_twice_then_delivers() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    env.sandbox.script([Step::status(500), Step::status(503)]);
    let id = accept(&env, "cid=r500&amt=100").await;
    wait_state(&env, id, "delivered").await;
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    let codes: Vec<Option<u16>> = rec.attempts.iter().map(|a| a.status).collect();
    assert_eq!(codes, vec![Some(500), Some(503), Some(200)]);
    assert!(
        rec.transaction_id.is_some(),
        "Scaleo's transaction_id is kept"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_lease_just_longer_than_the_timeout_still_forwards() {
    // The config accepts any lease longer than scaleo.timeout; the forwarder must then send,
    // not give every fresh claim back for fear of outliving its lease.
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.scaleo.timeout = Duration::from_secs(2);
        c.forward.lease = Duration::from_millis(2_200);
    })
    .await;
    let id = accept(&env, "cid=lease1&amt=100").await;
    wait_state(&env, id, "delivered").await;
    env.stop().await;
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    env.sandbox.script([Step::too_many(1)]);
    let id = accept(&env, "cid=r429&amt=100").await;
    wait_state(&env, id, "delivered").await;
    let calls = env.sandbox.received();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= jiff::SignedDuration::from_millis(950),
        "retried after {gap:?}, Retry-After said 1s"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_429_holds_every_other_send_to_that_network_for_its_retry_after() {
    // One send at a time, so nothing else is already on its way when the 429 comes back.
    let env = Env::start(&[("shop", SHOP)], |c| c.forward.concurrency = 1).await;
    env.sandbox.script([Step::too_many(1)]);
    let first = accept(&env, "cid=hold1&amt=100").await;
    let second = accept(&env, "cid=hold2&amt=100").await;
    wait_state(&env, first, "delivered").await;
    wait_state(&env, second, "delivered").await;
    let calls = env.sandbox.received();
    assert_eq!(calls.len(), 3, "one 429, then each record once");
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= jiff::SignedDuration::from_millis(950),
        "the next send reached Scaleo {gap:?} after its 429 with Retry-After: 1"
    );
    env.stop().await;
}

#[tokio::test]
async fn dead_on_404_is_not_retried_and_keeps_the_answer() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    env.sandbox.script([Step::status(404)]);
    let id = accept(&env, "cid=r404&amt=100").await;
    wait_state(&env, id, "dead").await;
    // No retry of a dead record: 300 ms is several retry rounds (50 ms schedule).
    wait::quiet(Duration::from_millis(300)).await;
    assert_eq!(env.sandbox.received().len(), 1);
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.attempts.len(), 1);
    assert_eq!(rec.attempts[0].status, Some(404));
    assert!(!rec.attempts[0].answer.is_empty());
    env.stop().await;
}

#[tokio::test]
async fn duplicate_answer_after_a_timeout_counts_as_delivered() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    // The first call lands but answers after the relay's 500 ms timeout; the retry meets
    // "Multiple Conversions are not Allowed" and must stop there.
    env.sandbox.script([Step::Hang(Duration::from_secs(2))]);
    let id = accept(&env, "cid=rhang&amt=100").await;
    wait_state(&env, id, "duplicate_upstream").await;
    // No third call after the duplicate answer: 300 ms is several retry rounds.
    wait::quiet(Duration::from_millis(300)).await;
    assert_eq!(env.sandbox.received().len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn unauthorized_pauses_keeps_the_queue_and_a_probe_resumes() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    env.sandbox.script([Step::Unauthorized]);
    let a = accept(&env, "cid=p1&amt=1").await;
    assert!(
        eventually(Duration::from_secs(5), || !env
            .sandbox
            .received()
            .is_empty())
        .await
    );
    let b = accept(&env, "cid=p2&amt=1").await;
    // The probe (every 200 ms in tests) succeeds against the now healthy sandbox: both arrive.
    wait_state(&env, a, "delivered").await;
    wait_state(&env, b, "delivered").await;
    let statuses: Vec<u16> = env.sandbox.received().iter().map(|r| r.status).collect();
    assert_eq!(statuses[0], 401);
    // The 401 paused forwarding (not a retry): the attempt says so, and it was not counted.
    let rec = env.relay().store.get(a).await.unwrap().unwrap();
    assert_eq!(rec.attempts[0].outcome, "paused", "{:?}", rec.attempts);
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn rate_limit_is_held() {
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.forward.rate_per_second = 20;
        c.forward.burst = 1;
    })
    .await;
    for i in 0..21 {
        accept(&env, &format!("cid=rl{i}&amt=1")).await;
    }
    assert!(
        env.sandbox
            .wait_for_accepted(21, Duration::from_secs(15))
            .await
    );
    let calls = env.sandbox.received();
    let span = calls[20].at.duration_since(calls[0].at);
    // 21 calls at 20/s with a burst of 1 need at least 20 intervals of 50 ms.
    assert!(
        span >= jiff::SignedDuration::from_millis(950),
        "21 forwards took only {span:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts_and_the_record_goes_dead() {
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.forward.retry.set_max_attempts(3).unwrap();
    })
    .await;
    env.sandbox.script((0..10).map(|_| Step::status(503)));
    let id = accept(&env, "cid=rmax&amt=100").await;
    wait_state(&env, id, "dead").await;
    // No attempt past max_attempts: 300 ms is several retry rounds (50 ms schedule).
    wait::quiet(Duration::from_millis(300)).await;
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.attempts.len(), 3);
    assert!(
        rec.reason
            .as_deref()
            .unwrap_or_default()
            .contains("max_attempts")
            || rec
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("max_attempts"),
        "{rec:?}"
    );
    assert_eq!(env.sandbox.received().len(), 3);
    env.stop().await;
}

#[tokio::test]
async fn a_rules_reload_lifts_a_pause_caused_by_401() {
    // Probes are far apart here: only the reload can lift the pause within the test.
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.forward.pause_probe = Duration::from_secs(600)
    })
    .await;
    env.sandbox.script([Step::Unauthorized]);
    let id = accept(&env, "cid=reload401&amt=1").await;
    wait_state(&env, id, "paused").await;
    assert!(!env.relay().store.paused().await.unwrap().is_empty());
    env.relay().reload().expect("the rules still load");
    wait_state_because(&env, id, "delivered", " (the reload lifts the pause)").await;
    assert!(env.relay().store.paused().await.unwrap().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn a_huge_retry_after_is_capped_by_forward_max_retry_after() {
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.forward.max_retry_after = Duration::from_millis(300);
    })
    .await;
    env.sandbox.script([Step::too_many(999_999_999)]);
    let id = accept(&env, "cid=ra1&amt=100").await;
    wait_state_because(
        &env,
        id,
        "delivered",
        " (a Retry-After of 31 years must not park it)",
    )
    .await;
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    let codes: Vec<Option<u16>> = rec.attempts.iter().map(|a| a.status).collect();
    assert_eq!(codes, vec![Some(429), Some(200)]);
    env.stop().await;
}

/// `serve --sandbox`: a source whose rule file names its own network (`[forward] base_url`,
/// `api_key`) is forwarded to the sandbox like every other, never to that network.
#[tokio::test]
async fn in_sandbox_mode_a_source_with_its_own_network_goes_to_the_sandbox() {
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = format!(
        "{SHOP}\n[forward]\nbase_url = \"http://{}\"\napi_key = \"other-network-key\"\n",
        elsewhere.local_addr().unwrap()
    );
    let env = Env::start(&[("other", &other)], |c| c.scaleo.sandbox = true).await;
    let (status, body) = env.get("/postback/other?cid=sb1&amt=100&oid=O-1").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await,
        "the sandbox got the postback"
    );
    wait_state_because(&env, body["id"].as_i64().unwrap(), "delivered", "").await;
    let reached = tokio::time::timeout(Duration::from_millis(300), elsewhere.accept()).await;
    assert!(
        reached.is_err(),
        "the rule file's own network was contacted"
    );
    env.stop().await;
}
