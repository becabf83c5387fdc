//! `[params]` (ignore_case, repeated, placeholders) and every unresolved-macro dialect.

use postback_relay::rules::Outcome;
use serde_json::json;

use super::{body, outcome, rejected, rule};

#[test]
fn ignore_case_matches_parameter_names_in_any_case() {
    let r = rule(
        r#"[params]
ignore_case = true
[fields]
click_id = "clickId"
[[skip]]
match = { Test = "1" }
reason = "test"
"#,
    );
    for q in ["CLICKID=a", "clickid=a", "ClickId=a"] {
        assert_eq!(body(&r, q), json!({"click_id": "a"}).to_string(), "{q}");
    }
    assert_eq!(
        outcome(&r, "TEST=1"),
        Outcome::Skip {
            reason: "test".into()
        }
    );
}

#[test]
fn without_ignore_case_names_match_exactly() {
    let r = rule("[fields]\nclick_id = \"clickid\"\n");
    assert!(rejected(&r, "CLICKID=a").starts_with("click_id"));
}

#[test]
fn repeated_first_is_the_default() {
    let r = rule("[fields]\nclick_id = \"cid\"\n");
    assert_eq!(
        body(&r, "cid=a&cid=b"),
        json!({"click_id": "a"}).to_string()
    );
    let r = rule("[params]\nrepeated = \"first\"\n[fields]\nclick_id = \"cid\"\n");
    assert_eq!(
        body(&r, "cid=a&cid=b"),
        json!({"click_id": "a"}).to_string()
    );
}

#[test]
fn repeated_last_takes_the_last_occurrence() {
    let r = rule("[params]\nrepeated = \"last\"\n[fields]\nclick_id = \"cid\"\n");
    assert_eq!(
        body(&r, "cid=a&cid=b"),
        json!({"click_id": "b"}).to_string()
    );
}

#[test]
fn repeated_reject_names_the_parameter_the_rule_reads() {
    let r =
        rule("[params]\nrepeated = \"reject\"\n[fields]\nclick_id = \"cid\"\nrevenue = \"amt\"\n");
    let reason = rejected(&r, "cid=a&amt=1&amt=2");
    assert!(reason.contains("amt"), "{reason}");
    assert!(!reason.contains("cid"), "{reason}");
    // A repeated parameter the rule does not read is harmless.
    assert_eq!(
        body(&r, "cid=a&utm=1&utm=2"),
        json!({"click_id": "a"}).to_string()
    );
}

#[test]
fn repeated_reject_counts_names_case_insensitively_with_ignore_case() {
    let r =
        rule("[params]\nrepeated = \"reject\"\nignore_case = true\n[fields]\nclick_id = \"cid\"\n");
    assert!(rejected(&r, "cid=a&CID=b").contains("cid"));
}

#[test]
fn placeholders_are_no_value_exactly_and_case_sensitively() {
    let r = rule(
        r#"[params]
placeholders = ["REPLACE", "TRANSACTION_ID"]
[fields]
click_id = ["transaction_id", "cid"]
"#,
    );
    assert_eq!(
        body(&r, "transaction_id=TRANSACTION_ID&cid=c-1"),
        json!({"click_id": "c-1"}).to_string()
    );
    assert!(rejected(&r, "transaction_id=REPLACE").contains("placeholder"));
    assert_eq!(
        body(&r, "transaction_id=replace"),
        json!({"click_id": "replace"}).to_string()
    );
    assert_eq!(
        body(&r, "transaction_id=REPLACE_ME"),
        json!({"click_id": "REPLACE_ME"}).to_string()
    );
}

#[test]
fn every_macro_dialect_is_no_value_raw_and_url_encoded() {
    let r = rule("[fields]\nclick_id = [\"cid\", \"fallback\"]\n");
    for raw in [
        "{clickid}",
        "{{clickid}}",
        "${CLICKID}",
        "[clickid]",
        "(clickid)",
        "%23clickid%23",
        "%clickid%",
        "<clickid>",
        "{click id}",
        "{replace_or_remove}",
        "%7Bclickid%7D",
        "%257Bclickid%257D",
        "%24%7BCLICKID%7D",
        "%5Bclickid%5D",
        "%28clickid%29",
        "%3Cclickid%3E",
        "%2525clickid%2525",
        "%7B%7Bclickid%7D%7D",
    ] {
        assert_eq!(
            body(&r, &format!("cid={raw}&fallback=real")),
            json!({"click_id": "real"}).to_string(),
            "{raw} must count as no value"
        );
        let reason = rejected(&r, &format!("cid={raw}"));
        assert!(reason.contains("unresolved macro"), "{raw}: {reason}");
    }
}

#[test]
fn json_objects_and_bracketed_text_with_other_characters_are_values() {
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_param1 = \"x\"\n");
    for (raw, want) in [
        ("%7B%22a%22%3A1%7D", r#"{"a":1}"#),
        ("%5B1%2C2%5D", "[1,2]"),
        ("%23A-1", "#A-1"),
        ("(c)+2024", "(c) 2024"),
    ] {
        assert_eq!(
            body(&r, &format!("cid=a&x={raw}")),
            json!({"click_id": "a", "adv_param1": want}).to_string()
        );
    }
}

#[test]
fn parameter_names_are_percent_decoded_and_may_start_with_dollar_or_tilde() {
    let r = rule("[fields]\nclick_id = \"$clickid\"\nadv_param1 = \"~sub\"\nadv_param2 = \"o\"\n");
    assert_eq!(
        body(&r, "%24clickid=a&~sub=x+y&%6F=1"),
        json!({"click_id": "a", "adv_param1": "x y", "adv_param2": "1"}).to_string()
    );
}

#[test]
fn malformed_percent_sequences_stay_literal_and_invalid_utf8_is_replaced() {
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_param1 = \"x\"\n");
    assert_eq!(
        body(&r, "cid=a&x=100%zz"),
        json!({"click_id": "a", "adv_param1": "100%zz"}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&x=%FFok"),
        json!({"click_id": "a", "adv_param1": "\u{FFFD}ok"}).to_string()
    );
}
