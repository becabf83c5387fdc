//! The small parsers shared by the service config and the rule files: durations, time
//! zones (and the UTC offsets they contain), and CIDR blocks. Below both `config` and
//! `rules`, so neither imports the other for them; each returns the text of what is
//! accepted, and the caller names the file, key and value.

use std::time::Duration;

use ipnet::IpNet;
use jiff::tz::{Offset, TimeZone};

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

/// `+08:00`, `+0800`, `+08`, `-05:30`, up to ±23:59.
pub(crate) fn parse_offset(text: &str) -> Option<Offset> {
    if let Some(rest) = text.strip_prefix('+') {
        unsigned_offset(rest, 1)
    } else {
        unsigned_offset(text.strip_prefix('-')?, -1)
    }
}

/// `08:00`, `0800` or `08` with the sign given apart, up to 23:59.
pub(crate) fn unsigned_offset(text: &str, sign: i32) -> Option<Offset> {
    fn two_digits(text: &str) -> Option<(i32, &str)> {
        let (head, tail) = text.split_at_checked(2)?;
        if !head.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((head.parse().ok()?, tail))
    }
    let (hours, rest) = two_digits(text)?;
    let (minutes, rest) = if rest.is_empty() {
        (0, rest)
    } else {
        two_digits(rest.strip_prefix(':').unwrap_or(rest))?
    };
    if !rest.is_empty() || hours > 23 || minutes > 59 {
        return None;
    }
    Offset::from_seconds(sign * (hours * 3600 + minutes * 60)).ok()
}

/// Parses a CIDR or a bare address (taken as a single host).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_take_three_spellings_up_to_23_59() {
        let eight = Offset::from_seconds(8 * 3600).ok();
        assert_eq!(parse_offset("+08:00"), eight);
        assert_eq!(parse_offset("+0800"), eight);
        assert_eq!(parse_offset("+08"), eight);
        assert_eq!(
            parse_offset("-05:30"),
            Offset::from_seconds(-(5 * 3600 + 30 * 60)).ok()
        );
        for bad in ["+24:00", "+08:60", "08:00", "+8", "+08:0", "+08:00x"] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bare_address_is_a_single_host_block() {
        assert_eq!(parse_cidr(" 10.0.0.1 "), "10.0.0.1/32".parse().ok());
        assert_eq!(parse_cidr("2001:db8::/32"), "2001:db8::/32".parse().ok());
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
