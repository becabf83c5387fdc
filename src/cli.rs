//! The `postback-relay` command line: `serve`, `sandbox`, `check`, `test`, `map` and the
//! operator commands. Each subcommand returns the process exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jiff::tz::TimeZone;
use serde_json::json;

use crate::config::Config;
use crate::ops;
use crate::rules::testing::{self, describe_outcome};
use crate::rules::{BodyKind, EnvMode, Input, Outcome, RuleSet, decode_body, decode_form};

/// Exit code for usage and configuration errors (`map` promises 2).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when `serve` cannot start because of its configuration (EX_CONFIG-like 64).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "postback-relay",
    version,
    about = "Translate advertiser postbacks into Scaleo conversions and forward them durably"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: ingest, store, forward.
    Serve(ServeArgs),
    /// Run only the local stand-in for Scaleo's conversion API.
    Sandbox(SandboxArgs),
    /// Validate the rule files (and the service config with --config).
    Check(CheckArgs),
    /// Run every rule file's `[[tests]]`.
    Test(TestArgs),
    /// Dry-run the mapping of one postback (no store, no forward, no auth check).
    Map(MapArgs),
    /// List stored records, newest first (on the store directly; the relay may be running).
    Records(ops::RecordsArgs),
    /// Show one stored record: raw postback, body, state, reason, every attempt.
    Record(ops::RecordArgs),
    /// Re-map rejected or dead records with the current rules and queue them again.
    Replay(ops::ReplayArgs),
    /// Pause forwarding (all, or one source with --source); survives restarts.
    Pause(ops::PauseArgs),
    /// Resume forwarding (all, or one source with --source).
    Resume(ops::PauseArgs),
    /// Explain how a rule maps one query: each field's origin, ignored values, matched rules.
    Explain(ops::ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Service config file (relay.toml); RELAY__... environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Forward to a built-in local Scaleo sandbox instead of scaleo.base_url (no account needed).
    #[arg(long)]
    pub sandbox: bool,
    /// Listen address of the built-in sandbox (with --sandbox).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub sandbox_listen: std::net::SocketAddr,
    /// Log JSON lines instead of human-readable ones.
    #[arg(long)]
    pub log_json: bool,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: std::net::SocketAddr,
    /// The API key the sandbox accepts.
    #[arg(long, default_value = SANDBOX_KEY)]
    pub api_key: String,
}

/// The admin token `serve --sandbox` uses when the config sets none.
pub const SANDBOX_ADMIN_TOKEN: &str = "sandbox-admin";

/// The API key of the built-in sandbox.
pub const SANDBOX_KEY: &str = "sandbox-key";

#[derive(Debug, Args)]
pub struct RulesArg {
    /// Directory of rule files (`{source}.toml`).
    #[arg(long, default_value = "rules")]
    pub rules: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Also validate this service config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not read ${VAR} secrets from the environment.
    #[arg(long)]
    pub no_env: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Service config whose scaleo.timezone the outputs use (default UTC).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MapArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Service config whose scaleo.timezone the outputs use (default UTC).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON object {"outcome", "body", "reason"}.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub client_ip: Option<String>,
    #[arg(long)]
    pub user_agent: Option<String>,
    #[arg(long)]
    pub referer: Option<String>,
    /// RFC 3339 time for @received_at.
    #[arg(long)]
    pub received_at: Option<jiff::Timestamp>,
    /// The source id (the rule file's stem).
    pub source: String,
    /// The query string as the advertiser sends it (a leading '?' is ignored).
    #[arg(default_value = "")]
    pub query: String,
    /// A POST body; its parameters follow the query's (e.g. 'cid=1&amt=2' or '{"cid":"1"}').
    #[arg(long)]
    pub body: Option<String>,
    /// How --body is encoded.
    #[arg(long, value_parser = ["form", "json"], requires = "body")]
    pub content_type: Option<String>,
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Sandbox(a) => sandbox(a),
        Command::Check(a) => check(a),
        Command::Test(a) => test(a),
        Command::Map(a) => map(a),
        Command::Records(a) => ops::exit(ops::records(a)),
        Command::Record(a) => ops::exit(ops::record(a)),
        Command::Replay(a) => ops::exit(ops::replay(a)),
        Command::Pause(a) => ops::exit(ops::pause(a, true)),
        Command::Resume(a) => ops::exit(ops::pause(a, false)),
        Command::Explain(a) => ops::exit(ops::explain(a)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Sets up `tracing` on stderr: human lines by default, JSON with `json`; `RUST_LOG`
/// overrides `level`.
///
/// Lines go through a channel to a writer thread that buffers them and flushes whenever no
/// line is waiting: one `write` for many lines under load instead of one per postback (a
/// tenth of the ingest workers' time went to those writes). It never drops a line (not
/// lossy: a full channel makes the logging thread wait). Keep the guard alive while logging:
/// dropping it writes out what is left.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(json: bool, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    const BUFFER: usize = 64 * 1024;
    // Lines waiting for the writer thread; the channel's slots are allocated up front
    // (tracing-appender's default of 128,000 costs ~4 MiB of RSS).
    const LINES: usize = 16 * 1024;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(BUFFER, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    guard
}

fn serve(a: ServeArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async move {
        let mut overrides = Vec::new();
        let sandbox = if a.sandbox {
            match crate::sandbox::Sandbox::start(
                a.sandbox_listen,
                crate::sandbox::SandboxConfig {
                    api_key: SANDBOX_KEY.into(),
                },
            )
            .await
            {
                Ok(s) => {
                    overrides.push(("scaleo.base_url", s.base_url()));
                    overrides.push(("scaleo.api_key", SANDBOX_KEY.to_string()));
                    Some(s)
                }
                Err(e) => {
                    eprintln!("cannot start the sandbox on {}: {e}", a.sandbox_listen);
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        } else {
            None
        };
        let mut cfg = match Config::load_with(a.config.as_deref(), &overrides) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("config: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if a.sandbox && cfg.admin.token.is_none() {
            // A local demo: the admin API works out of the box (on loopback by default).
            cfg.admin.token = Some(SANDBOX_ADMIN_TOKEN.into());
        }
        let (admin_addr, admin_token) = (cfg.admin.listen, cfg.admin.token.clone().unwrap_or_default());
        let _log = init_logging(a.log_json || cfg.log.json, &cfg.log.level);
        let running = match crate::serve::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        if let Some(s) = &sandbox {
            let rules = running.rules.current();
            let example = rules
                .iter()
                .flat_map(|r| r.tests.iter().map(move |t| (r, t)))
                .find(|(_, t)| matches!(t.expect, crate::rules::Expectation::Body(_)))
                .map(|(r, t)| format!("/postback/{}?{}", r.source, t.query))
                .unwrap_or_else(|| "/postback/SOURCE?clickid=abc".into());
            let port = running.ingest_addr.port();
            eprintln!(
                "\nrelay on port {port}, forwarding to the built-in Scaleo sandbox at {url}\n\
                 send a postback:   curl 'http://127.0.0.1:{port}{example}'\n\
                 see what arrived:  curl {url}/sandbox/conversions\n\
                 the relay's view:  curl -H 'Authorization: Bearer {admin_token}' http://{admin_addr}/admin/records\n",
                url = s.base_url()
            );
        }
        match crate::serve::run_until_signal(running).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn sandbox(a: SandboxArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let _log = init_logging(false, "info");
    rt.block_on(async move {
        match crate::sandbox::Sandbox::start(
            a.listen,
            crate::sandbox::SandboxConfig { api_key: a.api_key },
        )
        .await
        {
            Ok(s) => {
                eprintln!(
                    "Scaleo sandbox on {}; accepted conversions at {}/sandbox/conversions",
                    s.base_url(),
                    s.base_url()
                );
                let _ = tokio::signal::ctrl_c().await;
                s.shutdown();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot start the sandbox on {}: {e}", a.listen);
                ExitCode::from(EXIT_CONFIG)
            }
        }
    })
}

fn load_rules(dir: &Path, env: EnvMode) -> Result<RuleSet, ExitCode> {
    RuleSet::load_dir(dir, env).map_err(|problems| {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!(
            "{} problem(s) in the rules under {}",
            problems.len(),
            dir.display()
        );
        ExitCode::from(EXIT_USAGE)
    })
}

fn zone(config: Option<&Path>) -> Result<TimeZone, ExitCode> {
    match config {
        None => Ok(TimeZone::UTC),
        Some(path) => Config::load(Some(path))
            .map(|c| c.scaleo.timezone)
            .map_err(|e| {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(EXIT_USAGE)
            }),
    }
}

fn check(a: CheckArgs) -> ExitCode {
    let env = if a.no_env {
        EnvMode::Ignore
    } else {
        EnvMode::Resolve
    };
    let mut failed = false;
    match RuleSet::load_dir(&a.rules.rules, env) {
        Ok(set) => println!(
            "ok: {} rule file(s) in {}",
            set.len(),
            a.rules.rules.display()
        ),
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            println!(
                "{} problem(s) in the rules under {}",
                problems.len(),
                a.rules.rules.display()
            );
            failed = true;
        }
    }
    if let Some(path) = &a.config {
        let loaded = if a.no_env {
            Config::load_without_env(Some(path))
        } else {
            Config::load(Some(path))
        };
        match loaded {
            Ok(_) => println!("ok: service config {}", path.display()),
            Err(e) => {
                println!("{}: {e}", path.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn test(a: TestArgs) -> ExitCode {
    let (set, zone) = match (
        load_rules(&a.rules.rules, EnvMode::Ignore),
        zone(a.config.as_deref()),
    ) {
        (Ok(s), Ok(z)) => (s, z),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let (mut passed, mut failed) = (0, 0);
    for rule in set.iter() {
        for r in testing::run(rule, &zone) {
            match &r.failure {
                None => {
                    passed += 1;
                    println!("ok   {}: {}", r.source, r.name);
                }
                Some(why) => {
                    failed += 1;
                    println!(
                        "FAIL {}: {} ({}/{}.toml:{})\n     {why}",
                        r.source,
                        r.name,
                        a.rules.rules.display(),
                        r.source,
                        r.line
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn map(a: MapArgs) -> ExitCode {
    let (set, zone) = match (
        load_rules(&a.rules.rules, EnvMode::Ignore),
        zone(a.config.as_deref()),
    ) {
        (Ok(s), Ok(z)) => (s, z),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let Some(rule) = set.get(&a.source) else {
        let known: Vec<&str> = set.iter().map(|r| r.source.as_str()).collect();
        eprintln!(
            "no rule file for source {:?} in {} (known: {})",
            a.source,
            a.rules.rules.display(),
            known.join(", ")
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let mut params = decode_form(a.query.strip_prefix('?').unwrap_or(&a.query).as_bytes());
    if let Some(body) = &a.body {
        let kind = a.content_type.as_deref().and_then(BodyKind::parse);
        match decode_body(body.as_bytes(), kind.unwrap_or(BodyKind::Form)) {
            Ok(body_params) => params.extend(body_params),
            Err(e) => {
                eprintln!("--body: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let input = Input {
        params: &params,
        client_ip: a.client_ip.as_deref(),
        user_agent: a.user_agent.as_deref(),
        referer: a.referer.as_deref(),
        received_at: a.received_at,
    };
    let outcome = rule.apply(&input, &zone);
    if a.json {
        println!("{}", outcome_json(&outcome));
    } else {
        match &outcome {
            Outcome::Forward(m) => {
                println!("forward to Scaleo:");
                println!(
                    "{}",
                    serde_json::to_string_pretty(&m.body).unwrap_or_default()
                );
            }
            other => println!("{}", describe_outcome(other)),
        }
    }
    match outcome {
        Outcome::Reject { .. } => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// `{"outcome", "body", "reason"}` as `map --json` prints it.
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Forward(m) => json!({"outcome": "forward", "body": m.body, "reason": null}),
        Outcome::Skip { reason } => json!({"outcome": "skip", "body": null, "reason": reason}),
        Outcome::Reject { reason } => json!({"outcome": "reject", "body": null, "reason": reason}),
    }
}
