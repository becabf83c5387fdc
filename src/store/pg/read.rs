//! Reads on PostgreSQL for the admin API, the CLI and the metrics.

use std::time::Duration;

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::super::StoreError;
use super::super::change::{Conversion, Preview, parse_map};
use super::super::ops::live_holder;
use super::super::read::{
    AttemptView, CHAIN_MAX, ConversionView, Cursor, Filter, RecordView, Summary,
};
use super::super::types::NewState;
use super::super::types::{PauseReason, PauseScope, Paused, RawPostback, State};
use super::{PgStore, ts};

const SUMMARY_COLS: &str = "id, source, state, click_id, received_at";

/// The states of records waiting to be forwarded.
const PENDING: &str = "state IN ('queued', 'retrying', 'paused')";

fn state(name: &str) -> Result<State, StoreError> {
    State::parse(name).ok_or_else(|| StoreError::Corrupt(format!("state {name:?}")))
}

fn summary(r: &Row) -> Result<Summary, StoreError> {
    Ok(Summary {
        id: r.try_get(0)?,
        source: r.try_get(1)?,
        state: state(r.try_get(2)?)?,
        click_id: r.try_get(3)?,
        received_at: ts(r.try_get(4)?)?,
    })
}

impl PgStore {
    /// The persisted pauses, oldest first.
    pub(crate) async fn paused(&self) -> Result<Vec<Paused>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT scope, reason, since FROM paused ORDER BY since",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let reason: &str = r.try_get(1)?;
                Ok(Paused {
                    scope: PauseScope::from_key(r.try_get(0)?),
                    reason: PauseReason::parse(reason)
                        .ok_or_else(|| StoreError::Corrupt(format!("pause reason {reason:?}")))?,
                    since: ts(r.try_get(2)?)?,
                })
            })
            .collect()
    }

    /// One record with its attempts.
    pub(crate) async fn get(&self, id: i64) -> Result<Option<RecordView>, StoreError> {
        let client = self.pool.get().await?;
        let Some(r) = client
            .query_opt(
                &format!(
                    "SELECT {SUMMARY_COLS}, method, path, query, client_ip, user_agent, referer,
                       body, reason, transaction_id, original_id, attempts, next_attempt_at,
                       last_error, kind, lead_id, dedupe_key, repeats
                     FROM records WHERE id = $1"
                ),
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let summary = summary(&r)?;
        let body = match r.try_get::<_, Option<&str>>(11)? {
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| StoreError::Corrupt(format!("body: {e}")))?,
            ),
            None => None,
        };
        let next_attempt_at = r.try_get::<_, Option<i64>>(16)?.map(ts).transpose()?;
        let attempt_count: i32 = r.try_get(15)?;
        let raw = RawPostback {
            method: r.try_get(5)?,
            path: r.try_get(6)?,
            query: r.try_get(7)?,
            client_ip: r.try_get(8)?,
            user_agent: r.try_get(9)?,
            referer: r.try_get(10)?,
            received_at: summary.received_at,
        };
        let conversion = match r.try_get::<_, Option<&str>>(20)? {
            Some(key) => self.conversion(&client, key).await?,
            None => None,
        };
        let mut view = RecordView {
            is_change: r.try_get::<_, Option<&str>>(18)? == Some("update"),
            lead_id: r.try_get(19)?,
            repeats: u32::try_from(r.try_get::<_, i64>(21)?).unwrap_or(u32::MAX),
            conversion,
            summary,
            raw,
            body,
            reason: r.try_get(12)?,
            transaction_id: r.try_get(13)?,
            original_id: r.try_get(14)?,
            attempt_count: u32::try_from(attempt_count).unwrap_or(0),
            next_attempt_at,
            last_error: r.try_get(17)?,
            attempts: Vec::new(),
        };
        let rows = client
            .query(
                "SELECT at, status, answer, duration_ms, outcome FROM attempts
                 WHERE record_id = $1 ORDER BY id",
                &[&id],
            )
            .await?;
        for r in rows {
            let status: Option<i32> = r.try_get(1)?;
            let duration: i64 = r.try_get(3)?;
            view.attempts.push(AttemptView {
                at: ts(r.try_get(0)?)?,
                status: status.and_then(|s| u16::try_from(s).ok()),
                answer: r.try_get(2)?,
                duration: Duration::from_millis(duration.max(0).unsigned_abs()),
                outcome: r.try_get(4)?,
            });
        }
        Ok(Some(view))
    }

    /// Summaries matching `f`, newest first (see `Store::list`).
    pub(crate) async fn list(
        &self,
        f: &Filter,
        limit: usize,
        cursor: Option<Cursor>,
    ) -> Result<(Vec<Summary>, Option<Cursor>), StoreError> {
        let limit = limit.max(1);
        // One more than asked tells whether a next page exists.
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let cursor = cursor.map(|Cursor(id)| id);
        let state_name = f.state.map(State::as_str);
        let since = f.since.map(|t| t.as_millisecond());
        let until = f.until.map(|t| t.as_millisecond());
        let params: [&(dyn ToSql + Sync); 8] = [
            &cursor,
            &f.source,
            &state_name,
            &f.click_id,
            &since,
            &until,
            &fetch,
            &f.conversion,
        ];
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {SUMMARY_COLS} FROM records
                 WHERE ($1::bigint IS NULL OR id < $1)
                   AND ($2::text IS NULL OR source = $2)
                   AND ($3::text IS NULL OR state = $3)
                   AND ($4::text IS NULL OR click_id = $4)
                   AND ($5::bigint IS NULL OR received_at >= $5)
                   AND ($6::bigint IS NULL OR received_at < $6)
                   AND ($8::bigint IS NULL OR id = $8 OR original_id = $8)
                 ORDER BY id DESC LIMIT $7"
            ))
            .await?;
        let rows = client.query(&stmt, &params).await?;
        let mut out = rows.iter().map(summary).collect::<Result<Vec<_>, _>>()?;
        let next = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|s| Cursor(s.id))
        } else {
            None
        };
        Ok((out, next))
    }

    /// How many records are in each state.
    pub(crate) async fn counts_by_state(&self) -> Result<Vec<(State, u64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT state, COUNT(*) FROM records GROUP BY state", &[])
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let n: i64 = r.try_get(1)?;
            out.push((state(r.try_get(0)?)?, n.unsigned_abs()));
        }
        out.sort();
        Ok(out)
    }

    /// The sources with records waiting to be forwarded.
    pub(crate) async fn pending_sources(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT DISTINCT source FROM records WHERE {PENDING} ORDER BY source"),
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// The receive time of the oldest record waiting to be forwarded.
    pub(crate) async fn oldest_queued(&self) -> Result<Option<jiff::Timestamp>, StoreError> {
        let client = self.pool.get().await?;
        let oldest: Option<i64> = client
            .query_one(
                &format!("SELECT MIN(received_at) FROM records WHERE {PENDING}"),
                &[],
            )
            .await?
            .try_get(0)?;
        oldest.map(ts).transpose()
    }

    /// What a postback would be to the stored conversions (`explain`); reads only, locks
    /// nothing.
    pub(crate) async fn preview(&self, state: &NewState) -> Result<Option<Preview>, StoreError> {
        let now = jiff::Timestamp::now().as_millisecond();
        let client = self.pool.get().await?;
        let cols = "SELECT key, record_id, tracked, lead_id FROM dedupe
                    WHERE tracked IS NOT NULL AND expires_at > $1";
        let (row, body, transitions) = match state {
            NewState::Queued {
                dedupe: Some(d),
                updates: None,
                ..
            } => {
                let held = client
                    .query_opt(
                        "SELECT d.record_id, d.expires_at, r.state FROM dedupe d
                         LEFT JOIN records r ON r.id = d.record_id WHERE d.key = $1",
                        &[&d.key],
                    )
                    .await?;
                let original = match held {
                    Some(row) => {
                        let state: Option<String> = row.try_get(2)?;
                        live_holder(
                            row.try_get(0)?,
                            row.try_get(1)?,
                            state.as_deref(),
                            now,
                            None,
                        )
                    }
                    None => None,
                };
                return Ok(original.map(Preview::duplicate_of));
            }
            NewState::Queued {
                body,
                dedupe: Some(d),
                updates: Some(transitions),
                ..
            } => {
                let sql = format!("{cols} AND key = $2");
                (
                    client.query_opt(&sql, &[&now, &d.key]).await?,
                    body,
                    transitions,
                )
            }
            NewState::Change {
                body,
                lookup,
                transitions,
                ..
            } => {
                let sql = format!(
                    "{cols} AND source = $2 AND ($3::text IS NULL OR order_id = $3)
                       AND ($4::text IS NULL OR click_id = $4)
                     ORDER BY expires_at DESC LIMIT 1"
                );
                let params: [&(dyn ToSql + Sync); 4] =
                    [&now, &lookup.of, &lookup.order_id, &lookup.click_id];
                match client.query_opt(&sql, &params).await? {
                    Some(row) => (Some(row), body, transitions),
                    None => return Ok(Some(Preview::unmatched(lookup))),
                }
            }
            _ => return Ok(None),
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let key: String = row.try_get(0)?;
        let conv = Conversion::of(&key, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?)?;
        Ok(conv.map(|c| Preview::of(&c, body, transitions)))
    }

    /// The tracked conversion of dedupe `key`, with its chain (as `read::conversion`).
    async fn conversion(
        &self,
        client: &super::Object,
        key: &str,
    ) -> Result<Option<ConversionView>, StoreError> {
        let Some(row) = client
            .query_opt(
                "SELECT record_id, tracked, lead_id, transaction_id, expires_at FROM dedupe
                 WHERE key = $1 AND tracked IS NOT NULL",
                &[&key],
            )
            .await?
        else {
            return Ok(None);
        };
        let original: i64 = row.try_get(0)?;
        let current: &str = row.try_get(1)?;
        let rows = client
            .query(
                &format!(
                    "SELECT {SUMMARY_COLS} FROM records WHERE original_id = $1 ORDER BY id LIMIT $2"
                ),
                &[&original, &(CHAIN_MAX as i64)],
            )
            .await?;
        Ok(Some(ConversionView {
            original,
            current: parse_map(current, "conversion state")?,
            lead_id: row.try_get(2)?,
            transaction_id: row.try_get(3)?,
            expires_at: ts(row.try_get(4)?)?,
            chain: rows.iter().map(summary).collect::<Result<_, _>>()?,
        }))
    }
}
