//! The sandbox as a real server on 127.0.0.1:0, driven by a reqwest client.

use std::net::SocketAddr;
use std::time::Duration;

use postback_relay::sandbox::{MULTIPLE_CONVERSIONS, Sandbox, SandboxConfig, Step, UPDATE_PATH};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY: &str = "sandbox-secret-key";

/// Installs a global subscriber (writing nowhere) once per test binary, before any sandbox
/// runs: `tracing` caches each callsite's interest process-wide when it is first reached,
/// and a thread without any subscriber would cache "never", hiding the line from the test
/// that captures logs with a thread-local subscriber.
fn quiet_global_subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

async fn start() -> Sandbox {
    quiet_global_subscriber();
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let cfg = SandboxConfig {
        api_key: KEY.to_owned(),
    };
    Sandbox::start(addr, cfg).await.expect("sandbox starts")
}

fn client() -> reqwest::Client {
    client_with_timeout(Duration::from_secs(10))
}

fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    // reqwest is built without a bundled TLS provider; plain http still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client")
}

fn conversion_url(sandbox: &Sandbox, key: &str) -> String {
    format!(
        "{}/api/v2/network/tracking/conv-click-id?api-key={key}",
        sandbox.base_url()
    )
}

/// POSTs `body` as JSON with the right key; returns the status, Retry-After and JSON answer.
async fn post(sandbox: &Sandbox, body: &Value) -> (StatusCode, Option<String>, Value) {
    let response = client()
        .post(conversion_url(sandbox, KEY))
        .json(body)
        .send()
        .await
        .expect("answer");
    answer_of(response).await
}

fn update_url(sandbox: &Sandbox, key: &str) -> String {
    format!("{}{UPDATE_PATH}?api-key={key}", sandbox.base_url())
}

/// PUTs `body` as JSON to `leads/update` with the right key; returns the status and answer.
async fn put(sandbox: &Sandbox, body: &Value) -> (StatusCode, Value) {
    let response = client()
        .put(update_url(sandbox, KEY))
        .json(body)
        .send()
        .await
        .expect("answer");
    let (status, _, answer) = answer_of(response).await;
    (status, answer)
}

/// Creates a conversion for `click_id` with these extra fields; returns its answer's `info`.
async fn create(sandbox: &Sandbox, click_id: &str, fields: Value) -> Value {
    let mut body = json!({"click_id": click_id});
    body.as_object_mut()
        .expect("object")
        .extend(fields.as_object().expect("object").clone());
    let (status, _, answer) = post(sandbox, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["info"].clone()
}

async fn listing(sandbox: &Sandbox) -> Vec<Value> {
    let response = client()
        .get(format!("{}/sandbox/conversions", sandbox.base_url()))
        .send()
        .await
        .expect("answer");
    let (status, _, listing) = answer_of(response).await;
    assert_eq!(status, StatusCode::OK);
    listing.as_array().expect("array").clone()
}

async fn answer_of(response: reqwest::Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("ascii").to_owned());
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, retry_after, json)
}

fn message(answer: &Value) -> &str {
    answer["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn accepts_a_valid_conversion_with_a_transaction_id() {
    let sandbox = start().await;
    let body = json!({"click_id": "abc123", "revenue": 19.99, "goal_id": 12,
                      "conv_status": "approved", "adv_order_id": "A-9",
                      "timestamp": "2023-11-14 22:13:20"});
    let (status, _, answer) = post(&sandbox, &body).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "success");
    let info = &answer["info"];
    assert_eq!(info["status"], "success");
    assert_eq!(info["conv_status"], "approved");
    assert_eq!(info["goal_id"].as_u64(), Some(12));
    let transaction_id = info["transaction_id"].as_str().expect("transaction_id");
    assert_eq!(transaction_id.len(), 36);
    assert_eq!(sandbox.received()[0].body.as_ref(), Some(&body));
    assert_eq!(sandbox.accepted(), vec![body]);
    // The number keeps its exact text end to end.
    assert_eq!(sandbox.accepted()[0]["revenue"].to_string(), "19.99");
}

#[tokio::test]
async fn names_the_unknown_parameter_in_a_400() {
    let sandbox = start().await;
    let (status, _, answer) = post(&sandbox, &json!({"click_id": "a", "clickid": "a"})).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["status"], "error");
    assert!(message(&answer).contains("clickid"), "{answer}");
    assert!(sandbox.accepted().is_empty());
}

#[tokio::test]
async fn answers_422_when_the_click_id_is_missing_or_blank() {
    let sandbox = start().await;
    for body in [json!({"revenue": 1}), json!({"click_id": "  "})] {
        let (status, _, answer) = post(&sandbox, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(answer["info"]["errors"]["click_id"].is_array(), "{answer}");
    }
}

#[tokio::test]
async fn answers_401_for_a_wrong_or_missing_key_and_never_records_the_key() {
    let sandbox = start().await;
    let wrong_key = "wrong-key-that-must-not-leak";
    let base = sandbox.base_url();
    let urls = [
        conversion_url(&sandbox, wrong_key),
        format!("{base}/api/v2/network/tracking/conv-click-id"),
    ];
    for url in urls {
        let response = client()
            .post(url)
            .json(&json!({"click_id": "a"}))
            .send()
            .await
            .expect("answer");
        let (status, _, answer) = answer_of(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer["code"].as_u64(), Some(401));
    }
    post(&sandbox, &json!({"click_id": "b"})).await;

    let received = sandbox.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].query_redacted, "api-key=***");
    for call in &received {
        let seen = format!("{call:?}");
        assert!(!seen.contains(wrong_key) && !seen.contains(KEY), "{seen}");
    }
    assert!(sandbox.accepted().len() == 1);
}

#[tokio::test]
async fn answers_422_for_a_string_revenue() {
    let sandbox = start().await;
    let (status, _, answer) = post(&sandbox, &json!({"click_id": "a", "revenue": "19.99"})).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["info"]["errors"]["revenue"].is_array(), "{answer}");
}

#[tokio::test]
async fn answers_422_for_goal_id_with_goal_alias() {
    let sandbox = start().await;
    let body = json!({"click_id": "a", "goal_id": 3, "goal_alias": "sale"});
    let (status, _, answer) = post(&sandbox, &body).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer["info"]["errors"]["goal_alias"].is_array(),
        "{answer}"
    );
}

#[tokio::test]
async fn answers_422_for_values_outside_scaleo_sets() {
    let sandbox = start().await;
    let body = json!({"click_id": "a", "conv_status": "paid", "deliver_lead": "1",
                      "timestamp": "2023-11-14T22:13:20Z", "goal_id": "12"});
    let (status, _, answer) = post(&sandbox, &body).await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = answer["info"]["errors"].as_object().expect("errors");
    let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        ["conv_status", "deliver_lead", "goal_id", "timestamp"]
    );
}

#[tokio::test]
async fn answers_multiple_conversions_for_a_second_conversion_of_the_same_click_and_goal() {
    let sandbox = start().await;
    let body = json!({"click_id": "dup", "goal_id": 7});
    let (first, _, _) = post(&sandbox, &body).await;
    let (second, _, answer) = post(&sandbox, &body).await;
    let (other_goal, _, _) = post(&sandbox, &json!({"click_id": "dup", "goal_id": 8})).await;

    assert_eq!(first, StatusCode::OK);
    assert_eq!(second, StatusCode::BAD_REQUEST);
    assert_eq!(message(&answer), MULTIPLE_CONVERSIONS);
    assert_eq!(answer["info"]["message"], MULTIPLE_CONVERSIONS);
    assert_eq!(other_goal, StatusCode::OK);
    assert_eq!(sandbox.accepted().len(), 2);
}

#[tokio::test]
async fn accepts_repeats_when_multiple_conversions_are_allowed() {
    let sandbox = start().await;
    sandbox.allow_multiple_conversions(true);
    let body = json!({"click_id": "again"});
    assert_eq!(post(&sandbox, &body).await.0, StatusCode::OK);
    assert_eq!(post(&sandbox, &body).await.0, StatusCode::OK);
}

#[tokio::test]
async fn scripted_500_then_answers_normally() {
    let sandbox = start().await;
    sandbox.script([Step::status(500)]);
    let body = json!({"click_id": "retry-me"});

    let (first, _, answer) = post(&sandbox, &body).await;
    assert_eq!(first, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer["code"].as_u64(), Some(500));
    let (second, _, _) = post(&sandbox, &body).await;
    assert_eq!(second, StatusCode::OK);

    let statuses: Vec<u16> = sandbox.received().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [500, 200]);
    assert_eq!(sandbox.pending_steps(), 0);
}

#[tokio::test]
async fn scripted_429_carries_retry_after() {
    let sandbox = start().await;
    sandbox.script([
        Step::too_many(30),
        Step::Answer {
            status: 503,
            body: "<html>maintenance</html>".into(),
            retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        },
    ]);
    let body = json!({"click_id": "slow"});

    let (status, retry_after, _) = post(&sandbox, &body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_deref(), Some("30"));
    let (status, retry_after, answer) = post(&sandbox, &body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        retry_after.as_deref(),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    assert_eq!(answer, "<html>maintenance</html>");
}

#[tokio::test]
async fn scripted_steps_come_before_key_and_body_checks() {
    let sandbox = start().await;
    sandbox.script([
        Step::Success,
        Step::Unauthorized,
        Step::multiple_conversions_in_200(),
    ]);
    let response = client()
        .post(conversion_url(&sandbox, "wrong"))
        .body("not json")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);

    let (status, _, _) = post(&sandbox, &json!({"click_id": "a"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, answer) = post(&sandbox, &json!({"click_id": "a"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["info"]["message"], MULTIPLE_CONVERSIONS);
}

#[tokio::test]
async fn hang_outlasts_the_client_timeout_and_the_retry_meets_multiple_conversions() {
    let sandbox = start().await;
    sandbox.script([Step::Hang(Duration::from_secs(5))]);
    let body = json!({"click_id": "slow", "goal_alias": "sale"});
    let impatient = client_with_timeout(Duration::from_millis(200));

    let timed_out = impatient
        .post(conversion_url(&sandbox, KEY))
        .json(&body)
        .send()
        .await;
    assert!(timed_out.is_err_and(|err| err.is_timeout()));
    assert!(sandbox.wait_for_accepted(1, Duration::from_secs(2)).await);

    let (status, _, answer) = post(&sandbox, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(message(&answer), MULTIPLE_CONVERSIONS);
}

#[tokio::test]
async fn drop_closes_the_connection_without_an_answer() {
    let sandbox = start().await;
    sandbox.script([Step::Drop]);
    let result = client()
        .post(conversion_url(&sandbox, KEY))
        .json(&json!({"click_id": "a"}))
        .send()
        .await;

    assert!(result.is_err());
    assert_eq!(sandbox.received()[0].status, 0);
    assert!(sandbox.accepted().is_empty());
}

#[tokio::test]
async fn lists_accepted_conversions_newest_last() {
    let sandbox = start().await;
    for click_id in ["first", "second"] {
        post(&sandbox, &json!({"click_id": click_id})).await;
    }
    post(&sandbox, &json!({"click_id": "first"})).await; // duplicate, not listed

    let response = client()
        .get(format!("{}/sandbox/conversions", sandbox.base_url()))
        .send()
        .await
        .expect("answer");
    let (status, _, listing) = answer_of(response).await;

    assert_eq!(status, StatusCode::OK);
    let entries = listing.as_array().expect("array");
    let clicks: Vec<&Value> = entries
        .iter()
        .map(|entry| &entry["body"]["click_id"])
        .collect();
    assert_eq!(clicks, [&json!("first"), &json!("second")]);
    assert!(entries[1]["transaction_id"].is_string());
    assert_eq!(
        sandbox.received().len(),
        3,
        "the listing itself is not recorded"
    );
}

#[tokio::test]
async fn waits_for_accepted_conversions_with_a_bound() {
    let sandbox = start().await;
    assert!(
        !sandbox
            .wait_for_accepted(1, Duration::from_millis(50))
            .await
    );
    post(&sandbox, &json!({"click_id": "a"})).await;
    assert!(
        sandbox
            .wait_for_accepted(1, Duration::from_millis(50))
            .await
    );
}

#[tokio::test]
async fn refuses_a_body_over_one_mib_with_413() {
    let sandbox = start().await;
    let huge = format!("{{\"click_id\": \"{}\"}}", "x".repeat(1 << 20));
    let response = client()
        .post(conversion_url(&sandbox, KEY))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("answer");

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(sandbox.received()[0].raw_body.is_empty());
}

#[tokio::test]
async fn answers_bad_json_and_missing_content_type_with_400() {
    let sandbox = start().await;
    let url = conversion_url(&sandbox, KEY);
    let cases = [
        ("application/json", "{\"click_id\": "),
        ("application/json", "[\"click_id\"]"),
        ("text/plain", "{\"click_id\": \"a\"}"),
    ];
    for (content_type, body) in cases {
        let response = client()
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("answer");
        let (status, _, answer) = answer_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message(&answer).starts_with("bad JSON"), "{answer}");
    }
}

#[tokio::test]
async fn answers_404_405_and_health_like_a_server() {
    let sandbox = start().await;
    let base = sandbox.base_url();
    let http = client();

    let missing = http
        .post(format!("{base}/api/v2/other?api-key={KEY}"))
        .send()
        .await;
    assert_eq!(missing.expect("answer").status(), StatusCode::NOT_FOUND);
    let get = http
        .get(conversion_url(&sandbox, KEY))
        .send()
        .await
        .expect("answer");
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers()["allow"], "POST");
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(sandbox.received()[0].query_redacted, "api-key=***");
}

#[tokio::test]
async fn survives_random_bodies_and_keeps_serving() {
    let sandbox = start().await;
    let http = client();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..40 {
        let length = rng.usize(0..300);
        let body: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(length).collect();
        let response = http
            .post(conversion_url(&sandbox, KEY))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let (status, _, _) = post(&sandbox, &json!({"click_id": "still-up"})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn stops_serving_after_shutdown() {
    let sandbox = start().await;
    let health = format!("{}/healthz", sandbox.base_url());
    sandbox.shutdown();
    // The listener closes in the background: a fresh client (no pooled connection) each
    // time, until one is refused.
    crate::support::wait::expect(
        Duration::from_secs(5),
        "the sandbox to stop answering after shutdown",
        async || {
            let fresh = client_with_timeout(Duration::from_secs(2));
            fresh.get(&health).send().await.is_err()
        },
    )
    .await;
}

#[tokio::test]
async fn refuses_an_empty_api_key() {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let cfg = SandboxConfig {
        api_key: String::new(),
    };
    let error = Sandbox::start(addr, cfg).await.expect_err("empty key");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn refuses_a_chunked_body_that_grows_over_one_mib_with_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let sandbox = start().await;
    let mut stream = tokio::net::TcpStream::connect(sandbox.addr())
        .await
        .expect("connect");
    let size = (1 << 20) + 10;
    let head = format!(
        "POST /api/v2/network/tracking/conv-click-id?api-key={KEY} HTTP/1.1\r\n\
         Host: sandbox\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{size:x}\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&vec![b' '; size]).await.expect("chunk");
    stream.write_all(b"\r\n0\r\n\r\n").await.expect("end");

    let mut answer = vec![0; 64];
    let read = stream.read(&mut answer).await.expect("answer");
    let status_line = String::from_utf8_lossy(&answer[..read]);
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
}

/// A `tracing` writer that keeps every line in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_every_call_with_the_key_redacted() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread test runtime runs the server tasks on this thread too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let sandbox = start().await;

    let (_, _, created) = post(
        &sandbox,
        &json!({"click_id": "logged", "email": "a@example.com"}),
    )
    .await;
    let lead_id = created["info"]["lead_id"].as_str().expect("lead_id");
    let change = json!({"lead_id": lead_id, "private_notes": "secret-note"});
    assert_eq!(put(&sandbox, &change).await.0, StatusCode::OK);

    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(text.contains("sandbox call"), "{text}");
    assert!(
        text.contains("api-key=***") && text.contains("logged"),
        "{text}"
    );
    assert!(text.contains(&format!("lead_id=\"{lead_id}\"")), "{text}");
    assert!(
        !text.contains(KEY) && !text.contains("a@example.com") && !text.contains("secret-note"),
        "{text}"
    );
}

#[tokio::test]
async fn create_answers_a_unique_string_lead_id() {
    let sandbox = start().await;
    let first = create(&sandbox, "one", json!({})).await;
    let second = create(&sandbox, "two", json!({})).await;

    let ids = [&first["lead_id"], &second["lead_id"]];
    assert!(ids.iter().all(|id| id.is_string()), "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let kept: Vec<String> = sandbox
        .conversions()
        .into_iter()
        .map(|conversion| conversion.lead_id)
        .collect();
    assert_eq!(kept, [ids[0].as_str().unwrap(), ids[1].as_str().unwrap()]);
}

#[tokio::test]
async fn update_changes_the_conversion_and_keeps_its_history() {
    let sandbox = start().await;
    let info = create(
        &sandbox,
        "lead-1",
        json!({"conv_status": "pending", "revenue": 1, "custom1": "a"}),
    )
    .await;
    let lead_id = info["lead_id"].as_str().expect("lead_id").to_owned();
    let change = json!({"lead_id": lead_id, "conv_status": "approved", "revenue": 25});

    let (status, answer) = put(&sandbox, &change).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["code"].as_u64(), Some(200));
    assert_eq!(answer["info"]["lead_id"], json!(lead_id));
    assert_eq!(answer["info"]["transaction_id"], info["transaction_id"]);
    assert_eq!(answer["info"]["conv_status"], "approved");

    assert_eq!(sandbox.updates(), std::slice::from_ref(&change));
    let conversion = sandbox.conversion(&lead_id).expect("kept");
    assert_eq!(conversion.conv_status(), "approved");
    assert_eq!(
        conversion.current,
        json!({"click_id": "lead-1", "conv_status": "approved", "revenue": 25, "custom1": "a"})
    );
    assert_eq!(
        conversion.body["conv_status"], "pending",
        "the create body stays"
    );
    assert_eq!(conversion.changes.len(), 1);
    assert_eq!(conversion.changes[0].body, change);
    assert!(conversion.changes[0].at >= conversion.at);
    // The money keeps its exact text.
    assert_eq!(conversion.current["revenue"].to_string(), "25");
    let calls = sandbox.received();
    assert_eq!(
        (calls[1].method.as_str(), calls[1].path.as_str()),
        ("PUT", UPDATE_PATH)
    );
    assert_eq!(calls[1].query_redacted, "api-key=***");
}

#[tokio::test]
async fn a_status_only_update_keeps_the_money_and_changes_pile_up_oldest_first() {
    let sandbox = start().await;
    let info = create(
        &sandbox,
        "cod",
        json!({"conv_status": "hold", "amount": 40}),
    )
    .await;
    let lead_id = info["lead_id"].as_str().expect("lead_id").to_owned();
    let changes = [
        json!({"lead_id": lead_id, "conv_status": "approved"}),
        json!({"lead_id": lead_id, "conv_status": "rejected", "private_notes": "chargeback"}),
    ];
    for change in &changes {
        assert_eq!(put(&sandbox, change).await.0, StatusCode::OK);
    }

    let conversion = &sandbox.conversions()[0];
    assert_eq!(conversion.conv_status(), "rejected");
    assert_eq!(conversion.current["amount"].to_string(), "40");
    assert_eq!(conversion.current["private_notes"], "chargeback");
    let bodies: Vec<&Value> = conversion.changes.iter().map(|c| &c.body).collect();
    assert_eq!(bodies, [&changes[0], &changes[1]]);
    assert!(conversion.changes[0].at <= conversion.changes[1].at);
}

#[tokio::test]
async fn update_takes_a_numeric_lead_id_by_its_text() {
    let sandbox = start().await;
    let info = create(&sandbox, "n", json!({})).await;
    let text = info["lead_id"].as_str().expect("lead_id");
    let number: Value = serde_json::from_str(text).expect("decimal text");
    assert!(number.is_number());

    let (status, answer) = put(&sandbox, &json!({"lead_id": number, "payout": 2.5})).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["info"]["lead_id"], info["lead_id"]);
    assert_eq!(
        answer["info"]["conv_status"], "approved",
        "the default status"
    );
    assert_eq!(
        sandbox.conversions()[0].current["payout"].to_string(),
        "2.5"
    );
}

#[tokio::test]
async fn update_of_an_unknown_lead_id_answers_404_naming_it() {
    let sandbox = start().await;
    let info = create(&sandbox, "known", json!({})).await;
    let unknown = format!("{}0", info["lead_id"].as_str().expect("lead_id"));

    for lead_id in [json!(unknown), json!(7), json!(" 1 ")] {
        let (status, answer) = put(
            &sandbox,
            &json!({"lead_id": lead_id, "conv_status": "approved"}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        assert_eq!(answer["status"], "error");
        assert_eq!(answer["code"].as_u64(), Some(404));
        let text = lead_id
            .as_str()
            .map_or_else(|| lead_id.to_string(), str::to_owned);
        assert!(message(&answer).contains(&text), "{answer}");
    }
    assert!(sandbox.updates().is_empty());
    assert!(sandbox.conversions()[0].changes.is_empty());
}

#[tokio::test]
async fn update_answers_405_with_allow_put_for_other_methods() {
    let sandbox = start().await;
    let http = client();
    let url = update_url(&sandbox, KEY);
    for request in [
        http.post(&url).json(&json!({"lead_id": "1"})),
        http.get(&url),
        http.patch(&url).json(&json!({"lead_id": "1"})),
    ] {
        let response = request.send().await.expect("answer");
        assert_eq!(response.headers()["allow"], "PUT");
        let (status, _, answer) = answer_of(response).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(message(&answer).contains("PUT"), "{answer}");
    }
    // The create path still allows POST only.
    let response = http
        .put(conversion_url(&sandbox, KEY))
        .json(&json!({"click_id": "a"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
}

#[tokio::test]
async fn update_answers_401_for_a_wrong_or_missing_key() {
    let sandbox = start().await;
    let info = create(&sandbox, "k", json!({})).await;
    let body = json!({"lead_id": info["lead_id"], "conv_status": "approved"});
    let urls = [
        update_url(&sandbox, "wrong"),
        format!("{}{UPDATE_PATH}", sandbox.base_url()),
    ];
    for url in urls {
        let response = client().put(url).json(&body).send().await.expect("answer");
        let (status, _, answer) = answer_of(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer["code"].as_u64(), Some(401));
    }
    assert!(sandbox.updates().is_empty());
    assert_eq!(sandbox.conversions()[0].conv_status(), "approved");
}

#[tokio::test]
async fn update_answers_400_for_bad_json_and_a_wrong_content_type() {
    let sandbox = start().await;
    let url = update_url(&sandbox, KEY);
    let cases = [
        ("application/json", "{\"lead_id\": "),
        ("application/json", "[\"lead_id\"]"),
        ("text/plain", "{\"lead_id\": \"1\"}"),
    ];
    for (content_type, body) in cases {
        let response = client()
            .put(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("answer");
        let (status, _, answer) = answer_of(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message(&answer).starts_with("bad JSON"), "{answer}");
    }
}

#[tokio::test]
async fn update_names_every_field_it_cannot_change_in_a_400() {
    let sandbox = start().await;
    let info = create(&sandbox, "u", json!({})).await;
    let body = json!({"lead_id": info["lead_id"], "conv_status": "approved",
                      "click_id": "u", "goal_id": 3, "custom11": "x"});

    let (status, answer) = put(&sandbox, &body).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["status"], "error");
    for name in ["click_id", "goal_id", "custom11"] {
        assert!(message(&answer).contains(name), "{answer}");
    }
    assert_eq!(
        answer["info"]["unknown_parameters"],
        json!(["click_id", "custom11", "goal_id"])
    );
    assert!(sandbox.updates().is_empty());
}

#[tokio::test]
async fn update_accepts_every_updatable_field() {
    let sandbox = start().await;
    let info = create(&sandbox, "all", json!({})).await;
    let mut body = json!({"lead_id": info["lead_id"], "conv_status": "hold", "revenue": 1,
                          "payout": 0.5, "amount": 10, "adv_order_id": "o-1",
                          "public_notes": "p", "private_notes": "q"});
    for n in 1..=10 {
        body[format!("custom{n}")] = json!(format!("c{n}"));
    }

    let (status, answer) = put(&sandbox, &body).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(sandbox.conversions()[0].current["custom10"], "c10");
}

#[tokio::test]
async fn update_answers_422_for_wrong_types_statuses_and_a_missing_lead_id() {
    let sandbox = start().await;
    let info = create(&sandbox, "v", json!({})).await;
    let lead_id = info["lead_id"].clone();
    let cases = [
        (
            json!({"lead_id": lead_id, "revenue": "25", "payout": null, "custom1": 5}),
            vec!["custom1", "payout", "revenue"],
        ),
        (
            json!({"lead_id": lead_id, "conv_status": "paid"}),
            vec!["conv_status"],
        ),
        (json!({"conv_status": "approved"}), vec!["lead_id"]),
        (json!({"lead_id": "", "amount": 1}), vec!["lead_id"]),
        (json!({"lead_id": true}), vec!["lead_id"]),
        (json!({"lead_id": [lead_id]}), vec!["lead_id"]),
    ];
    for (body, fields) in cases {
        let (status, answer) = put(&sandbox, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["status"], "error");
        let errors = answer["info"]["errors"].as_object().expect("errors");
        let got: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(got, fields, "{body}");
        assert!(errors.values().all(Value::is_array), "{answer}");
    }
    assert!(sandbox.updates().is_empty());
    assert!(sandbox.conversions()[0].changes.is_empty());
}

#[tokio::test]
async fn scripted_steps_serve_both_paths_in_call_order() {
    let sandbox = start().await;
    let info = create(&sandbox, "scripted", json!({"conv_status": "pending"})).await;
    let lead_id = info["lead_id"].clone();
    sandbox.script([
        Step::status(500),
        Step::too_many(9),
        Step::status(503),
        Step::Success,
    ]);
    let change = json!({"lead_id": lead_id, "conv_status": "approved"});

    let (status, answer) = put(&sandbox, &change).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    let (status, retry_after, _) = post(&sandbox, &json!({"click_id": "other"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_deref(), Some("9"));
    assert_eq!(
        put(&sandbox, &change).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A scripted success on the update path applies the change, unchecked.
    let response = client()
        .put(update_url(&sandbox, "wrong-key"))
        .json(&change)
        .send()
        .await
        .expect("answer");
    let (status, _, answer) = answer_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["info"]["transaction_id"], info["transaction_id"]);
    assert_eq!(answer["info"]["conv_status"], "approved");
    assert_eq!(sandbox.pending_steps(), 0);

    // The queue is empty: the sandbox checks again.
    assert_eq!(
        put(&sandbox, &json!({"lead_id": "0"})).await.0,
        StatusCode::NOT_FOUND
    );
    let statuses: Vec<(String, u16)> = sandbox
        .received()
        .iter()
        .skip(1)
        .map(|call| (call.method.clone(), call.status))
        .collect();
    let expected = [
        ("PUT", 500),
        ("POST", 429),
        ("PUT", 503),
        ("PUT", 200),
        ("PUT", 404),
    ];
    let expected: Vec<(String, u16)> = expected
        .iter()
        .map(|(method, status)| ((*method).to_owned(), *status))
        .collect();
    assert_eq!(statuses, expected);
    assert_eq!(sandbox.updates(), [change]);
    assert_eq!(sandbox.conversions()[0].conv_status(), "approved");
    assert_eq!(
        sandbox.conversions().len(),
        1,
        "the scripted 429 created nothing"
    );
}

#[tokio::test]
async fn scripted_success_on_the_update_path_takes_anything() {
    let sandbox = start().await;
    sandbox.script([Step::Success, Step::Success]);
    let http = client();

    let response = http
        .put(update_url(&sandbox, KEY))
        .body("not json")
        .send()
        .await
        .expect("answer");
    let (status, _, answer) = answer_of(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["info"]["transaction_id"], Value::Null);
    let (status, answer) = put(&sandbox, &json!({"lead_id": "nobody", "x": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["info"]["lead_id"], "nobody");

    assert_eq!(
        sandbox.updates(),
        [Value::Null, json!({"lead_id": "nobody", "x": 1})]
    );
    assert!(sandbox.conversions().is_empty());
}

#[tokio::test]
async fn hang_on_the_update_path_applies_the_change_before_answering() {
    let sandbox = start().await;
    let info = create(&sandbox, "slow-change", json!({"conv_status": "pending"})).await;
    sandbox.script([Step::Hang(Duration::from_secs(5))]);
    let impatient = client_with_timeout(Duration::from_millis(200));
    let change = json!({"lead_id": info["lead_id"], "conv_status": "rejected"});

    let timed_out = impatient
        .put(update_url(&sandbox, KEY))
        .json(&change)
        .send()
        .await;

    assert!(timed_out.is_err_and(|err| err.is_timeout()));
    assert!(sandbox.wait_for_updates(1, Duration::from_secs(2)).await);
    assert_eq!(sandbox.conversions()[0].conv_status(), "rejected");
}

#[tokio::test]
async fn waits_for_updates_with_a_bound() {
    let sandbox = start().await;
    let info = create(&sandbox, "w", json!({})).await;
    assert!(!sandbox.wait_for_updates(1, Duration::from_millis(50)).await);
    put(&sandbox, &json!({"lead_id": info["lead_id"], "revenue": 3})).await;
    assert!(sandbox.wait_for_updates(1, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn lists_each_conversion_with_its_current_state_and_changes() {
    let sandbox = start().await;
    let first = create(
        &sandbox,
        "first",
        json!({"conv_status": "pending", "revenue": 1}),
    )
    .await;
    create(&sandbox, "second", json!({})).await;
    let changes = [
        json!({"lead_id": first["lead_id"], "conv_status": "hold"}),
        json!({"lead_id": first["lead_id"], "conv_status": "approved", "revenue": 25}),
    ];
    for change in &changes {
        assert_eq!(put(&sandbox, change).await.0, StatusCode::OK);
    }

    let entries = listing(&sandbox).await;

    assert_eq!(entries.len(), 2);
    let entry = &entries[0];
    assert_eq!(entry["lead_id"], first["lead_id"]);
    assert_eq!(entry["transaction_id"], first["transaction_id"]);
    assert_eq!(
        entry["body"],
        json!({"click_id": "first", "conv_status": "pending", "revenue": 1})
    );
    assert_eq!(
        entry["current"],
        json!({"click_id": "first", "conv_status": "approved", "revenue": 25})
    );
    let bodies: Vec<&Value> = entry["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|change| &change["body"])
        .collect();
    assert_eq!(bodies, [&changes[0], &changes[1]]);
    assert!(entry["changes"][0]["at"].is_string());
    assert!(entry["at"].is_string());
    assert_eq!(entries[1]["changes"], json!([]));
    assert_eq!(entries[1]["current"], entries[1]["body"]);
}
