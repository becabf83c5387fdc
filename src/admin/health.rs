//! `/readyz`: ready only when every check passes, and the JSON body says which did not.
//!
//! - `store`: a no-op write transaction goes through the store's writer and commits
//!   (the writer is alive and can take the database's write lock), within a timeout;
//! - `rules`: the last load of the rules directory succeeded (a refused reload lists each
//!   problem as `file:line:col: message` until the directory loads again);
//! - `forwarding`: no pause covers all forwarding and Scaleo has not refused the API key
//!   (an operator's pause of one source is listed but does not make the relay unready);
//! - `progress`: when records are queued, the forwarder settled an attempt recently.

use crate::forward::ForwardStatus;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::view::PauseJson;
use crate::reload::Reloader;
use crate::store::{PauseReason, PauseScope, State, Store};

/// How long the store check may take before it counts as failed.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A scope no source can have (source ids are `[a-z0-9_-]`): the store probe resumes it,
/// which changes nothing but needs a committed write transaction.
const PROBE_SCOPE: &str = "(readyz probe)";

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
        let store = self.store_check().await;
        let rules = self.rules_check();
        let forwarding = self.forwarding_check().await;
        let progress = self.progress_check().await;
        Readiness {
            ready: store.ok && rules.ok && forwarding.ok && progress.ok,
            store,
            rules,
            forwarding,
            progress,
        }
    }

    async fn store_check(&self) -> Check {
        let probe = self.store.resume_reason(
            PauseScope::Source(PROBE_SCOPE.to_string()),
            PauseReason::Operator,
        );
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Check::ok("a write transaction commits"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: store write probe failed");
                Check::failed(format!("the store cannot commit: {e}"))
            }
            Err(_) => Check::failed(format!(
                "the store writer did not answer within {STORE_PROBE_TIMEOUT:?}"
            )),
        }
    }

    fn rules_check(&self) -> Check {
        let status = self.reloader.status();
        match status.last_error {
            None => Check::ok(format!("{} rule file(s) loaded", status.loaded)),
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
