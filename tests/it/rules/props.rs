//! Property tests: applying every shipped rule and a rule using every feature never panics on
//! arbitrary query strings, and money scaling stays exact end to end.

use jiff::tz::TimeZone;
use postback_relay::rules::{EnvMode, Input, Outcome, RuleSet, decode_form};
use proptest::prelude::*;
use serde_json::Value;

use crate::rules::rule;

const EVERYTHING: &str = r#"
[params]
repeated = "last"
placeholders = ["REPLACE", "TPL_*"]
[fields]
click_id     = [{ template = "{s2}{s3}" }, "s2", "clickid", "cid"]
adv_param3   = { from = "oid", case = "upper" }
revenue      = { from = "amt", scale = "0.01", decimal = "auto" }
payout       = { from = "pay", decimal = "comma", default = "0" }
conv_status  = { from = "st", map = { "1" = "approved" }, ignore_case = true, unmapped = "keep" }
goal_id      = { from = "g" }
click_timestamp = { from = "cts", time = "%d/%m/%Y %H:%M", tz = "+08:00" }
adv_param1   = { template = "{e}:{sku}" }
adv_user_id  = { from = "ev", json = "/user/id" }
amount       = { from = "ev", json = "/total" }
adv_order_id = { from = "order", regex = "^gid://shopify/Order/(\\d+)$" }
adv_param2   = [{ template = "{e}-{sku}" }, { value = "none" }]
timestamp    = { from = "ts", time = ["%Y-%m-%d %H:%M:%S %z", "auto"] }
ip           = { from = "@client_ip" }
[[when]]
match = { e = ["install", "x"] }
set = { goal_alias = { value = "install" }, revenue = "amt2" }
[[when]]
match = { amt = { lt = 0 }, sku = { absent = false } }
set = { adv_param4 = { value = "refund" } }
[[when]]
match = { ev = { json = "/type", in = ["a", "b"] }, pay = { ge = 1, le = 100 } }
set = { adv_param5 = "e" }
[[skip]]
match = { test = ["1", "true"] }
[[skip]]
match = { ev = { json = "/type", is = "organic" }, g = { absent = true } }
"#;

/// The parameters `EVERYTHING` reads whose values end up in the body as text.
const TEXT_FIELDS: [&str; 4] = ["click_id", "adv_param1", "adv_param3", "adv_user_id"];

/// A whole-value macro in every dialect of the product's list, sometimes percent-encoded
/// once or twice, as it would sit in a query string.
fn a_macro() -> impl Strategy<Value = String> {
    // `[true]`, `[null]` and `[false]` are JSON arrays, never macros.
    let name = "[A-Za-z][A-Za-z0-9_.:?=~$!-]{0,8}".prop_filter("a JSON literal", |x| {
        !["true", "false", "null"].contains(&x.as_str())
    });
    let upper = "[A-Z][A-Z0-9_]{0,8}";
    let wrapped = (0..15u8, name, upper).prop_map(|(dialect, x, up)| match dialect {
        0 => format!("{{{x}}}"),
        1 => format!("{{{{{x}}}}}"),
        2 => format!("${{{x}}}"),
        3 => format!("{{${x}}}"),
        4 => format!("[{x}]"),
        5 => format!("({x})"),
        6 => format!("#{x}#"),
        7 => format!("%{x}%"),
        8 => format!("%%{x}%%"),
        9 => format!("!!!{x}!!!"),
        10 => format!("<{x}>"),
        11 => format!("__{up}__"),
        12 => "undefined".to_string(),
        13 => "null".to_string(),
        _ => "NaN".to_string(),
    });
    (wrapped, 0..4u8).prop_map(|(m, how)| match how {
        // Sent as it is: `%`, `#`, `+` and `&` are not escaped, like a sloppy sender.
        0 => m
            .replace('&', "%26")
            .replace('#', "%23")
            .replace('+', "%2B"),
        1 => encode(&m),
        2 => encode(&encode(&m)),
        _ => m
            .replace('#', "%23")
            .replace('&', "%26")
            .replace('+', "%2B")
            .replace(' ', "+"),
    })
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Times in every form `auto` and the `%z` pattern know, valid or not, with a `+` sometimes
/// sent unencoded.
fn a_time() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{8}",
        "[0-9]{12}",
        "[0-9]{14}",
        "(19|20|21)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])([01][0-9]|2[0-3])[0-5][0-9]([0-5][0-9])?",
        "-?[0-9]{1,14}(\\.[0-9]{0,6})?",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9](%20| |T)[0-2][0-9]:[0-5][0-9]:[0-6][0-9]( |%20|\\+|%2B)*(\\+|%2B|-)?[0-2][0-9](:?[0-5][0-9])?",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("clickid"),
        Just("cid"),
        Just("s2"),
        Just("s3"),
        Just("order"),
        Just("oid"),
        Just("amt"),
        Just("amt2"),
        Just("pay"),
        Just("st"),
        Just("g"),
        Just("ts"),
        Just("cts"),
        Just("e"),
        Just("sku"),
        Just("ev"),
        Just("test"),
        Just("zz"),
    ];
    let value = prop_oneof![
        "\\PC{0,24}",
        "[-+$€0-9.,]{0,14}",
        "%[0-9A-Fa-f]{2}[a-z{}]{0,6}%?[0-9A-F]{0,2}",
        Just("{\"user\":{\"id\":7}}".to_string()),
        Just("%7Bclickid%7D".to_string()),
        Just("1700000000".to_string()),
        a_macro(),
        a_time(),
        Just("(12.50)".to_string()),
        Just("%7B%22total%22%3A1.500%2C%22type%22%3A%22a%22%7D".to_string()),
        Just("%7B%22total%22%3A-1e2%2C%22type%22%3A%22organic%22%7D".to_string()),
        Just("gid://shopify/Order/123".to_string()),
        Just("TPL_X".to_string()),
    ];
    prop::collection::vec((name, value), 0..12).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn apply_never_panics_on_arbitrary_queries(q in query(), raw in "\\PC{0,80}") {
        let r = rule(EVERYTHING);
        for text in [q.as_str(), raw.as_str()] {
            let params = decode_form(text.as_bytes());
            let input = Input { params: &params, client_ip: Some("203.0.113.9"), ..Input::default() };
            let (outcome, _trace) = r.explain(&input, &TimeZone::UTC);
            prop_assert_eq!(outcome.clone(), r.apply(&input, &TimeZone::UTC));
            if let Outcome::Forward(m) = outcome {
                prop_assert!(m.body.get("click_id").is_some_and(|c| c.is_string()));
                prop_assert!(!(m.body.contains_key("goal_id") && m.body.contains_key("goal_alias")));
            }
        }
    }

    #[test]
    fn a_macro_in_any_dialect_never_reaches_the_body(m in a_macro(), other in "[a-z0-9]{1,8}") {
        let r = rule(EVERYTHING);
        // Every text field reads the macro; the click id falls through to a real value.
        for q in [
            format!("s2={m}&s3={m}&clickid={m}&cid=real-{other}&oid={m}&e={m}&sku=1&ev={m}"),
            format!("s2=real-{other}&s3={m}&clickid={m}&e=x&sku={m}"),
        ] {
            let params = decode_form(q.as_bytes());
            let input = Input { params: &params, ..Input::default() };
            let outcome = r.apply(&input, &TimeZone::UTC);
            let Outcome::Forward(mapped) = outcome else {
                return Err(TestCaseError::fail(format!("{q}: {outcome:?}")));
            };
            let click = mapped.click_id.unwrap_or_default();
            prop_assert!(click.starts_with("real-"), "{}: {}", q, click);
            for field in TEXT_FIELDS {
                if let Some(Value::String(v)) = mapped.body.get(field) {
                    // Neither the macro nor a garbled decoding of it (a stray byte).
                    prop_assert!(postback_relay::rules::value::no_value(v, &[]).is_none() && !v.contains('\u{FFFD}'),
                        "{}: {} = {:?}", q, field, v);
                }
            }
        }
    }

    #[test]
    fn times_in_any_form_never_panic_and_are_either_in_range_or_rejected(t in a_time()) {
        let r = rule(EVERYTHING);
        let q = format!("cid=c&ts={t}");
        let params = decode_form(q.as_bytes());
        match r.apply(&Input { params: &params, ..Input::default() }, &TimeZone::UTC) {
            Outcome::Forward(m) => {
                if let Some(Value::String(ts)) = m.body.get("timestamp") {
                    prop_assert!(ts.as_str() >= "1970-01-01 00:00:00" && ts.len() == 19, "{}: {}", t, ts);
                    // A unix number is never read outside 2000..2100.
                    if t.bytes().all(|b| b.is_ascii_digit()) && ![8, 12, 14].contains(&t.len()) {
                        prop_assert!(ts.as_str() >= "2000-01-01" && ts.as_str() < "2100-01-01", "{}: {}", t, ts);
                    }
                }
            }
            Outcome::Reject { reason } => prop_assert!(reason.starts_with("timestamp"), "{}: {}", t, reason),
            Outcome::Skip { .. } => {}
        }
    }

    #[test]
    fn decoding_is_form_decoding_except_for_values_that_arrived_as_whole_macros(
        bytes in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'%'), Just(b'&'), Just(b'='), Just(b'A')], 0..120),
        m in a_macro(),
    ) {
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap();
        let ours = decode_form(&bytes);
        prop_assert_eq!(ours.len(), form.len());
        for ((name, value), (form_name, form_value)) in ours.iter().zip(&form) {
            prop_assert_eq!(name, form_name);
            if value != form_value {
                // Kept as sent: only ever a whole macro, which is no value either way.
                prop_assert!(postback_relay::rules::value::no_value(value, &[]).is_some(), "{:?}", value);
            }
        }
        let q = format!("a={m}&b=1");
        let pairs = decode_form(q.as_bytes());
        prop_assert_eq!(pairs.len(), 2);
        prop_assert!(postback_relay::rules::value::no_value(pairs[0].1.trim(), &[]).is_some(), "{}: {:?}", q, pairs[0].1);
    }

    #[test]
    fn shipped_rules_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let set = RuleSet::load_dir(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")), EnvMode::Ignore).unwrap();
        let params = decode_form(&bytes);
        for r in set.iter() {
            let _ = r.apply(&Input { params: &params, ..Input::default() }, &TimeZone::UTC);
        }
    }

    #[test]
    fn compile_never_panics_on_mangled_rule_files(cut in 0usize..1200, junk in "\\PC{0,12}", keep in 0usize..1200) {
        // Splice junk into a valid file at a random place and drop a random tail.
        let text = EVERYTHING;
        let at = text.char_indices().map(|(i, _)| i).nth(cut % text.chars().count()).unwrap_or(0);
        let mut mangled = format!("{}{}{}", &text[..at], junk, &text[at..]);
        let end = mangled.char_indices().map(|(i, _)| i).nth(keep).unwrap_or(mangled.len());
        mangled.truncate(end.max(at));
        if let Err(problems) = postback_relay::rules::compile("acme", "acme.toml", &mangled, EnvMode::Ignore) {
            for p in problems {
                prop_assert!(p.line >= 1 && p.col >= 1);
                prop_assert!(p.to_string().starts_with("acme.toml:"));
            }
        }
    }

    #[test]
    fn cents_scale_to_exact_units_in_the_json(cents in 0i64..10_000_000_000) {
        let r = rule("[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", scale = \"0.01\" }\n");
        let params = decode_form(format!("cid=c&amt={cents}").as_bytes());
        let Outcome::Forward(m) = r.apply(&Input { params: &params, ..Input::default() }, &TimeZone::UTC) else {
            panic!("must forward");
        };
        let units = cents / 100;
        let frac = cents % 100;
        let want = match frac {
            0 => units.to_string(),
            f if f % 10 == 0 => format!("{units}.{}", f / 10),
            f => format!("{units}.{f:02}"),
        };
        prop_assert_eq!(m.body["revenue"].to_string(), want);
    }
}
