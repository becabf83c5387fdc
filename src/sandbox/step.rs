//! Scripted answers: what the sandbox says to the next calls instead of validating them.

use std::time::Duration;

use serde_json::json;

use crate::scaleo::envelope;

/// One scripted answer, used for exactly one call to a Scaleo endpoint (the create
/// `conv-click-id` or the update `leads/update`).
///
/// Steps are consumed in call order, one per call to either endpoint, before the method,
/// the key or the body are looked at. When the queue is empty the sandbox behaves like Scaleo (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Sends exactly this status, body and `Retry-After` header (none when `None`).
    /// The body is sent as `application/json` when it parses as JSON, else as `text/plain`.
    Answer {
        /// HTTP status code; one outside 200..=999 (no final answer in HTTP/1.1) is sent
        /// as 500.
        status: u16,
        /// Response body, sent as is.
        body: String,
        /// Raw `Retry-After` header value: seconds or an HTTP date.
        retry_after: Option<String>,
    },
    /// Records the conversion (or, on the update path, the change) at once (it "landed"),
    /// then sleeps this long before answering success, so that a client with a shorter
    /// timeout gives up first. A retry of the same conversion then meets "Multiple
    /// Conversions are not Allowed", as with the real Scaleo.
    Hang(Duration),
    /// Answers success for whatever was sent, without validating it: a new conversion on
    /// the create path, a change of the conversion its `lead_id` names on the update path.
    Success,
    /// Answers HTTP 400 with the message "Multiple Conversions are not Allowed".
    MultipleConversions,
    /// Answers HTTP 401 (key missing or invalid, or API access disabled).
    Unauthorized,
    /// Answers HTTP 403 (key of the wrong role).
    Forbidden,
    /// Closes the connection without any answer (the client sees a reset / incomplete
    /// message: an unknown outcome). The call is not recorded as accepted.
    Drop,
}

impl Step {
    /// An error envelope with this status and its standard name and message.
    pub fn status(status: u16) -> Step {
        Step::Answer {
            status,
            body: envelope::error(status, envelope::default_message(status), json!({})).to_string(),
            retry_after: None,
        }
    }

    /// HTTP 429 with `Retry-After: {retry_after_secs}`.
    pub fn too_many(retry_after_secs: u64) -> Step {
        Step::Answer {
            status: 429,
            body: envelope::error(429, envelope::default_message(429), json!({})).to_string(),
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// HTTP 200 with an outer `status: "success"` but an inner `info.status: "error"` and
    /// this `info.message`: the tracking-level failure that Scaleo's docs hint at (not
    /// confirmed).
    pub fn inner_failure(message: &str) -> Step {
        let info = json!({"status": "error", "message": message});
        Step::Answer {
            status: 200,
            body: envelope::success(info).to_string(),
            retry_after: None,
        }
    }

    /// "Multiple Conversions are not Allowed" inside an HTTP 200 (the other reading of
    /// Scaleo's docs: the relay must treat the phrase as delivered whatever the status).
    pub fn multiple_conversions_in_200() -> Step {
        Step::inner_failure(envelope::MULTIPLE_CONVERSIONS)
    }
}
