//! Every field form of `[fields]`: where a value comes from and how it is transformed.

use jiff::tz::TimeZone;
use serde_json::json;

use super::{Request, body, mapped, num, outcome_with, rejected, rule, text_of};

#[test]
fn string_field_reads_one_parameter() {
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_order_id = \"oid\"\n");
    assert_eq!(
        body(&r, "cid=abc123&oid=A-9&other=x"),
        json!({"click_id": "abc123", "adv_order_id": "A-9"}).to_string()
    );
}

#[test]
fn list_takes_the_first_present_non_empty_resolved_value() {
    let r = rule("[fields]\nclick_id = [\"clickid\", \"cid\", \"subid\"]\n");
    assert_eq!(
        body(&r, "clickid=&cid=%7Bcid%7D&subid=s-1"),
        json!({"click_id": "s-1"}).to_string()
    );
    assert_eq!(
        body(&r, "subid=s-1&cid=c-1"),
        json!({"click_id": "c-1"}).to_string()
    );
    assert_eq!(
        body(&r, "subid=s-1&cid=c-1&clickid=k-1"),
        json!({"click_id": "k-1"}).to_string()
    );
}

#[test]
fn values_are_trimmed_and_white_space_only_is_no_value() {
    let r = rule("[fields]\nclick_id = [\"a\", \"b\"]\n");
    assert_eq!(
        body(&r, "a=+++&b=%20x-1%09"),
        json!({"click_id": "x-1"}).to_string()
    );
}

#[test]
fn constant_value_is_sent_whatever_the_query() {
    let r = rule(
        r#"[fields]
click_id = "cid"
goal_id = { value = 12 }
adv_param1 = { value = "web" }
revenue = { value = "0.50" }
"#,
    );
    assert_eq!(
        body(&r, "cid=a&goal_id=99&adv_param1=x"),
        json!({"click_id": "a", "goal_id": 12, "adv_param1": "web", "revenue": num("0.5")})
            .to_string()
    );
}

#[test]
fn default_applies_only_when_the_parameter_has_no_value() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\npromo_code = { from = \"coupon\", default = \"NONE\" }\n",
    );
    for q in ["cid=a", "cid=a&coupon=", "cid=a&coupon={coupon}"] {
        assert_eq!(
            body(&r, q),
            json!({"click_id": "a", "promo_code": "NONE"}).to_string(),
            "{q}"
        );
    }
    assert_eq!(
        body(&r, "cid=a&coupon=SPRING"),
        json!({"click_id": "a", "promo_code": "SPRING"}).to_string()
    );
}

#[test]
fn required_field_without_a_value_rejects_naming_the_field() {
    let r =
        rule("[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"oid\", required = true }\n");
    assert!(rejected(&r, "cid=a").contains("adv_order_id"));
    let reason = rejected(&r, "cid=a&oid=%7Boid%7D");
    assert!(reason.contains("adv_order_id"), "{reason}");
    assert!(reason.contains("unresolved macro"), "{reason}");
    assert_eq!(
        body(&r, "cid=a&oid=7"),
        json!({"click_id": "a", "adv_order_id": "7"}).to_string()
    );
}

#[test]
fn click_id_is_always_required() {
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_order_id = \"oid\"\n");
    for q in ["oid=1", "cid=&oid=1", "cid=(cid)&oid=1"] {
        let reason = rejected(&r, q);
        assert!(reason.starts_with("click_id"), "{q}: {reason}");
    }
}

#[test]
fn template_joins_parameters_and_literals() {
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_param1 = { template = \"{event}:{sku}\" }\n");
    assert_eq!(
        body(&r, "cid=a&event=buy&sku=X1"),
        json!({"click_id": "a", "adv_param1": "buy:X1"}).to_string()
    );
}

#[test]
fn template_is_left_out_when_a_parameter_has_no_value() {
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_param1 = { template = \"{event}:{sku}\" }\n");
    for q in [
        "cid=a&event=buy",
        "cid=a&event=buy&sku=",
        "cid=a&event=buy&sku={sku}",
    ] {
        assert_eq!(body(&r, q), json!({"click_id": "a"}).to_string(), "{q}");
    }
}

#[test]
fn map_translates_listed_values() {
    let r = rule(
        r#"[fields]
click_id = "cid"
conv_status = { from = "st", map = { "1" = "approved", "0" = "rejected", "2" = "pending" } }
"#,
    );
    assert_eq!(
        body(&r, "cid=a&st=1"),
        json!({"click_id": "a", "conv_status": "approved"}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&st=0"),
        json!({"click_id": "a", "conv_status": "rejected"}).to_string()
    );
}

#[test]
fn map_rejects_an_unmapped_value_by_default_naming_field_and_value() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"st\", map = { \"1\" = \"approved\" } }\n",
    );
    let reason = rejected(&r, "cid=a&st=7");
    assert!(reason.starts_with("conv_status"), "{reason}");
    assert!(reason.contains("\"7\""), "{reason}");
}

#[test]
fn map_leaves_the_field_out_when_the_parameter_has_no_value() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"st\", map = { \"1\" = \"approved\" } }\n",
    );
    for q in ["cid=a", "cid=a&st=", "cid=a&st=%7Bstatus%7D"] {
        assert_eq!(body(&r, q), json!({"click_id": "a"}).to_string(), "{q}");
    }
}

#[test]
fn map_with_ignore_case_matches_any_case_and_without_it_only_the_exact_one() {
    let text = |ic: bool| {
        format!(
            "[fields]\nclick_id = \"cid\"\nconv_status = {{ from = \"st\", map = {{ \"Approve\" = \"approved\" }}, ignore_case = {ic} }}\n"
        )
    };
    let loose = rule(&text(true));
    for q in ["cid=a&st=APPROVE", "cid=a&st=approve", "cid=a&st=Approve"] {
        assert_eq!(
            body(&loose, q),
            json!({"click_id": "a", "conv_status": "approved"}).to_string()
        );
    }
    let strict = rule(&text(false));
    assert_eq!(
        body(&strict, "cid=a&st=Approve"),
        json!({"click_id": "a", "conv_status": "approved"}).to_string()
    );
    assert!(rejected(&strict, "cid=a&st=APPROVE").contains("conv_status"));
}

#[test]
fn map_unmapped_keep_sends_the_value_itself() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\ngoal_alias = { from = \"ev\", map = { \"af_purchase\" = \"purchase\" }, unmapped = \"keep\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&ev=level_up"),
        json!({"click_id": "a", "goal_alias": "level_up"}).to_string()
    );
    assert_eq!(
        body(&r, "cid=a&ev=af_purchase"),
        json!({"click_id": "a", "goal_alias": "purchase"}).to_string()
    );
}

#[test]
fn map_unmapped_keep_on_conv_status_rejects_values_outside_scaleos_set() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"st\", map = { \"1\" = \"approved\" }, unmapped = \"keep\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&st=hold"),
        json!({"click_id": "a", "conv_status": "hold"}).to_string()
    );
    let reason = rejected(&r, "cid=a&st=Hold");
    assert!(
        reason.contains("conv_status") && reason.contains("\"Hold\""),
        "{reason}"
    );
}

#[test]
fn map_unmapped_value_replaces_unknown_values() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"st\", map = { \"1\" = \"approved\" }, unmapped = \"pending\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&st=whatever"),
        json!({"click_id": "a", "conv_status": "pending"}).to_string()
    );
}

#[test]
fn money_fields_are_json_numbers_with_decimal_comma_and_thousands_in_auto() {
    let r = rule("[fields]\nclick_id = \"cid\"\nrevenue = \"amt\"\n");
    for (amt, want) in [
        ("12,34", "12.34"),
        ("12.34", "12.34"),
        ("1.234,56", "1234.56"),
        ("1,234.56", "1234.56"),
        ("%241,234.56", "1234.56"),
        ("5%E2%82%AC", "5"),
        ("-49.99", "-49.99"),
        ("%2B3", "3"),
        ("0.125", "0.125"),
        ("1716198088.000000", "1716198088"),
    ] {
        let text = body(&r, &format!("cid=a&amt={amt}"));
        assert_eq!(
            text,
            json!({"click_id": "a", "revenue": num(want)}).to_string(),
            "{amt}"
        );
        assert!(text.contains(&format!("\"revenue\":{want}")), "{text}");
    }
}

#[test]
fn auto_rejects_an_ambiguous_thousands_group_naming_the_field() {
    let r = rule("[fields]\nclick_id = \"cid\"\namount = \"amt\"\n");
    for amt in ["1,234", "1.234"] {
        let reason = rejected(&r, &format!("cid=a&amt={amt}"));
        assert!(reason.starts_with("amount"), "{reason}");
        assert!(reason.contains(amt), "{reason}");
    }
}

#[test]
fn pinned_decimal_separator_resolves_the_ambiguity() {
    let dot =
        rule("[fields]\nclick_id = \"cid\"\namount = { from = \"amt\", decimal = \"dot\" }\n");
    let comma =
        rule("[fields]\nclick_id = \"cid\"\namount = { from = \"amt\", decimal = \"comma\" }\n");
    let want = |n: &str| json!({"click_id": "a", "amount": num(n)}).to_string();
    assert_eq!(body(&dot, "cid=a&amt=1,234"), want("1234"));
    assert_eq!(body(&dot, "cid=a&amt=1.234"), want("1.234"));
    assert_eq!(body(&comma, "cid=a&amt=1.234"), want("1234"));
    assert_eq!(body(&comma, "cid=a&amt=1,5"), want("1.5"));
    // A pinned separator never reads the other one as a decimal point by mistake.
    assert!(rejected(&comma, "cid=a&amt=12.50").starts_with("amount"));
    assert!(rejected(&dot, "cid=a&amt=12,50").starts_with("amount"));
}

#[test]
fn scale_multiplies_exactly() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", number = true, scale = \"0.01\" }\n",
    );
    let text = body(&r, "cid=a&amt=1999");
    assert_eq!(text, r#"{"click_id":"a","revenue":19.99}"#);
    for (amt, want) in [("1", "0.01"), ("10", "0.1"), ("100", "1"), ("-250", "-2.5")] {
        assert_eq!(
            body(&r, &format!("cid=a&amt={amt}")),
            json!({"click_id": "a", "revenue": num(want)}).to_string()
        );
    }
}

#[test]
fn a_number_that_does_not_parse_rejects_naming_field_and_value() {
    let r = rule("[fields]\nclick_id = \"cid\"\npayout = \"p\"\n");
    for p in ["abc", "1e3", "12.3.4", "N%2FA"] {
        let reason = rejected(&r, &format!("cid=a&p={p}"));
        assert!(reason.starts_with("payout"), "{reason}");
    }
}

#[test]
fn regression_number_on_a_text_field_keeps_written_decimals_and_stays_a_string() {
    // The README: `number = true` on a string field normalises "12,50" to "12.50".
    let r = rule("[fields]\nclick_id = \"cid\"\nadv_param1 = { from = \"x\", number = true }\n");
    for (x, want) in [
        ("12,50", "12.50"),
        ("1.234,50", "1234.50"),
        ("%E2%82%AC7", "7"),
        ("-0.50", "-0.50"),
        ("1,234.5", "1234.5"),
    ] {
        assert_eq!(
            body(&r, &format!("cid=a&x={x}")),
            json!({"click_id": "a", "adv_param1": want}).to_string(),
            "{x}"
        );
    }
}

fn time_rule(spec: &str) -> postback_relay::rules::Rule {
    rule(&format!(
        "[fields]\nclick_id = \"cid\"\ntimestamp = {spec}\n"
    ))
}

fn ts_body(at: &str) -> String {
    json!({"click_id": "a", "timestamp": at}).to_string()
}

#[test]
fn time_unix_seconds_and_milliseconds() {
    let secs = time_rule("{ from = \"t\", time = \"unix\" }");
    assert_eq!(
        body(&secs, "cid=a&t=1700000000"),
        ts_body("2023-11-14 22:13:20")
    );
    assert_eq!(
        body(&secs, "cid=a&t=1716198088.000000"),
        ts_body("2024-05-20 09:41:28")
    );
    let ms = time_rule("{ from = \"t\", time = \"unix_ms\" }");
    assert_eq!(
        body(&ms, "cid=a&t=1700000000999"),
        ts_body("2023-11-14 22:13:20")
    );
    assert!(rejected(&secs, "cid=a&t=yesterday").starts_with("timestamp"));
}

#[test]
fn time_rfc3339_honours_its_offset() {
    let r = time_rule("{ from = \"t\", time = \"rfc3339\" }");
    assert_eq!(
        body(&r, "cid=a&t=2023-11-15T06:13:20%2B08:00"),
        ts_body("2023-11-14 22:13:20")
    );
    assert_eq!(
        body(&r, "cid=a&t=2023-11-14T22:13:20.999Z"),
        ts_body("2023-11-14 22:13:20")
    );
    assert!(rejected(&r, "cid=a&t=1700000000").starts_with("timestamp"));
}

#[test]
fn time_auto_reads_seconds_milliseconds_rfc3339_and_plain_dates() {
    let r = time_rule("{ from = \"t\", time = \"auto\" }");
    for t in [
        "1700000000",
        "1700000000.75",
        "1700000000000",
        "2023-11-14T22:13:20Z",
        "2023-11-14T17:13:20-05:00",
        "2023-11-14+22:13:20",
        "2023-11-14%2022:13:20",
    ] {
        assert_eq!(
            body(&r, &format!("cid=a&t={t}")),
            ts_body("2023-11-14 22:13:20"),
            "{t}"
        );
    }
}

#[test]
fn timestamp_defaults_to_time_auto() {
    let r = rule("[fields]\nclick_id = \"cid\"\ntimestamp = \"t\"\nclick_timestamp = \"ct\"\n");
    assert_eq!(
        body(&r, "cid=a&t=1700000000&ct=2023-11-14T22:00:00Z"),
        json!({"click_id": "a", "timestamp": "2023-11-14 22:13:20", "click_timestamp": "2023-11-14 22:00:00"}).to_string()
    );
}

#[test]
fn time_pattern_without_zone_is_read_in_the_rules_offset() {
    let r = time_rule("{ from = \"t\", time = \"%d/%m/%Y %H:%M\", tz = \"+05:30\" }");
    assert_eq!(
        body(&r, "cid=a&t=15/11/2023+03:43"),
        ts_body("2023-11-14 22:13:00")
    );
    let reason = rejected(&r, "cid=a&t=2023-11-15 03:43");
    assert!(reason.starts_with("timestamp"), "{reason}");
}

#[test]
fn time_in_an_iana_zone_is_dst_correct() {
    let r = time_rule("{ from = \"t\", time = \"%Y-%m-%d %H:%M:%S\", tz = \"America/New_York\" }");
    // EDT (UTC-4) in summer, EST (UTC-5) in winter.
    assert_eq!(
        body(&r, "cid=a&t=2024-07-01 12:00:00"),
        ts_body("2024-07-01 16:00:00")
    );
    assert_eq!(
        body(&r, "cid=a&t=2024-01-15 12:00:00"),
        ts_body("2024-01-15 17:00:00")
    );
    let auto = time_rule("{ from = \"t\", tz = \"Europe/Berlin\" }");
    assert_eq!(
        body(&auto, "cid=a&t=2024-07-01 12:00:00"),
        ts_body("2024-07-01 10:00:00")
    );
    assert_eq!(
        body(&auto, "cid=a&t=2024-12-01 12:00:00"),
        ts_body("2024-12-01 11:00:00")
    );
    // An explicit offset wins over the rule's zone.
    assert_eq!(
        body(&auto, "cid=a&t=2024-07-01T12:00:00Z"),
        ts_body("2024-07-01 12:00:00")
    );
}

#[test]
fn time_is_written_in_the_networks_zone() {
    let r = time_rule("{ from = \"t\", time = \"unix\" }");
    let kolkata = TimeZone::get("Asia/Kolkata").unwrap();
    let got = outcome_with(&r, "cid=a&t=1700000000", Request::default(), &kolkata);
    assert_eq!(text_of(got, "t"), ts_body("2023-11-15 03:43:20"));
}

#[test]
fn case_upper_and_lower() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\ncountry = { from = \"geo\", case = \"upper\" }\nemail = { from = \"mail\", case = \"lower\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&geo=de&mail=Jo%40Example.COM"),
        json!({"click_id": "a", "country": "DE", "email": "jo@example.com"}).to_string()
    );
}

#[test]
fn json_pointer_reads_inside_a_json_valued_parameter() {
    let r = rule(
        r#"[fields]
click_id = "cid"
adv_order_id = { from = "ev", json = "/af_order_id" }
adv_user_id = { from = "ev", json = "/user/id" }
"#,
    );
    // {"af_order_id":"A-1","user":{"id":42}}
    let ev = "%7B%22af_order_id%22%3A%22A-1%22%2C%22user%22%3A%7B%22id%22%3A42%7D%7D";
    assert_eq!(
        body(&r, &format!("cid=a&ev={ev}")),
        json!({"click_id": "a", "adv_order_id": "A-1", "adv_user_id": "42"}).to_string()
    );
}

#[test]
fn json_parameter_that_is_not_json_rejects_naming_the_field() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"ev\", json = \"/af_order_id\" }\n",
    );
    let reason = rejected(&r, "cid=a&ev=A-1");
    assert!(reason.starts_with("adv_order_id"), "{reason}");
}

#[test]
fn json_pointer_that_finds_nothing_is_no_value_so_the_default_applies() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"ev\", json = \"/af_order_id\", default = \"NONE\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&ev=%7B%22other%22%3A1%7D"),
        json!({"click_id": "a", "adv_order_id": "NONE"}).to_string()
    );
    // Without a default the field is left out; `required = true` rejects naming it.
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"ev\", json = \"/af_order_id\", required = true }\n",
    );
    let reason = rejected(&r, "cid=a&ev=%7B%22other%22%3A1%7D");
    assert!(reason.starts_with("adv_order_id"), "{reason}");
}

#[test]
fn json_pointer_that_finds_nothing_falls_through_to_the_next_parameter() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = [\"ev\", \"ev2\"], json = \"/id\" }\n",
    );
    assert_eq!(
        body(&r, "cid=a&ev=%7B%7D&ev2=%7B%22id%22%3A%22B-2%22%7D"),
        json!({"click_id": "a", "adv_order_id": "B-2"}).to_string()
    );
}

#[test]
fn json_numbers_are_json_numbers_never_read_through_decimal() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"ev\", json = \"/total\", decimal = \"comma\" }\npayout = { from = \"ev\", json = \"/rev\" }\namount = { from = \"ev\", json = \"/n\" }\nadv_param1 = { from = \"ev\", json = \"/s\", number = true }\n",
    );
    let ev = r#"{"total":1.500,"rev":12.500,"n":1e2,"s":"12,50"}"#;
    let q = format!("cid=a&ev={}", urlencode(ev));
    let m = mapped(&r, &q);
    assert_eq!(m.body["revenue"], num("1.5"));
    assert_eq!(m.body["payout"], num("12.5"));
    assert_eq!(m.body["amount"], num("100"));
    // A JSON string is read like a parameter value (decimal comma, here).
    assert_eq!(m.body["adv_param1"], json!("12.50"));
}

#[test]
fn a_goal_id_under_a_json_pointer_is_read_as_the_integer_it_is() {
    let r = rule("[fields]\nclick_id = \"cid\"\ngoal_id = { from = \"ev\", json = \"/g\" }\n");
    for (g, want) in [("1e1", 10), ("12.0", 12), ("7", 7)] {
        let q = format!("cid=a&ev={}", urlencode(&format!("{{\"g\":{g}}}")));
        assert_eq!(mapped(&r, &q).body["goal_id"], json!(want), "{g}");
    }
    let q = format!("cid=a&ev={}", urlencode(r#"{"g":1.5}"#));
    let reason = rejected(&r, &q);
    assert!(
        reason.contains("goal_id") && reason.contains("integer"),
        "{reason}"
    );
}

#[test]
fn a_blank_click_id_from_a_constant_rejects_naming_the_field() {
    let r = rule(
        "[fields]\nclick_id = [\"cid\", { value = \" \" }]\n\n[[when]]\nmatch = { t = \"1\" }\nset = { click_id = { value = \"\" } }\n",
    );
    for q in ["x=1", "cid=abc&t=1"] {
        let reason = rejected(&r, q);
        assert!(
            reason.starts_with("click_id:") && reason.contains("blank"),
            "{q}: {reason}"
        );
    }
    assert_eq!(mapped(&r, "cid=abc").body["click_id"], json!("abc"));
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("x", text)]).unwrap()[2..].to_string()
}

#[test]
fn json_pointer_to_null_or_an_unresolved_parameter_is_no_value() {
    let r = rule(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"ev\", json = \"/af_order_id\" }\n",
    );
    for q in [
        "cid=a&ev=%7B%22af_order_id%22%3Anull%7D",
        "cid=a&ev=%7B%22af_order_id%22%3A%22%22%7D",
        "cid=a&ev=(event_value)",
        "cid=a",
    ] {
        assert_eq!(body(&r, q), json!({"click_id": "a"}).to_string(), "{q}");
    }
}

#[test]
fn special_sources_come_from_the_request() {
    let r = rule(
        r#"[fields]
click_id = "cid"
ip = ["ip", "@client_ip"]
custom1 = "@user_agent"
conversion_referer_url = "@referer"
timestamp = "@received_at"
"#,
    );
    let req = Request {
        client_ip: Some("198.51.100.7"),
        user_agent: Some("Mozilla/5.0"),
        referer: Some("https://shop.example/thanks"),
        received_at: Some("2024-05-20T09:41:28.750Z".parse().unwrap()),
    };
    assert_eq!(
        text_of(outcome_with(&r, "cid=a", req, &TimeZone::UTC), "special"),
        json!({
            "click_id": "a",
            "ip": "198.51.100.7",
            "custom1": "Mozilla/5.0",
            "conversion_referer_url": "https://shop.example/thanks",
            "timestamp": "2024-05-20 09:41:28",
        })
        .to_string()
    );
    // A parameter listed first wins over the request attribute.
    let got = outcome_with(&r, "cid=a&ip=203.0.113.9", req, &TimeZone::UTC);
    assert!(text_of(got, "ip").contains("\"ip\":\"203.0.113.9\""));
    // Without the attributes (map, tests) the fields are left out.
    assert_eq!(body(&r, "cid=a"), json!({"click_id": "a"}).to_string());
}
