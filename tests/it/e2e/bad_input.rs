//! Hostile and malformed requests get clear 4xx answers and the server keeps serving.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::e2e::support::{Env, SHOP};

async fn still_serving(env: &Env) {
    let (status, body) = env.get("/postback/shop?cid=alive&amt=1").await;
    assert_eq!(status, 200, "the server must keep serving: {body}");
}

/// Sends raw bytes and returns the status line's code.
async fn raw(env: &Env, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(env.relay().ingest_addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn huge_query_gets_414_with_a_reason() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let q = format!("/postback/shop?cid=a&pad={}", "x".repeat(20_000));
    let (status, body) = env.get(&q).await;
    assert_eq!(status, 414);
    assert!(
        body["reason"].as_str().unwrap().contains("max_url_bytes"),
        "{body}"
    );
    still_serving(&env).await;
    env.stop().await;
}

#[tokio::test]
async fn thousands_of_parameters_get_414() {
    let env = Env::start(&[("shop", SHOP)], |c| c.server.max_url_bytes = 1 << 20).await;
    let q = format!("/postback/shop?cid=a{}", "&p=1".repeat(5000));
    let (status, body) = env.get(&q).await;
    assert_eq!(status, 414, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("max_params"),
        "{body}"
    );
    still_serving(&env).await;
    env.stop().await;
}

#[tokio::test]
async fn too_many_query_parameters_get_414_even_on_a_post_with_a_body() {
    let env = Env::start(&[("shop", SHOP)], |c| c.server.max_params = 10).await;
    // The query alone is over the limit: a URL problem (414), whatever the body holds.
    let resp = env
        .client
        .post(env.url(&format!("/postback/shop?cid=a{}", "&p=1".repeat(20))))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amt=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 414);
    // The query is within it and the body pushes the count over: 413.
    let resp = env
        .client
        .post(env.url("/postback/shop?cid=a"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("p=1&".repeat(20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    env.stop().await;
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let resp = env
        .client
        .post(env.url("/postback/shop"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("cid=a&pad={}", "x".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    still_serving(&env).await;
    env.stop().await;
}

#[tokio::test]
async fn huge_headers_get_431() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let resp = env
        .client
        .get(env.url("/postback/shop?cid=a"))
        .header("x-junk", "y".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    still_serving(&env).await;
    env.stop().await;
}

#[tokio::test]
async fn invalid_percent_encoding_and_non_utf8_are_kept_not_fatal() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    // A malformed % sequence stays literal; invalid UTF-8 becomes U+FFFD.
    let (status, body) = env.get("/postback/shop?cid=ab%zz%E9&oid=%FF%FE").await;
    assert_eq!(status, 200, "{body}");
    let rec = env.record_of(&body).await;
    let sent = rec.body.unwrap();
    assert_eq!(sent["click_id"], "ab%zz\u{FFFD}");
    assert_eq!(sent["adv_order_id"], "\u{FFFD}\u{FFFD}");
    still_serving(&env).await;
    env.stop().await;
}

#[tokio::test]
async fn garbage_and_slow_clients_do_not_stop_the_server() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    assert_eq!(raw(&env, b"NOT HTTP AT ALL\r\n\r\n").await, 400);
    assert_eq!(
        raw(
            &env,
            b"DELETE /postback/shop?cid=a HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .await,
        405
    );
    // A slow client that never finishes its head is cut off; others are served meanwhile.
    let slow = TcpStream::connect(env.relay().ingest_addr).await.unwrap();
    let mut slow = slow;
    slow.write_all(b"GET /postback/shop?cid=slow HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    still_serving(&env).await;
    drop(slow);
    env.stop().await;
}

#[tokio::test]
async fn slow_post_body_gets_408() {
    let env = Env::start(&[("shop", SHOP)], |c| {
        c.server.read_timeout = Duration::from_millis(300)
    })
    .await;
    let code = raw(
        &env,
        b"POST /postback/shop HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ncid=",
    )
    .await;
    assert_eq!(code, 408);
    still_serving(&env).await;
    env.stop().await;
}
