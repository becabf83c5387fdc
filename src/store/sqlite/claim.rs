//! Claims and settles on SQLite: a claimed row read back, and a settle's SQL.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};

use super::super::change::Ended;
use super::super::claim::{
    ANSWER_EXCERPT_BYTES, ChangeOf, ClaimRow, Settle, SettleRequest, excerpt, redact_api_key,
};
use super::super::{State, StoreError};

impl ClaimRow {
    /// A claimed row as the claim's `RETURNING` gives it. A row the relay did not write as it
    /// would (an unknown state, a missing or impossible time, a create without a body) is an
    /// error naming the record, never sent as a guess.
    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimRow> {
        let id: i64 = r.get(0)?;
        let corrupt = |i: usize, what: String| {
            rusqlite::Error::FromSqlConversionFailure(
                i,
                rusqlite::types::Type::Text,
                format!("record {id}: {what}").into(),
            )
        };
        let ts = |i: usize| -> rusqlite::Result<Option<Timestamp>> {
            let ms: Option<i64> = r.get(i)?;
            ms.map(|ms| {
                Timestamp::from_millisecond(ms).map_err(|e| corrupt(i, format!("time {ms}: {e}")))
            })
            .transpose()
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
        let received_at = ts(6)?.ok_or_else(|| corrupt(6, "no received_at".into()))?;
        Ok(ClaimRow {
            change,
            id,
            source: r.get(1)?,
            click_id: r.get(2)?,
            body: r
                .get::<_, Option<String>>(3)?
                .ok_or_else(|| corrupt(3, "no body to send".into()))?,
            attempts: r.get(4)?,
            received_at,
            // Rows stored before `queued_at` existed count their age from their receipt.
            queued_at: ts(5)?.unwrap_or(received_at),
            state: State::parse(&state)
                .ok_or_else(|| corrupt(7, format!("unknown state {state:?}")))?,
        })
    }
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
        // `Some(whether it is a change of a conversion)` when the claim still owned it.
        let moved: Option<bool> = c
            .prepare_cached(&format!(
                "UPDATE records SET {sql} WHERE id = ?2 AND claim_owner = ?3
                 RETURNING kind IS 'update'"
            ))?
            .query_row(rusqlite::params_from_iter(all), |r| r.get(0))
            .optional()?;
        let n = usize::from(moved.is_some());
        *wakes |= n > 0 && matches!(self.settle, Settle::Release | Settle::Paused { .. });
        if let Some(is_change) = moved {
            match &self.settle {
                // The conversion learns Scaleo's ids from its create; its waiting changes
                // may go now.
                Settle::Delivered {
                    transaction_id,
                    lead_id,
                } => {
                    let unsettled: Option<bool> = c
                        .prepare_cached(
                            "UPDATE dedupe SET lead_id = ?2, transaction_id = ?3
                             WHERE record_id = ?1 AND tracked IS NOT NULL
                               AND key = (SELECT dedupe_key FROM records
                                          WHERE id = ?1 AND kind IS NULL)
                             RETURNING settled IS NOT NULL",
                        )?
                        .query_row(params![self.id, lead_id, transaction_id], |r| r.get(0))
                        .optional()?;
                    *wakes |= unsettled.is_some();
                    // A create with changes on its way, or a change: the memory follows (see
                    // `change::ended`); a create of a conversion with none costs nothing more.
                    if is_change || unsettled == Some(true) {
                        super::change::ended(c, self.id, Ended::Delivered, now)?;
                    }
                }
                Settle::Retry { .. } | Settle::Paused { .. } | Settle::Release => {
                    super::change::fold_waiting(c, self.id, now)?;
                }
                // What was on its way with it is taken back (see `store::change`).
                Settle::DuplicateUpstream | Settle::Dead { .. } => {
                    *wakes = true;
                    super::change::ended(c, self.id, Ended::Refused, now)?;
                }
            }
        }
        Ok(n > 0)
    }
}
