//! Tests of the value semantics: no-value detection, decimals, times, zones, durations.

use super::*;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::time::Duration;

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
        "%%TRANSACTION_ID%%",
        "!!!clickRef!!!",
        "{$data1}",
        "${(a.~b)!}",
        "${a.~b}",
        "__CLICKID__",
        "__CLICK_ID2__",
        "undefined",
        "null",
        "NaN",
        "{sub 1}",
    ] {
        assert_eq!(no_value(value, &none()), Some(NoValue::Macro), "{value}");
    }
}

#[test]
fn macros_need_a_letter_and_upper_case_for_double_underscores() {
    for value in [
        "(12.50)",
        "(1,234.50)",
        "{123}",
        "[1]",
        "#1001#",
        "__clickid__",
        "__Click__",
        "__",
        "!!!!!!",
        "Null",
        "none",
        "{a/b}",
    ] {
        assert_eq!(no_value(value, &none()), None, "{value}");
    }
}

#[test]
fn placeholders_ending_in_a_star_match_a_prefix() {
    let placeholders = vec!["TPL_*".to_owned()];
    assert_eq!(
        no_value("TPL_CLICK", &placeholders),
        Some(NoValue::Placeholder)
    );
    assert_eq!(no_value("TPL_", &placeholders), Some(NoValue::Placeholder));
    assert_eq!(no_value("XTPL_CLICK", &placeholders), None);
    assert_eq!(no_value("tpl_click", &placeholders), None);
    assert!(check_placeholder("TPL_*").is_ok());
    assert!(check_placeholder("REPLACE").is_ok());
    for bad in ["*", "", "  ", "A*B", "**"] {
        assert!(check_placeholder(bad).is_err(), "{bad:?}");
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
}

#[test]
fn unix_times_outside_2000_to_2100_are_rejected_never_1970() {
    for (text, format) in [
        ("0", TimeFormat::Unix),
        ("0", TimeFormat::Auto),
        ("0", TimeFormat::UnixMs),
        ("946684799", TimeFormat::Unix),
        ("4102444800", TimeFormat::Auto),
        ("99999999999", TimeFormat::Auto),
        ("100000000000", TimeFormat::Auto),
        ("946684799999", TimeFormat::UnixMs),
    ] {
        let error = parse_time(text, &format, &TimeZone::UTC).expect_err(text);
        assert!(error.contains("2000-01-01"), "{text}: {error}");
    }
    assert_eq!(
        utc_text("946684800", &TimeFormat::Unix, "UTC"),
        "2000-01-01 00:00:00"
    );
    assert_eq!(
        utc_text("4102444799", &TimeFormat::Auto, "UTC"),
        "2099-12-31 23:59:59"
    );
}

#[test]
fn auto_reads_compact_dates_as_dates_not_unix_time() {
    for (text, expected) in [
        ("20240520094128", "2024-05-20 09:41:28"),
        ("20240520", "2024-05-20 00:00:00"),
        ("202405200941", "2024-05-20 09:41:00"),
    ] {
        assert_eq!(utc_text(text, &TimeFormat::Auto, "UTC"), expected, "{text}");
    }
    // Read in tz, like every time without an offset.
    assert_eq!(
        utc_text("20240520094128", &TimeFormat::Auto, "+02:00"),
        "2024-05-20 07:41:28"
    );
    // Not a valid date and time: read as a number, then out of the unix range.
    for text in ["20241320", "20240520256100", "202405209999"] {
        let error = parse_time(text, &TimeFormat::Auto, &TimeZone::UTC).expect_err(text);
        assert!(error.contains("out of range"), "{text}: {error}");
    }
    // 13 digits stay milliseconds, 10 digits seconds.
    assert_eq!(
        utc_text("1716198088000", &TimeFormat::Auto, "UTC"),
        "2024-05-20 09:41:28"
    );
}

#[test]
fn time_lists_try_each_format_in_order() {
    let list = TimeFormat::parse_specs(&["%d/%m/%Y %H:%M".to_owned(), "%d/%m/%Y".to_owned()])
        .expect("list");
    assert_eq!(
        utc_text("20/05/2024 09:41", &list, "UTC"),
        "2024-05-20 09:41:00"
    );
    assert_eq!(utc_text("20/05/2024", &list, "UTC"), "2024-05-20 00:00:00");
    let error = parse_time("2024-05-20", &list, &TimeZone::UTC).expect_err("no format");
    assert!(
        error.contains("matches none of the 2 time formats"),
        "{error}"
    );
    let error = TimeFormat::parse_specs(&["auto".to_owned(), "%Q".to_owned()]).expect_err("bad");
    assert!(error.starts_with("entry 2 (\"%Q\")"), "{error}");
    assert!(TimeFormat::parse_specs(&[]).is_err());
}

#[test]
fn offset_after_a_space_whose_plus_arrived_as_a_space_is_read_under_auto_and_z_patterns() {
    let with_z = TimeFormat::Pattern("%Y-%m-%d %H:%M:%S %z".to_owned());
    let glued_z = TimeFormat::Pattern("%Y-%m-%d %H:%M:%S%z".to_owned());
    for text in [
        "2024-05-20 09:41:28 +0200",
        "2024-05-20 09:41:28  0200",
        "2024-05-20 09:41:28 0200",
        "2024-05-20 09:41:28 +02:00",
        "2024-05-20 09:41:28  02:00",
        "2024-05-20 09:41:28+0200",
    ] {
        for format in [&TimeFormat::Auto, &with_z, &glued_z] {
            assert_eq!(
                utc_text(text, format, "UTC"),
                "2024-05-20 07:41:28",
                "{text} with {format:?}"
            );
        }
    }
    assert_eq!(
        utc_text("2024-05-20 09:41:28 -0500", &with_z, "UTC"),
        "2024-05-20 14:41:28"
    );
}

#[test]
fn json_numbers_are_read_exactly_with_a_dot_and_an_exponent() {
    for (text, expected) in [
        ("12.500", "12.5"),
        ("1e2", "100"),
        ("1.5E-3", "0.0015"),
        ("-0.25", "-0.25"),
        ("0", "0"),
        ("1500", "1500"),
        ("2.5e+1", "25"),
    ] {
        let d = parse_json_number(text).expect(text);
        assert_eq!(format_decimal(d), expected, "{text}");
    }
    for text in ["1e400", "abc", "", "1,5"] {
        assert!(parse_json_number(text).is_err(), "{text}");
    }
}

#[test]
fn accounting_parentheses_are_a_negative_number() {
    assert_eq!(dec("(12.50)", DecimalMode::Auto), "-12.5");
    assert_eq!(dec("($1,234.50)", DecimalMode::Auto), "-1234.5");
    assert_eq!(dec("( 12,50 )", DecimalMode::Auto), "-12.5");
    assert!(dec("(-12.50)", DecimalMode::Auto).starts_with("Err(a sign inside"));
    assert!(dec("()", DecimalMode::Auto).starts_with("Err(no digits"));
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
    assert!(utc_text("2024-05-20", &TimeFormat::Rfc3339, "UTC").starts_with("Err(not an RFC 3339"));
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
