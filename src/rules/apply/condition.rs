//! `match` conditions of `[[when]]` and `[[skip]]`, and reading a value inside a JSON
//! parameter (shared with `json = "/pointer"` fields).

use std::borrow::Cow;

use rust_decimal::Decimal;
use serde_json::Value;

use super::Ctx;
use crate::rules::model::{Cmp, Condition, Test};
use crate::rules::value;

impl Ctx<'_, '_> {
    /// One `match` entry. A condition never rejects: a value that cannot be read (not JSON,
    /// not a number) simply does not match, except `absent = true` for which it is no value.
    pub(super) fn condition(&self, c: &Condition) -> bool {
        let given = self.param_typed(&c.param);
        // (text, exact number when it was a JSON number); borrowed unless read from JSON.
        let found: Option<(Cow<'_, str>, Option<Decimal>)> = match &c.json {
            None => given.map(|(v, number)| (Cow::Borrowed(v), number)),
            Some(ptr) => given
                .and_then(|(v, _)| json_at(v, ptr).ok().flatten())
                .map(|j| (Cow::Owned(j.text), j.number)),
        };
        let no_value = |text: &str| value::no_value(text, &self.rule.params.placeholders);
        match &c.test {
            Test::OneOf(values) => found.is_some_and(|(text, _)| values.iter().any(|x| *x == text)),
            Test::Absent(want) => {
                found
                    .as_ref()
                    .is_none_or(|(text, _)| no_value(text).is_some())
                    == *want
            }
            Test::Compare(list) => {
                let number = found.filter(|(text, _)| no_value(text).is_none()).and_then(
                    |(text, number)| {
                        number
                            .or_else(|| value::parse_decimal(&text, value::DecimalMode::Auto).ok())
                    },
                );
                number.is_some_and(|n| {
                    list.iter().all(|(cmp, x)| match cmp {
                        Cmp::Lt => n < *x,
                        Cmp::Le => n <= *x,
                        Cmp::Gt => n > *x,
                        Cmp::Ge => n >= *x,
                        Cmp::Eq => n == *x,
                    })
                })
            }
        }
    }
}

/// A value found inside a JSON parameter, read like a parameter value.
pub(super) struct JsonFound {
    pub text: String,
    pub number: Option<Decimal>,
}

/// Follows a JSON pointer into a parameter's value: `Err` when the value is not JSON,
/// `Ok(None)` when the pointer finds nothing or `null`. Strings are trimmed (the caller checks
/// them for no value like a parameter's), numbers keep their JSON text and exact decimal.
pub(super) fn json_at(text: &str, ptr: &str) -> Result<Option<JsonFound>, String> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|_| format!("not JSON, but json = {ptr:?} expects a JSON document"))?;
    Ok(match doc.pointer(ptr) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(JsonFound {
            text: s.trim().to_string(),
            number: None,
        }),
        Some(Value::Number(n)) => {
            let text = n.to_string();
            Some(JsonFound {
                number: value::parse_json_number(&text).ok(),
                text,
            })
        }
        Some(other) => Some(JsonFound {
            text: other.to_string(),
            number: None,
        }),
    })
}
