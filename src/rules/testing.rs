//! Runs a rule file's `[[tests]]` and explains each failure with a readable body diff.

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::model::{ChangeOutcome, Expectation, Rule, RuleTest};
use super::{BodyKind, Input, Outcome, RuleSet, decode_body, decode_form};
use crate::lifecycle::{self, Decision, Lookup};

/// The result of one `[[tests]]` case.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub source: String,
    pub name: String,
    pub line: usize,
    /// `None` when the test passed; otherwise what differed, ready to print.
    pub failure: Option<String>,
}

/// Runs every test of `rule` with `zone` as the network time zone; `set` holds the source
/// whose conversions an update-only rule changes (its `after` postbacks go there).
pub fn run(rule: &Rule, set: &RuleSet, zone: &TimeZone) -> Vec<TestResult> {
    rule.tests
        .iter()
        .map(|t| TestResult {
            source: rule.source.clone(),
            name: t.name.clone(),
            line: t.line,
            failure: match &t.expect {
                Expectation::Change { outcome, change } => {
                    check_change(rule, set, t, zone, *outcome, change.as_ref())
                }
                _ => check(t, &apply_test(rule, t, zone)),
            },
        })
        .collect()
}

/// Applies a rule to a test's query, body and request attributes.
pub fn apply_test(rule: &Rule, t: &RuleTest, zone: &TimeZone) -> Outcome {
    apply_query(rule, t, &t.query, t.body.as_ref(), zone)
}

/// Plays `after` then `query` as the store would for one conversion and compares what the
/// last postback is to it (and, for an update, the fields the change sends).
fn check_change(
    rule: &Rule,
    set: &RuleSet,
    t: &RuleTest,
    zone: &TimeZone,
    want: ChangeOutcome,
    want_change: Option<&Map<String, Value>>,
) -> Option<String> {
    let creator = match &rule.updates.only {
        Some(only) => match set.get(&only.of) {
            Some(r) => r.as_ref(),
            None => return Some(format!("[updates] of = {:?} is not loaded", only.of)),
        },
        None => rule,
    };
    let mut conversion: Option<(Map<String, Value>, Map<String, Value>)> = None;
    for (i, q) in t.after.iter().enumerate() {
        let body = match apply_query(creator, t, q, None, zone) {
            Outcome::Forward(m) => m.body,
            other => {
                return Some(format!(
                    "after[{i}] is not forwarded by source {}: {}",
                    creator.source,
                    describe_outcome(&other)
                ));
            }
        };
        match &mut conversion {
            None => conversion = Some((body.clone(), lifecycle::tracked(&body))),
            Some((_, tracked)) => {
                if let Decision::Update { change } =
                    lifecycle::decide(tracked, &body, &creator.updates.transitions)
                {
                    *tracked = lifecycle::overlay(tracked, [&change]);
                }
            }
        }
    }
    let (created, tracked) = conversion?;
    let body = match apply_test(rule, t, zone) {
        Outcome::Forward(m) => m.body,
        other => {
            return Some(format!(
                "expected {}
     got {}",
                want.as_str(),
                describe_outcome(&other)
            ));
        }
    };
    if let Some(only) = &rule.updates.only {
        let finds = Lookup::of_body(only, &body).map(|l| {
            let same = |field: &str, v: &Option<String>| {
                v.as_ref()
                    .is_none_or(|v| created.get(field).and_then(Value::as_str) == Some(v))
            };
            same("click_id", &l.click_id) && same("adv_order_id", &l.order_id)
        });
        match finds {
            Ok(true) => {}
            Ok(false) => {
                return Some(
                    "the postback's [updates] key does not find the conversion of `after`".into(),
                );
            }
            Err(reason) => {
                return Some(format!(
                    "expected {}
     got reject: {reason}",
                    want.as_str()
                ));
            }
        }
    }
    let got = lifecycle::decide(&tracked, &body, &creator.updates.transitions);
    let (got_outcome, got_change) = match &got {
        Decision::Duplicate => (ChangeOutcome::Duplicate, None),
        Decision::Stale { .. } => (ChangeOutcome::Stale, None),
        Decision::Update { change } => (ChangeOutcome::Update, Some(change)),
    };
    if got_outcome != want {
        let detail = match &got {
            Decision::Stale { reason } => format!(": {reason}"),
            Decision::Update { change } => format!(" sending {}", Value::Object(change.clone())),
            Decision::Duplicate => String::new(),
        };
        return Some(format!(
            "expected {}
     got {}{detail}",
            want.as_str(),
            got_outcome.as_str()
        ));
    }
    match (want_change, got_change) {
        (Some(want), Some(got)) => {
            body_diff(want, got).map(|d| d.replace("body differs", "change differs"))
        }
        _ => None,
    }
}

fn apply_query(
    rule: &Rule,
    t: &RuleTest,
    query: &str,
    body: Option<&(BodyKind, String)>,
    zone: &TimeZone,
) -> Outcome {
    let mut params = decode_form(query.as_bytes());
    let mut json_numbers = Vec::new();
    if let Some((kind, body)) = body {
        // Checked when the rule loaded.
        let decoded = decode_body(body.as_bytes(), *kind).unwrap_or_default();
        json_numbers.extend(decoded.numbers.iter().map(|i| i + params.len()));
        params.extend(decoded.pairs);
    }
    let input = Input {
        params: &params,
        json_numbers: &json_numbers,
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
        Expectation::Change { outcome, .. } => outcome.as_str().to_string(),
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
