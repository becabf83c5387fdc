//! The console's aggregate reads on PostgreSQL (see `store::stats` for what they answer).

use jiff::Timestamp;

use super::super::StoreError;
use super::super::stats::{ReasonCount, SourceActivity, split_counts};
use super::super::types::State;
use super::{PgStore, ts};

impl PgStore {
    pub(crate) async fn activity(
        &self,
        sources: &[String],
        hour: Timestamp,
        day: Timestamp,
    ) -> Result<Vec<SourceActivity>, StoreError> {
        let client = self.pool.get().await?;
        let last_stmt = client
            .prepare_cached("SELECT MAX(received_at) FROM records WHERE source = $1")
            .await?;
        let count_stmt = client
            .prepare_cached(
                "SELECT state, COUNT(*) FILTER (WHERE received_at >= $3), COUNT(*) FROM records
                 WHERE source = $1 AND received_at >= $2 GROUP BY state",
            )
            .await?;
        let (h, d) = (hour.as_millisecond(), day.as_millisecond());
        let mut out = Vec::with_capacity(sources.len());
        for source in sources {
            let last: Option<i64> = client.query_one(&last_stmt, &[source]).await?.try_get(0)?;
            let rows = client.query(&count_stmt, &[source, &d, &h]).await?;
            let mut counts = Vec::new();
            for r in rows {
                let name: &str = r.try_get(0)?;
                let s = State::parse(name)
                    .ok_or_else(|| StoreError::Corrupt(format!("state {name:?}")))?;
                let (in_hour, in_day): (i64, i64) = (r.try_get(1)?, r.try_get(2)?);
                counts.push((s, in_hour.unsigned_abs(), in_day.unsigned_abs()));
            }
            let (hour, day) = split_counts(counts);
            out.push(SourceActivity {
                source: source.clone(),
                last: last.map(ts).transpose()?,
                hour,
                day,
            });
        }
        Ok(out)
    }

    pub(crate) async fn reason_groups(
        &self,
        of: State,
        scan: usize,
    ) -> Result<Vec<ReasonCount>, StoreError> {
        let client = self.pool.get().await?;
        let scan = i64::try_from(scan).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT source, reason, COUNT(*) FROM (
                     SELECT source, COALESCE(reason, '') AS reason FROM records
                     WHERE state = $1 ORDER BY received_at DESC LIMIT $2) AS newest
                 GROUP BY source, reason ORDER BY 3 DESC, 1, 2",
                &[&of.as_str(), &scan],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(2)?;
                Ok(ReasonCount {
                    source: r.try_get(0)?,
                    reason: r.try_get(1)?,
                    count: n.unsigned_abs(),
                })
            })
            .collect()
    }

    pub(crate) async fn reason_ids(
        &self,
        of: State,
        source: &str,
        reason: &str,
        scan: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let client = self.pool.get().await?;
        let scan = i64::try_from(scan).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT id FROM (
                     SELECT id, source, COALESCE(reason, '') AS reason FROM records
                     WHERE state = $1 ORDER BY received_at DESC LIMIT $2) AS newest
                 WHERE source = $3 AND reason = $4 ORDER BY id DESC",
                &[&of.as_str(), &scan, &source, &reason],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }
}
