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
/// whose conversions an update-only rule changes (its `after` postbacks go there). A test
/// with `after` plays those postbacks first and expects an outcome (`expect_outcome`) or a
/// reject (`expect_reject`).
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
                Expectation::Reject(want) if !t.after.is_empty() => {
                    check_reject_after(rule, set, t, zone, want)
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

/// What the store makes of a lifecycle test's `query` once its `after` postbacks are stored,
/// decided as the live relay decides it.
enum Played {
    /// The rule rejects or skips the postback (an update-only postback also when its
    /// `[updates] key` fields have no value); no conversion is looked at.
    Mapped(Outcome),
    /// An update-only postback whose key finds no conversion: rejected with this reason.
    Unmatched(String),
    /// A later postback of the conversion of `after`.
    Decided(Decision),
}

/// Plays `after` (postbacks of the source that creates the conversion: the rule itself, or
/// the `of` source of an update-only rule) then `query`. `Err` says why the test cannot be
/// played.
///
/// As live: `after` is decided by the creating source's `[updates]`, `query` by the rule's
/// own (an update-only source's transitions are its own table, or the default when it sets
/// none, never its `of` source's); with `[updates] enabled = false` every repeat is a
/// duplicate.
fn play(rule: &Rule, set: &RuleSet, t: &RuleTest, zone: &TimeZone) -> Result<Played, String> {
    let creator = match &rule.updates.only {
        Some(only) => match set.get(&only.of) {
            Some(r) => r.as_ref(),
            None => return Err(format!("[updates] of = {:?} is not loaded", only.of)),
        },
        None => rule,
    };
    let mut conversion: Option<(Map<String, Value>, Map<String, Value>)> = None;
    for (i, q) in t.after.iter().enumerate() {
        let body = match apply_query(creator, t, q, None, zone) {
            Outcome::Forward(m) => m.body,
            other => {
                return Err(format!(
                    "after[{i}] is not forwarded by source {}: {}",
                    creator.source,
                    describe_outcome(&other)
                ));
            }
        };
        match &mut conversion {
            None => conversion = Some((body.clone(), lifecycle::tracked(&body))),
            Some((_, tracked)) if creator.updates.enabled => {
                if let Decision::Update { change } =
                    lifecycle::decide(tracked, &body, &creator.updates.transitions)
                {
                    *tracked = lifecycle::overlay(tracked, [&change]);
                }
            }
            Some(_) => {}
        }
    }
    let Some((created, tracked)) = conversion else {
        return Err("after = [...] is empty: no conversion to play the postback on".into());
    };
    let body = match apply_test(rule, t, zone) {
        Outcome::Forward(m) => m.body,
        other => return Ok(Played::Mapped(other)),
    };
    if let Some(only) = &rule.updates.only {
        let lookup = match Lookup::of_body(only, &body) {
            Ok(lookup) => lookup,
            Err(reason) => return Ok(Played::Mapped(Outcome::Reject { reason })),
        };
        let same = |field: &str, v: &Option<String>| {
            v.as_ref()
                .is_none_or(|v| created.get(field).and_then(Value::as_str) == Some(v))
        };
        if !(same("click_id", &lookup.click_id) && same("adv_order_id", &lookup.order_id)) {
            let preview = crate::store::Preview::unmatched(&lookup);
            return Ok(Played::Unmatched(preview.reason.unwrap_or_default()));
        }
    }
    if !rule.updates.enabled {
        return Ok(Played::Decided(Decision::Duplicate));
    }
    Ok(Played::Decided(lifecycle::decide(
        &tracked,
        &body,
        &rule.updates.transitions,
    )))
}

/// One line for what a played postback became, as a failure prints it after "got".
fn describe_played(rule: &Rule, played: &Played) -> String {
    match played {
        Played::Mapped(o) => describe_outcome(o),
        Played::Unmatched(reason) => format!("reject: {reason}"),
        Played::Decided(Decision::Stale { reason }) => format!("stale: {reason}"),
        Played::Decided(Decision::Update { change }) => {
            format!("update sending {}", Value::Object(change.clone()))
        }
        Played::Decided(Decision::Duplicate) if !rule.updates.enabled => {
            "duplicate ([updates] enabled = false: every repeat is a duplicate)".into()
        }
        Played::Decided(Decision::Duplicate) => "duplicate".into(),
    }
}

/// A test with `after` and `expect_reject`: the postback is rejected once the conversion of
/// `after` is stored (by the rule, or as an update-only postback that finds no conversion).
fn check_reject_after(
    rule: &Rule,
    set: &RuleSet,
    t: &RuleTest,
    zone: &TimeZone,
    want: &str,
) -> Option<String> {
    let played = match play(rule, set, t, zone) {
        Ok(p) => p,
        Err(why) => return Some(why),
    };
    match &played {
        Played::Mapped(Outcome::Reject { reason }) | Played::Unmatched(reason)
            if reason.contains(want) =>
        {
            None
        }
        _ => Some(format!(
            "expected reject with a reason containing {want:?}\n     got {}",
            describe_played(rule, &played)
        )),
    }
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
    let played = match play(rule, set, t, zone) {
        Ok(p) => p,
        Err(why) => return Some(why),
    };
    let (got_outcome, got_change) = match &played {
        Played::Decided(Decision::Duplicate) => (ChangeOutcome::Duplicate, None),
        Played::Decided(Decision::Stale { .. }) => (ChangeOutcome::Stale, None),
        Played::Decided(Decision::Update { change }) => (ChangeOutcome::Update, Some(change)),
        Played::Mapped(_) | Played::Unmatched(_) => {
            return Some(format!(
                "expected {}\n     got {}",
                want.as_str(),
                describe_played(rule, &played)
            ));
        }
    };
    if got_outcome != want {
        return Some(format!(
            "expected {}\n     got {}",
            want.as_str(),
            describe_played(rule, &played)
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
