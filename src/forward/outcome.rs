//! The outcome of one forward attempt: one type for the classification, the settle, the
//! `outcome` field of the log lines and the `outcome` label of the attempt metric.
//!
//! [`Outcome::as_str`] gives the stable names that logs and stored attempts already use;
//! they are user-visible and must not change. A held attempt is the one exception outside
//! the logs: the store keeps it as a pause (`paused`), and [`Outcome::metric_label`] counts
//! it as `paused` (the metric has no `held` series).

use std::time::Duration;

/// What one attempt came to, and what happens to its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Scaleo recorded the conversion.
    Delivered {
        transaction_id: Option<String>,
        /// `info.lead_id` as Scaleo gave it, as JSON text (`"123"` or `123`): the handle of a
        /// later `leads/update`.
        lead_id: Option<String>,
    },
    /// Scaleo already had it: done, never retried.
    DuplicateUpstream,
    /// Try again later, not before `after` when Scaleo said so (a 429 also holds every send
    /// to its network for that long).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Stop sending anything (bad key, wrong role, wrong base URL); keep everything queued.
    Paused { reason: String },
    /// Scaleo is not answering (outage mode): the record waits uncounted, like a pause, and
    /// no new pause is set.
    Held { reason: String },
    /// Retrying cannot help.
    Dead { reason: String },
}

impl Outcome {
    /// The stable name in log lines (`outcome = ...`) and of stored attempts (where a held
    /// attempt is stored as a pause, `paused`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::DuplicateUpstream => "duplicate_upstream",
            Outcome::Retry { .. } => "retry",
            Outcome::Paused { .. } => "paused",
            Outcome::Held { .. } => "held",
            Outcome::Dead { .. } => "dead",
        }
    }

    /// The `outcome` label of `postback_relay_forward_attempts_total`: one of
    /// [`crate::metrics::FORWARD_OUTCOMES`]; a held attempt counts as `paused`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Outcome::Held { .. } => "paused",
            other => other.as_str(),
        }
    }

    /// Why the attempt did not get the conversion to Scaleo, for the `/readyz` failure
    /// streak: `None` for one that did (delivered, already there) and for a pause or hold,
    /// which say nothing about the postback itself.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Outcome::Dead { reason } | Outcome::Retry { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Whether the answer shows that Scaleo accepted the API key (delivered, duplicate, or
    /// another 4xx): a probe with such an answer lifts an `upstream_auth` pause.
    pub fn key_works(&self) -> bool {
        matches!(
            self,
            Outcome::Delivered { .. } | Outcome::DuplicateUpstream | Outcome::Dead { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> [Outcome; 6] {
        let reason = || "why".to_string();
        [
            Outcome::Delivered {
                transaction_id: None,
                lead_id: None,
            },
            Outcome::DuplicateUpstream,
            Outcome::Retry {
                after: None,
                reason: reason(),
            },
            Outcome::Paused { reason: reason() },
            Outcome::Held { reason: reason() },
            Outcome::Dead { reason: reason() },
        ]
    }

    #[test]
    fn names_are_the_stable_log_and_stored_names() {
        let names: Vec<_> = all().iter().map(Outcome::as_str).collect();
        assert_eq!(
            names,
            [
                "delivered",
                "duplicate_upstream",
                "retry",
                "paused",
                "held",
                "dead"
            ]
        );
    }

    #[test]
    fn every_outcome_counts_under_a_registered_metric_label() {
        for o in all() {
            assert!(
                crate::metrics::FORWARD_OUTCOMES.contains(&o.metric_label()),
                "{o:?} -> {}",
                o.metric_label()
            );
        }
        let held = Outcome::Held { reason: "x".into() };
        assert_eq!(held.metric_label(), "paused");
    }

    #[test]
    fn only_retry_and_dead_are_failures_and_only_answers_from_scaleo_prove_the_key() {
        let failures: Vec<_> = all().iter().map(|o| o.failure().is_some()).collect();
        assert_eq!(failures, [false, false, true, false, false, true]);
        let key: Vec<_> = all().iter().map(Outcome::key_works).collect();
        assert_eq!(key, [true, true, false, false, false, true]);
    }
}
