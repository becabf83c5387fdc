//! Request lines as senders really write them (raw spaces, raw macros, a raw `#`, Latin-1),
//! sent byte for byte over one keep-alive connection: each is answered and stored like its
//! percent-encoded twin, never refused with a bare 400 or cut at the `#`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{Env, SHOP};

/// Sends `head` (a request line, no line end) with a Host header and reads one answer:
/// (status, JSON body).
async fn exchange(conn: &mut TcpStream, head: &[u8]) -> (u16, serde_json::Value) {
    let mut req = head.to_vec();
    req.extend_from_slice(b"\r\nHost: relay\r\n\r\n");
    conn.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                let body = serde_json::from_slice(&got[end + 4..end + 4 + length]).unwrap();
                return (status, body);
            }
        }
        let n = tokio::time::timeout_at(deadline, conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn raw_spaces_macros_hash_and_latin1_are_stored_like_their_encoded_form() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let mut conn = TcpStream::connect(env.relay().ingest_addr).await.unwrap();

    let (status, body) = exchange(
        &mut conn,
        b"GET /postback/shop?cid=abc 1&amt=1999&st=1&oid=A 9 HTTP/1.1",
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    assert!(
        env.sandbox
            .wait_for_accepted(1, Duration::from_secs(10))
            .await
    );
    assert_eq!(
        env.sandbox.accepted()[0].to_string(),
        r#"{"adv_order_id":"A 9","click_id":"abc 1","conv_status":"approved","goal_id":7,"revenue":19.99}"#
    );

    // A macro left raw is no value, as when it arrives encoded: 422 naming the field.
    let (status, body) = exchange(
        &mut conn,
        b"GET /postback/shop?cid=<clickid>&amt=100 HTTP/1.1",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("click_id"),
        "{body}"
    );

    // A raw `#` is data, not the end of the query: what follows it is kept.
    let (status, body) = exchange(
        &mut conn,
        b"GET /postback/shop?cid=h1&oid=#1001&amt=5 HTTP/1.1",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rec = env.record_of(&body).await;
    assert_eq!(rec.raw.query, "cid=h1&oid=%231001&amt=5");
    let mapped = rec.body.expect("a mapped body");
    assert_eq!(mapped["adv_order_id"], "#1001");
    assert_eq!(mapped["revenue"], serde_json::json!(0.05));

    // A Latin-1 byte is invalid UTF-8: kept as U+FFFD, as the decoding rules say.
    let (status, body) =
        exchange(&mut conn, b"GET /postback/shop?cid=caf\xe9&amt=5 HTTP/1.1").await;
    assert_eq!(status, 200, "{body}");
    let rec = env.record_of(&body).await;
    assert_eq!(rec.summary.click_id.as_deref(), Some("caf\u{FFFD}"));
    env.stop().await;
}
