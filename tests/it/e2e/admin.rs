//! The admin API over loopback: auth, listing and inspecting records, replay after a rule
//! fix, pause/resume persistence, explain, readiness.

use std::collections::BTreeSet;
use std::time::Duration;

use postback_relay::store::{PauseReason, PauseScope};
use reqwest::Method;
use serde_json::{Value, json};

use crate::e2e::admin_client::{
    ADMIN_TOKEN, admin_call, admin_get, admin_post, with_admin, write_rule,
};
use crate::e2e::support::{Env, SHOP};
use crate::support::wait;

/// SHOP without the `cid` alias: a postback with only `cid` is rejected (no click id).
const SHOP_NO_CID: &str = r#"
[fields]
click_id     = "clickid"
adv_order_id = "oid"
goal_id      = { value = 7 }
revenue      = { from = "amt", scale = "0.01" }
"#;

/// The fixed rule: `cid` feeds the click id too.
const SHOP_FIXED: &str = r#"
[fields]
click_id     = ["clickid", "cid"]
adv_order_id = "oid"
goal_id      = { value = 7 }
revenue      = { from = "amt", scale = "0.01" }
"#;

async fn postback(env: &Env, source: &str, query: &str) -> (u16, i64) {
    let (status, body) = env.get(&format!("/postback/{source}?{query}")).await;
    (status, body["id"].as_i64().unwrap_or(0))
}

fn ids(list: &Value) -> Vec<i64> {
    list["records"]
        .as_array()
        .expect("records array")
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn admin_refuses_missing_and_wrong_tokens_on_every_endpoint() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let endpoints: [(Method, &str, Option<Value>); 8] = [
        (Method::GET, "/admin/records", None),
        (Method::GET, "/admin/records?state=rejected", None),
        (Method::GET, "/admin/records/1", None),
        (Method::POST, "/admin/replay", Some(json!({"ids": [1]}))),
        (Method::POST, "/admin/pause", Some(json!({}))),
        (Method::POST, "/admin/resume", Some(json!({}))),
        (Method::GET, "/admin/explain/shop?cid=x", None),
        (Method::GET, "/admin/no-such-thing", None),
    ];
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let basic = format!("Basic {ADMIN_TOKEN}");
    for (method, path, body) in &endpoints {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(basic.as_str()),
            Some("Bearer "),
        ] {
            let (status, answer) = admin_call(&env, method.clone(), path, body.clone(), auth).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {answer}");
            assert_eq!(answer["error"], "unauthorized");
        }
    }
    assert!(
        env.relay().store.paused().await.unwrap().is_empty(),
        "a refused pause must change nothing"
    );
    for open in ["/healthz", "/metrics"] {
        let (status, _) = admin_call(&env, Method::GET, open, None, None).await;
        assert_eq!(status, 200, "{open} needs no token");
    }
    env.stop().await;
}

#[tokio::test]
async fn admin_without_a_configured_token_refuses_everything_saying_why() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, body) = admin_call(
        &env,
        Method::GET,
        "/admin/records",
        None,
        Some("Bearer anything"),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["reason"].as_str().unwrap().contains("admin.token"),
        "{body}"
    );
    env.stop().await;
}

#[tokio::test]
async fn records_are_listed_newest_first_filtered_and_paged() {
    let env = Env::start(&[("shop", SHOP), ("other", SHOP)], with_admin).await;
    let mut all = Vec::new();
    for q in ["cid=a1&amt=1", "cid=a2&amt=2", "cid=a3&amt=3"] {
        let (s, id) = postback(&env, "shop", q).await;
        assert_eq!(s, 200);
        all.push(id);
    }
    let (s, rejected) = postback(&env, "shop", "amt=4").await;
    assert_eq!(s, 422);
    all.push(rejected);
    let (s, skipped) = postback(&env, "shop", "cid=t&test=1").await;
    assert_eq!(s, 200);
    all.push(skipped);
    let (s, other) = postback(&env, "other", "cid=o1&amt=5").await;
    assert_eq!(s, 200);
    all.push(other);
    all.reverse();

    let (status, list) = admin_get(&env, "/admin/records").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(ids(&list), all, "newest first");
    assert_eq!(list["next"], Value::Null);
    let first = &list["records"][0];
    assert_eq!(first["source"], "other");
    assert_eq!(first["state"], "queued");
    assert_eq!(first["click_id"], "o1");
    assert!(
        first["received_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "RFC 3339: {first}"
    );

    let (_, l) = admin_get(&env, "/admin/records?state=rejected").await;
    assert_eq!(ids(&l), vec![rejected]);
    let (_, l) = admin_get(&env, "/admin/records?source=other").await;
    assert_eq!(ids(&l), vec![other]);
    let (_, l) = admin_get(&env, "/admin/records?click_id=a2&source=shop").await;
    assert_eq!(ids(&l), vec![all[4]]);
    let (_, l) = admin_get(&env, "/admin/records?since=2999-01-01T00:00:00Z").await;
    assert!(ids(&l).is_empty());
    let (_, l) = admin_get(&env, "/admin/records?until=2999-01-01T00:00:00Z&source=").await;
    assert_eq!(ids(&l).len(), all.len(), "an empty value is no filter");

    let mut paged = Vec::new();
    let mut path = "/admin/records?limit=4".to_string();
    for _ in 0..10 {
        let (status, page) = admin_get(&env, &path).await;
        assert_eq!(status, 200, "{page}");
        paged.extend(ids(&page));
        match page["next"].as_str() {
            Some(c) => path = format!("/admin/records?limit=4&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, all, "pages cover everything once, in order");
    env.stop().await;
}

#[tokio::test]
async fn bad_filter_values_answer_400_naming_the_parameter_and_the_value() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    for (query, name, value, expected) in [
        ("since=yesterday", "since", "yesterday", "RFC 3339"),
        ("until=2025-13-01", "until", "2025-13-01", "RFC 3339"),
        ("state=lost", "state", "lost", "duplicate_upstream"),
        ("limit=0", "limit", "0", "1 to 1000"),
        ("cursor=abc", "cursor", "abc", "next"),
        ("source=Bad%20Name", "source", "Bad Name", "source id"),
        ("colour=red", "colour", "red", "click_id"),
    ] {
        let (status, body) = admin_get(&env, &format!("/admin/records?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let reason = body["reason"].as_str().unwrap();
        assert!(
            reason.contains(name) && reason.contains(value) && reason.contains(expected),
            "{query}: {reason}"
        );
    }
    let (status, body) = admin_get(&env, "/admin/records/abc").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin_get(&env, "/admin/records/987654").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = admin_post(&env, "/admin/replay", json!({"state": "queued"})).await;
    assert_eq!(status, 400, "only rejected or dead replay: {body}");
    let (status, body) = admin_post(&env, "/admin/replay", json!({})).await;
    assert_eq!(status, 400, "an empty replay is refused: {body}");
    env.stop().await;
}

#[tokio::test]
async fn record_detail_shows_the_raw_postback_with_the_token_redacted() {
    let rule = format!("[auth]\ntoken = \"s3cret-token\"\n{SHOP}");
    let env = Env::start(&[("shop", &rule)], with_admin).await;
    let resp = env
        .client
        .get(env.url("/postback/shop?cid=abc&amt=1999&oid=O-1&token=s3cret-token"))
        .header("User-Agent", "adv-bot/1.0")
        .header("Referer", "https://adv.example/thanks")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let id = body["id"].as_i64().expect("stored");
    let (status, rec) = admin_get(&env, &format!("/admin/records/{id}")).await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["id"], id);
    assert_eq!(rec["state"], "queued");
    assert_eq!(rec["raw"]["method"], "GET");
    assert_eq!(rec["raw"]["path"], "/postback/shop");
    assert_eq!(rec["raw"]["query"], "cid=abc&amt=1999&oid=O-1&token=***");
    assert_eq!(rec["raw"]["client_ip"], "127.0.0.1");
    assert_eq!(rec["raw"]["user_agent"], "adv-bot/1.0");
    assert_eq!(rec["raw"]["referer"], "https://adv.example/thanks");
    assert_eq!(rec["body"]["revenue"], json!(19.99));
    assert_eq!(rec["body"]["click_id"], "abc");
    assert!(rec["attempts"].is_array());
    assert!(
        !rec.to_string().contains("s3cret-token"),
        "the token never leaves the relay: {rec}"
    );

    let (_, rej) = postback(&env, "shop", "amt=1&token=s3cret-token").await;
    let (_, rec) = admin_get(&env, &format!("/admin/records/{rej}")).await;
    assert_eq!(rec["state"], "rejected");
    assert!(
        rec.get("body").is_none(),
        "no body on a rejected record: {rec}"
    );
    assert!(
        rec["reason"].as_str().unwrap().contains("click_id"),
        "{rec}"
    );
    env.stop().await;
}

#[tokio::test]
async fn replay_after_a_rule_fix_queues_the_rejected_record_with_the_new_body() {
    let env = Env::start(&[("shop", SHOP_NO_CID)], with_admin).await;
    let (status, id) = postback(&env, "shop", "cid=zz9&amt=250&oid=R-1").await;
    assert_eq!(status, 422);

    // Replaying before the fix rejects it again and says why.
    let (status, report) = admin_post(&env, "/admin/replay", json!({"ids": [id]})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["reasons"][0]["ids"], json!([id]));
    assert!(
        report["reasons"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("click_id")
    );

    write_rule(&env.dir.path().join("rules"), "shop", SHOP_FIXED);
    env.relay().reload().expect("the fixed rule loads");
    let (status, report) = admin_post(&env, "/admin/replay", json!({"ids": [id]})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (&report["queued"], &report["rejected"], &report["duplicate"]),
        (&json!(1), &json!(0), &json!(0)),
        "{report}"
    );
    // The replayed record goes all the way to Scaleo with the new body.
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    assert_eq!(
        env.sandbox.accepted()[0].to_string(),
        r#"{"adv_order_id":"R-1","click_id":"zz9","goal_id":7,"revenue":2.5}"#
    );
    let rec = wait::value(
        Duration::from_secs(2),
        async || env.relay().store.get(id).await.unwrap().unwrap(),
        |rec| rec.summary.state.as_str() == "delivered",
    )
    .await
    .unwrap_or_else(|rec| panic!("the replayed record {id} is not delivered: {rec:?}"));
    assert_eq!(rec.summary.click_id.as_deref(), Some("zz9"));
    assert_eq!(
        Value::Object(rec.body.unwrap()).to_string(),
        r#"{"adv_order_id":"R-1","click_id":"zz9","goal_id":7,"revenue":2.5}"#
    );

    // A record that is no longer rejected or dead is not replayed again.
    let (_, report) = admin_post(&env, "/admin/replay", json!({"ids": [id, 999_999]})).await;
    assert_eq!(report["not_replayed"], 2, "{report}");
    assert_eq!(report["queued"], 0);
    env.stop().await;
}

#[tokio::test]
async fn filtered_replay_counts_queued_duplicate_and_rejected_with_reasons() {
    let env = Env::start(&[("shop", SHOP_NO_CID), ("other", SHOP_NO_CID)], with_admin).await;
    let (_, a) = postback(&env, "shop", "cid=d1&amt=1&oid=O-1").await;
    // Another raw query (an exact repeat of a stored reject is counted on it, not stored)
    // with the same dedupe key.
    let (_, b) = postback(&env, "shop", "cid=d1&amt=1&oid=O-1&try=2").await;
    assert_ne!(a, b);
    let (_, c) = postback(&env, "shop", "amt=1&oid=O-2").await;
    let (_, elsewhere) = postback(&env, "other", "cid=x&amt=1").await;
    write_rule(&env.dir.path().join("rules"), "shop", SHOP_FIXED);
    write_rule(&env.dir.path().join("rules"), "other", SHOP_FIXED);
    env.relay().reload().expect("the fixed rules load");

    let (status, report) = admin_post(
        &env,
        "/admin/replay",
        json!({"source": "shop", "state": "rejected", "since": "2000-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["queued"], 1, "{report}");
    assert_eq!(report["duplicate"], 1, "same dedupe key: {report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["reasons"][0]["outcome"], "rejected");
    assert_eq!(report["reasons"][0]["ids"], json!([c]));
    let store = &env.relay().store;
    let mut states = BTreeSet::new();
    for id in [a, b] {
        states.insert(store.get(id).await.unwrap().unwrap().summary.state.as_str());
    }
    assert!(states.contains("duplicate"), "{states:?}");
    let other = store.get(elsewhere).await.unwrap().unwrap();
    assert_eq!(
        other.summary.state.as_str(),
        "rejected",
        "the filter keeps to its source"
    );
    env.stop().await;
}

#[tokio::test]
async fn replay_of_a_source_whose_rule_file_is_gone_says_so() {
    let env = Env::start(&[("shop", SHOP), ("gone", SHOP)], with_admin).await;
    let (status, id) = postback(&env, "gone", "amt=1").await;
    assert_eq!(status, 422);
    std::fs::remove_file(env.dir.path().join("rules/gone.toml")).unwrap();
    env.relay().reload().expect("the rest loads");
    let (_, report) = admin_post(&env, "/admin/replay", json!({"ids": [id]})).await;
    assert_eq!(report["not_replayed"], 1, "{report}");
    let reason = report["reasons"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("gone") && reason.contains("rule file"),
        "{reason}"
    );
    env.stop().await;
}

#[tokio::test]
async fn pause_stops_sending_and_resume_restarts_it() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let (status, _) = admin_post(&env, "/admin/pause", json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = postback(&env, "shop", "cid=held1&amt=1").await;
    assert_eq!(
        status, 200,
        "ingest keeps accepting while forwarding is paused"
    );
    // Nothing may be sent while paused: 500 ms is many forwarder polls.
    wait::quiet(Duration::from_millis(500)).await;
    assert!(
        env.sandbox.received().is_empty(),
        "nothing is sent while paused"
    );
    let (status, _) = admin_post(&env, "/admin/resume", json!({})).await;
    assert_eq!(status, 200);
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    assert_eq!(env.sandbox.accepted()[0]["click_id"], "held1");
    env.stop().await;
}

#[tokio::test]
async fn pause_and_resume_are_persisted_and_survive_a_restart() {
    let mut env = Env::start(&[("shop", SHOP)], with_admin).await;
    let (status, body) = admin_post(&env, "/admin/pause", json!({"source": "shop"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], "shop");
    let (status, body) = admin_call(
        &env,
        Method::POST,
        "/admin/pause",
        None,
        Some(&format!("Bearer {ADMIN_TOKEN}")),
    )
    .await;
    assert_eq!(status, 200, "an empty body pauses everything: {body}");
    assert_eq!(body["pauses"].as_array().unwrap().len(), 2, "{body}");

    let (status, ready) = admin_call(&env, Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["forwarding"]["ok"], false, "{ready}");

    env.restart(with_admin).await;
    let mut scopes: Vec<(PauseScope, PauseReason)> = env
        .relay()
        .store
        .paused()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.scope, p.reason))
        .collect();
    scopes.sort_by_key(|(s, _)| s.to_string());
    assert_eq!(
        scopes,
        vec![
            (PauseScope::All, PauseReason::Operator),
            (PauseScope::Source("shop".into()), PauseReason::Operator)
        ]
    );

    let (status, body) = admin_post(&env, "/admin/resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], 1);
    let (status, ready) = admin_call(&env, Method::GET, "/readyz", None, None).await;
    assert_eq!(
        status, 200,
        "a single paused source is not unready: {ready}"
    );
    assert_eq!(ready["forwarding"]["pauses"][0]["scope"], "shop");
    let (_, body) = admin_post(&env, "/admin/resume", json!({"source": "shop"})).await;
    assert_eq!(body["pauses"], json!([]), "{body}");
    assert!(env.relay().store.paused().await.unwrap().is_empty());
    let (status, body) = admin_post(&env, "/admin/pause", json!({"source": "*"})).await;
    assert_eq!(status, 400, "{body}");
    env.stop().await;
}

#[tokio::test]
async fn explain_shows_field_origins_ignored_macros_and_the_outcome() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let (status, e) = admin_get(
        &env,
        "/admin/explain/shop?clickid=%7Bclickid%7D&cid=abc&amt=1999&st=1",
    )
    .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["outcome"], "forward");
    assert_eq!(e["body"]["click_id"], "abc");
    assert_eq!(e["skip_matched"], Value::Null);
    let fields = e["fields"].as_array().unwrap();
    let click = fields
        .iter()
        .find(|f| f["field"] == "click_id")
        .expect("click_id traced");
    assert_eq!(click["origin"], json!({"kind": "param", "name": "cid"}));
    assert_eq!(click["ignored"][0]["param"], "clickid");
    assert_eq!(click["ignored"][0]["value"], "{clickid}");
    assert!(click["ignored"][0]["why"].as_str().is_some());
    let goal = fields.iter().find(|f| f["field"] == "goal_id").unwrap();
    assert_eq!(goal["origin"]["kind"], "constant");

    let (_, e) = admin_get(&env, "/admin/explain/shop?cid=abc&test=1").await;
    assert_eq!(
        (&e["outcome"], &e["skip_matched"]),
        (&json!("skip"), &json!(0))
    );
    let (_, e) = admin_get(&env, "/admin/explain/shop?amt=1").await;
    assert_eq!(e["outcome"], "reject");
    assert!(e["reason"].as_str().unwrap().contains("click_id"));
    let (status, e) = admin_get(&env, "/admin/explain/nope?cid=1").await;
    assert_eq!(status, 404, "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("shop"),
        "lists the known sources"
    );
    env.stop().await;
}

#[tokio::test]
async fn readyz_and_healthz_answer_without_a_token() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let (status, body) = admin_call(&env, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, ready) = admin_call(&env, Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    for check in ["store", "rules", "forwarding", "progress"] {
        assert_eq!(ready[check]["ok"], true, "{check}: {ready}");
    }
    env.stop().await;
}

#[tokio::test]
async fn replay_ids_are_deduplicated_and_capped() {
    let env = Env::start(&[("shop", SHOP_NO_CID)], with_admin).await;
    let (status, id) = postback(&env, "shop", "cid=dup&amt=1").await;
    assert_eq!(status, 422);
    // One id 20,000 times is one replay, not 20,000.
    let (status, report) =
        admin_post(&env, "/admin/replay", json!({ "ids": vec![id; 20_000] })).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(report["reasons"][0]["ids"], json!([id]), "{report}");
    // More distinct ids than one replay takes: refused at once, naming the limit.
    let many: Vec<i64> = (1..=10_001).collect();
    let (status, body) = admin_post(&env, "/admin/replay", json!({ "ids": many })).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("10000"), "{body}");
    env.stop().await;
}

/// A POST whose body never finishes arriving is answered 408 after `server.read_timeout`
/// instead of holding the connection open.
#[tokio::test]
async fn a_slow_admin_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start(&[("shop", SHOP)], |c| {
        with_admin(c);
        c.server.read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(env.relay().admin_addr)
        .await
        .unwrap();
    let head = format!(
        "POST /admin/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sou"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "no answer within 5 s to a body that stopped arriving"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    env.stop().await;
}
