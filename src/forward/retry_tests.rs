//! Unit and property tests of the classification and the schedule.

use super::*;
use proptest::prelude::*;

fn now() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// A reply: an answer with `status`, or (for `None`) a connection that failed with `body`.
fn reply(status: Option<u16>, body: &str) -> Reply {
    match status {
        Some(status) => Reply::Answered {
            status,
            retry_after: None,
            body: body.into(),
            cut: None,
        },
        None => Reply::ConnectFailed { cause: body.into() },
    }
}

fn c(status: Option<u16>, body: &str) -> Outcome {
    classify(&reply(status, body), now())
}

fn with_retry_after(status: u16, value: &str) -> Reply {
    Reply::Answered {
        status,
        retry_after: Some(value.into()),
        body: String::new(),
        cut: None,
    }
}

#[test]
fn each_kind_of_reply_has_its_outcome() {
    let cause = || "tcp connect error: Connection refused (os error 111)".to_string();
    let answered = |status: u16, body: &str, cut: Option<&str>| Reply::Answered {
        status,
        retry_after: None,
        body: body.into(),
        cut: cut.map(String::from),
    };
    let table = [
        (
            Reply::TimedOut { cause: cause() },
            Outcome::Retry {
                after: None,
                reason: format!("no answer: timeout: {}", cause()),
            },
        ),
        (
            Reply::ConnectFailed { cause: cause() },
            Outcome::Retry {
                after: None,
                reason: format!("no answer: connect error: {}", cause()),
            },
        ),
        (
            Reply::Failed {
                cause: "invalid base_url \"x\": relative URL without a base".into(),
            },
            Outcome::Retry {
                after: None,
                reason: "no answer: invalid base_url \"x\": relative URL without a base".into(),
            },
        ),
        (
            answered(
                200,
                r#"{"status":"success","info":{"transaction_id":"t"}}"#,
                None,
            ),
            Outcome::Delivered {
                transaction_id: Some("t".into()),
                lead_id: None,
            },
        ),
        (
            answered(
                200,
                r#"{"status":"success","info":{"transaction_id":"t"}}"#,
                Some("reset"),
            ),
            Outcome::Dead {
                reason: "HTTP 200 with an answer that is not Scaleo's JSON".into(),
            },
        ),
        (
            answered(200, "<html>proxy</html>", None),
            Outcome::Retry {
                after: None,
                reason: "HTTP 200 with an answer that is not Scaleo's JSON".into(),
            },
        ),
        (
            answered(302, "", None),
            Outcome::Paused {
                reason: "HTTP 302: redirected, check scaleo.base_url".into(),
            },
        ),
        (
            answered(401, "", None),
            Outcome::Paused {
                reason: "HTTP 401: API key refused".into(),
            },
        ),
        (
            with_retry_after(429, "3"),
            Outcome::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "HTTP 429".into(),
            },
        ),
        (
            answered(404, "", None),
            Outcome::Dead {
                reason: "HTTP 404".into(),
            },
        ),
        (
            answered(503, "", None),
            Outcome::Retry {
                after: None,
                reason: "HTTP 503".into(),
            },
        ),
    ];
    for (reply, outcome) in table {
        assert_eq!(classify(&reply, now()), outcome, "{reply:?}");
    }
}

const SUCCESS: &str = r#"{"status":"success","code":200,"name":"","message":"",
  "info":{"status":"success","message":"Conversion created","transaction_id":"9f1c-uuid"}}"#;

#[test]
fn success_is_delivered_with_transaction_id() {
    assert_eq!(
        c(Some(200), SUCCESS),
        Outcome::Delivered {
            transaction_id: Some("9f1c-uuid".into()),
            lead_id: None,
        }
    );
    assert_eq!(
        c(Some(201), r#"{"status":"success"}"#),
        Outcome::Delivered {
            transaction_id: None,
            lead_id: None,
        }
    );
}

#[test]
fn success_keeps_lead_id_as_scaleo_gave_it() {
    let string = r#"{"status":"success","info":{"status":"success","lead_id":"4711","transaction_id":"t-1"}}"#;
    let number = r#"{"status":"success","info":{"lead_id":4711}}"#;
    let lead = |body| match c(Some(200), body) {
        Outcome::Delivered { lead_id, .. } => lead_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(lead(string).as_deref(), Some("\"4711\""));
    assert_eq!(lead(number).as_deref(), Some("4711"));
    assert_eq!(lead(r#"{"status":"success","info":{"lead_id":""}}"#), None);
}

#[test]
fn duplicate_phrase_wins_over_any_status() {
    let bodies = [
        r#"{"status":"error","message":"Multiple Conversions are not Allowed"}"#,
        r#"{"status":"error","info":{"message":"MULTIPLE conversions are NOT allowed"}}"#,
        r#"{"status":"error","info":{"errors":{"click_id":["Multiple Conversions are not Allowed"]}}}"#,
        "Multiple Conversions are not Allowed",
    ];
    for body in bodies {
        for status in [200, 400, 403, 422, 500] {
            assert_eq!(
                c(Some(status), body),
                Outcome::DuplicateUpstream,
                "{status} {body}"
            );
        }
    }
}

#[test]
fn duplicate_phrase_anywhere_in_a_json_answer_wins_over_any_status() {
    // README: the phrase anywhere in the answer. A 403 carrying it must not pause all
    // forwarding, nor a 5xx be retried until dead.
    let bodies = [
        r#"{"status":"error","code":403,"name":"Multiple Conversions are not Allowed","message":""}"#,
        r#"{"status":"success","info":{"status":"error","additional":{"note":"Multiple Conversions are not Allowed"}}}"#,
        r#""Multiple Conversions are not Allowed""#,
        r#"[{"message":"Multiple Conversions are not Allowed"}]"#,
    ];
    for body in bodies {
        for status in [200, 400, 403, 422, 500] {
            assert_eq!(
                c(Some(status), body),
                Outcome::DuplicateUpstream,
                "{status} {body}"
            );
        }
    }
}

#[test]
fn error_inside_2xx_is_dead_not_retried() {
    for body in [
        r#"{"status":"error","message":"tracking failed"}"#,
        r#"{"status":"success","info":{"status":"error","message":"click not found"}}"#,
    ] {
        assert!(matches!(c(Some(200), body), Outcome::Dead { .. }), "{body}");
    }
}

#[test]
fn a_2xx_that_is_not_scaleos_envelope_is_retried_and_counts_toward_an_outage() {
    // A proxy's page or a wrong base_url: not Scaleo talking, so nothing was recorded.
    for body in ["<html>ok</html>", "{}", "[]", r#"{"status":1}"#, ""] {
        assert!(
            matches!(c(Some(200), body), Outcome::Retry { .. }),
            "{body}"
        );
        assert!(!answered_as_scaleo(&reply(Some(200), body)), "{body}");
    }
    // Cut short after the status line: it may be Scaleo's success, so never repeated.
    let cut = Reply::Answered {
        status: 200,
        retry_after: None,
        body: "{\"status\":\"succ".into(),
        cut: Some("reset".into()),
    };
    assert!(matches!(classify(&cut, now()), Outcome::Dead { .. }));
    assert!(!answered_as_scaleo(&cut));
}

#[test]
fn scaleo_answers_are_told_from_silence() {
    assert!(!answered_as_scaleo(&reply(None, "connect error")));
    assert!(!answered_as_scaleo(&reply(
        Some(502),
        "<html>bad gateway</html>"
    )));
    assert!(!answered_as_scaleo(&reply(
        Some(500),
        r#"{"status":"error"}"#
    )));
    assert!(answered_as_scaleo(&reply(
        Some(200),
        r#"{"status":"success","info":{}}"#
    )));
    assert!(answered_as_scaleo(&reply(Some(404), "not found")));
    assert!(answered_as_scaleo(&reply(Some(401), "")));
    assert!(answered_as_scaleo(&reply(Some(429), "")));
}

#[test]
fn retryable_statuses_and_no_answer() {
    for status in [
        Some(408),
        Some(425),
        Some(429),
        Some(500),
        Some(502),
        Some(503),
        None,
    ] {
        assert!(
            matches!(c(status, ""), Outcome::Retry { after: None, .. }),
            "{status:?}"
        );
    }
}

#[test]
fn auth_and_redirect_pause() {
    for status in [401, 403, 301, 302, 307] {
        assert!(
            matches!(c(Some(status), "{}"), Outcome::Paused { .. }),
            "{status}"
        );
    }
}

#[test]
fn other_4xx_are_dead_with_the_errors_kept() {
    let body = r#"{"status":"error","code":422,"message":"Validation failed",
      "info":{"errors":{"goal_id":["Goal not found"]}}}"#;
    match c(Some(422), body) {
        Outcome::Dead { reason } => {
            assert!(
                reason.contains("422") && reason.contains("Goal not found"),
                "{reason}"
            )
        }
        v => panic!("{v:?}"),
    }
    for status in [400, 404, 410] {
        assert!(matches!(c(Some(status), ""), Outcome::Dead { .. }));
    }
}

#[test]
fn retry_after_seconds_and_http_date() {
    let v = classify(&with_retry_after(429, "7"), now());
    assert!(matches!(v, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
    let v = classify(
        &with_retry_after(503, "Thu, 01 Jan 2026 00:00:30 GMT"),
        now(),
    );
    assert!(matches!(v, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(30)));
    assert_eq!(
        parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now()),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon", now()), None);
}

#[test]
fn retry_after_in_the_obsolete_http_date_forms() {
    // now() is 2026-01-01 00:00:00 UTC.
    assert_eq!(
        parse_retry_after("Thursday, 01-Jan-26 00:01:00 GMT", now()),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Thu Jan  1 00:00:45 2026", now()),
        Some(Duration::from_secs(45))
    );
}

/// A policy with `schedule` and `max_age`, and no count bound.
fn policy(schedule: &[Duration], max_age: Duration) -> RetryPolicy {
    RetryPolicy::new(schedule.to_vec(), max_age, u32::MAX).unwrap()
}

fn next_delay(failures: u32, schedule: &[Duration], jitter: f64) -> Duration {
    policy(schedule, Duration::MAX).delay(failures, jitter)
}

#[test]
fn a_policy_needs_a_delay_and_an_attempt_and_says_which_key() {
    let s = vec![Duration::from_secs(10)];
    let day = Duration::from_secs(86_400);
    assert_eq!(
        RetryPolicy::new(Vec::new(), day, 0),
        Err(vec![PolicyError::NoAttempts, PolicyError::EmptySchedule])
    );
    assert_eq!(
        RetryPolicy::new(Vec::new(), day, 3),
        Err(vec![PolicyError::EmptySchedule])
    );
    let mut p = RetryPolicy::new(s.clone(), day, 3).unwrap();
    assert_eq!(
        (p.schedule(), p.max_age(), p.max_attempts()),
        (&s[..], day, 3)
    );
    assert_eq!(p.set_max_attempts(0), Err(PolicyError::NoAttempts));
    assert_eq!(p.set_schedule(Vec::new()), Err(PolicyError::EmptySchedule));
    assert_eq!(p.max_attempts(), 3, "a refused setting changes nothing");
    assert_eq!(p.schedule(), &s[..]);
    assert_eq!(PolicyError::NoAttempts.key(), "forward.max_attempts");
    assert_eq!(
        PolicyError::EmptySchedule.to_string(),
        "forward.retry_schedule = \"[]\": at least one delay such as \"10s\""
    );
}

#[test]
fn schedule_repeats_the_last_delay() {
    let s = [Duration::from_secs(10), Duration::from_secs(30)];
    assert_eq!(next_delay(1, &s, 0.0), Duration::from_secs(10));
    assert_eq!(next_delay(2, &s, 0.0), Duration::from_secs(30));
    assert_eq!(next_delay(99, &s, 0.0), Duration::from_secs(30));
    assert_eq!(next_delay(1, &s, 1.0), Duration::from_secs(12));
}

#[test]
fn plan_gives_up_after_max_age_and_caps_at_deadline() {
    let s = [Duration::from_secs(3600)];
    let day = Duration::from_secs(86_400);
    let queued = crate::store::ts_minus(now(), day);
    assert_eq!(
        policy(&s, day).plan(now(), queued, 3, None, 0.0),
        Next::GiveUp("max age exceeded (forward.max_age)")
    );
    let queued = crate::store::ts_minus(now(), day - Duration::from_secs(60));
    assert_eq!(
        policy(&s, day).plan(now(), queued, 3, None, 0.0),
        Next::At(crate::store::ts_plus(now(), Duration::from_secs(60)))
    );
    // Retry-After longer than the schedule wins.
    assert_eq!(
        policy(&s, day).plan(now(), now(), 1, Some(Duration::from_secs(7200)), 0.0),
        Next::At(crate::store::ts_plus(now(), Duration::from_secs(7200)))
    );
}

#[test]
fn plan_gives_up_after_max_attempts_before_max_age() {
    let s = vec![Duration::from_secs(10)];
    let p = RetryPolicy::new(s, Duration::from_secs(86_400), 3).unwrap();
    assert!(matches!(p.plan(now(), now(), 2, None, 0.0), Next::At(_)));
    assert_eq!(
        p.plan(now(), now(), 3, None, 0.0),
        Next::GiveUp("retry limit reached (forward.max_attempts)")
    );
}

fn schedule() -> impl Strategy<Value = Vec<Duration>> {
    prop::collection::vec(1u64..100_000, 1..10).prop_map(|mut v| {
        v.sort_unstable();
        v.into_iter().map(Duration::from_millis).collect()
    })
}

proptest! {
    #[test]
    fn delay_within_jitter_bounds(s in schedule(), n in 1u32..50, j in 0.0f64..1.0) {
        let base = s[usize::try_from(n - 1).unwrap().min(s.len() - 1)];
        let d = next_delay(n, &s, j);
        prop_assert!(d >= base);
        prop_assert!(d <= base.mul_f64(1.0 + JITTER_MAX) + Duration::from_nanos(1));
    }

    #[test]
    fn delay_monotone_for_a_sorted_schedule(s in schedule(), n in 1u32..50, j in 0.0f64..1.0) {
        prop_assert!(next_delay(n + 1, &s, j) >= next_delay(n, &s, j));
    }

    #[test]
    fn plan_never_past_deadline(
        s in schedule(), n in 1u32..50, j in 0.0f64..1.0,
        age_s in 0u64..10_000, max_s in 1u64..10_000, ra in proptest::option::of(0u64..100_000),
    ) {
        let queued = crate::store::ts_minus(now(), Duration::from_secs(age_s));
        let max_age = Duration::from_secs(max_s);
        match policy(&s, max_age).plan(now(), queued, n, ra.map(Duration::from_secs), j) {
            Next::GiveUp(_) => prop_assert!(age_s >= max_s),
            Next::At(at) => {
                prop_assert!(age_s < max_s);
                prop_assert!(at > now() || at == now());
                prop_assert!(at <= crate::store::ts_plus(queued, max_age));
            }
        }
    }
}
