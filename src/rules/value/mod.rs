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
use std::time::Duration;

pub use number::{DecimalMode, format_decimal, parse_decimal, scale_decimal};
pub use time::{TimeFormat, format_scaleo_time, parse_time, parse_zone};

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

/// The macro dialects as (opening, closing) delimiters around the whole value.
const MACRO_DELIMITERS: [(&str, &str); 8] = [
    ("{{", "}}"),
    ("${", "}"),
    ("{", "}"),
    ("[", "]"),
    ("(", ")"),
    ("#", "#"),
    ("%", "%"),
    ("<", ">"),
];

/// Classifies a decoded, trimmed value: `None` means it is a real value.
///
/// Placeholders are compared with the value as received (exact, case-sensitive); macros are
/// also looked for after decoding a still percent-encoded value again, up to three more times.
/// A value that decodes to nothing but white space (`%20`) is `Empty`.
pub fn no_value(value: &str, placeholders: &[String]) -> Option<NoValue> {
    if value.is_empty() {
        return Some(NoValue::Empty);
    }
    if placeholders.iter().any(|placeholder| placeholder == value) {
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

/// True when the whole value is one macro of a known dialect.
fn is_macro(value: &str) -> bool {
    if is_json_container(value) {
        return false;
    }
    MACRO_DELIMITERS.iter().any(|(open, close)| {
        value
            .strip_prefix(open)
            .and_then(|rest| rest.strip_suffix(close))
            .is_some_and(is_macro_name)
    })
}

/// A macro name: ASCII letters, digits, `_ . : - ? =` and spaces, not only spaces.
/// Letters are ASCII only: every tracker's macro names are, and a bracketed word in another
/// script (`(Москва)`) is far more likely a real value.
fn is_macro_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:-?= ".contains(c);
    !name.trim().is_empty() && name.chars().all(allowed)
}

/// `[1]`, `[true]` or `{"a":1}` are data, never macros.
fn is_json_container(value: &str) -> bool {
    value.starts_with(['[', '{']) && serde_json::from_str::<serde_json::Value>(value).is_ok()
}

/// Decodes every valid `%XX` escape (malformed ones stay literal, invalid UTF-8 becomes
/// U+FFFD); `None` when there is no escape to decode. `+` stays a `+`: only the first decoding
/// is form decoding.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut decoded_any = false;
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match escape_at(bytes, index) {
            Some(decoded) => {
                out.push(decoded);
                decoded_any = true;
                index += 3;
            }
            None => {
                out.push(byte);
                index += 1;
            }
        }
    }
    decoded_any.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// The byte of a valid `%XX` escape starting at `index`.
fn escape_at(bytes: &[u8], index: usize) -> Option<u8> {
    if bytes.get(index) != Some(&b'%') {
        return None;
    }
    Some(hex_digit(bytes.get(index + 1))? * 16 + hex_digit(bytes.get(index + 2))?)
}

fn hex_digit(byte: Option<&u8>) -> Option<u8> {
    let digit = char::from(*byte?).to_digit(16)?;
    u8::try_from(digit).ok()
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

const DURATION_ACCEPTED: &str =
    "expected a whole number and a unit ms, s, m, h or d (e.g. 500ms, 10s, 2m, 1h, 30d)";

/// Parses durations such as "500ms", "10s", "2m", "1h", "30d" (one number and a unit).
///
/// A space between number and unit is tolerated (`10 s`); weeks and fractions are not accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("not a duration: {DURATION_ACCEPTED}"));
    }
    let millis_per_unit: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(format!("missing unit: {DURATION_ACCEPTED}")),
        _ => return Err(format!("unknown unit: {DURATION_ACCEPTED}")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration too large: {DURATION_ACCEPTED}"))
}
