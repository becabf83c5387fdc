//! The forward rate limits: one global GCRA limiter plus optional per-source ones (governor).
//!
//! Generic over governor's clock so tests can drive it with `FakeRelativeClock` through the
//! non-blocking [`Limiter::check`]. A rate of 0 turns a limit off. Waiting is not a retry and
//! drops nothing. A source's cell is taken first and never waited for while holding anything:
//! the forwarder asks [`Limiter::check_source`] before a record takes a concurrency slot, and
//! a record over its source's limit goes back to the queue unchanged, its source skipped by
//! claims until a cell frees ([`Limiter::busy_sources`]). Only then does it wait for a global
//! cell ([`Limiter::acquire_global`]), which every record needs alike.
//!
//! With the PostgreSQL store the global limit is shared by every instance: its cells come
//! from a GCRA row in the database ([`SharedLimit`]) instead of the in-process governor,
//! which then only stands in while the database cannot be reached. Per-source limits stay
//! per instance.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::store::SharedLimit;

type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A rate in requests per second with a burst; `rate == 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

struct SourceLimit<C: Clock> {
    rate: Rate,
    limiter: Direct<C>,
    /// When the last refused check said a cell frees up (for [`Limiter::busy_sources`]).
    ready_at: Option<C::Instant>,
}

/// The global limiter and the per-source ones, created as sources show up.
pub struct Limiter<C: Clock = DefaultClock> {
    clock: C,
    global: Option<Direct<C>>,
    /// The global limit shared by every instance, when the store can keep one.
    shared: Option<SharedLimit>,
    sources: Mutex<HashMap<String, SourceLimit<C>>>,
}

impl Limiter<DefaultClock> {
    /// A limiter on the real clock with the global `rate`.
    pub fn new(global: Rate) -> Self {
        Self::with_clock(global, DefaultClock::default())
    }

    /// A limiter whose global cells come from `shared` (all instances together) when given;
    /// the in-process limit of `global` is used only while `shared` fails.
    pub fn with_shared(global: Rate, shared: Option<SharedLimit>) -> Self {
        let mut limiter = Self::new(global);
        limiter.shared = shared;
        limiter
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter on `clock` (a fake one in tests).
    pub fn with_clock(global: Rate, clock: C) -> Self {
        Limiter {
            global: global
                .quota()
                .map(|q| RateLimiter::direct_with_clock(q, clock.clone())),
            shared: None,
            clock,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one cell of `source`'s limit (`rate` from its route; `None` or 0 = none) and
    /// then one global cell. `Err(wait)` takes nothing and says how long to wait.
    pub fn check(&self, source: &str, rate: Option<Rate>) -> Result<(), Duration> {
        self.check_source(source, rate)?;
        self.check_global()
    }

    /// Takes one cell of `source`'s own limit.
    pub fn check_source(&self, source: &str, rate: Option<Rate>) -> Result<(), Duration> {
        let Some(rate) = rate.filter(|r| r.per_second > 0) else {
            return Ok(());
        };
        let mut map = crate::sync::lock(&self.sources);
        let entry = match map.get_mut(source) {
            Some(e) if e.rate == rate => e,
            _ => {
                let Some(q) = rate.quota() else {
                    return Ok(());
                };
                let limiter = RateLimiter::direct_with_clock(q, self.clock.clone());
                map.insert(
                    source.to_string(),
                    SourceLimit {
                        rate,
                        limiter,
                        ready_at: None,
                    },
                );
                map.get_mut(source).ok_or(Duration::ZERO)?
            }
        };
        match entry.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                entry.ready_at = Some(not_until.earliest_possible());
                Err(not_until.wait_time_from(self.clock.now()))
            }
        }
    }

    /// Takes one global cell.
    pub fn check_global(&self) -> Result<(), Duration> {
        match &self.global {
            None => Ok(()),
            Some(l) => l.check().map_err(|nu| nu.wait_time_from(self.clock.now())),
        }
    }

    /// Sources whose own limit refused a cell that has not freed up yet: claiming more of
    /// their records now would only make them wait holding a lease.
    pub fn busy_sources(&self) -> Vec<String> {
        let now = self.clock.now();
        let map = crate::sync::lock(&self.sources);
        map.iter()
            .filter(|(_, s)| s.ready_at.is_some_and(|t| t.duration_since(now) > 0.into()))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Limiter<DefaultClock> {
    /// Waits until the global limit grants a cell; returns the time spent waiting.
    ///
    /// The wait is governor's `until_ready` (futures-timer, sub-millisecond), not the tokio
    /// timer: with `burst = 1` GCRA never makes up a late wake-up, and the tokio timer's
    /// millisecond rounding measured 47-48 sends a second at 50/s.
    pub async fn acquire_global(&self) -> Duration {
        let start = std::time::Instant::now();
        if let Some(shared) = &self.shared {
            match shared.acquire().await {
                Ok(_) => return start.elapsed(),
                Err(e) => tracing::warn!(
                    error = %e,
                    "shared rate limit unavailable: using this instance's own limit"
                ),
            }
        }
        if let Some(global) = &self.global {
            global.until_ready().await;
        }
        start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// How many cells are granted while the fake clock runs `total` in `step`s.
    fn granted(
        l: &Limiter<FakeRelativeClock>,
        clock: &FakeRelativeClock,
        src: Option<Rate>,
        total: Duration,
        step: Duration,
    ) -> usize {
        let mut n = 0;
        let mut t = Duration::ZERO;
        loop {
            while l.check("s", src).is_ok() {
                n += 1;
            }
            if t >= total {
                return n;
            }
            clock.advance(step);
            t += step;
        }
    }

    #[test]
    fn global_rate_is_exact_with_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(rate(20, 5), clock.clone());
        // Burst of 5 at once, then 20 per second: 5 + 20 * 10 over ten seconds.
        let n = granted(
            &l,
            &clock,
            None,
            Duration::from_secs(10),
            Duration::from_millis(7),
        );
        assert_eq!(n, 5 + 200);
    }

    #[test]
    fn per_source_limit_holds_inside_the_global_one() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(rate(100, 100), clock.clone());
        let n = granted(
            &l,
            &clock,
            Some(rate(2, 1)),
            Duration::from_secs(10),
            Duration::from_millis(10),
        );
        assert_eq!(n, 1 + 20);
        assert!(l.busy_sources().contains(&"s".to_string()));
    }

    /// Regression: a poisoned lock used to switch the per-source limit off.
    #[test]
    fn a_poisoned_lock_keeps_the_source_limit() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(rate(100, 100), clock.clone());
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = l.sources.lock();
            panic!("poison the sources lock");
        }));
        assert!(l.sources.is_poisoned());
        assert!(l.check("s", Some(rate(1, 1))).is_ok());
        assert!(l.check("s", Some(rate(1, 1))).is_err());
        assert_eq!(l.busy_sources(), ["s".to_string()]);
    }

    #[test]
    fn refused_check_reports_the_wait_and_zero_is_off() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(rate(4, 1), clock.clone());
        assert!(l.check("s", None).is_ok());
        assert_eq!(l.check("s", None), Err(Duration::from_millis(250)));
        let off = Limiter::with_clock(rate(0, 0), clock);
        for _ in 0..10_000 {
            assert!(off.check("s", Some(rate(0, 0))).is_ok());
        }
    }

    #[tokio::test]
    async fn acquire_waits_instead_of_dropping() {
        let l = Limiter::new(rate(50, 1));
        let start = std::time::Instant::now();
        for _ in 0..3 {
            l.acquire_global().await;
        }
        // Two waits of 20 ms: a lower bound only, a slow machine cannot make it fail.
        assert!(start.elapsed() >= Duration::from_millis(38));
    }
}
