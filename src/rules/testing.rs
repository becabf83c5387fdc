//! Runs a rule file's `[[tests]]` and explains each failure with a readable body diff.

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::model::{Expectation, Rule, RuleTest};
use super::{Input, Outcome, decode_body, decode_form};

/// The result of one `[[tests]]` case.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub source: String,
    pub name: String,
    pub line: usize,
    /// `None` when the test passed; otherwise what differed, ready to print.
    pub failure: Option<String>,
}

/// Runs every test of `rule` with `zone` as the network time zone.
pub fn run(rule: &Rule, zone: &TimeZone) -> Vec<TestResult> {
    rule.tests
        .iter()
        .map(|t| TestResult {
            source: rule.source.clone(),
            name: t.name.clone(),
            line: t.line,
            failure: check(t, &apply_test(rule, t, zone)),
        })
        .collect()
}

/// Applies a rule to a test's query, body and request attributes.
pub fn apply_test(rule: &Rule, t: &RuleTest, zone: &TimeZone) -> Outcome {
    let mut params = decode_form(t.query.as_bytes());
    if let Some((kind, body)) = &t.body {
        // Checked when the rule loaded.
        params.extend(decode_body(body.as_bytes(), *kind).unwrap_or_default());
    }
    let input = Input {
        params: &params,
        client_ip: t.client_ip.as_deref(),
        user_agent: t.user_agent.as_deref(),
        referer: t.referer.as_deref(),
        received_at: t.received_at,
    };
    rule.apply(&input, zone)
}

fn check(t: &RuleTest, got: &Outcome) -> Option<String> {
    match (&t.expect, got) {
        (Expectation::Body(want), Outcome::Forward(m)) => body_diff(want, &m.body),
        (Expectation::Reject(want), Outcome::Reject { reason })
            if reason.contains(want.as_str()) =>
        {
            None
        }
        (Expectation::Skip(want), Outcome::Skip { reason }) if reason.contains(want.as_str()) => {
            None
        }
        (want, got) => Some(format!(
            "expected {}\n     got {}",
            describe_expectation(want),
            describe_outcome(got)
        )),
    }
}

fn describe_expectation(e: &Expectation) -> String {
    match e {
        Expectation::Body(b) => format!("forward {}", Value::Object(b.clone())),
        Expectation::Reject(r) => format!("reject with a reason containing {r:?}"),
        Expectation::Skip(r) => format!("skip with a reason containing {r:?}"),
    }
}

/// One line for an outcome, as `map` and `test` print it.
pub fn describe_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Forward(m) => format!("forward {}", Value::Object(m.body.clone())),
        Outcome::Reject { reason } => format!("reject: {reason}"),
        Outcome::Skip { reason } => format!("skip: {reason}"),
    }
}

/// Field-by-field differences (`None` when equal). Numbers compare by decimal value, so an
/// expected `19.99` equals a sent `19.99` whatever the text; a string never equals a number.
pub fn body_diff(want: &Map<String, Value>, got: &Map<String, Value>) -> Option<String> {
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut lines = Vec::new();
    for k in keys {
        match (want.get(k), got.get(k)) {
            (Some(w), Some(g)) if same(w, g) => {}
            (Some(w), Some(g)) => lines.push(format!("  ~ {k}: expected {w}, got {g}")),
            (Some(w), None) => lines.push(format!("  - {k}: expected {w}, missing from the body")),
            (None, Some(g)) => lines.push(format!("  + {k}: not expected, body has {g}")),
            (None, None) => {}
        }
    }
    (!lines.is_empty()).then(|| format!("body differs:\n{}", lines.join("\n")))
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let dx = x.to_string().parse::<Decimal>().ok();
            let dy = y.to_string().parse::<Decimal>().ok();
            match (dx, dy) {
                (Some(dx), Some(dy)) => dx == dy,
                _ => x.to_string() == y.to_string(),
            }
        }
        _ => a == b,
    }
}
