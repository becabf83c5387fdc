//! Pauses per network: a refused key (401/403) and an outage each hold one Scaleo network,
//! are probed for that network, and end for it alone.
//!
//! [`Pauses`] keeps the persisted pauses as last read (the forward loop refreshes them every
//! tick; the tasks update them at once) and, per network, the attempts in a row without an
//! answer from Scaleo itself: at `forward.outage_after` of them that network goes into
//! outage mode, and one that answers as Scaleo ends its own outage only. A pause of a network
//! is stored as pauses of its scopes ([`Networks::scopes`]); a source that joins a paused
//! network later (a reload) is paused too when one of its records turns up, and a probed
//! `All` pause is split into its sources' pauses once another network is configured.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use jiff::Timestamp;

use super::ForwardStatus;
use super::network::{Network, Networks};
use crate::store::{PauseReason, PauseScope, Paused, Store};
use crate::sync::{lock, read, write};

/// The probed pauses of one network, each with the scope to probe it through.
pub(crate) type Probed = HashMap<Network, Vec<PauseScope>>;

/// Pause state of every network, and what starts and ends it.
pub(crate) struct Pauses {
    store: Store,
    networks: Networks,
    outage_after: u32,
    status: Arc<ForwardStatus>,
    view: RwLock<View>,
    silent_in_row: Mutex<HashMap<Network, u32>>,
}

/// The pauses as last read or just set.
#[derive(Default)]
struct View {
    /// Scopes paused by a probed reason (a refused key, an outage).
    probed: HashMap<PauseScope, Held>,
    /// Scopes paused for another reason (an operator, a missing rule file).
    other: HashSet<PauseScope>,
}

/// Why a scope's network is held, and which network that is.
struct Held {
    network: Network,
    reasons: HashSet<PauseReason>,
}

impl View {
    fn covers(&self, source: &str) -> bool {
        let scope = PauseScope::Source(source.into());
        [PauseScope::All, scope]
            .iter()
            .any(|s| self.probed.contains_key(s) || self.other.contains(s))
    }

    /// Marks `scope` of `network` paused for `reason`; whether it was not already.
    fn hold(&mut self, scope: PauseScope, network: &Network, reason: PauseReason) -> bool {
        let held = self.probed.entry(scope).or_insert_with(|| Held {
            network: network.clone(),
            reasons: HashSet::new(),
        });
        held.reasons.insert(reason)
    }

    /// The reasons `network` is held for, through any of its scopes.
    fn reasons(&self, network: &Network) -> HashSet<PauseReason> {
        self.probed
            .values()
            .filter(|h| h.network == *network)
            .flat_map(|h| h.reasons.iter().copied())
            .collect()
    }
}

impl Pauses {
    pub(crate) fn new(
        store: Store,
        networks: Networks,
        outage_after: u32,
        status: Arc<ForwardStatus>,
    ) -> Pauses {
        Pauses {
            store,
            networks,
            outage_after,
            status,
            view: RwLock::new(View::default()),
            silent_in_row: Mutex::new(HashMap::new()),
        }
    }

    /// Re-reads the persisted pauses; returns the probed ones by network.
    pub(crate) async fn refresh(&self) -> Probed {
        let mut paused = match self.store.paused().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reading pauses failed");
                return Probed::new();
            }
        };
        if self.split_all(&paused).await {
            match self.store.paused().await {
                Ok(p) => paused = p,
                Err(e) => tracing::error!(error = %e, "reading pauses failed"),
            }
        }
        let any = |f: &dyn Fn(&Paused) -> bool| paused.iter().any(f);
        let status = &self.status;
        let outage = any(&|p| p.reason == PauseReason::Outage);
        status.outage.store(outage, Ordering::Relaxed);
        let all = any(&|p| p.scope == PauseScope::All);
        status.paused_all.store(all, Ordering::Relaxed);
        let auth = any(&|p| p.reason == PauseReason::UpstreamAuth);
        status.upstream_auth.store(auth, Ordering::Relaxed);
        let mut view = View::default();
        let mut probed = Probed::new();
        for p in paused {
            if !p.reason.is_probed() {
                view.other.insert(p.scope);
                continue;
            }
            let network = self.networks.of_scope(&p.scope);
            let scopes = probed.entry(network.clone()).or_default();
            if !scopes.contains(&p.scope) {
                scopes.push(p.scope.clone());
            }
            view.hold(p.scope, &network, p.reason);
        }
        *write(&self.view) = view;
        probed
    }

    /// A probed pause of `All` holds the global network; once a source forwards elsewhere it
    /// is replaced by pauses of the global network's sources, so the others can go on.
    /// Returns whether it replaced one.
    async fn split_all(&self, paused: &[Paused]) -> bool {
        let whole: Vec<PauseReason> = paused
            .iter()
            .filter(|p| p.scope == PauseScope::All && p.reason.is_probed())
            .map(|p| p.reason)
            .collect();
        if whole.is_empty() || self.networks.single() {
            return false;
        }
        let global = self.networks.of_scope(&PauseScope::All);
        let sources = self.networks.sources_where(|n| *n == global);
        for reason in whole {
            for s in &sources {
                self.persist(PauseScope::Source(s.clone()), reason).await;
            }
            match self.store.resume_reason(PauseScope::All, reason).await {
                Ok(_) => tracing::info!(
                    reason = reason.as_str(),
                    sources = sources.len(),
                    "a pause of all forwarding now holds only the global network's sources"
                ),
                Err(e) => tracing::error!(error = %e, "narrowing a pause failed"),
            }
        }
        true
    }

    /// Whether a record of `source` on `network` may be sent now. A source of a network that
    /// is paused through its other sources is paused too, so claims skip it from now on.
    pub(crate) async fn may_send(&self, source: &str, network: &Network) -> bool {
        let reasons = {
            let view = read(&self.view);
            if view.covers(source) {
                return false;
            }
            view.reasons(network)
        };
        if reasons.is_empty() {
            return true;
        }
        let scope = PauseScope::Source(source.to_string());
        for reason in reasons {
            write(&self.view).hold(scope.clone(), network, reason);
            tracing::warn!(source, network = %network, reason = reason.as_str(), "a source of a paused network: paused too");
            self.persist(scope.clone(), reason).await;
        }
        false
    }

    /// Scaleo refused `network`'s key (401/403) on a record of `source`: that network's
    /// sending stops until a probe of it, a reload or an operator resumes it.
    pub(crate) async fn refused(
        &self,
        network: &Network,
        source: &str,
        why: &str,
        id: i64,
        status: Option<u16>,
    ) {
        let scopes = self.set(network, source, PauseReason::UpstreamAuth);
        self.status.upstream_auth.store(true, Ordering::Relaxed);
        if !scopes.is_empty() {
            let scopes: Vec<String> = scopes.iter().map(ToString::to_string).collect();
            tracing::error!(
                network = %network, scopes = ?scopes, record = id, status, reason = why,
                "Scaleo refused the API key: this network's forwarding paused, everything stays queued"
            );
        }
        for scope in self.networks.scopes(network, source) {
            self.persist(scope, PauseReason::UpstreamAuth).await;
        }
    }

    /// A probe of `network` showed its key works: lifts that network's 401/403 pause only.
    pub(crate) async fn key_works(&self, network: &Network) {
        for scope in self.persisted(network, PauseReason::UpstreamAuth).await {
            match self
                .store
                .resume_reason(scope.clone(), PauseReason::UpstreamAuth)
                .await
            {
                Ok(_) => {
                    self.unset(&scope, PauseReason::UpstreamAuth);
                    tracing::info!(network = %network, scope = %scope, "probe accepted: forwarding resumed");
                }
                Err(e) => tracing::error!(error = %e, "resuming after the probe failed"),
            }
        }
    }

    /// Counts an answer of `network` (`silent`: none from Scaleo itself) to a record of
    /// `source`; starts that network's outage at `forward.outage_after` silent ones in a
    /// row, ends it at the first answer that is Scaleo's. Returns whether the network is in
    /// an outage after this answer.
    pub(crate) async fn answered(
        &self,
        network: &Network,
        source: &str,
        silent: bool,
        id: i64,
        status: Option<u16>,
    ) -> bool {
        let on = self.in_outage(network);
        if !silent {
            lock(&self.silent_in_row).remove(network);
            if on {
                self.end_outage(network).await;
            }
            return false;
        }
        let n = {
            let mut counts = lock(&self.silent_in_row);
            let n = counts.entry(network.clone()).or_default();
            *n += 1;
            *n
        };
        if on || n < self.outage_after {
            return on;
        }
        self.set(network, source, PauseReason::Outage);
        self.status.outage.store(true, Ordering::Relaxed);
        tracing::error!(
            network = %network,
            record = id,
            status,
            attempts_in_row = n,
            "Scaleo is not answering (no answer, 5xx, or a 2xx that is not its JSON): outage mode, this network's sending held; one record is tried every forward.pause_probe"
        );
        for scope in self.networks.scopes(network, source) {
            self.persist(scope, PauseReason::Outage).await;
        }
        true
    }

    /// `network` answers again: lifts its outage pause, and gives every waiting record the
    /// time the outage lasted back on its age bound (`forward.max_age`).
    async fn end_outage(&self, network: &Network) {
        let paused = match self.store.paused().await {
            Ok(p) => p,
            Err(e) => return tracing::error!(error = %e, "reading pauses failed"),
        };
        let ours: Vec<&Paused> = paused
            .iter()
            .filter(|p| p.reason == PauseReason::Outage)
            .filter(|p| self.networks.of_scope(&p.scope) == *network)
            .collect();
        let Some(since) = ours.iter().map(|p| p.since).min() else {
            return self.unset_network(network, PauseReason::Outage);
        };
        // The waiting records of this network's scopes get the time back (all of them when
        // the network's pause is the `All` one).
        let lasted = Timestamp::now().duration_since(since).unsigned_abs();
        let sources: Option<Vec<String>> = ours
            .iter()
            .map(|p| match &p.scope {
                PauseScope::Source(s) => Some(s.clone()),
                PauseScope::All => None,
            })
            .collect();
        if let Err(e) = self.store.extend_age(lasted, sources).await {
            tracing::error!(error = %e, "giving the outage back to the age bound failed");
        }
        for p in ours {
            if let Err(e) = self
                .store
                .resume_reason(p.scope.clone(), PauseReason::Outage)
                .await
            {
                tracing::error!(error = %e, "lifting the outage pause failed");
            }
        }
        self.unset_network(network, PauseReason::Outage);
        tracing::info!(
            network = %network,
            lasted_s = lasted.as_secs(),
            "Scaleo answers again: outage over, forwarding resumed"
        );
    }

    fn in_outage(&self, network: &Network) -> bool {
        read(&self.view)
            .reasons(network)
            .contains(&PauseReason::Outage)
    }

    /// Marks `network` paused for `reason` in the view; returns the scopes newly marked.
    fn set(&self, network: &Network, source: &str, reason: PauseReason) -> Vec<PauseScope> {
        let scopes = self.networks.scopes(network, source);
        if scopes.contains(&PauseScope::All) {
            self.status.paused_all.store(true, Ordering::Relaxed);
        }
        let mut view = write(&self.view);
        scopes
            .into_iter()
            .filter(|s| view.hold(s.clone(), network, reason))
            .collect()
    }

    fn unset(&self, scope: &PauseScope, reason: PauseReason) {
        let mut view = write(&self.view);
        if let Some(held) = view.probed.get_mut(scope) {
            held.reasons.remove(&reason);
            if held.reasons.is_empty() {
                view.probed.remove(scope);
            }
        }
    }

    fn unset_network(&self, network: &Network, reason: PauseReason) {
        let scopes: Vec<PauseScope> = read(&self.view)
            .probed
            .iter()
            .filter(|(_, h)| h.network == *network)
            .map(|(s, _)| s.clone())
            .collect();
        for scope in scopes {
            self.unset(&scope, reason);
        }
    }

    /// The persisted scopes of `network` paused for `reason`.
    async fn persisted(&self, network: &Network, reason: PauseReason) -> Vec<PauseScope> {
        match self.store.paused().await {
            Ok(p) => p
                .into_iter()
                .filter(|p| p.reason == reason && self.networks.of_scope(&p.scope) == *network)
                .map(|p| p.scope)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading pauses failed");
                Vec::new()
            }
        }
    }

    async fn persist(&self, scope: PauseScope, reason: PauseReason) {
        if let Err(e) = self.store.pause(scope, reason).await {
            tracing::error!(error = %e, reason = reason.as_str(), "persisting a pause failed");
        }
    }
}
