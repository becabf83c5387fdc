//! What a new record's write needs on either backend: its columns, the claim policy, and
//! the rule for who holds a dedupe key. The SQL is each backend's (`sqlite::ops`, `pg::write`).

use std::time::Duration;

use super::StoreError;
use super::types::{DedupeKey, NewRecord, NewState, PauseReason, PauseScope, State};

/// How many rows one purge operation deletes at most (keeps each commit short).
pub(crate) const PURGE_CHUNK: u64 = 5_000;

/// What a claim asks for (see `Store::claim` for the policy).
pub(crate) struct ClaimRequest {
    pub limit: usize,
    pub lease: Duration,
    pub owner: String,
    pub exclude: Vec<String>,
    pub probe: Option<PauseScope>,
    pub prefer_retry: bool,
}

/// How much a step of [`ClaimRequest::FILL`] takes.
#[derive(Clone, Copy)]
pub(crate) enum Fill {
    /// The retries' share, taken first.
    RetryShare,
    /// Whatever room the limit leaves.
    Room,
}

impl ClaimRequest {
    /// The sources not to claim from, given the stored pauses as `(scope, reason)`: the
    /// caller's own excludes plus every paused source, except the 401/403 pause of the
    /// scope being probed. `None` when all forwarding is paused (claim nothing).
    pub fn excluded(
        &self,
        pauses: impl IntoIterator<Item = (String, String)>,
    ) -> Option<Vec<String>> {
        let mut exclude = self.exclude.clone();
        for (scope, reason) in pauses {
            let probed = PauseReason::parse(&reason).is_some_and(PauseReason::is_probed)
                && self.probe.as_ref().is_some_and(|p| p.key() == scope);
            if probed {
                continue;
            }
            if scope == PauseScope::All.key() {
                return None;
            }
            exclude.push(scope);
        }
        Some(exclude)
    }

    /// The only source to claim from: the probed one, when a source is being probed.
    pub fn only(&self) -> Option<&str> {
        match &self.probe {
            Some(PauseScope::Source(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The order in which states fill a claim: first a share for retries, so fresh
    /// postbacks are never starved by retries nor the other way round, then queued, paused
    /// (a probe) and the rest of the retries, each up to [`ClaimRequest::most`].
    pub const FILL: [(State, Fill); 4] = [
        (State::Retrying, Fill::RetryShare),
        (State::Queued, Fill::Room),
        (State::Paused, Fill::Room),
        (State::Retrying, Fill::Room),
    ];

    /// How many records a step of [`ClaimRequest::FILL`] may take when `taken` are
    /// claimed already: the retries' share is a quarter of the limit (with a limit of one,
    /// every fourth claim, `prefer_retry`); the other steps fill the room left.
    pub fn most(&self, fill: Fill, taken: usize) -> usize {
        match (fill, self.limit) {
            (Fill::RetryShare, 1) => usize::from(self.prefer_retry),
            (Fill::RetryShare, n) => n.div_ceil(4),
            (Fill::Room, n) => n.saturating_sub(taken),
        }
    }
}

pub(crate) fn body_text(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, StoreError> {
    serde_json::to_string(body).map_err(|e| StoreError::Corrupt(format!("body: {e}")))
}

/// The columns of a new record that do not depend on the store: its state before dedupe,
/// the body as stored, the click id, the reason, and the dedupe key to take.
pub(crate) struct Columns<'a> {
    pub state: State,
    pub body: Option<String>,
    pub click_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub dedupe: Option<&'a DedupeKey>,
}

impl<'a> Columns<'a> {
    pub fn of(rec: &'a NewRecord) -> Result<Columns<'a>, StoreError> {
        Ok(match &rec.state {
            NewState::Queued {
                body,
                click_id,
                dedupe,
                ..
            } => Columns {
                state: State::Queued,
                body: Some(body_text(body)?),
                click_id: Some(click_id),
                reason: None,
                dedupe: dedupe.as_ref(),
            },
            NewState::Rejected { reason, click_id } => Columns {
                state: State::Rejected,
                body: None,
                click_id: click_id.as_deref(),
                reason: Some(reason),
                dedupe: None,
            },
            NewState::Change { click_id, .. } => Columns {
                state: State::Rejected,
                body: None,
                click_id: click_id.as_deref(),
                reason: None,
                dedupe: None,
            },
            NewState::Skipped { reason } => Columns {
                state: State::Skipped,
                body: None,
                click_id: None,
                reason: Some(reason),
                dedupe: None,
            },
        })
    }
}

/// `holder` when it is the live record of a dedupe key at `at_ms`: the key (expiring at
/// `expires`) has not expired and the record (in `state`; `None`: purged) is neither
/// rejected nor dead, and it is not record `this`.
pub(crate) fn live_holder(
    holder: i64,
    expires: i64,
    state: Option<&str>,
    at_ms: i64,
    this: Option<i64>,
) -> Option<i64> {
    let dead = matches!(state, Some("rejected" | "dead"));
    (expires > at_ms && !dead && Some(holder) != this).then_some(holder)
}
