//! What an answer from Scaleo means, and when to try again: pure functions, no I/O.
//!
//! [`classify`] follows the README's "Forwarding" section and Scaleo's API docs, in this order:
//! 1. "Multiple Conversions are not Allowed" (any case) anywhere in the answer (Scaleo uses
//!    `message`, `info.message` or `info.errors`; any string of a JSON answer counts, or the
//!    whole text of another one) -> [`Outcome::DuplicateUpstream`], whatever the status.
//! 2. No answer (connect error, timeout, reset) -> retry.
//! 3. 2xx: `status = "success"` with no inner `info.status` other than success ->
//!    delivered with `info.transaction_id` and `info.lead_id`. A 2xx envelope with
//!    `status = "error"` or an inner failure -> **dead**, answer kept: Scaleo received and
//!    processed it, so repeating it could pay twice; an operator can replay it. A whole 2xx
//!    that is not Scaleo's envelope (a proxy's page, a wrong `base_url`) -> retry, and it
//!    counts toward outage mode ([`answered_as_scaleo`]); one cut short is dead.
//! 4. 3xx -> **paused**: redirects are not followed (a POST would turn into a GET), and a
//!    redirect means `base_url` is wrong for every postback, like a bad key.
//! 5. 401, 403 -> paused. 408, 425, 429 -> retry. Other 4xx -> dead.
//! 6. 5xx and anything else -> retry.
//!
//! A `Retry-After` (seconds or an HTTP date) on a retry outcome is honoured: the next try is
//! never earlier than it says.
//!
//! The schedule ([`next_delay`], [`plan_retry`]) is data: `forward.retry_schedule`, with the
//! last delay repeated past its end, plus up to [`JITTER_MAX`] (20 %) random extra so
//! failed postbacks do not come back in lock step. Two bounds, whichever comes first: the
//! count (`forward.max_attempts` attempts in all) and the age (a record queued more than
//! `forward.max_age` ago is given up; the last try is scheduled no later than that deadline).

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use super::client::Reply;
use super::outcome::Outcome;
use crate::scaleo::envelope::{self, Reading, says_duplicate};

/// The largest jitter, as a fraction of the scheduled delay.
pub const JITTER_MAX: f64 = 0.2;

/// Classifies how one request ended. `now` resolves an HTTP-date `Retry-After`.
pub fn classify(reply: &Reply, now: Timestamp) -> Outcome {
    // The stored text: an answer cut short carries its cut line, so it never reads as a
    // whole JSON answer.
    let text = reply.text();
    let body = text.as_str();
    let json: Option<Value> = serde_json::from_str(body).ok();
    if says_duplicate(json.as_ref(), body) {
        return Outcome::DuplicateUpstream;
    }
    let Reply::Answered {
        status: code,
        retry_after,
        cut,
        ..
    } = reply
    else {
        return Outcome::Retry {
            after: None,
            // The client's error text (the key already redacted): connection refused, a TLS
            // failure, a timeout... so a log line says which.
            reason: match body.lines().next().map(str::trim) {
                Some(why) if !why.is_empty() => {
                    format!("no answer: {}", crate::store::excerpt(why, 300))
                }
                _ => "no answer".into(),
            },
        };
    };
    let code = *code;
    let message = json.as_ref().map(describe).unwrap_or_default();
    let retry = |what: &str| Outcome::Retry {
        after: retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, now)),
        reason: format!("HTTP {code}{what}{message}"),
    };
    match code {
        200..=299 => success(code, json.as_ref(), &message, cut.is_some()),
        300..=399 => Outcome::Paused {
            reason: format!("HTTP {code}: redirected, check scaleo.base_url"),
        },
        401 | 403 => Outcome::Paused {
            reason: format!("HTTP {code}: API key refused{message}"),
        },
        408 | 425 | 429 => retry(""),
        400..=499 => Outcome::Dead {
            reason: format!("HTTP {code}{message}"),
        },
        _ => retry(""),
    }
}

fn success(code: u16, json: Option<&Value>, message: &str, cut: bool) -> Outcome {
    let Some(json) = json.filter(|j| envelope::is_envelope(j)) else {
        let reason = format!("HTTP {code} with an answer that is not Scaleo's JSON");
        // Cut short, it may be Scaleo's success: repeating it could pay twice. Whole, it
        // is not Scaleo talking (a proxy's page, a wrong base_url): try again (and count
        // toward outage mode).
        return if cut {
            Outcome::Dead { reason }
        } else {
            Outcome::Retry {
                after: None,
                reason,
            }
        };
    };
    match envelope::read(json) {
        Reading::Success {
            transaction_id,
            lead_id,
        } => Outcome::Delivered {
            transaction_id,
            lead_id,
        },
        Reading::Failure { what } => Outcome::Dead {
            reason: format!("HTTP {code} with {what}{message}"),
        },
    }
}

/// Whether an attempt got an answer from Scaleo itself: a status below 500 and, for a 2xx,
/// Scaleo's JSON envelope. No answer, a 5xx, or a 2xx page from something else count toward
/// outage mode (`forward.outage_after` of them in a row).
pub fn answered_as_scaleo(reply: &Reply) -> bool {
    match reply.status() {
        None => false,
        Some(500..) => false,
        Some(200..=299) => serde_json::from_str::<Value>(&reply.text())
            .ok()
            .is_some_and(|j| envelope::is_envelope(&j)),
        Some(_) => true,
    }
}

/// `: message` (and the inner message) of Scaleo's envelope, or nothing.
fn describe(json: &Value) -> String {
    let parts = envelope::describe(json);
    if parts.is_empty() {
        return String::new();
    }
    let mut text = format!(": {parts}");
    if text.len() > 500 {
        text.truncate(crate::store::excerpt(&text, 500).len());
    }
    text
}

/// Reads `Retry-After`: whole seconds, or an HTTP date (a date in the past is zero).
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An HTTP-date in any of its three forms (IMF-fixdate, RFC 850, asctime): RFC 9110
    // asks recipients to accept all of them.
    let at = Timestamp::try_from(httpdate::parse_http_date(value).ok()?).ok()?;
    let ms = at.as_millisecond().saturating_sub(now.as_millisecond());
    Some(Duration::from_millis(ms.max(0).unsigned_abs()))
}

/// The delay before try number `failures + 1`, after `failures` (>= 1) failed ones:
/// `schedule[failures - 1]` (the last entry past the end) times `1 + JITTER_MAX * jitter`,
/// where `jitter` is a sample in `[0, 1)` (clamped).
pub fn next_delay(failures: u32, schedule: &[Duration], jitter: f64) -> Duration {
    let Some(last) = schedule.last() else {
        return Duration::ZERO;
    };
    let i = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
    let base = schedule.get(i).unwrap_or(last);
    base.mul_f64(1.0 + JITTER_MAX * jitter.clamp(0.0, 1.0))
}

/// The retry bounds: the schedule (data), the oldest a record may get, and the most
/// attempts it may take, whichever is reached first.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy<'a> {
    pub schedule: &'a [Duration],
    pub max_age: Duration,
    /// Attempts in all (the first one included); `u32::MAX` for no count bound.
    pub max_attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    At(Timestamp),
    /// Give up: the record goes dead with this reason.
    GiveUp(&'static str),
}

/// When to try again: `failures` counts the failed tries including this one; the record
/// entered the queue at `queued_at`; `retry_after` is Scaleo's wish. See the module docs.
pub fn plan_retry(
    now: Timestamp,
    queued_at: Timestamp,
    failures: u32,
    policy: &RetryPolicy<'_>,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Next {
    if failures >= policy.max_attempts {
        return Next::GiveUp("retry limit reached (forward.max_attempts)");
    }
    let deadline = crate::store::ts_plus(queued_at, policy.max_age);
    if now >= deadline {
        return Next::GiveUp("max age exceeded (forward.max_age)");
    }
    let delay = next_delay(failures, policy.schedule, jitter).max(retry_after.unwrap_or_default());
    Next::At(crate::store::ts_plus(now, delay).min(deadline))
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
