//! Value semantics shared by every rule: "no value" detection (macros, placeholders), exact
//! decimal numbers, times and zones, durations. Pure functions, no I/O.
//!
//! Every error string says what was wrong and what is accepted, but never repeats the value:
//! the caller prefixes "field X: value Y: ".

use std::borrow::Cow;
use std::time::Duration;

use jiff::Timestamp;
use jiff::ZonedDateTime;
use jiff::civil::DateTime;
use jiff::fmt::strtime;
use jiff::tz::{Offset, TimeZone};
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
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
// Decimal numbers
// ---------------------------------------------------------------------------------------------

/// Which character separates the decimals (`decimal = "auto" | "dot" | "comma"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecimalMode {
    /// The rightmost of `.` and `,` when both occur; a lone separator is decimal unless the
    /// reading is ambiguous (`1,234`); a repeated one groups thousands.
    #[default]
    Auto,
    /// `.` is the decimal separator, `,` groups thousands.
    Dot,
    /// `,` is the decimal separator, `.` groups thousands.
    Comma,
}

const NUMBER_ACCEPTED: &str = "expected digits with an optional sign, currency sign ($ € £ ¥) \
     and one decimal separator (e.g. 12.50, 12,50, $1,234.56)";

const CURRENCY_SIGNS: [char; 4] = ['$', '€', '£', '¥'];

/// Parses a money-like decimal (sign, currency sign, separators) exactly.
/// The error text says what was wrong and what is accepted (it follows "field X: value Y: ").
///
/// Beyond the product rules: a leading or trailing decimal separator is allowed (`.5`, `5.`),
/// leading zeros are ignored, and a thousands group must be `1-3 digits not starting with 0`
/// followed by groups of exactly three (so `decimal = "dot"` rejects `12,50` instead of
/// reading 1250).
pub fn parse_decimal(text: &str, mode: DecimalMode) -> Result<Decimal, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty: {NUMBER_ACCEPTED}"));
    }
    let (negative, body) = split_sign_and_currency(text)?;
    check_body(body)?;
    let (decimal, thousands) = separators(body, mode)?;
    let (integer, fraction) = split_number(body, decimal, thousands)?;
    build_decimal(negative, &integer, fraction)
}

/// Strips one optional sign and one optional currency sign (before, with an optional space,
/// or after); returns whether the number is negative and the remaining body.
fn split_sign_and_currency(text: &str) -> Result<(bool, &str), String> {
    let mut rest = text;
    let mut negative = None;
    let mut currency = false;
    loop {
        if let Some(after) = rest.strip_prefix(['+', '-']) {
            if negative.is_some() {
                return Err(format!("more than one sign: {NUMBER_ACCEPTED}"));
            }
            negative = Some(rest.starts_with('-'));
            rest = after;
        } else if let Some(after) = rest.strip_prefix(CURRENCY_SIGNS) {
            if currency {
                return Err(format!("more than one currency sign: {NUMBER_ACCEPTED}"));
            }
            currency = true;
            rest = after.trim_start();
        } else {
            break;
        }
    }
    if let Some(before) = rest.strip_suffix(CURRENCY_SIGNS) {
        if currency {
            return Err(format!("more than one currency sign: {NUMBER_ACCEPTED}"));
        }
        rest = before.trim_end();
    }
    Ok((negative == Some(true), rest))
}

/// The body may hold only digits and separators, and at least one digit.
fn check_body(body: &str) -> Result<(), String> {
    if !body
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
    {
        return Err(format!("{}: {NUMBER_ACCEPTED}", explain_bad_body(body)));
    }
    if !body.chars().any(|c| c.is_ascii_digit()) {
        return Err(format!("no digits: {NUMBER_ACCEPTED}"));
    }
    Ok(())
}

fn explain_bad_body(body: &str) -> &'static str {
    let lower = body.to_ascii_lowercase();
    if ["nan", "inf", "infinity"].contains(&lower.as_str()) {
        "NaN and infinity are not numbers"
    } else if lower.starts_with("0x") {
        "hexadecimal is not accepted"
    } else if is_exponent_notation(&lower) {
        "exponent notation is not accepted"
    } else if body.contains(['+', '-']) {
        "a sign is accepted only once, before the number"
    } else if body.contains(CURRENCY_SIGNS) {
        "a currency sign is accepted only once, before or after the number"
    } else if body.contains(char::is_whitespace) {
        "spaces inside the number are not accepted"
    } else {
        "not a number"
    }
}

/// `1e5`, `1.5E-3`, `2,5e+2`.
fn is_exponent_notation(lower: &str) -> bool {
    let Some((mantissa, exponent)) = lower.split_once('e') else {
        return false;
    };
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    mantissa.chars().any(|c| c.is_ascii_digit())
        && mantissa
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        && !exponent.is_empty()
        && exponent.chars().all(|c| c.is_ascii_digit())
}

/// Returns (decimal separator, thousands separator) for this body.
fn separators(body: &str, mode: DecimalMode) -> Result<(char, char), String> {
    match mode {
        DecimalMode::Dot => Ok(('.', ',')),
        DecimalMode::Comma => Ok((',', '.')),
        DecimalMode::Auto => auto_separators(body),
    }
}

fn auto_separators(body: &str) -> Result<(char, char), String> {
    let Some(position) = body.rfind(['.', ',']) else {
        return Ok(('.', ','));
    };
    let (last, other) = if body[position..].starts_with('.') {
        ('.', ',')
    } else {
        (',', '.')
    };
    if body.contains(other) {
        return Ok((last, other));
    }
    if body.matches(last).count() > 1 {
        return Ok((other, last));
    }
    let (before, after) = (&body[..position], &body[position + 1..]);
    if after.len() == 3 && (1..=3).contains(&before.len()) && !before.starts_with('0') {
        return Err(
            "ambiguous: set decimal = \"dot\" or \"comma\" in the rule (one separator \
             followed by exactly three digits may group thousands or mark decimals)"
                .to_owned(),
        );
    }
    Ok((last, other))
}

/// Splits the body into integer digits (thousands separators removed) and fraction digits.
fn split_number(body: &str, decimal: char, thousands: char) -> Result<(String, &str), String> {
    let (integer, fraction) = body.split_once(decimal).unwrap_or((body, ""));
    if fraction.contains(decimal) {
        return Err(format!(
            "more than one decimal separator '{decimal}': {NUMBER_ACCEPTED}"
        ));
    }
    if fraction.contains(thousands) {
        return Err(format!(
            "thousands separator '{thousands}' after the decimal separator '{decimal}': \
             {NUMBER_ACCEPTED}"
        ));
    }
    Ok((join_thousands(integer, decimal, thousands)?, fraction))
}

fn join_thousands(integer: &str, decimal: char, thousands: char) -> Result<String, String> {
    if !integer.contains(thousands) {
        return Ok(integer.to_owned());
    }
    let groups: Vec<&str> = integer.split(thousands).collect();
    let valid = groups.split_first().is_some_and(|(first, rest)| {
        (1..=3).contains(&first.len())
            && !first.starts_with('0')
            && rest.iter().all(|group| group.len() == 3)
    });
    if valid {
        Ok(groups.concat())
    } else {
        Err(format!(
            "thousands separator '{thousands}' must separate groups of three digits \
             (e.g. 1{thousands}234{thousands}567{decimal}89): {NUMBER_ACCEPTED}"
        ))
    }
}

/// Builds the exact decimal from ASCII digit strings; trailing fractional zeros are dropped
/// first, so `1.50000…` with more than 28 zeros still fits.
fn build_decimal(negative: bool, integer: &str, fraction: &str) -> Result<Decimal, String> {
    const TOO_MANY: &str =
        "too many significant digits: an exact decimal holds at most 28 to 29 digits";
    let integer = integer.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let scale = u32::try_from(fraction.len())
        .ok()
        .filter(|scale| *scale <= Decimal::MAX_SCALE)
        .ok_or_else(|| "too many decimal places: at most 28 are accepted".to_owned())?;
    let mut mantissa: i128 = 0;
    for digit in integer.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(digit - b'0')))
            .ok_or(TOO_MANY)?;
    }
    if negative {
        mantissa = -mantissa;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|_| TOO_MANY.to_owned())
}

/// Multiplies exactly; `Err` on overflow.
///
/// Never rounds: `rust_decimal`'s own multiplication silently rounds a product that needs more
/// than 28 decimal places or 96 bits, so the product is computed on the mantissas and must fit
/// exactly (after dropping trailing zeros).
pub fn scale_decimal(value: Decimal, scale: Decimal) -> Result<Decimal, String> {
    const INEXACT: &str = "the scaled value does not fit an exact decimal (at most 28 to 29 significant digits \
         and 28 decimal places)";
    let (value, scale) = (value.normalize(), scale.normalize());
    let mut mantissa = value
        .mantissa()
        .checked_mul(scale.mantissa())
        .ok_or(INEXACT)?;
    let mut places = value.scale() + scale.scale();
    while places > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        places -= 1;
    }
    Decimal::try_from_i128_with_scale(mantissa, places).map_err(|_| INEXACT.to_owned())
}

/// Canonical text of a decimal: no exponent, no trailing fractional zeros ("19.99", "5", "-0.5").
pub fn format_decimal(value: Decimal) -> String {
    if value.is_zero() {
        return "0".to_owned();
    }
    value.normalize().to_string()
}

// ---------------------------------------------------------------------------------------------
// Times and zones
// ---------------------------------------------------------------------------------------------

/// How a time parameter is written (`time = ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeFormat {
    /// Whole or decimal seconds since 1970 (`1700000000`, `1716198088.000000`).
    Unix,
    /// Whole (or decimal) milliseconds since 1970.
    UnixMs,
    /// `2024-05-20T10:00:00Z`, `+08:00` / `+0800` / `+08` offsets, a space for `T`; without an
    /// offset the time is read in the rule's `tz`.
    Rfc3339,
    /// A number (seconds, or milliseconds from 1e11), else RFC 3339, else `Y-m-d H:i:s`, else
    /// `Y-m-d` (midnight in `tz`).
    Auto,
    /// A strftime pattern, validated at load time.
    Pattern(String),
}

const TIME_SPEC_ACCEPTED: &str = "expected \"unix\", \"unix_ms\", \"rfc3339\", \"auto\" or a \
     strftime pattern that names a date, such as \"%d/%m/%Y %H:%M\" or \"%s\"";

impl TimeFormat {
    /// Parses the rule text; a pattern must be valid strftime and name at least a date.
    ///
    /// A pattern is validated by formatting a sample time with it and parsing the result back:
    /// what cannot be parsed back (e.g. `%Z` abbreviations) is refused at load time instead of
    /// rejecting every postback later.
    pub fn parse_spec(spec: &str) -> Result<TimeFormat, String> {
        match spec {
            "unix" => Ok(TimeFormat::Unix),
            "unix_ms" => Ok(TimeFormat::UnixMs),
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            "auto" => Ok(TimeFormat::Auto),
            _ if spec.contains('%') => {
                validate_pattern(spec)?;
                Ok(TimeFormat::Pattern(spec.to_owned()))
            }
            _ => Err(format!("unknown time format: {TIME_SPEC_ACCEPTED}")),
        }
    }
}

fn validate_pattern(pattern: &str) -> Result<(), String> {
    // 2024-07-15 16:24:59 UTC: every field differs, so day and month cannot be mixed up.
    let sample: ZonedDateTime =
        Timestamp::constant(1_721_060_699, 0).to_zoned_datetime(TimeZone::UTC);
    let text = strtime::format(pattern, &sample)
        .map_err(|e| format!("invalid strftime pattern ({e}): {TIME_SPEC_ACCEPTED}"))?;
    let parsed = strtime::parse(pattern, &text).map_err(|e| {
        format!("strftime pattern cannot be used to parse ({e}): {TIME_SPEC_ACCEPTED}")
    })?;
    if parsed.timestamp().is_some() || parsed.to_datetime().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "strftime pattern names no date (it needs %Y, %m and %d, or %s): {TIME_SPEC_ACCEPTED}"
        ))
    }
}

const ZONE_ACCEPTED: &str = "expected UTC, an offset such as +08:00, +0800, +08 or -05:30, \
     or an IANA time zone name such as Asia/Kolkata or America/New_York";

/// Parses a zone: "UTC", an offset such as "+08:00" / "-0530", or an IANA name.
///
/// `UTC` is accepted in any case, `Z` too; offsets go up to ±23:59.
pub fn parse_zone(text: &str) -> Result<TimeZone, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("utc") || text.eq_ignore_ascii_case("z") {
        return Ok(TimeZone::UTC);
    }
    if text.starts_with(['+', '-']) {
        return parse_offset(text)
            .map(TimeZone::fixed)
            .ok_or_else(|| format!("invalid offset: {ZONE_ACCEPTED}"));
    }
    if text.is_empty() {
        return Err(format!("empty time zone: {ZONE_ACCEPTED}"));
    }
    TimeZone::get(text).map_err(|_| format!("unknown time zone: {ZONE_ACCEPTED}"))
}

/// In `auto`, a number from 1e11 on is milliseconds (1e11 seconds would be the year 5138).
const AUTO_MILLIS_FROM: i64 = 100_000_000_000;

/// The upper bound is jiff's last instant, 9999-12-30 22:00 UTC (so that it exists in every
/// offset): a time from the year 9999 at the latest.
const OUT_OF_RANGE: &str = "out of range: times before 1970 or after 9999 are not accepted";

/// Parses a time value; a time without an offset is read in `tz` (DST-correct).
///
/// Fractions of a second are truncated. A local time that falls in a DST gap or fold is
/// resolved the "compatible" way (as RFC 5545 and JavaScript do): a time skipped by a
/// spring-forward gap is moved forward by the gap (02:30 in New York on 2024-03-10 is 03:30
/// EDT), and a repeated time in a fall-back fold is its first occurrence (01:30 on 2024-11-03
/// is 01:30 EDT).
pub fn parse_time(text: &str, format: &TimeFormat, tz: &TimeZone) -> Result<Timestamp, String> {
    let text = text.trim();
    let at = match format {
        TimeFormat::Unix => parse_unix(text, false)?,
        TimeFormat::UnixMs => parse_unix(text, true)?,
        TimeFormat::Rfc3339 => parse_iso(text)
            .filter(|iso| iso.has_time)
            .ok_or_else(|| format!("not an RFC 3339 time: {RFC3339_ACCEPTED}"))?
            .resolve(tz)?,
        TimeFormat::Auto => parse_auto(text, tz)?,
        TimeFormat::Pattern(pattern) => parse_with_pattern(text, pattern, tz)?,
    };
    truncate_within_range(at)
}

const UNIX_ACCEPTED: &str =
    "expected whole or decimal seconds since 1970-01-01 UTC (e.g. 1700000000 or 1716198088.5)";
const UNIX_MS_ACCEPTED: &str = "expected milliseconds since 1970-01-01 UTC (e.g. 1700000000000)";
const RFC3339_ACCEPTED: &str = "expected e.g. 2024-05-20T10:00:00Z, 2024-05-20T10:00:00+08:00 \
     or 2024-05-20 10:00:00 (read in the rule's tz)";
const AUTO_ACCEPTED: &str = "expected unix seconds or milliseconds (1700000000, \
     1700000000000), RFC 3339 (2024-05-20T10:00:00Z), Y-m-d H:i:s (2024-05-20 10:00:00) or \
     Y-m-d (2024-05-20)";

fn parse_auto(text: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    if let Some(unix) = parse_unix_auto(text) {
        return unix;
    }
    parse_iso(text)
        .ok_or_else(|| format!("not a time: {AUTO_ACCEPTED}"))?
        .resolve(tz)
}

/// Seconds or milliseconds, as the rule says.
fn parse_unix(text: &str, millis: bool) -> Result<Timestamp, String> {
    match split_unix_number(text) {
        Some((negative, whole)) => unix_to_timestamp(negative, whole, millis),
        None if millis => Err(format!(
            "not a unix time in milliseconds: {UNIX_MS_ACCEPTED}"
        )),
        None => Err(format!("not a unix time: {UNIX_ACCEPTED}")),
    }
}

/// `None` when the text is not a number; otherwise the instant or an out-of-range error.
fn parse_unix_auto(text: &str) -> Option<Result<Timestamp, String>> {
    let (negative, whole) = split_unix_number(text)?;
    // A number too large for i64 is out of range in either unit.
    let millis = !whole.parse::<i64>().is_ok_and(|n| n < AUTO_MILLIS_FROM);
    Some(unix_to_timestamp(negative, whole, millis))
}

/// `-?digits(.digits)?` -> (negative, whole digits); the fraction is dropped (truncation).
fn split_unix_number(text: &str) -> Option<(bool, &str)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (all_digits(whole) && all_digits(fraction)).then_some((negative, whole))
}

fn unix_to_timestamp(negative: bool, whole: &str, millis: bool) -> Result<Timestamp, String> {
    if negative {
        return Err(OUT_OF_RANGE.to_owned());
    }
    let number: i64 = whole.parse().map_err(|_| OUT_OF_RANGE)?;
    let at = if millis {
        Timestamp::from_millisecond(number)
    } else {
        Timestamp::from_second(number)
    };
    at.map_err(|_| OUT_OF_RANGE.to_owned())
}

fn parse_with_pattern(text: &str, pattern: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let fail = |e: jiff::Error| format!("does not match the time pattern \"{pattern}\" ({e})");
    let parsed = strtime::parse(pattern, text).map_err(fail)?;
    if let Some(at) = parsed.timestamp() {
        return Ok(at);
    }
    if parsed.iana_time_zone().is_some() {
        return parsed
            .to_zoned_datetime()
            .map(|zdt| zdt.timestamp())
            .map_err(fail);
    }
    if parsed.offset().is_some() {
        return parsed.to_timestamp().map_err(fail);
    }
    let datetime = parsed.to_datetime().map_err(fail)?;
    tz.to_timestamp(datetime)
        .map_err(|_| OUT_OF_RANGE.to_owned())
}

/// Refuses times before 1970 (later than 9999 never gets this far) and drops the fraction of
/// a second.
fn truncate_within_range(at: Timestamp) -> Result<Timestamp, String> {
    if at < Timestamp::UNIX_EPOCH {
        return Err(OUT_OF_RANGE.to_owned());
    }
    Timestamp::from_second(at.as_second()).map_err(|_| OUT_OF_RANGE.to_owned())
}

/// A civil date-time read from ISO-like text, with the offset it carried, if any.
struct IsoTime {
    datetime: DateTime,
    offset: Option<Offset>,
    has_time: bool,
}

impl IsoTime {
    fn resolve(&self, tz: &TimeZone) -> Result<Timestamp, String> {
        let at = match self.offset {
            Some(offset) => offset.to_timestamp(self.datetime),
            None => tz.to_timestamp(self.datetime),
        };
        at.map_err(|_| OUT_OF_RANGE.to_owned())
    }
}

/// `YYYY-MM-DD[(T|t| )HH:MM[:SS[(.|,)fraction]][offset]]`; a leap second `:60` reads as `:59`.
fn parse_iso(text: &str) -> Option<IsoTime> {
    let mut cursor = Cursor(text);
    let year = i16::try_from(cursor.digits(4)?).ok()?;
    let month = cursor.eat('-')?.two_digits()?;
    let day = cursor.eat('-')?.two_digits()?;
    if cursor.0.is_empty() {
        let datetime = DateTime::new(year, month, day, 0, 0, 0, 0).ok()?;
        return Some(IsoTime {
            datetime,
            offset: None,
            has_time: false,
        });
    }
    cursor.0 = cursor.0.strip_prefix(['T', 't', ' '])?;
    let hour = cursor.two_digits()?;
    let minute = cursor.eat(':')?.two_digits()?;
    let second = if cursor.0.starts_with(':') {
        cursor.eat(':')?.two_digits()?
    } else {
        0
    };
    cursor.skip_fraction()?;
    let offset = parse_offset_suffix(cursor.0)?;
    let datetime = DateTime::new(year, month, day, hour, minute, second.min(59), 0).ok()?;
    Some(IsoTime {
        datetime,
        offset,
        has_time: true,
    })
}

/// What follows the time: nothing, `Z`, `UTC`, a signed offset (optionally after a space), or
/// a space and an unsigned offset: FORMATS quirk 5, a `+` sent unencoded arrives as a space
/// (`2024-05-20T10:00:00 08:00` means `+08:00`). `None` when malformed, `Some(None)` when empty.
fn parse_offset_suffix(rest: &str) -> Option<Option<Offset>> {
    if rest.is_empty() {
        return Some(None);
    }
    let (spaced, suffix) = match rest.strip_prefix(' ') {
        Some(suffix) => (true, suffix),
        None => (false, rest),
    };
    if matches!(suffix, "Z" | "z" | "UTC") {
        return Some(Some(Offset::UTC));
    }
    if suffix.starts_with(['+', '-']) {
        return parse_offset(suffix).map(Some);
    }
    if spaced {
        return unsigned_offset(suffix, 1).map(Some);
    }
    None
}

/// `+08:00`, `+0800`, `+08`, `-05:30`, up to ±23:59.
fn parse_offset(text: &str) -> Option<Offset> {
    if let Some(rest) = text.strip_prefix('+') {
        unsigned_offset(rest, 1)
    } else {
        unsigned_offset(text.strip_prefix('-')?, -1)
    }
}

fn unsigned_offset(text: &str, sign: i32) -> Option<Offset> {
    let mut cursor = Cursor(text);
    let hours = i32::from(cursor.two_digits()?);
    let minutes = if cursor.0.is_empty() {
        0
    } else {
        cursor.0 = cursor.0.strip_prefix(':').unwrap_or(cursor.0);
        i32::from(cursor.two_digits()?)
    };
    if !cursor.0.is_empty() || hours > 23 || minutes > 59 {
        return None;
    }
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()
}

/// A tiny reader over the rest of a time text.
struct Cursor<'a>(&'a str);

impl Cursor<'_> {
    /// Exactly `count` ASCII digits.
    fn digits(&mut self, count: usize) -> Option<u16> {
        let (head, tail) = self.0.split_at_checked(count)?;
        if !head.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.0 = tail;
        head.parse().ok()
    }

    fn two_digits(&mut self) -> Option<i8> {
        i8::try_from(self.digits(2)?).ok()
    }

    /// Consumes `c`, or fails.
    fn eat(&mut self, c: char) -> Option<&mut Self> {
        self.0 = self.0.strip_prefix(c)?;
        Some(self)
    }

    /// Skips `.digits` or `,digits` (at least one digit): fractions are truncated anyway.
    fn skip_fraction(&mut self) -> Option<()> {
        let Some(rest) = self.0.strip_prefix(['.', ',']) else {
            return Some(());
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        self.0 = &rest[digits..];
        Some(())
    }
}

/// Scaleo's `Y-m-d H:i:s` in `zone`, seconds truncated.
pub fn format_scaleo_time(at: Timestamp, zone: &TimeZone) -> String {
    let local = zone.to_datetime(at);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        local.year(),
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn none() -> Vec<String> {
        Vec::new()
    }

    fn dec(text: &str, mode: DecimalMode) -> String {
        match parse_decimal(text, mode) {
            Ok(value) => format_decimal(value),
            Err(e) => format!("Err({e})"),
        }
    }

    fn utc_text(text: &str, format: &TimeFormat, tz: &str) -> String {
        let tz = parse_zone(tz).expect("test zone");
        match parse_time(text, format, &tz) {
            Ok(at) => format_scaleo_time(at, &TimeZone::UTC),
            Err(e) => format!("Err({e})"),
        }
    }

    // --- no value ------------------------------------------------------------------------

    #[test]
    fn empty_value_is_empty() {
        assert_eq!(no_value("", &none()), Some(NoValue::Empty));
    }

    #[test]
    fn every_macro_dialect_is_an_unresolved_macro() {
        for value in [
            "{clickid}",
            "{{clickid}}",
            "${SUBID}",
            "[cid]",
            "(idfa)",
            "#click_id#",
            "%CLICK_ID%",
            "<txid>",
            "{replace_or_remove}",
            "{adv:sub?x=1}",
            "{click id}",
            "(sub.1)",
            "[sub-2]",
            "%ABC%",
        ] {
            assert_eq!(no_value(value, &none()), Some(NoValue::Macro), "{value}");
        }
    }

    #[test]
    fn url_encoded_macros_are_unresolved_macros() {
        for value in [
            "%7Bclickid%7D",
            "%7B%7Bx%7D%7D",
            "%24%7BSUBID%7D",
            "%5Bcid%5D",
            "%28idfa%29",
            "%23click_id%23",
            "%25CLICK_ID%25",
            "%3Ctxid%3E",
            "%7bclickid%7d",
            "%20%7Bclickid%7D%20",
        ] {
            assert_eq!(no_value(value, &none()), Some(NoValue::Macro), "{value}");
        }
    }

    #[test]
    fn double_and_triple_encoded_macros_are_unresolved_macros() {
        // What reaches us after the one form decoding of `%25257Bclickid%25257D`.
        assert_eq!(no_value("%257Bclickid%257D", &none()), Some(NoValue::Macro));
        assert_eq!(
            no_value("%25257Bclickid%25257D", &none()),
            Some(NoValue::Macro)
        );
    }

    #[test]
    fn json_arrays_and_objects_are_never_macros() {
        for value in [
            "[1]",
            "[true]",
            "[ 1 ]",
            "[null]",
            "[-1.5]",
            "%5B1%5D",
            "{\"a\":1}",
        ] {
            assert_eq!(no_value(value, &none()), None, "{value}");
        }
    }

    #[test]
    fn real_values_are_not_no_value() {
        for value in [
            "abc123",
            "50%",
            "100%25",
            "Network1%3A%3AChristmas",
            "Network1::Christmas",
            "#1001",
            "{}",
            "()",
            "%%",
            "A-9",
            "12.50",
            "{clickid}abc",
            "x{clickid}",
            "{a/b}",
            "{a,b}",
            "(Москва)",
            "%E2%82%AC",
            "%FF%FE",
        ] {
            assert_eq!(no_value(value, &none()), None, "{value}");
        }
    }

    #[test]
    fn percent_encoded_white_space_is_empty() {
        for value in ["%20", "%2520", "%09%20", "%252520"] {
            assert_eq!(no_value(value, &none()), Some(NoValue::Empty), "{value}");
        }
    }

    #[test]
    fn placeholders_match_exactly_and_case_sensitively() {
        let placeholders = vec!["REPLACE".to_owned(), "TRANSACTION_ID".to_owned()];
        assert_eq!(
            no_value("REPLACE", &placeholders),
            Some(NoValue::Placeholder)
        );
        assert_eq!(
            no_value("TRANSACTION_ID", &placeholders),
            Some(NoValue::Placeholder)
        );
        assert_eq!(no_value("replace", &placeholders), None);
        assert_eq!(no_value("REPLACED", &placeholders), None);
        assert_eq!(no_value("REPLACE", &none()), None, "not built in");
    }

    #[test]
    fn no_value_reasons_are_described() {
        assert_eq!(NoValue::Macro.describe(), "unresolved macro");
        assert_eq!(NoValue::Empty.describe(), "empty");
        assert_eq!(NoValue::Placeholder.describe(), "placeholder");
    }

    // --- decimals ------------------------------------------------------------------------

    #[test]
    fn comma_decimal_with_dot_thousands_is_exact() {
        assert_eq!(dec("1.234,56", DecimalMode::Auto), "1234.56");
        assert_eq!(dec("1.234.567,89", DecimalMode::Comma), "1234567.89");
    }

    #[test]
    fn dot_decimal_with_comma_thousands_is_exact() {
        assert_eq!(dec("1,234.56", DecimalMode::Auto), "1234.56");
        assert_eq!(dec("$1,234,567.89", DecimalMode::Dot), "1234567.89");
    }

    #[test]
    fn auto_reads_money_the_way_senders_write_it() {
        for (text, expected) in [
            ("12,34", "12.34"),
            ("12.50", "12.5"),
            ("€12,50", "12.5"),
            ("12.50 €", "12.5"),
            ("12,50€", "12.5"),
            ("-49.99", "-49.99"),
            ("+5", "5"),
            ("0.125", "0.125"),
            ("0,125", "0.125"),
            ("1,234,567", "1234567"),
            ("1.234.567", "1234567"),
            ("1234,567", "1234.567"),
            ("$ 12", "12"),
            ("-$49.99", "-49.99"),
            ("$-49.99", "-49.99"),
            ("¥1000", "1000"),
            ("£0.5", "0.5"),
            (".5", "0.5"),
            (",123", "0.123"),
            ("5.", "5"),
            ("007", "7"),
            ("-0", "0"),
            ("1999", "1999"),
            ("  42  ", "42"),
            ("1.5000000000000000000000000000000000", "1.5"),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
            (
                "0.0000000000000000000000000001",
                "0.0000000000000000000000000001",
            ),
        ] {
            assert_eq!(dec(text, DecimalMode::Auto), expected, "{text}");
        }
    }

    #[test]
    fn lone_separator_before_three_digits_is_ambiguous_in_auto() {
        for text in ["1,234", "1.234", "$12,345", "-999.000"] {
            let error = parse_decimal(text, DecimalMode::Auto).expect_err(text);
            assert!(error.contains("ambiguous"), "{error}");
            assert!(error.contains("decimal = \"dot\" or \"comma\""), "{error}");
        }
    }

    #[test]
    fn pinned_separator_resolves_the_ambiguity() {
        assert_eq!(dec("1,234", DecimalMode::Dot), "1234");
        assert_eq!(dec("1.234", DecimalMode::Dot), "1.234");
        assert_eq!(dec("1,234", DecimalMode::Comma), "1.234");
        assert_eq!(dec("1.234", DecimalMode::Comma), "1234");
    }

    #[test]
    fn pinned_dot_refuses_a_comma_that_cannot_group_thousands() {
        let error = parse_decimal("12,50", DecimalMode::Dot).expect_err("bad grouping");
        assert!(error.contains("groups of three digits"), "{error}");
        assert!(parse_decimal("0,500", DecimalMode::Dot).is_err());
        assert!(parse_decimal("12.50", DecimalMode::Comma).is_err());
    }

    #[test]
    fn malformed_numbers_are_rejected_with_what_is_accepted() {
        for (text, reason) in [
            ("", "empty"),
            ("   ", "empty"),
            ("abc", "not a number"),
            ("12abc", "not a number"),
            ("1e5", "exponent"),
            ("1.5E-3", "exponent"),
            ("NaN", "NaN"),
            ("inf", "infinity"),
            ("0x1F", "hexadecimal"),
            ("--5", "more than one sign"),
            ("+-5", "more than one sign"),
            ("5-", "sign"),
            ("$$5", "more than one currency sign"),
            ("$5€", "more than one currency sign"),
            ("5$5", "currency sign"),
            ("$", "no digits"),
            (".", "no digits"),
            ("1,23.45", "groups of three"),
            ("1..2", "groups of three"),
            ("1.234,5.6", "more than one decimal separator"),
            ("1.5,000", "groups of three"),
            ("1 234", "spaces"),
            ("100000000000000000000000000000", "too many"),
            ("0.00000000000000000000000000001", "decimal places"),
        ] {
            let error = parse_decimal(text, DecimalMode::Auto).expect_err(text);
            assert!(error.contains(reason), "{text}: {error}");
            assert!(
                error.contains("expected") || error.contains("at most"),
                "{error}"
            );
        }
    }

    #[test]
    fn number_errors_do_not_repeat_the_value() {
        for text in ["12abc", "1,234", "zzz9"] {
            let error = parse_decimal(text, DecimalMode::Auto).expect_err(text);
            assert!(!error.contains(text), "{error}");
        }
    }

    #[test]
    fn cents_scaled_by_a_hundredth_are_exact() {
        let cents = parse_decimal("1999", DecimalMode::Auto).expect("number");
        let scale = parse_decimal("0.01", DecimalMode::Auto).expect("scale");
        assert_eq!(
            format_decimal(scale_decimal(cents, scale).expect("fits")),
            "19.99"
        );
    }

    #[test]
    fn scaling_never_rounds() {
        let tiny = Decimal::new(1, 20);
        assert!(
            scale_decimal(tiny, tiny).is_err(),
            "40 decimal places would round"
        );
        assert!(scale_decimal(Decimal::MAX, Decimal::TEN).is_err());
        let half = Decimal::new(5, 1);
        assert!(
            scale_decimal(Decimal::MAX, half).is_err(),
            "would need 30 digits"
        );
        assert_eq!(
            format_decimal(scale_decimal(Decimal::new(15, 1), Decimal::TWO).expect("3")),
            "3"
        );
        assert_eq!(
            format_decimal(scale_decimal(Decimal::new(-5, 0), Decimal::ZERO).expect("0")),
            "0"
        );
    }

    #[test]
    fn formatted_decimals_are_normalized() {
        assert_eq!(format_decimal(Decimal::new(500, 2)), "5");
        assert_eq!(format_decimal(Decimal::new(-50, 2)), "-0.5");
        assert_eq!(format_decimal(Decimal::new(-0, 3)), "0");
        assert_eq!(
            format_decimal(Decimal::new(1, 20)),
            "0.00000000000000000001"
        );
        assert_eq!(format_decimal(Decimal::new(1999, 2)), "19.99");
    }

    /// The expected text of `digits * 10^-places`, built by string surgery alone.
    fn with_point_inserted(number: i64, places: usize) -> String {
        let digits = format!("{:0>width$}", number.unsigned_abs(), width = places + 1);
        let (whole, fraction) = digits.split_at(digits.len() - places);
        let fraction = fraction.trim_end_matches('0');
        let body = if fraction.is_empty() {
            whole.to_owned()
        } else {
            format!("{whole}.{fraction}")
        };
        if number < 0 { format!("-{body}") } else { body }
    }

    proptest! {
        #[test]
        fn scaling_by_a_power_of_ten_only_moves_the_point(number in any::<i64>(), places in 0u32..=18) {
            let scaled = scale_decimal(Decimal::from(number), Decimal::new(1, places));
            prop_assert_eq!(format_decimal(scaled.expect("fits")), with_point_inserted(number, places as usize));
        }

        #[test]
        fn formatted_decimals_parse_back_exactly(
            mantissa in -(1i128 << 96) + 1..(1i128 << 96),
            scale in 0u32..=28,
        ) {
            let value = Decimal::from_i128_with_scale(mantissa, scale);
            let text = format_decimal(value);
            prop_assert_eq!(parse_decimal(&text, DecimalMode::Dot), Ok(value));
            prop_assert_eq!(parse_decimal(&text.replace('.', ","), DecimalMode::Comma), Ok(value));
        }

        #[test]
        fn parse_decimal_never_panics(text in "\\PC{0,40}", mode in 0..3u8) {
            let mode = [DecimalMode::Auto, DecimalMode::Dot, DecimalMode::Comma][usize::from(mode)];
            let _ = parse_decimal(&text, mode);
        }

        #[test]
        fn parse_decimal_never_panics_on_number_like_text(text in "[-+$€£¥., 0-9eExXnaNif]{0,40}") {
            for mode in [DecimalMode::Auto, DecimalMode::Dot, DecimalMode::Comma] {
                let _ = parse_decimal(&text, mode);
            }
        }

        #[test]
        fn no_value_never_panics(text in "\\PC{0,40}") {
            let _ = no_value(&text, &["X".to_owned()]);
        }

        #[test]
        fn no_value_never_panics_on_escapes(text in "[%0-9a-fA-F{}()\\[\\]#<>$ ]{0,30}") {
            let _ = no_value(&text, &none());
        }
    }

    // --- times ---------------------------------------------------------------------------

    #[test]
    fn unix_seconds_and_milliseconds_are_utc_instants() {
        assert_eq!(
            utc_text("1700000000", &TimeFormat::Unix, "UTC"),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            utc_text("1700000000123", &TimeFormat::UnixMs, "UTC"),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            utc_text("0", &TimeFormat::Unix, "UTC"),
            "1970-01-01 00:00:00"
        );
    }

    #[test]
    fn float_seconds_are_truncated() {
        let tz = TimeZone::UTC;
        let at = parse_time("1716198088.000000", &TimeFormat::Unix, &tz).expect("time");
        assert_eq!(at.as_second(), 1_716_198_088);
        let at = parse_time("1716198088.999", &TimeFormat::Auto, &tz).expect("time");
        assert_eq!(at, Timestamp::constant(1_716_198_088, 0));
    }

    #[test]
    fn auto_reads_numbers_from_1e11_as_milliseconds() {
        assert_eq!(
            utc_text("1700000000000", &TimeFormat::Auto, "UTC"),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            utc_text("1700000000", &TimeFormat::Auto, "UTC"),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            utc_text("99999999999", &TimeFormat::Auto, "UTC"),
            "5138-11-16 09:46:39"
        );
        assert_eq!(
            utc_text("100000000000", &TimeFormat::Auto, "UTC"),
            "1973-03-03 09:46:40"
        );
    }

    #[test]
    fn rfc3339_with_z_offsets_and_a_space_for_t() {
        for (text, expected) in [
            ("2024-05-20T10:00:00Z", "2024-05-20 10:00:00"),
            ("2024-05-20t10:00:00z", "2024-05-20 10:00:00"),
            ("2024-05-20T10:00:00.987654Z", "2024-05-20 10:00:00"),
            ("2024-05-20T10:00:00+05:30", "2024-05-20 04:30:00"),
            ("2024-05-20T10:00:00-0500", "2024-05-20 15:00:00"),
            ("2024-05-20T10:00:00+08", "2024-05-20 02:00:00"),
            ("2024-05-20 10:00:00+08:00", "2024-05-20 02:00:00"),
            ("2024-05-20 10:00:00 +08:00", "2024-05-20 02:00:00"),
            ("2024-12-31T23:59:60Z", "2024-12-31 23:59:59"),
        ] {
            for format in [TimeFormat::Rfc3339, TimeFormat::Auto] {
                assert_eq!(utc_text(text, &format, "Asia/Tokyo"), expected, "{text}");
            }
        }
    }

    #[test]
    fn offset_whose_plus_was_decoded_into_a_space_is_positive() {
        for text in [
            "2024-05-20T10:00:00 08:00",
            "2024-05-20 10:00:00 0800",
            "2024-05-20 10:00:00 08",
        ] {
            assert_eq!(
                utc_text(text, &TimeFormat::Auto, "UTC"),
                "2024-05-20 02:00:00",
                "{text}"
            );
        }
    }

    #[test]
    fn local_time_is_read_in_a_fixed_offset() {
        for text in [
            "2024-05-20 10:00:00",
            "2024-05-20T10:00:00",
            "2024-05-20 10:00",
        ] {
            assert_eq!(
                utc_text(text, &TimeFormat::Auto, "+08:00"),
                "2024-05-20 02:00:00",
                "{text}"
            );
        }
        assert_eq!(
            utc_text("2024-05-20 10:00:00", &TimeFormat::Rfc3339, "+08:00"),
            "2024-05-20 02:00:00"
        );
    }

    #[test]
    fn local_time_is_read_in_asia_kolkata() {
        assert_eq!(
            utc_text("2024-05-20 10:00:00", &TimeFormat::Auto, "Asia/Kolkata"),
            "2024-05-20 04:30:00"
        );
    }

    #[test]
    fn time_in_a_new_york_dst_gap_moves_forward() {
        // 02:00-03:00 does not exist on 2024-03-10: 02:30 is read as 03:30 EDT.
        let ny = "America/New_York";
        assert_eq!(
            utc_text("2024-03-10 02:30:00", &TimeFormat::Auto, ny),
            "2024-03-10 07:30:00"
        );
        assert_eq!(
            utc_text("2024-03-10 03:30:00", &TimeFormat::Auto, ny),
            "2024-03-10 07:30:00"
        );
        assert_eq!(
            utc_text("2024-03-10 01:30:00", &TimeFormat::Auto, ny),
            "2024-03-10 06:30:00"
        );
    }

    #[test]
    fn time_in_a_new_york_dst_fold_is_the_first_occurrence() {
        // 01:30 happens twice on 2024-11-03: the first one, still EDT (-04:00), is taken.
        let ny = "America/New_York";
        assert_eq!(
            utc_text("2024-11-03 01:30:00", &TimeFormat::Auto, ny),
            "2024-11-03 05:30:00"
        );
        assert_eq!(
            utc_text("2024-11-03 02:30:00", &TimeFormat::Auto, ny),
            "2024-11-03 07:30:00"
        );
    }

    #[test]
    fn date_alone_is_midnight_in_tz_for_auto_only() {
        assert_eq!(
            utc_text("2024-05-20", &TimeFormat::Auto, "+08:00"),
            "2024-05-19 16:00:00"
        );
        assert!(
            utc_text("2024-05-20", &TimeFormat::Rfc3339, "UTC").starts_with("Err(not an RFC 3339")
        );
    }

    #[test]
    fn strftime_pattern_is_read_in_tz() {
        let format = TimeFormat::parse_spec("%d/%m/%Y %H:%M").expect("pattern");
        assert_eq!(
            utc_text("20/05/2024 10:00", &format, "UTC"),
            "2024-05-20 10:00:00"
        );
        assert_eq!(
            utc_text("20/05/2024 10:00", &format, "America/New_York"),
            "2024-05-20 14:00:00"
        );
    }

    #[test]
    fn strftime_pattern_with_its_own_offset_or_epoch_ignores_tz() {
        let format = TimeFormat::parse_spec("%Y-%m-%d %H:%M:%S %z").expect("pattern");
        assert_eq!(
            utc_text("2024-05-20 10:00:00 +0200", &format, "Asia/Kolkata"),
            "2024-05-20 08:00:00"
        );
        let format = TimeFormat::parse_spec("%s").expect("pattern");
        assert_eq!(
            utc_text("1700000000", &format, "Asia/Kolkata"),
            "2023-11-14 22:13:20"
        );
        let format = TimeFormat::parse_spec("%Y-%m-%d %H:%M:%S %Q").expect("pattern");
        assert_eq!(
            utc_text("2024-05-20 10:00:00 America/New_York", &format, "UTC"),
            "2024-05-20 14:00:00"
        );
    }

    #[test]
    fn time_spec_keywords_and_patterns_parse() {
        assert_eq!(TimeFormat::parse_spec("unix"), Ok(TimeFormat::Unix));
        assert_eq!(TimeFormat::parse_spec("unix_ms"), Ok(TimeFormat::UnixMs));
        assert_eq!(TimeFormat::parse_spec("rfc3339"), Ok(TimeFormat::Rfc3339));
        assert_eq!(TimeFormat::parse_spec("auto"), Ok(TimeFormat::Auto));
        for pattern in [
            "%Y%m%d%H%M%S",
            "%d.%m.%Y",
            "%Y-%m-%dT%H:%M:%S%.f%:z",
            "%m/%d/%y %I:%M %p",
        ] {
            assert_eq!(
                TimeFormat::parse_spec(pattern),
                Ok(TimeFormat::Pattern(pattern.to_owned())),
                "{pattern}"
            );
        }
    }

    #[test]
    fn invalid_time_specs_name_what_is_accepted() {
        for spec in [
            "hello",
            "Unix",
            "",
            "%H:%M",
            "%Y-%m-%",
            "%Y-%m-%d %Z",
            "%%",
            "%Q",
        ] {
            let error = TimeFormat::parse_spec(spec).expect_err(spec);
            assert!(
                error.contains("\"unix\", \"unix_ms\", \"rfc3339\", \"auto\""),
                "{spec}: {error}"
            );
        }
        let error = TimeFormat::parse_spec("%H:%M").expect_err("no date");
        assert!(error.contains("names no date"), "{error}");
    }

    #[test]
    fn zones_accept_utc_offsets_and_iana_names() {
        let offset = |text: &str| {
            parse_zone(text)
                .expect(text)
                .to_fixed_offset()
                .expect(text)
                .seconds()
        };
        assert_eq!(offset("UTC"), 0);
        assert_eq!(offset("utc"), 0);
        assert_eq!(offset("Z"), 0);
        assert_eq!(offset("+08:00"), 8 * 3600);
        assert_eq!(offset("+0800"), 8 * 3600);
        assert_eq!(offset("+08"), 8 * 3600);
        assert_eq!(offset("-05:30"), -(5 * 3600 + 30 * 60));
        for name in ["Asia/Kolkata", "America/New_York", "Europe/Berlin"] {
            assert_eq!(parse_zone(name).expect(name).iana_name(), Some(name));
        }
    }

    #[test]
    fn invalid_zones_name_what_is_accepted() {
        for text in [
            "Mars/Olympus",
            "+25:00",
            "+8",
            "+08:60",
            "",
            "UTC+8",
            "08:00",
            "+08:00:00",
        ] {
            let error = parse_zone(text).expect_err(text);
            assert!(
                error.contains("IANA") && error.contains("+08:00"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn times_before_1970_or_after_9999_are_rejected() {
        for (text, format) in [
            ("-1", TimeFormat::Unix),
            ("-1700000000", TimeFormat::Auto),
            ("253402300800", TimeFormat::Unix),
            ("99999999999999999999", TimeFormat::Auto),
            ("1969-12-31 23:59:59", TimeFormat::Auto),
            ("9999-12-31 00:00:00", TimeFormat::Auto),
            ("1969-12-31T23:59:59Z", TimeFormat::Rfc3339),
        ] {
            let error = parse_time(text, &format, &TimeZone::UTC).expect_err(text);
            assert!(error.contains("out of range"), "{text}: {error}");
        }
        assert_eq!(
            utc_text("9999-12-30 21:59:59", &TimeFormat::Auto, "UTC"),
            "9999-12-30 21:59:59"
        );
    }

    #[test]
    fn malformed_times_name_the_accepted_formats() {
        let tz = TimeZone::UTC;
        for (text, format, accepted) in [
            ("abc", TimeFormat::Auto, "RFC 3339"),
            ("", TimeFormat::Auto, "Y-m-d H:i:s"),
            ("2024-13-01 00:00:00", TimeFormat::Auto, "Y-m-d H:i:s"),
            ("2024-05-20 25:00:00", TimeFormat::Auto, "Y-m-d H:i:s"),
            (
                "2024-05-20T10:00:00+08:00x",
                TimeFormat::Rfc3339,
                "2024-05-20T10:00:00Z",
            ),
            (
                "2024-05-20T10:00:00.Z",
                TimeFormat::Rfc3339,
                "2024-05-20T10:00:00Z",
            ),
            ("1700000000", TimeFormat::Rfc3339, "2024-05-20T10:00:00Z"),
            ("1.7e9", TimeFormat::Unix, "seconds since 1970"),
            ("2024-05-20", TimeFormat::Unix, "seconds since 1970"),
            ("1700000000.", TimeFormat::Unix, "seconds since 1970"),
            ("abc", TimeFormat::UnixMs, "milliseconds since 1970"),
            (
                "20-05-2024 10:00",
                TimeFormat::Pattern("%d/%m/%Y %H:%M".to_owned()),
                "%d/%m/%Y %H:%M",
            ),
        ] {
            let error = parse_time(text, &format, &tz).expect_err(text);
            assert!(error.contains(accepted), "{text}: {error}");
        }
    }

    #[test]
    fn scaleo_time_is_formatted_in_the_network_zone() {
        let at = Timestamp::constant(1_700_000_000, 999_000_000);
        assert_eq!(
            format_scaleo_time(at, &TimeZone::UTC),
            "2023-11-14 22:13:20"
        );
        let kolkata = parse_zone("Asia/Kolkata").expect("zone");
        assert_eq!(format_scaleo_time(at, &kolkata), "2023-11-15 03:43:20");
    }

    proptest! {
        #[test]
        fn parse_time_never_panics(text in "\\PC{0,40}") {
            for tz in [TimeZone::UTC, parse_zone("America/New_York").expect("zone")] {
                for format in every_format() {
                    let _ = parse_time(&text, &format, &tz);
                }
            }
        }

        #[test]
        fn parse_time_never_panics_on_time_like_text(text in "[-+0-9:. TZ]{0,32}") {
            for format in every_format() {
                let _ = parse_time(&text, &format, &TimeZone::UTC);
            }
        }

        #[test]
        fn parse_spec_never_panics(spec in "[%a-zA-Z:/. -]{0,12}") {
            let _ = TimeFormat::parse_spec(&spec);
        }

        #[test]
        fn parse_zone_and_duration_never_panic(text in "\\PC{0,24}") {
            let _ = parse_zone(&text);
            let _ = parse_duration(&text);
        }
    }

    fn every_format() -> Vec<TimeFormat> {
        vec![
            TimeFormat::Unix,
            TimeFormat::UnixMs,
            TimeFormat::Rfc3339,
            TimeFormat::Auto,
            TimeFormat::Pattern("%d/%m/%Y %H:%M".to_owned()),
            TimeFormat::Pattern("%s".to_owned()),
            TimeFormat::Pattern("%Y-%m-%dT%H:%M:%S%z".to_owned()),
            TimeFormat::Pattern("%H".to_owned()),
        ]
    }

    // --- durations -----------------------------------------------------------------------

    #[test]
    fn durations_take_one_number_and_a_unit() {
        for (text, millis) in [
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("3d", 259_200_000),
            ("0s", 0),
            ("10 s", 10_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_durations_list_the_units() {
        for text in [
            "10",
            "s",
            "1w",
            "-5s",
            "1.5s",
            "",
            "10sec",
            "99999999999999999999s",
            "99999999999999d",
        ] {
            let error = parse_duration(text).expect_err(text);
            assert!(error.contains("ms, s, m, h or d"), "{text}: {error}");
        }
    }
}
