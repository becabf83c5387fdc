//! Claimed work: a record leased to this process until it is settled exactly once.
//!
//! Every settle method consumes the [`Claimed`], records the attempt and commits before it
//! returns, so an outcome is durable as soon as it is known. Dropping a `Claimed` without
//! settling it (a crash, a bug) leaves the record leased until `claimed_until`; then any
//! process claims it again.

use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{Connection, params};

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

impl ClaimRow {
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimRow> {
        let ts = |i: usize| -> rusqlite::Result<Timestamp> {
            let ms: Option<i64> = r.get(i)?;
            Ok(ms
                .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                .unwrap_or(Timestamp::UNIX_EPOCH))
        };
        let state: String = r.get(7)?;
        let kind: Option<String> = r.get(8)?;
        let change = match (
            kind.as_deref(),
            r.get::<_, Option<i64>>(9)?,
            r.get::<_, Option<String>>(10)?,
        ) {
            (Some("update"), Some(original), Some(key)) => Some(ChangeOf {
                original,
                key,
                lead_id: None,
            }),
            _ => None,
        };
        Ok(ClaimRow {
            change,
            id: r.get(0)?,
            source: r.get(1)?,
            click_id: r.get(2)?,
            body: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            attempts: r.get(4)?,
            received_at: ts(6)?,
            queued_at: ts(5).or_else(|_| ts(6))?,
            state: State::parse(&state).unwrap_or(State::Queued),
        })
    }
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

impl SettleRequest {
    /// Records the attempt and moves the record; `false` when the lease was lost (the
    /// attempt row is kept either way).
    pub(crate) fn apply(
        &self,
        c: &Connection,
        now: Timestamp,
        wakes: &mut bool,
    ) -> Result<bool, StoreError> {
        if let Some(a) = &self.attempt {
            let answer = redact_api_key(excerpt(&a.answer, ANSWER_EXCERPT_BYTES));
            c.prepare_cached(
                "INSERT INTO attempts (record_id, at, status, answer, duration_ms, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                self.id,
                a.at.as_millisecond(),
                a.status,
                answer,
                i64::try_from(a.duration.as_millis()).unwrap_or(i64::MAX),
                self.settle.outcome(),
            ])?;
        }
        let now = now.as_millisecond();
        let done = "attempts = attempts + 1, next_attempt_at = NULL, claimed_until = NULL,
                    claim_owner = NULL, updated_at = ?1";
        let free = "claimed_until = NULL, claim_owner = NULL, updated_at = ?1";
        let (sql, args): (String, Vec<rusqlite::types::Value>) = match &self.settle {
            Settle::Delivered {
                transaction_id,
                lead_id,
            } => (
                format!(
                    "state = 'delivered', transaction_id = ?4, lead_id = ?5, last_error = NULL,
                     {done}"
                ),
                vec![transaction_id.clone().into(), lead_id.clone().into()],
            ),
            Settle::DuplicateUpstream => (
                format!("state = 'duplicate_upstream', last_error = NULL, {done}"),
                vec![],
            ),
            Settle::Dead { reason } => (
                format!("state = 'dead', reason = ?4, last_error = ?4, {done}"),
                vec![reason.clone().into()],
            ),
            Settle::Retry { at, error } => (
                format!(
                    "state = 'retrying', attempts = attempts + 1, next_attempt_at = ?4,
                     last_error = ?5, {free}"
                ),
                vec![at.as_millisecond().into(), error.clone().into()],
            ),
            // Given back without counting: it waits for the resume, first in line.
            Settle::Paused { error } => (
                format!("state = 'paused', next_attempt_at = ?1, last_error = ?4, {free}"),
                vec![error.clone().into()],
            ),
            Settle::Release => (free.to_string(), vec![]),
        };
        let mut all: Vec<rusqlite::types::Value> =
            vec![now.into(), self.id.into(), self.owner.clone().into()];
        all.extend(args);
        let n = c
            .prepare_cached(&format!(
                "UPDATE records SET {sql} WHERE id = ?2 AND claim_owner = ?3"
            ))?
            .execute(rusqlite::params_from_iter(all))?;
        *wakes |= n > 0 && matches!(self.settle, Settle::Release | Settle::Paused { .. });
        if n > 0 {
            match &self.settle {
                // The conversion learns Scaleo's ids from its create; its waiting changes
                // may go now.
                Settle::Delivered {
                    transaction_id,
                    lead_id,
                } => {
                    let n = c
                        .prepare_cached(
                            "UPDATE dedupe SET lead_id = ?2, transaction_id = ?3
                             WHERE record_id = ?1 AND tracked IS NOT NULL
                               AND key = (SELECT dedupe_key FROM records
                                          WHERE id = ?1 AND kind IS NULL)",
                        )?
                        .execute(params![self.id, lead_id, transaction_id])?;
                    *wakes |= n > 0;
                }
                Settle::Retry { .. } | Settle::Paused { .. } | Settle::Release => {
                    super::change::fold_waiting(c, self.id, now)?;
                }
                Settle::DuplicateUpstream | Settle::Dead { .. } => *wakes = true,
            }
        }
        Ok(n > 0)
    }
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
