//! Every unknown key of a TOML file at once (a rule file, the service config): serde stops
//! at the first, so each one found is blanked out of the text (spaces, line ends kept, so
//! every position stays) and the text parsed again. A file with unknown keys is not checked
//! further: what a check would say of the text without them (a table left without its one
//! key) could be the typo's echo.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

/// At most this many unknown keys are reported for one file.
const MOST: usize = 32;

/// One problem of a file: where (a byte range of the text, when known) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// `text` deserialized; else every unknown key (or the one other problem that stops the
/// parse), in the order found.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut text = Cow::Borrowed(text);
    for _ in 0..MOST {
        let blanked_some = matches!(text, Cow::Owned(_));
        let e = match toml::from_str::<T>(&text) {
            Ok(value) if !blanked_some => return Ok(value),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        let unknown = e.message().starts_with("unknown field");
        if !unknown && blanked_some {
            // Maybe the echo of a key taken out (`set` missing once `sett` is gone).
            return Err(problems);
        }
        let message = e.message().trim().replace('\n', " ");
        // A value of the wrong type: named by its key, which TOML's message leaves out.
        let message = match e
            .span()
            .filter(|_| !unknown)
            .and_then(|s| key_at(&text, s.start))
        {
            Some(key) => format!("{key}: {message}"),
            None => message,
        };
        problems.push(Problem {
            span: e.span(),
            message,
        });
        let next = e
            .span()
            .filter(|_| unknown)
            .and_then(|at| blanked(&text, at.start));
        match next {
            Some(t) => text = Cow::Owned(t),
            None => return Err(problems),
        }
    }
    Err(problems)
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The dotted path (`server.max_url_bytes`, `when[1].set`) of the value at byte `at`.
fn key_at(text: &str, at: usize) -> Option<String> {
    fn walk(table: &DeTable<'_>, at: usize, path: &str) -> Option<String> {
        for (key, value) in table.iter() {
            let here = match path {
                "" => key.get_ref().to_string(),
                p => format!("{p}.{}", key.get_ref()),
            };
            match value.get_ref() {
                DeValue::Table(t) => {
                    if let Some(found) = walk(t, at, &here) {
                        return Some(found);
                    }
                }
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref()
                            && let Some(found) = walk(t, at, &format!("{here}[{i}]"))
                        {
                            return Some(found);
                        }
                    }
                }
                _ => {}
            }
            if value.span().contains(&at) {
                return Some(here);
            }
        }
        None
    }
    walk(DeTable::parse(text).ok()?.get_ref(), at, "")
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
