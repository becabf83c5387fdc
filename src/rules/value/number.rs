//! Exact decimal numbers: signs, currency signs, decimal and thousands separators, scaling.

use rust_decimal::Decimal;

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
     and one decimal separator (e.g. 12.50, 12,50, $1,234.56, or (12.50) for -12.50)";

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
    let (accounting, text) = split_accounting(text)?;
    let (negative, body) = split_sign_and_currency(text)?;
    if accounting && negative {
        return Err(format!(
            "a sign inside accounting parentheses: {NUMBER_ACCEPTED}"
        ));
    }
    let negative = negative || accounting;
    check_body(body)?;
    let (decimal, thousands) = separators(body, mode)?;
    let (integer, fraction) = split_number(body, decimal, thousands)?;
    build_decimal(negative, &integer, fraction)
}

/// Accounting notation: `(12.50)` is -12.50. Returns whether the text was in parentheses and
/// what they held.
fn split_accounting(text: &str) -> Result<(bool, &str), String> {
    match text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(inner) if inner.trim().is_empty() => Err(format!("no digits: {NUMBER_ACCEPTED}")),
        Some(inner) => Ok((true, inner.trim())),
        None => Ok((false, text)),
    }
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

/// Reads a JSON number exactly: a dot decimal with an optional exponent (`12.500` is 12.5,
/// `1e2` is 100). Never guesses separators: JSON has only one way to write a number.
pub fn parse_json_number(text: &str) -> Result<Decimal, String> {
    const ACCEPTED: &str = "expected a JSON number (e.g. 12.5, -3, 1e2)";
    let text = text.trim();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => {
            let e = e.strip_prefix('+').unwrap_or(e);
            let e: i64 = e.parse().map_err(|_| format!("bad exponent: {ACCEPTED}"))?;
            (m, e)
        }
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if integer.is_empty() || !all_digits(integer) || !all_digits(fraction) {
        return Err(format!("not a number: {ACCEPTED}"));
    }
    let digits = format!("{integer}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(Decimal::ZERO);
    }
    // value = digits x 10^(exponent - fraction digits)
    let shift = exponent
        .checked_sub(i64::try_from(fraction.len()).unwrap_or(i64::MAX))
        .ok_or_else(|| format!("exponent out of range: {ACCEPTED}"))?;
    let len = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    if shift >= 0 {
        if shift + len > 40 {
            return Err(format!("too large for an exact decimal: {ACCEPTED}"));
        }
        let zeros = "0".repeat(usize::try_from(shift).unwrap_or(0));
        build_decimal(negative, &format!("{digits}{zeros}"), "")
    } else {
        let places = -shift;
        if places > 60 {
            return Err("too many decimal places: at most 28 are accepted".to_owned());
        }
        let places = usize::try_from(places).unwrap_or(0);
        let (integer, fraction) = if places >= digits.len() {
            (
                String::new(),
                format!("{}{digits}", "0".repeat(places - digits.len())),
            )
        } else {
            let cut = digits.len() - places;
            (digits[..cut].to_owned(), digits[cut..].to_owned())
        };
        build_decimal(negative, &integer, &fraction)
    }
}
