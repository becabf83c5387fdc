//! The rule commands: `check`, `test`, `map` and `fields` (they read rule files, never a
//! store).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{
    CliError, CliResult, RulesArg, Verdict, load_rules, operator_config, rule_of, zone_of,
};
use crate::config::Config;
use crate::rules::testing::{self, describe_outcome};
use crate::rules::{BodyKind, EnvMode, Input, Outcome, decode_body, decode_form};

#[derive(Debug, Args)]
pub struct FieldsArgs {
    /// Print the Markdown page (docs/scaleo-fields.md) instead of the text table.
    #[arg(long)]
    pub markdown: bool,
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
    /// 2025-03-01T12:00:00Z (without it, @received_at has no value, as in [[tests]]).
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

/// `postback-relay fields`.
pub(super) fn fields(a: FieldsArgs) -> CliResult {
    if a.markdown {
        print!("{}", crate::scaleo::reference::markdown());
    } else {
        print!("{}", crate::scaleo::reference::text());
    }
    Ok(Verdict::Yes)
}

/// `postback-relay check`: problems are its answer (exit 1), printed on stdout.
pub(super) fn check(a: CheckArgs) -> CliResult {
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
pub(super) fn test(a: TestArgs) -> CliResult {
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
pub(super) fn map(a: MapArgs) -> CliResult {
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
