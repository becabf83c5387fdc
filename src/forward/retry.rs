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
//! The schedule ([`RetryPolicy`], checked once when the config is loaded) is data:
//! `forward.retry_schedule`, with the last delay repeated past its end, plus up to
//! [`JITTER_MAX`] (20 %) random extra so failed postbacks do not come back in lock step. Two bounds, whichever comes first: the
//! count (`forward.max_attempts` attempts in all) and the age (a record queued more than
//! `forward.max_age` ago is given up; the last try is scheduled no later than that deadline).

use std::num::NonZeroU32;
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

/// A problem of the retry settings, found when the config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("forward.max_attempts = \"0\": at least 1")]
    NoAttempts,
    #[error("forward.retry_schedule = \"[]\": at least one delay such as \"10s\"")]
    EmptySchedule,
}

impl PolicyError {
    /// The config key at fault.
    pub fn key(self) -> &'static str {
        match self {
            PolicyError::NoAttempts => "forward.max_attempts",
            PolicyError::EmptySchedule => "forward.retry_schedule",
        }
    }

    /// The value at fault, as the config shows it.
    pub fn value(self) -> &'static str {
        match self {
            PolicyError::NoAttempts => "0",
            PolicyError::EmptySchedule => "[]",
        }
    }

    /// What the key takes instead.
    pub fn expected(self) -> &'static str {
        match self {
            PolicyError::NoAttempts => "at least 1",
            PolicyError::EmptySchedule => "at least one delay such as \"10s\"",
        }
    }
}

/// The retry bounds, validated once when the config is loaded: the schedule (data, never
/// empty), the oldest a record may get, and the most attempts it may take (at least one),
/// whichever is reached first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    max_age: Duration,
    max_attempts: NonZeroU32,
}

impl RetryPolicy {
    /// A policy from `forward.retry_schedule`, `forward.max_age` and `forward.max_attempts`
    /// (attempts in all, the first one included; `u32::MAX` for no count bound), or every
    /// problem with them.
    pub fn new(
        schedule: Vec<Duration>,
        max_age: Duration,
        max_attempts: u32,
    ) -> Result<RetryPolicy, Vec<PolicyError>> {
        let mut problems = Vec::new();
        let attempts = NonZeroU32::new(max_attempts);
        if attempts.is_none() {
            problems.push(PolicyError::NoAttempts);
        }
        if schedule.is_empty() {
            problems.push(PolicyError::EmptySchedule);
        }
        match attempts {
            Some(max_attempts) if problems.is_empty() => Ok(RetryPolicy {
                schedule,
                max_age,
                max_attempts,
            }),
            _ => Err(problems),
        }
    }

    /// A valid stand-in for settings that did not load: the config is refused with their
    /// problems, so it never forwards with this.
    pub(crate) fn stand_in() -> RetryPolicy {
        RetryPolicy {
            schedule: vec![Duration::ZERO],
            max_age: Duration::ZERO,
            max_attempts: NonZeroU32::MIN,
        }
    }

    /// Replaces the schedule (not when empty).
    pub fn set_schedule(&mut self, schedule: Vec<Duration>) -> Result<(), PolicyError> {
        if schedule.is_empty() {
            return Err(PolicyError::EmptySchedule);
        }
        self.schedule = schedule;
        Ok(())
    }

    /// Replaces the attempt bound (not with 0).
    pub fn set_max_attempts(&mut self, max_attempts: u32) -> Result<(), PolicyError> {
        self.max_attempts = NonZeroU32::new(max_attempts).ok_or(PolicyError::NoAttempts)?;
        Ok(())
    }

    /// The delays between tries; the last one repeats past the end.
    pub fn schedule(&self) -> &[Duration] {
        &self.schedule
    }

    /// How old a record may get (from when it was queued) before it is given up.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Attempts in all before a record is given up.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts.get()
    }

    /// The delay before try number `failures + 1`, after `failures` (>= 1) failed ones:
    /// `schedule[failures - 1]` (the last entry past the end) times `1 + JITTER_MAX * jitter`,
    /// where `jitter` is a sample in `[0, 1)` (clamped).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let i = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        let base = self.schedule[i.min(self.schedule.len() - 1)];
        base.mul_f64(1.0 + JITTER_MAX * jitter.clamp(0.0, 1.0))
    }

    /// When to try again: `failures` counts the failed tries including this one; the record
    /// entered the queue at `queued_at`; `retry_after` is Scaleo's wish. See the module docs.
    pub fn plan(
        &self,
        now: Timestamp,
        queued_at: Timestamp,
        failures: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Next {
        if failures >= self.max_attempts.get() {
            return Next::GiveUp("retry limit reached (forward.max_attempts)");
        }
        let deadline = crate::store::ts_plus(queued_at, self.max_age);
        if now >= deadline {
            return Next::GiveUp("max age exceeded (forward.max_age)");
        }
        let delay = self
            .delay(failures, jitter)
            .max(retry_after.unwrap_or_default());
        Next::At(crate::store::ts_plus(now, delay).min(deadline))
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    At(Timestamp),
    /// Give up: the record goes dead with this reason.
    GiveUp(&'static str),
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
