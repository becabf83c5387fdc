//! `postback-relay serve`: wires config, rules, store, forwarder and the listeners together,
//! and runs them until SIGTERM/SIGINT (SIGHUP reloads the rules).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::forward::{ForwardStatus, Forwarder, Routes, SourceForward};
use crate::ingest::{Ingest, server};
use crate::rules::{EnvMode, LiveRules, RuleSet};
use crate::store::{PauseReason, Store};

/// How often delivered records past `store.retention` are purged.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// A running relay: its addresses and the handles to stop it.
pub struct Running {
    pub ingest_addr: SocketAddr,
    pub store: Store,
    pub rules: Arc<LiveRules>,
    pub routes: Routes,
    pub forward_status: Arc<ForwardStatus>,
    pub shutdown: CancellationToken,
    forwarder: Forwarder,
    tasks: Vec<JoinHandle<()>>,
    rules_dir: PathBuf,
}

impl Running {
    /// Reloads the rules directory: the whole new set or nothing.
    pub fn reload(&self) -> Result<usize, Vec<crate::rules::Diagnostic>> {
        let set = RuleSet::load_dir(&self.rules_dir, EnvMode::Resolve)?;
        let n = set.len();
        self.routes.replace(routes_of(&set));
        self.rules.replace(set);
        Ok(n)
    }

    /// After a reload (new keys or URLs may be in force), lifts every pause that Scaleo's
    /// 401/403 caused; an operator's pauses stay.
    pub async fn resume_upstream_auth(&self) {
        let paused = match self.store.paused().await {
            Ok(p) => p,
            Err(e) => return tracing::error!(error = %e, "cannot read the pauses"),
        };
        for p in paused
            .into_iter()
            .filter(|p| p.reason == PauseReason::UpstreamAuth)
        {
            match self
                .store
                .resume_reason(p.scope.clone(), PauseReason::UpstreamAuth)
                .await
            {
                Ok(_) => tracing::info!(scope = %p.scope, "forwarding resumed after a reload"),
                Err(e) => tracing::error!(scope = %p.scope, error = %e, "cannot resume forwarding"),
            }
        }
    }

    /// Stops accepting, drains, and waits for every task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.forwarder.join().await;
    }
}

/// The per-source forwarding overrides of a rule set.
pub fn routes_of(set: &RuleSet) -> HashMap<String, SourceForward> {
    set.iter()
        .map(|r| {
            let f = &r.forward;
            let sf = SourceForward {
                rate_per_second: f.rate_per_second,
                burst: f.burst,
                base_url: f.base_url.clone(),
                api_key: f.api_key.clone(),
            };
            (r.source.clone(), sf)
        })
        .collect()
}

/// Starts everything on the current runtime; the listeners are bound before this returns.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let set = RuleSet::load_dir(&cfg.rules_dir, EnvMode::Resolve).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "the rules in {} do not load:\n{}",
            cfg.rules_dir.display(),
            list.join("\n")
        )
    })?;
    if let Some(url) = &cfg.store.url {
        anyhow::bail!(
            "store.url = {url:?}: the PostgreSQL store is not available in this version; remove store.url to use the embedded SQLite store"
        );
    }
    let store = Store::open(&cfg.store)
        .with_context(|| format!("opening the store in {}", cfg.store.path.display()))?;
    let routes = Routes::new(routes_of(&set));
    let rules = Arc::new(LiveRules::new(set));
    let shutdown = CancellationToken::new();

    let listener = server::bind(cfg.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", cfg.server.listen))?;
    let ingest_addr = listener.local_addr()?;
    let ingest = Arc::new(Ingest {
        rules: rules.clone(),
        store: store.clone(),
        zone: cfg.scaleo.timezone.clone(),
        limits: cfg.server.clone(),
    });
    let mut tasks = vec![tokio::spawn(server::serve(
        listener,
        ingest,
        shutdown.clone(),
        cfg.forward.grace,
    ))];
    tasks.push(store.spawn_retention(cfg.store.retention, RETENTION_EVERY, shutdown.clone()));
    let forwarder = Forwarder::spawn(
        store.clone(),
        cfg.scaleo.clone(),
        cfg.forward.clone(),
        routes.clone(),
        shutdown.clone(),
    )
    .context("starting the forwarder")?;
    let forward_status = forwarder.status_handle();
    tracing::info!(%ingest_addr, rules = rules.current().len(), scaleo = %cfg.scaleo.base_url, "relay started");
    Ok(Running {
        ingest_addr,
        store,
        rules,
        routes,
        forward_status,
        shutdown,
        forwarder,
        tasks,
        rules_dir: cfg.rules_dir.clone(),
    })
}

/// Runs until SIGTERM or SIGINT; SIGHUP reloads the rules.
pub async fn run_until_signal(running: Running) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => match running.reload() {
                Ok(n) => {
                    tracing::info!(rules = n, "rules reloaded");
                    running.resume_upstream_auth().await;
                }
                Err(problems) => {
                    for p in &problems {
                        tracing::error!(problem = %p, "rules reload refused; the previous rules stay in force");
                    }
                }
            },
        }
    }
    tracing::info!("shutting down: no new postbacks, finishing in-flight work");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}
