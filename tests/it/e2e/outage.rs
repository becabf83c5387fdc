//! Outage mode end to end: Scaleo stops answering as Scaleo (500s, a proxy's HTML page with
//! 200, or no answer at all) for longer than the retry budget, then recovers. Sending is
//! held and probed meanwhile; nothing goes dead, attempts during the outage are not counted,
//! and every record reaches Scaleo once.

use std::collections::HashMap;
use std::time::Duration;

use postback_relay::sandbox::Step;
use postback_relay::store::State;

use crate::e2e::support::{Env, SHOP};
use crate::support::wait;

/// A short retry budget (4 attempts) that the outage outlasts many times over.
async fn start() -> Env {
    Env::start(&[("shop", SHOP)], |c| {
        c.forward.retry.set_max_attempts(4).unwrap();
        c.forward.outage_after = 3;
        c.forward.pause_probe = Duration::from_millis(100);
        c.forward.concurrency = 2;
    })
    .await
}

async fn send_three(env: &Env, tag: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body) = env
            .get(&format!("/postback/shop?cid={tag}{i}&amt=100"))
            .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].as_i64().unwrap());
    }
    ids
}

/// Waits until every record is settled for good (delivered or duplicate_upstream), failing
/// at once on a dead one.
async fn all_done(env: &Env, ids: &[i64]) -> Vec<u32> {
    let settled = wait::expect_value(
        Duration::from_secs(20),
        "every record delivered or duplicate_upstream (state, attempts)",
        async || {
            let mut states = Vec::new();
            for id in ids {
                let rec = env.relay().store.get(*id).await.unwrap().unwrap();
                assert_ne!(
                    rec.summary.state,
                    State::Dead,
                    "record {id}: {:?}",
                    rec.reason
                );
                states.push((rec.summary.state, rec.attempt_count));
            }
            states
        },
        |states| {
            states
                .iter()
                .all(|(s, _)| matches!(s, State::Delivered | State::DuplicateUpstream))
        },
    )
    .await;
    settled.into_iter().map(|(_, attempts)| attempts).collect()
}

async fn readyz(env: &Env) -> (u16, serde_json::Value) {
    let url = format!("http://{}/readyz", env.relay().admin_addr);
    let resp = env.client.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn outage_then_recovery(steps: impl IntoIterator<Item = Step>, tag: &str) -> Env {
    let env = start().await;
    let steps: Vec<Step> = steps.into_iter().collect();
    let n = steps.len();
    env.sandbox.script(steps);
    let ids = send_three(&env, tag).await;
    // The outage is seen and said on /readyz while it lasts.
    let says_outage = |(code, body): &(u16, serde_json::Value)| {
        *code == 503 && body.to_string().contains("not answering")
    };
    // Bounded by the outage itself: once the script is used up it is over.
    let last = wait::value(
        Duration::from_secs(10),
        async || (readyz(&env).await, env.sandbox.pending_steps()),
        |(ready, pending)| says_outage(ready) || *pending == 0,
    )
    .await
    .unwrap_or_else(|last| last);
    assert!(
        says_outage(&last.0),
        "/readyz never reported the outage; last seen: {last:?}"
    );
    let counts = all_done(&env, &ids).await;
    assert!(
        counts.iter().all(|&c| c <= 4),
        "{n} failed calls, yet attempts counted stay within the budget: {counts:?}"
    );
    assert_eq!(env.sandbox.pending_steps(), 0);
    let (code, body) = readyz(&env).await;
    assert!(!body.to_string().contains("not answering"), "{code} {body}");
    env
}

fn accepted_once(env: &Env, tag: &str) {
    let mut per_click: HashMap<String, usize> = HashMap::new();
    for body in env.sandbox.accepted() {
        *per_click
            .entry(body["click_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for i in 0..3 {
        assert_eq!(
            per_click.get(&format!("{tag}{i}")),
            Some(&1),
            "{per_click:?}"
        );
    }
}

#[tokio::test]
async fn an_outage_of_500s_longer_than_the_retry_budget_turns_nothing_dead() {
    let env = outage_then_recovery((0..25).map(|_| Step::status(500)), "o500-").await;
    accepted_once(&env, "o500-");
    env.stop().await;
}

#[tokio::test]
async fn a_proxy_page_with_200_is_an_outage_not_a_dead_letter() {
    let page = || Step::Answer {
        status: 200,
        body: "<html><body>Welcome to nginx!</body></html>".into(),
        retry_after: None,
    };
    let env = outage_then_recovery((0..25).map(|_| page()), "html-").await;
    accepted_once(&env, "html-");
    env.stop().await;
}

#[tokio::test]
async fn an_upstream_that_gives_no_answer_is_an_outage() {
    let env = outage_then_recovery((0..25).map(|_| Step::Drop), "drop-").await;
    accepted_once(&env, "drop-");
    env.stop().await;
}
