//! A bounded wait for a condition, for the tests that await a state instead of sleeping, and
//! the one explicit "nothing happens" window for the tests that check something does not.

use std::fmt::Debug;
use std::time::Duration;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// Waits (bounded) until `check` holds.
pub async fn until<F: AsyncFnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    value(timeout, async || check().await, |ok| *ok)
        .await
        .is_ok()
}

/// Waits (bounded) until `done` accepts what `probe` returns: `Ok` with that value, or `Err`
/// with the last value seen once `timeout` passed (for the caller's failure message).
pub async fn value<T, P, D>(timeout: Duration, probe: P, done: D) -> Result<T, T>
where
    P: AsyncFnMut() -> T,
    D: Fn(&T) -> bool,
{
    value_every(timeout, POLL, probe, done).await
}

/// [`value`], looking again only every `every`: for a probe that does something (sends a
/// postback) and should not do it more often than that.
pub async fn value_every<T, P, D>(
    timeout: Duration,
    every: Duration,
    mut probe: P,
    done: D,
) -> Result<T, T>
where
    P: AsyncFnMut() -> T,
    D: Fn(&T) -> bool,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = probe().await;
        if done(&seen) {
            return Ok(seen);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(every).await;
    }
}

/// [`value`], panicking on timeout with what it waited for and the last value seen.
pub async fn expect_value<T, P, D>(timeout: Duration, what: &str, probe: P, done: D) -> T
where
    T: Debug,
    P: AsyncFnMut() -> T,
    D: Fn(&T) -> bool,
{
    value(timeout, probe, done)
        .await
        .unwrap_or_else(|last| panic!("waited {timeout:?} for {what}; last seen: {last:?}"))
}

/// [`until`], panicking on timeout with what it waited for.
pub async fn expect<F: AsyncFnMut() -> bool>(timeout: Duration, what: &str, check: F) {
    assert!(until(timeout, check).await, "waited {timeout:?} for {what}");
}

/// Lets `window` pass, in which the caller's next assertion says something must NOT happen
/// (a second send, a retry, a reload). Never shorten a window to speed a test up: it is what
/// gives the unwanted event its chance to show.
pub async fn quiet(window: Duration) {
    tokio::time::sleep(window).await;
}
