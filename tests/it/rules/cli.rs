//! The `check`, `test` and `map` commands, run as the built binary.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postback-relay");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("POSTBACK_RELAY_CLI_TEST_UNSET")
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn p(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

const GOOD: &str = r#"description = "good"
[auth]
token = "${POSTBACK_RELAY_CLI_TEST_UNSET}"
[fields]
click_id = "cid"
revenue = { from = "amt", scale = "0.01" }
conv_status = { from = "st", map = { "1" = "approved" } }
[[skip]]
match = { test = "1" }
reason = "test ping"
[[tests]]
name = "cents"
query = "cid=a&amt=1999"
expect = { click_id = "a", revenue = 19.99 }
"#;

#[test]
fn check_passes_on_the_shipped_rules() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let o = run(&["check", "--rules", p(&rules)]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).starts_with("ok: "), "{}", stdout(&o));
}

#[test]
fn check_reports_every_problem_of_every_file_and_fails() {
    let dir = dir_with(&[
        (
            "broken.toml",
            "[fields]\nclik_id = \"cid\"\nconv_status = { value = \"aproved\" }\n",
        ),
        ("typo.toml", "[fields]\nclick_id = \"cid\"\n[dedup]\n"),
        ("good.toml", GOOD),
    ]);
    let o = run(&["check", "--no-env", "--rules", p(dir.path())]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let broken = dir.path().join("broken.toml");
    let typo = dir.path().join("typo.toml");
    for want in [
        format!("{}:1:1: [fields] has no click_id", broken.display()),
        format!(
            "{}:2:1: fields: \"clik_id\" is not a Scaleo",
            broken.display()
        ),
        format!(
            "{}:3:25: fields.conv_status.value = \"aproved\"",
            broken.display()
        ),
        format!("{}:3:2: unknown field `dedup`", typo.display()),
        "4 problem(s)".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} missing from:\n{out}");
    }
    assert!(!out.contains("good.toml"), "{out}");
}

#[test]
fn check_reports_an_unset_secret_unless_no_env() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&["check", "--rules", p(dir.path())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("POSTBACK_RELAY_CLI_TEST_UNSET"),
        "{}",
        stdout(&o)
    );
    let o = run(&["check", "--no-env", "--rules", p(dir.path())]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("ok: 1 rule file(s)"), "{}", stdout(&o));
}

#[test]
fn test_passes_and_counts() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&["test", "--rules", p(dir.path())]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("ok   good: cents"), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 passed, 0 failed"), "{}", stdout(&o));
}

#[test]
fn test_fails_with_a_body_diff() {
    let failing = GOOD.replace(
        "revenue = 19.99 }",
        "revenue = 19.9, adv_order_id = \"A\" }",
    );
    let dir = dir_with(&[("good.toml", &failing)]);
    let o = run(&["test", "--rules", p(dir.path())]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    for want in [
        "FAIL good: cents",
        "good.toml:11",
        "~ revenue: expected 19.9, got 19.99",
        "- adv_order_id: expected \"A\", missing from the body",
        "0 passed, 1 failed",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
}

#[test]
fn test_fails_when_the_outcome_kind_differs() {
    let failing = GOOD.replace(
        "expect = { click_id = \"a\", revenue = 19.99 }",
        "expect_reject = \"click_id\"",
    );
    let dir = dir_with(&[("good.toml", &failing)]);
    let o = run(&["test", "--rules", p(dir.path())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("expected reject with a reason containing \"click_id\""),
        "{}",
        stdout(&o)
    );
}

fn map(dir: &Path, source: &str, query: &str) -> (Option<i32>, Value) {
    let o = run(&["map", "--rules", p(dir), source, query, "--json"]);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap_or(Value::Null);
    (o.status.code(), v)
}

#[test]
fn map_json_forward_exits_0_with_the_body() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let (code, v) = map(dir.path(), "good", "?cid=a&amt=1999&st=1");
    assert_eq!(code, Some(0));
    assert_eq!(
        v.to_string(),
        json!({"outcome": "forward", "body": {"click_id": "a", "revenue": super::num("19.99"), "conv_status": "approved"}, "reason": null}).to_string()
    );
}

#[test]
fn map_json_skip_exits_0_with_the_reason() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let (code, v) = map(dir.path(), "good", "test=1");
    assert_eq!(code, Some(0));
    assert_eq!(
        v,
        json!({"outcome": "skip", "body": null, "reason": "test ping"})
    );
}

#[test]
fn map_json_reject_exits_1_with_the_reason() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let (code, v) = map(dir.path(), "good", "cid=%7Bcid%7D&amt=1");
    assert_eq!(code, Some(1));
    assert_eq!(v["outcome"], "reject");
    assert_eq!(v["body"], Value::Null);
    assert!(v["reason"].as_str().unwrap().starts_with("click_id"), "{v}");
}

#[test]
fn map_exits_2_for_an_unknown_source_and_for_broken_rules() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&["map", "--rules", p(dir.path()), "nosuch", "cid=a", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("\"nosuch\""), "{}", stderr(&o));
    assert!(stderr(&o).contains("(known: good)"), "{}", stderr(&o));
    // --json answers JSON even when there is no outcome.
    let v: Value = serde_json::from_str(stdout(&o).trim()).expect("JSON on stdout");
    assert_eq!(v["error"], "usage");
    assert!(v["reason"].as_str().unwrap().contains("nosuch"), "{v}");
    let broken = dir_with(&[("good.toml", GOOD), ("bad.toml", "[fields]\n")]);
    let o = run(&[
        "map",
        "--rules",
        p(broken.path()),
        "good",
        "cid=a",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.toml:1:1:"), "{}", stderr(&o));
    let o = run(&["map", "--rules", p(dir.path())]);
    assert_eq!(o.status.code(), Some(2), "usage error");
}

#[test]
fn map_refuses_a_client_ip_that_is_not_an_address_and_names_the_time_format() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "good",
        "cid=a",
        "--client-ip",
        "not-an-ip",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("not-an-ip") && stderr(&o).contains("--client-ip"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "good",
        "cid=a",
        "--received-at",
        "yesterday",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--received-at") && stderr(&o).contains("RFC 3339"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn every_argument_of_every_command_has_a_help_text() {
    let o = run(&["--help"]);
    let commands: Vec<String> = stdout(&o)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 12, "{commands:?}");
    for c in commands {
        let o = run(&[&c, "-h"]);
        let out = stdout(&o);
        // An argument's help is on its line after a gap, or on the next, indented deeper.
        let lines: Vec<&str> = out.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            let is_arg = line.starts_with("  ")
                && !line.starts_with("          ")
                && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['));
            let helped = t.contains("  ")
                || lines
                    .get(i + 1)
                    .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
            assert!(
                !is_arg || helped,
                "`{c} -h`: no help text for {t:?}:\n{out}"
            );
        }
    }
}

#[test]
fn test_and_map_use_the_configs_rules_dir() {
    let rules = dir_with(&[("good.toml", GOOD)]);
    let cfg = dir_with(&[(
        "relay.toml",
        &format!(
            "[rules]\ndir = {:?}\n[scaleo]\ntimezone = \"UTC\"\n",
            p(rules.path())
        ),
    )]);
    let config = cfg.path().join("relay.toml");
    // No Scaleo key, no admin token: map and test do not need them.
    let o = run(&["map", "--config", p(&config), "good", "cid=a", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["test", "--config", p(&config)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("ok   good: cents"), "{}", stdout(&o));
    // check: the rules it checks are the config's (and it reports the config's problems).
    let o = run(&["check", "--no-env", "--config", p(&config)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!("ok: 1 rule file(s) in {}", p(rules.path()))),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("scaleo.base_url is required"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_missing_rules_directory_is_named_not_placed_at_line_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let o = run(&["check", "--rules", p(&missing)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!("no rules directory {}", p(&missing)))
            && !stdout(&o).contains(":1:1"),
        "{}",
        stdout(&o)
    );
    let o = run(&["test", "--rules", p(&missing)]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("rules.dir"), "{}", stderr(&o));
}

#[test]
fn fields_lists_scaleos_fields_and_the_docs_page_is_its_markdown() {
    let o = run(&["fields"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.lines().any(
            |l| l.starts_with("conv_status") && l.contains("pending, approved, rejected, hold")
        ),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("revenue") && l.contains("number"))
    );
    let o = run(&["fields", "--markdown"]);
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/scaleo-fields.md"
    ))
    .unwrap();
    assert_eq!(
        page,
        stdout(&o),
        "docs/scaleo-fields.md is out of date: postback-relay fields --markdown > docs/scaleo-fields.md"
    );
}

#[test]
fn an_unknown_field_points_to_the_fields_command() {
    let dir = dir_with(&[("x.toml", "[fields]\nclick_id = \"cid\"\nrevenu = \"amt\"\n")]);
    let o = run(&["check", "--no-env", "--rules", p(dir.path())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("postback-relay fields"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains(".md"), "{}", stdout(&o));
}

#[test]
fn explain_exits_1_on_a_reject_like_map() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&["explain", "--rules", p(dir.path()), "good", "amt=1"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["explain", "--rules", p(dir.path()), "good", "cid=a"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn map_passes_request_attributes_to_special_sources() {
    let dir = dir_with(&[(
        "px.toml",
        "[fields]\nclick_id = \"cid\"\nip = \"@client_ip\"\ntimestamp = \"@received_at\"\n",
    )]);
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "px",
        "cid=a",
        "--json",
        "--client-ip",
        "198.51.100.7",
        "--received-at",
        "2024-05-20T09:41:28Z",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v["body"],
        json!({"click_id": "a", "ip": "198.51.100.7", "timestamp": "2024-05-20 09:41:28"})
    );
}

#[test]
fn map_human_output_shows_the_body() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&["map", "--rules", p(dir.path()), "good", "cid=a&amt=5"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).starts_with("forward to Scaleo:"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("\"revenue\": 0.05"), "{}", stdout(&o));
}

#[test]
fn forward_base_url_reads_the_environment_like_the_api_key() {
    // ${VAR} in [auth] or [forward] reads the environment when the rules load.
    let var = "POSTBACK_RELAY_CLI_TEST_BASE_URL";
    let rule = format!(
        "[fields]\nclick_id = \"cid\"\n[forward]\nbase_url = \"${{{var}}}\"\napi_key = \"${{{var}_KEY}}\"\n"
    );
    let dir = dir_with(&[("other.toml", &rule)]);
    let o = Command::new(BIN)
        .args(["check", "--rules", p(dir.path())])
        .env(var, "https://track.other-network.example")
        .env(format!("{var}_KEY"), "k")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // Unset: named, like any other secret; --no-env skips it.
    let o = Command::new(BIN)
        .args(["check", "--rules", p(dir.path())])
        .env_remove(var)
        .env(format!("{var}_KEY"), "k")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(var), "{}", stdout(&o));
    let o = Command::new(BIN)
        .args(["check", "--no-env", "--rules", p(dir.path())])
        .env_remove(var)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // A resolved value is still checked.
    let o = Command::new(BIN)
        .args(["check", "--rules", p(dir.path())])
        .env(var, "track.other-network.example")
        .env(format!("{var}_KEY"), "k")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("http://"), "{}", stdout(&o));
}

#[test]
fn map_takes_a_post_body_as_a_form_or_json() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "good",
        "cid=a",
        "--body",
        "amt=1999&st=1",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["body"]["revenue"], super::num("19.99"));
    assert_eq!(v["body"]["conv_status"], "approved");
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "good",
        "--body",
        r#"{"cid":"b","amt":250,"st":"1"}"#,
        "--content-type",
        "json",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v["body"],
        json!({"click_id": "b", "revenue": super::num("2.5"), "conv_status": "approved"})
    );
}

#[test]
fn map_refuses_a_json_body_that_is_not_an_object_and_a_content_type_without_body() {
    let dir = dir_with(&[("good.toml", GOOD)]);
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "good",
        "--body",
        "[1]",
        "--content-type",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("flat JSON object"), "{}", stderr(&o));
    let o = run(&[
        "map",
        "--rules",
        p(dir.path()),
        "good",
        "cid=a",
        "--content-type",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(2), "usage error");
}
