//! The `postback-relay` command line. This module holds the clap definitions and [`run`],
//! the one place that turns a command's [`Verdict`] or [`CliError`] into the process exit
//! code ([`exit`]); the commands live by group:
//!
//! - [`serve`]: `serve` and `sandbox` (long-running), and the log set-up;
//! - [`rules`]: `check`, `test`, `map`, `fields` (rule files only);
//! - [`ops`]: `records`, `record`, `replay`, `pause`, `resume` (the store, directly);
//! - [`explain`]: `explain` (the rules, and the store when there is one);
//! - `error.rs`: [`CliError`], [`Verdict`] and the exit codes.

mod error;
pub mod explain;
pub mod logbuf;
pub mod ops;
pub mod rules;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jiff::tz::TimeZone;
use serde_json::json;

use crate::config::{Config, Need};
use crate::rules::{EnvMode, RuleSet};

pub use error::{CliError, CliResult, Verdict, exit};
pub use rules::outcome_json;
pub use serve::{SANDBOX_ADMIN_TOKEN, SANDBOX_KEY, init_logging};

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
    Serve(serve::ServeArgs),
    /// Run only the local stand-in for Scaleo's conversion API.
    Sandbox(serve::SandboxArgs),
    /// Validate the rule files (and the service config with --config).
    Check(rules::CheckArgs),
    /// Run every rule file's `[[tests]]`.
    Test(rules::TestArgs),
    /// Dry-run the mapping of one postback (no store, no forward, no auth check).
    Map(rules::MapArgs),
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
    Explain(explain::ExplainArgs),
    /// List Scaleo's conversion fields with their JSON types and accepted values.
    Fields(rules::FieldsArgs),
}

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
    // `map`'s own contract: 0 forward or skip, 1 reject, 2 for usage *and* config errors.
    let config_code = match &cli.command {
        Command::Map(_) => exit::USAGE,
        _ => exit::CONFIG,
    };
    let result = match cli.command {
        Command::Serve(a) => serve::serve(a),
        Command::Sandbox(a) => serve::sandbox(a),
        Command::Check(a) => rules::check(a),
        Command::Test(a) => rules::test(a),
        Command::Map(a) => rules::map(a),
        Command::Fields(a) => rules::fields(a),
        Command::Records(a) => ops::records(a),
        Command::Record(a) => ops::record(a),
        Command::Replay(a) => ops::replay(a),
        Command::Pause(a) => ops::pause(a, true),
        Command::Resume(a) => ops::pause(a, false),
        Command::Explain(a) => explain::explain(a),
    };
    match result {
        Ok(verdict) => ExitCode::from(verdict.code()),
        Err(e) => {
            if json {
                println!("{}", json!({"error": e.kind(), "reason": e.to_string()}));
            }
            eprintln!("{e}");
            match e {
                CliError::Config(_) => ExitCode::from(config_code),
                e => ExitCode::from(e.code()),
            }
        }
    }
}

/// A multi-threaded runtime for `serve` and `sandbox`.
pub(super) fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the async runtime: {e}")))
}

/// Loads the rules for `test`, `map`, `explain` and `replay` (secrets unread).
pub(super) fn load_rules(dir: &Path) -> Result<RuleSet, CliError> {
    crate::serve::load_rules(dir, EnvMode::Ignore).map_err(CliError::Config)
}

/// The config of `test`, `map`, `explain` and the operator commands: no Scaleo key, no
/// admin token needed.
pub(super) fn operator_config(file: Option<&Path>) -> Result<Option<Config>, CliError> {
    file.map(|f| Config::load_for(Some(f), Need::Operator))
        .transpose()
        .map_err(CliError::from)
}

pub(super) fn zone_of(config: Option<&Config>) -> TimeZone {
    config.map_or(TimeZone::UTC, |c| c.scaleo.timezone.clone())
}

/// The rule of `source`, or a usage error listing the known sources.
pub(super) fn rule_of<'a>(
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

/// A single-threaded runtime for the operator commands (one store call at a time).
pub(super) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the async runtime: {e}")))
}
