//! The operator commands of the CLI, working on the store directly (SQLite WAL lets them
//! run next to a live relay): `records`, `record ID`, `replay`, `pause`, `resume`. Each
//! prints a human form by default and the admin API's JSON with `--json`, and returns a
//! [`Verdict`] or a [`CliError`] (the exit codes are [`super::exit`]'s). None needs the
//! Scaleo API key or the admin token.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult, Verdict, current_thread_runtime, load_rules};
use crate::admin::view::{self, ListJson, PauseJson, RecordJson};
use crate::config::Config;
use crate::replay::{Replayer, Report, Selection};
use crate::rules::LiveRules;
use crate::store::{PauseReason, PauseScope, Store, StoreError};

/// Where the store and the rules are: a service config, and overrides.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Service config file (relay.toml) giving store.path, rules.dir and scaleo.timezone.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The store directory (overrides store.path, and store.url: the SQLite store there).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print the admin API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecordsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only records of this source.
    #[arg(long)]
    pub source: Option<String>,
    /// rejected, skipped, queued, delivered, duplicate, duplicate_upstream, retrying, paused, dead,
    /// stale, merged.
    #[arg(long)]
    pub state: Option<String>,
    /// Only records with this click id.
    #[arg(long)]
    pub click_id: Option<String>,
    /// Only the records of one conversion: the record that created it (this id) and its
    /// later postbacks (changes, stale ones, resends).
    #[arg(long)]
    pub conversion: Option<String>,
    /// Received at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Received before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Page size (1 to 1000).
    #[arg(long, default_value_t = view::DEFAULT_LIMIT)]
    pub limit: usize,
    /// The "next" value printed by the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The record id (the "id" of an ingest answer, or of a `records` line).
    pub id: i64,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Rules directory (overrides rules.dir).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Replay these records (repeat the flag); or select with the filter flags.
    #[arg(long = "id", conflicts_with_all = ["source", "state", "since", "until"])]
    pub ids: Vec<i64>,
    /// Only records of this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Which records: rejected or dead (default: both).
    #[arg(long)]
    pub state: Option<String>,
    /// Received at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Received before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this source (default: all forwarding): one with a rule file, stored records or
    /// a pause.
    #[arg(long)]
    pub source: Option<String>,
}

pub(super) fn config(file: Option<&std::path::Path>) -> Result<Config, CliError> {
    // The operator commands never talk to Scaleo nor serve the admin API: they need
    // neither the Scaleo key nor the admin token.
    Ok(Config::load_for(file, crate::config::Need::Operator)?)
}

/// Opens the store of the config (never creates a data directory): the PostgreSQL store of
/// `store.url`, else the SQLite store of an existing directory (`--data` picks one and wins
/// over `store.url`). The store lives on the returned runtime: use that one to drive it.
pub(super) fn open_store(
    args: &StoreArgs,
    cfg: &Config,
) -> Result<(tokio::runtime::Runtime, Store), CliError> {
    let mut sc = cfg.store.clone();
    if let Some(dir) = &args.data {
        sc.path = dir.clone();
        sc.url = None;
    }
    if sc.url.is_none() && !sc.path.is_dir() {
        return Err(CliError::Unavailable(format!(
            "no store directory {} (store.path, or --data); give --data DIR or --config FILE \
             naming the relay's store",
            sc.path.display()
        )));
    }
    let rt = current_thread_runtime()?;
    let store = rt.block_on(Store::connect(&sc))?;
    Ok((rt, store))
}

pub(super) fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `postback-relay records`.
pub(super) fn records(a: RecordsArgs) -> CliResult {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            pairs.push((name.to_string(), v.clone()));
        }
    };
    put("source", &a.source);
    put("state", &a.state);
    put("click_id", &a.click_id);
    put("conversion", &a.conversion);
    put("since", &a.since);
    put("until", &a.until);
    put("cursor", &a.cursor);
    put("limit", &Some(a.limit.to_string()));
    let q = view::list_query(&pairs)?;
    let cfg = config(a.store.config.as_deref())?;
    let (rt, store) = open_store(&a.store, &cfg)?;
    let (page, next) = rt.block_on(store.list(q.filter, q.limit, q.cursor))?;
    let list = ListJson::new(&page, next);
    if a.store.json {
        print_json(&list);
        return Ok(Verdict::Yes);
    }
    println!(
        "{:>10}  {:<30}  {:<20}  {:<18}  CLICK_ID",
        "ID", "RECEIVED_AT", "SOURCE", "STATE"
    );
    for r in &list.records {
        println!(
            "{:>10}  {:<30}  {:<20}  {:<18}  {}",
            r.id,
            r.received_at,
            r.source,
            r.state,
            r.click_id.as_deref().unwrap_or("-")
        );
    }
    match &list.next {
        Some(c) => println!("more: --cursor {c}"),
        None => println!("({} record(s), end)", list.records.len()),
    }
    Ok(Verdict::Yes)
}

/// `postback-relay record ID`.
pub(super) fn record(a: RecordArgs) -> CliResult {
    let cfg = config(a.store.config.as_deref())?;
    let (rt, store) = open_store(&a.store, &cfg)?;
    let rec = rt
        .block_on(store.get(a.id))?
        .ok_or_else(|| CliError::NotFound(format!("no record {}", a.id)))?;
    let r = RecordJson::from(&rec);
    if a.store.json {
        print_json(&r);
        return Ok(Verdict::Yes);
    }
    let s = &r.summary;
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("record {} ({}): {}", s.id, s.source, s.state);
    println!("received_at:    {}", s.received_at);
    println!("click_id:       {}", or_dash(&s.click_id));
    println!(
        "request:        {} {}?{}",
        r.raw.method, r.raw.path, r.raw.query
    );
    println!("client_ip:      {}", or_dash(&r.raw.client_ip));
    println!("user_agent:     {}", or_dash(&r.raw.user_agent));
    println!("referer:        {}", or_dash(&r.raw.referer));
    println!("reason:         {}", or_dash(&r.reason));
    println!("transaction_id: {}", or_dash(&r.transaction_id));
    println!("kind:           {}", r.kind);
    if let Some(lead) = &r.lead_id {
        println!("lead_id:        {lead}");
    }
    if let Some(o) = r.original_id {
        let what = if r.kind == "update" {
            "change of"
        } else {
            "duplicate of"
        };
        println!("{what:<15} {o}");
    }
    if let Some(next) = &r.next_attempt_at {
        println!("next attempt:   {next}");
    }
    if let Some(e) = &r.last_error {
        println!("last error:     {e}");
    }
    if let Some(body) = &r.body {
        println!(
            "body:\n{}",
            serde_json::to_string_pretty(body).unwrap_or_default()
        );
    }
    if let Some(c) = &r.conversion {
        println!(
            "conversion:     created by record {}, now {}",
            c.original,
            serde_json::Value::Object(c.current.clone())
        );
        let lead = c
            .lead_id
            .as_ref()
            .map_or_else(|| "-".into(), ToString::to_string);
        println!(
            "                lead_id {lead}, transaction_id {}, remembered until {}",
            c.transaction_id.as_deref().unwrap_or("-"),
            c.expires_at
        );
        for s in &c.changes {
            println!(
                "                later: record {} {} {}",
                s.id, s.state, s.received_at
            );
        }
    }
    println!("attempts ({} counted):", r.attempt_count);
    for at in &r.attempts {
        let status = at.status.map_or_else(|| "-".to_string(), |c| c.to_string());
        println!(
            "  {}  {:>3}  {:<18} {:>6} ms  {}",
            at.at, status, at.outcome, at.duration_ms, at.answer
        );
    }
    Ok(Verdict::Yes)
}

/// `postback-relay replay`.
pub(super) fn replay(a: ReplayArgs) -> CliResult {
    let selection = if a.ids.is_empty() {
        if a.source.is_none() && a.state.is_none() && a.since.is_none() && a.until.is_none() {
            return Err(CliError::Usage(
                "give --id N (repeatable) or a filter: --source, --state, --since, --until".into(),
            ));
        }
        let state = a
            .state
            .as_deref()
            .map(|s| view::state("--state", s))
            .transpose()?;
        Selection::Filter {
            source: a
                .source
                .as_deref()
                .map(|s| view::source_id("--source", s))
                .transpose()?,
            state,
            since: a
                .since
                .as_deref()
                .map(|t| view::time("--since", t))
                .transpose()?,
            until: a
                .until
                .as_deref()
                .map(|t| view::time("--until", t))
                .transpose()?,
        }
    } else {
        Selection::Ids(a.ids.clone())
    };
    let cfg = config(a.store.config.as_deref())?;
    let dir = a.rules.clone().unwrap_or_else(|| cfg.rules_dir.clone());
    let set = load_rules(&dir)?;
    let (rt, store) = open_store(&a.store, &cfg)?;
    let replayer = Replayer {
        store,
        rules: Arc::new(LiveRules::new(set)),
        zone: cfg.scaleo.timezone.clone(),
    };
    let report = rt.block_on(replayer.run(selection))?;
    if a.store.json {
        print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(Verdict::Yes)
}

fn print_report(r: &Report) {
    println!(
        "queued {}, duplicate {}, rejected {}, skipped {}, not replayed {}",
        r.queued, r.duplicate, r.rejected, r.skipped, r.not_replayed
    );
    for g in &r.reasons {
        let ids: Vec<String> = g.ids.iter().map(ToString::to_string).collect();
        println!(
            "  {} x{}: {} (ids {})",
            g.outcome,
            g.count,
            g.reason,
            ids.join(", ")
        );
    }
    if r.reasons_omitted > 0 {
        println!("  ... and {} more distinct reason(s)", r.reasons_omitted);
    }
}

/// `postback-relay pause` (`pause == true`) and `resume`.
pub(super) fn pause(a: PauseArgs, pause: bool) -> CliResult {
    let scope = view::pause_scope(a.source.as_deref())?;
    let cfg = config(a.store.config.as_deref())?;
    let (rt, store) = open_store(&a.store, &cfg)?;
    if let PauseScope::Source(source) = &scope {
        let known = rt.block_on(known_sources(&store, &cfg.rules_dir))?;
        if !known.contains(source) && !rt.block_on(has_records(&store, source))? {
            return Err(CliError::Usage(format!(
                "--source {source:?} is not a known source: no rule file {}/{source}.toml, no \
                 stored record and no pause (known: {})",
                cfg.rules_dir.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.into_iter().collect::<Vec<_>>().join(", ")
                }
            )));
        }
    }
    let scope_text = view::scope_name(&scope);
    let removed = rt.block_on(async {
        if pause {
            store.pause(scope, PauseReason::Operator).await.map(|()| 0)
        } else {
            store.resume(scope).await
        }
    })?;
    let pauses: Vec<PauseJson> = rt
        .block_on(store.paused())?
        .iter()
        .map(PauseJson::from)
        .collect();
    if a.store.json {
        let answer = if pause {
            serde_json::json!({"paused": scope_text, "pauses": pauses})
        } else {
            serde_json::json!({"resumed": scope_text, "removed": removed, "pauses": pauses})
        };
        print_json(&answer);
        return Ok(Verdict::Yes);
    }
    if pause {
        println!("paused: {scope_text}");
    } else {
        println!("resumed: {scope_text} ({removed} pause(s) removed)");
    }
    if pauses.is_empty() {
        println!("no pauses in force");
    }
    for p in &pauses {
        println!("in force: {} ({}) since {}", p.scope, p.reason, p.since);
    }
    Ok(Verdict::Yes)
}

/// The sources a pause or resume may name: those with a rule file in `rules_dir`, with
/// records waiting, or with a pause in force.
async fn known_sources(store: &Store, rules_dir: &Path) -> Result<BTreeSet<String>, StoreError> {
    let mut known: BTreeSet<String> = std::fs::read_dir(rules_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    known.extend(store.pending_sources().await?);
    for p in store.paused().await? {
        if let PauseScope::Source(s) = p.scope {
            known.insert(s);
        }
    }
    Ok(known)
}

/// Whether the store holds any record of `source`.
async fn has_records(store: &Store, source: &str) -> Result<bool, StoreError> {
    let filter = crate::store::Filter {
        source: Some(source.to_string()),
        ..Default::default()
    };
    Ok(!store.list(filter, 1, None).await?.0.is_empty())
}
