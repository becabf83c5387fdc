//! Order of evaluation (`[[skip]]`, `[fields]`, `[[when]]`), goal exclusivity, JSON types of
//! the body and the dedupe key.

use postback_relay::rules::Outcome;
use serde_json::json;

use super::{body, mapped, outcome, rejected, rule};

#[test]
fn skip_is_checked_before_any_reject() {
    let r = rule(
        r#"[params]
repeated = "reject"
[fields]
click_id = "cid"
revenue = "amt"
[[skip]]
match = { test = ["1", "true"] }
reason = "test postback"
"#,
    );
    for q in [
        "test=1",
        "test=true&cid={cid}",
        "test=1&cid=a&cid=b",
        "test=1&cid=a&amt=abc",
    ] {
        assert_eq!(
            outcome(&r, q),
            Outcome::Skip {
                reason: "test postback".into()
            },
            "{q}"
        );
    }
    // Matching is exact and case-sensitive.
    assert!(rejected(&r, "test=TRUE").starts_with("click_id"));
}

#[test]
fn skip_needs_every_listed_parameter_to_match() {
    let r = rule(
        r#"[fields]
click_id = "cid"
[[skip]]
match = { status = "test", env = ["qa", "dev"] }
reason = "qa ping"
"#,
    );
    assert!(matches!(
        outcome(&r, "cid=a&status=test&env=dev"),
        Outcome::Skip { .. }
    ));
    assert!(matches!(
        outcome(&r, "cid=a&status=test"),
        Outcome::Forward(_)
    ));
    assert!(matches!(
        outcome(&r, "cid=a&status=test&env=prod"),
        Outcome::Forward(_)
    ));
}

#[test]
fn when_overrides_apply_in_order_the_last_match_wins() {
    let r = rule(
        r#"[fields]
click_id = "cid"
goal_alias = "ev"
revenue = "amt"
[[when]]
match = { ev = ["install", "reinstall"] }
set = { goal_alias = { value = "install" }, revenue = { value = "0" } }
[[when]]
match = { ev = "reinstall" }
set = { goal_alias = { value = "reinstall" } }
"#,
    );
    assert_eq!(
        body(&r, "cid=a&ev=install&amt=5"),
        json!({"click_id": "a", "goal_alias": "install", "revenue": 0}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&ev=reinstall&amt=5"),
        json!({"click_id": "a", "goal_alias": "reinstall", "revenue": 0}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&ev=purchase&amt=5"),
        json!({"click_id": "a", "goal_alias": "purchase", "revenue": 5}).to_string()
    );
}

#[test]
fn when_set_field_without_a_value_removes_it() {
    let r = rule(
        r#"[fields]
click_id = "cid"
revenue = "amt"
[[when]]
match = { kind = "refund" }
set = { revenue = "refund_amt" }
"#,
    );
    assert_eq!(
        body(&r, "cid=a&amt=5&kind=refund"),
        json!({"click_id": "a"}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&amt=5&kind=refund&refund_amt=-5"),
        json!({"click_id": "a", "revenue": -5}).to_string()
    );
}

#[test]
fn when_setting_goal_alias_removes_goal_id_and_the_other_way_round() {
    let r = rule(
        r#"[fields]
click_id = "cid"
goal_id = { value = 12 }
[[when]]
match = { ev = "install" }
set = { goal_alias = { value = "install" } }
[[when]]
match = { ev = "deposit" }
set = { goal_id = "gid" }
"#,
    );
    assert_eq!(
        body(&r, "cid=a&ev=install"),
        json!({"click_id": "a", "goal_alias": "install"}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&ev=buy"),
        json!({"click_id": "a", "goal_id": 12}).to_string()
    );
    let r = rule(
        r#"[fields]
click_id = "cid"
goal_alias = "ev"
[[when]]
match = { ev = "deposit" }
set = { goal_id = { value = 7 } }
"#,
    );
    assert_eq!(
        body(&r, "cid=a&ev=deposit"),
        json!({"click_id": "a", "goal_id": 7}).to_string()
    );
}

#[test]
fn a_body_that_would_carry_both_goal_id_and_goal_alias_rejects() {
    let r = rule("[fields]\nclick_id = \"cid\"\ngoal_id = \"gid\"\ngoal_alias = \"ga\"\n");
    let reason = rejected(&r, "cid=a&gid=3&ga=sale");
    assert!(
        reason.contains("goal_id") && reason.contains("goal_alias"),
        "{reason}"
    );
    assert_eq!(
        body(&r, "cid=a&gid=3&ga="),
        json!({"click_id": "a", "goal_id": 3}).to_string()
    );
}

#[test]
fn a_when_that_sets_both_goal_id_and_goal_alias_rejects_when_both_have_values() {
    // One [[when]] setting both must not silently drop one of them (the goal, and so the
    // payout, would depend on the order of the keys); with both values it rejects, with one
    // the other is simply absent.
    let r = rule(
        r#"[fields]
click_id = "cid"
[[when]]
match = { ev = "sale" }
set = { goal_alias = "ga", goal_id = "gid" }
"#,
    );
    let reason = rejected(&r, "cid=a&ev=sale&gid=3&ga=sale");
    assert!(
        reason.contains("goal_id") && reason.contains("goal_alias"),
        "{reason}"
    );
    assert_eq!(
        body(&r, "cid=a&ev=sale&ga=sale"),
        json!({"click_id": "a", "goal_alias": "sale"}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&ev=sale&gid=3"),
        json!({"click_id": "a", "goal_id": 3}).to_string()
    );
}

#[test]
fn goal_id_is_a_json_integer_and_rejects_anything_else() {
    let r = rule("[fields]\nclick_id = \"cid\"\ngoal_id = \"g\"\n");
    assert_eq!(body(&r, "cid=a&g=12"), r#"{"click_id":"a","goal_id":12}"#);
    for g in ["12.5", "twelve", "1e2"] {
        assert!(
            rejected(&r, &format!("cid=a&g={g}")).starts_with("goal_id"),
            "{g}"
        );
    }
}

#[test]
fn text_fields_stay_strings_even_when_numeric() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = \"oid\"\nsub_id1 = \"s\"\npostcode = \"zip\"\n",
    );
    assert_eq!(
        body(&r, "cid=1234567&oid=1234567&s=0.50&zip=01234"),
        r#"{"adv_order_id":"1234567","click_id":"1234567","postcode":"01234","sub_id1":"0.50"}"#
    );
}

#[test]
fn dedupe_key_is_equal_for_equal_key_fields_and_different_otherwise() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = \"oid\"\nrevenue = \"amt\"\ngoal_alias = \"ev\"\n",
    );
    let key = |q: &str| mapped(&r, q).dedupe_key.expect("dedupe is on by default");
    // revenue is not part of the default key: a retry with another amount is the same event.
    assert_eq!(
        key("cid=a&oid=1&ev=buy&amt=5"),
        key("amt=6&ev=buy&oid=1&cid=a")
    );
    assert_ne!(key("cid=a&oid=1&ev=buy"), key("cid=a&oid=2&ev=buy"));
    assert_ne!(key("cid=a&oid=1&ev=buy"), key("cid=b&oid=1&ev=buy"));
    assert_ne!(key("cid=a&oid=1&ev=buy"), key("cid=a&oid=1&ev=sell"));
    assert_ne!(key("cid=a&oid=1"), key("cid=a"));
}

#[test]
fn dedupe_key_follows_the_configured_fields_and_the_source() {
    let text = "[fields]\nclick_id = \"cid\"\nrevenue = \"amt\"\n[dedupe]\nkey = [\"click_id\", \"revenue\"]\nwindow = \"1h\"\n";
    let r = rule(text);
    assert_eq!(r.dedupe.window, std::time::Duration::from_secs(3600));
    let key = |q: &str| mapped(&r, q).dedupe_key.unwrap();
    assert_eq!(key("cid=a&amt=5.0"), key("cid=a&amt=5"));
    assert_ne!(key("cid=a&amt=5"), key("cid=a&amt=6"));
    let other = postback_relay::rules::compile(
        "other",
        "other.toml",
        text,
        postback_relay::rules::EnvMode::Ignore,
    )
    .unwrap();
    let other_key = match outcome(&other, "cid=a&amt=5") {
        Outcome::Forward(m) => m.dedupe_key.unwrap(),
        o => panic!("{o:?}"),
    };
    assert_ne!(key("cid=a&amt=5"), other_key);
}

#[test]
fn empty_dedupe_key_turns_dedupe_off() {
    let r = rule("[fields]\nclick_id = \"cid\"\n[dedupe]\nkey = []\n");
    assert_eq!(mapped(&r, "cid=a").dedupe_key, None);
}

#[test]
fn regression_missing_click_id_from_a_when_names_the_when_parameters() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\n[[when]]\nmatch = { kind = \"s2s\" }\nset = { click_id = \"tid\" }\n",
    );
    let reason = rejected(&r, "kind=s2s&cid=b&tid={tid}");
    assert!(
        reason.contains("tid=\"{tid}\" (unresolved macro)"),
        "{reason}"
    );
    assert!(!reason.contains("cid"), "{reason}");
}
