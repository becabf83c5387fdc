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
fn the_retry_policy_is_checked_at_load_with_each_key_and_line() {
    let config = "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[forward]\nretry_schedule = []\nmax_attempts = 0\n";
    let (code, out) = check(config, &[]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "relay.toml:5: forward.retry_schedule = \"[]\": at least one delay such as \"10s\"",
        "relay.toml:6: forward.max_attempts = \"0\": at least 1",
        "2 problem(s) in the service config",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // A delay that does not parse is the problem, not the schedule it leaves empty.
    let config = "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[forward]\nretry_schedule = [\"10 parsecs\"]\n";
    let (code, out) = check(config, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("forward.retry_schedule = \"10 parsecs\""),
        "{out}"
    );
    assert!(!out.contains("\"[]\""), "{out}");
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

#[cfg(feature = "postgres")]
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

#[cfg(feature = "postgres")]
#[test]
fn the_postgres_pool_timeouts_and_tls_settings_are_validated() {
    let head = "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[store]\n";
    for (store, want) in [
        (
            "pool_size = 0",
            "store.pool_size = \"0\": between 1 and 1000",
        ),
        (
            "connect_timeout = \"0s\"",
            "store.connect_timeout = \"0s\": a duration above zero",
        ),
        (
            "connect_timeout = \"soon\"",
            "store.connect_timeout = \"soon\"",
        ),
        (
            "statement_timeout = \"0s\"",
            "store.statement_timeout = \"0s\": a duration above zero",
        ),
        (
            "url = \"postgres://relay:pw-s3cret@db/relay?sslmode=verify-full\"",
            "sslmode=verify-full needs the CA",
        ),
        (
            "url = \"postgres://relay@db/relay?sslmode=strict\"",
            "sslmode=strict: expected disable, prefer, require, verify-ca or verify-full",
        ),
        (
            "url = \"postgres://relay@db/relay?sslmode=verify-full\"\nca_file = \"/nonexistent/ca.pem\"",
            "CA file /nonexistent/ca.pem: cannot read it",
        ),
    ] {
        let config = format!("{head}{store}\n");
        let (code, out) = check(&config, &[]);
        assert_ne!(code, 0, "{config}: {out}");
        assert!(
            out.contains(want),
            "for {store:?} expected {want:?} in:\n{out}"
        );
        assert!(!out.contains("pw-s3cret"), "{out}");
    }
    let config = format!(
        "{head}url = \"postgres://relay@db/relay?sslmode=require\"\npool_size = 4\n\
         connect_timeout = \"2s\"\nstatement_timeout = \"10s\"\n"
    );
    let (code, out) = check(&config, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let config = "[server]\nlisten = \"everywhere\"\n\n[scaleo]\nbase_url = \"https://track.example.com\"\napi_key = \"${SCALEO_API_KEY}\"\n\n[admin]\ntoken = \"${RELAY_ADMIN_TOKEN}\"\n\n[forward]\nconcurrency = 0\n";
    let (code, out) = check(config, &[]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "relay.toml:2: server.listen = \"everywhere\": an address and port",
        "relay.toml:6: scaleo.api_key = \"${SCALEO_API_KEY}\": environment variable SCALEO_API_KEY is not set",
        "relay.toml:9: admin.token = \"${RELAY_ADMIN_TOKEN}\": environment variable RELAY_ADMIN_TOKEN is not set",
        "relay.toml:12: forward.concurrency = \"0\": at least 1",
        "4 problem(s) in the service config",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // A value from the environment is placed there.
    let (_, out) = check(config, &[("RELAY__FORWARD__BURST", "0")]);
    assert!(
        out.contains("environment RELAY__FORWARD__BURST: forward.burst = \"0\""),
        "{out}"
    );
}

#[test]
fn a_base_url_with_a_path_a_query_or_the_panel_host_is_refused_with_a_hint() {
    for (url, want) in [
        (
            "https://track.example.com/api/v2/network/tracking/conv-click-id",
            "the relay appends /api/v2/network/tracking/conv-click-id itself; use https://track.example.com",
        ),
        (
            "https://track.example.com/tracking",
            "without a path; use https://track.example.com",
        ),
        (
            "https://track.example.com?api-key=k",
            "without a query (the API key goes in scaleo.api_key)",
        ),
        (
            "https://mynetwork.scaleo.io",
            "not the Scaleo panel's address",
        ),
    ] {
        let config = format!("[scaleo]\nbase_url = \"{url}\"\napi_key = \"k\"\n");
        let (code, out) = check(&config, &[]);
        assert_eq!(code, 1, "accepted {url}: {out}");
        assert!(
            out.contains(&format!("relay.toml:2: scaleo.base_url = \"{url}\""))
                && out.contains(want),
            "{url}: {want:?} missing from:\n{out}"
        );
    }
    let (code, out) = check(
        "[scaleo]\nbase_url = \"https://track.example.com/\"\napi_key = \"k\"\n",
        &[],
    );
    assert_eq!(code, 0, "{out}");
}

/// Runs `postback-relay serve` until it exits or `wait_for` appears on stderr (then kills it).
fn serve(args: &[&str], wait_for: Option<&str>) -> (i32, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        text.push_str(&line);
        text.push('\n');
        if wait_for.is_some_and(|w| line.contains(w)) {
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), text)
}

fn local_config(dir: &std::path::Path, base_url: &str) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[scaleo]\nbase_url = \"{base_url}\"\napi_key = \"k\"\n[store]\npath = {:?}\n[rules]\ndir = {:?}\n",
            dir.join("data").display().to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn serve_refuses_a_store_made_for_another_network_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/scaleo-network"),
        "http://127.0.0.1:9100\n",
    )
    .unwrap();
    let config = local_config(dir.path(), "https://track.example.com");
    let (code, out) = serve(&["--config", config.to_str().unwrap()], None);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("belongs to another Scaleo network")
            && out.contains("names http://127.0.0.1:9100")
            && out.contains("scaleo.base_url is https://track.example.com")
            && out.contains("store.path"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no colours into a pipe: {out:?}");
    assert!(!out.contains("Unable to write an event"), "{out}");
    assert!(
        !dir.path().join("data/relay.db").exists(),
        "nothing is opened"
    );
}

#[test]
fn serve_sandbox_keeps_its_own_store_apart_from_productions() {
    let dir = tempfile::tempdir().unwrap();
    let config = local_config(dir.path(), "https://track.example.com");
    let (_, out) = serve(
        &[
            "--sandbox",
            "--sandbox-listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        Some("send a postback"),
    );
    assert!(out.contains("the sandbox's store is"), "{out}");
    let marker = std::fs::read_to_string(dir.path().join("data/sandbox/scaleo-network")).unwrap();
    assert!(marker.starts_with("http://127.0.0.1:"), "{marker}");
    assert!(!dir.path().join("data/relay.db").exists(), "{out}");
    assert!(!out.contains('\x1b'), "no colours into a pipe: {out:?}");
    // Production on the sandbox's store is refused.
    let prod = dir.path().join("prod.toml");
    std::fs::write(
        &prod,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("/data\"", "/data/sandbox\""),
    )
    .unwrap();
    let (code, out) = serve(&["--config", prod.to_str().unwrap()], None);
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("belongs to another Scaleo network"), "{out}");
}

#[test]
fn serve_names_a_missing_config_file_and_an_unset_rule_secret_without_a_flag_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = serve(
        &["--config", dir.path().join("nope.toml").to_str().unwrap()],
        None,
    );
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("no config file") && out.contains("relay.example.toml"),
        "{out}"
    );
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("s.toml"),
        "[auth]\ntoken = \"${POSTBACK_RELAY_TEST_UNSET_TOKEN}\"\n[fields]\nclick_id = \"cid\"\n",
    )
    .unwrap();
    let config = local_config(dir.path(), "https://track.example.com");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        rules.to_str().unwrap(),
    );
    std::fs::write(&config, text).unwrap();
    let (code, out) = serve(&["--config", config.to_str().unwrap()], None);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("POSTBACK_RELAY_TEST_UNSET_TOKEN is not set"),
        "{out}"
    );
    assert!(
        !out.contains("use --no-env"),
        "serve has no --no-env: {out}"
    );
}

#[cfg(not(feature = "postgres"))]
#[test]
fn a_sqlite_only_build_refuses_store_url_and_says_how_to_get_postgres() {
    let config = "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[store]\nurl = \"postgres://relay:pw-s3cret@db/relay\"\n";
    let (code, out) = check(config, &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("store.url = \"postgres://relay:***@db/relay\": this relay was built without PostgreSQL support"),
        "{out}"
    );
    assert!(out.contains("--features postgres"), "{out}");
    assert!(!out.contains("pw-s3cret"), "{out}");
    // Without store.url the same build checks fine.
    let (code, out) = check("[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n", &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_postgres_defaults_are_16_connections_5s_to_connect_and_a_second_above_store_timeout() {
    let store = postback_relay::config::Config::for_local("http://127.0.0.1:9", "k").store;
    assert_eq!(store.pool_size, 16);
    assert_eq!(store.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(
        store.statement_timeout,
        store.timeout + std::time::Duration::from_secs(1)
    );
    assert_eq!(store.ca_file, None);
}

#[test]
fn a_syntax_error_names_the_line_but_never_prints_an_inline_secret() {
    let cases = [
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[store]\nurl = \"postgres://relay:pw-s3cret@db:5432/relay\n",
            "pw-s3cret",
            "relay.toml:5:",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"key-s3cret\n",
            "key-s3cret",
            "relay.toml:3:",
        ),
        (
            "[scaleo]\nbase_url = \"http://x\"\napi_key = \"k\"\n[admin]\ntoken = \"tok-s3cret\" trailing\n",
            "tok-s3cret",
            "relay.toml:5:",
        ),
    ];
    for (config, secret, line) in cases {
        let (code, out) = check(config, &[]);
        assert_ne!(code, 0, "{out}");
        assert!(!out.contains(secret), "the secret is printed:\n{out}");
        assert!(out.contains(line), "the line is not named:\n{out}");
    }
}

/// `admin.token` defaults to `${RELAY_ADMIN_TOKEN}`: with the variable set and no token in
/// the file, the admin API takes that token (and refuses others).
#[test]
fn the_admin_token_defaults_to_the_relay_admin_token_variable() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = local_config(dir.path(), "http://127.0.0.1:9");
    let mut child = Command::new(env!("CARGO_BIN_EXE_postback-relay"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RELAY_ADMIN_TOKEN", "t0k-from-env")
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = loop {
        let line = lines.next().expect("a started line").unwrap();
        if let Some(at) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin_addr="))
        {
            break at.to_string();
        }
    };
    let status = |token: &str| {
        let mut conn = std::net::TcpStream::connect(&admin).unwrap();
        write!(
            conn,
            "GET /admin/records HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer[9..12].to_string()
    };
    let (good, bad) = (status("t0k-from-env"), status("other"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!((good.as_str(), bad.as_str()), ("200", "401"));
}

/// `check --config` names every unknown key of the file at once and a value of the wrong
/// type by its key, each at its `file:line:col`.
#[test]
fn check_reports_every_unknown_key_and_a_bad_type_at_their_positions() {
    let (code, out) = check(
        "[server]\nlissen = \"x\"\n[bogus]\na = 1\n[scaleo]\nbase_url = \"https://track.example.com\"\napi_key = \"k\"\n",
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("relay.toml:2:1: unknown field `lissen`"),
        "{out}"
    );
    assert!(
        out.contains("relay.toml:3:2: unknown field `bogus`"),
        "{out}"
    );
    let (code, out) = check(
        "[server]\nmax_url_bytes = \"big\"\n[scaleo]\nbase_url = \"https://track.example.com\"\napi_key = \"k\"\n",
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("relay.toml:2:17: server.max_url_bytes: invalid type: string \"big\""),
        "{out}"
    );
}
