//! `postback-relay serve`: wires config, rules, store, forwarder, the rules watcher and the
//! ingest and admin listeners together, and runs them until SIGTERM/SIGINT (SIGHUP reloads
//! the rules).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin, health::Probes};
use crate::config::Config;
use crate::forward::{ForwardStatus, Forwarder, Routes, SourceForward};
use crate::ingest::{Ingest, server};
use crate::reload::{Reloader, Trigger};
use crate::replay::Replayer;
use crate::rules::{EnvMode, LiveRules, RuleSet};
use crate::store::{PauseReason, PauseScope, Store};

/// How often delivered records past `store.retention` are purged.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// A running relay: its addresses and the handles to stop it.
pub struct Running {
    pub ingest_addr: SocketAddr,
    /// The admin listener (`admin.listen`): `/admin/...`, `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    pub store: Store,
    pub rules: Arc<LiveRules>,
    pub routes: Routes,
    pub forward_status: Arc<ForwardStatus>,
    pub reloader: Arc<Reloader>,
    pub shutdown: CancellationToken,
    forwarder: Forwarder,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Reloads the rules directory: the whole new set or nothing (logged, counted, and kept
    /// for `/readyz` by the [`Reloader`]).
    pub fn reload(&self) -> Result<usize, Vec<crate::rules::Diagnostic>> {
        self.reloader.reload(Trigger::Signal)
    }

    /// Stops accepting, drains, waits for every task, then closes the store (the SQLite
    /// writer commits what it was given and closes the file, within
    /// [`crate::store::CLOSE_WAIT`]).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a relay task failed");
            }
        }
        self.forwarder.join().await;
        if let Err(e) = self.store.close().await {
            tracing::error!(error = %e, "the store did not close cleanly");
        }
    }
}

/// The per-source forwarding overrides of a rule set. With `sandbox` (`serve --sandbox`) a
/// source's own network (`base_url`, `api_key`) is left out: everything goes to the sandbox.
pub fn routes_of(set: &RuleSet, sandbox: bool) -> HashMap<String, SourceForward> {
    set.iter()
        .map(|r| {
            let f = &r.forward;
            let own = |v: &Option<String>| v.clone().filter(|_| !sandbox);
            let sf = SourceForward {
                rate_per_second: f.rate_per_second,
                burst: f.burst,
                base_url: own(&f.base_url),
                api_key: own(&f.api_key),
            };
            (r.source.clone(), sf)
        })
        .collect()
}

fn sources_of(set: &RuleSet) -> Vec<String> {
    set.iter().map(|r| r.source.clone()).collect()
}

/// Brings the persisted pauses in line with the rules in force, at start and after every
/// good reload:
/// - at start, a source with waiting records but no rule file is paused (`missing_rule`): its
///   `[forward]` target is unknown, and sending its records to the global network could pay
///   the wrong network; (after a reload a removed source keeps its last route instead);
/// - a source whose rule file is back loses its `missing_rule` pause;
/// - pauses caused by Scaleo's 401/403 are lifted: the key or URL may have been fixed (a
///   still-wrong key pauses again on the first answer).
async fn settle_pauses(store: &Store, sources: &[String], at_start: bool) {
    let known = |s: &str| sources.iter().any(|k| k == s);
    if at_start {
        match store.pending_sources().await {
            Ok(pending) => {
                for s in pending.into_iter().filter(|s| !known(s)) {
                    tracing::error!(source = %s, "records wait for a source without a rule file: its forwarding is paused until the file returns or an operator resumes it");
                    if let Err(e) = store
                        .pause(PauseScope::Source(s.clone()), PauseReason::MissingRule)
                        .await
                    {
                        tracing::error!(source = %s, error = %e, "cannot pause the source");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list the sources with waiting records"),
        }
    }
    let pauses = match store.paused().await {
        Ok(p) => p,
        Err(e) => return tracing::error!(error = %e, "cannot read the pauses"),
    };
    for p in pauses {
        let lift = match (&p.reason, &p.scope) {
            (PauseReason::UpstreamAuth, _) => true,
            (PauseReason::MissingRule, PauseScope::Source(s)) => known(s),
            _ => false,
        };
        if lift {
            match store.resume_reason(p.scope.clone(), p.reason).await {
                Ok(_) => {
                    tracing::info!(scope = %p.scope, reason = p.reason.as_str(), "forwarding resumed")
                }
                Err(e) => tracing::error!(scope = %p.scope, error = %e, "cannot resume forwarding"),
            }
        }
    }
}

/// Builds the lookup indexes the update-only sources need (and on SQLite drops unused
/// ones). A failure is logged and costs only speed: a lookup without its index scans.
async fn sync_lookups(store: &Store, wanted: Vec<crate::lifecycle::LookupIndex>) {
    match store.sync_lookup_indexes(wanted).await {
        Ok(done) => {
            for name in &done.built {
                tracing::info!(index = %name, "built a lookup index for an update-only source");
            }
            for name in &done.dropped {
                tracing::info!(index = %name, "dropped a lookup index no rule uses");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not build the lookup indexes of the update-only sources: their lookups scan")
        }
    }
}

/// Why the relay did not start; the CLI maps each kind to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The rules do not load, or the store belongs to another network: fix the config.
    #[error("{0}")]
    Config(String),
    /// The store cannot be opened or a listener cannot be bound.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
    /// Anything else (the rules watcher, the forwarder's HTTP client).
    #[error("{0:#}")]
    Other(anyhow::Error),
}

/// Loads the rules directory, every problem as `file:line:col: message` on its own line; a
/// missing directory is named as such (with the key that sets it).
pub fn load_rules(dir: &Path, env: EnvMode) -> Result<RuleSet, String> {
    if !dir.is_dir() {
        return Err(format!(
            "no rules directory {}: create it with one {{source}}.toml per advertiser (see the shipped rules/), \
             or point rules.dir in the config (or --rules) at yours",
            dir.display()
        ));
    }
    RuleSet::load_dir(dir, env).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!(
            "{}\n{} problem(s) in the rules under {}",
            list.join("\n"),
            problems.len(),
            dir.display()
        )
    })
}

/// Starts everything on the current runtime; the listeners are bound before this returns.
///
/// A SQLite store is first checked to belong to `scaleo.base_url` (see [`crate::network`]).
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    let set = load_rules(&cfg.rules_dir, EnvMode::Resolve).map_err(StartError::Config)?;
    if cfg.store.url.is_none() {
        crate::network::claim(&cfg.store.path, &cfg.scaleo.base_url)
            .map_err(|e| StartError::Config(e.to_string()))?;
    }
    let store = Store::connect(&cfg.store)
        .await
        .with_context(|| store_name(&cfg.store))
        .map_err(StartError::Unavailable)?;
    settle_pauses(&store, &sources_of(&set), true).await;
    if store.is_shared() {
        // PostgreSQL builds CONCURRENTLY: ingest goes on meanwhile, so start need not wait
        // minutes for a big table. Until the index is there a refund's lookup scans.
        let (store, wanted) = (store.clone(), set.lookup_indexes());
        tokio::spawn(async move { sync_lookups(&store, wanted).await });
    } else {
        sync_lookups(&store, set.lookup_indexes()).await;
    }
    let sandbox = cfg.scaleo.sandbox;
    let routes = Routes::new(routes_of(&set, sandbox));
    let rules = Arc::new(LiveRules::new(set));
    let shutdown = CancellationToken::new();
    let reloader = {
        let routes = routes.clone();
        let store = store.clone();
        Reloader::new(cfg.rules_dir.clone(), rules.clone(), move |set| {
            routes.replace(routes_of(set, sandbox));
            let (store, sources) = (store.clone(), sources_of(set));
            let lookups = set.lookup_indexes();
            tokio::spawn(async move {
                settle_pauses(&store, &sources, false).await;
                sync_lookups(&store, lookups).await;
            });
        })
    };

    let listener = crate::listener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", cfg.server.listen))
        .map_err(StartError::Unavailable)?;
    let ingest_addr = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.into()))?;
    let admin_listener = crate::listener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", cfg.admin.listen))
        .map_err(StartError::Unavailable)?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| StartError::Other(e.into()))?;
    // The watcher is the last step that can fail: nothing is spawned before it.
    let watcher = reloader
        .watch(shutdown.clone())
        .context("watching the rules directory")
        .map_err(StartError::Other)?;

    let ingest = Arc::new(Ingest {
        rules: rules.clone(),
        store: store.clone(),
        zone: cfg.scaleo.timezone.clone(),
        limits: cfg.server.clone(),
    });
    let mut tasks = vec![watcher];
    tasks.push(tokio::spawn(server::serve(
        listener,
        ingest,
        shutdown.clone(),
        cfg.forward.grace,
        crate::listener::connection_cap(cfg.server.max_connections),
    )));
    tasks.push(store.spawn_retention(cfg.store.retention, RETENTION_EVERY, shutdown.clone()));
    let forwarder = Forwarder::spawn(
        store.clone(),
        cfg.scaleo.clone(),
        cfg.forward.clone(),
        routes.clone(),
        shutdown.clone(),
    )
    .context("starting the forwarder")
    .map_err(StartError::Other)?;
    let forward_status = forwarder.status_handle();
    if cfg.admin.token.is_none() {
        tracing::warn!(%admin_addr, "admin.token is not set: every /admin/ endpoint answers 401");
    }
    let admin = Arc::new(Admin {
        token: cfg.admin.token.clone(),
        store: store.clone(),
        replayer: Replayer {
            store: store.clone(),
            rules: rules.clone(),
            zone: cfg.scaleo.timezone.clone(),
        },
        probes: Probes {
            store: store.clone(),
            reloader: reloader.clone(),
            forwarder: Some(forward_status.clone()),
            stall_after: stall_after(&cfg),
        },
        sessions: Default::default(),
        read_timeout: cfg.server.read_timeout,
    });
    tasks.push(tokio::spawn(admin::server::serve(
        admin_listener,
        admin,
        shutdown.clone(),
    )));

    tracing::info!(%ingest_addr, %admin_addr, rules = rules.current().len(), scaleo = %cfg.scaleo.base_url, "relay started");
    Ok(Running {
        ingest_addr,
        admin_addr,
        store,
        rules,
        routes,
        forward_status,
        reloader,
        shutdown,
        forwarder,
        tasks,
    })
}

/// The process signals, registered before the listeners open: a SIGHUP sent as soon as the
/// relay answers must reload the rules, never kill the process (the default action).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the rules.
pub async fn run_until_signal(running: Running, signals: Signals) -> anyhow::Result<()> {
    let Signals { mut term, mut hup } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            // The reloader logs the outcome (each problem with file:line:col).
            // Off the signal loop, bounded: a reload stuck on a file never stops SIGTERM.
            _ = hup.recv() => {
                let reloader = running.reloader.clone();
                tokio::spawn(async move { let _ = reloader.reload_bounded(Trigger::Signal).await; });
            }
        }
    }
    tracing::info!("shutting down: no new postbacks, finishing in-flight work");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Names the store in errors (a URL without its password).
fn store_name(cfg: &crate::config::StoreConfig) -> String {
    match &cfg.url {
        Some(url) => format!("opening the store at {}", crate::store::redact_url(url)),
        None => format!("opening the store in {}", cfg.path.display()),
    }
}

/// With records queued, how long without a settled attempt counts as a stall for `/readyz`.
fn stall_after(cfg: &Config) -> Duration {
    (cfg.scaleo.timeout * 3 + cfg.forward.lease).max(Duration::from_secs(120))
}
