//! Property tests: applying every shipped rule and a rule using every feature never panics on
//! arbitrary query strings, and money scaling stays exact end to end.

use jiff::tz::TimeZone;
use postback_relay::rules::{EnvMode, Input, Outcome, RuleSet, decode_form};
use proptest::prelude::*;

use crate::rule;

const EVERYTHING: &str = r#"
[params]
repeated = "last"
placeholders = ["REPLACE"]
[fields]
click_id     = ["clickid", "cid"]
adv_order_id = { from = "oid", case = "upper" }
revenue      = { from = "amt", scale = "0.01", decimal = "auto" }
payout       = { from = "pay", decimal = "comma", default = "0" }
conv_status  = { from = "st", map = { "1" = "approved" }, ignore_case = true, unmapped = "keep" }
goal_id      = { from = "g" }
timestamp    = { from = "ts", time = "auto", tz = "America/New_York" }
click_timestamp = { from = "cts", time = "%d/%m/%Y %H:%M", tz = "+08:00" }
adv_param1   = { template = "{e}:{sku}" }
adv_user_id  = { from = "ev", json = "/user/id" }
ip           = { from = "@client_ip" }
[[when]]
match = { e = ["install", "x"] }
set = { goal_alias = { value = "install" }, revenue = "amt2" }
[[skip]]
match = { test = ["1", "true"] }
"#;

fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("clickid"),
        Just("cid"),
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
