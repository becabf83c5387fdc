//! The operator CLI (the built binary) against the store of a running relay: SQLite WAL
//! lets both work on it at once.

use std::path::Path;
use std::process::Command;

use postback_relay::store::PauseScope;
use serde_json::Value;

use crate::e2e::admin_client::{admin_post, with_admin, write_rule};
use crate::e2e::support::{Env, SHOP};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `postback-relay ARGS` off the async runtime.
async fn cli(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
            .args(&args)
            .env_remove("RUST_LOG")
            .env_remove("SCALEO_API_KEY")
            .env_remove("RELAY_ADMIN_TOKEN")
            .output()
            .expect("run the binary");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn args(list: &[&str], data: &Path) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.push("--data".into());
    v.push(data.display().to_string());
    v
}

fn json(run: &Run) -> Value {
    assert_eq!(
        run.code, 0,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[tokio::test]
async fn cli_lists_and_shows_the_records_of_a_live_store() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let data = env.dir.path().join("data");
    let (_, ok) = env.get("/postback/shop?cid=cli1&amt=1999").await;
    let (_, rej) = env.get("/postback/shop?amt=5").await;
    let (ok, rej) = (ok["id"].as_i64().unwrap(), rej["id"].as_i64().unwrap());

    let list = json(&cli(args(&["records", "--json"], &data)).await);
    let ids: Vec<i64> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![rej, ok]);

    let text = cli(args(&["records", "--state", "rejected"], &data)).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains("rejected") && !text.stdout.contains("cli1"),
        "{}",
        text.stdout
    );

    let rec = json(&cli(args(&["record", &ok.to_string(), "--json"], &data)).await);
    assert_eq!(rec["raw"]["query"], "cid=cli1&amt=1999");
    assert_eq!(rec["body"]["revenue"], serde_json::json!(19.99));
    let text = cli(args(&["record", &rej.to_string()], &data)).await;
    assert_eq!(text.code, 0);
    assert!(text.stdout.contains("click_id"), "{}", text.stdout);

    let missing = cli(args(&["record", "987654"], &data)).await;
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(missing.stderr.contains("no record 987654"));
    let bad = cli(args(&["records", "--since", "yesterday"], &data)).await;
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("since") && bad.stderr.contains("RFC 3339"),
        "{}",
        bad.stderr
    );
    env.stop().await;
}

#[tokio::test]
async fn cli_pause_and_resume_are_seen_by_the_running_relay() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let data = env.dir.path().join("data");
    // The rules directory tells the known sources.
    let config = env.dir.path().join("ops.toml");
    let rules = env.dir.path().join("rules").display().to_string();
    std::fs::write(&config, format!("[rules]\ndir = {rules:?}\n")).unwrap();
    let config = config.display().to_string();
    let run = cli(args(
        &["pause", "--source", "shop", "--config", &config],
        &data,
    ))
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let paused = env.relay().store.paused().await.unwrap();
    assert_eq!(paused.len(), 1);
    assert_eq!(paused[0].scope, PauseScope::Source("shop".into()));

    let answer = json(
        &cli(args(
            &["resume", "--source", "shop", "--json", "--config", &config],
            &data,
        ))
        .await,
    );
    assert_eq!(answer["removed"], 1);
    assert!(env.relay().store.paused().await.unwrap().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn cli_replay_requeues_a_rejected_record_with_the_fixed_rules() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let data = env.dir.path().join("data");
    let rules = env.dir.path().join("rules");
    let (status, body) = env.get("/postback/shop?click=k9&amt=300").await;
    assert_eq!(status, 422);
    let id = body["id"].as_i64().unwrap();

    let fixed = SHOP.replace(r#"["clickid", "cid"]"#, r#"["clickid", "cid", "click"]"#);
    write_rule(&rules, "shop", &fixed);
    let rules_arg = rules.display().to_string();
    let id_arg = id.to_string();
    let a = args(
        &["replay", "--json", "--id", &id_arg, "--rules", &rules_arg],
        &data,
    );
    let report = json(&cli(a).await);
    assert_eq!(report["queued"], 1, "{report}");
    let rec = env.relay().store.get(id).await.unwrap().unwrap();
    assert!(matches!(rec.summary.state.as_str(), "queued" | "delivered"));
    assert_eq!(rec.body.unwrap()["click_id"], "k9");

    let usage = cli(args(&["replay"], &data)).await;
    assert_eq!(usage.code, 2, "a replay needs ids or a filter");
    env.stop().await;
}

#[tokio::test]
async fn cli_explain_prints_each_field_and_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.toml"), SHOP).unwrap();
    let rules = dir.path().display().to_string();
    let run = cli([
        "explain",
        "--rules",
        &rules,
        "--json",
        "shop",
        "?cid=abc&amt=1999&st=1",
    ]
    .map(String::from)
    .to_vec())
    .await;
    let e = json(&run);
    assert_eq!(e["outcome"], "forward");
    assert_eq!(e["body"]["conv_status"], "approved");
    let text = cli(["explain", "--rules", &rules, "shop", "cid=abc&amt=1999"]
        .map(String::from)
        .to_vec())
    .await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("parameter \"cid\""), "{}", text.stdout);
}

#[tokio::test]
async fn cli_refuses_a_store_directory_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let run = cli(args(&["records"], &dir.path().join("nope"))).await;
    assert_eq!(run.code, 69, "store unavailable: {}", run.stderr);
    assert!(run.stderr.contains("no store directory"), "{}", run.stderr);
    assert!(!dir.path().join("nope").exists(), "nothing is created");
}

#[tokio::test]
async fn operator_commands_need_no_secrets_from_the_production_config() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let (_, ok) = env.get("/postback/shop?cid=nosecret&amt=1").await;
    let id = ok["id"].as_i64().unwrap().to_string();
    // The shipped example: its api_key and admin token are ${VAR}s, unset here.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.example.toml"))
            .unwrap()
            .replace(
                "path         = \"data\"",
                &format!(
                    "path = {:?}",
                    env.dir.path().join("data").display().to_string()
                ),
            )
            .replace(
                "dir = \"rules\"",
                &format!(
                    "dir = {:?}",
                    env.dir.path().join("rules").display().to_string()
                ),
            );
    let config = env.dir.path().join("relay.toml");
    std::fs::write(&config, example).unwrap();
    let c = config.display().to_string();
    for command in [
        vec!["records", "--config", &c],
        vec!["record", &id, "--config", &c],
        vec!["pause", "--source", "shop", "--config", &c],
        vec!["resume", "--source", "shop", "--config", &c],
        vec!["replay", "--id", &id, "--config", &c],
        vec!["explain", "shop", "cid=a", "--config", &c],
    ] {
        let run = cli(command.iter().map(|s| s.to_string()).collect()).await;
        assert_eq!(run.code, 0, "{command:?}: {}{}", run.stdout, run.stderr);
        assert!(
            !run.stderr.contains("SCALEO_API_KEY") && !run.stderr.contains("RELAY_ADMIN_TOKEN"),
            "{command:?}: {}",
            run.stderr
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn pause_and_resume_refuse_an_unknown_source_listing_the_known_ones() {
    let env = Env::start(&[("shop", SHOP)], with_admin).await;
    let data = env.dir.path().join("data");
    let rules = env.dir.path().join("rules");
    let config = env.dir.path().join("ops.toml");
    std::fs::write(
        &config,
        format!("[rules]\ndir = {:?}\n", rules.display().to_string()),
    )
    .unwrap();
    for verb in ["pause", "resume"] {
        let mut a = args(&[verb, "--source", "nosuch", "--config"], &data);
        a.insert(4, config.display().to_string());
        let run = cli(a).await;
        assert_eq!(run.code, 2, "{verb}: {}", run.stderr);
        assert!(
            run.stderr.contains("\"nosuch\" is not a known source")
                && run.stderr.contains("(known: shop)"),
            "{verb}: {}",
            run.stderr
        );
        let (status, answer) = admin_post(
            &env,
            &format!("/admin/{verb}"),
            serde_json::json!({"source": "nosuch"}),
        )
        .await;
        assert_eq!(status, 400, "{verb}: {answer}");
        let reason = answer["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("nosuch") && reason.contains("shop"),
            "{answer}"
        );
    }
    assert!(env.relay().store.paused().await.unwrap().is_empty());
    let (status, _) = admin_post(&env, "/admin/pause", serde_json::json!({"source": "shop"})).await;
    assert_eq!(status, 200);
    env.stop().await;
}

#[tokio::test]
async fn usage_errors_exit_2_in_every_operator_command() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let data = env.dir.path().join("data");
    for (command, want) in [
        (
            vec!["records", "--state", "x"],
            "state=\"x\": expected one of",
        ),
        (vec!["replay", "--state", "delivered"], "delivered"),
        (vec!["replay"], "give --id N"),
        (vec!["records", "--since", "yesterday"], "RFC 3339"),
    ] {
        let run = cli(args(&command, &data)).await;
        assert_eq!(run.code, 2, "{command:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{command:?}: {}", run.stderr);
    }
    let run = cli(args(&["records", "--state", "x", "--json"], &data)).await;
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("JSON error");
    assert_eq!(v["error"], "usage");
    env.stop().await;
}

#[tokio::test]
async fn cli_explain_says_a_postback_would_change_a_stored_conversion() {
    let env = Env::start(&[("shop", SHOP)], |_| {}).await;
    let data = env.dir.path().join("data");
    let rules = env.dir.path().join("rules").display().to_string();
    let (_, lead) = env.get("/postback/shop?cid=cx1&oid=O-1&amt=0&st=2").await;
    let lead = lead["id"].as_i64().unwrap();
    crate::support::wait::expect_value(
        std::time::Duration::from_secs(5),
        &format!("the lead (record {lead}) delivered"),
        async || {
            let rec = env.relay().store.get(lead).await.unwrap().unwrap();
            rec.summary.state.as_str().to_string()
        },
        |state| state == "delivered",
    )
    .await;
    let sale = "cid=cx1&oid=O-1&amt=2500&st=1";
    let run = cli(args(
        &["explain", "--rules", &rules, "shop", sale, "--json"],
        &data,
    ))
    .await;
    let e = json(&run);
    assert_eq!(e["conversion"]["outcome"], "update", "{e}");
    assert_eq!(e["conversion"]["original"], lead);
    assert_eq!(
        e["conversion"]["change"],
        serde_json::json!({"conv_status": "approved", "revenue": 25})
    );
    let text = cli(args(&["explain", "--rules", &rules, "shop", sale], &data)).await;
    assert!(
        text.stdout
            .contains(&format!("conversion created by record {lead}: update")),
        "{}",
        text.stdout
    );
    // Without a store, explain is the rules' answer alone.
    let rules_only = cli(vec![
        "explain".into(),
        "--rules".into(),
        rules.clone(),
        "shop".into(),
        sale.into(),
        "--json".into(),
    ])
    .await;
    assert!(json(&rules_only).get("conversion").is_none());

    let (_, change) = env.get(&format!("/postback/shop?{sale}")).await;
    let list = json(
        &cli(args(
            &["records", "--conversion", &lead.to_string(), "--json"],
            &data,
        ))
        .await,
    );
    let ids: Vec<i64> = list["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![change["id"].as_i64().unwrap(), lead]);
    let text = cli(args(&["record", &lead.to_string()], &data)).await;
    assert!(
        text.stdout.contains("conversion:") && text.stdout.contains("later: record"),
        "{}",
        text.stdout
    );
    env.stop().await;
}
