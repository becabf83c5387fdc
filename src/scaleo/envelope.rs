//! Scaleo's answer envelope:
//! `{"status": "success"|"error", "code": N, "name": "...", "message": "...", "info": {...}}`,
//! built by the sandbox ([`success`], [`error`]) and read by forward ([`is_envelope`],
//! [`read`], [`describe`], [`says_duplicate`]).

use serde_json::{Value, json};

/// The tracking message for a second conversion of a click on a goal that forbids it.
pub const MULTIPLE_CONVERSIONS: &str = "Multiple Conversions are not Allowed";

/// [`MULTIPLE_CONVERSIONS`] in lower case: what [`says_duplicate`] looks for, in any case.
pub const DUPLICATE_PHRASE: &str = "multiple conversions are not allowed";

/// A success envelope (HTTP 200) around `info`.
pub fn success(info: Value) -> Value {
    json!({
        "status": "success",
        "code": 200,
        "name": "OK",
        "message": "",
        "info": info,
    })
}

/// An error envelope for `status` with this message and `info`.
pub fn error(status: u16, message: &str, info: Value) -> Value {
    json!({
        "status": "error",
        "code": status,
        "name": status_name(status),
        "message": message,
        "info": info,
    })
}

/// The `name` of the envelope for an HTTP status.
pub fn status_name(status: u16) -> &'static str {
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
pub fn default_message(status: u16) -> &'static str {
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

/// Whether a JSON answer is Scaleo's envelope: an object with a string `status`.
pub fn is_envelope(json: &Value) -> bool {
    json.get("status").is_some_and(Value::is_string)
}

/// What an envelope says about the call it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// `status = "success"` and no inner `info.status` other than success.
    Success {
        /// `info.transaction_id` (a non-empty string, or a number as written).
        transaction_id: Option<String>,
        /// `info.lead_id` as Scaleo gave it, as JSON text (`"123"` or `123`): the handle of a
        /// later `leads/update`.
        lead_id: Option<String>,
    },
    /// Anything else; `what` names the status that failed (`status "error"`, `inner status
    /// "error"`, `no status`).
    Failure { what: String },
}

/// Reads an envelope's outer and inner status and, on success, the ids in `info`.
pub fn read(json: &Value) -> Reading {
    let status = json.get("status").and_then(Value::as_str);
    let info = json.get("info");
    let inner = info.and_then(|i| i.get("status")).and_then(Value::as_str);
    let ok = |s: Option<&str>| s.is_some_and(|s| s.eq_ignore_ascii_case("success"));
    if ok(status) && (inner.is_none() || ok(inner)) {
        let transaction_id = info
            .and_then(|i| i.get("transaction_id"))
            .and_then(|t| match t {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        let lead_id = info
            .and_then(|i| i.get("lead_id"))
            .filter(|l| matches!(l, Value::String(s) if !s.is_empty()) || l.is_number())
            .map(Value::to_string);
        return Reading::Success {
            transaction_id,
            lead_id,
        };
    }
    let what = match (status, inner) {
        (Some(s), _) if !ok(Some(s)) => format!("status {s:?}"),
        (_, Some(i)) => format!("inner status {i:?}"),
        _ => "no status".to_string(),
    };
    Reading::Failure { what }
}

/// The messages of an envelope (`message`, `info.message`, `info.errors`), joined by `; `;
/// empty when it has none.
pub fn describe(json: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(m) = json.get("message").and_then(Value::as_str) {
        parts.push(m.to_string());
    }
    if let Some(m) = json.pointer("/info/message").and_then(Value::as_str) {
        parts.push(m.to_string());
    }
    if let Some(e) = json.pointer("/info/errors") {
        parts.push(e.to_string());
    }
    parts.retain(|p| !p.is_empty());
    parts.join("; ")
}

/// Whether an answer says the conversion already exists ([`MULTIPLE_CONVERSIONS`], any
/// case): in any string of a JSON answer (`json`), else anywhere in the text (`body`).
pub fn says_duplicate(json: Option<&Value>, body: &str) -> bool {
    fn has(v: &Value) -> bool {
        match v {
            Value::String(s) => s.to_lowercase().contains(DUPLICATE_PHRASE),
            Value::Array(a) => a.iter().any(has),
            Value::Object(o) => o.values().any(has),
            _ => false,
        }
    }
    // Any string of the answer: Scaleo puts it in `message`, `info.message` or
    // `info.errors`, but a proxy or another API version may put it elsewhere (`name`, a
    // bare JSON string), and missing it turns a 403 into a pause of everything.
    match json {
        Some(j) => has(j),
        None => body.to_lowercase().contains(DUPLICATE_PHRASE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_duplicate_phrase_is_the_message_in_lower_case() {
        assert_eq!(MULTIPLE_CONVERSIONS.to_lowercase(), DUPLICATE_PHRASE);
        let answer = error(400, MULTIPLE_CONVERSIONS, json!({}));
        assert!(says_duplicate(Some(&answer), ""));
        assert!(says_duplicate(
            None,
            "<p>MULTIPLE conversions are not allowed</p>"
        ));
        assert!(!says_duplicate(
            Some(&error(400, "Bad Request", json!({}))),
            ""
        ));
    }

    #[test]
    fn a_built_success_reads_as_success_with_its_ids() {
        let answer = success(json!({"lead_id": 17, "transaction_id": "t-1"}));
        assert!(is_envelope(&answer));
        assert_eq!(
            read(&answer),
            Reading::Success {
                transaction_id: Some("t-1".into()),
                lead_id: Some("17".into()),
            }
        );
        let failed = success(json!({"status": "error", "message": "no"}));
        assert_eq!(
            read(&failed),
            Reading::Failure {
                what: "inner status \"error\"".into()
            }
        );
        assert_eq!(describe(&failed), "no");
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
