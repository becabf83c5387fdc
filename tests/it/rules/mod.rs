//! Integration tests of the rule engine through the public API and the binary:
//! the shipped `rules/` files and their `[[tests]]` (`shipped`), every feature of the rule
//! format on small inline rule files (`fields`, `params`, `flow`), load-time diagnostics
//! (`load_errors`) and the `check` / `test` / `map` commands (`cli`).

mod alerts;
mod cli;
mod fields;
mod flow;
mod load_errors;
mod params;
mod props;
mod senders;
mod shipped;
mod updates;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use postback_relay::rules::{self, EnvMode, Input, Mapped, Outcome, Rule, decode_form};
use serde_json::Value;

/// Compiles an inline rule file as source `acme` (file `acme.toml`), panicking with every
/// diagnostic when it does not compile.
pub fn rule(text: &str) -> Rule {
    rules::compile("acme", "acme.toml", text, EnvMode::Ignore).unwrap_or_else(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("the rule does not compile:\n{}", lines.join("\n"))
    })
}

/// The `file:line:col: message` lines of a rule file that must not compile.
pub fn problems(text: &str) -> Vec<String> {
    match rules::compile("acme", "acme.toml", text, EnvMode::Ignore) {
        Ok(_) => panic!("the rule compiled, but problems were expected"),
        Err(list) => list.iter().map(ToString::to_string).collect(),
    }
}

/// Request attributes for the special sources.
#[derive(Default, Clone, Copy)]
pub struct Request<'a> {
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub received_at: Option<Timestamp>,
}

/// Applies `rule` to a raw query string, network zone UTC.
pub fn outcome(rule: &Rule, query: &str) -> Outcome {
    outcome_with(rule, query, Request::default(), &TimeZone::UTC)
}

pub fn outcome_with(rule: &Rule, query: &str, req: Request<'_>, zone: &TimeZone) -> Outcome {
    let params = decode_form(query.as_bytes());
    let input = Input {
        params: &params,
        json_numbers: &[],
        client_ip: req.client_ip,
        user_agent: req.user_agent,
        referer: req.referer,
        received_at: req.received_at,
    };
    rule.apply(&input, zone)
}

/// The mapped body of a postback that must be forwarded.
pub fn mapped(rule: &Rule, query: &str) -> Mapped {
    match outcome(rule, query) {
        Outcome::Forward(m) => m,
        other => panic!("expected a forward for {query:?}, got {other:?}"),
    }
}

/// The body as the JSON text sent to Scaleo.
pub fn body(rule: &Rule, query: &str) -> String {
    text_of(outcome(rule, query), query)
}

pub fn text_of(outcome: Outcome, query: &str) -> String {
    match outcome {
        Outcome::Forward(m) => serde_json::to_string(&m.body).unwrap(),
        other => panic!("expected a forward for {query:?}, got {other:?}"),
    }
}

/// The reason of a postback that must be rejected.
pub fn rejected(rule: &Rule, query: &str) -> String {
    match outcome(rule, query) {
        Outcome::Reject { reason } => reason,
        other => panic!("expected a reject for {query:?}, got {other:?}"),
    }
}

/// A JSON number from its exact text (serde_json's `arbitrary_precision` is on).
pub fn num(text: &str) -> Value {
    Value::Number(text.parse().unwrap())
}
