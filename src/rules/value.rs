//! Value semantics shared by every rule: "no value" detection (macros, placeholders), exact
//! decimal numbers, times and zones, durations. Pure functions, no I/O.
//!
//! STUB: signatures fixed; bodies are being written (helper "value").
#![allow(unused_variables)]

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rust_decimal::Decimal;

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

/// Classifies a decoded, trimmed value: `None` means it is a real value.
pub fn no_value(value: &str, placeholders: &[String]) -> Option<NoValue> {
    unimplemented!()
}

/// Which character separates the decimals (`decimal = "auto" | "dot" | "comma"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecimalMode {
    #[default]
    Auto,
    Dot,
    Comma,
}

/// Parses a money-like decimal (sign, currency sign, separators) exactly.
/// The error text says what was wrong and what is accepted (it follows "field X: value Y: ").
pub fn parse_decimal(text: &str, mode: DecimalMode) -> Result<Decimal, String> {
    unimplemented!()
}

/// Multiplies exactly; `Err` on overflow.
pub fn scale_decimal(value: Decimal, scale: Decimal) -> Result<Decimal, String> {
    unimplemented!()
}

/// Canonical text of a decimal: no exponent, no trailing fractional zeros ("19.99", "5", "-0.5").
pub fn format_decimal(value: Decimal) -> String {
    unimplemented!()
}

/// How a time parameter is written (`time = ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeFormat {
    Unix,
    UnixMs,
    Rfc3339,
    Auto,
    /// A strftime pattern, validated at load time.
    Pattern(String),
}

impl TimeFormat {
    /// Parses the rule text; a pattern must be valid strftime and name at least a date.
    pub fn parse_spec(spec: &str) -> Result<TimeFormat, String> {
        unimplemented!()
    }
}

/// Parses a zone: "UTC", an offset such as "+08:00" / "-0530", or an IANA name.
pub fn parse_zone(text: &str) -> Result<TimeZone, String> {
    unimplemented!()
}

/// Parses a time value; a time without an offset is read in `tz` (DST-correct).
pub fn parse_time(text: &str, format: &TimeFormat, tz: &TimeZone) -> Result<Timestamp, String> {
    unimplemented!()
}

/// Scaleo's `Y-m-d H:i:s` in `zone`, seconds truncated.
pub fn format_scaleo_time(at: Timestamp, zone: &TimeZone) -> String {
    unimplemented!()
}

/// Parses durations such as "500ms", "10s", "2m", "1h", "30d" (one number and a unit).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    unimplemented!()
}
