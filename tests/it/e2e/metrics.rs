//! `/metrics` scraped over loopback and parsed: counters move as postbacks flow. The registry
//! is process-wide, so each test uses its own source names and compares before and after.

use reqwest::Method;

use crate::e2e::admin_client::{admin_call, admin_url, metric, scrape, with_admin};
use crate::e2e::support::{Env, SHOP};

fn postbacks(text: &str, source: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!(r#"postback_relay_postbacks_total{{source="{source}",outcome="{outcome}"}}"#),
    )
}

#[tokio::test]
async fn postback_counters_move_by_source_and_outcome() {
    let locked = format!("[auth]\ntoken = \"m-t0ken\"\n{SHOP}");
    let env = Env::start(&[("m_shop", SHOP), ("m_locked", &locked)], with_admin).await;
    let before = scrape(&env).await;
    for q in [
        "cid=m1&amt=1&oid=A",
        "cid=m2&amt=1&oid=B",
        "cid=m1&amt=1&oid=A", // duplicate
        "amt=1",              // rejected: no click id
        "cid=m3&test=1",      // skipped
    ] {
        env.get(&format!("/postback/m_shop?{q}")).await;
    }
    assert_eq!(env.get("/postback/m_locked?cid=z&token=wrong").await.0, 401);
    let after = scrape(&env).await;
    for (source, outcome, delta) in [
        ("m_shop", "accepted", 2.0),
        ("m_shop", "duplicate", 1.0),
        ("m_shop", "rejected", 1.0),
        ("m_shop", "skipped", 1.0),
        ("m_locked", "unauthorized", 1.0),
        ("m_locked", "accepted", 0.0),
    ] {
        assert_eq!(
            postbacks(&after, source, outcome) - postbacks(&before, source, outcome),
            delta,
            "{source} {outcome}\n{after}"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn metrics_expose_queue_gauges_histogram_and_reloads_in_the_text_format() {
    let env = Env::start(&[("g_shop", SHOP)], with_admin).await;
    env.get("/postback/g_shop?amt=1").await;
    env.relay().reload().expect("rules reload");
    let resp = env
        .client
        .get(admin_url(&env, "/metrics"))
        .send()
        .await
        .unwrap();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = resp.text().await.unwrap();
    for line in [
        "# TYPE postback_relay_postbacks counter",
        "# TYPE postback_relay_forward_attempts counter",
        "# TYPE postback_relay_queue_depth gauge",
        "# TYPE postback_relay_oldest_queued_age_seconds gauge",
        "# TYPE postback_relay_dead_letter_depth gauge",
        "# TYPE postback_relay_delivery_latency_seconds histogram",
        "# TYPE postback_relay_rate_limit_waits counter",
        "# TYPE postback_relay_rule_reloads counter",
        "# TYPE postback_relay_rules_reload_failing gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    for state in ["rejected", "queued", "delivered", "dead"] {
        let series = format!(r#"postback_relay_queue_depth{{state="{state}"}} "#);
        assert!(text.contains(&series), "missing {series}\n{text}");
    }
    assert!(metric(&text, r#"postback_relay_rule_reloads_total{result="ok"}"#) >= 1.0);
    assert!(text.contains("postback_relay_delivery_latency_seconds_bucket{le=\"+Inf\"}"));
    let (status, _) = admin_call(&env, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200, "no token needed");
    env.stop().await;
}
