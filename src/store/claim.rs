//! Claimed work: a record leased to this process until it is settled exactly once.
//!
//! Every settle method consumes the [`Claimed`], records the attempt and commits before it
//! returns, so an outcome is durable as soon as it is known. Dropping a `Claimed` without
//! settling it (a crash, a bug) leaves the record leased until `claimed_until`; then any
//! process claims it again.

use std::time::Duration;

use jiff::Timestamp;

use super::{State, Store, StoreError};

/// How much of an answer is kept with an attempt.
pub const ANSWER_EXCERPT_BYTES: usize = 2048;

/// One try at forwarding, as the forwarder saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the request started.
    pub at: Timestamp,
    /// The HTTP status; `None` when no answer came (connect error, timeout).
    pub status: Option<u16>,
    /// The answer body (or the error text). The store keeps the first 2 KB and redacts any
    /// `api-key=...` in it; the forwarder redacts its own key before that.
    pub answer: String,
    pub duration: Duration,
}

/// A record leased to this process for forwarding.
#[must_use = "a claimed record must be settled or released"]
pub struct Claimed {
    store: Store,
    owner: String,
    row: ClaimRow,
}

/// The columns a claim returns.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRow {
    pub(crate) id: i64,
    pub(crate) source: String,
    pub(crate) click_id: Option<String>,
    pub(crate) body: String,
    pub(crate) attempts: u32,
    pub(crate) queued_at: Timestamp,
    pub(crate) received_at: Timestamp,
    pub(crate) state: State,
    /// Set for a change of a conversion (`kind = 'update'`).
    pub(crate) change: Option<ChangeOf>,
}

/// What a claimed change needs to be sent: its conversion and Scaleo's `lead_id`.
#[derive(Debug, Clone)]
pub struct ChangeOf {
    /// The record that created the conversion.
    pub original: i64,
    /// The conversion's dedupe key.
    pub(crate) key: String,
    /// Scaleo's `lead_id` as it gave it (JSON text), when known.
    pub lead_id: Option<String>,
}

/// How a claim ends.
#[derive(Debug, Clone)]
pub(crate) enum Settle {
    Delivered {
        transaction_id: Option<String>,
        lead_id: Option<String>,
    },
    DuplicateUpstream,
    Retry {
        at: Timestamp,
        error: String,
    },
    Dead {
        reason: String,
    },
    Paused {
        error: String,
    },
    Release,
}

impl Settle {
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Settle::Delivered { .. } => "delivered",
            Settle::DuplicateUpstream => "duplicate_upstream",
            Settle::Retry { .. } => "retry",
            Settle::Dead { .. } => "dead",
            Settle::Paused { .. } => "paused",
            Settle::Release => "released",
        }
    }
}

/// A settle for the writer thread.
pub(crate) struct SettleRequest {
    pub(crate) id: i64,
    pub(crate) owner: String,
    pub(crate) settle: Settle,
    pub(crate) attempt: Option<Attempt>,
}

impl Claimed {
    pub(crate) fn new(store: Store, owner: String, row: ClaimRow) -> Claimed {
        Claimed { store, owner, row }
    }

    /// The record id.
    pub fn id(&self) -> i64 {
        self.row.id
    }

    /// The source id.
    pub fn source(&self) -> &str {
        &self.row.source
    }

    /// The click id of the mapped body.
    pub fn click_id(&self) -> Option<&str> {
        self.row.click_id.as_deref()
    }

    /// The mapped JSON body, exactly as stored (send it as is).
    pub fn body(&self) -> &str {
        &self.row.body
    }

    /// Attempts counted so far by the retry schedule (0 for a fresh record).
    pub fn attempts(&self) -> u32 {
        self.row.attempts
    }

    /// Start of the age bound: first receive, or the last replay.
    pub fn queued_at(&self) -> Timestamp {
        self.row.queued_at
    }

    /// When the postback was first received.
    pub fn received_at(&self) -> Timestamp {
        self.row.received_at
    }

    /// The state it was claimed in (`queued`, `paused` or `retrying`).
    pub fn state(&self) -> State {
        self.row.state
    }

    /// Scaleo took it: `delivered`, with its `transaction_id` and `lead_id` (JSON text as
    /// Scaleo gave it).
    pub async fn delivered(
        self,
        attempt: Attempt,
        transaction_id: Option<String>,
        lead_id: Option<String>,
    ) -> Result<(), StoreError> {
        let settle = Settle::Delivered {
            transaction_id,
            lead_id,
        };
        self.settle(settle, Some(attempt)).await
    }

    /// For a change of a conversion: the original and Scaleo's `lead_id`.
    pub fn change(&self) -> Option<&ChangeOf> {
        self.row.change.as_ref()
    }

    /// Scaleo already has it ("Multiple Conversions are not Allowed"): done, never retried.
    pub async fn duplicate_upstream(self, attempt: Attempt) -> Result<(), StoreError> {
        self.settle(Settle::DuplicateUpstream, Some(attempt)).await
    }

    /// Try again at `at` (counts one attempt of the schedule); `error` is kept as last error.
    pub async fn retry(
        self,
        attempt: Attempt,
        at: Timestamp,
        error: String,
    ) -> Result<(), StoreError> {
        self.settle(Settle::Retry { at, error }, Some(attempt))
            .await
    }

    /// Give up: `dead`, with the reason (the answer stays in the attempt).
    pub async fn dead(self, attempt: Attempt, reason: String) -> Result<(), StoreError> {
        self.settle(Settle::Dead { reason }, Some(attempt)).await
    }

    /// Give up without an attempt (a change whose `lead_id` cannot be known): `dead`.
    pub async fn give_up(self, reason: String) -> Result<(), StoreError> {
        self.settle(Settle::Dead { reason }, None).await
    }

    /// Upstream refused the key: the record waits, not counted as a retry, for the resume.
    pub async fn paused(self, attempt: Attempt, error: String) -> Result<(), StoreError> {
        self.settle(Settle::Paused { error }, Some(attempt)).await
    }

    /// Give the record back unsettled and untouched (shutdown): claimable again at once.
    pub async fn release(self) -> Result<(), StoreError> {
        self.settle(Settle::Release, None).await
    }

    async fn settle(self, settle: Settle, attempt: Option<Attempt>) -> Result<(), StoreError> {
        let id = self.row.id;
        let req = SettleRequest {
            id,
            owner: self.owner,
            settle,
            attempt,
        };
        let applied = self.store.settle(req).await?;
        if applied {
            Ok(())
        } else {
            Err(StoreError::LeaseLost(id))
        }
    }
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.row.id)
            .field("source", &self.row.source)
            .field("attempts", &self.row.attempts)
            .finish_non_exhaustive()
    }
}

/// The first `max` bytes of `text`, cut at a character boundary.
pub fn excerpt(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Replaces the value of every `api-key=` / `api_key=` (any case) with `[redacted]`.
pub fn redact_api_key(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(pos) = find_key(&lower[from..]).map(|p| p + from) {
        let value_start = pos + "api-key=".len();
        let value_end = text[value_start..]
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c == '<' || c.is_whitespace())
            .map_or(text.len(), |e| value_start + e);
        out.push_str(&text[rest..value_start]);
        out.push_str("[redacted]");
        rest = value_end;
        from = value_end.max(value_start);
    }
    out.push_str(&text[rest..]);
    out
}

fn find_key(lower: &str) -> Option<usize> {
    match (lower.find("api-key="), lower.find("api_key=")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_key_in_any_case() {
        let t = "POST /x?api-key=SECRET&a=1 and API_KEY=other\" done api-key=";
        let r = redact_api_key(t);
        assert!(!r.contains("SECRET") && !r.contains("other"), "{r}");
        assert_eq!(
            r,
            "POST /x?api-key=[redacted]&a=1 and API_KEY=[redacted]\" done api-key=[redacted]"
        );
    }

    #[test]
    fn excerpt_cuts_at_char_boundary() {
        assert_eq!(excerpt("héllo", 2), "h");
        assert_eq!(excerpt("abc", 10), "abc");
    }
}
