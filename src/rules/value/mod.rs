//! Value semantics shared by every rule: "no value" detection (macros, placeholders), exact
//! decimal numbers, times and zones, durations. Pure functions, no I/O.
//!
//! Every error string says what was wrong and what is accepted, but never repeats the value:
//! the caller prefixes "field X: value Y: ".

mod number;
#[cfg(test)]
mod tests;
mod time;

use std::borrow::Cow;

pub use crate::parse::{parse_duration, parse_zone};
pub use number::{DecimalMode, format_decimal, parse_decimal, parse_json_number, scale_decimal};
pub use time::{TimeFormat, format_scaleo_time, parse_time};

// No value
// ---------------------------------------------------------------------------------------------

/// Why a present parameter value counts as "no value".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoValue {
    /// Empty after trimming.
    Empty,
    /// An unresolved macro such as `{clickid}`, `%7Bclickid%7D` or `(idfa)`.
    Macro,
    /// One of the rule's `placeholders` (exact, case-sensitive).
    Placeholder,
}

impl NoValue {
    /// A short human reason, e.g. "unresolved macro".
    pub fn describe(self) -> &'static str {
        match self {
            NoValue::Empty => "empty",
            NoValue::Macro => "unresolved macro",
            NoValue::Placeholder => "placeholder",
        }
    }
}

/// How many more times a value that is still percent-encoded is decoded and checked again.
const MAX_REDECODES: usize = 3;

/// The macro dialects as (opening, closing) delimiters around the whole value. `__X__` is
/// checked apart: its name must be upper case.
const MACRO_DELIMITERS: [(&str, &str); 11] = [
    ("{{", "}}"),
    ("${", "}"),
    ("{$", "}"),
    ("{", "}"),
    ("[", "]"),
    ("(", ")"),
    ("#", "#"),
    ("%%", "%%"),
    ("%", "%"),
    ("!!!", "!!!"),
    ("<", ">"),
];

/// What browser pixels send when a JavaScript variable had no value.
const SCRIPT_LEFTOVERS: [&str; 3] = ["undefined", "null", "NaN"];

/// Classifies a decoded, trimmed value: `None` means it is a real value.
///
/// Placeholders are compared with the value as received (exact, case-sensitive; one ending in
/// `*` matches every value that starts with the rest); macros are also looked for after
/// decoding a still percent-encoded value again, up to three more times. A value that decodes
/// to nothing but white space (`%20`) is `Empty`.
pub fn no_value(value: &str, placeholders: &[String]) -> Option<NoValue> {
    if value.is_empty() {
        return Some(NoValue::Empty);
    }
    if placeholders.iter().any(|p| placeholder_matches(p, value)) {
        return Some(NoValue::Placeholder);
    }
    if is_macro(value) {
        return Some(NoValue::Macro);
    }
    // Borrowed until a decoding happens: most values have no escape and allocate nothing.
    let mut current = Cow::Borrowed(value);
    for _ in 0..MAX_REDECODES {
        let decoded = percent_decode(&current)?;
        let decoded = decoded.trim();
        if decoded.is_empty() {
            return Some(NoValue::Empty);
        }
        if is_macro(decoded) {
            return Some(NoValue::Macro);
        }
        current = Cow::Owned(decoded.to_owned());
    }
    None
}

/// A placeholder is an exact value, or a prefix when it ends in `*` (`"TPL_*"`).
fn placeholder_matches(placeholder: &str, value: &str) -> bool {
    match placeholder.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => placeholder == value,
    }
}

/// What is wrong with a `placeholders` entry, if anything: a `*` is accepted only at the end,
/// after at least one other character (a lone `*` would make every value no value).
pub fn check_placeholder(placeholder: &str) -> Result<(), String> {
    let stem = placeholder.strip_suffix('*').unwrap_or(placeholder);
    if placeholder.trim().is_empty() {
        Err("an empty placeholder would match only what is already no value".to_owned())
    } else if stem.trim().is_empty() {
        Err("a placeholder of only `*` would make every value no value; give a prefix such as \"TPL_*\"".to_owned())
    } else if stem.contains('*') {
        Err("`*` is accepted only at the end, as a prefix match (e.g. \"TPL_*\")".to_owned())
    } else {
        Ok(())
    }
}

/// True when the whole value is one macro of a known dialect, or a script's leftover
/// (`undefined`, `null`, `NaN`).
pub(crate) fn is_macro(value: &str) -> bool {
    if SCRIPT_LEFTOVERS.contains(&value) {
        return true;
    }
    if is_json_container(value) {
        return false;
    }
    let delimited = MACRO_DELIMITERS.iter().any(|(open, close)| {
        value
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
            .is_some_and(is_macro_name)
    });
    delimited
        || value
            .strip_prefix("__")
            .and_then(|rest| rest.strip_suffix("__"))
            .is_some_and(|name| {
                is_macro_name(name) && !name.chars().any(|c| c.is_ascii_lowercase())
            })
}

/// A macro name: at least one ASCII letter, and only ASCII letters, digits, spaces and
/// `_ . : - ? = ~ $ ! ( )`. Letters are ASCII only: every tracker's macro names are, and a
/// bracketed word in another script (`(Москва)`) is far more likely a real value. A name
/// without a letter is not a macro: `(12.50)` is an accounting negative, `[1]` data.
fn is_macro_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:-?=~$!() ".contains(c);
    name.chars().any(|c| c.is_ascii_alphabetic()) && name.chars().all(allowed)
}

/// `[1]`, `[true]` or `{"a":1}` are data, never macros.
fn is_json_container(value: &str) -> bool {
    value.starts_with(['[', '{']) && serde_json::from_str::<serde_json::Value>(value).is_ok()
}

/// Decodes every valid `%XX` escape (malformed ones stay literal, invalid UTF-8 becomes
/// U+FFFD); `None` when there is no escape to decode. `+` stays a `+`: only the first decoding
/// is form decoding.
fn percent_decode(text: &str) -> Option<String> {
    // Borrowed when no valid escape was found.
    match Cow::<[u8]>::from(percent_encoding::percent_decode_str(text)) {
        Cow::Borrowed(_) => None,
        Cow::Owned(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
    }
}
