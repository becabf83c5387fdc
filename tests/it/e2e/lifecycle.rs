//! The conversion lifecycle end to end: later postbacks of a conversion through the real
//! relay, and what the scripted Scaleo sandbox receives (`POST conv-click-id` once, then
//! `PUT leads/update` with Scaleo's `lead_id` and only the fields that change).

use std::time::Duration;

use postback_relay::sandbox::Step;
use serde_json::{Value, json};

use reqwest::Method;

use crate::e2e::admin_client::{ADMIN_TOKEN, admin_call, admin_get, metric, scrape, with_admin};
use crate::e2e::support::Env;
use crate::support::wait;

const UPDATE_PATH: &str = "/api/v2/network/leads/update";
const CREATE_PATH: &str = "/api/v2/network/tracking/conv-click-id";

/// A Keitaro-like sender: one conversion per click and order, its status moving over time.
const LIFE: &str = r#"
[fields]
click_id     = "subid"
adv_order_id = "tid"
revenue      = { from = "revenue", number = true }
conv_status  = { from = "status", map = { lead = "pending", sale = "approved", rejected = "rejected", hold = "hold" }, ignore_case = true }
"#;

/// Refund and chargeback URLs that carry only the order id.
const REFUNDS: &str = r#"
[fields]
adv_order_id = "order"
revenue      = { from = "amount", number = true }
conv_status  = { value = "rejected" }

[updates]
only = true
of   = "life"
key  = ["adv_order_id"]
"#;

async fn start() -> Env {
    Env::start(&[("life", LIFE), ("refunds", REFUNDS)], |_| {}).await
}

async fn send(env: &Env, source: &str, query: &str) -> Value {
    let (status, body) = env.get(&format!("/postback/{source}?{query}")).await;
    assert!(status == 200 || status == 422, "{status} {body}");
    body
}

async fn state_of(env: &Env, id: i64) -> String {
    let rec = env.relay().store.get(id).await.unwrap().expect("record");
    rec.summary.state.as_str().to_string()
}

async fn wait_state(env: &Env, id: i64, want: &str) {
    wait::expect_value(
        Duration::from_secs(5),
        &format!("record {id} to be {want}"),
        async || state_of(env, id).await,
        |state| state == want,
    )
    .await;
}

/// The bodies of the calls the sandbox received on `path`, oldest first.
fn calls(env: &Env, path: &str) -> Vec<Value> {
    env.sandbox
        .received()
        .into_iter()
        .filter(|r| r.path == path)
        .filter_map(|r| r.body)
        .collect()
}

/// The `lead_id` the relay stored from the create of record `id` (as Scaleo gave it).
async fn lead_id(env: &Env, id: i64) -> Value {
    let rec = env.relay().store.get(id).await.unwrap().expect("record");
    let lead = rec
        .lead_id
        .expect("a lead_id stored from the create answer");
    serde_json::from_str(&lead).expect("lead_id is JSON text")
}

/// Sends the lead and waits until the create is delivered; returns its record id.
async fn delivered_lead(env: &Env, query: &str) -> i64 {
    delivered_lead_of(env, "life", query).await
}

async fn delivered_lead_of(env: &Env, source: &str, query: &str) -> i64 {
    let body = send(env, source, query).await;
    assert_eq!(body["status"], "accepted", "{body}");
    let id = body["id"].as_i64().unwrap();
    wait_state(env, id, "delivered").await;
    id
}

async fn no_more_calls(env: &Env, path: &str, n: usize) {
    // Nothing is due any more: give the forwarder a few ticks to prove it sends nothing.
    wait::quiet(Duration::from_millis(300)).await;
    assert_eq!(calls(env, path).len(), n, "{:?}", calls(env, path));
}

#[tokio::test]
async fn lead_then_sale_sends_one_update_with_the_lead_id() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk1&status=lead&revenue=0&tid=T-1").await;
    let body = send(&env, "life", "subid=clk1&status=sale&revenue=25&tid=T-1").await;
    assert_eq!(body["status"], "update", "{body}");
    assert_eq!(body["original"], lead, "{body}");
    let change = body["id"].as_i64().unwrap();
    wait_state(&env, change, "delivered").await;
    let updates = calls(&env, UPDATE_PATH);
    let lead_id = lead_id(&env, lead).await;
    assert_eq!(
        updates,
        vec![json!({"lead_id": lead_id, "conv_status": "approved", "revenue": 25})]
    );
    assert_eq!(calls(&env, CREATE_PATH).len(), 1, "never a second create");
    let rec = env.relay().store.get(lead).await.unwrap().unwrap();
    let conv = rec.conversion.expect("the original shows its conversion");
    assert_eq!(conv.current["conv_status"], "approved");
    assert_eq!(
        conv.chain.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![change]
    );
    let change_rec = env.relay().store.get(change).await.unwrap().unwrap();
    assert!(change_rec.is_change);
    env.stop().await;
}

#[tokio::test]
async fn operators_see_the_conversion_its_records_and_the_update_metric() {
    let env = Env::start(&[("seen", LIFE)], with_admin).await;
    let lead = delivered_lead_of(&env, "seen", "subid=clk12&status=lead&revenue=0&tid=T-12").await;
    let (_, explain) = admin_get(
        &env,
        "/admin/explain/seen?subid=clk12&status=sale&revenue=25&tid=T-12",
    )
    .await;
    assert_eq!(
        explain["conversion"],
        json!({"outcome": "update", "original": lead, "change": {"conv_status": "approved", "revenue": 25}, "reason": null})
    );
    let sale = send(&env, "seen", "subid=clk12&status=sale&revenue=25&tid=T-12").await;
    let sale = sale["id"].as_i64().unwrap();
    wait_state(&env, sale, "delivered").await;
    send(&env, "seen", "subid=clk12&status=lead&tid=T-12").await;
    let (status, list) = admin_get(&env, &format!("/admin/records?conversion={lead}")).await;
    assert_eq!(status, 200, "{list}");
    let states: Vec<&str> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["stale", "delivered", "delivered"], "{list}");
    let (_, rec) = admin_get(&env, &format!("/admin/records/{lead}")).await;
    assert_eq!(rec["kind"], "create");
    assert_eq!(rec["conversion"]["original"], lead);
    assert_eq!(
        rec["conversion"]["current"],
        json!({"conv_status": "approved", "revenue": 25})
    );
    assert_eq!(rec["conversion"]["lead_id"], rec["lead_id"]);
    assert_eq!(rec["conversion"]["changes"].as_array().unwrap().len(), 2);
    let (_, change) = admin_get(&env, &format!("/admin/records/{sale}")).await;
    assert_eq!(change["kind"], "update");
    let text = scrape(&env).await;
    for (outcome, n) in [("update", 1.0), ("stale", 1.0), ("accepted", 1.0)] {
        let series =
            format!(r#"postback_relay_postbacks_total{{source="seen",outcome="{outcome}"}}"#);
        assert_eq!(metric(&text, &series), n, "{series}");
    }
    env.stop().await;
}

#[tokio::test]
async fn an_exact_resend_is_a_duplicate_and_never_sent() {
    let env = start().await;
    delivered_lead(&env, "subid=clk2&status=sale&revenue=25&tid=T-2").await;
    let body = send(&env, "life", "subid=clk2&status=sale&revenue=25.00&tid=T-2").await;
    assert_eq!(body["status"], "duplicate", "{body}");
    // Omitting the money is no change either.
    let body = send(&env, "life", "subid=clk2&status=sale&tid=T-2").await;
    assert_eq!(body["status"], "duplicate", "{body}");
    no_more_calls(&env, UPDATE_PATH, 0).await;
    assert_eq!(calls(&env, CREATE_PATH).len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn a_late_pending_after_approved_is_stale_naming_both_statuses() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk3&status=sale&revenue=25&tid=T-3").await;
    let body = send(&env, "life", "subid=clk3&status=lead&revenue=0&tid=T-3").await;
    assert_eq!(body["status"], "stale", "{body}");
    assert_eq!(body["original"], lead, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("pending") && reason.contains("approved"),
        "{reason}"
    );
    assert_eq!(state_of(&env, body["id"].as_i64().unwrap()).await, "stale");
    no_more_calls(&env, UPDATE_PATH, 0).await;
    env.stop().await;
}

#[tokio::test]
async fn a_chargeback_is_sent_and_a_sale_after_it_is_stale() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk4&status=sale&revenue=25&tid=T-4").await;
    let back = send(
        &env,
        "life",
        "subid=clk4&status=rejected&revenue=-25&tid=T-4",
    )
    .await;
    assert_eq!(back["status"], "update", "{back}");
    wait_state(&env, back["id"].as_i64().unwrap(), "delivered").await;
    let again = send(&env, "life", "subid=clk4&status=sale&revenue=25&tid=T-4").await;
    assert_eq!(again["status"], "stale", "{again}");
    no_more_calls(&env, UPDATE_PATH, 1).await;
    let lead_id = lead_id(&env, lead).await;
    assert_eq!(
        calls(&env, UPDATE_PATH),
        vec![json!({"lead_id": lead_id, "conv_status": "rejected", "revenue": -25})]
    );
    env.stop().await;
}

#[tokio::test]
async fn status_only_and_money_only_changes_send_only_what_changes() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk5&status=lead&revenue=10&tid=T-5").await;
    let status = send(&env, "life", "subid=clk5&status=hold&revenue=10&tid=T-5").await;
    wait_state(&env, status["id"].as_i64().unwrap(), "delivered").await;
    let money = send(&env, "life", "subid=clk5&revenue=12.50&tid=T-5").await;
    assert_eq!(money["status"], "update", "{money}");
    wait_state(&env, money["id"].as_i64().unwrap(), "delivered").await;
    let lead_id = lead_id(&env, lead).await;
    assert_eq!(
        calls(&env, UPDATE_PATH),
        vec![
            json!({"lead_id": lead_id, "conv_status": "hold"}),
            json!({"lead_id": lead_id, "revenue": 12.50}),
        ]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_change_while_the_create_is_retrying_is_folded_into_one_create() {
    let env = Env::start(&[("life", LIFE)], |c| {
        c.forward
            .retry
            .set_schedule(vec![Duration::from_millis(800)])
            .unwrap();
    })
    .await;
    env.sandbox.script([Step::status(503)]);
    let lead = send(&env, "life", "subid=clk6&status=lead&revenue=0&tid=T-6").await;
    let lead = lead["id"].as_i64().unwrap();
    wait_state(&env, lead, "retrying").await;
    let sale = send(&env, "life", "subid=clk6&status=sale&revenue=25&tid=T-6").await;
    assert_eq!(sale["status"], "update", "{sale}");
    assert_eq!(state_of(&env, sale["id"].as_i64().unwrap()).await, "merged");
    wait_state(&env, lead, "delivered").await;
    let creates = calls(&env, CREATE_PATH);
    assert_eq!(creates.len(), 2, "the 503 and the retry: {creates:?}");
    assert_eq!(
        creates[1],
        json!({"click_id": "clk6", "adv_order_id": "T-6", "conv_status": "approved", "revenue": 25})
    );
    no_more_calls(&env, UPDATE_PATH, 0).await;
    env.stop().await;
}

#[tokio::test]
async fn a_refund_by_order_id_changes_the_conversion_and_an_unknown_order_is_rejected() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk7&status=sale&revenue=40&tid=ORD-7").await;
    let refund = send(&env, "refunds", "order=ORD-7&amount=-40").await;
    assert_eq!(refund["status"], "update", "{refund}");
    assert_eq!(refund["original"], lead, "{refund}");
    wait_state(&env, refund["id"].as_i64().unwrap(), "delivered").await;
    let lead_id = lead_id(&env, lead).await;
    assert_eq!(
        calls(&env, UPDATE_PATH),
        vec![json!({"lead_id": lead_id, "conv_status": "rejected", "revenue": -40})]
    );
    let (status, unknown) = env.get("/postback/refunds?order=NOPE&amount=-5").await;
    assert_eq!(status, 422, "{unknown}");
    assert_eq!(unknown["status"], "rejected");
    let reason = unknown["reason"].as_str().unwrap();
    assert!(
        reason.contains("NOPE") && reason.contains("life"),
        "{reason}"
    );
    assert_eq!(
        state_of(&env, unknown["id"].as_i64().unwrap()).await,
        "rejected"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_change_scaleo_refuses_is_dead_and_one_failing_with_500_is_retried() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk8&status=lead&revenue=0&tid=T-8").await;
    env.sandbox.script([Step::status(500)]);
    let sale = send(&env, "life", "subid=clk8&status=sale&revenue=25&tid=T-8").await;
    let sale = sale["id"].as_i64().unwrap();
    wait_state(&env, sale, "delivered").await;
    let rec = env.relay().store.get(sale).await.unwrap().unwrap();
    let codes: Vec<Option<u16>> = rec.attempts.iter().map(|a| a.status).collect();
    assert_eq!(codes, vec![Some(500), Some(200)]);

    // A conversion already invoiced: Scaleo's 4xx is final.
    env.sandbox.script([Step::Answer {
        status: 422,
        body: json!({"status": "error", "code": 422, "name": "Unprocessable", "message": "Conversion is already in an invoice", "info": {}}).to_string(),
        retry_after: None,
    }]);
    let back = send(&env, "life", "subid=clk8&status=rejected&tid=T-8").await;
    let back = back["id"].as_i64().unwrap();
    wait_state(&env, back, "dead").await;
    let rec = env.relay().store.get(back).await.unwrap().unwrap();
    assert_eq!(rec.attempts.len(), 1, "not retried");
    assert!(
        rec.attempts[0].answer.contains("invoice"),
        "{:?}",
        rec.attempts
    );
    assert_eq!(calls(&env, UPDATE_PATH).len(), 3);
    let _ = lead;
    env.stop().await;
}

#[tokio::test]
async fn a_change_of_a_conversion_scaleo_called_a_duplicate_is_dead_naming_it() {
    let env = start().await;
    env.sandbox.script([Step::MultipleConversions]);
    let lead = send(&env, "life", "subid=clk9&status=lead&revenue=0&tid=T-9").await;
    let lead = lead["id"].as_i64().unwrap();
    wait_state(&env, lead, "duplicate_upstream").await;
    let sale = send(&env, "life", "subid=clk9&status=sale&revenue=25&tid=T-9").await;
    assert_eq!(sale["status"], "update", "{sale}");
    let sale = sale["id"].as_i64().unwrap();
    wait_state(&env, sale, "dead").await;
    let rec = env.relay().store.get(sale).await.unwrap().unwrap();
    let reason = rec.reason.unwrap();
    assert!(
        reason.contains(&format!("record {lead}")) && reason.contains("lead_id"),
        "{reason}"
    );
    no_more_calls(&env, UPDATE_PATH, 0).await;
    env.stop().await;
}

/// The create lands but answers after the relay's timeout; the sale arrives while it waits
/// to be retried and is folded into the retry, which meets "Multiple Conversions are not
/// Allowed". Scaleo still holds the lead: the sale is not lost without a trace but `dead`
/// naming the original, and a resend of it is an `update` again, not a `duplicate`.
#[tokio::test]
async fn a_change_folded_into_a_create_scaleo_already_had_is_dead_not_lost() {
    let env = Env::start(&[("life", LIFE)], |c| {
        c.forward
            .retry
            .set_schedule(vec![Duration::from_millis(800)])
            .unwrap();
    })
    .await;
    env.sandbox.script([Step::Hang(Duration::from_secs(2))]);
    let lead = send(&env, "life", "subid=clk13&status=lead&revenue=1&tid=T-13").await;
    let lead = lead["id"].as_i64().unwrap();
    wait_state(&env, lead, "retrying").await;
    let sale = send(&env, "life", "subid=clk13&status=sale&revenue=50&tid=T-13").await;
    assert_eq!(sale["status"], "update", "{sale}");
    let sale = sale["id"].as_i64().unwrap();
    assert_eq!(state_of(&env, sale).await, "merged");
    wait_state(&env, lead, "duplicate_upstream").await;
    wait_state(&env, sale, "dead").await;
    let rec = env.relay().store.get(sale).await.unwrap().unwrap();
    let reason = rec.reason.unwrap();
    assert!(reason.contains(&format!("record {lead}")), "{reason}");
    let again = send(&env, "life", "subid=clk13&status=sale&revenue=50&tid=T-13").await;
    assert_eq!(again["status"], "update", "{again}");
    assert_eq!(again["original"], lead, "{again}");
    assert_eq!(state_of(&env, again["id"].as_i64().unwrap()).await, "dead");
    no_more_calls(&env, UPDATE_PATH, 0).await;
    env.stop().await;
}

/// A refund URL retried for an order nobody knows is counted on the stored reject, as a
/// reject of the mapping is.
#[tokio::test]
async fn a_repeated_refund_of_an_unknown_order_is_counted_on_the_stored_reject() {
    let env = start().await;
    let (status, first) = env.get("/postback/refunds?order=T-9&amount=-10").await;
    assert_eq!(status, 422, "{first}");
    let (status, second) = env.get("/postback/refunds?order=T-9&amount=-10").await;
    assert_eq!(status, 422, "{second}");
    assert_eq!(second["status"], "rejected", "{second}");
    assert_eq!(second["id"], first["id"], "{second}");
    let id = first["id"].as_i64().unwrap();
    assert_eq!(env.relay().store.get(id).await.unwrap().unwrap().repeats, 1);
    env.stop().await;
}

#[tokio::test]
async fn two_quick_changes_collapse_into_one_update_with_the_latest_state() {
    let env = start().await;
    let lead = delivered_lead(&env, "subid=clk10&status=lead&revenue=0&tid=T-10").await;
    // Hold the sends (an operator pause) so both changes wait together.
    env.relay()
        .store
        .pause(
            postback_relay::store::PauseScope::Source("life".into()),
            postback_relay::store::PauseReason::Operator,
        )
        .await
        .unwrap();
    // Scenario: a forwarder pass already under way when the pause was stored ends before the
    // two changes arrive (nothing exposes the end of a pass), so both wait together.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let hold = send(&env, "life", "subid=clk10&status=hold&revenue=5&tid=T-10").await;
    let sale = send(&env, "life", "subid=clk10&status=sale&tid=T-10").await;
    assert_eq!(state_of(&env, hold["id"].as_i64().unwrap()).await, "merged");
    env.relay()
        .store
        .resume(postback_relay::store::PauseScope::Source("life".into()))
        .await
        .unwrap();
    wait_state(&env, sale["id"].as_i64().unwrap(), "delivered").await;
    let lead_id = lead_id(&env, lead).await;
    no_more_calls(&env, UPDATE_PATH, 1).await;
    assert_eq!(
        calls(&env, UPDATE_PATH),
        vec![json!({"lead_id": lead_id, "conv_status": "approved", "revenue": 5})]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_dead_change_is_replayed_once_its_original_is_delivered() {
    let env = Env::start(&[("life", LIFE)], with_admin).await;
    env.sandbox.script([Step::status(404)]);
    let lead = send(&env, "life", "subid=clk11&status=lead&revenue=0&tid=T-11").await;
    let lead = lead["id"].as_i64().unwrap();
    wait_state(&env, lead, "dead").await;
    let sale = send(&env, "life", "subid=clk11&status=sale&revenue=25&tid=T-11").await;
    let sale = sale["id"].as_i64().unwrap();
    assert_eq!(state_of(&env, sale).await, "dead");
    // The operator fixes the click and replays the original, then the change.
    let replay = async |id: i64| {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = Some(json!({"ids": [id]}));
        let (status, answer) =
            admin_call(&env, Method::POST, "/admin/replay", body, Some(&auth)).await;
        assert_eq!(
            (status, answer["queued"].as_i64()),
            (200, Some(1)),
            "{answer}"
        );
    };
    replay(lead).await;
    wait_state(&env, lead, "delivered").await;
    replay(sale).await;
    wait_state(&env, sale, "delivered").await;
    let lead_id = lead_id(&env, lead).await;
    let updates = calls(&env, UPDATE_PATH);
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0]["lead_id"], lead_id);
    assert_eq!(updates[0]["conv_status"], "approved");
    env.stop().await;
}

/// The lookup indexes in the store file (read from a connection of its own).
fn lookup_indexes(env: &Env) -> Vec<String> {
    let c = rusqlite::Connection::open(env.dir.path().join("data").join("relay.db")).unwrap();
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_master WHERE name LIKE 'dedupe_lookup:%' ORDER BY name")
        .unwrap();
    let names = stmt.query_map([], |r| r.get(0)).unwrap();
    names.map(Result::unwrap).collect()
}

async fn wait_lookup_indexes(env: &Env, want: &[&str]) {
    wait::expect_value(
        Duration::from_secs(5),
        &format!("lookup indexes {want:?}"),
        async || lookup_indexes(env),
        |have| have == want,
    )
    .await;
}

#[tokio::test]
async fn only_a_source_a_refund_url_points_at_is_indexed_for_lookups_and_reloads_follow_the_rules()
{
    let mut env = start().await;
    wait_lookup_indexes(&env, &["dedupe_lookup:order_id:life"]).await;
    let lead = delivered_lead(&env, "subid=clk12&status=sale&revenue=30&tid=ORD-12").await;

    // The refund URL is removed: nothing looks conversions up any more.
    std::fs::remove_file(env.dir.path().join("rules").join("refunds.toml")).unwrap();
    env.relay().reload().expect("reload");
    wait_lookup_indexes(&env, &[]).await;

    // It comes back after a restart: the index is built from the conversions already stored.
    std::fs::write(env.dir.path().join("rules").join("refunds.toml"), REFUNDS).unwrap();
    env.restart(|_| {}).await;
    wait_lookup_indexes(&env, &["dedupe_lookup:order_id:life"]).await;
    let refund = send(&env, "refunds", "order=ORD-12&amount=-30").await;
    assert_eq!(refund["status"], "update", "{refund}");
    assert_eq!(refund["original"], lead, "{refund}");
    env.stop().await;
}

/// The same on a PostgreSQL store, where instances build the index CONCURRENTLY.
#[cfg(feature = "postgres")]
mod on_postgres {
    use super::*;

    const INDEX: &str = "dedupe_lookup:order_id:life";

    use crate::support::pg::sql;

    /// The lookup indexes of `dedupe` on the database at `url`: (name, valid), by name.
    async fn lookup_indexes(url: &str) -> Vec<(String, bool)> {
        sql(url)
            .await
            .query(
                "SELECT c.relname::text, i.indisvalid FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = 'dedupe'::regclass AND c.relname::text NOT LIKE '%pkey'
                   AND c.relname::text <> 'dedupe_expires'
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Waits until [`INDEX`] is the only lookup index, and valid.
    async fn wait_built(url: &str, what: &str) {
        let want = vec![(INDEX.to_string(), true)];
        wait::expect_value(
            Duration::from_secs(10),
            what,
            async || lookup_indexes(url).await,
            |have| *have == want,
        )
        .await;
    }

    /// How often [`INDEX`] was searched, as PostgreSQL counts it.
    async fn lookup_scans(url: &str) -> i64 {
        sql(url)
            .await
            .query_one(
                "SELECT COALESCE(sum(idx_scan), 0)::bigint FROM pg_stat_user_indexes
                 WHERE indexrelname = $1",
                &[&INDEX],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A delivered lead of order `n`, then its refund: the refund finds the lead.
    async fn refund_finds_its_lead(env: &Env, n: u32) {
        let lead = delivered_lead(
            env,
            &format!("subid=clk{n}&status=sale&revenue=30&tid=ORD-{n}"),
        )
        .await;
        let refund = send(env, "refunds", &format!("order=ORD-{n}&amount=-30")).await;
        assert_eq!(refund["status"], "update", "{refund}");
        assert_eq!(refund["original"], lead, "{refund}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refund_source_gets_a_lookup_index_its_lookups_search_and_a_broken_one_is_rebuilt() {
        let url = crate::support::pg::fresh_db().await;
        // Every session of the relay plans prepared statements generically (as PostgreSQL does
        // by itself after a few runs) and as if scans cost the earth: a lookup whose query
        // cannot use the partial index (a parameter where the index names the source) scans
        // anyway, and the index's scan count below stays 0.
        let db = url.rsplit('/').next().unwrap().to_string();
        sql(&url)
            .await
            .batch_execute(&format!(
                "ALTER DATABASE {db} SET enable_seqscan = off;
                 ALTER DATABASE {db} SET plan_cache_mode = force_generic_plan"
            ))
            .await
            .unwrap();
        let on_pg = |u: String| move |c: &mut postback_relay::config::Config| c.store.url = Some(u);
        let mut env = Env::start(&[("life", LIFE), ("refunds", REFUNDS)], on_pg(url.clone())).await;
        // Only the refund source's index: the general ones every insert paid for are gone.
        wait_built(&url, "the lookup index of life, valid, and no other").await;
        refund_finds_its_lead(&env, 21).await;
        // The relay's lookup searched the index (statistics reach the view within a second).
        wait::expect_value(
            Duration::from_secs(5),
            "a search of the lookup index",
            async || lookup_scans(&url).await,
            |n| *n > 0,
        )
        .await;

        // A build that was interrupted leaves an invalid index behind: the next start rebuilds it.
        env.relay.take().unwrap().stop().await;
        sql(&url)
            .await
            .batch_execute(&format!(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '\"{INDEX}\"'::regclass"
            ))
            .await
            .unwrap();
        assert_eq!(lookup_indexes(&url).await, vec![(INDEX.to_string(), false)]);
        env.restart(on_pg(url.clone())).await;
        wait_built(&url, "the invalid lookup index rebuilt").await;
        refund_finds_its_lead(&env, 22).await;
        env.stop().await;
    }
}
