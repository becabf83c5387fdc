//! `[updates]` in rule files: load-time checks (each naming the key, the value and what is
//! accepted), the cross-file check of `of`, and `[[tests]]` with `after` / `expect_outcome`.

use jiff::tz::TimeZone;
use postback_relay::rules::{EnvMode, RuleSet, testing};

use super::{problems, rule};

const FIELDS: &str = "[fields]\nclick_id = \"cid\"\nconv_status = \"st\"\nrevenue = \"amt\"\nadv_order_id = \"oid\"\n";

#[test]
fn updates_are_on_by_default_with_the_default_transitions() {
    let r = rule(FIELDS);
    assert!(r.updates.enabled);
    assert!(r.updates.only.is_none());
    let t = &r.updates.transitions;
    assert!(t.allows("pending", "approved") && t.allows("hold", "pending"));
    assert!(t.allows("approved", "rejected") && !t.allows("approved", "pending"));
    assert!(t.after("rejected").is_empty(), "rejected is final");
}

#[test]
fn an_unknown_status_in_the_transitions_is_a_load_error_at_its_place() {
    let text =
        format!("{FIELDS}\n[updates]\ntransitions = {{ pending = [\"approved\", \"aproved\"] }}\n");
    let list = problems(&text);
    assert_eq!(list.len(), 1, "{list:#?}");
    let m = &list[0];
    assert!(m.starts_with("acme.toml:8:40: "), "{m}");
    for part in [
        "updates.transitions.pending",
        "\"aproved\"",
        "pending, approved, rejected, hold",
    ] {
        assert!(m.contains(part), "{part:?} missing from {m}");
    }
}

#[test]
fn an_unknown_key_in_updates_is_a_load_error() {
    let list = problems(&format!(
        "{FIELDS}\n[updates]\nonly = true\nkeys = [\"adv_order_id\"]\n"
    ));
    assert!(
        list.iter()
            .any(|m| m.contains("keys") && m.contains("`key`")),
        "{list:#?}"
    );
}

#[test]
fn update_only_needs_a_key_that_can_find_a_conversion() {
    let list = problems(&format!(
        "{FIELDS}\n[updates]\nonly = true\nof = \"shop\"\n"
    ));
    assert!(list.iter().any(|m| m.contains("needs key")), "{list:#?}");
    let list = problems(&format!(
        "{FIELDS}\n[updates]\nonly = true\nof = \"shop\"\nkey = [\"adv_user_id\"]\n"
    ));
    assert!(
        list.iter().any(|m| m.starts_with("acme.toml:10:8: ")
            && m.contains("\"adv_user_id\"")
            && m.contains("adv_order_id, click_id")),
        "{list:#?}"
    );
}

#[test]
fn of_and_key_without_only_are_load_errors() {
    let list = problems(&format!("{FIELDS}\n[updates]\nof = \"shop\"\n"));
    assert!(
        list.iter()
            .any(|m| m.contains("updates.of") && m.contains("only = true")),
        "{list:#?}"
    );
}

#[test]
fn an_update_only_source_needs_no_click_id() {
    let r = rule(
        "[fields]\nadv_order_id = \"order\"\nconv_status = { value = \"rejected\" }\n\n[updates]\nonly = true\nof = \"shop\"\nkey = [\"adv_order_id\"]\n",
    );
    assert_eq!(r.updates.only.as_ref().unwrap().of, "shop");
}

fn set_in(files: &[(&str, &str)]) -> Result<RuleSet, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
    }
    RuleSet::load_dir(dir.path(), EnvMode::Ignore)
        .map_err(|list| list.iter().map(|d| d.to_string()).collect())
}

const REFUNDS: &str = "[fields]\nadv_order_id = \"order\"\nconv_status = { value = \"rejected\" }\n\n[updates]\nonly = true\nof = \"shpo\"\nkey = [\"adv_order_id\"]\n";

#[test]
fn of_must_name_a_loaded_source_that_creates_conversions() {
    let problems = set_in(&[("shop", FIELDS), ("refunds", REFUNDS)]).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let m = &problems[0];
    assert!(m.contains("refunds.toml:7:6: "), "{m}");
    assert!(m.contains("\"shpo\"") && m.contains("refunds, shop"), "{m}");

    let no_dedupe = format!("{FIELDS}\n[dedupe]\nkey = []\n");
    let fixed = REFUNDS.replace("shpo", "shop");
    let problems = set_in(&[("shop", &no_dedupe), ("refunds", &fixed)]).unwrap_err();
    assert!(
        problems[0].contains("does not track its conversions"),
        "{problems:#?}"
    );
    assert!(set_in(&[("shop", FIELDS), ("refunds", &fixed)]).is_ok());
}

#[test]
fn lifecycle_tests_run_after_then_compare_the_outcome_and_the_change() {
    let text = format!(
        "{FIELDS}
[[tests]]
name = \"sale after lead\"
after = [\"cid=a&st=pending&amt=0&oid=1\"]
query = \"cid=a&st=approved&amt=25&oid=1\"
expect_outcome = \"update\"
expect = {{ conv_status = \"approved\", revenue = 25 }}

[[tests]]
name = \"wrong: this is stale, not an update\"
after = [\"cid=a&st=approved&oid=1\"]
query = \"cid=a&st=pending&oid=1\"
expect_outcome = \"update\"

[[tests]]
name = \"wrong change fields\"
after = [\"cid=a&st=pending&amt=0&oid=1\"]
query = \"cid=a&st=approved&amt=25&oid=1\"
expect_outcome = \"update\"
expect = {{ conv_status = \"approved\" }}
"
    );
    let r = rule(&text);
    let results = testing::run(&r, &RuleSet::default(), &TimeZone::UTC);
    assert_eq!(results[0].failure, None);
    let stale = results[1].failure.as_deref().unwrap();
    assert!(
        stale.contains("expected update") && stale.contains("got stale"),
        "{stale}"
    );
    let diff = results[2].failure.as_deref().unwrap();
    assert!(
        diff.contains("revenue") && diff.contains("not expected"),
        "{diff}"
    );
}

#[test]
fn expect_outcome_without_after_is_a_load_error() {
    let list = problems(&format!(
        "{FIELDS}\n[[tests]]\nname = \"x\"\nquery = \"cid=a&st=approved\"\nexpect_outcome = \"update\"\n"
    ));
    assert!(list.iter().any(|m| m.contains("needs after")), "{list:#?}");
    let list = problems(&format!(
        "{FIELDS}\n[[tests]]\nname = \"x\"\nafter = [\"cid=a\"]\nquery = \"cid=a\"\nexpect_outcome = \"changed\"\n"
    ));
    assert!(
        list.iter()
            .any(|m| m.contains("\"changed\"") && m.contains("\"stale\"")),
        "{list:#?}"
    );
}

/// The failure of each test of source `source` in `set`, in file order.
fn failures(set: &RuleSet, source: &str) -> Vec<Option<String>> {
    let rule = set.get(source).unwrap();
    testing::run(rule, set, &TimeZone::UTC)
        .into_iter()
        .map(|r| r.failure)
        .collect()
}

/// A source whose table makes `approved` final (its own postbacks cannot reject a sale).
const SRC_APPROVED_FINAL: &str = "[fields]\nclick_id = \"cid\"\nconv_status = \"st\"\nadv_order_id = \"oid\"\n\n[updates]\ntransitions = { pending = [\"approved\"] }\n
[[tests]]
name = \"its own rejection after approval is stale\"
after = [\"cid=s2&st=pending&oid=Q2\", \"cid=s2&st=approved&oid=Q2\"]
query = \"cid=s2&st=rejected&oid=Q2\"
expect_outcome = \"stale\"
";

/// An update-only source of `src` (chargebacks by order id); `{updates}` adds to its table.
fn chargebacks(updates: &str, tests: &str) -> String {
    format!(
        "[fields]\nadv_order_id = \"order\"\nconv_status = {{ value = \"rejected\" }}\nrevenue = {{ from = \"amount\", number = true }}\n\n[updates]\nonly = true\nof = \"src\"\nkey = [\"adv_order_id\"]\n{updates}\n{tests}"
    )
}

const AFTER_APPROVAL: &str =
    "after = [\"cid=s2&st=pending&oid=Q2\", \"cid=s2&st=approved&oid=Q2\"]";

#[test]
fn an_update_only_source_changes_by_its_own_table_not_the_one_of_its_of_source() {
    // src makes approved final; cbx sets no table, so the default (approved -> rejected)
    // decides its postbacks, as the live relay does.
    let cbx = chargebacks(
        "",
        &format!(
            "[[tests]]\nname = \"a chargeback after approval is an update\"\n{AFTER_APPROVAL}\nquery = \"order=Q2&amount=-5\"\nexpect_outcome = \"update\"\nexpect = {{ conv_status = \"rejected\", revenue = -5 }}\n
[[tests]]\nname = \"wrong: src's table does not decide\"\n{AFTER_APPROVAL}\nquery = \"order=Q2&amount=-5\"\nexpect_outcome = \"stale\"\n"
        ),
    );
    let set = set_in(&[("src", SRC_APPROVED_FINAL), ("cbx", &cbx)]).unwrap();
    assert_eq!(failures(&set, "src"), [None]);
    let got = failures(&set, "cbx");
    assert_eq!(got[0], None);
    let wrong = got[1].as_deref().unwrap();
    assert!(
        wrong.contains("expected stale") && wrong.contains("got update"),
        "{wrong}"
    );
}

#[test]
fn an_update_only_source_with_its_own_table_is_stale_where_that_table_says_so() {
    // The reverse: src (default table) lets approved -> rejected, cbx makes approved final.
    let src = "[fields]\nclick_id = \"cid\"\nconv_status = \"st\"\nadv_order_id = \"oid\"\n";
    let cbx = chargebacks(
        "transitions = { pending = [\"approved\", \"rejected\"] }",
        &format!(
            "[[tests]]\nname = \"a chargeback after approval is stale\"\n{AFTER_APPROVAL}\nquery = \"order=Q2&amount=-5\"\nexpect_outcome = \"stale\"\n
[[tests]]\nname = \"wrong: an update\"\n{AFTER_APPROVAL}\nquery = \"order=Q2&amount=-5\"\nexpect_outcome = \"update\"\n
[[tests]]\nname = \"before approval it is an update\"\nafter = [\"cid=s2&st=pending&oid=Q2\"]\nquery = \"order=Q2&amount=-5\"\nexpect_outcome = \"update\"\nexpect = {{ conv_status = \"rejected\", revenue = -5 }}\n"
        ),
    );
    let set = set_in(&[("src", src), ("cbx", &cbx)]).unwrap();
    let got = failures(&set, "cbx");
    assert_eq!(got[0], None);
    let wrong = got[1].as_deref().unwrap();
    assert!(
        wrong.contains("expected update") && wrong.contains("got stale"),
        "{wrong}"
    );
    assert!(
        wrong.contains("conv_status rejected") && wrong.contains("back from approved"),
        "the reason names both statuses: {wrong}"
    );
    assert_eq!(got[2], None);
}

#[test]
fn with_updates_disabled_every_repeat_is_a_duplicate() {
    let text = "[fields]\nclick_id = \"cid\"\nconv_status = \"st\"\nrevenue = \"rev\"\n\n[updates]\nenabled = false\n
[[tests]]
name = \"a new status is a duplicate\"
after = [\"cid=a&st=pending&rev=1\"]
query = \"cid=a&st=approved&rev=2\"
expect_outcome = \"duplicate\"

[[tests]]
name = \"wrong: an update\"
after = [\"cid=a&st=pending&rev=1\"]
query = \"cid=a&st=approved&rev=2\"
expect_outcome = \"update\"

[[tests]]
name = \"wrong: stale\"
after = [\"cid=a&st=approved&rev=1\"]
query = \"cid=a&st=pending&rev=1\"
expect_outcome = \"stale\"
";
    let r = rule(text);
    let got: Vec<_> = testing::run(&r, &RuleSet::default(), &TimeZone::UTC)
        .into_iter()
        .map(|r| r.failure)
        .collect();
    assert_eq!(got[0], None);
    for wrong in [&got[1], &got[2]] {
        let wrong = wrong.as_deref().unwrap();
        assert!(
            wrong.contains("got duplicate") && wrong.contains("enabled = false"),
            "{wrong}"
        );
    }
}

#[test]
fn after_with_expect_reject_shows_an_update_only_postback_that_finds_no_conversion() {
    let cbx = chargebacks(
        "",
        &format!(
            "[[tests]]\nname = \"an unknown order is rejected\"\n{AFTER_APPROVAL}\nquery = \"order=NOPE&amount=-5\"\nexpect_reject = \"no conversion of source src with adv_order_id \\\"NOPE\\\"\"\n
[[tests]]\nname = \"wrong: the order is known\"\n{AFTER_APPROVAL}\nquery = \"order=Q2&amount=-5\"\nexpect_reject = \"no conversion\"\n
[[tests]]\nname = \"the rule's own reject still shows\"\n{AFTER_APPROVAL}\nquery = \"order=&amount=-5\"\nexpect_reject = \"adv_order_id\"\n
[[tests]]\nname = \"wrong reason\"\n{AFTER_APPROVAL}\nquery = \"order=NOPE&amount=-5\"\nexpect_reject = \"click_id\"\n"
        ),
    );
    let set = set_in(&[("src", SRC_APPROVED_FINAL), ("cbx", &cbx)]).unwrap();
    let got = failures(&set, "cbx");
    assert_eq!(got[0], None);
    let known = got[1].as_deref().unwrap();
    assert!(
        known.contains("expected reject") && known.contains("got update"),
        "{known}"
    );
    assert_eq!(got[2], None);
    let reason = got[3].as_deref().unwrap();
    assert!(
        reason.contains("\"click_id\"")
            && reason.contains("got reject: no conversion of source src"),
        "{reason}"
    );
}

#[test]
fn after_goes_with_expect_outcome_or_expect_reject_only() {
    for expect in ["expect = { click_id = \"a\" }", "expect_skip = \"test\""] {
        let list = problems(&format!(
            "{FIELDS}\n[[tests]]\nname = \"x\"\nafter = [\"cid=a\"]\nquery = \"cid=a\"\n{expect}\n"
        ));
        assert!(
            list.iter()
                .any(|m| m.contains("after = [...] needs expect_outcome")),
            "{list:#?}"
        );
    }
    let ok = rule(&format!(
        "{FIELDS}\n[[tests]]\nname = \"x\"\nafter = [\"cid=a&st=pending\"]\nquery = \"cid=&st=approved\"\nexpect_reject = \"click_id\"\n"
    ));
    let results = testing::run(&ok, &RuleSet::default(), &TimeZone::UTC);
    assert_eq!(results[0].failure, None);
}
