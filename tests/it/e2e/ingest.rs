//! Ingest answers and what reaches Scaleo.

use std::time::Duration;

use serde_json::json;

use crate::e2e::support::{Env, SHOP};
use crate::support::wait;

/// The shop rule behind an allow list of 203.0.113.0/24; loopback optionally a trusted proxy.
async fn allow_list_env(trust_loopback: bool) -> Env {
    let rule = format!("[auth]\nallow_ips = [\"203.0.113.0/24\"]\n{SHOP}");
    Env::start(&[("shop", &rule)], |c| {
        if trust_loopback {
            c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        }
    })
    .await
}

#[tokio::test]
async fn accepted_postback_reaches_scaleo_with_the_exact_body() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, body) = env
        .get("/postback/shop?cid=abc123&amt=1999&st=1&oid=A-9")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    assert!(body["id"].as_i64().is_some());
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    let got = &env.sandbox.accepted()[0];
    assert_eq!(
        got.to_string(),
        r#"{"adv_order_id":"A-9","click_id":"abc123","conv_status":"approved","goal_id":7,"revenue":19.99}"#
    );
    let calls = env.sandbox.received();
    assert!(calls[0].query_redacted.contains("api-key=***"));
    env.stop().await;
}

#[tokio::test]
async fn rejected_postback_answers_422_naming_the_field_and_is_stored_raw() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, body) = env.get("/postback/shop?cid=%7Bclickid%7D&amt=100").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["status"], "rejected");
    assert!(
        body["reason"].as_str().unwrap().contains("click_id"),
        "{body}"
    );
    let id = body["id"].as_i64().expect("a rejected postback is stored");
    let rec = env.relay().store.get(id).await.unwrap().expect("record");
    assert_eq!(rec.summary.state.as_str(), "rejected");
    assert_eq!(rec.raw.query, "cid=%7Bclickid%7D&amt=100");
    env.stop().await;
}

#[tokio::test]
async fn skip_rule_answers_skipped_and_forwards_nothing() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, body) = env.get("/postback/shop?cid=x&test=1").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("skipped")));
    assert_eq!(body["reason"], "test postback");
    let (status, _) = env.get("/postback/shop?cid=y&amt=1").await;
    assert_eq!(status, 200);
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    // The skipped postback must not follow: 200 ms is several forwarder polls.
    wait::quiet(Duration::from_millis(200)).await;
    assert_eq!(
        env.sandbox.received().len(),
        1,
        "the skipped postback must never be sent"
    );
    env.stop().await;
}

#[tokio::test]
async fn repeated_postback_is_a_duplicate_and_forwarded_once() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let q = "/postback/shop?cid=dup1&amt=500&oid=O-1";
    let (s1, b1) = env.get(q).await;
    let (s2, b2) = env.get(q).await;
    assert_eq!((s1, b1["status"].as_str()), (200, Some("accepted")));
    assert_eq!((s2, b2["status"].as_str()), (200, Some("duplicate")));
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    // No second send of the duplicate: 300 ms is several forwarder polls.
    wait::quiet(Duration::from_millis(300)).await;
    assert_eq!(env.sandbox.received().len(), 1);
    // A different order id on the same click is a different conversion.
    let (_, b3) = env.get("/postback/shop?cid=dup1&amt=500&oid=O-2").await;
    assert_eq!(b3["status"], "accepted");
    env.stop().await;
}

#[tokio::test]
async fn token_is_required_checked_and_never_stored_in_clear() {
    let rule = format!("[auth]\ntoken = \"s3cret-token\"\n{SHOP}");
    let env = Env::start(&[("shop", &rule)], |_| {}).await;
    let (status, body) = env.get("/postback/shop?cid=a&amt=1").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = env.get("/postback/shop?cid=a&amt=1&token=wrong").await;
    assert_eq!(status, 401);
    let (status, body) = env
        .get("/postback/shop?cid=a&amt=1&token=s3cret-token")
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_i64().unwrap();
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.raw.query, "cid=a&amt=1&token=***");
    let resp = env
        .client
        .get(env.url("/postback/shop?cid=b&amt=1"))
        .header("X-Postback-Token", "s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        env.sandbox
            .wait_for_accepted(2, Duration::from_secs(10))
            .await
    );
    for call in env.sandbox.received() {
        assert!(
            !call.raw_body.contains("s3cret-token"),
            "the token must not be forwarded"
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn caller_outside_the_allow_list_gets_403() {
    let env = allow_list_env(false).await;
    let (status, body) = env.get("/postback/shop?cid=a").await;
    assert_eq!((status, body["status"].as_str()), (403, Some("forbidden")));
    env.stop().await;
}

/// The status of a postback sent with these `X-Forwarded-For` lines.
async fn status_via(env: &Env, query: &str, forwarded_for: &[&str]) -> u16 {
    let mut req = env.client.get(env.url(query));
    for line in forwarded_for {
        req = req.header("X-Forwarded-For", *line);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_is_believed() {
    let env = allow_list_env(true).await;
    let status = status_via(&env, "/postback/shop?cid=a&amt=1", &["203.0.113.50"]).await;
    assert_eq!(status, 200);
    env.stop().await;
}

#[tokio::test]
async fn a_forged_forwarded_for_line_cannot_pass_the_allow_list() {
    let env = allow_list_env(true).await;
    // The client forges the first line; the proxy adds its own line with the real caller.
    let lines = ["203.0.113.7", "198.51.100.9"];
    let status = status_via(&env, "/postback/shop?cid=forged&amt=1", &lines).await;
    assert_eq!(status, 403);
    env.stop().await;
}

#[tokio::test]
async fn a_forwarded_for_entry_that_is_not_a_plain_address_stops_the_walk() {
    let env = allow_list_env(true).await;
    // The client forges an allowed address; the proxy appends the real caller with its port
    // (as some load balancers do). The forged entry must not be taken for the caller.
    for real in ["198.51.100.9:4711", "unknown", "[2001:db8::9]:443"] {
        let line = format!("203.0.113.7, {real}");
        let status = status_via(&env, "/postback/shop?cid=forged&amt=1", &[&line]).await;
        assert_eq!(status, 403, "X-Forwarded-For ending in {real}");
    }
    // An allowed caller written with its port by the proxy is still recognised.
    let status = status_via(&env, "/postback/shop?cid=port&amt=1", &["203.0.113.8:5123"]).await;
    assert_eq!(status, 200);
    env.stop().await;
}

#[tokio::test]
async fn unknown_source_is_404_and_pixel_is_a_gif() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, body) = env.get("/postback/nope?cid=a").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (404, Some("unknown_source"))
    );
    let resp = env
        .client
        .get(env.url("/pixel/shop?cid=px1&amt=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "image/gif");
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-cache")
    );
    let gif = resp.bytes().await.unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    assert_eq!(env.sandbox.accepted()[0]["click_id"], "px1");
    env.stop().await;
}

#[tokio::test]
async fn head_answers_like_get_without_storing() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let resp = env
        .client
        .head(env.url("/postback/shop?cid=h1&amt=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = env
        .client
        .head(env.url("/postback/shop?amt=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    // A HEAD stores nothing, so nothing may be sent: 300 ms is several forwarder polls.
    wait::quiet(Duration::from_millis(300)).await;
    assert!(env.sandbox.received().is_empty());
    let (_, body) = env.get("/postback/shop?cid=h1&amt=1").await;
    assert_eq!(
        body["status"], "accepted",
        "HEAD must not have registered a dedupe key"
    );
    env.stop().await;
}

#[tokio::test]
async fn post_form_and_json_bodies_are_mapped_like_queries() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let resp = env
        .client
        .post(env.url("/postback/shop"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("cid=form1&amt=250")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = env
        .client
        .post(env.url("/postback/shop?cid=json1"))
        .json(&json!({"amt": 1999, "oid": "J-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        env.sandbox
            .wait_for_accepted(2, Duration::from_secs(10))
            .await
    );
    let mut got: Vec<String> = env
        .sandbox
        .accepted()
        .iter()
        .map(|b| b.to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            r#"{"adv_order_id":"J-1","click_id":"json1","goal_id":7,"revenue":19.99}"#.to_string(),
            r#"{"click_id":"form1","goal_id":7,"revenue":2.5}"#.to_string(),
        ]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_token_in_a_post_body_is_checked_and_stored_only_redacted() {
    let rule = format!("[auth]\ntoken = \"s3cret-token\"\n{SHOP}");
    let env = Env::start(&[("shop", &rule)], |_| {}).await;
    let post = |body: &'static str| {
        env.client
            .post(env.url("/postback/shop?cid=pb1"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    assert_eq!(
        post("amt=1&token=wrong").await.unwrap().status().as_u16(),
        401
    );
    let resp = post("amt=1&token=s3cret-token").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.raw.query, "cid=pb1&amt=1&token=***");
    env.stop().await;
}

#[tokio::test]
async fn dedupe_survives_a_restart() {
    let mut env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let q = "/postback/shop?cid=rs1&amt=500&oid=R-1";
    assert_eq!(env.get(q).await.1["status"], "accepted");
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    env.restart(|_| {}).await;
    assert_eq!(env.get(q).await.1["status"], "duplicate");
    // No second send after the restart: 300 ms is several forwarder polls.
    wait::quiet(Duration::from_millis(300)).await;
    assert_eq!(env.sandbox.received().len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn a_rejected_postback_keeps_its_click_id_for_lookups() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, body) = env.get("/postback/shop?cid=look1&amt=12abc").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"].as_str().unwrap().starts_with("revenue"),
        "{body}"
    );
    let filter = postback_relay::store::Filter {
        click_id: Some("look1".into()),
        ..Default::default()
    };
    let (found, _) = env.relay().store.list(filter, 10, None).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].state.as_str(), "rejected");
    assert_eq!(found[0].click_id.as_deref(), Some("look1"));
    env.stop().await;
}

/// Over `server.max_connections` a new ingest connection waits (in the backlog) until one
/// closes, while the admin listener keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_connections_are_capped_and_admin_keeps_answering() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = crate::e2e::support::Env::start(&[("shop", crate::e2e::support::SHOP)], |c| {
        c.server.max_connections = 3;
    })
    .await;
    let addr = env.relay().ingest_addr;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Let the relay accept them: nothing it exposes tells when an idle connection was
    // accepted, and 200 ms on loopback is plenty for three accepts.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(500), extra.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a connection over the cap was served at once"
    );
    let ready = env
        .client
        .get(format!("http://{}/healthz", env.relay().admin_addr))
        .send()
        .await
        .expect("the admin listener answers while ingest is full");
    assert_eq!(ready.status().as_u16(), 200);

    drop(idle.pop());
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    env.stop().await;
}

// --- signatures -------------------------------------------------------------------------

/// An ironSource-style offerwall: md5 over named parameters and a secret, in `signature`.
const SIGNED: &str = r#"
[auth.signature]
algorithm = "md5"
message   = "{timestamp}{eventId}{userId}{rewards}k3y"
param     = "signature"
encoding  = "hex"

[fields]
click_id     = "userId"
adv_order_id = "eventId"
adv_param1   = "rewards"
"#;

fn md5_hex(text: &str) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(text.as_bytes()))
}

#[tokio::test]
async fn signed_postback_good_200_wrong_or_missing_401_and_stored_redacted() {
    let env = Env::start(&[("iron", SIGNED)], |_| {}).await;
    let q = "timestamp=202405200941&eventId=E1&userId=clk9&rewards=150";
    let good = md5_hex("202405200941E1clk9150k3y");
    // Hex in either case.
    for sig in [good.clone(), good.to_uppercase()] {
        let (status, body) = env
            .get(&format!("/postback/iron?{q}&signature={sig}"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            matches!(body["status"].as_str(), Some("accepted" | "duplicate")),
            "{body}"
        );
    }
    let (status, body) = env
        .get(&format!("/postback/iron?{q}&signature={good}"))
        .await;
    let id = body["id"].as_i64().unwrap();
    assert_eq!(status, 200);
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.raw.query, format!("{q}&signature=***"));
    assert!(!rec.raw.query.contains(&good));

    let wrong = md5_hex("202405200941E1clk9151k3y");
    let tampered = "timestamp=202405200941&eventId=E1&userId=clk9&rewards=9999";
    for query in [
        format!("{q}&signature={wrong}"),
        format!("{tampered}&signature={good}"),
        format!("{q}&signature=not-hex"),
        q.to_string(),
    ] {
        let (status, body) = env.get(&format!("/postback/iron?{query}")).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (401, Some("unauthorized")),
            "{query}: {body}"
        );
        assert!(body["id"].is_null(), "a refused postback is not stored");
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.contains("signature"), "{reason}");
        assert!(
            !reason.contains(&good) && !reason.contains("k3y"),
            "{reason}"
        );
    }
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    // None of the refused postbacks may follow: 200 ms is several forwarder polls.
    wait::quiet(Duration::from_millis(200)).await;
    assert_eq!(env.sandbox.received().len(), 1);
    let sent = &env.sandbox.accepted()[0];
    assert_eq!(sent["click_id"], "clk9");
    assert!(!sent.to_string().contains(&good));
    env.stop().await;
}

#[tokio::test]
async fn webhook_hmac_of_the_raw_body_in_a_header_is_checked() {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let rule = r#"
[auth.signature]
algorithm = "hmac-sha256"
message   = "{@body}"
header    = "X-Signature"
encoding  = "base64"
secret    = "whs3cret"

[fields]
click_id     = "cid"
adv_order_id = "oid"
revenue      = { from = "total", decimal = "comma" }
"#;
    let env = Env::start(&[("hook", rule)], |_| {}).await;
    let body = r#"{"cid":"c1","oid":"O-1","total":1.500}"#;
    let sign = |b: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whs3cret").unwrap();
        mac.update(b.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    let post = |b: &str, sig: Option<String>| {
        let mut req = env
            .client
            .post(env.url("/postback/hook"))
            .header("Content-Type", "application/json")
            .body(b.to_string());
        if let Some(sig) = sig {
            req = req.header("X-Signature", sig);
        }
        req.send()
    };
    let resp = post(body, Some(sign(body))).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The same JSON with other spacing is another body: its signature is another one.
    let respaced = r#"{"cid": "c1", "oid": "O-1", "total": 1.500}"#;
    let resp = post(respaced, Some(sign(body))).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = post(body, None).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    // A JSON number is read as JSON even under decimal = "comma": 1.500 is 1.5, not 1500.
    assert_eq!(
        env.sandbox.accepted()[0].to_string(),
        r#"{"adv_order_id":"O-1","click_id":"c1","revenue":1.5}"#
    );
    env.stop().await;
}

#[tokio::test]
async fn json_body_numbers_are_stored_marked_and_a_replay_reads_them_the_same() {
    let rule = "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", decimal = \"comma\" }\nadv_order_id = { from = \"oid\", required = true }\n";
    let env = Env::start(&[("shop", rule)], |_| {}).await;
    let resp = env
        .client
        .post(env.url("/postback/shop?x=1"))
        .header("Content-Type", "application/json")
        .body(r#"{"cid":"c2","amt":12.345}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422, "no oid: rejected, stored raw");
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["id"].as_i64().unwrap();
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.raw.query, "x=1&amt=12.345&cid=c2&%40json_numbers=1");
    // The rule, fixed to need no order id, replays the stored postback.
    let relaxed = postback_relay::rules::compile(
        "shop",
        "shop.toml",
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", decimal = \"comma\" }\n",
        postback_relay::rules::EnvMode::Ignore,
    )
    .unwrap();
    match postback_relay::replay::remap(&relaxed, &rec, &jiff::tz::TimeZone::UTC) {
        postback_relay::store::NewState::Queued { body, .. } => {
            assert_eq!(
                serde_json::Value::Object(body).to_string(),
                r#"{"click_id":"c2","revenue":12.345}"#
            )
        }
        other => panic!("{other:?}"),
    }
    env.stop().await;
}

// --- the answer a sender expects ---------------------------------------------------------

#[tokio::test]
async fn answer_body_is_sent_as_text_and_a_reject_answers_200_when_asked() {
    let rule = r#"
[answer]
body   = "{eventId}:OK"
reject = 200

[fields]
click_id     = "userId"
adv_order_id = "eventId"
revenue      = { from = "amt", required = true }
"#;
    let env = Env::start(&[("iron", rule)], |_| {}).await;
    let get = |q: &str| {
        env.client
            .get(env.url(&format!("/postback/iron?{q}")))
            .send()
    };
    for (q, want) in [
        ("eventId=E1&userId=u1&amt=5", "E1:OK"),
        ("eventId=E1&userId=u1&amt=5", "E1:OK"),
    ] {
        let resp = get(q).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(resp.text().await.unwrap(), want, "accepted, then duplicate");
    }
    // HEAD answers with the head of the GET: text, and the text's length.
    let head = env
        .client
        .head(env.url("/postback/iron?eventId=H1&userId=u1&amt=5"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert!(
        head.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(head.headers()["content-length"], "5", "the length of H1:OK");
    // A reject: 200 with the JSON answer naming the reason, stored as rejected.
    let resp = get("eventId=E2&userId=u1").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "rejected", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("revenue"),
        "{body}"
    );
    let id = body["id"].as_i64().unwrap();
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.summary.state.as_str(), "rejected");
    // The sender retries the same broken postback: the same reject with the same id,
    // counted on the record instead of stored again.
    for _ in 0..3 {
        let resp = get("eventId=E2&userId=u1").await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let again: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            (again["status"].as_str(), again["id"].as_i64()),
            (Some("rejected"), Some(id))
        );
        assert_eq!(again["reason"], body["reason"]);
    }
    assert_eq!(env.relay().store.get(id).await.unwrap().unwrap().repeats, 3);
    assert!(
        env.relay().store.get(id + 1).await.unwrap().is_none(),
        "no copies stored"
    );
    env.stop().await;
}

#[tokio::test]
async fn without_answer_rejects_are_422_json_and_repeats_are_still_counted() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (status, first) = env.get("/postback/shop?cid=%7Bclickid%7D&amt=100").await;
    assert_eq!(status, 422);
    let (status, again) = env.get("/postback/shop?cid=%7Bclickid%7D&amt=100").await;
    assert_eq!((status, again["id"].clone()), (422, first["id"].clone()));
    let id = first["id"].as_i64().unwrap();
    assert_eq!(env.relay().store.get(id).await.unwrap().unwrap().repeats, 1);
    // Another broken query is another record.
    let (_, other) = env.get("/postback/shop?cid=%7Bclickid%7D&amt=101").await;
    assert_ne!(other["id"], first["id"]);
    // An accepted postback still answers JSON.
    let (status, ok) = env.get("/postback/shop?cid=c&amt=1").await;
    assert_eq!((status, ok["status"].as_str()), (200, Some("accepted")));
    env.stop().await;
}
