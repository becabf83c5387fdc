//! Times and zones: unix, RFC 3339, `Y-m-d H:i:s`, strftime patterns, offsets and IANA zones.

use jiff::Timestamp;
use jiff::ZonedDateTime;
use jiff::civil::DateTime;
use jiff::fmt::strtime;
use jiff::tz::{Offset, TimeZone};

use crate::parse::{parse_offset, unsigned_offset};

// Times and zones
// ---------------------------------------------------------------------------------------------

/// How a time parameter is written (`time = ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeFormat {
    /// Whole or decimal seconds since 1970 (`1700000000`, `1716198088.000000`), from
    /// 2000-01-01 to 2100-01-01.
    Unix,
    /// Whole (or decimal) milliseconds since 1970, in the same range.
    UnixMs,
    /// `2024-05-20T10:00:00Z`, `+08:00` / `+0800` / `+08` offsets, a space for `T`; without an
    /// offset the time is read in the rule's `tz`.
    Rfc3339,
    /// A compact `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, else a number (seconds, or
    /// milliseconds from 1e11), else RFC 3339, else `Y-m-d H:i:s`, else `Y-m-d` (midnight in
    /// `tz`).
    Auto,
    /// A strftime pattern, validated at load time.
    Pattern(String),
    /// Several formats tried in order (`time = ["%d/%m/%Y %H:%M", "%d/%m/%Y"]`); the first
    /// that reads the value wins.
    Any(Vec<TimeFormat>),
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

    /// A list of formats tried in order; each entry is checked like [`TimeFormat::parse_spec`].
    /// The error names the entry (1-based) that is wrong.
    pub fn parse_specs(specs: &[String]) -> Result<TimeFormat, String> {
        if specs.is_empty() {
            return Err(format!("an empty list: {TIME_SPEC_ACCEPTED}"));
        }
        let mut formats = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let format = TimeFormat::parse_spec(spec)
                .map_err(|e| format!("entry {} ({spec:?}): {e}", i + 1))?;
            formats.push(format);
        }
        Ok(match formats.len() {
            1 => formats.remove(0),
            _ => TimeFormat::Any(formats),
        })
    }
}

fn validate_pattern(pattern: &str) -> Result<(), String> {
    // 2024-07-15 16:24:59 UTC: every field differs, so day and month cannot be mixed up.
    let sample: ZonedDateTime =
        Timestamp::constant(1_721_060_699, 0).to_zoned_datetime(TimeZone::UTC);
    let text = strtime::format(pattern, &sample)
        .map_err(|e| format!("invalid strftime pattern ({e}): {TIME_SPEC_ACCEPTED}"))?;
    // Values are trimmed before they are read: so is the sample (a pattern whose output ends in
    // white space it needs, such as `%03t`, could never read one).
    let parsed = strtime::parse(pattern, text.trim()).map_err(|e| {
        format!("strftime pattern cannot be used to parse ({e}): {TIME_SPEC_ACCEPTED}")
    })?;
    if parsed.timestamp().is_some() || parsed.to_datetime().is_ok() {
        // Read as a postback's value is (`%f%s` reads its own output as another instant).
        let format = TimeFormat::Pattern(pattern.to_owned());
        parse_time(&text, &format, &TimeZone::UTC).map_err(|e| {
            format!("strftime pattern cannot read the times it writes ({e}): {TIME_SPEC_ACCEPTED}")
        })?;
    }
    if parsed.timestamp().is_some() || parsed.to_datetime().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "strftime pattern names no date (it needs %Y, %m and %d, or %s): {TIME_SPEC_ACCEPTED}"
        ))
    }
}

/// In `auto`, a number from 1e11 on is milliseconds (1e11 seconds would be the year 5138).
const AUTO_MILLIS_FROM: i64 = 100_000_000_000;

/// Unix times are accepted from 2000-01-01 (inclusive) to 2100-01-01 (exclusive): `0`, a
/// sender's "unknown", or a compact date misread as seconds must never become a real time.
const UNIX_FROM: i64 = 946_684_800;
const UNIX_UNTIL: i64 = 4_102_444_800;
const UNIX_OUT_OF_RANGE: &str = "out of range: a unix time must fall between 2000-01-01 and \
     2100-01-01 (0 or a small number means the sender had no time)";

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
        TimeFormat::Any(formats) => {
            let mut errors = Vec::with_capacity(formats.len());
            let mut found = None;
            for format in formats {
                match parse_time(text, format, tz) {
                    Ok(at) => {
                        found = Some(at);
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
            match found {
                Some(at) => at,
                None => {
                    return Err(format!(
                        "matches none of the {} time formats ({})",
                        formats.len(),
                        errors.join("; ")
                    ));
                }
            }
        }
    };
    truncate_within_range(at)
}

const UNIX_ACCEPTED: &str =
    "expected whole or decimal seconds since 1970-01-01 UTC (e.g. 1700000000 or 1716198088.5)";
const UNIX_MS_ACCEPTED: &str = "expected milliseconds since 1970-01-01 UTC (e.g. 1700000000000)";
const RFC3339_ACCEPTED: &str = "expected e.g. 2024-05-20T10:00:00Z, 2024-05-20T10:00:00+08:00 \
     or 2024-05-20 10:00:00 (read in the rule's tz)";
const AUTO_ACCEPTED: &str = "expected YYYYMMDD[HHMM[SS]] (20240520094128), unix seconds or \
     milliseconds (1700000000, 1700000000000), RFC 3339 (2024-05-20T10:00:00Z), Y-m-d H:i:s (2024-05-20 10:00:00) or \
     Y-m-d (2024-05-20)";

fn parse_auto(text: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    if let Some(datetime) = parse_compact(text) {
        return tz
            .to_timestamp(datetime)
            .map_err(|_| OUT_OF_RANGE.to_owned());
    }
    if let Some(unix) = parse_unix_auto(text) {
        return unix;
    }
    parse_iso(text)
        .ok_or_else(|| format!("not a time: {AUTO_ACCEPTED}"))?
        .resolve(tz)
}

/// `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS` (exactly 8, 12 or 14 digits) that is a
/// valid date and time; `None` otherwise (then the digits are read as a unix time).
fn parse_compact(text: &str) -> Option<DateTime> {
    if !matches!(text.len(), 8 | 12 | 14) || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut cursor = Cursor(text);
    let year = i16::try_from(cursor.digits(4)?).ok()?;
    let month = cursor.two_digits()?;
    let day = cursor.two_digits()?;
    let (hour, minute) = if cursor.0.is_empty() {
        (0, 0)
    } else {
        (cursor.two_digits()?, cursor.two_digits()?)
    };
    let second = if cursor.0.is_empty() {
        0
    } else {
        cursor.two_digits()?
    };
    DateTime::new(year, month, day, hour, minute, second, 0).ok()
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
        return Err(UNIX_OUT_OF_RANGE.to_owned());
    }
    let number: i64 = whole.parse().map_err(|_| UNIX_OUT_OF_RANGE)?;
    let at = if millis {
        Timestamp::from_millisecond(number)
    } else {
        Timestamp::from_second(number)
    };
    let at = at.map_err(|_| UNIX_OUT_OF_RANGE.to_owned())?;
    unix_within_range(at)
}

fn unix_within_range(at: Timestamp) -> Result<Timestamp, String> {
    if (UNIX_FROM..UNIX_UNTIL).contains(&at.as_second()) {
        Ok(at)
    } else {
        Err(UNIX_OUT_OF_RANGE.to_owned())
    }
}

fn parse_with_pattern(text: &str, pattern: &str, tz: &TimeZone) -> Result<Timestamp, String> {
    let fail = |e: jiff::Error| format!("does not match the time pattern \"{pattern}\" ({e})");
    let parsed = match strtime::parse(pattern, text) {
        Ok(parsed) => parsed,
        Err(e) => offset_variants(text, pattern)
            .into_iter()
            .find_map(|variant| strtime::parse(pattern, &variant).ok())
            .ok_or_else(|| fail(e))?,
    };
    if let Some(at) = parsed.timestamp() {
        return unix_within_range(at);
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

/// Under a pattern with an offset directive (`%z`, `%:z`), the other ways a sender writes the
/// same offset at the end of the time: a `+` sent unencoded arrives as a space (`09:41:28
/// 0200` or `09:41:28  0200` for `+0200`), with or without a space before it, and `+02:00`
/// next to `+0200`. Empty when the pattern has no offset or the text ends in none.
fn offset_variants(text: &str, pattern: &str) -> Vec<String> {
    if !pattern.contains("z") || !pattern.contains('%') {
        return Vec::new();
    }
    let Some((head, sign, hours, minutes)) = trailing_offset(text) else {
        return Vec::new();
    };
    let mut variants = Vec::new();
    let heads = [head.to_owned(), format!("{head} ")];
    for head in &heads {
        for offset in [
            format!("{sign}{hours}{minutes}"),
            format!("{sign}{hours}:{minutes}"),
        ] {
            let variant = format!("{head}{offset}");
            if variant != text {
                variants.push(variant);
            }
        }
    }
    variants
}

/// Splits `… 09:41:28 +02:00` (or ` 0200`, `+0200`, `  02:00`, ` +02`) into the text before
/// the offset (trailing spaces removed), the sign (`+` when it became a space) and the two
/// digit hours and minutes.
fn trailing_offset(text: &str) -> Option<(&str, char, String, String)> {
    let digits_start = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit() || *c == ':')
        .last()
        .map(|(i, _)| i)?;
    let offset = &text[digits_start..];
    let (hours, minutes) = match (offset.len(), offset.split_once(':')) {
        (5, Some((h, m))) if h.len() == 2 && m.len() == 2 => (h, m),
        (4, None) => offset.split_at(2),
        (2, None) => (offset, "00"),
        _ => return None,
    };
    let before = &text[..digits_start];
    let (sign, head) = if let Some(head) = before.strip_suffix(['+', '-']) {
        (if before.ends_with('-') { '-' } else { '+' }, head)
    } else if before.ends_with(' ') {
        ('+', before)
    } else {
        return None;
    };
    let head = head.trim_end();
    (!head.is_empty()).then(|| (head, sign, hours.to_owned(), minutes.to_owned()))
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
///
/// Not jiff's ISO 8601 / Temporal parser, on purpose: the set of forms differs both ways.
/// Jiff (1.0) also reads hour-only times, compact and signed-year forms and `[zone]`
/// annotations, which senders do not send and which would widen what `time = "rfc3339"`
/// accepts; and it refuses forms senders do send: a space before the offset, a `UTC`
/// suffix, an offset whose `+` arrived as a space, fractions past nanoseconds. Wrapping it
/// would take a check to refuse the extra forms plus four fix-ups that each must find where
/// the time ends, which is what this small reader does. Offsets are jiff's types.
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
    // Spaces before the offset: one written, one more when the `+` arrived as a space.
    let suffix = rest.trim_start_matches(' ');
    let spaced = suffix.len() < rest.len();
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
