//! What the second round of real senders showed (times, macros, accounting negatives, JSON
//! numbers, offsets) and the rule features they needed: conditions, regex extraction,
//! templates and constants among alternatives, time lists, prefix placeholders.

use serde_json::json;

use super::{body, mapped, num, rejected, rule};

// --- wrong outputs ------------------------------------------------------------------------

#[test]
fn auto_time_reads_compact_dates_instead_of_unix_time() {
    let r = rule("[fields]\nclick_id = \"cid\"\ntimestamp = { from = \"ts\", time = \"auto\" }\n");
    for (ts, want) in [
        ("20240520094128", "2024-05-20 09:41:28"),
        ("20240520", "2024-05-20 00:00:00"),
        ("202405200941", "2024-05-20 09:41:00"),
    ] {
        let m = mapped(&r, &format!("cid=a&ts={ts}"));
        assert_eq!(m.body["timestamp"], json!(want), "{ts}");
    }
}

#[test]
fn unix_time_zero_rejects_instead_of_becoming_1970() {
    for time in ["auto", "unix"] {
        let r = rule(&format!(
            "[fields]\nclick_id = \"cid\"\ntimestamp = {{ from = \"ts\", time = \"{time}\" }}\n"
        ));
        let reason = rejected(&r, "cid=a&ts=0");
        assert!(reason.starts_with("timestamp"), "{reason}");
        assert!(reason.contains("2000-01-01"), "{reason}");
    }
}

#[test]
fn unencoded_percent_macros_are_no_value_not_garbled_click_ids() {
    let r = rule("[fields]\nclick_id = [\"aff_sub\", \"cid\"]\n");
    for q in [
        "aff_sub=%%AFF_SUB%%&cid=real",
        "aff_sub=%AFF_SUB%&cid=real",
        "aff_sub=%ADV_SUB%&cid=real",
        "aff_sub=%25%25AFF_SUB%25%25&cid=real",
    ] {
        assert_eq!(mapped(&r, q).click_id.as_deref(), Some("real"), "{q}");
    }
    let reason = rejected(&r, "aff_sub=%%AFF_SUB%%");
    assert!(reason.contains("unresolved macro"), "{reason}");
}

#[test]
fn every_macro_dialect_of_the_new_senders_is_no_value() {
    let r = rule("[fields]\nclick_id = \"cid\"\n");
    for v in [
        "%25%25TRANSACTION_ID%25%25",
        "!!!clickRef!!!",
        "%7B%24data1%7D",
        "%24%7B(a.~b)!%7D",
        "${a.~b}",
        "__CLICKID__",
        "undefined",
        "null",
        "NaN",
    ] {
        let reason = rejected(&r, &format!("cid={v}"));
        assert!(reason.starts_with("click_id"), "{v}: {reason}");
        assert!(reason.contains("unresolved macro"), "{v}: {reason}");
    }
}

#[test]
fn accounting_negative_is_a_refund_not_a_macro() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nrevenue = \"amt\"\nadv_param1 = { from = \"amt\", number = true }\n",
    );
    let m = mapped(&r, "cid=a&amt=(12.50)");
    assert_eq!(m.body["revenue"], num("-12.5"));
    assert_eq!(m.body["adv_param1"], json!("-12.50"));
}

#[test]
fn json_number_with_a_decimal_comma_rule_is_not_multiplied_by_a_thousand() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"ev\", json = \"/total\", decimal = \"comma\" }\n",
    );
    let m = mapped(&r, "cid=a&ev=%7B%22total%22%3A1.500%7D");
    assert_eq!(m.body["revenue"], num("1.5"));
}

#[test]
fn offset_whose_plus_arrived_unencoded_is_read_under_auto_and_z_patterns() {
    for time in ["auto", "%Y-%m-%d %H:%M:%S %z"] {
        let r = rule(&format!(
            "[fields]\nclick_id = \"cid\"\ntimestamp = {{ from = \"ts\", time = \"{time}\" }}\n"
        ));
        for ts in [
            "2024-05-20%2009:41:28%20+0200",
            "2024-05-20+09:41:28++02:00",
            "2024-05-20%2009:41:28%20%2B0200",
        ] {
            let m = mapped(&r, &format!("cid=a&ts={ts}"));
            assert_eq!(
                m.body["timestamp"],
                json!("2024-05-20 07:41:28"),
                "{time} {ts}"
            );
        }
    }
}

// --- placeholders -------------------------------------------------------------------------

#[test]
fn placeholder_with_a_trailing_star_matches_a_prefix() {
    let r = rule(
        "[params]\nplaceholders = [\"TPL_*\", \"REPLACE\"]\n[fields]\nclick_id = [\"s1\", \"cid\"]\n",
    );
    assert_eq!(
        mapped(&r, "s1=TPL_CLICKID&cid=real").click_id.as_deref(),
        Some("real")
    );
    assert_eq!(
        mapped(&r, "s1=REPLACE&cid=real").click_id.as_deref(),
        Some("real")
    );
    assert_eq!(
        mapped(&r, "s1=XTPL_1&cid=real").click_id.as_deref(),
        Some("XTPL_1")
    );
}

// --- conditions ---------------------------------------------------------------------------

const CONDITIONS: &str = r#"
[fields]
click_id = "cid"
goal_alias = { value = "sale" }
revenue = "amt"

[[when]]
match = { amt = { lt = 0 } }
set = { goal_alias = { value = "refund" } }

[[when]]
match = { coupon = { absent = false } }
set = { adv_param1 = "coupon" }

[[when]]
match = { ev = { json = "/event/type", in = ["purchase", "order"] } }
set = { adv_param2 = { value = "shop" } }

[[skip]]
match = { ev = { json = "/event/type", is = "organic" } }
reason = "organic install"

[[skip]]
match = { cid = { absent = true }, test = "1" }
reason = "test without a click"
"#;

#[test]
fn numeric_condition_matches_the_parsed_number() {
    let r = rule(CONDITIONS);
    assert_eq!(
        mapped(&r, "cid=a&amt=-5").body["goal_alias"],
        json!("refund")
    );
    assert_eq!(
        mapped(&r, "cid=a&amt=(5,00)").body["goal_alias"],
        json!("refund")
    );
    assert_eq!(mapped(&r, "cid=a&amt=5").body["goal_alias"], json!("sale"));
    assert_eq!(mapped(&r, "cid=a&amt=0").body["goal_alias"], json!("sale"));
    // A value that is not a number does not match (revenue rejects it on its own).
    let reason = rejected(&r, "cid=a&amt=abc");
    assert!(reason.starts_with("revenue"), "{reason}");
    assert_eq!(mapped(&r, "cid=a").body["goal_alias"], json!("sale"));
}

#[test]
fn absent_condition_counts_macros_and_empty_values_as_absent() {
    let r = rule(CONDITIONS);
    assert_eq!(
        mapped(&r, "cid=a&coupon=X1").body["adv_param1"],
        json!("X1")
    );
    for q in ["cid=a&coupon=", "cid=a&coupon={coupon}", "cid=a"] {
        assert!(mapped(&r, q).body.get("adv_param1").is_none(), "{q}");
    }
    assert_eq!(
        super::outcome(&r, "cid={clickid}&test=1"),
        postback_relay::rules::Outcome::Skip {
            reason: "test without a click".into()
        }
    );
}

#[test]
fn json_condition_matches_a_value_inside_a_json_parameter() {
    let r = rule(CONDITIONS);
    let organic = "cid=a&ev=%7B%22event%22%3A%7B%22type%22%3A%22organic%22%7D%7D";
    assert!(matches!(
        super::outcome(&r, organic),
        postback_relay::rules::Outcome::Skip { .. }
    ));
    let order = "cid=a&ev=%7B%22event%22%3A%7B%22type%22%3A%22order%22%7D%7D";
    assert_eq!(mapped(&r, order).body["adv_param2"], json!("shop"));
    // Not JSON, or the pointer finds nothing: no match, never a reject.
    for q in ["cid=a&ev=organic", "cid=a&ev=%7B%7D"] {
        let m = mapped(&r, q);
        assert!(m.body.get("adv_param2").is_none(), "{q}");
    }
}

#[test]
fn json_condition_compares_json_numbers() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\n[[skip]]\nmatch = { ev = { json = \"/total\", le = 0 } }\nreason = \"zero order\"\n",
    );
    assert!(matches!(
        super::outcome(&r, "cid=a&ev=%7B%22total%22%3A0.00%7D"),
        postback_relay::rules::Outcome::Skip { .. }
    ));
    assert!(matches!(
        super::outcome(&r, "cid=a&ev=%7B%22total%22%3A1e1%7D"),
        postback_relay::rules::Outcome::Forward(_)
    ));
}

// --- regex, alternatives, time lists ------------------------------------------------------

#[test]
fn regex_keeps_the_capture_group_and_a_mismatch_rejects_naming_the_field() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"order\", regex = \"gid://shopify/Order/(\\\\d+)\" }\n",
    );
    let m = mapped(&r, "cid=a&order=gid%3A%2F%2Fshopify%2FOrder%2F123");
    assert_eq!(m.body["adv_order_id"], json!("123"));
    let reason = rejected(&r, "cid=a&order=A-1");
    assert!(reason.starts_with("adv_order_id"), "{reason}");
    assert!(reason.contains("regex"), "{reason}");
    // No value stays no value: the field is left out.
    assert!(
        mapped(&r, "cid=a&order={order_id}")
            .body
            .get("adv_order_id")
            .is_none()
    );
}

#[test]
fn regex_runs_before_number_parsing() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", regex = \"^USD ([0-9.]+)$\" }\n",
    );
    assert_eq!(
        mapped(&r, "cid=a&amt=USD+12.50").body["revenue"],
        num("12.5")
    );
}

#[test]
fn template_among_alternatives_joins_split_click_ids() {
    let r = rule(
        "[fields]\nclick_id = [{ template = \"{s2}{s3}\" }, \"s2\"]\nadv_param1 = [\"p\", { value = \"none\" }]\n",
    );
    let m = mapped(&r, "s2=abc&s3=def");
    assert_eq!(m.click_id.as_deref(), Some("abcdef"));
    assert_eq!(m.body["adv_param1"], json!("none"));
    // The template has no value when a name in it has none: the next alternative wins.
    assert_eq!(
        mapped(&r, "s2=abc&s3=%7Bs3%7D").click_id.as_deref(),
        Some("abc")
    );
    assert_eq!(mapped(&r, "s2=abc").click_id.as_deref(), Some("abc"));
    assert_eq!(mapped(&r, "s2=abc&p=x").body["adv_param1"], json!("x"));
    let reason = rejected(&r, "s3=def");
    assert!(reason.contains("s2"), "{reason}");
}

#[test]
fn time_list_tries_each_pattern_in_order() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\ntimestamp = { from = \"ts\", time = [\"%d/%m/%Y %H:%M:%S\", \"%d/%m/%Y\"], tz = \"+01:00\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&ts=20/05/2024+10:41:28"),
        json!({"click_id": "a", "timestamp": "2024-05-20 09:41:28"}).to_string()
    );
    assert_eq!(
        mapped(&r, "cid=a&ts=20/05/2024").body["timestamp"],
        json!("2024-05-19 23:00:00")
    );
    let reason = rejected(&r, "cid=a&ts=2024-05-20");
    assert!(reason.starts_with("timestamp"), "{reason}");
}

// --- tests with a POST body ---------------------------------------------------------------

#[test]
fn a_rule_test_can_send_a_form_or_json_body() {
    use postback_relay::rules::testing;
    let r = rule(
        r#"
[fields]
click_id = "cid"
revenue = "amt"
adv_order_id = { from = "order", json = "/id" }
[[tests]]
name = "form body after the query"
query = "cid=a"
body = "amt=12.50"
expect = { click_id = "a", revenue = 12.5 }
[[tests]]
name = "flat JSON body, a nested object read with json"
body = '{"cid": "b", "amt": 1.5, "order": {"id": "O-1"}}'
content_type = "json"
expect = { click_id = "b", revenue = 1.5, adv_order_id = "O-1" }
"#,
    );
    let results = testing::run(
        &r,
        &postback_relay::rules::RuleSet::default(),
        &jiff::tz::TimeZone::UTC,
    );
    assert_eq!(results.len(), 2);
    for result in results {
        assert!(
            result.failure.is_none(),
            "{}: {:?}",
            result.name,
            result.failure
        );
    }
}

#[test]
fn json_numbers_keep_their_value_under_map_keep_and_time() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"ev\", json = \"/rev\", map = { \"0\" = 0 }, unmapped = \"keep\" }\ntimestamp = { from = \"ev\", json = \"/ts\", time = \"unix\" }\n",
    );
    let m = mapped(
        &r,
        "cid=a&ev=%7B%22rev%22%3A12.500%2C%22ts%22%3A1.716198088e9%7D",
    );
    assert_eq!(m.body["revenue"], num("12.5"));
    assert_eq!(m.body["timestamp"], json!("2024-05-20 09:41:28"));
}

// --- numbers of a JSON body ---------------------------------------------------------------

/// Applies `rule` to a flat JSON body as ingest decodes it (numbers marked as JSON numbers).
fn json_body_outcome(
    r: &postback_relay::rules::Rule,
    body: &str,
) -> postback_relay::rules::Outcome {
    use postback_relay::rules::{BodyKind, Input, decode_body};
    let decoded = decode_body(body.as_bytes(), BodyKind::Json).unwrap();
    let input = Input {
        params: &decoded.pairs,
        json_numbers: &decoded.numbers,
        ..Input::default()
    };
    r.apply(&input, &jiff::tz::TimeZone::UTC)
}

fn json_body_mapped(r: &postback_relay::rules::Rule, body: &str) -> serde_json::Value {
    match json_body_outcome(r, body) {
        postback_relay::rules::Outcome::Forward(m) => serde_json::Value::Object(m.body),
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn json_body_number_is_read_as_a_json_number_whatever_the_decimal_mode() {
    for decimal in ["auto", "dot", "comma"] {
        let r = rule(&format!(
            "[fields]\nclick_id = \"cid\"\nrevenue = {{ from = \"amt\", decimal = \"{decimal}\" }}\n"
        ));
        for (body, want) in [
            (r#"{"cid":"a","amt":1.500}"#, "1.5"),
            (r#"{"cid":"a","amt":1e2}"#, "100"),
            (r#"{"cid":"a","amt":12.345}"#, "12.345"),
            (r#"{"cid":"a","amt":-0.25}"#, "-0.25"),
            (r#"{"cid":"a","amt":1234}"#, "1234"),
        ] {
            assert_eq!(
                json_body_mapped(&r, body)["revenue"],
                num(want),
                "{decimal}: {body}"
            );
        }
    }
    // The same text in a query still follows the rule's `decimal`.
    let r =
        rule("[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", decimal = \"comma\" }\n");
    assert_eq!(mapped(&r, "cid=a&amt=1.500").body["revenue"], num("1500"));
    // A JSON string is text, read like a query value.
    assert_eq!(
        json_body_mapped(&r, r#"{"cid":"a","amt":"1,5"}"#)["revenue"],
        num("1.5")
    );
}

#[test]
fn json_body_number_keeps_its_value_in_text_fields_conditions_scale_and_time() {
    let r = rule(
        r#"
[fields]
click_id = "cid"
adv_order_id = "order"
payout = { from = "cents", number = true, scale = 0.01, decimal = "comma" }
timestamp = { from = "ts", time = "unix" }
[[when]]
match = { amt = { lt = 0 } }
set = { goal_alias = { value = "refund" } }
"#,
    );
    let m = json_body_mapped(
        &r,
        r#"{"cid":"a","order":12345,"cents":1.999e3,"ts":1.7162e9,"amt":-1.500}"#,
    );
    assert_eq!(m["adv_order_id"], json!("12345"));
    assert_eq!(m["payout"], num("19.99"));
    assert_eq!(m["timestamp"], json!("2024-05-20 10:13:20"));
    assert_eq!(m["goal_alias"], json!("refund"));
}

#[test]
fn json_numbers_of_a_stored_query_are_read_as_json_numbers_again() {
    use postback_relay::rules::{Input, decode_stored};
    let r =
        rule("[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", decimal = \"comma\" }\n");
    let stored = decode_stored("cid=a&amt=1.5&%40json_numbers=1");
    assert_eq!(stored.numbers, vec![1]);
    let input = Input {
        params: &stored.pairs,
        json_numbers: &stored.numbers,
        ..Input::default()
    };
    let postback_relay::rules::Outcome::Forward(m) = r.apply(&input, &jiff::tz::TimeZone::UTC)
    else {
        panic!()
    };
    assert_eq!(m.body["revenue"], num("1.5"));
    // Only the last pair is the marker; an empty one keeps a sender's own pair of that name.
    let stored = decode_stored("%40json_numbers=0&cid=a&%40json_numbers=");
    assert_eq!(stored.pairs.len(), 2);
    assert!(stored.numbers.is_empty());
}

#[test]
fn a_rule_test_with_a_json_body_reads_its_numbers_as_json_numbers() {
    use postback_relay::rules::testing;
    let r = rule(
        r#"
[fields]
click_id = "cid"
revenue = { from = "amt", decimal = "comma" }
[[tests]]
name = "1.500 is 1.5"
body = '{"cid": "b", "amt": 1.500}'
content_type = "json"
expect = { click_id = "b", revenue = 1.5 }
[[tests]]
name = "1e2 is 100"
body = '{"cid": "b", "amt": 1e2}'
content_type = "json"
expect = { click_id = "b", revenue = 100 }
"#,
    );
    let results = testing::run(
        &r,
        &postback_relay::rules::RuleSet::default(),
        &jiff::tz::TimeZone::UTC,
    );
    assert_eq!(results.len(), 2);
    for result in results {
        assert!(
            result.failure.is_none(),
            "{}: {:?}",
            result.name,
            result.failure
        );
    }
}
