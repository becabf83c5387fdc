//! What both backends share about the lookup indexes of update-only sources: their names,
//! the dedupe column of a lookup field, and SQL quoting for the source literal.
//!
//! An update-only source (a refund or chargeback URL) finds the conversions of the source it
//! names by order id or click id. Each backend keeps one partial index per (source, field)
//! that the loaded rules look up, named `dedupe_lookup:COLUMN:SOURCE`, instead of indexing
//! both fields for every conversion of every source; the lookup query names the source as a
//! literal so that the database can match it to that source's index.

use crate::lifecycle::LookupIndex;

use super::StoreError;

/// The name prefix of every lookup index.
pub(crate) const PREFIX: &str = "dedupe_lookup:";

/// PostgreSQL's longest identifier (NAMEDATALEN - 1 bytes); a longer name would be cut.
const MAX_NAME: usize = 63;

/// What a sync changed: the index names it built and dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LookupSync {
    pub built: Vec<String>,
    pub dropped: Vec<String>,
}

/// The dedupe column of a lookup field.
pub(crate) fn column(field: &str) -> Result<&'static str, StoreError> {
    match field {
        "adv_order_id" => Ok("order_id"),
        "click_id" => Ok("click_id"),
        other => Err(StoreError::Corrupt(format!(
            "lookup field {other:?}: expected adv_order_id or click_id"
        ))),
    }
}

/// `text` as an SQL string literal (standard quoting: PostgreSQL's
/// `standard_conforming_strings`, on since 9.1, and SQLite read backslashes as themselves).
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `text` as an SQL identifier.
pub(crate) fn ident(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// The index of `ix`: `dedupe_lookup:COLUMN:SOURCE`, or, when that is longer than
/// PostgreSQL keeps, the source cut short and followed by a hash of the whole name (the same
/// on every instance and every build).
pub(crate) fn index_name(ix: &LookupIndex) -> Result<String, StoreError> {
    let full = format!("{PREFIX}{}:{}", column(ix.field)?, ix.source);
    if full.len() <= MAX_NAME {
        return Ok(full);
    }
    // FNV-1a, 64 bits: stable, unlike std's hasher, whose algorithm may change.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let tail = format!("~{hash:016x}");
    // Source ids are ASCII ([a-z0-9_-]), so any byte is a char boundary.
    Ok(format!("{}{tail}", &full[..MAX_NAME - tail.len()]))
}

/// The partial index serving `ix`, created as `create` (`CREATE INDEX`, or PostgreSQL's
/// `CREATE INDEX CONCURRENTLY IF NOT EXISTS`).
pub(crate) fn create_sql(create: &str, ix: &LookupIndex) -> Result<String, StoreError> {
    let col = column(ix.field)?;
    Ok(format!(
        "{create} {} ON dedupe ({col}, expires_at)
         WHERE source = {} AND tracked IS NOT NULL AND {col} IS NOT NULL",
        ident(&index_name(ix)?),
        literal(&ix.source),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(source: &str) -> LookupIndex {
        LookupIndex {
            source: source.into(),
            field: "adv_order_id",
        }
    }

    #[test]
    fn a_short_name_is_the_plain_one() {
        assert_eq!(
            index_name(&ix("shop")).unwrap(),
            "dedupe_lookup:order_id:shop"
        );
    }

    #[test]
    fn a_long_name_fits_postgres_and_stays_distinct_and_stable() {
        let long = "a".repeat(80);
        let other = format!("{}b", "a".repeat(79));
        let (a, b) = (
            index_name(&ix(&long)).unwrap(),
            index_name(&ix(&other)).unwrap(),
        );
        assert_eq!(a.len(), MAX_NAME);
        assert_eq!(b.len(), MAX_NAME);
        assert_ne!(a, b, "two sources sharing a long prefix get one index name");
        assert_eq!(a, index_name(&ix(&long)).unwrap());
        assert!(a.starts_with("dedupe_lookup:order_id:aaaa"), "{a}");
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_it() {
        let bad = LookupIndex {
            source: "shop".into(),
            field: "goal_id",
        };
        let e = index_name(&bad).unwrap_err().to_string();
        assert!(e.contains("goal_id") && e.contains("adv_order_id"), "{e}");
    }
}
