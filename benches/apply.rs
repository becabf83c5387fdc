//! Micro-benchmark: applying a typical rule (fallback click id, cents scaling, status map,
//! unix time, template, JSON pointer) to a typical postback. Run: `cargo bench --bench apply`.

use postback_relay::rules::{EnvMode, Input, compile, decode_form};

const RULE: &str = r#"
[params]
placeholders = ["REPLACE"]
[fields]
click_id     = ["clickid", "cid", "subid"]
adv_order_id = "oid"
goal_id      = { value = 12 }
revenue      = { from = "amt", number = true, scale = "0.01" }
conv_status  = { from = "st", map = { "1" = "approved", "0" = "rejected", "2" = "pending" }, ignore_case = true, unmapped = "pending" }
timestamp    = { from = "ts", time = "auto", tz = "UTC" }
adv_param1   = { template = "{event}:{sku}" }
country      = { from = "geo", case = "upper" }
promo_code   = { from = "coupon", default = "NONE" }
[[skip]]
match  = { test = "1" }
reason = "test postback"
"#;

const QUERY: &str =
    "cid=abc123&amt=1999&st=1&oid=A-9&ts=1700000000&event=sale&sku=X1&geo=de&idfa=%7Bidfa%7D";

fn main() {
    divan::main();
}

#[divan::bench]
fn apply_typical_rule(bencher: divan::Bencher) {
    let rule = compile("shop", "shop.toml", RULE, EnvMode::Ignore).expect("rule compiles");
    let params = decode_form(QUERY.as_bytes());
    let zone = jiff::tz::TimeZone::UTC;
    bencher.bench_local(|| {
        let input = Input {
            params: divan::black_box(&params),
            ..Input::default()
        };
        rule.apply(&input, &zone)
    });
}

#[divan::bench]
fn decode_and_apply_typical_rule(bencher: divan::Bencher) {
    let rule = compile("shop", "shop.toml", RULE, EnvMode::Ignore).expect("rule compiles");
    let zone = jiff::tz::TimeZone::UTC;
    bencher.bench_local(|| {
        let params = decode_form(divan::black_box(QUERY).as_bytes());
        let input = Input {
            params: &params,
            ..Input::default()
        };
        rule.apply(&input, &zone)
    });
}
