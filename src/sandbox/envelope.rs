//! Scaleo's answer envelope:
//! `{"status": "success"|"error", "code": N, "name": "...", "message": "...", "info": {...}}`.

use serde_json::{Value, json};

/// The tracking message for a second conversion of a click on a goal that forbids it.
pub const MULTIPLE_CONVERSIONS: &str = "Multiple Conversions are not Allowed";

/// A success envelope (HTTP 200) around `info`.
pub(crate) fn success(info: Value) -> Value {
    json!({
        "status": "success",
        "code": 200,
        "name": "OK",
        "message": "",
        "info": info,
    })
}

/// An error envelope for `status` with this message and `info`.
pub(crate) fn error(status: u16, message: &str, info: Value) -> Value {
    json!({
        "status": "error",
        "code": status,
        "name": status_name(status),
        "message": message,
        "info": info,
    })
}

/// The `name` of the envelope for an HTTP status.
pub(crate) fn status_name(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable entity",
        425 => "Too Early",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// The message sent with an error status when no more specific one applies.
pub(crate) fn default_message(status: u16) -> &'static str {
    match status {
        401 => "Your request was made with invalid credentials.",
        403 => "You are not allowed to perform this action.",
        404 => "Page not found.",
        405 => "Method Not Allowed. This URL can only handle the following request methods: POST.",
        413 => "The request body is larger than 1 MiB.",
        429 => "Rate limit exceeded.",
        500..=599 => "An internal server error occurred.",
        _ => status_name(status),
    }
}

/// A random RFC 4122 version-4 UUID in its usual lowercase text form.
pub(crate) fn uuid_v4() -> String {
    let mut bits = fastrand::u128(..);
    bits &= !(0xf << 76); // version nibble
    bits |= 0x4 << 76;
    bits &= !(0x3 << 62); // variant bits
    bits |= 0x2 << 62;
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_has_the_version_and_variant_of_rfc_4122() {
        for _ in 0..100 {
            let id = uuid_v4();
            let groups: Vec<&str> = id.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(matches!(groups[3].as_bytes()[0], b'8'..=b'b'), "{id}");
        }
    }

    #[test]
    fn error_envelope_carries_code_name_and_info() {
        let answer = error(422, "Data validation failed", json!({"errors": {}}));
        assert_eq!(answer["status"], "error");
        assert_eq!(answer["code"].as_u64(), Some(422));
        assert_eq!(answer["name"], "Unprocessable entity");
        assert!(answer["info"]["errors"].is_object());
    }
}
