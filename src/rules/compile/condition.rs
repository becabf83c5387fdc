//! Compiling `match` conditions of `[[when]]` and `[[skip]]`, and `[params].placeholders`.

use std::ops::Range;

use toml::Spanned;

use super::{Compiler, span, toml_scalar_text};
use crate::rules::model::{Cmp, Condition, Test};
use crate::rules::raw::{RawCond, RawCondTable, RawMatch};
use crate::rules::value;

impl Compiler<'_, '_> {
    /// `[params].placeholders`: each checked (a `*` only at the end, as a prefix match).
    pub(super) fn placeholders(&mut self, raw: Vec<Spanned<String>>) -> Vec<String> {
        raw.into_iter()
            .filter_map(|p| match value::check_placeholder(p.get_ref()) {
                Ok(()) => Some(p.into_inner()),
                Err(e) => {
                    self.err(
                        span(&p),
                        format!("params.placeholders: {:?}: {e}", p.get_ref()),
                    );
                    None
                }
            })
            .collect()
    }

    /// The conditions of a `match` table.
    pub(super) fn conditions(
        &mut self,
        key: &str,
        raw: RawMatch,
        at: Range<usize>,
    ) -> Vec<Condition> {
        if raw.is_empty() {
            self.err(
                Some(at),
                format!("{key}: empty; name at least one parameter and its value(s)"),
            );
        }
        raw.into_iter()
            .filter_map(|(param, cond)| {
                let cond_at = cond.span();
                let key = format!("{key}.{param}");
                let (json, test) = match cond.into_inner() {
                    RawCond::Values(values) => (None, Test::OneOf(values.into_vec())),
                    RawCond::Table(t) => self.condition_table(&key, *t, cond_at)?,
                };
                Some(Condition {
                    param: self.norm(&param),
                    json,
                    test,
                })
            })
            .collect()
    }

    /// `{ absent = ... }`, `{ lt = ..., ge = ... }`, `{ is = ... }` or `{ in = [...] }`,
    /// optionally with `json = "/pointer"`.
    fn condition_table(
        &mut self,
        key: &str,
        t: RawCondTable,
        at: Range<usize>,
    ) -> Option<(Option<String>, Test)> {
        const ACCEPTED: &str = "give one of `absent = true | false`, `is = \"value\"`, `in = [\"a\", \"b\"]`, or comparisons `lt`, `le`, `gt`, `ge`, `eq` with a number (optionally with `json = \"/pointer\"`)";
        if let Some(ptr) = &t.json
            && !(ptr.is_empty() || ptr.starts_with('/'))
        {
            self.err(
                Some(at),
                format!(
                    "{key}.json = {ptr:?}: a JSON pointer starts with '/' (e.g. \"/event/type\")"
                ),
            );
            return None;
        }
        let mut compare = Vec::new();
        for (cmp, name, v) in [
            (Cmp::Lt, "lt", &t.lt),
            (Cmp::Le, "le", &t.le),
            (Cmp::Gt, "gt", &t.gt),
            (Cmp::Ge, "ge", &t.ge),
            (Cmp::Eq, "eq", &t.eq),
        ] {
            let Some(v) = v else { continue };
            let number = toml_scalar_text(v)
                .and_then(|text| value::parse_decimal(&text, value::DecimalMode::Dot).ok());
            match number {
                Some(n) => compare.push((cmp, n)),
                None => {
                    self.err(
                        Some(at.clone()),
                        format!(
                            "{key}.{name} = {v}: expected a number (e.g. 0, -1.5 or \"12.50\")"
                        ),
                    );
                    return None;
                }
            }
        }
        let kinds = [
            t.absent.is_some(),
            t.is.is_some(),
            t.any_of.is_some(),
            !compare.is_empty(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.err(Some(at), format!("{key}: {ACCEPTED}"));
            return None;
        }
        let test = if let Some(absent) = t.absent {
            Test::Absent(absent)
        } else if let Some(is) = t.is {
            Test::OneOf(vec![is])
        } else if let Some(any_of) = t.any_of {
            if any_of.is_empty() {
                self.err(
                    Some(at),
                    format!("{key}.in: an empty list never matches; list at least one value"),
                );
                return None;
            }
            Test::OneOf(any_of)
        } else {
            Test::Compare(compare)
        };
        Some((t.json, test))
    }
}
