//! How an update-only postback finds its conversion on SQLite, and the indexes that make it
//! a search instead of a scan.
//!
//! A conversion's dedupe row keeps its click id and order id. An update-only source (a refund
//! or chargeback URL) finds the conversions of the source it names by one of them. Indexing
//! both for every conversion would cost every insert two more random B-tree pages in the WAL
//! (measured: 5.9 pages written per postback against 3.2 without them), paid by every source
//! whether a refund URL points at it or not. So the writer keeps one partial index per
//! (source, field) that the loaded rules look up ([`sync`]), named `dedupe_lookup:FIELD:SOURCE`,
//! built when a rule first needs it and dropped when no rule does. The lookup query names the
//! source as a literal ([`find_sql`]) so that SQLite can match it to that source's index.
//! Without the index the same query is still right, only slower.

use std::collections::BTreeSet;

use jiff::Timestamp;
use rusqlite::Connection;

use crate::lifecycle::{Lookup, LookupIndex};

use super::super::StoreError;
use super::super::lookup::{LookupSync, PREFIX, create_sql, ident, index_name, literal};

/// Builds the lookup indexes in `wanted` that are missing and drops those no longer wanted.
/// Runs on the writer, inside its group's transaction: building one reads every dedupe row
/// (about 0.3 s per 100,000 conversions here), during which other writes wait.
#[allow(clippy::ptr_arg)] // the writer's operation signature takes its request by reference
pub(crate) fn sync(
    wanted: &Vec<LookupIndex>,
    c: &Connection,
    _: Timestamp,
    _: &mut bool,
) -> Result<LookupSync, StoreError> {
    let have: BTreeSet<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE ?1")?
        .query_map([format!("{PREFIX}%")], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut want = BTreeSet::new();
    let mut done = LookupSync::default();
    for ix in wanted {
        let name = index_name(ix)?;
        if !have.contains(&name) {
            c.execute_batch(&create_sql("CREATE INDEX", ix)?)?;
            done.built.push(name.clone());
        }
        want.insert(name);
    }
    for name in have.difference(&want) {
        c.execute_batch(&format!("DROP INDEX {}", ident(name)))?;
        done.dropped.push(name.clone());
    }
    Ok(done)
}

/// The query that finds the newest live conversion matching `lookup` (parameters: `?1` the
/// time now in unix ms, then the order id and the click id that the lookup has, in that
/// order). Only the fields the lookup has are compared, and the source is a literal, so a
/// lookup index of that source serves it.
pub(crate) fn find_sql(lookup: &Lookup) -> String {
    let mut sql = format!(
        "SELECT key FROM dedupe WHERE source = {} AND tracked IS NOT NULL AND expires_at > ?1",
        literal(&lookup.of)
    );
    let mut n = 1;
    for (col, value) in [
        ("order_id", &lookup.order_id),
        ("click_id", &lookup.click_id),
    ] {
        if value.is_some() {
            n += 1;
            sql.push_str(&format!(" AND {col} = ?{n}"));
        }
    }
    sql.push_str(" ORDER BY expires_at DESC LIMIT 1");
    sql
}

/// The parameters of [`find_sql`] after the time.
pub(crate) fn find_params(lookup: &Lookup) -> impl Iterator<Item = &String> {
    [&lookup.order_id, &lookup.click_id]
        .into_iter()
        .filter_map(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::schema;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("relay.db")).unwrap();
        schema::configure(&c).unwrap();
        schema::migrate(&mut c).unwrap();
        (dir, c)
    }

    /// A tracked conversion of `source` remembered until `expires`.
    fn conversion(c: &Connection, key: &str, source: &str, click: &str, order: &str, expires: i64) {
        c.execute(
            "INSERT INTO dedupe (key, record_id, expires_at, source, click_id, order_id, tracked)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, '{}')",
            rusqlite::params![key, expires, source, click, order],
        )
        .unwrap();
    }

    fn index(source: &str, field: &'static str) -> LookupIndex {
        LookupIndex {
            source: source.into(),
            field,
        }
    }

    fn lookup(of: &str, click: Option<&str>, order: Option<&str>) -> Lookup {
        Lookup {
            of: of.into(),
            click_id: click.map(Into::into),
            order_id: order.map(Into::into),
        }
    }

    fn plan(c: &Connection, l: &Lookup) -> String {
        let sql = format!("EXPLAIN QUERY PLAN {}", find_sql(l));
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&0_i64];
        params.extend(find_params(l).map(|v| v as &dyn rusqlite::ToSql));
        let mut stmt = c.prepare(&sql).unwrap();
        let rows = stmt
            .query_map(params.as_slice(), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    fn find(c: &Connection, l: &Lookup, now: i64) -> Option<String> {
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&now];
        params.extend(find_params(l).map(|v| v as &dyn rusqlite::ToSql));
        c.query_row(&find_sql(l), params.as_slice(), |r| r.get(0))
            .ok()
    }

    fn indexes(c: &Connection) -> Vec<String> {
        let mut stmt = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'dedupe' ORDER BY name")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn a_new_store_indexes_no_conversion_for_lookups_until_a_rule_needs_it() {
        let (_dir, c) = store();
        assert_eq!(indexes(&c), ["dedupe_expires"]);
    }

    #[test]
    fn each_wanted_lookup_gets_its_own_index_and_the_query_searches_it() {
        let (_dir, c) = store();
        for i in 0..200 {
            conversion(
                &c,
                &format!("k{i}"),
                "acme",
                &format!("c{i}"),
                &format!("o{i}"),
                10_000,
            );
            conversion(
                &c,
                &format!("b{i}"),
                "beta",
                &format!("c{i}"),
                &format!("o{i}"),
                10_000,
            );
        }
        let wanted = vec![index("acme", "adv_order_id"), index("beta", "click_id")];
        let done = sync(&wanted, &c, Timestamp::UNIX_EPOCH, &mut false).unwrap();
        assert_eq!(
            done.built,
            ["dedupe_lookup:order_id:acme", "dedupe_lookup:click_id:beta"]
        );
        let by_order = lookup("acme", None, Some("o7"));
        assert!(
            plan(&c, &by_order).contains("USING INDEX dedupe_lookup:order_id:acme (order_id=?"),
            "{}",
            plan(&c, &by_order)
        );
        assert_eq!(find(&c, &by_order, 0).as_deref(), Some("k7"));
        let by_click = lookup("beta", Some("c9"), None);
        assert!(
            plan(&c, &by_click).contains("USING INDEX dedupe_lookup:click_id:beta (click_id=?"),
            "{}",
            plan(&c, &by_click)
        );
        assert_eq!(find(&c, &by_click, 0).as_deref(), Some("b9"));
        // Both fields: the order index serves, the click id must match too.
        assert_eq!(
            find(&c, &lookup("acme", Some("c7"), Some("o7")), 0).as_deref(),
            Some("k7")
        );
        assert_eq!(find(&c, &lookup("acme", Some("c8"), Some("o7")), 0), None);
        // Expired conversions are not found.
        assert_eq!(find(&c, &by_order, 10_000), None);
    }

    #[test]
    fn a_lookup_without_its_index_is_still_answered() {
        let (_dir, c) = store();
        conversion(&c, "k1", "acme", "c1", "o1", 5_000);
        conversion(&c, "k2", "acme", "c2", "o1", 9_000);
        // The newest live one wins when an order id repeats.
        assert_eq!(
            find(&c, &lookup("acme", None, Some("o1")), 0).as_deref(),
            Some("k2")
        );
        assert_eq!(find(&c, &lookup("acme", None, Some("o1")), 9_000), None);
    }

    #[test]
    fn an_index_no_rule_wants_is_dropped_and_a_second_sync_changes_nothing() {
        let (_dir, c) = store();
        let wanted = vec![index("acme", "adv_order_id")];
        sync(&wanted, &c, Timestamp::UNIX_EPOCH, &mut false).unwrap();
        let again = sync(&wanted, &c, Timestamp::UNIX_EPOCH, &mut false).unwrap();
        assert_eq!(again, LookupSync::default());
        let done = sync(&vec![], &c, Timestamp::UNIX_EPOCH, &mut false).unwrap();
        assert_eq!(done.dropped, ["dedupe_lookup:order_id:acme"]);
        assert_eq!(indexes(&c), ["dedupe_expires"]);
    }

    #[test]
    fn a_quote_in_a_source_cannot_break_out_of_the_literal() {
        let (_dir, c) = store();
        conversion(&c, "k1", "o'brien\"x", "c1", "o1", 5_000);
        let wanted = vec![index("o'brien\"x", "adv_order_id")];
        sync(&wanted, &c, Timestamp::UNIX_EPOCH, &mut false).unwrap();
        assert_eq!(
            find(&c, &lookup("o'brien\"x", None, Some("o1")), 0).as_deref(),
            Some("k1")
        );
    }
}
