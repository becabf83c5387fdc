//! The forward loop and the life of one forwarded record.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Answer, Call, Client, Target};
use super::hold::Holds;
use super::outcome::Outcome;
use super::ratelimit::{Limiter, Rate};
use super::retry::{self, Next, classify};
use super::routes::{Routes, SourceForward};
use super::{ForwardError, ForwardStatus};
use crate::config::{ForwardConfig, ScaleoConfig};
use crate::lifecycle;
use crate::store::{Attempt, ChangeOf, Claimed, PauseReason, PauseScope, Store, StoreError};
use crate::sync::{read, write};

/// The name of the global Scaleo limit where the store shares it between instances.
const GLOBAL_LIMIT: &str = "scaleo.global";

/// A rate-limiter wait at least this long counts in the `rate_limit_waits` metric.
const RATE_WAIT_COUNTED: Duration = Duration::from_millis(1);

/// How long the loop sleeps when there is nothing due (a notify wakes it sooner); also how
/// often persisted pauses are re-read.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// After the grace period, how long released records may take to commit.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct Worker {
    store: Store,
    client: Client,
    limiter: Limiter,
    routes: Routes,
    scaleo: ScaleoConfig,
    fwd: ForwardConfig,
    status: Arc<ForwardStatus>,
    /// Scopes paused by 401/403, as last read or just set by a task.
    upstream_paused: RwLock<HashSet<PauseScope>>,
    /// Scopes paused for any other reason (an operator, a missing rule file), as last read:
    /// a prefetched record of such a scope is given back instead of sent.
    other_paused: RwLock<HashSet<PauseScope>>,
    /// Networks that answered 429: their sends wait out the `Retry-After`.
    holds: Holds,
    /// Attempts in a row that got no answer from Scaleo itself (outage mode at
    /// `forward.outage_after`).
    silent_in_row: AtomicU32,
}

impl Worker {
    pub(crate) fn new(
        store: Store,
        scaleo: ScaleoConfig,
        fwd: ForwardConfig,
        routes: Routes,
        status: Arc<ForwardStatus>,
    ) -> Result<Arc<Worker>, ForwardError> {
        let client = Client::new(scaleo.timeout, fwd.concurrency)?;
        let global = Rate {
            per_second: fwd.rate_per_second,
            burst: fwd.burst,
        };
        let shared = store.shared_limit(GLOBAL_LIMIT, global.per_second, global.burst);
        let limiter = Limiter::with_shared(global, shared);
        Ok(Arc::new(Worker {
            store,
            client,
            limiter,
            routes,
            scaleo,
            fwd,
            status,
            upstream_paused: RwLock::new(HashSet::new()),
            other_paused: RwLock::new(HashSet::new()),
            holds: Holds::default(),
            silent_in_row: AtomicU32::new(0),
        }))
    }

    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.fwd.concurrency.max(1)));
        let hard_stop = CancellationToken::new();
        let stops = Stops {
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        };
        let notify = self.store.subscribe();
        let mut tasks = JoinSet::new();
        let mut next_probe: HashMap<PauseScope, Instant> = HashMap::new();
        let mut pauses_read = Instant::now() - IDLE_TICK;
        let mut buffer: VecDeque<(Claimed, Instant)> = VecDeque::new();
        tracing::info!(
            concurrency = self.fwd.concurrency,
            rate = self.fwd.rate_per_second,
            "forwarder started"
        );
        loop {
            while let Some(joined) = tasks.try_join_next() {
                log_panic(joined);
            }
            if pauses_read.elapsed() >= IDLE_TICK {
                pauses_read = Instant::now();
                for (c, asked, scope, permit) in self.due_probes(&mut next_probe, &slots).await {
                    let job = self.job(c, asked, permit, Some(scope));
                    tasks.spawn(self.clone().forward(job, stops.clone()));
                }
            }
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            // Claims are prefetched (up to twice the concurrency) so a freed slot rarely waits
            // for a claim commit. A prefetched record is leased but not sent: a crash leaves
            // it to its lease, never sends it twice.
            if buffer.len() < permits.len() {
                let want = permits.len() + self.fwd.concurrency.max(1) - buffer.len();
                let exclude = self.limiter.busy_sources();
                // The lease is counted from before the claim was asked for: it starts when the
                // store runs the claim, which may be well before the answer gets back here
                // under load, and a request must never outlive it.
                let asked = Instant::now();
                match self.store.claim(want, self.fwd.lease, &exclude).await {
                    Ok(claimed) => {
                        buffer.extend(claimed.into_iter().map(|c| (c, asked)));
                    }
                    Err(e) => {
                        drop(permits);
                        tracing::error!(error = %e, "claiming work failed");
                        idle(&notify, &shutdown, Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if buffer.is_empty() {
                drop(permits);
                idle(&notify, &shutdown, IDLE_TICK).await;
                continue;
            }
            for permit in permits {
                let Some((c, claimed_at)) = buffer.pop_front() else {
                    break;
                };
                let job = self.job(c, claimed_at, permit, None);
                tasks.spawn(self.clone().forward(job, stops.clone()));
            }
        }
        for (c, _) in buffer.drain(..) {
            give_back(c, "shutdown").await;
        }
        tracing::info!(in_flight = tasks.len(), "forwarder stopping");
        let drain = async {
            while let Some(joined) = tasks.join_next().await {
                log_panic(joined);
            }
        };
        if tokio::time::timeout(self.fwd.grace, drain).await.is_err() {
            hard_stop.cancel();
            let release = async {
                while let Some(joined) = tasks.join_next().await {
                    log_panic(joined);
                }
            };
            if tokio::time::timeout(RELEASE_WAIT, release).await.is_err() {
                tracing::warn!(
                    "forwards still running after the grace period: left to their leases"
                );
            }
        }
        tracing::info!("forwarder stopped");
    }

    /// Re-reads the persisted pauses and claims a probe for each upstream-auth scope due one.
    async fn due_probes(
        &self,
        next_probe: &mut HashMap<PauseScope, Instant>,
        slots: &Arc<Semaphore>,
    ) -> Vec<(Claimed, Instant, PauseScope, OwnedSemaphorePermit)> {
        let paused = match self.store.paused().await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reading pauses failed");
                return Vec::new();
            }
        };
        // Pauses a probe may end: Scaleo refused the key, or stopped answering (outage).
        let upstream: HashSet<PauseScope> = paused
            .iter()
            .filter(|p| p.reason.is_probed())
            .map(|p| p.scope.clone())
            .collect();
        self.status.outage.store(
            paused.iter().any(|p| p.reason == PauseReason::Outage),
            Ordering::Relaxed,
        );
        self.status.paused_all.store(
            paused.iter().any(|p| p.scope == PauseScope::All),
            Ordering::Relaxed,
        );
        self.status.upstream_auth.store(
            paused.iter().any(|p| p.reason == PauseReason::UpstreamAuth),
            Ordering::Relaxed,
        );
        next_probe.retain(|s, _| upstream.contains(s));
        let mut probes = Vec::new();
        for scope in &upstream {
            let due = next_probe
                .entry(scope.clone())
                .or_insert_with(|| Instant::now() + self.fwd.pause_probe);
            if *due > Instant::now() {
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            *due = Instant::now() + self.fwd.pause_probe;
            let asked = Instant::now();
            match self.store.claim_probe(scope.clone(), self.fwd.lease).await {
                Ok(Some(c)) => {
                    tracing::info!(scope = %scope, record = c.id(), "probing the paused upstream");
                    probes.push((c, asked, scope.clone(), permit));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "claiming a probe failed"),
            }
        }
        *write(&self.upstream_paused) = upstream;
        *write(&self.other_paused) = paused
            .iter()
            .filter(|p| !p.reason.is_probed())
            .map(|p| p.scope.clone())
            .collect();
        probes
    }

    fn is_paused(&self, source: &str) -> bool {
        let covers = |set: &HashSet<PauseScope>| {
            set.contains(&PauseScope::All) || set.contains(&PauseScope::Source(source.into()))
        };
        covers(&read(&self.upstream_paused)) || covers(&read(&self.other_paused))
    }

    /// The Scaleo network (base URL) a source's records go to.
    fn network<'a>(&'a self, route: &'a SourceForward) -> &'a str {
        route.base_url.as_deref().unwrap_or(&self.scaleo.base_url)
    }

    /// A job for a claimed record: its route is looked up now.
    fn job(
        &self,
        claimed: Claimed,
        claimed_at: Instant,
        slot: OwnedSemaphorePermit,
        probe: Option<PauseScope>,
    ) -> Job {
        let route = self.routes.get(claimed.source());
        Job {
            claimed,
            route,
            claimed_at,
            probe,
            _slot: slot,
        }
    }

    async fn forward(self: Arc<Self>, job: Job, stops: Stops) {
        let _in_flight = InFlight::enter(self.status.clone());
        let Stops {
            shutdown,
            hard_stop,
        } = stops;
        let rate = job.route.rate();
        // A 429 from this network holds its sends first; the rate limit then spaces them.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return give_back(job.claimed, "shutdown").await,
            _ = self.holds.wait(self.network(&job.route)) => {}
        }
        let started = Instant::now();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return give_back(job.claimed, "shutdown").await,
            _ = self.limiter.acquire(job.claimed.source(), rate) => {}
        }
        if started.elapsed() >= RATE_WAIT_COUNTED {
            crate::metrics::rate_limit_wait();
        }
        if job.probe.is_none() && self.is_paused(job.claimed.source()) {
            return give_back(job.claimed, "paused").await;
        }
        // A request that could outlive the lease might run twice: give the record back instead.
        // The margin leaves time to settle before the lease runs out; it is at most half the
        // room between the timeout and the lease, so a fresh claim is always sent (the config
        // accepts any lease longer than the timeout).
        let room = self.fwd.lease.saturating_sub(self.scaleo.timeout);
        let margin = (self.fwd.lease / 10).min(room / 2);
        if job.claimed_at.elapsed() + self.scaleo.timeout + margin >= self.fwd.lease {
            return give_back(job.claimed, "rate-limit wait outlasted the lease").await;
        }
        let target = Target {
            base_url: self.network(&job.route),
            api_key: job.route.api_key.as_deref().unwrap_or(&self.scaleo.api_key),
        };
        let (call, body) = match job.claimed.change() {
            None => (Call::Create, job.claimed.body().to_string()),
            Some(change) => match change_body(change, job.claimed.body()) {
                Ok(body) => (Call::Update, body),
                Err(reason) => return self.unsendable(job.claimed, reason).await,
            },
        };
        let answer = tokio::select! {
            biased;
            a = self.client.call(call, target, &body) => a,
            _ = hard_stop.cancelled() => return give_back(job.claimed, "grace period over").await,
        };
        let outcome = classify(&answer.reply, Timestamp::now());
        self.settle(job, answer, outcome).await;
    }

    /// A change that cannot be sent (no `lead_id`): `dead` without an attempt.
    async fn unsendable(&self, c: Claimed, reason: String) {
        let (id, source) = (c.id(), c.source().to_string());
        tracing::warn!(
            source,
            record = id,
            reason,
            "dead: the change cannot be sent"
        );
        match c.give_up(reason).await {
            Ok(()) => self.status.progressed(),
            Err(e) => {
                tracing::error!(source, record = id, error = %e, "storing the outcome failed")
            }
        }
    }

    async fn settle(&self, job: Job, answer: Answer, outcome: Outcome) {
        // The slot stays taken until the outcome is stored and a probe's pause lifted.
        let Job {
            claimed: c,
            route,
            probe,
            _slot,
            ..
        } = job;
        let route = &route;
        let (id, source) = (c.id(), c.source().to_string());
        let click_id = c.click_id().unwrap_or_default().to_string();
        let status = answer.reply.status();
        let silent = !retry::answered_as_scaleo(&answer.reply);
        let outage = self.note_answer(silent, id, status).await;
        // While Scaleo is not answering, an attempt that got no answer gives its record back
        // uncounted: an outage of any length turns nothing dead.
        let outcome = match outcome {
            Outcome::Retry { reason, .. } if outage && silent => Outcome::Held {
                reason: format!("{reason} (Scaleo not answering: sending held)"),
            },
            o => o,
        };
        let attempt = Attempt {
            at: answer.at,
            status,
            answer: answer.reply.text(),
            duration: answer.duration,
        };
        if !matches!(outcome, Outcome::Paused { .. } | Outcome::Held { .. }) {
            self.status.attempted(outcome.failure());
        }
        if matches!(outcome, Outcome::Delivered { .. }) {
            let waited = Timestamp::now().duration_since(c.received_at());
            crate::metrics::delivered_latency(waited.as_secs_f64());
        }
        let key_works = outcome.key_works();
        if let Outcome::Paused { reason } = &outcome {
            let scope = if route.own_credentials() {
                PauseScope::Source(source.clone())
            } else {
                PauseScope::All
            };
            self.pause_upstream(&scope, reason, id, status).await;
        }
        let (outcome, result) = self.store_outcome(c, route, attempt, outcome).await;
        // Counted as written: a retry past the policy's bounds is a dead record, not a retry.
        crate::metrics::forward_attempt(outcome.metric_label());
        let outcome = outcome.as_str();
        match result {
            Ok(()) => {
                self.status.progressed();
                tracing::info!(source, record = id, click_id, status, outcome, "forwarded");
            }
            Err(StoreError::LeaseLost(_)) => tracing::warn!(
                source,
                record = id,
                click_id,
                outcome,
                "lease ran out before the outcome was stored; another claim owns the record"
            ),
            Err(e) => tracing::error!(
                source, record = id, click_id, outcome, error = %e,
                "storing the outcome failed; the record will be retried after its lease"
            ),
        }
        if let (Some(scope), true) = (probe, key_works) {
            match self
                .store
                .resume_reason(scope.clone(), PauseReason::UpstreamAuth)
                .await
            {
                Ok(_) => {
                    write(&self.upstream_paused).remove(&scope);
                    tracing::info!(scope = %scope, "probe accepted: forwarding resumed");
                }
                Err(e) => tracing::error!(error = %e, "resuming after the probe failed"),
            }
        }
    }

    /// Writes an attempt's outcome to the store: the one place an [`Outcome`] becomes the
    /// store's settle. A retry is placed by the retry policy (and a 429 holds its network);
    /// one past the policy's bounds goes dead instead. Returns the outcome written.
    async fn store_outcome(
        &self,
        c: Claimed,
        route: &SourceForward,
        attempt: Attempt,
        outcome: Outcome,
    ) -> (Outcome, Result<(), StoreError>) {
        let (id, source) = (c.id(), c.source().to_string());
        let click_id = c.click_id().unwrap_or_default().to_string();
        let status = attempt.status;
        match outcome {
            Outcome::Delivered {
                transaction_id,
                lead_id,
            } => {
                let stored = c
                    .delivered(attempt, transaction_id.clone(), lead_id.clone())
                    .await;
                let written = Outcome::Delivered {
                    transaction_id,
                    lead_id,
                };
                (written, stored)
            }
            Outcome::DuplicateUpstream => (
                Outcome::DuplicateUpstream,
                c.duplicate_upstream(attempt).await,
            ),
            Outcome::Dead { reason } => {
                tracing::warn!(
                    source,
                    record = id,
                    click_id,
                    status,
                    reason,
                    "dead: not retried"
                );
                let stored = c.dead(attempt, reason.clone()).await;
                (Outcome::Dead { reason }, stored)
            }
            Outcome::Retry { after, reason } => {
                // A Retry-After longer than forward.max_retry_after is capped.
                let after = after.map(|a| a.min(self.fwd.max_retry_after));
                if status == Some(429) {
                    let held = self.holds.hold(self.network(route), after);
                    tracing::info!(
                        source,
                        record = id,
                        held_ms = held.as_millis(),
                        "Scaleo answered 429: holding every send to this network"
                    );
                }
                let failures = c.attempts().saturating_add(1);
                let now = Timestamp::now();
                let jitter = fastrand::f64();
                match self
                    .fwd
                    .retry
                    .plan(now, c.queued_at(), failures, after, jitter)
                {
                    Next::At(at) => {
                        tracing::info!(source, record = id, click_id, status, reason, retry_at = %at, "retry scheduled");
                        let stored = c.retry(attempt, at, reason.clone()).await;
                        (Outcome::Retry { after, reason }, stored)
                    }
                    Next::GiveUp(why) => {
                        tracing::warn!(
                            source,
                            record = id,
                            click_id,
                            status,
                            reason,
                            why,
                            "dead: not retried again"
                        );
                        let reason = why.to_string();
                        let stored = c.dead(attempt, reason.clone()).await;
                        (Outcome::Dead { reason }, stored)
                    }
                }
            }
            Outcome::Held { reason } => {
                let stored = c.paused(attempt, reason.clone()).await;
                (Outcome::Held { reason }, stored)
            }
            Outcome::Paused { reason } => {
                let stored = c.paused(attempt, reason.clone()).await;
                (Outcome::Paused { reason }, stored)
            }
        }
    }

    /// Counts attempts in a row without an answer from Scaleo; starts outage mode at
    /// `forward.outage_after` of them and ends it at the first answer that is Scaleo's.
    /// Returns whether an outage is on after this answer.
    async fn note_answer(&self, silent: bool, id: i64, status: Option<u16>) -> bool {
        let on = self.status.outage.load(Ordering::Relaxed);
        if !silent {
            self.silent_in_row.store(0, Ordering::Relaxed);
            if on {
                self.end_outage().await;
            }
            return false;
        }
        let n = self.silent_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if on || n < self.fwd.outage_after {
            return on;
        }
        self.status.outage.store(true, Ordering::Relaxed);
        tracing::error!(
            record = id,
            status,
            attempts_in_row = n,
            "Scaleo is not answering (no answer, 5xx, or a 2xx that is not its JSON): outage mode, all sending held; one record is tried every forward.pause_probe"
        );
        if let Err(e) = self.store.pause(PauseScope::All, PauseReason::Outage).await {
            tracing::error!(error = %e, "persisting the outage pause failed");
        }
        write(&self.upstream_paused).insert(PauseScope::All);
        true
    }

    /// Scaleo answers again: lifts the outage pause, and gives every waiting record the
    /// time the outage lasted back on its age bound (`forward.max_age`).
    async fn end_outage(&self) {
        let since = match self.store.paused().await {
            Ok(p) => p
                .into_iter()
                .find(|p| p.reason == PauseReason::Outage)
                .map(|p| p.since),
            Err(e) => return tracing::error!(error = %e, "reading pauses failed"),
        };
        self.status.outage.store(false, Ordering::Relaxed);
        let Some(since) = since else {
            return;
        };
        let lasted = Timestamp::now().duration_since(since).unsigned_abs();
        if let Err(e) = self.store.extend_age(lasted).await {
            tracing::error!(error = %e, "giving the outage back to the age bound failed");
        }
        match self
            .store
            .resume_reason(PauseScope::All, PauseReason::Outage)
            .await
        {
            Ok(_) => tracing::info!(
                lasted_s = lasted.as_secs(),
                "Scaleo answers again: outage over, forwarding resumed"
            ),
            Err(e) => tracing::error!(error = %e, "lifting the outage pause failed"),
        }
        write(&self.upstream_paused).remove(&PauseScope::All);
    }

    async fn pause_upstream(&self, scope: &PauseScope, reason: &str, id: i64, status: Option<u16>) {
        let first = write(&self.upstream_paused).insert(scope.clone());
        self.status.upstream_auth.store(true, Ordering::Relaxed);
        if *scope == PauseScope::All {
            self.status.paused_all.store(true, Ordering::Relaxed);
        }
        if first {
            tracing::error!(
                scope = %scope, record = id, status, reason,
                "Scaleo refused the API key: forwarding paused, everything stays queued"
            );
        }
        if let Err(e) = self
            .store
            .pause(scope.clone(), PauseReason::UpstreamAuth)
            .await
        {
            tracing::error!(error = %e, "persisting the pause failed");
        }
    }
}

/// One claimed record on its way to Scaleo, with what its steps need to know about it.
struct Job {
    claimed: Claimed,
    /// Where its source forwards to (network, key, rate), as looked up when it was started.
    route: SourceForward,
    /// When it was claimed: the request must end within the lease.
    claimed_at: Instant,
    /// The paused scope this record probes, when it is a probe.
    probe: Option<PauseScope>,
    /// Its concurrency slot, held until the job ends.
    _slot: OwnedSemaphorePermit,
}

/// The two stops a forward obeys: `shutdown` (nothing new is sent) and `hard_stop` (the
/// grace period is over: requests in flight are abandoned and their records released).
#[derive(Clone)]
struct Stops {
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
}

/// Counts a record as in flight while it lives.
struct InFlight(Arc<ForwardStatus>);

impl InFlight {
    fn enter(status: Arc<ForwardStatus>) -> InFlight {
        status.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(status)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `leads/update` body of a claimed change, or why it cannot be sent.
fn change_body(change: &ChangeOf, stored: &str) -> Result<String, String> {
    let original = change.original;
    let lead = change.lead_id.as_deref().ok_or_else(|| {
        format!(
            "original record {original} has no Scaleo lead_id (it was not delivered with one): the change cannot be sent; replay it after the original is delivered"
        )
    })?;
    lifecycle::update_body(lead, stored)
}

/// Releases a claim unsettled (not counted as an attempt).
async fn give_back(c: Claimed, why: &'static str) {
    let id = c.id();
    if let Err(e) = c.release().await {
        tracing::warn!(record = id, why, error = %e, "releasing a claim failed; its lease will expire");
    }
}

async fn idle(notify: &Notify, shutdown: &CancellationToken, tick: Duration) {
    tokio::select! {
        _ = notify.notified() => {}
        _ = tokio::time::sleep(tick) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Logs a forward task that panicked (or was cancelled): its record was not settled, and it
/// is handed out again when its lease expires. Never silent: a panic is a bug to see.
fn log_panic(joined: Result<(), JoinError>) {
    if let Err(e) = joined {
        if e.is_panic() {
            tracing::error!(error = %e, "a forward task panicked: its record is left to its lease");
        } else {
            tracing::warn!(error = %e, "a forward task was cancelled: its record is left to its lease");
        }
    }
}
