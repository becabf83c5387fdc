//! The forward loop and the life of one forwarded record.
//!
//! A claimed record takes a concurrency slot only once it may go now: its network is not
//! paused nor held by a 429 and its source's rate limit has a cell; otherwise it goes back to
//! the queue unchanged and uncounted, and claims skip its source until that changes. So one
//! source's rate or one network's trouble never holds the slots the others need.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Answer, Call, Client, Target};
use super::hold::Holds;
use super::network::{Network, Networks};
use super::outcome::Outcome;
use super::pauses::Pauses;
use super::ratelimit::{Limiter, Rate};
use super::retry::{self, Next, classify};
use super::routes::{Routes, SourceForward};
use super::{ForwardError, ForwardStatus};
use crate::config::{ForwardConfig, ScaleoConfig};
use crate::lifecycle;
use crate::store::{Attempt, ChangeOf, Claimed, PauseScope, Store, StoreError};

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
    networks: Networks,
    scaleo: ScaleoConfig,
    fwd: ForwardConfig,
    status: Arc<ForwardStatus>,
    /// Every network's refused-key and outage pauses, and the other pauses as last read: a
    /// claimed record of a paused scope or network is given back instead of sent.
    pauses: Pauses,
    /// Networks that answered 429: their sends wait out the `Retry-After`.
    holds: Holds,
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
        let networks = Networks::new(&scaleo.base_url, &scaleo.api_key, routes.clone());
        let pauses = Pauses::new(
            store.clone(),
            networks.clone(),
            fwd.outage_after,
            status.clone(),
        );
        Ok(Arc::new(Worker {
            store,
            client,
            limiter,
            routes,
            networks,
            scaleo,
            fwd,
            status,
            pauses,
            holds: Holds::default(),
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
        let mut next_probe: HashMap<Network, Instant> = HashMap::new();
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
                for job in self.due_probes(&mut next_probe, &slots).await {
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
                let exclude = self.waiting_sources();
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
            'slots: for permit in permits {
                // A record that may not go now goes back, and the slot to the next one.
                while let Some((c, claimed_at)) = buffer.pop_front() {
                    let job = self.job(c, claimed_at, None);
                    match self.admit(&job).await {
                        Ok(()) => {
                            let job = Job {
                                _slot: Some(permit),
                                ..job
                            };
                            tasks.spawn(self.clone().forward(job, stops.clone()));
                            continue 'slots;
                        }
                        Err(why) => {
                            tasks.spawn(give_back(job.claimed, why));
                        }
                    }
                }
                break;
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

    /// Re-reads the persisted pauses and claims a probe for each network due one: a record
    /// of that network, sent although it is paused, whose answer may end its pause.
    async fn due_probes(
        &self,
        next_probe: &mut HashMap<Network, Instant>,
        slots: &Arc<Semaphore>,
    ) -> Vec<Job> {
        let probed = self.pauses.refresh().await;
        next_probe.retain(|n, _| probed.contains_key(n));
        let mut probes = Vec::new();
        for (network, scopes) in probed {
            let due = next_probe
                .entry(network.clone())
                .or_insert_with(|| Instant::now() + self.fwd.pause_probe);
            if *due > Instant::now() {
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            *due = Instant::now() + self.fwd.pause_probe;
            if let Some(job) = self.claim_probe(&network, &scopes).await {
                probes.push(Job {
                    _slot: Some(permit),
                    ..job
                });
            }
        }
        probes
    }

    /// Claims one record of `network` through the first of its paused `scopes` that has one.
    async fn claim_probe(&self, network: &Network, scopes: &[PauseScope]) -> Option<Job> {
        for scope in scopes {
            let asked = Instant::now();
            match self.store.claim_probe(scope.clone(), self.fwd.lease).await {
                Ok(Some(c)) => {
                    let mut job = self.job(c, asked, None);
                    // A record of another network (its route changed) proves nothing here:
                    // it goes as any other would, if it may.
                    if job.network == *network {
                        tracing::info!(network = %network, scope = %scope, record = job.claimed.id(), "probing the paused upstream");
                        job.probe = Some(network.clone());
                    }
                    return Some(job);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "claiming a probe failed");
                    return None;
                }
            }
        }
        None
    }

    /// Sources whose records cannot go now (their rate limit has no cell, their network is
    /// held by a 429): claims skip them instead of taking records only to give them back.
    fn waiting_sources(&self) -> Vec<String> {
        let mut sources = self.limiter.busy_sources();
        let held = self.holds.held();
        if !held.is_empty() {
            let on_hold = |n: &Network| held.iter().any(|b| b == n.base_url());
            sources.extend(self.networks.sources_where(on_hold));
        }
        sources
    }

    /// Whether a record may take a slot and go now; `Err(why)` sends it back to the queue
    /// unchanged, not counted as an attempt.
    async fn admit(&self, job: &Job) -> Result<(), &'static str> {
        self.still_may_go(job).await?;
        if self
            .limiter
            .check_source(job.claimed.source(), job.route.rate())
            .is_err()
        {
            crate::metrics::rate_limit_wait();
            return Err("its source's rate limit");
        }
        Ok(())
    }

    /// Whether neither a pause nor a 429 hold keeps the record's network from sending.
    async fn still_may_go(&self, job: &Job) -> Result<(), &'static str> {
        if !self
            .pauses
            .may_send(job.claimed.source(), &job.network)
            .await
        {
            return Err("paused");
        }
        if self.holds.remaining(job.network.base_url()).is_some() {
            return Err("its network answered 429");
        }
        Ok(())
    }

    /// A job for a claimed record: its route is looked up now.
    fn job(
        &self,
        claimed: Claimed,
        claimed_at: Instant,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Job {
        let route = self.routes.get(claimed.source());
        let network = self.networks.of(&route);
        Job {
            claimed,
            route,
            network,
            claimed_at,
            probe: None,
            _slot: slot,
        }
    }

    async fn forward(self: Arc<Self>, job: Job, stops: Stops) {
        let _in_flight = InFlight::enter(self.status.clone());
        let Stops {
            shutdown,
            hard_stop,
        } = stops;
        // The source's cell was taken when the record was admitted; the global one is waited
        // for here, as every record does.
        let started = Instant::now();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return give_back(job.claimed, "shutdown").await,
            _ = self.limiter.acquire_global() => {}
        }
        if started.elapsed() >= RATE_WAIT_COUNTED {
            crate::metrics::rate_limit_wait();
        }
        // Paused or held meanwhile (a probe is sent although its network is paused).
        if job.probe.is_none()
            && let Err(why) = self.still_may_go(&job).await
        {
            return give_back(job.claimed, why).await;
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
            base_url: job.network.base_url(),
            api_key: job.network.api_key(),
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
            network,
            probe,
            _slot,
            ..
        } = job;
        let network = &network;
        let (id, source) = (c.id(), c.source().to_string());
        let click_id = c.click_id().unwrap_or_default().to_string();
        let status = answer.reply.status();
        let silent = !retry::answered_as_scaleo(&answer.reply);
        let outage = self
            .pauses
            .answered(network, &source, silent, id, status)
            .await;
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
            self.pauses
                .refused(network, &source, reason, id, status)
                .await;
        }
        let (outcome, result) = self.store_outcome(c, network, attempt, outcome).await;
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
        // Only an answer of the probed network itself shows that its key works.
        if key_works && probe.as_ref() == Some(network) {
            self.pauses.key_works(network).await;
        }
    }

    /// Writes an attempt's outcome to the store: the one place an [`Outcome`] becomes the
    /// store's settle. A retry is placed by the retry policy (and a 429 holds its network);
    /// one past the policy's bounds goes dead instead. Returns the outcome written.
    async fn store_outcome(
        &self,
        c: Claimed,
        network: &Network,
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
                    let held = self.holds.hold(network.base_url(), after);
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
}

/// One claimed record on its way to Scaleo, with what its steps need to know about it.
struct Job {
    claimed: Claimed,
    /// Where its source forwards to (network, key, rate), as looked up when it was claimed.
    route: SourceForward,
    /// The network of `route`.
    network: Network,
    /// When it was claimed: the request must end within the lease.
    claimed_at: Instant,
    /// The paused network this record probes, when it is a probe.
    probe: Option<Network>,
    /// Its concurrency slot, held until the job ends (`None` only until it is admitted).
    _slot: Option<OwnedSemaphorePermit>,
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
