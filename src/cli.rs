//! The `postback-relay` command line: `serve`, `sandbox`, `check`, `test`, `map`, `fields`
//! and the operator commands. Every subcommand returns a [`Verdict`] or a [`CliError`], and
//! [`run`] is the one place that turns them into the process exit code ([`exit`]).

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jiff::tz::TimeZone;
use serde_json::json;

use crate::config::{Config, Need};
use crate::ops;
use crate::rules::testing::{self, describe_outcome};
use crate::rules::{BodyKind, EnvMode, Input, Outcome, RuleSet, decode_body, decode_form};
use crate::serve::StartError;

/// The exit codes of every subcommand (the README's table).
pub mod exit {
    /// Done; the answer is positive (a forward or a skip, all checks and tests passed).
    pub const OK: u8 = 0;
    /// Done; the answer is negative: a reject, a failed test, problems found by `check`, a
    /// record that does not exist.
    pub const NO: u8 = 1;
    /// Usage: an unknown flag, a bad argument value, an unknown source or state.
    pub const USAGE: u8 = 2;
    /// Configuration: the service config or the rules do not load, or the store belongs to
    /// another Scaleo network.
    pub const CONFIG: u8 = 64;
    /// A needed resource is unavailable: the store cannot be opened, a port cannot be bound.
    pub const UNAVAILABLE: u8 = 69;
    /// An internal failure (the runtime cannot start, a task failed).
    pub const INTERNAL: u8 = 70;
}

/// The answer of a command that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0.
    Yes,
    /// Exit 1: the command printed a negative answer.
    No,
}

/// Why a command could not give its answer; [`CliError::code`] is its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The config or the rules do not load (exit 64).
    #[error("{0}")]
    Config(String),
    /// What was asked for does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The store or a listener is unavailable (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (exit 70).
    #[error("{0}")]
    Internal(String),
}

impl CliError {
    /// The process exit code of this error.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Config(_) => exit::CONFIG,
            CliError::NotFound(_) => exit::NO,
            CliError::Unavailable(_) => exit::UNAVAILABLE,
            CliError::Internal(_) => exit::INTERNAL,
        }
    }

    /// The `error` code of the JSON form (`{"error", "reason"}`) printed with `--json`.
    fn kind(&self) -> &'static str {
        match self {
            CliError::Usage(_) => "usage",
            CliError::Config(_) => "config",
            CliError::NotFound(_) => "not_found",
            CliError::Unavailable(_) => "unavailable",
            CliError::Internal(_) => "internal",
        }
    }
}

impl From<StartError> for CliError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Config(_) => CliError::Config(e.to_string()),
            StartError::Unavailable(_) => CliError::Unavailable(e.to_string()),
            StartError::Other(_) => CliError::Internal(e.to_string()),
        }
    }
}

impl From<crate::config::ConfigErrors> for CliError {
    fn from(e: crate::config::ConfigErrors) -> Self {
        CliError::Config(e.to_string())
    }
}

/// What a subcommand returns.
pub type CliResult = Result<Verdict, CliError>;

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
    /// List Scaleo's conversion fields with their JSON types and accepted values.
    Fields(FieldsArgs),
}

#[derive(Debug, Args)]
pub struct FieldsArgs {
    /// Print the Markdown page (docs/scaleo-fields.md) instead of the text table.
    #[arg(long)]
    pub markdown: bool,
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
    /// Address and port the sandbox listens on.
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
    /// Directory of rule files (`{source}.toml`) [default: the config's rules.dir, else rules]
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

impl RulesArg {
    /// `--rules`, else the config's `rules.dir`, else `rules`.
    pub fn dir(&self, config: Option<&Config>) -> PathBuf {
        self.rules
            .clone()
            .or_else(|| config.map(|c| c.rules_dir.clone()))
            .unwrap_or_else(|| PathBuf::from("rules"))
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Also validate this service config file (and use its rules.dir).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not read ${VAR} secrets from the environment (validate without them).
    #[arg(long)]
    pub no_env: bool,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Service config whose rules.dir and scaleo.timezone are used (default: rules, UTC).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct MapArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Service config whose rules.dir and scaleo.timezone are used (default: rules, UTC).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print one JSON object {"outcome", "body", "reason"}.
    #[arg(long)]
    pub json: bool,
    /// The caller's IP address, for @client_ip (e.g. 198.51.100.7).
    #[arg(long, value_name = "IP")]
    pub client_ip: Option<IpAddr>,
    /// The User-Agent header, for @user_agent.
    #[arg(long, value_name = "UA")]
    pub user_agent: Option<String>,
    /// The Referer header, for @referer.
    #[arg(long, value_name = "URL")]
    pub referer: Option<String>,
    /// When the postback arrived, for @received_at: RFC 3339 with an offset, e.g.
    /// 2025-03-01T12:00:00Z (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
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

/// `--received-at`: an RFC 3339 time with an offset.
fn parse_rfc3339(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse().map_err(|_| {
        "expected an RFC 3339 time with an offset, like 2025-03-01T12:00:00Z or \
         2025-03-01T14:00:00+02:00"
            .to_string()
    })
}

/// Runs one parsed command line and returns its exit code (see [`exit`]).
pub fn run(cli: Cli) -> ExitCode {
    let json = match &cli.command {
        Command::Map(a) => a.json,
        Command::Explain(a) => a.json,
        Command::Records(a) => a.store.json,
        Command::Record(a) => a.store.json,
        Command::Replay(a) => a.store.json,
        Command::Pause(a) | Command::Resume(a) => a.store.json,
        _ => false,
    };
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Sandbox(a) => sandbox(a),
        Command::Check(a) => check(a),
        Command::Test(a) => test(a),
        Command::Map(a) => map(a),
        Command::Fields(a) => fields(a),
        Command::Records(a) => ops::records(a),
        Command::Record(a) => ops::record(a),
        Command::Replay(a) => ops::replay(a),
        Command::Pause(a) => ops::pause(a, true),
        Command::Resume(a) => ops::pause(a, false),
        Command::Explain(a) => ops::explain(a),
    };
    match result {
        Ok(Verdict::Yes) => ExitCode::from(exit::OK),
        Ok(Verdict::No) => ExitCode::from(exit::NO),
        Err(e) => {
            if json {
                println!("{}", json!({"error": e.kind(), "reason": e.to_string()}));
            }
            eprintln!("{e}");
            ExitCode::from(e.code())
        }
    }
}

/// A multi-threaded runtime for `serve` and `sandbox`.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the async runtime: {e}")))
}

/// Sets up `tracing` on stderr: human lines by default (coloured only when stderr is a
/// terminal and `NO_COLOR` is unset), JSON with `json`; `RUST_LOG` overrides `level`.
///
/// Lines go through a channel to a writer thread that buffers them and flushes whenever no
/// line is waiting: one `write` for many lines under load instead of one per postback (a
/// tenth of the ingest workers' time went to those writes). It never drops a line (not
/// lossy: a full channel makes the logging thread wait). Keep the guard alive while logging,
/// and longer than the runtime whose tasks log: dropping it writes out what is left and
/// closes the writer.
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
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    guard
}

/// `postback-relay serve`.
fn serve(a: ServeArgs) -> CliResult {
    // Declared before the runtime so it is dropped after it: tasks that log while the
    // runtime shuts down still have a writer.
    let mut log_guard = None;
    let rt = runtime()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async {
        let mut overrides = Vec::new();
        let sandbox = if a.sandbox {
            let s = crate::sandbox::Sandbox::start(
                a.sandbox_listen,
                crate::sandbox::SandboxConfig {
                    api_key: SANDBOX_KEY.into(),
                },
            )
            .await
            .map_err(|e| {
                CliError::Unavailable(format!(
                    "cannot start the sandbox on {} (--sandbox-listen): {e}",
                    a.sandbox_listen
                ))
            })?;
            overrides.push(("scaleo.base_url", s.base_url()));
            overrides.push(("scaleo.api_key", SANDBOX_KEY.to_string()));
            Some(s)
        } else {
            None
        };
        let mut cfg = Config::load_with(a.config.as_deref(), &overrides)?;
        if a.sandbox {
            sandbox_store(&mut cfg);
            if cfg.admin.token.is_none() {
                // A local demo: the admin API works out of the box (on loopback by default).
                cfg.admin.token = Some(SANDBOX_ADMIN_TOKEN.into());
            }
        }
        let (admin_addr, admin_token) = (
            cfg.admin.listen,
            cfg.admin.token.clone().unwrap_or_default(),
        );
        let store_dir = cfg.store.path.clone();
        log_guard = Some(init_logging(a.log_json || cfg.log.json, &cfg.log.level));
        let signals = crate::serve::Signals::install()
            .map_err(|e| CliError::Internal(format!("cannot install signal handlers: {e}")))?;
        let running = crate::serve::start(cfg).await?;
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
                 (the sandbox's store is {store}, apart from production's)\n\
                 send a postback:   curl 'http://127.0.0.1:{port}{example}'\n\
                 see what arrived:  curl {url}/sandbox/conversions\n\
                 the relay's view:  curl -H 'Authorization: Bearer {admin_token}' http://{admin_addr}/admin/records\n",
                url = s.base_url(),
                store = store_dir.display(),
            );
        }
        crate::serve::run_until_signal(running, signals)
            .await
            .map_err(|e| CliError::Internal(format!("{e:#}")))?;
        Ok(Verdict::Yes)
    })
}

/// The sandbox's own store: the `sandbox` directory inside `store.path` (SQLite, even when
/// `store.url` is set), so its test conversions never share a store with a real network.
fn sandbox_store(cfg: &mut Config) {
    if cfg.store.url.take().is_some() {
        eprintln!("--sandbox: store.url is ignored; the sandbox keeps its own SQLite store");
    }
    cfg.store.path = cfg.store.path.join("sandbox");
}

/// `postback-relay sandbox`.
fn sandbox(a: SandboxArgs) -> CliResult {
    let mut log_guard = None;
    let rt = runtime()?;
    rt.block_on(async {
        log_guard = Some(init_logging(false, "info"));
        let s = crate::sandbox::Sandbox::start(
            a.listen,
            crate::sandbox::SandboxConfig { api_key: a.api_key },
        )
        .await
        .map_err(|e| {
            CliError::Unavailable(format!(
                "cannot start the sandbox on {} (--listen): {e}",
                a.listen
            ))
        })?;
        eprintln!(
            "Scaleo sandbox on {}; accepted conversions at {}/sandbox/conversions",
            s.base_url(),
            s.base_url()
        );
        let _ = tokio::signal::ctrl_c().await;
        s.shutdown();
        Ok(Verdict::Yes)
    })
}

/// `postback-relay fields`.
fn fields(a: FieldsArgs) -> CliResult {
    if a.markdown {
        print!("{}", crate::fields::markdown());
    } else {
        print!("{}", crate::fields::text());
    }
    Ok(Verdict::Yes)
}

/// Loads the rules for `test`, `map`, `explain` and `replay` (secrets unread).
pub(crate) fn load_rules(dir: &Path) -> Result<RuleSet, CliError> {
    crate::serve::load_rules(dir, EnvMode::Ignore).map_err(CliError::Config)
}

/// The config of `test`, `map`, `explain` and the operator commands: no Scaleo key, no
/// admin token needed.
pub(crate) fn operator_config(file: Option<&Path>) -> Result<Option<Config>, CliError> {
    file.map(|f| Config::load_for(Some(f), Need::Operator))
        .transpose()
        .map_err(CliError::from)
}

fn zone_of(config: Option<&Config>) -> TimeZone {
    config.map_or(TimeZone::UTC, |c| c.scaleo.timezone.clone())
}

/// The rule of `source`, or a usage error listing the known sources.
pub(crate) fn rule_of<'a>(
    set: &'a RuleSet,
    source: &str,
    dir: &Path,
) -> Result<&'a std::sync::Arc<crate::rules::Rule>, CliError> {
    set.get(source).ok_or_else(|| {
        let known: Vec<&str> = set.iter().map(|r| r.source.as_str()).collect();
        CliError::Usage(format!(
            "no rule file for source {source:?} in {} (known: {})",
            dir.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// `postback-relay check`: problems are its answer (exit 1), printed on stdout.
fn check(a: CheckArgs) -> CliResult {
    let mut failed = false;
    let mut rules_dir = a.rules.rules.clone();
    if let Some(path) = &a.config {
        let loaded = if a.no_env {
            Config::load_without_env(Some(path))
        } else {
            Config::load(Some(path))
        };
        match loaded {
            Ok(cfg) => {
                println!("ok: service config {}", path.display());
                rules_dir = Some(a.rules.dir(Some(&cfg)));
            }
            Err(e) => {
                println!("{e}");
                failed = true;
                rules_dir = rules_dir.or_else(|| crate::config::rules_dir(path));
            }
        }
    }
    let dir = rules_dir.unwrap_or_else(|| PathBuf::from("rules"));
    let env = if a.no_env {
        EnvMode::Ignore
    } else {
        EnvMode::Resolve
    };
    match crate::serve::load_rules(&dir, env) {
        Ok(set) => println!("ok: {} rule file(s) in {}", set.len(), dir.display()),
        Err(problems) => {
            println!("{problems}");
            failed = true;
        }
    }
    Ok(if failed { Verdict::No } else { Verdict::Yes })
}

/// `postback-relay test`.
fn test(a: TestArgs) -> CliResult {
    let cfg = operator_config(a.config.as_deref())?;
    let dir = a.rules.dir(cfg.as_ref());
    let set = load_rules(&dir)?;
    let zone = zone_of(cfg.as_ref());
    let (mut passed, mut failed) = (0, 0);
    for rule in set.iter() {
        for r in testing::run(rule, &set, &zone) {
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
                        dir.display(),
                        r.source,
                        r.line
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        Verdict::Yes
    } else {
        Verdict::No
    })
}

/// `postback-relay map`: a reject is a negative answer (exit 1).
fn map(a: MapArgs) -> CliResult {
    let cfg = operator_config(a.config.as_deref())?;
    let dir = a.rules.dir(cfg.as_ref());
    let set = load_rules(&dir)?;
    let rule = rule_of(&set, &a.source, &dir)?;
    let mut params = decode_form(a.query.strip_prefix('?').unwrap_or(&a.query).as_bytes());
    let mut json_numbers = Vec::new();
    if let Some(body) = &a.body {
        let kind = a.content_type.as_deref().and_then(BodyKind::parse);
        let decoded = decode_body(body.as_bytes(), kind.unwrap_or(BodyKind::Form))
            .map_err(|e| CliError::Usage(format!("--body: {e}")))?;
        json_numbers.extend(decoded.numbers.iter().map(|i| i + params.len()));
        params.extend(decoded.pairs);
    }
    let client_ip = a.client_ip.map(|ip| ip.to_string());
    let input = Input {
        params: &params,
        json_numbers: &json_numbers,
        client_ip: client_ip.as_deref(),
        user_agent: a.user_agent.as_deref(),
        referer: a.referer.as_deref(),
        received_at: a.received_at,
    };
    let outcome = rule.apply(&input, &zone_of(cfg.as_ref()));
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
    Ok(match outcome {
        Outcome::Reject { .. } => Verdict::No,
        _ => Verdict::Yes,
    })
}

/// `{"outcome", "body", "reason"}` as `map --json` prints it.
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Forward(m) => json!({"outcome": "forward", "body": m.body, "reason": null}),
        Outcome::Skip { reason } => json!({"outcome": "skip", "body": null, "reason": reason}),
        Outcome::Reject { reason } => json!({"outcome": "reject", "body": null, "reason": reason}),
    }
}
