//! Forwarding to Scaleo: claim, rate-limit, POST, classify, settle.
//!
//! [`Forwarder::spawn`] starts one worker loop (see `worker.rs`): it waits for the store's
//! notify (or a short tick), claims as many due records as it has free concurrency slots,
//! gives each the slot once its source's rate limit has a cell ([`ratelimit`]), and runs it
//! in its own task: wait for the global rate limit, POST ([`client`]), classify ([`retry`])
//! and settle the record, which commits the outcome before the slot is freed. Settles from concurrent tasks share group
//! commits in the store's writer, so each outcome is durable as soon as it is known without
//! one fsync per record.
//!
//! Each Scaleo network (a base URL and API key: the global `[scaleo]` one, or a source's own
//! `[forward]` pair, see `network.rs`) is on its own: a record waiting for its source's rate
//! limit or its network's 429 hold is given back to the queue instead of holding a slot, and
//! pauses and outages are kept per network (`pauses.rs`).
//! A 401/403 (or a redirect) persists a pause `upstream_auth` of that network (of all
//! forwarding while every source uses the global one, else of each of its sources), gives
//! the record back uncounted, and stops that network's sending; while paused one of its
//! queued records is tried every `forward.pause_probe`, and an answer that shows the key
//! works (delivered, duplicate, or another 4xx) resumes that network.
//! Outage mode: after `forward.outage_after` attempts in a row to one network without an
//! answer from Scaleo itself (no answer, a 5xx, or a 2xx that is not its JSON envelope), a
//! pause `outage` of that network is persisted; its records that get no answer meanwhile are
//! given back uncounted, one of them is probed every `forward.pause_probe`, and the first
//! answer that is Scaleo's lifts the pause and adds the outage's length back to every waiting
//! record's age bound: an outage of any length turns nothing dead.
//! A 429 holds every send to that network for its `Retry-After` (at most 10 s; see `hold.rs`).
//! On shutdown nothing new is claimed, waits on the rate limit end with the record released,
//! requests in flight get `forward.grace` to finish, then the rest is released.

pub mod client;
mod hold;
mod network;
mod outcome;
mod pauses;
pub mod ratelimit;
pub mod retry;
mod routes;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use jiff::Timestamp;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ForwardConfig, ScaleoConfig};
use crate::store::Store;

pub use outcome::Outcome;
pub use routes::{Routes, SourceForward};

/// Errors of starting the forwarder.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// Live counters of the forwarder, cheap to read from health checks.
#[derive(Debug, Default)]
pub struct ForwardStatus {
    paused_all: AtomicBool,
    upstream_auth: AtomicBool,
    /// Outage mode: Scaleo stopped answering, sending is held and probed.
    outage: AtomicBool,
    in_flight: AtomicUsize,
    /// Unix ms of the last settled attempt; 0 = none yet.
    last_progress_ms: AtomicI64,
    /// Attempts in a row that did not get a conversion to Scaleo (dead or retried), and the
    /// last one's reason: a wrong `base_url` (404 for all) or key shows on `/readyz`.
    failing_in_row: AtomicUsize,
    last_failure: std::sync::Mutex<Option<String>>,
}

/// A snapshot of [`ForwardStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// A pause (operator or upstream) covers all forwarding.
    pub paused_all: bool,
    /// Some scope is paused because Scaleo refused the API key.
    pub upstream_auth: bool,
    /// Outage mode: Scaleo is not answering; sending is held and probed.
    pub outage: bool,
    /// Records being forwarded right now (including rate-limit waits).
    pub in_flight: usize,
    /// When an attempt was last settled.
    pub last_progress: Option<Timestamp>,
    /// Attempts in a row that failed (dead or retried) since the last delivery.
    pub failing_in_row: usize,
}

impl ForwardStatus {
    /// The current values.
    pub fn snapshot(&self) -> StatusSnapshot {
        let ms = self.last_progress_ms.load(Ordering::Relaxed);
        StatusSnapshot {
            paused_all: self.paused_all.load(Ordering::Relaxed),
            upstream_auth: self.upstream_auth.load(Ordering::Relaxed),
            outage: self.outage.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            failing_in_row: self.failing_in_row.load(Ordering::Relaxed),
            last_progress: (ms != 0)
                .then(|| Timestamp::from_millisecond(ms).ok())
                .flatten(),
        }
    }

    /// The reason of the last failed attempt, when the latest ones all failed.
    pub fn last_failure(&self) -> Option<String> {
        crate::sync::lock(&self.last_failure).clone()
    }

    /// Counts an attempt's result: `Some(reason)` when it did not get the conversion to
    /// Scaleo (dead or retried), `None` when it did (delivered, already there).
    fn attempted(&self, failure: Option<&str>) {
        match failure {
            None => {
                self.failing_in_row.store(0, Ordering::Relaxed);
                *crate::sync::lock(&self.last_failure) = None;
            }
            Some(why) => {
                self.failing_in_row.fetch_add(1, Ordering::Relaxed);
                *crate::sync::lock(&self.last_failure) = Some(why.to_string());
            }
        }
    }

    fn progressed(&self) {
        self.last_progress_ms
            .store(Timestamp::now().as_millisecond(), Ordering::Relaxed);
    }
}

/// The running forwarder.
pub struct Forwarder {
    handle: JoinHandle<()>,
    status: Arc<ForwardStatus>,
}

impl Forwarder {
    /// Starts forwarding on the current tokio runtime until `shutdown` is cancelled.
    pub fn spawn(
        store: Store,
        scaleo: ScaleoConfig,
        fwd: ForwardConfig,
        routes: Routes,
        shutdown: CancellationToken,
    ) -> Result<Forwarder, ForwardError> {
        let status = Arc::new(ForwardStatus::default());
        let worker = worker::Worker::new(store, scaleo, fwd, routes, status.clone())?;
        let handle = tokio::spawn(worker.run(shutdown));
        Ok(Forwarder { handle, status })
    }

    /// A snapshot of the status (paused, in flight, last progress).
    pub fn status(&self) -> StatusSnapshot {
        self.status.snapshot()
    }

    /// A shared handle on the live status, for the admin API.
    pub fn status_handle(&self) -> Arc<ForwardStatus> {
        self.status.clone()
    }

    /// Waits until the forwarder has stopped (after `shutdown` and the grace period).
    pub async fn join(self) {
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "forwarder task failed");
        }
    }
}
