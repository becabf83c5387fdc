//! `/readyz`: ready only when every check passes, and the JSON body says which did not.
//!
//! - `store`: a write that changes the database (the probe row) goes through the store's
//!   writer and commits, so a full, read-only or vanished disk fails it;
//! - `rules`: the last load of the rules directory succeeded (a refused reload lists each
//!   problem as `file:line:col: message` until the directory loads again);
//! - `forwarding`: no pause covers all forwarding and Scaleo has not refused the API key
//!   (an operator's pause of one source is listed but does not make the relay unready);
//! - `progress`: when records are queued, the forwarder settled an attempt recently;
//! - `deliveries`: the latest forward attempts did not all fail: [`FAILING_AFTER`] in a row
//!   that went dead or were retried, with no delivery between, fail it (a wrong `base_url`
//!   answering 404 to every conversion, a wrong host) until one is delivered.

use crate::forward::ForwardStatus;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::view::PauseJson;
use crate::reload::Reloader;
use crate::store::{PauseReason, PauseScope, State, Store};

/// Attempts in a row that fail (dead or retried) before readiness says deliveries fail.
pub const FAILING_AFTER: usize = 10;

/// How long each check may take before it counts as failed: `/readyz` answers within a
/// second even when the store stalls.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_millis(900);

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
    /// `rules`: every problem of the refused reload.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// `forwarding`: the persisted pauses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pauses: Vec<PauseJson>,
}

impl Check {
    fn ok(detail: impl Into<String>) -> Check {
        Check {
            ok: true,
            detail: detail.into(),
            problems: Vec::new(),
            pauses: Vec::new(),
        }
    }

    fn failed(detail: impl Into<String>) -> Check {
        Check {
            ok: false,
            ..Check::ok(detail)
        }
    }
}

/// The `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub store: Check,
    pub rules: Check,
    pub forwarding: Check,
    pub progress: Check,
    /// The latest forward attempts did not all fail (a wrong `base_url` answering 404 to
    /// every conversion, a key refused...).
    pub deliveries: Check,
}

/// What the checks look at.
pub struct Probes {
    pub store: Store,
    pub reloader: Arc<Reloader>,
    /// `None` until a forwarder reports its status: the progress check then only reports.
    pub forwarder: Option<Arc<ForwardStatus>>,
    /// With records queued, no settled attempt for this long is a stall.
    pub stall_after: Duration,
}

impl Probes {
    /// Runs every check.
    pub async fn readiness(&self) -> Readiness {
        // The checks run side by side, each bounded: a stalled store cannot hold the answer.
        let bounded =
            async |what: &str,
                   check: std::pin::Pin<Box<dyn Future<Output = Check> + Send + '_>>| {
                tokio::time::timeout(STORE_PROBE_TIMEOUT, check)
                    .await
                    .unwrap_or_else(|_| {
                        Check::failed(format!(
                            "{what}: the store did not answer within {STORE_PROBE_TIMEOUT:?}"
                        ))
                    })
            };
        let (store, forwarding, progress) = tokio::join!(
            bounded("store", Box::pin(self.store_check())),
            bounded("forwarding", Box::pin(self.forwarding_check())),
            bounded("progress", Box::pin(self.progress_check())),
        );
        let rules = self.rules_check();
        let deliveries = self.deliveries_check();
        Readiness {
            ready: store.ok && rules.ok && forwarding.ok && progress.ok && deliveries.ok,
            store,
            rules,
            forwarding,
            progress,
            deliveries,
        }
    }

    async fn store_check(&self) -> Check {
        match self.store.probe_write().await {
            Ok(()) => Check::ok("a write transaction commits"),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: store write probe failed");
                Check::failed(format!("the store cannot commit: {e}"))
            }
        }
    }

    fn rules_check(&self) -> Check {
        let status = self.reloader.status();
        match status.last_error {
            None if status.skipped.is_empty() => {
                Check::ok(format!("{} rule file(s) loaded", status.loaded))
            }
            None => Check::ok(format!(
                "{} rule file(s) loaded; skipped: {}",
                status.loaded,
                status.skipped.join("; ")
            )),
            Some(failure) => Check {
                problems: failure.problems.iter().map(ToString::to_string).collect(),
                ..Check::failed(format!(
                    "the rules in {} do not load since {} (the previous {} rule file(s) stay in force): {}",
                    self.reloader.dir().display(),
                    failure.at,
                    status.loaded,
                    failure
                        .problems
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ))
            },
        }
    }

    async fn forwarding_check(&self) -> Check {
        let pauses = match self.store.paused().await {
            Ok(p) => p,
            Err(e) => return Check::failed(format!("cannot read the pauses: {e}")),
        };
        let blocking: Vec<String> = pauses
            .iter()
            .filter(|p| p.scope == PauseScope::All || p.reason != PauseReason::Operator)
            .map(|p| {
                let what = match &p.scope {
                    PauseScope::All => "all forwarding".to_string(),
                    PauseScope::Source(s) => format!("source {s}"),
                };
                match p.reason {
                    PauseReason::Operator => {
                        format!("{what} paused by an operator since {}", p.since)
                    }
                    PauseReason::UpstreamAuth => format!(
                        "{what} paused since {}: Scaleo refused the API key (401/403)",
                        p.since
                    ),
                    PauseReason::Outage => format!(
                        "{what} held since {}: Scaleo is not answering (no answer, 5xx, or a 2xx that is not its JSON: check scaleo.base_url); one record is tried every forward.pause_probe",
                        p.since
                    ),
                    PauseReason::MissingRule => format!(
                        "{what} paused since {}: its rule file is missing, so where its records go is unknown (restore the file, or resume the source to send them with the global [scaleo] config)",
                        p.since
                    ),
                }
            })
            .collect();
        let list = pauses.iter().map(PauseJson::from).collect();
        let mut check = if blocking.is_empty() && pauses.is_empty() {
            Check::ok("not paused")
        } else if blocking.is_empty() {
            Check::ok("only single sources are paused by an operator")
        } else {
            Check::failed(blocking.join("; "))
        };
        check.pauses = list;
        check
    }

    fn deliveries_check(&self) -> Check {
        let Some(fwd) = &self.forwarder else {
            return Check::ok("forwarder status not available");
        };
        let failing = fwd.snapshot().failing_in_row;
        if failing < FAILING_AFTER {
            return Check::ok(format!(
                "{failing} failed attempt(s) in a row since the last delivery"
            ));
        }
        Check::failed(format!(
            "the last {failing} forward attempts all failed, none delivered (latest: {}); check scaleo.base_url, the API key and the rules",
            fwd.last_failure().unwrap_or_default()
        ))
    }

    async fn progress_check(&self) -> Check {
        let Some(fwd) = &self.forwarder else {
            return Check::ok("forwarder status not available");
        };
        let snap = fwd.snapshot();
        let queued = match self.store.counts_by_state().await {
            Ok(counts) => counts
                .iter()
                .find(|(s, _)| *s == State::Queued)
                .map_or(0, |(_, n)| *n),
            Err(e) => return Check::failed(format!("cannot count the queue: {e}")),
        };
        if queued == 0 {
            return Check::ok("no queued records");
        }
        if snap.paused_all {
            return Check::ok(format!("{queued} queued; forwarding is paused"));
        }
        let now = Timestamp::now();
        let since = |t: Timestamp| now.duration_since(t).unsigned_abs();
        let stalled = match snap.last_progress {
            Some(t) => since(t) > self.stall_after,
            // Nothing settled yet since start: stalled once the oldest waiting record is old.
            None => match self.store.oldest_queued().await {
                Ok(Some(oldest)) => since(oldest) > self.stall_after,
                Ok(None) => false,
                Err(e) => return Check::failed(format!("cannot read the queue: {e}")),
            },
        };
        let last = snap
            .last_progress
            .map_or_else(|| "never".to_string(), |t| t.to_string());
        if stalled {
            Check::failed(format!(
                "{queued} queued but no attempt settled for over {:?} (last: {last})",
                self.stall_after
            ))
        } else {
            Check::ok(format!(
                "{queued} queued, {} in flight, last attempt settled: {last}",
                snap.in_flight
            ))
        }
    }
}
