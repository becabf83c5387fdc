//! Sources of different networks (the global `[scaleo]` one and a source's own `[forward]
//! base_url`/`api_key`) and different rates are independent: one source's rate limit, one
//! network's outage, one key's 401 never hold up the others, and a probe of one network says
//! nothing about another.

use std::time::Duration;

use postback_relay::sandbox::{Sandbox, SandboxConfig, Step};
use postback_relay::store::{PauseReason, PauseScope, State};

use crate::e2e::support::{Env, KEY, SHOP};
use crate::support::wait;

/// A second Scaleo network: its own sandbox, taking the test key.
async fn other_network() -> Sandbox {
    Sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            api_key: KEY.into(),
        },
    )
    .await
    .expect("second sandbox")
}

/// The shop rule of a source that forwards to `base_url` with the test key.
fn own_network_rule(base_url: &str) -> String {
    format!("{SHOP}\n[forward]\nbase_url = \"{base_url}\"\napi_key = \"{KEY}\"\n")
}

async fn accept(env: &Env, source: &str, query: &str) -> i64 {
    let (status, body) = env.get(&format!("/postback/{source}?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_i64().expect("id")
}

async fn state_of(env: &Env, id: i64) -> (State, u32) {
    let rec = env.relay().store.get(id).await.unwrap().expect("record");
    (rec.summary.state, rec.attempt_count)
}

/// Waits `within` for every record of `ids` to be delivered, failing at once on a dead one.
async fn all_delivered(env: &Env, ids: &[i64], within: Duration, what: &str) -> Vec<u32> {
    let seen = wait::expect_value(
        within,
        what,
        async || {
            let mut seen = Vec::new();
            for id in ids {
                let (state, attempts) = state_of(env, *id).await;
                assert_ne!(state, State::Dead, "record {id} went dead ({what})");
                seen.push((state, attempts));
            }
            seen
        },
        |seen| seen.iter().all(|(s, _)| *s == State::Delivered),
    )
    .await;
    seen.into_iter().map(|(_, attempts)| attempts).collect()
}

/// Regression (A): records of a source held by its own rate limit held every concurrency
/// slot while they waited for it, so another source's postback waited behind them all.
/// The stored pauses, as (scope, reason).
async fn pauses(env: &Env) -> Vec<(PauseScope, PauseReason)> {
    let paused = env.relay().store.paused().await.unwrap();
    paused.into_iter().map(|p| (p.scope, p.reason)).collect()
}

#[tokio::test]
async fn a_slow_sources_rate_limit_does_not_hold_up_other_sources() {
    let slow = format!("{SHOP}\n[forward]\nrate_per_second = 1\nburst = 1\n");
    let env = Env::start(&[("slow", &slow), ("shop", SHOP)], |c| {
        c.forward.concurrency = 4;
    })
    .await;
    // The slow source's backlog is queued first, all of it due at once.
    let store = &env.relay().store;
    store
        .pause(PauseScope::All, PauseReason::Operator)
        .await
        .unwrap();
    let mut slow_ids = Vec::new();
    for i in 0..40 {
        slow_ids.push(accept(&env, "slow", &format!("cid=slow{i}&amt=1")).await);
    }
    let fast = accept(&env, "shop", "cid=fast1&amt=1").await;
    let started = std::time::Instant::now();
    store.resume(PauseScope::All).await.unwrap();
    all_delivered(
        &env,
        &[fast],
        Duration::from_secs(3),
        "the other source's postback, at the global rate",
    )
    .await;
    // The slow source keeps its own pace meanwhile, and a wait is never an attempt.
    wait::quiet(Duration::from_millis(1_500)).await;
    let slow_calls = env
        .sandbox
        .received()
        .iter()
        .filter(|r| r.raw_body.contains("\"slow"))
        .count();
    let allowed = started.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=allowed).contains(&slow_calls),
        "{slow_calls} sends of the 1/s source in {:?}",
        started.elapsed()
    );
    for id in &slow_ids {
        let (state, attempts) = state_of(&env, *id).await;
        let want = u32::from(state == State::Delivered);
        assert_eq!(
            attempts, want,
            "record {id} ({state:?}): a wait is no attempt"
        );
    }
    env.stop().await;
}

/// An outage-prone setup: a short retry budget the outages outlast, fast probes.
async fn start_two(
    other: &Sandbox,
    tweak: impl FnOnce(&mut postback_relay::config::Config),
) -> Env {
    let rule = own_network_rule(&other.base_url());
    Env::start(&[("shop", SHOP), ("other", &rule)], |c| {
        c.forward.retry.set_max_attempts(3).unwrap();
        c.forward.outage_after = 3;
        c.forward.pause_probe = Duration::from_millis(100);
        c.forward.concurrency = 2;
        tweak(c);
    })
    .await
}

/// Regression (B): one network's 500s while another delivered: the other's successes kept
/// resetting the shared count, so no outage began and the first network's records went dead.
#[tokio::test]
async fn an_outage_of_one_network_turns_nothing_dead_while_another_delivers() {
    let other = other_network().await;
    let env = start_two(&other, |_| {}).await;
    env.sandbox.script((0..30).map(|_| Step::status(500)));
    let mut down = Vec::new();
    for i in 0..3 {
        down.push(accept(&env, "shop", &format!("cid=down{i}&amt=1")).await);
    }
    // The other network keeps delivering all along.
    let mut up = Vec::new();
    for i in 0..12 {
        up.push(accept(&env, "other", &format!("cid=up{i}&amt=1")).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_delivered(
        &env,
        &up,
        Duration::from_secs(5),
        "the healthy network's records",
    )
    .await;
    let counts = all_delivered(
        &env,
        &down,
        Duration::from_secs(20),
        "the first network's records, after its outage",
    )
    .await;
    assert!(counts.iter().all(|&c| c <= 3), "{counts:?}");
    assert_eq!(env.sandbox.pending_steps(), 0);
    env.stop().await;
    other.shutdown();
}

/// Regression (B): an outage of a source's own network put all sending in outage mode.
#[tokio::test]
async fn an_outage_of_a_sources_own_network_holds_only_that_network() {
    let other = other_network().await;
    // Probes far enough apart that only the fix lets the global record through at once.
    let env = start_two(&other, |c| c.forward.pause_probe = Duration::from_secs(2)).await;
    other.script((0..5).map(|_| Step::status(503)));
    let mut down = Vec::new();
    for i in 0..3 {
        down.push(accept(&env, "other", &format!("cid=odown{i}&amt=1")).await);
    }
    wait::expect(
        Duration::from_secs(5),
        "the own network's outage to be seen",
        async || {
            let paused = env.relay().store.paused().await.unwrap();
            paused.iter().any(|p| p.reason == PauseReason::Outage)
        },
    )
    .await;
    let fine = accept(&env, "shop", "cid=gup1&amt=1").await;
    all_delivered(
        &env,
        &[fine],
        Duration::from_millis(600),
        "the global network's record during the other network's outage",
    )
    .await;
    let scopes = pauses(&env).await;
    assert_eq!(
        scopes,
        [(PauseScope::Source("other".into()), PauseReason::Outage)]
    );
    let counts = all_delivered(&env, &down, Duration::from_secs(20), "after the outage").await;
    assert!(counts.iter().all(|&c| c <= 3), "{counts:?}");
    assert_eq!(other.pending_steps(), 0);
    env.stop().await;
    other.shutdown();
}

/// Regression (C): a 401 on the global key held a source with its own network too.
#[tokio::test]
async fn a_refused_global_key_does_not_hold_a_source_with_its_own_network() {
    let other = other_network().await;
    let env = start_two(&other, |c| {
        c.scaleo.api_key = "a-wrong-key".into();
        // Only the fix lets the other network's records go: no probe comes to their rescue.
        c.forward.pause_probe = Duration::from_secs(600);
    })
    .await;
    let refused = accept(&env, "shop", "cid=bad1&amt=1").await;
    wait::expect_value(
        Duration::from_secs(5),
        "the global record paused by the 401",
        async || state_of(&env, refused).await,
        |(s, _)| *s == State::Paused,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(accept(&env, "other", &format!("cid=good{i}&amt=1")).await);
    }
    all_delivered(
        &env,
        &ids,
        Duration::from_secs(3),
        "the own network's records",
    )
    .await;
    let paused = env.relay().store.paused().await.unwrap();
    assert!(
        paused.iter().any(|p| p.reason == PauseReason::UpstreamAuth),
        "the refused key stays paused: {paused:?}"
    );
    assert_eq!(state_of(&env, refused).await, (State::Paused, 0));
    env.stop().await;
    other.shutdown();
}

/// Regression (C): a probe of the paused global key picked another network's record, got
/// its 200, and lifted the pause, so the refused key was used again at once.
#[tokio::test]
async fn a_probe_answered_by_another_network_does_not_lift_the_pause() {
    let other = other_network().await;
    let env = start_two(&other, |c| {
        c.scaleo.api_key = "a-wrong-key".into();
        c.forward.pause_probe = Duration::from_millis(300);
        c.forward.concurrency = 1;
    })
    .await;
    let refused = accept(&env, "shop", "cid=bad2&amt=1").await;
    wait::expect_value(
        Duration::from_secs(5),
        "the global record paused by the 401",
        async || state_of(&env, refused).await,
        |(s, _)| *s == State::Paused,
    )
    .await;
    let pauses = env.relay().store.paused().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(accept(&env, "other", &format!("cid=probe{i}&amt=1")).await);
    }
    all_delivered(
        &env,
        &ids,
        Duration::from_secs(5),
        "the own network's records",
    )
    .await;
    // Several probe rounds: the pause is never lifted (it would come back with a new `since`),
    // and the refused key is only tried once a round.
    wait::quiet(Duration::from_millis(1_000)).await;
    assert_eq!(env.relay().store.paused().await.unwrap(), pauses);
    let refusals = env.sandbox.received();
    assert!(refusals.iter().all(|r| r.status == 401));
    // One send, then one probe a round at most.
    let span = jiff::Timestamp::now().duration_since(refusals[0].at);
    let rounds = span.as_millis() / 300;
    assert!(
        refusals.len() as i128 <= 2 + rounds,
        "the refused key was tried {} times in {span:#}: {:?}",
        refusals.len(),
        refusals.iter().map(|r| r.at).collect::<Vec<_>>()
    );
    env.stop().await;
    other.shutdown();
}

/// Kept: a refused key of a source's own network pauses that network alone.
#[tokio::test]
async fn a_refused_own_key_pauses_only_its_network() {
    let other = other_network().await;
    let rule = format!(
        "{SHOP}\n[forward]\nbase_url = \"{}\"\napi_key = \"a-wrong-key\"\n",
        other.base_url()
    );
    let env = Env::start(&[("shop", SHOP), ("other", &rule)], |c| {
        c.forward.pause_probe = Duration::from_secs(600);
    })
    .await;
    let refused = accept(&env, "other", "cid=obad1&amt=1").await;
    wait::expect_value(
        Duration::from_secs(5),
        "the own network's record paused by the 401",
        async || state_of(&env, refused).await,
        |(s, _)| *s == State::Paused,
    )
    .await;
    let fine = accept(&env, "shop", "cid=gfine1&amt=1").await;
    all_delivered(
        &env,
        &[fine],
        Duration::from_secs(3),
        "the global network's record",
    )
    .await;
    let scopes = pauses(&env).await;
    assert_eq!(
        scopes,
        [(
            PauseScope::Source("other".into()),
            PauseReason::UpstreamAuth
        )]
    );
    env.stop().await;
    other.shutdown();
}
