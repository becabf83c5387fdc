//! The service config: the shipped example loads, environment overrides and `${VAR}` work,
//! and every bad value is named with what is accepted (through `postback-relay check`).

use std::process::Command;

fn check(config: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postback-relay"));
    cmd.args([
        "check",
        "--rules",
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        "--config",
    ])
    .arg(&path);
    cmd.env_remove("SCALEO_API_KEY")
        .env_remove("RELAY_ADMIN_TOKEN");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/relay.example.toml")).unwrap()
}

#[test]
fn shipped_example_config_is_valid_with_its_secrets_set() {
    let (code, out) = check(
        &example(),
        &[("SCALEO_API_KEY", "k"), ("RELAY_ADMIN_TOKEN", "t")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: service config"), "{out}");
}

#[test]
fn unset_secret_variable_is_named_and_its_value_never_printed() {
    let (code, out) = check(&example(), &[("RELAY_ADMIN_TOKEN", "t")]);
    assert_ne!(code, 0);
    assert!(
        out.contains("scaleo.api_key") && out.contains("SCALEO_API_KEY is not set"),
        "{out}"
    );
}

#[test]
fn no_env_checks_the_config_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, example()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .args([
            "check",
            "--no-env",
            "--rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
            "--config",
        ])
        .arg(&path)
        .env_remove("SCALEO_API_KEY")
        .env_remove("RELAY_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ok: service config"), "{text}");
}

#[test]
fn environment_overrides_the_file_and_is_validated() {
    let base = "[scaleo]\nbase_url = \"http://127.0.0.1:1\"\napi_key = \"k\"\n";
    let (code, out) = check(base, &[("RELAY__FORWARD__RATE_PER_SECOND", "nope")]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("rate_per_second"), "{out}");
    let (code, out) = check(base, &[("RELAY__FORWARD__CONCURRENCY", "0")]);
    assert_ne!(code, 0);
    assert!(
        out.contains("forward.concurrency = \"0\": at least 1"),
        "{out}"
    );
}

#[test]
fn bad_values_name_the_key_the_value_and_what_is_accepted() {
    let cases = [
        (
            "[scaleo]\nbase_url = \"track.example.com\"\napi_key = \"k\"\n",
            "scaleo.base_url = \"track.example.com\": an http:// or https:// URL",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\ntimezone = \"Mars/Base\"\n",
            "scaleo.timezone = \"Mars/Base\"",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[forward]\nlease = \"5s\"\n",
            "a lease longer than scaleo.timeout",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[forward]\nretry_schedule = [\"10 parsecs\"]\n",
            "forward.retry_schedule = \"10 parsecs\"",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[server]\nlisten = \"everywhere\"\n",
            "server.listen = \"everywhere\": an address and port",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "server.trusted_proxies = \"10.0.0.0/33\"",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[forwrd]\nburst = 1\n",
            "forwrd",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\n",
            "scaleo.api_key is required",
        ),
    ];
    for (config, want) in cases {
        let (code, out) = check(config, &[]);
        assert_ne!(code, 0, "accepted: {config}");
        assert!(
            out.contains(want),
            "for {config:?} expected {want:?} in:\n{out}"
        );
    }
}

#[test]
fn store_url_must_be_postgres_and_its_password_is_never_printed() {
    let config = "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[store]\nurl = \"mysql://relay:pw-s3cret@db/relay\"\n";
    let (code, out) = check(config, &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("store.url = \"mysql://relay:***@db/relay\": a postgres://"),
        "{out}"
    );
    assert!(!out.contains("pw-s3cret"), "{out}");
    let config = "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n";
    let (code, out) = check(
        config,
        &[(
            "RELAY__STORE__URL",
            "postgres://relay:pw@127.0.0.1:5432/relay",
        )],
    );
    assert_eq!(code, 0, "{out}");
}
