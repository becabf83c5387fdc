//! Load-time problems: each is reported as `file:line:col: message`, pointing at the culprit,
//! naming the key and the bad value, and saying what is accepted.

use postback_relay::rules::{EnvMode, compile};

use super::problems;

/// The one problem of a file, checked to start at `line:col`.
fn one_problem_at(text: &str, line: usize, col: usize) -> String {
    let list = problems(text);
    assert_eq!(list.len(), 1, "expected one problem, got {list:#?}");
    let prefix = format!("acme.toml:{line}:{col}: ");
    assert!(
        list[0].starts_with(&prefix),
        "expected {prefix:?}: {}",
        list[0]
    );
    list[0].clone()
}

fn says(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "{p:?} missing from: {message}");
    }
}

#[test]
fn unknown_top_level_key_is_an_error_listing_the_known_keys() {
    let m = one_problem_at("[fields]\nclick_id = \"cid\"\n\n[dedup]\nkey = []\n", 4, 2);
    says(&m, &["dedup", "dedupe", "fields", "skip"]);
}

#[test]
fn unknown_key_in_a_field_table_is_an_error_listing_the_options() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", scal = \"0.01\" }\n",
        3,
        27,
    );
    says(&m, &["`scal`", "`scale`", "`from`", "`decimal`"]);
}

#[test]
fn unknown_key_in_a_test_is_an_error() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[tests]]\nname = \"x\"\nquery = \"cid=a\"\nexpect_rejct = \"click_id\"\n",
        6,
        1,
    );
    says(&m, &["expect_rejct", "expect_reject"]);
}

#[test]
fn unknown_scaleo_field_suggests_the_closest_name() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_order = \"oid\"\nrevenue = \"amt\"\n",
        3,
        1,
    );
    says(
        &m,
        &[
            "\"adv_order\"",
            "not a Scaleo",
            "did you mean \"adv_order_id\"?",
        ],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[when]]\nmatch = { a = \"1\" }\nset = { revnue = { value = \"1\" } }\n",
        5,
        9,
    );
    says(
        &m,
        &["when[0].set", "\"revnue\"", "did you mean \"revenue\"?"],
    );
}

#[test]
fn bad_conv_status_constant_names_the_value_and_scaleos_set() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nconv_status = { value = \"aproved\" }\n",
        3,
        25,
    );
    says(
        &m,
        &[
            "conv_status",
            "\"aproved\"",
            "pending, approved, rejected, hold",
        ],
    );
}

#[test]
fn bad_conv_status_in_a_map_or_unmapped_is_an_error() {
    let list = problems(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"st\", map = { \"1\" = \"ok\" }, unmapped = \"maybe\" }\n",
    );
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(list[0].starts_with("acme.toml:3:44: "), "{}", list[0]);
    says(&list[0], &["\"ok\"", "pending, approved, rejected, hold"]);
    assert!(list[1].starts_with("acme.toml:3:63: "), "{}", list[1]);
    says(&list[1], &["unmapped", "\"maybe\"", "pending, approved"]);
}

#[test]
fn bad_deliver_lead_constant_is_an_error() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ndeliver_lead = { value = \"true\" }\n",
        3,
        26,
    );
    says(&m, &["deliver_lead", "\"true\"", "yes, no"]);
}

#[test]
fn bad_time_zone_names_the_zone_and_what_is_accepted() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ntimestamp = { from = \"ts\", tz = \"Mars/Olympus\" }\n",
        3,
        33,
    );
    says(&m, &["timestamp.tz", "\"Mars/Olympus\"", "+08:00", "IANA"]);
}

#[test]
fn bad_strftime_pattern_names_the_pattern_and_what_is_accepted() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ntimestamp = { from = \"ts\", time = \"%H:%M\" }\n",
        3,
        35,
    );
    says(
        &m,
        &["timestamp.time", "\"%H:%M\"", "unix", "rfc3339", "strftime"],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ntimestamp = { from = \"ts\", time = \"%Y-%m-%d %J\" }\n",
        3,
        35,
    );
    says(&m, &["\"%Y-%m-%d %J\"", "unrecognized", "strftime pattern"]);
}

#[test]
fn bad_template_parameter_name_is_an_error() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_param1 = { template = \"{event}:{a b}\" }\n",
        3,
        27,
    );
    says(
        &m,
        &["adv_param1.template", "{a b}", "plain parameter name"],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_param1 = { template = \"{event\" }\n",
        3,
        27,
    );
    says(&m, &["unclosed"]);
}

#[test]
fn regression_both_goal_constants_point_at_goal_alias_not_line_one() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ngoal_id = { value = 12 }\ngoal_alias = { value = \"sale\" }\n",
        4,
        1,
    );
    says(&m, &["goal_id", "goal_alias", "both"]);
}

#[test]
fn regression_missing_click_id_points_at_the_fields_table() {
    let m = one_problem_at("description = \"x\"\n\n[fields]\nrevenue = \"amt\"\n", 3, 1);
    says(&m, &["click_id", "[fields]"]);
    let m = one_problem_at("description = \"x\"\n", 1, 1);
    says(&m, &["missing [fields]"]);
}

#[test]
fn bad_scale_decimal_and_repeated_values_are_errors() {
    let list = problems(
        "[params]\nrepeated = \"all\"\n[fields]\nclick_id = \"cid\"\nrevenue = { from = \"a\", scale = \"cents\", decimal = \"point\" }\n",
    );
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(list[0].starts_with("acme.toml:2:12: "), "{}", list[0]);
    says(&list[0], &["\"all\"", "\"first\", \"last\" or \"reject\""]);
    assert!(list[1].starts_with("acme.toml:5:33: "), "{}", list[1]);
    says(&list[1], &["scale", "cents", "decimal such as \"0.01\""]);
    assert!(list[2].starts_with("acme.toml:5:52: "), "{}", list[2]);
    says(
        &list[2],
        &["decimal", "\"point\"", "\"auto\", \"dot\" or \"comma\""],
    );
}

#[test]
fn regression_option_problems_point_at_the_field_not_line_one() {
    let list = problems(
        "[fields]\nclick_id = \"cid\"\nrevenue = { from = \"amt\", unmapped = \"keep\" }\ngoal_id = { from = \"g\", number = true }\nadv_param1 = { from = \"x\", decimal = \"dot\" }\npayout = { from = \"p\", ignore_case = true }\n",
    );
    assert_eq!(list.len(), 4, "{list:#?}");
    assert!(list[0].starts_with("acme.toml:3:38: "), "{}", list[0]);
    assert!(list[1].starts_with("acme.toml:4:11: "), "{}", list[1]);
    assert!(list[2].starts_with("acme.toml:5:38: "), "{}", list[2]);
    assert!(list[3].starts_with("acme.toml:6:10: "), "{}", list[3]);
}

#[test]
fn regression_every_problem_of_a_file_is_reported_in_file_order() {
    let list = problems(
        r#"[fields]
clik_id = "cid"
conv_status = { value = "aproved" }
timestamp = { from = "ts", tz = "Nowhere/City" }
adv_param1 = { template = "{}" }
"#,
    );
    let lines: Vec<&str> = list.iter().map(|l| l.split(':').nth(1).unwrap()).collect();
    assert_eq!(lines, ["1", "2", "3", "4", "5"], "{list:#?}");
}

#[test]
fn unset_environment_secret_is_reported_when_resolving_and_ignored_otherwise() {
    let var = "POSTBACK_RELAY_TEST_SURELY_UNSET_TOKEN";
    let text = format!("[auth]\ntoken = \"${{{var}}}\"\n[fields]\nclick_id = \"cid\"\n");
    let list = compile("acme", "acme.toml", &text, EnvMode::Resolve).unwrap_err();
    assert_eq!(list.len(), 1);
    let m = list[0].to_string();
    assert!(m.starts_with("acme.toml:2:9: "), "{m}");
    says(&m, &[var, "not set"]);
    let rule = compile("acme", "acme.toml", &text, EnvMode::Ignore).unwrap();
    assert_eq!(rule.auth.token, None);
}

#[test]
fn literal_token_and_token_param_are_kept() {
    let rule = compile(
        "acme",
        "acme.toml",
        "[auth]\ntoken = \"s3cr3t\"\ntoken_param = \"secure\"\nallow_ips = [\"203.0.113.0/24\"]\n[fields]\nclick_id = \"cid\"\n",
        EnvMode::Resolve,
    )
    .unwrap();
    assert_eq!(rule.auth.token.as_deref(), Some("s3cr3t"));
    assert_eq!(rule.auth.token_param, "secure");
    assert_eq!(rule.auth.allow_ips.len(), 1);
}

#[test]
fn bad_source_id_is_an_error() {
    let list = compile(
        "Acme Shop",
        "Acme Shop.toml",
        "[fields]\nclick_id = \"cid\"\n",
        EnvMode::Ignore,
    )
    .unwrap_err();
    says(
        &list[0].to_string(),
        &["\"Acme Shop\"", "[a-z0-9][a-z0-9_-]*"],
    );
}

#[test]
fn regression_map_values_may_be_toml_numbers() {
    let rule = super::rule(
        "[fields]\nclick_id = \"cid\"\ngoal_id = { from = \"event_id\", map = { \"7\" = 12, \"8\" = \"13\" } }\nrevenue = { from = \"tier\", map = { \"gold\" = 10.5 } }\n",
    );
    assert_eq!(
        super::body(&rule, "cid=a&event_id=7&tier=gold"),
        r#"{"click_id":"a","goal_id":12,"revenue":10.5}"#
    );
    assert_eq!(
        super::body(&rule, "cid=a&event_id=8"),
        r#"{"click_id":"a","goal_id":13}"#
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ngoal_id = { from = \"e\", map = { \"7\" = \"seven\" } }\n",
        3,
        39,
    );
    says(&m, &["goal_id.map.\"7\"", "\"seven\"", "JSON integer"]);
}

#[test]
fn regression_when_setting_both_goal_constants_is_a_load_error() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n\n[[when]]\nmatch = { ev = \"x\" }\nset = { goal_id = { value = 1 }, goal_alias = { value = \"x\" } }\n",
        4,
        1,
    );
    says(&m, &["[[when]] 1", "goal_id", "goal_alias", "both"]);
}

#[test]
fn regression_hidden_files_in_the_rules_directory_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.toml"),
        "[fields]\nclick_id = \"cid\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("._acme.toml"), [0u8, 5, 22, 7, 0xff]).unwrap();
    std::fs::write(dir.path().join(".#acme.toml"), "lock").unwrap();
    let set = postback_relay::rules::RuleSet::load_dir(dir.path(), EnvMode::Ignore).unwrap();
    assert_eq!(set.len(), 1);
}

#[test]
fn time_on_goal_id_is_an_error_because_goal_id_is_a_json_integer() {
    // A time output is a "Y-m-d H:i:s" string: goal_id would be sent as a JSON string.
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ngoal_id = { from = \"g\", time = \"unix\" }\n",
        3,
        32,
    );
    says(&m, &["goal_id", "time", "integer"]);
}

#[test]
fn case_that_turns_mapped_values_out_of_scaleos_set_is_an_error() {
    // "approved" is in Scaleo's set, but case = "upper" would send "APPROVED": every
    // postback with a status would reject.
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"s\", map = { \"1\" = \"approved\" }, case = \"upper\" }\n",
        3,
        64,
    );
    says(
        &m,
        &[
            "conv_status",
            "APPROVED",
            "pending, approved, rejected, hold",
        ],
    );
    // Lower case keeps Scaleo's values and normalises kept ones: fine.
    super::rule(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"s\", map = { \"1\" = \"approved\" }, unmapped = \"keep\", case = \"lower\" }\n",
    );
}

#[test]
fn forward_burst_zero_points_at_the_burst_value() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n\n[forward]\nrate_per_second = 5\nburst = 0\n",
        6,
        9,
    );
    says(&m, &["forward.burst = 0", "at least 1"]);
}

#[test]
fn a_field_that_reads_the_token_parameter_is_an_error() {
    // Ingest never shows the token parameter to the rule (it is stripped, and stored as
    // token=***), so such a field would be absent from every real postback while `map` and
    // `[[tests]]` showed it.
    let m = one_problem_at(
        "[auth]\ntoken_param = \"secure\"\n[fields]\nclick_id = \"cid\"\nadv_param1 = \"secure\"\n",
        5,
        14,
    );
    says(&m, &["fields.adv_param1", "\"secure\"", "token parameter"]);
    // The default token parameter is "token", with or without [auth].
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_param2 = { template = \"{event}-{token}\" }\n",
        3,
        27,
    );
    says(&m, &["fields.adv_param2", "\"token\"", "token_param"]);
}

#[test]
fn map_keys_that_collide_under_ignore_case_with_different_values_are_an_error() {
    // With ignore_case, "Hold" and "hold" are one key: which target wins must not be silent.
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"s\", map = { \"Hold\" = \"hold\", \"hold\" = \"approved\" }, ignore_case = true }\n",
        3,
        35,
    );
    says(&m, &["conv_status", "\"Hold\"", "\"hold\"", "ignore_case"]);
    // The same target twice is harmless.
    super::rule(
        "[fields]\nclick_id = \"cid\"\nconv_status = { from = \"s\", map = { \"Hold\" = \"hold\", \"hold\" = \"hold\" }, ignore_case = true }\n",
    );
}

#[test]
fn a_match_value_that_is_not_a_string_says_what_is_expected() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n\n[[skip]]\nmatch = { test = 1 }\nreason = \"t\"\n",
        5,
        18,
    );
    says(&m, &["integer", "string", "\"1\""]);
}

#[test]
fn an_empty_literal_token_is_an_error() {
    // It would let through anyone who sends an empty token parameter (?token=).
    let m = one_problem_at("[auth]\ntoken = \"\"\n[fields]\nclick_id = \"cid\"\n", 2, 9);
    says(&m, &["auth.token", "empty"]);
}

#[test]
fn a_time_field_constant_must_be_in_scaleos_format() {
    // Constants are sent as written: Scaleo's timestamp is "Y-m-d H:i:s".
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ntimestamp = { value = \"2024-05-20\" }\n",
        3,
        23,
    );
    says(&m, &["timestamp", "2024-05-20", "Y-m-d H:i:s"]);
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nclick_timestamp = { from = \"c\", default = \"yesterday\" }\n",
        3,
        43,
    );
    says(&m, &["click_timestamp", "yesterday", "Y-m-d H:i:s"]);
    super::rule("[fields]\nclick_id = \"cid\"\ntimestamp = { value = \"2024-05-20 10:00:00\" }\n");
}

#[test]
fn a_placeholder_star_is_accepted_only_at_the_end() {
    let m = one_problem_at(
        "[params]\nplaceholders = [\"OK_*\", \"A*B\"]\n[fields]\nclick_id = \"cid\"\n",
        2,
        25,
    );
    says(
        &m,
        &["params.placeholders", "\"A*B\"", "only at the end", "TPL_*"],
    );
    let m = one_problem_at(
        "[params]\nplaceholders = [\"*\"]\n[fields]\nclick_id = \"cid\"\n",
        2,
        17,
    );
    says(&m, &["\"*\"", "every value"]);
}

#[test]
fn a_regex_must_compile_and_have_exactly_one_capture_group() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"o\", regex = \"Order/\\\\d+\" }\n",
        3,
        38,
    );
    says(
        &m,
        &[
            "fields.adv_order_id.regex",
            "0 capture groups",
            "exactly one",
        ],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"o\", regex = \"(a)(b)\" }\n",
        3,
        38,
    );
    says(&m, &["2 capture groups", "(?:...)"]);
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { from = \"o\", regex = \"(a\" }\n",
        3,
        38,
    );
    says(&m, &["not a valid regular expression", "\"(a\""]);
}

#[test]
fn a_regex_on_a_constant_is_an_error() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\nadv_order_id = { value = \"x\", regex = \"(x)\" }\n",
        3,
        16,
    );
    says(&m, &["`regex` has no effect on a constant"]);
}

#[test]
fn condition_tables_name_what_they_accept() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[skip]]\nmatch = { amt = { lte = 0 } }\n",
        4,
        19,
    );
    says(&m, &["`lte`", "`le`", "`absent`", "`json`"]);
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[skip]]\nmatch = { amt = { lt = \"abc\" } }\n",
        4,
        17,
    );
    says(
        &m,
        &["skip[0].match.amt.lt", "\"abc\"", "expected a number"],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[when]]\nmatch = { e = { absent = true, is = \"x\" } }\nset = { adv_param1 = \"x\" }\n",
        4,
        15,
    );
    says(
        &m,
        &[
            "when[0].match.e",
            "absent = true | false",
            "`in = [",
            "`lt`",
        ],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[skip]]\nmatch = { ev = { json = \"type\", is = \"organic\" } }\n",
        4,
        16,
    );
    says(&m, &["skip[0].match.ev.json = \"type\"", "starts with '/'"]);
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[skip]]\nmatch = { ev = { in = [] } }\n",
        4,
        16,
    );
    says(&m, &["skip[0].match.ev.in", "empty list"]);
}

#[test]
fn list_alternatives_are_names_templates_or_constants() {
    let m = one_problem_at(
        "[fields]\nclick_id = [{ templat = \"{a}\" }, \"b\"]\n",
        2,
        15,
    );
    says(&m, &["`templat`", "`template`", "`value`"]);
    let m = problems("[fields]\nclick_id = [{ template = \"{a}\", value = \"x\" }, \"b\"]\n");
    says(&m.join("\n"), &["exactly one of `template` or `value`"]);
    let m = problems("[fields]\nclick_id = \"cid\"\ngoal_id = [\"g\", { value = \"x\" }]\n");
    says(
        &m.join("\n"),
        &["fields.goal_id.value = \"x\"", "JSON integer"],
    );
    let m = problems("[fields]\nclick_id = [{ template = \"{a\" }, \"b\"]\n");
    says(&m.join("\n"), &["fields.click_id.template", "unclosed"]);
}

#[test]
fn a_time_list_names_the_bad_entry() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\ntimestamp = { from = \"ts\", time = [\"%d/%m/%Y\", \"dmy\"] }\n",
        3,
        35,
    );
    says(
        &m,
        &["fields.timestamp.time", "entry 2 (\"dmy\")", "strftime"],
    );
}

#[test]
fn a_test_body_is_checked_at_load() {
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[tests]]\nname = \"t\"\nbody = \"cid=a\"\ncontent_type = \"xml\"\nexpect_reject = \"x\"\n",
        6,
        16,
    );
    says(
        &m,
        &[
            "tests \"t\"",
            "content_type = \"xml\"",
            "\"form\" or \"json\"",
        ],
    );
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[tests]]\nname = \"t\"\nbody = \"[1]\"\ncontent_type = \"json\"\nexpect_reject = \"x\"\n",
        3,
        1,
    );
    says(&m, &["tests \"t\": body", "flat JSON object"]);
    let m = one_problem_at(
        "[fields]\nclick_id = \"cid\"\n[[tests]]\nname = \"t\"\nquery = \"cid=a\"\ncontent_type = \"json\"\nexpect_reject = \"x\"\n",
        6,
        16,
    );
    says(&m, &["content_type needs a `body`"]);
}

// --- [auth.signature] -----------------------------------------------------------------------

fn signature_problems(sig: &str, env: EnvMode) -> Vec<String> {
    let text = format!("[auth.signature]\n{sig}\n[fields]\nclick_id = \"cid\"\n");
    match compile("acme", "acme.toml", &text, env) {
        Ok(_) => Vec::new(),
        Err(list) => list.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn signature_is_validated_at_load_naming_the_key_the_value_and_what_is_expected() {
    let cases: &[(&str, &[&str])] = &[
        (
            "algorithm = \"crc32\"\nmessage = \"{a}\"\nparam = \"sig\"",
            &[
                "auth.signature.algorithm = \"crc32\"",
                "\"md5\"",
                "\"hmac-sha256\"",
            ],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}\"\nparam = \"sig\"\nencoding = \"hexa\"",
            &[
                "auth.signature.encoding = \"hexa\"",
                "\"hex\"",
                "\"base64\"",
            ],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}\"\nparam = \"sig\"\nheader = \"X-Sig\"",
            &["exactly one of `param`", "`header`"],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}\"",
            &["param = \"signature\"", "header = \"X-Signature\""],
        ),
        (
            "algorithm = \"hmac-sha256\"\nmessage = \"{@body}\"\nheader = \"X-Sig\"",
            &["\"hmac-sha256\" needs `secret`"],
        ),
        (
            "algorithm = \"sha1\"\nmessage = \"{a}\"\nparam = \"sig\"\nsecret = \"k\"",
            &["auth.signature.secret", "takes no key", "${VAR}"],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}{@client_ip}\"\nparam = \"sig\"",
            &["auth.signature.message", "{@client_ip}", "{@body}"],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}{sig}\"\nparam = \"sig\"",
            &["{sig} is the signature parameter itself"],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a\"\nparam = \"sig\"",
            &["unclosed '{'"],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}\"\nheader = \"X Sig\"",
            &[
                "auth.signature.header = \"X Sig\"",
                "not a valid header name",
            ],
        ),
        (
            "algorithm = \"md5\"\nmessage = \"{a}\"\nparam = \"sig\"\nsalt = \"x\"",
            &["unknown field `salt`"],
        ),
    ];
    for (sig, want) in cases {
        let list = signature_problems(sig, EnvMode::Resolve);
        assert!(!list.is_empty(), "{sig}: compiled");
        let all = list.join("\n");
        assert!(all.starts_with("acme.toml:"), "{all}");
        says(&all, want);
    }
}

#[test]
fn signature_secrets_are_read_from_the_environment_like_the_token() {
    let var = "POSTBACK_RELAY_TEST_SURELY_UNSET_SIG_KEY";
    for sig in [
        format!("algorithm = \"md5\"\nmessage = \"{{a}}${{{var}}}\"\nparam = \"sig\""),
        format!(
            "algorithm = \"hmac-sha1\"\nmessage = \"{{@body}}\"\nheader = \"X-Sig\"\nsecret = \"${{{var}}}\""
        ),
    ] {
        let list = signature_problems(&sig, EnvMode::Resolve);
        assert_eq!(list.len(), 1, "{list:#?}");
        says(&list[0], &[var, "not set"]);
        assert!(signature_problems(&sig, EnvMode::Ignore).is_empty());
    }
    let text = "[auth.signature]\nalgorithm = \"hmac-sha256\"\nmessage = \"{@body}\"\nheader = \"X-Signature\"\nencoding = \"base64\"\nsecret = \"k\"\n[fields]\nclick_id = \"cid\"\n";
    let rule = compile("acme", "acme.toml", text, EnvMode::Resolve).unwrap();
    let sig = rule.auth.signature.as_ref().expect("a signature");
    assert!(
        !format!("{sig:?}").contains("\"k\""),
        "Debug never shows the key"
    );
    assert!(
        compile("acme", "acme.toml", text, EnvMode::Ignore)
            .unwrap()
            .auth
            .signature
            .is_none()
    );
}

#[test]
fn a_field_that_reads_the_signature_parameter_is_refused() {
    let text = "[auth.signature]\nalgorithm = \"md5\"\nmessage = \"{a}k\"\nparam = \"sig\"\n[fields]\nclick_id = \"cid\"\nadv_param1 = \"sig\"\n";
    let list = compile("acme", "acme.toml", text, EnvMode::Ignore).unwrap_err();
    says(
        &list[0].to_string(),
        &["\"sig\" is the signature parameter", "never get its value"],
    );
}

#[test]
fn answer_is_validated_at_load() {
    let list = problems("[answer]\nreject = 500\n[fields]\nclick_id = \"cid\"\n");
    says(
        &list.join("\n"),
        &["answer.reject = 500", "expected 422", "or 200"],
    );
    let list = problems("[answer]\nbody = \"{event id}:OK\"\n[fields]\nclick_id = \"cid\"\n");
    says(
        &list.join("\n"),
        &["answer.body", "not a plain parameter name"],
    );
    let list = problems("[answer]\nstatus = 200\n[fields]\nclick_id = \"cid\"\n");
    says(&list.join("\n"), &["unknown field `status`"]);
    // A constant body needs no parameter.
    let r = compile(
        "acme",
        "acme.toml",
        "[answer]\nbody = \"OK\"\nreject = 422\n[fields]\nclick_id = \"cid\"\n",
        EnvMode::Ignore,
    )
    .unwrap();
    assert!(r.answer.has_body() && !r.answer.reject_ok);
}

#[test]
fn every_unknown_key_of_a_file_is_reported_at_once() {
    let list = problems(
        "[params]\nrepeatd = \"first\"\n\n[fields]\nclick_id = \"cid\"\ngoal_id = { value = 1 }\ngoal_alias = { value = \"x\" }\nrevenue = { from = \"amt\", scal = \"0.01\" }\n\n[dedupe]\nwindw = \"3d\"\n\n[bogus]\na = 1\n",
    );
    let text = list.join("\n");
    for (at, what) in [
        ("acme.toml:2:1:", "`repeatd`"),
        ("acme.toml:8:27:", "`scal`"),
        ("acme.toml:11:1:", "`windw`"),
        ("acme.toml:13:2:", "`bogus`"),
    ] {
        assert!(
            list.iter().any(|p| p.starts_with(at) && p.contains(what)),
            "{at} {what} missing from:\n{text}"
        );
    }
    assert_eq!(list.len(), 4, "{text}");
}
