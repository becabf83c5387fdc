//! `postback-relay explain`: how a rule maps one query, field by field, and (with a store)
//! what the postback would do to a stored conversion.

use std::path::PathBuf;

use clap::Args;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::ops::{StoreArgs, config, open_store, print_json};
use super::{CliResult, Verdict, load_rules, operator_config, rule_of};
use crate::admin::view::{self, ExplainJson};
use crate::rules::Origin;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Service config whose rules.dir and scaleo.timezone are used; its store (when it
    /// exists) tells whether the postback would change a stored conversion.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A store directory to look up stored conversions in (overrides the config's store).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Rules directory (overrides rules.dir).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Print the admin API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The source id (the rule file's stem).
    pub source: String,
    /// The query string as the advertiser sends it (a leading '?' is ignored).
    pub query: String,
}

/// `postback-relay explain`: a reject is a negative answer (exit 1).
pub(super) fn explain(a: ExplainArgs) -> CliResult {
    let (dir, zone) = match operator_config(a.config.as_deref())? {
        Some(cfg) => (cfg.rules_dir, cfg.scaleo.timezone),
        None => (PathBuf::from("rules"), TimeZone::UTC),
    };
    let dir = a.rules.clone().unwrap_or(dir);
    let set = load_rules(&dir)?;
    let rule = rule_of(&set, &a.source, &dir)?;
    let mut e = view::explain(rule, &a.query, &zone, Timestamp::now());
    if (a.config.is_some() || a.data.is_some())
        && let Some(state) = e.state.take()
    {
        let args = StoreArgs {
            config: a.config.clone(),
            data: a.data.clone(),
            json: a.json,
        };
        let cfg = config(a.config.as_deref())?;
        // With only --config, a store that does not exist yet (no relay ran) has no
        // conversions: the rules' answer stands alone. --data must name a store.
        let absent = a.data.is_none() && cfg.store.url.is_none() && !cfg.store.path.is_dir();
        if !absent {
            let (rt, store) = open_store(&args, &cfg)?;
            e.conversion = rt.block_on(store.preview(state))?.map(Into::into);
        }
    }
    if a.json {
        print_json(&e);
    } else {
        print_explain(&e);
    }
    Ok(if e.outcome == "reject" {
        Verdict::No
    } else {
        Verdict::Yes
    })
}

fn print_explain(e: &ExplainJson) {
    println!("source {}: {}", e.source, e.outcome);
    if let Some(i) = e.skip_matched {
        println!("matched [[skip]] #{}", i + 1);
    }
    for i in &e.when_matched {
        println!("matched [[when]] #{}", i + 1);
    }
    for f in &e.fields {
        let from = match &f.origin {
            Some(Origin::Param { name }) => format!("parameter {name:?}"),
            Some(Origin::Template) => "template".into(),
            Some(Origin::Constant) => "constant".into(),
            Some(Origin::Default) => "default".into(),
            None => "no value".into(),
        };
        let at = f
            .when
            .map_or_else(String::new, |i| format!(" ([[when]] #{})", i + 1));
        let value = f
            .value
            .as_ref()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        println!("  {:<16} = {value:<24} <- {from}{at}", f.field);
        for ig in &f.ignored {
            println!(
                "  {:<16}   ignored {}={:?}: {}",
                "", ig.param, ig.value, ig.why
            );
        }
        if let Some(err) = &f.error {
            println!("  {:<16}   error: {err}", "");
        }
    }
    match (&e.body, &e.reason) {
        (Some(body), _) => println!(
            "body:\n{}",
            serde_json::to_string_pretty(body).unwrap_or_default()
        ),
        (None, Some(reason)) => println!("reason: {reason}"),
        (None, None) => {}
    }
    if let Some(c) = &e.conversion {
        let of = c.original.map_or_else(String::new, |o| {
            format!(" of the conversion created by record {o}")
        });
        println!("later postback{of}: {}", c.outcome);
        if let Some(change) = &c.change {
            println!(
                "  leads/update would send {}",
                serde_json::Value::Object(change.clone())
            );
        }
        if let Some(reason) = &c.reason {
            println!("  {reason}");
        }
    }
}
