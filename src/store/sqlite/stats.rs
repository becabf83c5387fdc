//! Aggregate reads on SQLite for the operator console and the metrics.
//!
//! Every query stays bounded with millions of records: per-source reads walk the
//! `records_source_received` index from a start time (or take its maximum), and reason
//! groups look only at the newest `scan` records of one state through
//! `records_state_received`.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension};

use super::super::StoreError;
use super::super::stats::*;
use super::super::types::State;

fn ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| StoreError::Corrupt(format!("time {ms}: {e}")))
}

fn state(name: &str) -> Result<State, StoreError> {
    State::parse(name).ok_or_else(|| StoreError::Corrupt(format!("state {name:?}")))
}

pub(crate) fn activity(
    c: &Connection,
    sources: &[String],
    hour: Timestamp,
    day: Timestamp,
) -> Result<Vec<SourceActivity>, StoreError> {
    let mut last_stmt =
        c.prepare_cached("SELECT MAX(received_at) FROM records WHERE source = ?1")?;
    let mut count_stmt = c.prepare_cached(
        "SELECT state, SUM(received_at >= ?3), COUNT(*) FROM records
         WHERE source = ?1 AND received_at >= ?2 GROUP BY state",
    )?;
    let mut out = Vec::with_capacity(sources.len());
    for source in sources {
        let last: Option<i64> = last_stmt
            .query_row([source], |r| r.get(0))
            .optional()?
            .flatten();
        let mut rows = count_stmt.query(rusqlite::params![
            source,
            day.as_millisecond(),
            hour.as_millisecond()
        ])?;
        let mut counts = Vec::new();
        while let Some(r) = rows.next()? {
            counts.push((
                state(&r.get::<_, String>(0)?)?,
                r.get::<_, i64>(1)?.unsigned_abs(),
                r.get::<_, i64>(2)?.unsigned_abs(),
            ));
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

pub(crate) fn reason_groups(
    c: &Connection,
    of: State,
    scan: usize,
) -> Result<Vec<ReasonCount>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT source, reason, COUNT(*) FROM (
             SELECT source, COALESCE(reason, '') AS reason FROM records
             WHERE state = ?1 ORDER BY received_at DESC LIMIT ?2)
         GROUP BY source, reason ORDER BY 3 DESC, 1, 2",
    )?;
    let scan = i64::try_from(scan).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![of.as_str(), scan], |r| {
        Ok(ReasonCount {
            source: r.get(0)?,
            reason: r.get(1)?,
            count: r.get::<_, i64>(2)?.unsigned_abs(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn reason_ids(
    c: &Connection,
    of: State,
    source: &str,
    reason: &str,
    scan: usize,
) -> Result<Vec<i64>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id FROM (
             SELECT id, source, COALESCE(reason, '') AS reason FROM records
             WHERE state = ?1 ORDER BY received_at DESC LIMIT ?2)
         WHERE source = ?3 AND reason = ?4 ORDER BY id DESC",
    )?;
    let scan = i64::try_from(scan).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![of.as_str(), scan, source, reason], |r| {
        r.get(0)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migrated store file (WAL needs a file), kept while the directory lives.
    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("relay.db")).unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        (dir, c)
    }

    fn add(c: &Connection, source: &str, state: State, at: i64, reason: Option<&str>) {
        c.execute(
            "INSERT INTO records (source, state, received_at, updated_at, method, path, query, reason)
             VALUES (?1, ?2, ?3, ?3, 'GET', '/', '', ?4)",
            rusqlite::params![source, state.as_str(), at, reason],
        )
        .unwrap();
    }

    fn plan(c: &Connection, sql: &str) -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn activity_counts_the_hour_and_the_day_by_state_and_finds_the_last_postback() {
        let (_dir, c) = db();
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        add(
            &c,
            "shop",
            State::Delivered,
            t(-90_000).as_millisecond(),
            None,
        );
        add(
            &c,
            "shop",
            State::Delivered,
            t(-7_000).as_millisecond(),
            None,
        );
        add(
            &c,
            "shop",
            State::Rejected,
            t(-60).as_millisecond(),
            Some("no click"),
        );
        add(&c, "shop", State::Delivered, t(-30).as_millisecond(), None);
        let got = activity(&c, &["shop".into(), "quiet".into()], t(-3600), t(-86_400)).unwrap();
        assert_eq!(got[0].last, Some(t(-30)));
        assert_eq!(
            got[0].hour,
            vec![(State::Rejected, 1), (State::Delivered, 1)]
        );
        assert_eq!(
            got[0].day,
            vec![(State::Rejected, 1), (State::Delivered, 2)]
        );
        assert_eq!(
            got[1],
            SourceActivity {
                source: "quiet".into(),
                last: None,
                hour: vec![],
                day: vec![],
            }
        );
    }

    #[test]
    fn reason_groups_count_only_the_newest_records_and_give_their_ids() {
        let (_dir, c) = db();
        for at in 0..5 {
            add(&c, "shop", State::Rejected, at, Some("no click"));
        }
        add(&c, "shop", State::Rejected, 10, Some("bad amount"));
        add(&c, "other", State::Rejected, 11, None);
        add(&c, "shop", State::Dead, 12, Some("no click"));
        let all = reason_groups(&c, State::Rejected, 100).unwrap();
        assert_eq!(
            all.iter()
                .map(|g| (g.source.as_str(), g.reason.as_str(), g.count))
                .collect::<Vec<_>>(),
            vec![
                ("shop", "no click", 5),
                ("other", "", 1),
                ("shop", "bad amount", 1)
            ]
        );
        let newest = reason_groups(&c, State::Rejected, 4).unwrap();
        assert_eq!(newest.iter().map(|g| g.count).sum::<u64>(), 4);
        assert_eq!(
            reason_ids(&c, State::Rejected, "shop", "no click", 100).unwrap(),
            vec![5, 4, 3, 2, 1]
        );
        assert_eq!(
            reason_ids(&c, State::Rejected, "other", "", 100).unwrap(),
            vec![7]
        );
    }

    #[test]
    fn the_queries_read_through_indexes_not_the_table() {
        let (_dir, c) = db();
        let last = plan(
            &c,
            "SELECT MAX(received_at) FROM records WHERE source = 'a'",
        );
        assert!(last.contains("records_source_received"), "{last}");
        let counts = plan(
            &c,
            "SELECT state, COUNT(*) FROM records WHERE source = 'a' AND received_at >= 5 GROUP BY state",
        );
        assert!(counts.contains("records_source_received"), "{counts}");
        let groups = plan(
            &c,
            "SELECT source, reason, COUNT(*) FROM (SELECT source, COALESCE(reason, '') AS reason FROM records
             WHERE state = 'dead' ORDER BY received_at DESC LIMIT 10) GROUP BY source, reason",
        );
        assert!(groups.contains("records_state_received"), "{groups}");
        assert!(!groups.contains("SCAN records"), "{groups}");
    }
}
