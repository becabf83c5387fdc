//! Slowing down after a 429: every send to that Scaleo network waits out its `Retry-After`.
//!
//! Scaleo's API docs: a 429 means "retry after `Retry-After`, slow down". The record that got it is
//! retried at that time by the retry schedule; [`Holds`] makes the other sends to the same
//! network (its base URL) wait too, instead of running into the same 429 one after the
//! other: while a hold is in force the forwarder gives that network's claimed records back
//! unsent and uncounted and its claims skip the network's sources ([`Holds::held`]), so the
//! wait holds no concurrency slot and other networks go on. A hold lasts the answer's
//! `Retry-After` ([`DEFAULT`] when it has none), at most [`MAX`]; a later 429 can only extend
//! a hold, never shorten it. The sends after a hold go through the rate limit as any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The hold after a 429 without `Retry-After`.
pub const DEFAULT: Duration = Duration::from_secs(1);
/// The longest hold one 429 imposes on the other sends.
pub const MAX: Duration = Duration::from_secs(10);

/// The networks (base URLs) that answered 429, and until when their sends wait.
#[derive(Debug, Default)]
pub struct Holds {
    until: Mutex<HashMap<String, Instant>>,
}

impl Holds {
    /// Holds every send to `network` for `retry_after` (clamped to [`MAX`], [`DEFAULT`]
    /// when absent) from now; returns the hold now in force.
    pub fn hold(&self, network: &str, retry_after: Option<Duration>) -> Duration {
        let now = Instant::now();
        let wanted = now + retry_after.unwrap_or(DEFAULT).min(MAX);
        let mut until = crate::sync::lock(&self.until);
        let at = until
            .entry(network.to_string())
            .and_modify(|t| *t = (*t).max(wanted))
            .or_insert(wanted);
        at.saturating_duration_since(now)
    }

    /// How long a send to `network` must still wait (`None`: it may go now).
    pub fn remaining(&self, network: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut until = crate::sync::lock(&self.until);
        match until.get(network) {
            Some(&at) if at > now => Some(at - now),
            Some(_) => {
                until.remove(network);
                None
            }
            None => None,
        }
    }

    /// The networks under a hold now.
    pub fn held(&self) -> Vec<String> {
        let now = Instant::now();
        let mut until = crate::sync::lock(&self.until);
        until.retain(|_, at| *at > now);
        until.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "https://track.example";

    #[tokio::test(start_paused = true)]
    async fn a_hold_lasts_retry_after_and_only_for_its_network() {
        let holds = Holds::default();
        assert_eq!(holds.remaining(NET), None);
        assert_eq!(
            holds.hold(NET, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(holds.remaining("https://other.example"), None);
        assert_eq!(holds.held(), [NET.to_string()]);
        tokio::time::advance(Duration::from_millis(2_999)).await;
        assert_eq!(holds.remaining(NET), Some(Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(holds.remaining(NET), None);
        assert!(holds.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_after_holds_the_default_and_a_long_one_is_capped() {
        let holds = Holds::default();
        assert_eq!(holds.hold(NET, None), DEFAULT);
        let other = "https://other.example";
        assert_eq!(holds.hold(other, Some(Duration::from_secs(3600))), MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_429_extends_a_hold_but_never_shortens_it() {
        let holds = Holds::default();
        holds.hold(NET, Some(Duration::from_secs(5)));
        assert_eq!(
            holds.hold(NET, Some(Duration::from_secs(1))),
            Duration::from_secs(5)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            holds.hold(NET, Some(Duration::from_secs(8))),
            Duration::from_secs(8)
        );
        assert_eq!(holds.remaining(NET), Some(Duration::from_secs(8)));
    }
}
