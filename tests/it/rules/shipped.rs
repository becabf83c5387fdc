//! The shipped `rules/` directory: every file loads as `serve` would load it on a fresh
//! machine, and every `[[tests]]` case passes, so the examples cannot drift from the engine.

use std::path::PathBuf;

use jiff::tz::TimeZone;
use postback_relay::rules::{EnvMode, Outcome, RuleSet, testing};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn shipped(env: EnvMode) -> RuleSet {
    RuleSet::load_dir(&rules_dir(), env).unwrap_or_else(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("the shipped rules do not load:\n{}", lines.join("\n"))
    })
}

#[test]
fn shipped_rules_load_without_any_environment_secret() {
    // EnvMode::Resolve is what `serve` uses: a `${VAR}` left in a shipped file would stop
    // the README's run command on a fresh machine.
    let set = shipped(EnvMode::Resolve);
    let sources: Vec<&str> = set.iter().map(|r| r.source.as_str()).collect();
    for want in [
        "adjust",
        "affise",
        "appsflyer",
        "binom",
        "cake",
        "everflow",
        "ironsource",
        "keitaro",
        "pixel",
        "shopify",
        "tune",
        "voluum",
        "webhook",
    ] {
        assert!(sources.contains(&want), "rules/{want}.toml is missing");
    }
}

#[test]
fn every_shipped_rule_file_passes_its_tests() {
    let set = shipped(EnvMode::Ignore);
    let mut failures = Vec::new();
    let mut ran = 0;
    for rule in set.iter() {
        assert!(
            rule.tests.len() >= 5,
            "rules/{}.toml has only {} [[tests]]",
            rule.source,
            rule.tests.len()
        );
        for result in testing::run(rule, &set, &TimeZone::UTC) {
            ran += 1;
            if let Some(why) = result.failure {
                failures.push(format!(
                    "rules/{}.toml:{} {:?}\n{why}",
                    result.source, result.line, result.name
                ));
            }
        }
    }
    assert!(ran >= 50, "only {ran} shipped tests ran");
    assert!(
        failures.is_empty(),
        "{} shipped test(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_shipped_file_is_documented_and_tests_forwards_and_rejects() {
    let set = shipped(EnvMode::Ignore);
    for rule in set.iter() {
        assert!(
            rule.description.is_some(),
            "{} has no description",
            rule.source
        );
        let outcomes: Vec<Outcome> = rule
            .tests
            .iter()
            .map(|t| testing::apply_test(rule, t, &TimeZone::UTC))
            .collect();
        assert!(
            outcomes.iter().any(|o| matches!(o, Outcome::Forward(_))),
            "{}: no test forwards",
            rule.source
        );
        // An update-only source needs no click id: the field that finds the conversion
        // takes its place.
        let identity = match &rule.updates.only {
            Some(only) => only.key[0],
            None => "click_id",
        };
        assert!(
            outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Reject { reason } if reason.starts_with(identity))),
            "{}: no test rejects a missing {identity}",
            rule.source
        );
        let text =
            std::fs::read_to_string(rules_dir().join(format!("{}.toml", rule.source))).unwrap();
        let comments = text
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count();
        assert!(
            comments >= 8,
            "{}: explain the sender's quirks in comments",
            rule.source
        );
    }
}

#[test]
fn voluum_txid_keeps_repeated_conversions_apart_and_dedupes_retries() {
    let set = shipped(EnvMode::Ignore);
    let rule = set.get("voluum").unwrap();
    let key = |q: &str| {
        let params = postback_relay::rules::decode_form(q.as_bytes());
        let input = postback_relay::rules::Input {
            params: &params,
            ..Default::default()
        };
        match rule.apply(&input, &TimeZone::UTC) {
            Outcome::Forward(m) => m.dedupe_key.unwrap(),
            o => panic!("{o:?}"),
        }
    };
    let first = key("cid=C1&payout=10&txid=T-1&et=deposit");
    assert_eq!(first, key("cid=C1&payout=10&txid=T-1&et=deposit"));
    assert_ne!(first, key("cid=C1&payout=10&txid=T-2&et=deposit"));
}
