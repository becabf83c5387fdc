//! Every unknown key of a rule file at once: serde stops at the first, so each one found is
//! blanked out of the text (spaces, line ends kept, so every position stays) and the text
//! parsed again. A file with unknown keys is not checked further: what a check would say of
//! the text without them (a table left without its one key) could be the typo's echo.

use std::borrow::Cow;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::super::diag::Diagnostics;
use super::super::raw::RawRule;

/// At most this many unknown keys are reported for one file.
const MOST: usize = 32;

/// The file's [`RawRule`]; `None` when it does not parse, with every unknown key (or the
/// one other problem that stops the parse) reported to `diags`.
pub(super) fn parse(text: &str, diags: &mut Diagnostics<'_>) -> Option<RawRule> {
    let mut text = Cow::Borrowed(text);
    for _ in 0..MOST {
        let blanked_some = matches!(text, Cow::Owned(_));
        let e = match toml::from_str::<RawRule>(&text) {
            Ok(raw) => return (!blanked_some).then_some(raw),
            Err(e) => e,
        };
        let unknown = e.message().starts_with("unknown field");
        if !unknown && blanked_some {
            // Maybe the echo of a key taken out (`set` missing once `sett` is gone).
            return None;
        }
        diags.at(e.span(), e.message().trim().replace('\n', " "));
        let next = e
            .span()
            .filter(|_| unknown)
            .and_then(|at| blanked(&text, at.start));
        text = Cow::Owned(next?);
    }
    None
}

/// `text` without the key that starts at `at` and its value (a table's header with every
/// key under it); `None` when no key starts there.
fn blanked(text: &str, at: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut ranges = Vec::new();
    if !find(doc.get_ref(), at, &mut ranges) {
        return None;
    }
    let mut bytes = text.as_bytes().to_vec();
    for r in ranges {
        for b in &mut bytes[r] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Collects into `out` the ranges that make up the key starting at `at` under `table`.
fn find(table: &DeTable<'_>, at: usize, out: &mut Vec<Range<usize>>) -> bool {
    for (key, value) in table.iter() {
        if key.span().start == at {
            whole(key.span(), value.span(), value.get_ref(), out);
            return true;
        }
        let found = match value.get_ref() {
            DeValue::Table(t) => find(t, at, out),
            DeValue::Array(items) => items.iter().any(|item| match item.get_ref() {
                DeValue::Table(t) => find(t, at, out),
                _ => false,
            }),
            _ => false,
        };
        if found {
            return true;
        }
    }
    false
}

/// The ranges of one entry: `key = value`, or a `[header]` (its span is the header) and the
/// entries under it.
fn whole(key: Range<usize>, value: Range<usize>, v: &DeValue<'_>, out: &mut Vec<Range<usize>>) {
    if value.end > key.start {
        out.push(key.start.min(value.start)..value.end);
    }
    let tables: Vec<&DeTable<'_>> = match v {
        DeValue::Table(t) => vec![t],
        DeValue::Array(items) => items
            .iter()
            .filter_map(|i| match i.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for t in tables {
        for (k, v) in t.iter() {
            whole(k.span(), v.span(), v.get_ref(), out);
        }
    }
    if let DeValue::Array(items) = v {
        for i in items.iter() {
            out.push(i.span());
        }
    }
}
