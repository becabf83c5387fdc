//! A GCRA rate limit shared by every instance on the database (the global Scaleo limit).
//!
//! One row per limit holds the theoretical arrival time (TAT) of the next cell in
//! microseconds of the **database clock**, so the instances' own clocks never matter. Each
//! cell is one atomic upsert that reserves the next slot (`tat = max(tat, now) + interval`)
//! and returns it with the database's `now`; the caller then sleeps until its slot. A cell is
//! never refused, only scheduled: a late wake-up does not shift the slots after it, so the
//! instances together never exceed the rate over any window (beyond the burst) and keep it
//! on average. The arithmetic is [`next_tat`] and [`wait_us`], pure and unit-tested; the SQL
//! computes [`next_tat`] in the database.

use std::time::Duration;

use super::Pool;

use super::super::StoreError;
use super::PgStore;

const RESERVE_SQL: &str = "WITH now AS (
       SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us)
     INSERT INTO rate_limits AS l (name, tat_us) SELECT $1, now.us + $2 FROM now
     ON CONFLICT (name) DO UPDATE SET tat_us = GREATEST(l.tat_us, (SELECT us FROM now)) + $2
     RETURNING l.tat_us, (SELECT us FROM now)";

/// The TAT after one more cell: the cell's slot starts at the later of the previous TAT
/// (`None` for the first cell ever) and `now`, and takes one `interval`. This is what
/// `RESERVE_SQL` computes in the database; kept here to test the arithmetic.
#[cfg(test)]
fn next_tat(prev: Option<i64>, now: i64, interval: i64) -> i64 {
    prev.unwrap_or(now).max(now).saturating_add(interval)
}

/// How long (µs) the cell that moved the TAT to `tat` waits from `now`: a `burst` of
/// cells may go at once, each further cell one `interval` after the one before.
fn wait_us(tat: i64, now: i64, interval: i64, burst: u32) -> i64 {
    let tolerance = interval.saturating_mul(i64::from(burst.max(1)));
    tat.saturating_sub(tolerance).saturating_sub(now).max(0)
}

/// A limit of `per_second` cells (with a `burst`) shared through the database.
#[derive(Clone)]
pub struct SharedLimit {
    pool: Pool,
    name: String,
    interval_us: i64,
    burst: u32,
}

impl std::fmt::Debug for SharedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimit")
            .field("name", &self.name)
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl SharedLimit {
    /// Reserves the next cell and returns how long to wait for it (without waiting).
    pub async fn reserve(&self) -> Result<Duration, StoreError> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(RESERVE_SQL).await?;
        let row = client
            .query_one(&stmt, &[&self.name, &self.interval_us])
            .await?;
        let (tat, now): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let wait = wait_us(tat, now, self.interval_us, self.burst);
        Ok(Duration::from_micros(wait.unsigned_abs()))
    }

    /// Reserves the next cell and sleeps until its slot; returns the time waited.
    pub async fn acquire(&self) -> Result<Duration, StoreError> {
        let wait = self.reserve().await?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(wait)
    }
}

impl PgStore {
    /// The shared limit `name` of `per_second` (0 = none) with `burst` (0 = the rate).
    pub(crate) fn shared_limit(
        &self,
        name: &str,
        per_second: u32,
        burst: u32,
    ) -> Option<SharedLimit> {
        if per_second == 0 {
            return None;
        }
        // Rounded up: the shared limit never runs faster than asked.
        let interval_us = 1_000_000_u32.div_ceil(per_second);
        Some(SharedLimit {
            pool: self.pool.clone(),
            name: name.to_string(),
            interval_us: i64::from(interval_us),
            burst: if burst == 0 { per_second } else { burst },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves cells as fast as they are asked for from `callers` that each wait for their
    /// slot; returns the slot times (µs) granted during `total` µs.
    fn simulate(per_call_gap: i64, interval: i64, burst: u32, total: i64) -> Vec<i64> {
        let mut tat = None;
        let mut now = 0;
        let mut slots = Vec::new();
        while now <= total {
            let t = next_tat(tat, now, interval);
            tat = Some(t);
            let slot = now + wait_us(t, now, interval, burst);
            if slot <= total {
                slots.push(slot);
            }
            now += per_call_gap;
        }
        slots
    }

    #[test]
    fn first_cells_of_a_burst_go_at_once_then_one_per_interval() {
        let interval = 50_000; // 20 per second
        let mut tat = None;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let t = next_tat(tat, 0, interval);
            tat = Some(t);
            waits.push(wait_us(t, 0, interval, 5));
        }
        assert_eq!(waits, [0, 0, 0, 0, 0, 50_000, 100_000]);
    }

    #[test]
    fn rate_holds_however_fast_cells_are_asked_for() {
        // Asked for faster than 20/s, with a burst of 5, over ten seconds: 5 + 200 cells, as
        // governor grants.
        for gap in [1, 700, 7_000, 30_000] {
            let slots = simulate(gap, 50_000, 5, 10_000_000);
            assert_eq!(slots.len(), 205, "asked every {gap} µs");
            // No window of one second holds more than the rate plus the burst.
            for (i, s) in slots.iter().enumerate() {
                let in_window = slots[i..]
                    .iter()
                    .take_while(|t| **t < s + 1_000_000)
                    .count();
                assert!(in_window <= 25, "{in_window} cells in one second");
            }
        }
    }

    #[test]
    fn an_idle_limit_refills_only_up_to_the_burst() {
        let interval = 100_000;
        let t = next_tat(Some(0), 60_000_000, interval);
        assert_eq!(t, 60_100_000);
        let mut tat = Some(t);
        let mut free = 1;
        for _ in 0..10 {
            let t = next_tat(tat, 60_000_000, interval);
            tat = Some(t);
            if wait_us(t, 60_000_000, interval, 3) == 0 {
                free += 1;
            }
        }
        assert_eq!(free, 3);
    }

    #[test]
    fn a_tat_behind_the_clock_never_gives_credit_beyond_the_burst() {
        assert_eq!(next_tat(Some(5), 1_000, 10), 1_010);
        assert_eq!(wait_us(1_010, 1_000, 10, 1), 0);
        assert_eq!(wait_us(1_020, 1_000, 10, 1), 10);
    }
}
